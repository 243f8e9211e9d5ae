"""The Markdown → Telegram HTML renderer against the regular-expression one it replaced.

    python -m tests.bench.bench_telegram_format

Both render the same two dozen model replies of the kinds seen in practice: code fences,
nested lists, tables, links with emphasis, raw HTML, headings. For each reply it prints the
median time per call (timeit) and what is wrong with the output:

- invalid: HTML that breaks Telegram's rules (tests/support/telegram_html.py): Telegram
  refuses it, or the rules say it may; the adapter then sends the reply as plain text;
- garbled: Markdown the reader sees as symbols (``**``, ``](``, fences, table rules, ``#``);
- changed: identifiers, arithmetic or addresses not shown exactly as written;
- missed: formatting the reply asked for that did not arrive (a bold word not bold, a link
  not a link, a code block not a block);
- lost: words of the reply that are not in the message at all.

Not a test: it prints a table.
"""

from __future__ import annotations

import html
import re
import statistics
import timeit
from collections.abc import Callable
from dataclasses import dataclass

from adapters.telegram_format import to_telegram_html
from tests.fakes.telegram import parse_html
from tests.support.telegram_html import problems

FENCE = "```"


# The renderer as it was before markdown-it-py, kept verbatim for comparison.
_FENCED = re.compile(r"^(```+|~~~+)[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:^\1[ \t]*$|\Z)",
                     re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"\[([^\]\n]+)\]\((https?://[^)\s]+)\)")
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1", re.DOTALL)
_ITALIC = re.compile(r"(?<![\w*])([*_])(?=\S)([^*_\n]+?)(?<=\S)\1(?![\w*])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
_PLACEHOLDER = "\x00{}\x00"


def regex_to_telegram_html(markdown: str) -> str:
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


@dataclass(frozen=True)
class Reply:
    name: str
    text: str
    # (tag, text): the text must be shown inside that tag; "pre" counts code blocks.
    expect: tuple[tuple[str, str], ...] = ()
    # Text that must be shown exactly as written (identifiers, arithmetic, addresses).
    verbatim: tuple[str, ...] = ()


REPLIES = [
    Reply("greeting", "Hi! I'm **hearthbot**. Ask me anything, or type `/help`.",
          (("b", "hearthbot"), ("code", "/help"))),
    Reply("python fence", f"Here's a fix:\n\n{FENCE}python\ndef area(r: float) -> float:\n"
          f"    return 3.14159 * r ** 2  # r < 0 is an error\n{FENCE}\n\n"
          "Call `area(2)` to check; it returns *about* 12.57.",
          (("pre", "def area"), ("code", "area(2)"), ("i", "about"))),
    Reply("nested bullets", "Packing list:\n\n- Clothes\n  - 3 shirts\n  - **warm** jacket\n"
          "    - with a hood\n- Documents\n  - passport\n- Snacks",
          (("b", "warm"),)),
    Reply("steps with code", "1. Install the tools:\n\n   ```sh\n   sudo apt install cmake gcc\n"
          "   ```\n\n2. Build:\n   - run `make`\n   - wait about *five minutes*\n3. Done!",
          (("pre", "sudo apt install"), ("code", "make"), ("i", "five minutes"))),
    Reply("table", "| Model | Params | Speed |\n|:--|--:|:-:|\n| SmolLM2 | 135M | fast |\n"
          "| Llama 3.1 | 8B | slow |\n| Qwen2.5 | 7B | slow |\n\nPick by **RAM**.",
          (("pre", "SmolLM2"), ("b", "RAM"))),
    Reply("link with emphasis", "See [the **official** docs](https://docs.python.org/3/"
          "library/asyncio.html) and [*PEP 492*](https://peps.python.org/pep-0492/).",
          (("a", "the official docs"), ("b", "official"), ("a", "PEP 492"), ("i", "PEP 492"))),
    Reply("code in link text", "Use [`asyncio.run()`](https://docs.python.org/3/library/"
          "asyncio-runner.html) as the entry point, not `loop.run_forever()`.",
          (("a", "asyncio.run()"), ("code", "loop.run_forever()"))),
    Reply("headings", "## Summary\n\nThe build **passed**.\n\n### Next steps ###\n\n"
          "Merge it, then tag `v0.2.0`.",
          (("b", "Summary"), ("b", "Next steps"), ("b", "passed"), ("code", "v0.2.0"))),
    Reply("quote", "As the docs put it:\n\n> Explicit is better than implicit.\n> **Simple** is "
          "better than complex.\n\nSo keep it plain.",
          (("blockquote", "Explicit is better"), ("b", "Simple"))),
    Reply("arithmetic and identifiers", "With max_tokens = 2*3*4 the limit is 24; my_var_name "
          "and __init__ are untouched, but _this_ is italic.", (("i", "this"),),
          ("2*3*4", "my_var_name", "__init__")),
    Reply("angle brackets", "Run `pip install <package>` and replace <name> with yours; "
          "a < b && b > c holds.", (("code", "pip install <package>"),)),
    Reply("html in fence and text", f"Use this:\n\n{FENCE}html\n<div class=\"card\">&nbsp;"
          f"</div>\n{FENCE}\n\nNot <script>alert(1)</script> or <b>tags</b> in prose.",
          (("pre", '<div class="card">'),)),
    Reply("bold labels in list", "- **Name:** Ada Lovelace\n- **Born:** 1815\n"
          "- **Known for:** the first *published* algorithm",
          (("b", "Name:"), ("b", "Born:"), ("b", "Known for:"), ("i", "published"))),
    Reply("table with code and links", "| Command | Does |\n|---|---|\n"
          "| `make run` | starts the bot |\n| `make test` | runs [pytest](https://pytest.org) |",
          (("pre", "make run"),)),
    Reply("long sectioned", "# Plan\n\nWe need three things.\n\n## Data\n\n1. Export the "
          "**users** table\n2. Clean it:\n   - drop `NULL` emails\n   - lower-case names\n\n"
          f"## Code\n\n{FENCE}sql\nSELECT id, email FROM users WHERE email IS NOT NULL;\n"
          f"{FENCE}\n\n## Risks\n\n| Risk | Odds |\n|---|---|\n| data loss | low |\n\n"
          "Questions? Ask in [#data](https://chat.example.com/data).",
          (("b", "Plan"), ("b", "users"), ("code", "NULL"), ("pre", "SELECT id"),
           ("pre", "data loss"), ("a", "#data"))),
    Reply("tilde fence json", '~~~json\n{"name": "hearthbot", "tags": ["a", "b"]}\n~~~\n\n'
          "That's the ~~old~~ new config.",
          (("pre", '"name"'), ("s", "old"))),
    Reply("strikethrough fix", "The answer is ~~42~~ **41**, sorry; ~~*really*~~ sorry.",
          (("s", "42"), ("b", "41"), ("s", "really"), ("i", "really"))),
    Reply("ordered inside bullets", "- Morning\n  1. coffee\n  2. email\n- Afternoon\n"
          "  1. meetings\n  2. *deep* work", (("i", "deep"),)),
    Reply("underscores in urls", "Read [Snake_case](https://en.wikipedia.org/wiki/Snake_case) "
          "and https://example.com/a_b_c/*star*/ for the __full__ story.",
          (("a", "Snake_case"), ("b", "full")), ("https://example.com/a_b_c/*star*/",)),
    Reply("unclosed fence", f"Streaming cut this short:\n\n{FENCE}js\nconst a = 1;\n"
          "if (a < 2) { console.log('**not bold**'); }", (("pre", "const a = 1;"),)),
    Reply("asterisk bullets", "Options:\n\n* **fast**: fewer checks\n* **safe**: more checks\n"
          "  * slower, *but* sure", (("b", "fast"), ("b", "safe"), ("i", "but"))),
    Reply("spoiler", "The twist: ||the **butler** did it||. Don't tell!",
          (("tg-spoiler", "the butler did it"), ("b", "butler"))),
    Reply("link inside bold", "**Start here: [guide](https://example.com/guide)** then "
          "*read [the FAQ](https://example.com/faq)*.",
          (("b", "Start here: guide"), ("a", "guide"), ("i", "read the FAQ"),
           ("a", "the FAQ"))),
    Reply("inline code with markers", "Use `a*b*c` or `__dunder__` literally, and escape "
          "\\*stars\\* in Markdown.", (("code", "a*b*c"), ("code", "__dunder__")), ("*stars*",)),
    Reply("bold across lines", "**This warning\nspans two lines** and *this\none too*.",
          (("b", "This warning"), ("i", "one too"))),
]

_LEFTOVER = re.compile(r"\*\*|~~|```|\]\(|^\s*\|?\s*:?-{3,}:?\s*\||^#{1,6}\s", re.MULTILINE)
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]{2,}")
_NOT_SHOWN = re.compile(r"\]\([^)\s]*\)|^\s*(?:```|~~~)\S*", re.MULTILINE)  # targets, info


def judge(reply: Reply, rendered: str) -> list[str]:
    """What is wrong with one rendering, as short labels."""
    faults: list[str] = []
    broken = problems(rendered)
    if broken:
        faults.append("invalid: " + broken[0])
    try:
        shown, spans = parse_html(rendered)
    except Exception as exc:
        faults.append(f"rejected: {exc}")
        return faults
    outside_code = "".join(
        "\x00" if any(tag in ("code", "pre") and start <= i < end
                      for tag, start, end in spans) else ch
        for i, ch in enumerate(shown))
    leftovers = sorted(set(m.group().strip() for m in _LEFTOVER.finditer(outside_code)))
    if leftovers:
        faults.append("garbled: " + " ".join(leftovers))
    squashed = " ".join(shown.split())
    changed = [text for text in reply.verbatim if text not in shown]
    if changed:
        faults.append("changed: " + " ".join(changed))
    missed = [f"{tag}:{text}" for tag, text in reply.expect
              if not any(tag == name and text in " ".join(shown[start:end].split())
                         for name, start, end in spans)
              and not (tag == "pre" and any(name == "pre" and text in shown[start:end]
                                            for name, start, end in spans))]
    if missed:
        faults.append("missed: " + ", ".join(missed))
    lost = [word for word in _WORD.findall(_NOT_SHOWN.sub(" ", reply.text))
            if word not in squashed]
    if lost:
        faults.append("lost: " + " ".join(lost))
    return faults


def per_call(render: Callable[[str], str], text: str) -> float:
    """Median seconds per call over 7 timeit runs of about 30 ms each."""
    timer = timeit.Timer(lambda: render(text))
    number = max(1, round(0.03 / (timer.timeit(20) / 20)))
    return statistics.median(timer.repeat(repeat=7, number=number)) / number


def main() -> None:
    renderers = {"regex": regex_to_telegram_html, "markdown-it": to_telegram_html}
    times: dict[str, list[float]] = {name: [] for name in renderers}
    counts: dict[str, dict[str, int]] = {name: {} for name in renderers}
    faulty: dict[str, int] = dict.fromkeys(renderers, 0)
    print(f"{'reply':28} {'regex µs':>9} {'new µs':>8}  regex faults | new faults")
    for reply in REPLIES:
        row: list[str] = []
        faults: list[str] = []
        for name, render in renderers.items():
            seconds = per_call(render, reply.text)
            times[name].append(seconds)
            row.append(f"{seconds * 1e6:.0f}")
            found = judge(reply, render(reply.text))
            faulty[name] += bool(found)
            for fault in found:
                kind = fault.split(":")[0]
                counts[name][kind] = counts[name].get(kind, 0) + 1
            faults.append("; ".join(found) or "ok")
        print(f"{reply.name:28} {row[0]:>9} {row[1]:>8}  {faults[0]} | {faults[1]}")
    print()
    print(f"{'renderer':12} {'median µs':>9} {'max µs':>7}  replies with faults, of "
          f"{len(REPLIES)} (by kind)")
    for name in renderers:
        median = statistics.median(times[name]) * 1e6
        worst = max(times[name]) * 1e6
        summary = ", ".join(f"{kind} {n}" for kind, n in sorted(counts[name].items())) or "none"
        print(f"{name:12} {median:9.0f} {worst:7.0f}  {faulty[name]} ({summary})")


if __name__ == "__main__":
    main()
