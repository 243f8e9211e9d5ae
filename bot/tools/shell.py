"""shell_exec: a shell command in the persona's workspace, as the service's own user.

This is the owner's shell, not a sandbox: only the admin persona has it by default. What it
does get is a time limit (its whole process group is killed when it is reached), an output
cap, no terminal, no stdin, and a minimal environment: only a few harmless variables are
passed on, never the service's tokens or anything named like a token, key, secret or password.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from bot.errors import ToolFailed
from bot.providers.base import ToolSpec
from bot.tools.base import ToolContext, string_argument
from bot.tools.process import run_process

PASSED_ON = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
_SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSW|CREDENTIAL|AUTH|COOKIE|SESSION", re.I)
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

SPEC = ToolSpec(
    name="shell_exec",
    description=("Run a shell command (/bin/sh -c) on the owner's machine, in the workspace "
                 "folder. No input, limited time and output. Returns the exit status and "
                 "output."),
    parameters={
        "type": "object",
        "properties": {
            "command": {"type": "string", "minLength": 1, "maxLength": 8192,
                        "description": "The command line to run"},
        },
        "required": ["command"],
        "additionalProperties": False,
    },
)


def minimal_environment(source: Mapping[str, str]) -> dict[str, str]:
    env = {name: source[name] for name in PASSED_ON
           if name in source and not _SECRET_NAME.search(name)}
    env.setdefault("PATH", DEFAULT_PATH)
    env["TERM"] = "dumb"
    return env


class ShellExec:
    spec = SPEC

    async def run(self, arguments: dict[str, object], context: ToolContext) -> str:
        command = string_argument(arguments, "command")
        workspace = context.workspace
        try:
            workspace.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ToolFailed(f"The workspace folder cannot be created: {exc.strerror}.") \
                from None
        limits = context.limits
        try:
            finished = await run_process(
                ["/bin/sh", "-c", command], env=minimal_environment(os.environ),
                cwd=workspace, seconds=limits.shell_seconds,
                output_bytes=limits.shell_output_bytes,
            )
        except OSError as exc:
            raise ToolFailed(f"The shell could not be started: {exc.strerror}.") from None
        if finished.timed_out:
            status = f"stopped after the {limits.shell_seconds:g} s time limit"
        elif finished.truncated:
            status = f"stopped: more than {limits.shell_output_bytes} bytes of output"
        elif finished.returncode is not None and finished.returncode < 0:
            status = f"killed by signal {-finished.returncode}"
        else:
            status = f"exit status {finished.returncode}"
        parts = [status]
        for label, data in (("stdout", finished.stdout), ("stderr", finished.stderr)):
            if data:
                parts.append(f"{label}:\n" + data.decode("utf-8", errors="replace").rstrip("\n"))
        return "\n".join(parts)
