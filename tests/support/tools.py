"""Personas and tool contexts built the way the service builds them: from a parsed config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bot.config import parse_config
from bot.tools import ToolContext, ToolLimits
from persona import Persona, build_personas


def personas(data_dir: Path, **instances: Any) -> dict[str, Persona]:
    """The default admin and guest (workspaces under `data_dir`), plus or instead of those
    given as config dicts."""
    raw_instances: dict[str, Any] = {"admin": {"role": "admin"}, "guest": {"role": "guest"}}
    raw_instances.update(instances)
    config = parse_config({"data_dir": str(data_dir), "agents": {"instances": raw_instances}})
    built = build_personas(config)
    for persona in built.values():
        persona.workspace.mkdir(parents=True, exist_ok=True)
    return built


def context(persona: Persona, data_dir: Path, platform: str = "telegram",
            chat_id: str = "100", **limits: Any) -> ToolContext:
    return ToolContext(persona=persona, platform=platform, chat_id=chat_id, data_dir=data_dir,
                       limits=ToolLimits(**limits))
