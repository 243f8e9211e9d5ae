"""The context guard: fit persona prompt, history and the new message into the model's window.

The newest turns stay verbatim and the oldest give way; a message too large even on its own is
cut with a visible note rather than silently dropped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from bot.config import ModelSpec
from bot.providers import ChatMessage, ToolSpec
from bot.store.history import StoredMessage

# Without the model's tokenizer at hand, a conservative estimate: English runs near four
# characters a token, other scripts fewer, so three keeps a margin.
CHARS_PER_TOKEN = 3
MESSAGE_OVERHEAD_TOKENS = 4  # role markers and separators in chat templates
TRANSCRIPT_NOTE = "[voice note, transcribed automatically; words may be misheard]"
CUT_NOTE = "\n[message shortened: it was too long for the model to read whole]"


def estimate_tokens(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN + MESSAGE_OVERHEAD_TOKENS


def user_content(text: str, transcribed: bool) -> str:
    # A transcript is untrusted input that may be misheard; the model is told so.
    return f"{TRANSCRIPT_NOTE}\n{text}" if transcribed else text


def schema_tokens(tools: Sequence[ToolSpec]) -> int:
    """What offering these tools costs in prompt tokens (their schemas ride in the prompt)."""
    return sum(estimate_tokens(json.dumps({"name": t.name, "description": t.description,
                                           "parameters": t.parameters})) for t in tools)


def fit_messages(system_prompt: str, history: Sequence[StoredMessage], text: str,
                 transcribed: bool, model: ModelSpec, output_tokens: int,
                 summary: str = "", reserved_tokens: int = 0) -> list[ChatMessage]:
    """The prompt for one request; `reserved_tokens` are taken by what rides beside the
    messages (tool schemas)."""
    system = system_prompt
    if summary:
        system = f"{system_prompt}\nEarlier in this conversation: {summary}"
    budget = model.context_window - output_tokens - reserved_tokens - estimate_tokens(system)
    content = user_content(text, transcribed)
    if estimate_tokens(content) > budget:
        keep = max((budget - estimate_tokens(CUT_NOTE)) * CHARS_PER_TOKEN, 0)
        content = content[:keep] + CUT_NOTE
    budget -= estimate_tokens(content)
    kept: list[ChatMessage] = []
    for message in reversed(history):
        if message.role == "assistant":
            earlier = ChatMessage("assistant", message.content)
        else:
            earlier = ChatMessage("user", user_content(message.content, message.transcribed))
        cost = estimate_tokens(earlier.content)
        if cost > budget:
            break
        budget -= cost
        kept.append(earlier)
    kept.reverse()
    # A window that opens on an assistant turn confuses chat templates; start on a user turn.
    while kept and kept[0].role == "assistant":
        kept.pop(0)
    return [ChatMessage("system", system), *kept, ChatMessage("user", content)]
