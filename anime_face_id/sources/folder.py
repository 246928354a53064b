"""The offline backend: import an existing ``<folder>/<character>/*`` tree.

The sub-directory may be named after the character's slug or after its exact name
(compared in Unicode NFC, since some file systems store names decomposed). The name is
only ever compared with directory entries, never joined into a path, so a name holding
"/" or ".." cannot point anywhere else.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from pathlib import Path

from anime_face_id.config import Character, CollectConfig
from anime_face_id.layout import posix
from anime_face_id.sources.base import Found, SearchError, resolve_source

NOT_UTF8 = "file name is not valid UTF-8"


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def character_directory(character: Character, slug: str, folder: Path) -> Path:
    """The character's sub-directory of ``folder``: exact name first, then slug."""
    if not folder.is_dir():
        raise SearchError(f"folder backend: {folder} is not a directory")
    subdirectories = [entry for entry, is_dir in _listing(folder) if is_dir]
    for wanted in (_nfc(character.name), slug):
        match = next((entry for entry in subdirectories if _nfc(entry.name) == wanted), None)
        if match is not None:
            return match
    raise SearchError(
        f"folder backend: no directory for {character.name!r}: looked for "
        f"{folder / slug} and {folder}/{character.name}"
    )


def _listing(directory: Path) -> list[tuple[Path, bool]]:
    """(entry, is a directory) for each entry of ``directory``; a folder that cannot be
    listed (no permission, an I/O error) is a SearchError, so it costs this character a
    recorded reject rather than the whole stage a traceback."""
    try:
        return [(entry, entry.is_dir()) for entry in directory.iterdir()]
    except OSError as error:
        raise SearchError(
            f"folder backend: cannot list {directory}: {error.strerror or error}"
        ) from None


def visible_entries(directory: Path) -> list[Path]:
    """Direct entries but sub-folders (a user's own sorting, not pictures), sorted by
    name; hidden ones (.DS_Store and the like) are skipped. Pipes, devices and broken
    links stay: reading them fails, so each becomes a reject row with its reason instead
    of vanishing from the count."""
    return sorted(
        (
            entry
            for entry, is_dir in _listing(directory)
            if not entry.name.startswith(".") and not is_dir
        ),
        key=lambda entry: entry.name,
    )


def image_files(directory: Path) -> list[Path]:
    """The regular files among ``visible_entries``."""
    return [entry for entry in visible_entries(directory) if entry.is_file()]


def is_utf8(path: str) -> bool:
    """False for a name whose bytes are not UTF-8 (Python holds them as lone surrogates),
    which the manifest, a UTF-8 CSV, cannot hold."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(path: str) -> str:
    """``path`` writable as UTF-8, each byte that is not UTF-8 written as a backslash
    escape (\\xff), so the reject row can say which file it was."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def search(
    character: Character, slug: str, config: CollectConfig, root: Path | None = None
) -> Found:
    """Candidate paths as the config spells them (relative to the project root when the
    configured folder is relative), so the manifest does not depend on where it lives.
    A file whose name is not UTF-8 is skipped with its reason (a reject row)."""
    if not config.folder:
        raise SearchError("folder backend: collect.folder is not set")
    directory = character_directory(character, slug, resolve_source(config.folder, root))
    configured = Path(config.folder) / directory.name
    paths = [posix(configured / entry.name) for entry in visible_entries(directory)]
    return Found(
        candidates=[path for path in paths if is_utf8(path)],
        skipped=[(shown(path), NOT_UTF8) for path in paths if not is_utf8(path)],
    )


def listing_digest(
    character: Character, slug: str, config: CollectConfig, root: Path | None
) -> str:
    """Changes when a file is added, removed or replaced: part of the 'already collected'
    fingerprint, so a changed folder is imported again."""
    try:
        directory = character_directory(character, slug, resolve_source(config.folder or "", root))
        entries = visible_entries(directory)
    except (SearchError, OSError) as error:
        return f"unavailable: {error}"
    digest = hashlib.sha256()
    for entry in entries:
        try:
            stat = entry.stat()
        except OSError:  # a broken link: its own stamp, so mending it imports again
            try:
                stat = entry.lstat()
            except OSError:  # gone since the listing
                continue
        # fsencode: the name's own bytes, which need not be UTF-8
        digest.update(os.fsencode(entry.name) + f"\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
