"""The model's Markdown, rendered as the HTML subset Telegram accepts.

HTML rather than MarkdownV2: MarkdownV2 needs eighteen characters escaped outside entities,
and a single miss makes Telegram reject the whole message. The Markdown is parsed by a
CommonMark parser (markdown-it-py, with GitHub's tables and strikethrough, and ``||spoiler||``)
and the syntax tree is written out with only the tags Telegram knows: every piece of text is
escaped and every tag is opened and closed by the same call, so the result is always balanced.
Telegram's nesting rules are kept too: nothing inside ``<code>`` or ``<pre>``, no code or link
inside a link, no quote inside a quote, and blocks never inside inline tags.

Telegram has no lists, headings or tables, so they become text: "• " and "1. " lines indented
by nesting depth, bold lines, and a ``<pre>`` block of aligned columns (a monospaced grid is
the only form that keeps a table's rows and columns readable together). Raw HTML in the
model's text is shown as text, never passed through; links are kept only for http, https and
tg addresses. If Telegram still refuses, the adapter sends the plain text instead.
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import urlsplit

from markdown_it import MarkdownIt
from markdown_it.rules_inline import StateInline
from markdown_it.tree import SyntaxTreeNode

LINK_SCHEMES = frozenset({"http", "https", "tg"})
_LANGUAGE = re.compile(r"[^\w+#.-]")
_RULE = "———"
_URL = re.compile(r"https?://[^\s<>`\]\[]+", re.IGNORECASE)
_IDENTIFIER = re.compile(r"[a-z][a-z0-9_]*")
_TAGS = re.compile(r"<[^>]*>")  # only the renderer's own: text and attributes are escaped


def _spoiler(state: StateInline, silent: bool) -> bool:
    """``||hidden||`` as a spoiler: the closing bars on the same paragraph, no space inside
    either edge, so ``a || b`` stays text."""
    start, src = state.pos, state.src
    if not src.startswith("||", start):
        return False
    end = src.find("||", start + 2, state.posMax)
    if end <= start + 2 or src[start + 2].isspace() or src[end - 1].isspace():
        return False
    if not silent:
        limit = state.posMax
        state.push("spoiler_open", "tg-spoiler", 1)
        state.pos, state.posMax = start + 2, end
        state.md.inline.tokenize(state)
        state.push("spoiler_close", "tg-spoiler", -1)
        state.posMax = limit
    state.pos = end + 2
    return True


def _bare_url(state: StateInline, silent: bool) -> bool:
    """A bare http(s) address stays exactly as written: Telegram links it by itself, and
    ``https://x.org/_a_/*b*`` must not turn into emphasis. Runs at the colon, like
    markdown-it's own linkify, with the scheme still in the pending text."""
    colon, src = state.pos, state.src
    if src[colon] != ":" or not src.startswith("//", colon + 1):
        return False
    scheme = next((name for name in ("https", "http")
                   if src[max(colon - len(name), 0):colon].lower() == name), "")
    start = colon - len(scheme)
    if not scheme or not state.pending.endswith(src[start:colon]) or (
            start > 0 and src[start - 1].isalnum()):
        return False
    match = _URL.match(src, start, state.posMax)
    url = _trim_url(match.group()) if match else ""
    if len(url) <= len(scheme) + 3:
        return False
    if not silent:
        state.pending = state.pending[:-len(scheme)]
        state.push("text", "", 0).content = url
    state.pos = start + len(url)
    return True


def _trim_url(url: str) -> str:
    """Without the punctuation that ends the sentence around it, as Telegram reads it."""
    while url:
        last = url[-1]
        if last in ".,;:!?'\"*_~" or (last == ")" and url.count("(") < url.count(")")):
            url = url[:-1]
        else:
            break
    return url


def _parser() -> MarkdownIt:
    # CommonMark's preset drops whatever lies more than 20 levels deep (a list item counts
    # two); 100 keeps any reply a person would write and still bounds the recursion.
    md = MarkdownIt("commonmark", {"html": False, "maxNesting": 100})
    md.enable(["table", "strikethrough"])
    md.inline.ruler.before("emphasis", "spoiler", _spoiler)
    md.inline.ruler.before("emphasis", "bare_url", _bare_url)
    md.inline.add_terminator_char("|")  # so plain text stops where a spoiler may start
    return md


_MARKDOWN = _parser()


@dataclass(frozen=True)
class _Inline:
    newline: str = "\n"  # a line break, with the indentation of the block it is in
    in_link: bool = False  # Telegram allows no link or code inside a link


def to_telegram_html(text: str) -> str:
    root = SyntaxTreeNode(_MARKDOWN.parse(text))
    rendered = _blocks(root.children, indent="", quoted=False, gap="\n\n").strip()
    # Telegram refuses a message with no visible text; send the source rather than nothing.
    return rendered if _TAGS.sub("", rendered).strip() else _escape(text.strip())


def _blocks(nodes: list[SyntaxTreeNode], indent: str, quoted: bool, gap: str) -> str:
    rendered = (_block(node, indent, quoted) for node in nodes)
    return (gap + indent).join(part for part in rendered if part)


def _block(node: SyntaxTreeNode, indent: str, quoted: bool) -> str:
    kind = node.type
    if kind == "paragraph":
        return _inline_children(node, _Inline(newline="\n" + indent))
    if kind == "heading":
        title = _inline_children(node, _Inline(newline=" "))
        return f"<b>{title}</b>" if title.strip() else ""
    if kind in ("bullet_list", "ordered_list"):
        return _list(node, indent, quoted)
    if kind in ("fence", "code_block"):
        return _code_block(node.content, node.info if kind == "fence" else "")
    if kind == "blockquote":
        # Telegram does not nest quotes: a quote inside one is shown as part of it.
        inner = _blocks(node.children, indent, quoted=True, gap="\n\n")
        return inner if quoted or not inner else f"<blockquote>{inner}</blockquote>"
    if kind == "table":
        return _table(node)
    if kind == "hr":
        return _RULE
    # Raw HTML blocks are not parsed (html is off); anything else unknown is shown as text.
    return _escape(node.content.strip("\n"))


def _list(node: SyntaxTreeNode, indent: str, quoted: bool) -> str:
    ordered = node.type == "ordered_list"
    number = int(node.attrGet("start") or 1) if ordered else 0
    lines: list[str] = []
    for item in node.children:
        marker = f"{number}. " if ordered else "• "
        number += 1
        inner_indent = indent + " " * len(marker)
        body = _blocks(item.children, inner_indent, quoted, gap="\n")
        lines.append(marker + body)
    return ("\n" + indent).join(lines)


def _code_block(code: str, info: str) -> str:
    code = code.rstrip("\n")
    if not code.strip():
        return ""
    language = _LANGUAGE.sub("", info.split(maxsplit=1)[0]) if info.strip() else ""
    body = _escape(code)
    if language:
        return f'<pre><code class="language-{language}">{body}</code></pre>'
    return f"<pre>{body}</pre>"


def _inline_children(node: SyntaxTreeNode, context: _Inline) -> str:
    children = node.children
    parts: list[str] = []
    for index, child in enumerate(children):
        if child.type == "em" and child.markup == "*" and _inside_word(children, index):
            # CommonMark reads 2*3*4 as 2<i>3</i>4; in a chat reply it is arithmetic.
            parts.append(f"*{_inline_children(child, context)}*")
        elif child.type == "strong" and child.markup == "__" and _dunder(child):
            # And __init__ as a bold "init"; in a chat reply it is Python.
            parts.append(f"__{child.children[0].content}__")
        else:
            parts.append(_inline(child, context))
    return "".join(parts)


def _dunder(node: SyntaxTreeNode) -> bool:
    only = node.children[0] if len(node.children) == 1 else None
    return (only is not None and only.type == "text"
            and _IDENTIFIER.fullmatch(only.content) is not None)


def _inside_word(siblings: list[SyntaxTreeNode], index: int) -> bool:
    before = siblings[index - 1] if index > 0 else None
    after = siblings[index + 1] if index + 1 < len(siblings) else None
    return (before is not None and before.type == "text" and before.content[-1:].isalnum()
            and after is not None and after.type == "text" and after.content[:1].isalnum())


def _inline(node: SyntaxTreeNode, context: _Inline) -> str:
    kind = node.type
    if kind == "text":
        return _escape(node.content)
    if kind == "inline":
        return _inline_children(node, context)
    if kind in ("softbreak", "hardbreak"):
        return context.newline
    if kind == "code_inline":
        code = _escape(node.content)
        return code if context.in_link else f"<code>{code}</code>"
    if kind in _WRAPPERS:
        tag = _WRAPPERS[kind]
        return f"<{tag}>{_inline_children(node, context)}</{tag}>"
    if kind == "link":
        return _link(str(node.attrGet("href") or ""), node, context)
    if kind == "image":
        return _image(node, context)
    return _escape(node.content)


_WRAPPERS = {"strong": "b", "em": "i", "s": "s", "spoiler": "tg-spoiler"}


def _link(href: str, node: SyntaxTreeNode, context: _Inline) -> str:
    shown = _plain(node)
    if not shown.strip():
        shown, label = href, _escape(href)
    else:
        label = _inline_children(node, _Inline(context.newline, in_link=True))
    if context.in_link:
        return label
    if _linkable(href):
        return f'<a href="{_escape(href, quote=True)}">{label}</a>'
    # Another scheme (mailto:, ftp:) or a relative path: the text, and the address when it has
    # a scheme and the text does not already show it.
    if _scheme(href) and href not in shown:
        return f"{label} ({_escape(href)})"
    return label


def _image(node: SyntaxTreeNode, context: _Inline) -> str:
    # Telegram cannot show an image inside text; a link to it says what it is.
    src = str(node.attrGet("src") or "")
    alt = _escape(_plain(node).strip() or "image")
    if context.in_link or not _linkable(src):
        return alt
    return f'<a href="{_escape(src, quote=True)}">{alt}</a>'


def _linkable(href: str) -> bool:
    scheme = _scheme(href)
    return scheme in LINK_SCHEMES and len(href) > len(scheme) + 1


def _scheme(href: str) -> str:
    try:
        return urlsplit(href).scheme.lower()
    except ValueError:  # an unbalanced [ in the host, say
        return ""


def _plain(node: SyntaxTreeNode) -> str:
    """The text a reader sees, without any formatting."""
    kind = node.type
    if kind in ("text", "code_inline"):
        return node.content
    if kind in ("softbreak", "hardbreak"):
        return " "
    if kind == "image" and not node.children:
        return node.content
    return "".join(_plain(child) for child in node.children)


def _table(node: SyntaxTreeNode) -> str:
    rows: list[list[str]] = []
    aligns: list[str] = []
    header_rows = 0
    for section in node.children:
        for row in section.children:
            cells = [" ".join(_plain(cell).split()) for cell in row.children]
            if section.type == "thead":
                header_rows += 1
                aligns = [_alignment(cell) for cell in row.children]
            rows.append(cells)
    columns = max(len(row) for row in rows)
    aligns += ["left"] * (columns - len(aligns))
    rows = [row + [""] * (columns - len(row)) for row in rows]
    widths = [max(_width(row[c]) for row in rows) for c in range(columns)]
    lines = [" | ".join(_pad(cell, widths[c], aligns[c]) for c, cell in enumerate(row)).rstrip()
             for row in rows]
    if header_rows:
        lines.insert(header_rows, "-+-".join("-" * width for width in widths))
    return f"<pre>{_escape(chr(10).join(lines))}</pre>"


def _alignment(cell: SyntaxTreeNode) -> str:
    style = str(cell.attrGet("style") or "")
    return "right" if "right" in style else "center" if "center" in style else "left"


def _pad(text: str, width: int, align: str) -> str:
    room = width - _width(text)
    if align == "right":
        return " " * room + text
    if align == "center":
        return " " * (room // 2) + text + " " * (room - room // 2)
    return text + " " * room


def _width(text: str) -> int:
    """Columns a monospaced font gives `text`: wide East Asian characters take two, combining
    marks none."""
    return sum(0 if unicodedata.combining(ch) else
               2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _escape(text: str, quote: bool = False) -> str:
    return html.escape(text, quote=quote)
