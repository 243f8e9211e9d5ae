"""file_read: a text file from the persona's own workspace, size-capped."""

from __future__ import annotations

import asyncio

from bot.errors import ToolRefused
from bot.providers.base import ToolSpec
from bot.tools.base import ToolContext, string_argument
from bot.tools.paths import read_workspace_file

SPEC = ToolSpec(
    name="file_read",
    description=("Read a text file from your workspace. The path is relative to the "
                 "workspace, e.g. notes/todo.md. Long files are cut; the result says so."),
    parameters={
        "type": "object",
        "properties": {
            "path": {"type": "string", "minLength": 1, "maxLength": 1024,
                     "description": "File path relative to the workspace"},
        },
        "required": ["path"],
        "additionalProperties": False,
    },
)


class FileRead:
    spec = SPEC

    async def run(self, arguments: dict[str, object], context: ToolContext) -> str:
        content = await asyncio.to_thread(
            read_workspace_file,
            context.workspace,
            string_argument(arguments, "path"),
            max_bytes=context.limits.read_bytes,
            max_file_bytes=context.limits.max_file_bytes,
        )
        if b"\x00" in content.data[:8192]:
            raise ToolRefused(f"Refused {content.path!r}: it is a binary file, not text.")
        text = content.data.decode("utf-8", errors="replace")
        if content.truncated:
            text += (f"\n[file_read: cut after the first {len(content.data)} of "
                     f"{content.size} bytes]")
        return text
