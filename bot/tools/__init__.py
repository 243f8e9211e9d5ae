"""The six tools, the kernel sandbox, and the gate every call goes through."""

from bot.tools.base import Tool, ToolContext, ToolLimits
from bot.tools.sandbox import Sandbox, SandboxLimits, SandboxResult

__all__ = ["Sandbox", "SandboxLimits", "SandboxResult", "Tool", "ToolContext", "ToolLimits"]
