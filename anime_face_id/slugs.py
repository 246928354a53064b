"""Filesystem-safe, unique slugs for arbitrary character names.

A slug is the only part of a character's name that ever reaches a path, so it must be
safe whatever the name holds (spaces, unicode, slashes, dots, "..") and two names must
never share one. A slug depends on its name alone, so adding a character never renames
another's folders.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

_UNSAFE = re.compile(r"[^a-z0-9]+")
_MAX_LEN = 48


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]


def slugify(name: str) -> str:
    """Lower-case ASCII words joined by underscores; a hash suffix when the name lost
    information on the way (non-ASCII letters, punctuation), so that distinct names stay
    distinct and a name with no ASCII letters still gets a non-empty slug."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    base = _UNSAFE.sub("_", ascii_name.lower()).strip("_")[:_MAX_LEN].strip("_")
    plain = " ".join(name.split())
    lossless = plain.lower() == base.replace("_", " ") or plain == base
    if base and lossless:
        return base
    return f"{base}_{_digest(name)}" if base else f"c_{_digest(name)}"


def assign_slugs(names: list[str]) -> dict[str, str]:
    """Map each name to its slug. A name listed twice, or two names that would share a
    slug (they differ only in case, spaces or underscores: "Kuroko Tetsuya" and
    "kuroko_tetsuya"), are refused: a slug names a character's folders and the review
    decisions about its crops, so it must not change when another character is added."""
    seen_names: dict[str, str] = {}
    for name in names:
        # "Rem", "rem" and "Rem " search for the same pictures: one character, not three
        key = " ".join(name.split()).casefold()
        if key in seen_names:
            first = seen_names[key]
            if first == name:
                raise ValueError(f"character {name!r} is listed twice")
            raise ValueError(
                f"characters {first!r} and {name!r} differ only in case or spaces: "
                "they are one character, list it once"
            )
        seen_names[key] = name
    slugs: dict[str, str] = {}
    named: dict[str, str] = {}
    for name in names:
        slug = slugify(name)
        if slug in named:
            raise ValueError(
                f"characters {named[slug]!r} and {name!r} would share the folder name "
                f"{slug!r}: they are one character, list it once (or name them apart; a "
                f"project of an older version keeps their data under {slug}_<8 hex digits>: "
                "rename those folders with the name you keep)"
            )
        named[slug] = name
        slugs[name] = slug
    return slugs


def is_safe_slug(slug: str) -> bool:
    return bool(re.fullmatch(r"[a-z0-9]+(?:_[a-z0-9]+)*", slug))
