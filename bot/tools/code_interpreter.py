"""code_interpreter_sandbox: run Python in a kernel-confined sandbox (see bot/tools/sandbox.py).

No network, no files of the service or of any persona, an empty scratch directory, the
standard library only, and limits on CPU, memory, file size, processes and wall time. Where
the machine cannot confine it, the tool refuses instead of running it unconfined.
"""

from __future__ import annotations

from bot.providers.base import ToolSpec
from bot.tools.base import ToolContext, string_argument
from bot.tools.sandbox import Sandbox

SPEC = ToolSpec(
    name="code_interpreter_sandbox",
    description=("Run a Python 3 program in an isolated sandbox and get what it prints. "
                 "Standard library only; no network; no access to your files; a scratch "
                 "folder is the working directory; CPU, memory and time are limited. "
                 "Use print() to show results."),
    parameters={
        "type": "object",
        "properties": {
            "code": {"type": "string", "minLength": 1, "maxLength": 65536,
                     "description": "The Python program to run"},
        },
        "required": ["code"],
        "additionalProperties": False,
    },
)


class CodeInterpreter:
    spec = SPEC

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    async def run(self, arguments: dict[str, object], context: ToolContext) -> str:
        result = await self.sandbox.run_python(string_argument(arguments, "code"))
        parts = [result.describe(self.sandbox.limits)]
        if result.stdout:
            parts.append("stdout:\n" + result.stdout.rstrip("\n"))
        if result.stderr:
            parts.append("stderr:\n" + result.stderr.rstrip("\n"))
        if not result.stdout and not result.stderr:
            parts.append("(no output; use print() to show results)")
        return "\n".join(parts)
