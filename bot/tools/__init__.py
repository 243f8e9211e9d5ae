"""The six tools, the kernel sandbox, and the gate every call goes through."""

from bot.tools.base import Tool, ToolContext, ToolLimits

__all__ = ["Tool", "ToolContext", "ToolLimits"]
