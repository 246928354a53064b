"""Fetching a character's candidates: each one obtained (downloaded or read) and validated
in a thread pool, in a window ahead of what is needed, and the first ``limit`` unique images
kept, in candidate order. Images are stored as ``<sha256>.<ext>`` through atomic writes;
duplicates (same sha256 within a character) are rejected as "duplicate of <sha256>".
"""

from __future__ import annotations

import functools
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from anime_face_id.collect_journal import JOURNAL, Journal, candidate_key
from anime_face_id.collect_records import (
    DONE,
    SEARCH_ERROR,
    CharacterCollectResult,
    Collection,
    now_iso,
    policy_digest,
)
from anime_face_id.config import CollectConfig
from anime_face_id.download import (
    Downloader,
    FetchRejected,
    ValidatedImage,
    image_filename,
    read_local_file,
    store_image,
    validate_image,
)
from anime_face_id.fileio import atomic_write_json, sweep_temporaries
from anime_face_id.layout import RAW_DIR, posix
from anime_face_id.redaction import redact_credentials
from anime_face_id.sources.base import Found, as_found, is_web_url, resolve_source

IMAGE_FILE = re.compile(r"[0-9a-f]{64}\.[a-z0-9]+")

Progress = Callable[[int, int], None]


def _local_path(root: Path, candidate: str) -> Path:
    return resolve_source(candidate, root)


def _stamp(root: Path, candidate: str, local: bool) -> str | None:
    """Identifies the content of a local file (size and mtime), so a replaced file is
    read again; URLs have none."""
    if not local:
        return None
    try:
        stat = _local_path(root, candidate).stat()
    except OSError:
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _obtain(
    candidate: str, root: Path, config: CollectConfig, downloader: Downloader, local: bool
) -> tuple[dict, ValidatedImage | None]:
    """Fetch (or read) and validate one candidate; every failure becomes a reason."""
    entry: dict[str, object] = {
        "key": candidate_key(candidate),
        "url": redact_credentials(candidate),  # the journal is a file: no secrets in it
        "time": now_iso(),
        "policy": policy_digest(config),
        "stamp": _stamp(root, candidate, local),
    }
    try:
        if local and not is_web_url(candidate):
            data = read_local_file(_local_path(root, candidate), config.max_bytes)
        else:
            data = downloader.fetch(candidate)
        image = validate_image(data, config.max_pixels, config.max_decode_mb * 2**20)
    except FetchRejected as rejected:
        return {**entry, "status": "rejected", "reason": redact_credentials(rejected.reason)}, None
    except Exception as error:  # a bug or an odd library error must cost one image, not the run
        return {
            **entry,
            "status": "rejected",
            # library messages may quote the URL, credentials included
            "reason": redact_credentials(f"unexpected error: {type(error).__name__}: {error}"),
        }, None
    details = {
        "status": "image",
        "sha256": image.sha256,
        "ext": image.extension,
        "format": image.format,
        "phash": image.phash,
        "width": image.width,
        "height": image.height,
        "size": image.size,
    }
    return {**entry, **details}, image


# --- choosing what a character ends up with ------------------------------------------------


class _Selection:
    """Outcomes in candidate order -> manifest rows (unique sha256, at most ``limit``) and
    reject rows."""

    def __init__(self, collection: Collection, found: Found):
        self.character = collection.character
        self.slug = collection.slug
        self.config = collection.config
        self.directory = collection.directory
        self.found = found
        self.kept: list[dict] = []
        self.rejected: list[dict] = []
        self.shas: set[str] = set()

    @property
    def room(self) -> int:
        return self.config.limit - len(self.kept)

    def reject(self, candidate: str, reason: str, when: str) -> None:
        self.rejected.append(
            {
                "character": self.character.name,
                "slug": self.slug,
                "url_or_path": redact_credentials(candidate),
                "reason": reason,
                "backend": self.config.backend,
                "time": when,
            }
        )

    def add(self, candidate: str, entry: dict, image: ValidatedImage | None) -> None:
        if entry["status"] != "image":
            self.reject(candidate, entry["reason"], entry["time"])
            return
        if entry["sha256"] in self.shas:
            self.reject(candidate, f"duplicate of {entry['sha256']}", entry["time"])
            return
        if image is not None:
            store_image(self.directory, image)
        filename = image_filename(entry["sha256"], entry["ext"])
        self.shas.add(entry["sha256"])
        self.kept.append(
            {
                "character": self.character.name,
                "slug": self.slug,
                "path": posix(RAW_DIR / self.slug / filename),
                "url": redact_credentials(candidate),
                "sha256": entry["sha256"],
                "phash": entry["phash"],
                "width": entry["width"],
                "height": entry["height"],
                "format": entry["format"],
                "backend": self.config.backend,
                "query": self.found.query or self.character.search_query,
                "fetched_at": entry["time"],
                **self.found.details.get(candidate, {}),
            }
        )

    def reusable(self, entry: dict | None, stamp: str | None, policy: str) -> dict | None:
        """A journal entry that can stand in for fetching again, or None."""
        if entry is None or entry.get("policy") != policy or entry.get("stamp") != stamp:
            return None
        if entry["status"] == "image":
            stored = self.directory / image_filename(entry["sha256"], entry["ext"])
            if entry["sha256"] not in self.shas and not stored.is_file():
                return None  # pruned earlier, or never stored because it was a duplicate
        return entry


def _outcomes(
    candidates: Iterable[str],
    cached: Callable[[str], dict | None],
    fetch: Callable[[str], tuple[dict, ValidatedImage | None]],
    pool: ThreadPoolExecutor,
    window: int,
    room: Callable[[], int],
) -> Iterator[tuple[str, dict, ValidatedImage | None, bool]]:
    """(candidate, entry, image, fetched now) in candidate order. At most ``window``
    fetches are in flight, and no more than can still be kept (``room``), so a character
    never gets more than ``limit`` images and memory stays bounded."""
    pending: deque[tuple[str, Future | dict]] = deque()
    queue = iter(candidates)
    while True:
        while len(pending) < min(window, room()):
            candidate = next(queue, None)
            if candidate is None:
                break
            entry = cached(candidate)
            pending.append(
                (candidate, entry if entry is not None else pool.submit(fetch, candidate))
            )
        if not pending:
            return
        candidate, item = pending.popleft()
        if isinstance(item, Future):
            entry, image = item.result()
            yield candidate, entry, image, True
        else:
            yield candidate, item, None, False


def _prune_unselected(directory: Path, kept_rows: list[dict]) -> None:
    """Leave exactly the selected images (DVC tracks the directory as a whole)."""
    wanted = {Path(row["path"]).name for row in kept_rows}
    for entry in directory.iterdir():
        if entry.is_file() and IMAGE_FILE.fullmatch(entry.name) and entry.name not in wanted:
            entry.unlink()


def fetch_candidates(
    collection: Collection,
    found: list[str] | Found,
    progress: Progress | None = None,
) -> CharacterCollectResult:
    """Fetch, validate and store candidates in order until ``limit`` images are kept,
    reusing the journal; then record the collection as complete. A character already
    complete for these settings is left untouched and reported as skipped, whatever the
    candidates (so a caller may pass [] once ``is_collected`` said yes)."""
    if collection.is_collected():
        return collection.skipped_result()
    root, config = collection.root, collection.config
    directory = collection.directory
    directory.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(directory)
    found = as_found(found)
    candidates = found.candidates
    local = config.backend == "folder"
    policy = policy_digest(config)
    selection = _Selection(collection, found)
    searched_at = now_iso()
    for where, reason in found.skipped:
        selection.reject(where, reason, searched_at)
    journal = Journal(directory / JOURNAL)
    fetched = processed = 0

    def cached(candidate: str) -> dict | None:
        entry = journal.entries.get(candidate_key(candidate))
        return selection.reusable(entry, _stamp(root, candidate, local), policy)

    try:
        with Downloader(config) as downloader, ThreadPoolExecutor(config.workers) as pool:
            fetch = functools.partial(
                _obtain, root=root, config=config, downloader=downloader, local=local
            )
            window = 2 * config.workers
            for candidate, entry, image, fresh in _outcomes(
                candidates, cached, fetch, pool, window, lambda: selection.room
            ):
                selection.add(candidate, entry, image)  # stores the image before journaling it
                if fresh:
                    journal.append(entry)
                    fetched += 1
                processed += 1
                if progress:
                    progress(processed, len(candidates))
    finally:
        journal.close()
    if not candidates:
        why = "the search returned nothing"
        if found.skipped:
            why = f"all {len(found.skipped)} search results were skipped"
        selection.reject("", f"no candidates: {why}", now_iso())
    if progress:
        progress(len(candidates), len(candidates))
    atomic_write_json(
        directory / DONE,
        {
            "fingerprint": collection.fingerprint,
            "finished_at": now_iso(),
            "candidates": len(candidates),
            "kept": selection.kept,
            "rejected": selection.rejected,
        },
    )
    (directory / SEARCH_ERROR).unlink(missing_ok=True)
    _prune_unselected(directory, selection.kept)
    return collection.result(len(candidates), len(selection.kept), len(selection.rejected), fetched)
