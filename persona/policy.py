"""Tool policy: which of the six tools a persona may call, and which need the owner's approval.

The rules, in order:

1. The candidates are `tools.allow` when the config gives it, all six tools for
   `tools.access: "full"`, and otherwise the role's default (admin: all six; guest: file_read,
   knowledge_lookup, code_interpreter_sandbox).
2. Tools named in `tools.ask` are candidates too: naming a tool there allows it, one call at a
   time, with the owner's approval.
3. `tools.deny` removes tools, whatever else names them. Deny wins.

Nothing outside these sets is callable. Names are compared exactly (the config loader already
refused unknown names), so `Shell_Exec` never matches `shell_exec`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bot.config import TOOL_NAMES, ToolPolicy

ROLE_DEFAULTS: dict[str, tuple[str, ...]] = {
    "admin": TOOL_NAMES,
    "guest": ("file_read", "knowledge_lookup", "code_interpreter_sandbox"),
}


@dataclass(frozen=True)
class ToolAccess:
    """The resolved policy of one persona."""

    allowed: frozenset[str]
    ask: frozenset[str]

    def permits(self, name: str) -> bool:
        return name in self.allowed

    def needs_approval(self, name: str) -> bool:
        return name in self.ask and name in self.allowed


def tool_access(role: Literal["admin", "guest"], policy: ToolPolicy) -> ToolAccess:
    if policy.access == "full":
        candidates = set(TOOL_NAMES)
    elif policy.allow is not None:
        candidates = set(policy.allow)
    else:
        candidates = set(ROLE_DEFAULTS.get(role, ()))
    candidates |= set(policy.ask)
    allowed = frozenset(name for name in candidates - set(policy.deny) if name in TOOL_NAMES)
    return ToolAccess(allowed=allowed, ask=frozenset(policy.ask) & allowed)
