"""What every tool has: a spec the model sees, a `run`, and the context of the call.

A tool is an object with a `spec` (a `ToolSpec`: exact name, description, JSON schema of its
arguments) and `async run(arguments, context) -> str`. It raises a `ToolError` when it cannot
produce a result; `str()` of that error is what the model reads. The gate (bot/tools/gate.py)
is the only caller: it checks the policy, validates the arguments against the schema, applies
the time and size budgets, and audits the call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bot.errors import ToolRefused
from bot.providers.base import ToolSpec
from persona import Persona

KIB = 1024
MIB = 1024 * 1024


@dataclass(frozen=True)
class ToolLimits:
    """Budgets for one call. The defaults suit a small local model's context window."""

    # The whole call, tool included, must finish within this (the gate enforces it).
    call_seconds: float = 60.0
    # The text handed back to the model is cut to this many characters (the gate enforces it).
    result_chars: int = 16_000
    # file_read
    read_bytes: int = 64 * KIB
    max_file_bytes: int = 16 * MIB
    # knowledge_lookup
    lookup_hits: int = 5
    index_file_bytes: int = 1 * MIB
    index_max_files: int = 5_000
    # shell_exec
    shell_seconds: float = 30.0
    shell_output_bytes: int = 64 * KIB
    # system_process
    process_list_rows: int = 40
    stop_grace_seconds: float = 5.0
    # external_fetch
    fetch_seconds: float = 15.0
    fetch_bytes: int = 2 * MIB
    fetch_redirects: int = 5
    # Off by default: the model must not reach services on this machine or the home network
    # through a page it was told to fetch. Tests switch it on to fetch from their own server.
    fetch_private_addresses: bool = False


@dataclass(frozen=True)
class ToolContext:
    """Everything a tool may know about the call. Built by the caller from the router's
    decision; nothing in it comes from the model."""

    persona: Persona
    platform: str
    chat_id: str
    # Where tools keep derived data (the knowledge index); the service's data directory.
    data_dir: Path
    limits: ToolLimits = field(default_factory=ToolLimits)

    @property
    def workspace(self) -> Path:
        return self.persona.workspace


class Tool(Protocol):
    @property
    def spec(self) -> ToolSpec: ...

    async def run(self, arguments: dict[str, object], context: ToolContext) -> str: ...


def validate_arguments(spec: ToolSpec, arguments: object) -> dict[str, object]:
    """Check `arguments` against the tool's schema (the small subset our schemas use).

    Unknown keys are refused rather than ignored: a call is exactly what its schema says, so
    nothing can ride along inside it. A call that does not fit is refused, not run.
    """
    if not isinstance(arguments, dict):
        raise ToolRefused(f"{spec.name}: arguments must be a JSON object.")
    schema = spec.parameters
    properties = schema.get("properties", {})
    assert isinstance(properties, dict)
    required = schema.get("required", [])
    assert isinstance(required, list)
    for key in arguments:
        if key not in properties:
            expected = ", ".join(properties) or "none"
            raise ToolRefused(f"{spec.name}: unexpected argument {key!r} "
                             f"(arguments: {expected}).")
    for key in required:
        if key not in arguments:
            raise ToolRefused(f"{spec.name}: missing required argument {key!r}.")
    for key, value in arguments.items():
        rule = properties[key]
        assert isinstance(rule, dict)
        _check_value(spec.name, key, rule, value)
    return dict(arguments)


def _check_value(tool: str, key: str, rule: dict[str, object], value: object) -> None:
    kind = rule.get("type")
    where = f"{tool}: argument {key!r}"
    if kind == "string":
        if not isinstance(value, str):
            raise ToolRefused(f"{where} must be a string.")
        max_length = rule.get("maxLength")
        if isinstance(max_length, int) and len(value) > max_length:
            raise ToolRefused(f"{where} is too long (at most {max_length} characters).")
        min_length = rule.get("minLength")
        if isinstance(min_length, int) and len(value) < min_length:
            raise ToolRefused(f"{where} must not be empty.")
    elif kind == "integer":
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ToolRefused(f"{where} must be an integer.")
        low, high = rule.get("minimum"), rule.get("maximum")
        if (isinstance(low, int) and value < low) or (isinstance(high, int) and value > high):
            raise ToolRefused(f"{where} must be between {low} and {high}.")
    elif kind == "boolean" and not isinstance(value, bool):
        raise ToolRefused(f"{where} must be true or false.")
    choices = rule.get("enum")
    if isinstance(choices, list) and value not in choices:
        raise ToolRefused(f"{where} must be one of: {', '.join(map(str, choices))}.")


def integer_argument(arguments: dict[str, object], key: str, default: int) -> int:
    value = arguments.get(key, default)
    if isinstance(value, float):
        value = int(value)
    assert isinstance(value, int)
    return value


def string_argument(arguments: dict[str, object], key: str, default: str = "") -> str:
    value = arguments.get(key, default)
    assert isinstance(value, str)
    return value
