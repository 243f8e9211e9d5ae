"""The model's Markdown, rendered as the HTML subset Telegram accepts.

HTML rather than MarkdownV2: MarkdownV2 needs eighteen characters escaped outside entities,
and a single miss makes Telegram reject the whole message. Here everything is escaped first and
only tags we build, always balanced, are added. If Telegram still refuses, the adapter sends
the plain text instead.
"""

from __future__ import annotations

import html
import re

_FENCED = re.compile(r"^(```+|~~~+)[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:^\1[ \t]*$|\Z)",
                     re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"\[([^\]\n]+)\]\((https?://[^)\s]+)\)")
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1", re.DOTALL)
# Single * or _ only at word edges, so snake_case and 2*3*4 stay as they are.
_ITALIC = re.compile(r"(?<![\w*])([*_])(?=\S)([^*_\n]+?)(?<=\S)\1(?![\w*])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
_PLACEHOLDER = "\x00{}\x00"


def to_telegram_html(markdown: str) -> str:
    # Code is set aside first so nothing inside it is taken for formatting.
    kept: list[str] = []

    def keep(fragment: str) -> str:
        kept.append(fragment)
        return _PLACEHOLDER.format(len(kept) - 1)

    def fenced(match: re.Match[str]) -> str:
        language, body = match.group(2), match.group(3).rstrip("\n")
        attribute = f' class="language-{html.escape(language)}"' if language else ""
        return keep(f"<pre><code{attribute}>{html.escape(body, quote=False)}</code></pre>")

    text = _FENCED.sub(fenced, markdown)
    text = _INLINE_CODE.sub(
        lambda m: keep(f"<code>{html.escape(m.group(1), quote=False)}</code>"), text)
    text = _LINK.sub(lambda m: keep(
        f'<a href="{html.escape(m.group(2))}">{html.escape(m.group(1), quote=False)}</a>'), text)
    text = html.escape(text, quote=False)
    text = _HEADING.sub(r"<b>\1</b>", text)
    text = _BOLD.sub(r"<b>\2</b>", text)
    text = _STRIKE.sub(r"<s>\1</s>", text)
    text = _ITALIC.sub(r"<i>\2</i>", text)
    return re.sub("\x00(\\d+)\x00", lambda m: kept[int(m.group(1))], text)
