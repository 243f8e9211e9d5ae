"""What the voice tests say and expect to hear back."""

from __future__ import annotations

import re

QUESTION = "What is the weather like in Paris today?"
ANSWER = ("It is sunny and warm in Paris today. ", "Take your sunglasses with you. ",
          "Enjoy a long walk along the river.")


def heard(text: str, *words: str) -> int:
    """How many of `words` a transcript contains: speech to text may miss one or two."""
    said = set(re.findall(r"[a-z]+", text.lower()))
    return sum(word in said for word in words)
