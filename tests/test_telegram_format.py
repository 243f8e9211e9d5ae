"""Markdown from the model, rendered as Telegram's HTML subset."""

from __future__ import annotations

import itertools
import random

import pytest

from adapters.telegram_format import to_telegram_html
from tests.fakes.telegram import parse_html
from tests.support.telegram_html import problems, visible_text

FENCE = "```"


def test_inline_formatting() -> None:
    assert to_telegram_html("Some **bold**, *italic*, ~~gone~~ and `x < y`.") == (
        "Some <b>bold</b>, <i>italic</i>, <s>gone</s> and <code>x &lt; y</code>.")


def test_emphasis_inside_a_link_and_a_link_inside_emphasis() -> None:
    assert to_telegram_html("[the **new** docs](https://example.com/a?b=1&c=2)") == (
        '<a href="https://example.com/a?b=1&amp;c=2">the <b>new</b> docs</a>')
    assert to_telegram_html("**see [here](https://example.com)**") == (
        '<b>see <a href="https://example.com">here</a></b>')


def test_code_inside_a_link_is_plain_text() -> None:
    # Telegram allows no code entity inside a link.
    assert to_telegram_html("[`pip` docs](https://pip.pypa.io)") == (
        '<a href="https://pip.pypa.io">pip docs</a>')


def test_headings_are_bold_lines() -> None:
    assert to_telegram_html("## Setup\nRun it.\n\nSetext\n======") == (
        "<b>Setup</b>\n\nRun it.\n\n<b>Setext</b>")


def test_nested_lists_are_indented_bullets_and_numbers() -> None:
    text = "- one\n- two *a*\n  - nested\n    3. deep\n    4. deeper\n- three"
    assert to_telegram_html(text) == (
        "• one\n• two <i>a</i>\n  • nested\n    3. deep\n    4. deeper\n• three")


def test_code_inside_a_list_item_keeps_its_own_lines() -> None:
    text = f"1. Install:\n\n   {FENCE}sh\n   make run\n   {FENCE}\n2. Done"
    assert to_telegram_html(text) == (
        '1. Install:\n   <pre><code class="language-sh">make run</code></pre>\n2. Done')


def test_fenced_code_is_escaped_and_keeps_its_language() -> None:
    text = f"{FENCE}python\nif a < b and c > d:\n    print('&', **kw)\n{FENCE}"
    assert to_telegram_html(text) == (
        '<pre><code class="language-python">if a &lt; b and c &gt; d:\n'
        "    print('&amp;', **kw)</code></pre>")
    assert to_telegram_html(f"{FENCE}\nplain\n{FENCE}") == "<pre>plain</pre>"
    # An info string is not a way to write attributes.
    assert to_telegram_html(f'{FENCE}py" onclick="x\n1\n{FENCE}') == (
        '<pre><code class="language-py">1</code></pre>')


def test_unclosed_fence_runs_to_the_end() -> None:
    assert to_telegram_html(f"Look:\n{FENCE}js\nlet a = 1;") == (
        'Look:\n\n<pre><code class="language-js">let a = 1;</code></pre>')


def test_tables_are_aligned_text_in_a_pre_block() -> None:
    text = ("| Name | Age | City |\n|---|---:|:---:|\n"
            "| Alice | 30 | Paris |\n| **Bob** | 4 | [Rome](https://rome.it) |")
    assert to_telegram_html(text) == (
        "<pre>Name  | Age | City\n"
        "------+-----+------\n"
        "Alice |  30 | Paris\n"
        "Bob   |   4 | Rome</pre>")


def test_table_columns_count_wide_characters_twice() -> None:
    rendered = visible_text(to_telegram_html("| a | b |\n|---|---|\n| 東京 | x |\n| ab | y |"))
    assert rendered.splitlines()[2:] == ["東京 | x", "ab   | y"]


def test_quotes_are_blockquotes_and_do_not_nest() -> None:
    assert to_telegram_html("> quoted **text**\n> > deeper\n\nafter") == (
        "<blockquote>quoted <b>text</b>\n\ndeeper</blockquote>\n\nafter")


def test_raw_html_is_shown_as_text() -> None:
    assert to_telegram_html('<b>hi</b> <script>x()</script>\n\n<div class="a">\nblock\n</div>') == (
        "&lt;b&gt;hi&lt;/b&gt; &lt;script&gt;x()&lt;/script&gt;\n\n"
        "&lt;div class=\"a\"&gt;\nblock\n&lt;/div&gt;")
    assert to_telegram_html("5 < 6 & 7 > 2") == "5 &lt; 6 &amp; 7 &gt; 2"


def test_only_http_https_and_tg_addresses_become_links() -> None:
    assert to_telegram_html("[me](tg://user?id=42) [site](HTTPS://a.b)") == (
        '<a href="tg://user?id=42">me</a> <a href="HTTPS://a.b">site</a>')
    assert to_telegram_html("[mail](mailto:a@b.c) [docs](/docs) [f](ftp://x/y)") == (
        "mail (mailto:a@b.c) docs f (ftp://x/y)")
    assert "<a" not in to_telegram_html("[x](javascript:alert(1)) [y](data:text/html,hi)")
    assert to_telegram_html("<https://example.com/x>") == (
        '<a href="https://example.com/x">https://example.com/x</a>')


def test_bare_addresses_stay_as_written() -> None:
    # Telegram links a bare address itself; emphasis markers inside it are part of it.
    assert to_telegram_html("See https://x.org/_a_/*b*/c_(d), or http://y.io/**z**.") == (
        "See https://x.org/_a_/*b*/c_(d), or http://y.io/**z**.")
    assert to_telegram_html("*(https://x.org/a_b_)*") == "<i>(https://x.org/a_b_)</i>"
    assert to_telegram_html("not a url: https:// or xhttps://x.org/*y*") == (
        "not a url: https:// or xhttps://x.org/<i>y</i>")


def test_images_are_links() -> None:
    assert to_telegram_html("![a *cat*](https://x.org/cat.png)") == (
        '<a href="https://x.org/cat.png">a cat</a>')
    assert to_telegram_html("![](https://x.org/cat.png)") == (
        '<a href="https://x.org/cat.png">image</a>')
    assert to_telegram_html("[![logo](https://x.org/l.png)](https://x.org)") == (
        '<a href="https://x.org">logo</a>')


def test_spoilers() -> None:
    assert to_telegram_html("The end: ||he **was** the butler||.") == (
        "The end: <tg-spoiler>he <b>was</b> the butler</tg-spoiler>.")
    assert to_telegram_html("a || b || c, and `x||y||z`") == "a || b || c, and <code>x||y||z</code>"


def test_identifiers_and_arithmetic_keep_their_stars_and_underscores() -> None:
    assert to_telegram_html("snake_case_name and 2*3*4 = 24 and a*b") == (
        "snake_case_name and 2*3*4 = 24 and a*b")
    assert to_telegram_html("__init__ and __main__, but __Bold__ and __two words__") == (
        "__init__ and __main__, but <b>Bold</b> and <b>two words</b>")


def test_empty_and_blank_replies_stay_non_empty_when_the_input_was() -> None:
    assert to_telegram_html("") == ""
    assert to_telegram_html(f"{FENCE}\n{FENCE}") == FENCE + "\n" + FENCE


# Fragments chosen to break naive renderers: unbalanced markers, markers across lines, HTML,
# entities, odd links, fences inside lists and quotes, tables with stray pipes.
FRAGMENTS = [
    "plain text", "**bold", "bold**", "*it*", "_under_score_", "***both***", "~~s~~", "~~",
    "`code", "``a ` b``", "[link](https://example.com/a_b*c*)", "[**bold link**](http://x.y)",
    "[bad](javascript:alert(1))", "https://u.rl/_a_/*b*", "(http://x.y/z_)",
    "[rel](../x)", "![img](https://x/i.png)", "<https://auto.link>",
    "<b>raw</b>", "<i", "</pre>", "&amp; &copy; &#60; & < >", "a || b", "||spoiler *it*||",
    "# Heading *x*", "- item", "  - nested item", "1. first", "10) tenth", "> quote", "> > deep",
    FENCE + "py", FENCE, "~~~", "    indented code", "| a | b |", "|---|---|", "| 1 | 2 |",
    "---", "\\*escaped\\*", "line  \nbreak", "emoji 🎉 and 東京", 'quote " and \' marks',
]
SEPARATORS = ["", " ", "\n", "\n\n"]


def _assert_valid(markdown: str) -> None:
    rendered = to_telegram_html(markdown)
    assert problems(rendered) == [], (markdown, rendered)
    parse_html(rendered)  # the fake Bot API's own parser accepts it too
    if markdown.strip():
        assert visible_text(rendered).strip(), (markdown, rendered)


@pytest.mark.parametrize("separator", SEPARATORS, ids=repr)
def test_every_pair_of_fragments_renders_valid_html(separator: str) -> None:
    for first, second in itertools.product(FRAGMENTS, repeat=2):
        _assert_valid(first + separator + second)


def test_random_combinations_of_fragments_render_valid_html() -> None:
    generator = random.Random(20240601)
    prefixes = ["", "- ", "> ", "1. ", "   ", "  - "]
    for _ in range(1500):
        lines = [generator.choice(prefixes) + separator.join(
                    generator.choices(FRAGMENTS, k=generator.randint(1, 3)))
                 for separator in generator.choices(SEPARATORS, k=generator.randint(1, 6))]
        _assert_valid("\n".join(lines))


def test_deep_nesting_renders_valid_html() -> None:
    for depth in (5, 40, 300):
        for opener in ("> ", "- ", "1. "):
            markdown = "".join(opener * level + f"level {level}\n" for level in range(depth))
            _assert_valid(markdown)
            if depth <= 40:  # beyond any real reply the parser stops descending
                shown = visible_text(to_telegram_html(markdown))
                assert all(f"level {level}" in shown for level in range(depth))
        _assert_valid("[" * depth + "x" + "](https://a.b)" * depth)
        _assert_valid("*" * depth + "x" + "*" * depth)
