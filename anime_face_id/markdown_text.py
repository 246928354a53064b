"""Text from users (character names, file names) shown inside Markdown, as in Streamlit's
headers, buttons and messages: every ASCII punctuation mark is backslash-escaped, as
CommonMark allows, so "Rem [Re:Zero]" or "**x**" or "$5" read as typed rather than as a
link, bold, a colour directive or LaTeX."""

from __future__ import annotations

import re
import string

_PUNCTUATION = re.compile("([" + re.escape(string.punctuation) + "])")


def literal(text: str) -> str:
    """``text`` escaped for Markdown; line breaks become spaces (one line of text)."""
    return _PUNCTUATION.sub(r"\\\1", " ".join(str(text).splitlines()))
