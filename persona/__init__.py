"""Who answers: persona definitions (prompt, model, parameters, tool policy)."""

from persona.personas import Persona, build_personas

__all__ = ["Persona", "build_personas"]
