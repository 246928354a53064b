"""User text inside Markdown renders as typed (checked with a CommonMark renderer)."""

from __future__ import annotations

import pytest
from markdown_it import MarkdownIt

from anime_face_id.markdown_text import literal

RENDERER = MarkdownIt("commonmark")


def as_html_text(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


@pytest.mark.parametrize(
    "name",
    [
        "Rem [Re:Zero]",
        "**bold** _it_ `code`",
        "[link](http://example.invalid)",
        "$x^2$ and \\ backslash",
        "# not a header",
        "1. not a list",
        "<b>html</b> & co",
        ":red[not red] :material/cancel:",
        "黒子テツヤ",
        "Émilie",
    ],
)
def test_a_name_renders_as_typed(name):
    assert RENDERER.renderInline(literal(name)) == as_html_text(name)
    assert RENDERER.render(literal(name)) == f"<p>{as_html_text(name)}</p>\n"


def test_line_breaks_become_spaces():
    assert literal("two\nlines") == "two lines"
