"""A strict reading of Telegram's HTML parse mode, for checking what the bot sends.

Stricter than the fake Bot API on purpose: besides balance it holds the output to the tags
hearthbot may write, to Telegram's nesting rules (nothing inside code, no link or code inside
a link, no quote inside a quote, blocks never inside inline tags), to escaped ``<``, ``>`` and
``&`` everywhere, and to links with http, https or tg addresses only.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

ALLOWED = frozenset({"b", "i", "u", "s", "code", "pre", "a", "blockquote", "tg-spoiler"})
_INLINE = frozenset({"b", "i", "u", "s", "code", "a", "tg-spoiler"})
_TAG = re.compile(r"<(/?)([a-z][a-z-]*)((?:\s+[a-z-]+=\"[^\"<>]*\")*)>")
_ATTRIBUTE = re.compile(r"\s+([a-z-]+)=\"([^\"<>]*)\"")
_ENTITY = re.compile(r"&(?:lt|gt|amp|quot|#\d+|#x[0-9a-fA-F]+);")
_SCHEMES = frozenset({"http", "https", "tg"})


def problems(text: str) -> list[str]:
    """What Telegram (or a careful reader of its rules) would object to; empty when valid."""
    found: list[str] = []
    stack: list[_Open] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char == "<":
            tag = _TAG.match(text, position)
            if tag is None:
                found.append(f"unescaped < at {position}")
                position += 1
                continue
            closing, name, attributes = tag.group(1) == "/", tag.group(2), tag.group(3)
            if not closing:
                found.extend(_opening_problems(name, dict(_ATTRIBUTE.findall(attributes)),
                                               stack, position))
                if stack:
                    stack[-1].children += 1
                stack.append(_Open(name))
            elif stack and stack[-1].name == name:
                stack.pop()
            else:
                found.append(f"</{name}> at {position} closes "
                             f"{stack[-1].name if stack else 'nothing'}")
            position = tag.end()
            continue
        if char == "&":
            entity = _ENTITY.match(text, position)
            if entity is None:
                found.append(f"unescaped & at {position}")
            end = entity.end() if entity else position + 1
        else:
            if char == ">":
                found.append(f"unescaped > at {position}")
            end = position + 1
        if stack and stack[-1].name == "pre" and stack[-1].children:
            found.append(f"text beside the <code> of a <pre> at {position}")
        if stack:
            stack[-1].text = True
        position = end
    found.extend(f"<{opened.name}> never closed" for opened in stack)
    return found


@dataclass
class _Open:
    name: str
    text: bool = False  # text written directly inside it
    children: int = 0  # tags opened directly inside it


def _opening_problems(name: str, attributes: dict[str, str], stack: list[_Open],
                      position: int) -> list[str]:
    where = f"<{name}> at {position}"
    if name not in ALLOWED:
        return [f"{where} is not a tag Telegram allows"]
    found: list[str] = []
    names = [opened.name for opened in stack]
    parent = stack[-1] if stack else None
    if parent is not None and parent.name == "code":
        found.append(f"{where} inside <code>")
    in_pre = parent is not None and parent.name == "pre"
    if parent is not None and in_pre and (name != "code" or parent.text or parent.children):
        found.append(f"{where} inside <pre>")
    if name in ("a", "code") and "a" in names:
        found.append(f"{where} inside a link")
    if name in ("pre", "blockquote"):
        enclosing = [tag for tag in names if tag in _INLINE or tag == "pre"]
        if enclosing:
            found.append(f"{where} inside <{enclosing[-1]}>")
    if name == "blockquote" and "blockquote" in names:
        found.append(f"{where} inside another quote")
    expected: set[str] = set()
    if name == "a":
        expected = {"href"}
        href = html.unescape(attributes.get("href", ""))
        if urlsplit(href).scheme.lower() not in _SCHEMES:
            found.append(f"{where} links to {href!r}")
    elif name == "code" and in_pre and attributes:
        expected = {"class"}
        if not attributes.get("class", "").startswith("language-"):
            found.append(f"{where} has class {attributes.get('class')!r}")
    if set(attributes) != expected:
        found.append(f"{where} has attributes {sorted(attributes)}, expected {sorted(expected)}")
    return found


def visible_text(text: str) -> str:
    """The text a chat shows for valid HTML: tags dropped, entities decoded."""
    return html.unescape(_TAG.sub("", text))
