"""The admin and guest personas, and any others the config defines.

Prompts stay short on purpose: a local model reads every prompt token before it can say
anything, so each sentence here costs every reply time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bot.config import BudgetSpec, Config, GenerationParams, ToolPolicy
from persona.policy import ToolAccess, tool_access

ADMIN_PROMPT = (
    "You are hearthbot, the owner's private assistant, running on the owner's own machine. "
    "Answer directly and briefly."
)
GUEST_PROMPT = (
    "You are hearthbot, a friendly public assistant. Answer briefly. You cannot run commands, "
    "reach the internet or see private files, and you never pretend to."
)


@dataclass(frozen=True)
class Persona:
    name: str
    role: Literal["admin", "guest"]
    system_prompt: str
    model: str | None  # a model reference; None means the active model
    params: GenerationParams
    tools: ToolPolicy
    workspace: Path
    voice_replies: Literal["off", "inbound", "always"] = "inbound"
    fallback: tuple[str, ...] = ()  # model references that answer when `model` is down
    budget: BudgetSpec | None = None

    @property
    def tool_access(self) -> ToolAccess:
        """The tools this persona may call, resolved from its role and `tools` config."""
        return tool_access(self.role, self.tools)


def build_personas(config: Config) -> dict[str, Persona]:
    personas: dict[str, Persona] = {}
    for name, instance in config.agents.instances.items():
        default_prompt = ADMIN_PROMPT if instance.role == "admin" else GUEST_PROMPT
        workspace = (Path(instance.workspace).expanduser() if instance.workspace
                     else config.data_path() / "workspaces" / name)
        personas[name] = Persona(
            name=name,
            role=instance.role,
            system_prompt=instance.system_prompt or default_prompt,
            model=instance.model,
            params=instance.params,
            tools=instance.tools,
            workspace=workspace,
            voice_replies=instance.voice_replies,
            fallback=instance.fallback,
            budget=instance.budget,
        )
    return personas
