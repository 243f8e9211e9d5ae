"""The six tools, built once per service."""

from __future__ import annotations

from bot.config import TOOL_NAMES
from bot.tools.base import Tool
from bot.tools.code_interpreter import CodeInterpreter
from bot.tools.fetch import ExternalFetch
from bot.tools.file_read import FileRead
from bot.tools.knowledge import KnowledgeLookup
from bot.tools.processes import SystemProcess
from bot.tools.sandbox import Sandbox
from bot.tools.shell import ShellExec


def build_tools(sandbox: Sandbox | None = None) -> dict[str, Tool]:
    """Tool name → tool. `sandbox` is shared by every code_interpreter_sandbox call."""
    tools: list[Tool] = [
        FileRead(),
        KnowledgeLookup(),
        CodeInterpreter(sandbox or Sandbox()),
        ShellExec(),
        SystemProcess(),
        ExternalFetch(),
    ]
    by_name = {tool.spec.name: tool for tool in tools}
    assert tuple(by_name) == TOOL_NAMES, "the tools and the policy's names must agree"
    return by_name
