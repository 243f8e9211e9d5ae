"""Who answers: persona definitions (prompt, model, parameters, tool policy)."""

from persona.personas import Persona, build_personas
from persona.policy import ToolAccess, tool_access

__all__ = ["Persona", "ToolAccess", "build_personas", "tool_access"]
