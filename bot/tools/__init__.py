"""The six tools, the kernel sandbox, and the gate every call goes through.

Use from the turn: build the tools once (`build_tools`), one `ToolGate` per service, then per
call `gate.specs(persona)` for the model and `await gate.execute(name, arguments, context)`.
"""

from bot.tools.base import Tool, ToolContext, ToolLimits
from bot.tools.gate import ApprovalRequest, Approver, ToolGate, ToolResult
from bot.tools.registry import build_tools
from bot.tools.sandbox import Sandbox, SandboxLimits, SandboxResult

__all__ = [
    "ApprovalRequest",
    "Approver",
    "Sandbox",
    "SandboxLimits",
    "SandboxResult",
    "Tool",
    "ToolContext",
    "ToolGate",
    "ToolLimits",
    "ToolResult",
    "build_tools",
]
