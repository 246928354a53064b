"""The collect stage: for each character, search, fetch, validate and store up to
``limit`` images, and write ``data/raw/manifest.csv`` and ``data/raw/rejects.csv``.

State per character lives next to its images in ``data/raw/<slug>/``:

- ``_journal.jsonl``: one JSON line per candidate whose outcome is known (an image with
  its hash and size, or a reject reason). It is appended as work finishes, so a run killed
  at any point resumes without fetching those candidates again; a torn last line is
  ignored. Entries remember the downloader policy they were made under and are only
  reused under the same one.
- ``_done.json``: written last, when a character's collection completed: the fingerprint
  of what was asked (backend, query, limit, source, policy) and the chosen manifest and
  reject rows. A later run with the same fingerprint skips the character without searching.
- ``_search_error.json``: the last failed search, reported as a reject row.

Images are stored as ``<sha256>.<ext>`` through atomic writes; duplicates (same sha256
within a character) are rejected as "duplicate of <sha256>".

Candidate URLs may carry credentials (``https://user:secret@host/x.jpg``). Only the fetch
sees them: the journal, ``_done.json`` and both CSVs hold ``redact_credentials(url)``, and
the journal is keyed on that redacted form too.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from anime_face_id.config import Character, CollectConfig, Params
from anime_face_id.download import (
    Downloader,
    FetchRejected,
    ValidatedImage,
    image_filename,
    read_local_file,
    store_image,
    validate_image,
)
from anime_face_id.errors import StageError
from anime_face_id.fileio import (
    atomic_write_json,
    atomic_write_text,
    read_csv,
    sweep_temporaries,
    write_csv,
)
from anime_face_id.layout import (
    RAW_COLUMNS,
    RAW_DIR,
    RAW_MANIFEST,
    RAW_REJECT_COLUMNS,
    RAW_REJECTS,
    posix,
)
from anime_face_id.redaction import redact_credentials
from anime_face_id.slugs import is_safe_slug
from anime_face_id.sources import SearchError, get_backend
from anime_face_id.sources import folder as folder_source
from anime_face_id.sources import urls as urls_source
from anime_face_id.sources.base import is_web_url, resolve_source, unique
from anime_face_id.sources.reachability import check_search_reachable

JOURNAL = "_journal.jsonl"
DONE = "_done.json"
SEARCH_ERROR = "_search_error.json"
IMAGE_FILE = re.compile(r"[0-9a-f]{64}\.[a-z0-9]+")

Progress = Callable[[int, int], None]


@dataclass
class CharacterCollectResult:
    character: str
    slug: str
    candidates: int
    kept: int
    rejected: int
    fetched: int  # candidates downloaded (or read) in this run, whatever their outcome
    skipped: bool  # already complete for the same settings: nothing searched or fetched


# --- where things live, and what a collection is keyed on ---------------------------------


def character_dir(root: Path, slug: str) -> Path:
    if not is_safe_slug(slug):
        raise ValueError(f"unsafe slug {slug!r}")
    return Path(root) / RAW_DIR / slug


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def policy_digest(config: CollectConfig) -> str:
    """The downloader settings that decide whether a URL gives a usable image; outcomes
    recorded under other settings are not reused."""
    policy = [
        config.max_bytes,
        config.max_pixels,
        config.max_redirects,
        sorted(config.allow_networks),
    ]
    return hashlib.sha256(json.dumps(policy).encode()).hexdigest()[:16]


def collection_fingerprint(
    root: Path, character: Character, slug: str, config: CollectConfig
) -> dict:
    fingerprint: dict[str, object] = {
        "backend": config.backend,
        "query": character.search_query,
        "limit": config.limit,
        "policy": policy_digest(config),
    }
    if config.backend == "google":
        fingerprint["search_url"] = config.search_url
    elif config.backend == "folder":
        fingerprint["source"] = config.folder
        fingerprint["listing"] = folder_source.listing_digest(character, slug, config, root)
    elif config.backend == "urls":
        fingerprint["source"] = config.urls
        fingerprint["listing"] = urls_source.listing_digest(character, slug, config, root)
    return fingerprint


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _done_record(root: Path, character: Character, slug: str, config: CollectConfig) -> dict | None:
    """The completed collection for the current settings, if there is one."""
    directory = character_dir(root, slug)
    done = _read_json(directory / DONE)
    if done is None or done.get("fingerprint") != collection_fingerprint(
        root, character, slug, config
    ):
        return None
    return done


def is_collected(root: Path, character: Character, slug: str, config: CollectConfig) -> bool:
    done = _done_record(root, character, slug, config)
    if done is None:
        return False
    directory = character_dir(root, slug)
    return all((directory / Path(row["path"]).name).is_file() for row in done.get("kept", []))


# --- the journal ----------------------------------------------------------------------


def read_journal(path: Path) -> tuple[dict[str, dict], bool]:
    """Entries by candidate (the last one wins) and whether unreadable lines were found
    (a line torn by a kill, or garbage)."""
    entries: dict[str, dict] = {}
    damaged = False
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return entries, False
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if _well_formed(entry):
            entries[entry["url"]] = entry
        else:
            damaged = True
    return entries, damaged or (bool(text) and not text.endswith("\n"))


_ENTRY_KEYS = {
    "image": ("url", "time", "sha256", "ext", "format", "phash", "width", "height"),
    "rejected": ("url", "time", "reason"),
}


def _well_formed(entry: object) -> bool:
    if not isinstance(entry, dict) or entry.get("status") not in _ENTRY_KEYS:
        return False
    return isinstance(entry.get("url"), str) and all(
        key in entry for key in _ENTRY_KEYS[entry["status"]]
    )


class Journal:
    """Append-only record of finished candidates; one ``write`` per line, so a kill
    leaves at worst one torn last line, which ``open`` repairs."""

    def __init__(self, path: Path):
        self.path = path
        read, damaged = read_journal(path)
        # Journals written before a secret was redacted are cleaned the first time they are
        # opened again, so no old file keeps a password or a token.
        self.entries = {}
        for entry in read.values():
            clean = _redacted_entry(entry)
            self.entries[clean["url"]] = clean
        if damaged or list(self.entries.values()) != list(read.values()):
            lines = "".join(
                json.dumps(entry, sort_keys=True) + "\n" for entry in self.entries.values()
            )
            atomic_write_text(path, lines)
        self._handle = path.open("a", encoding="utf-8")

    def append(self, entry: dict) -> None:
        self._handle.write(json.dumps(entry, sort_keys=True) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.entries[entry["url"]] = entry

    def close(self) -> None:
        self._handle.close()


def _redacted_entry(entry: dict) -> dict:
    clean = {**entry, "url": redact_credentials(entry["url"])}
    if isinstance(entry.get("reason"), str):
        clean["reason"] = redact_credentials(entry["reason"])
    return clean


# --- fetching one candidate ----------------------------------------------------------------


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
        "url": redact_credentials(candidate),  # the journal is a file: no secrets in it
        "time": _now(),
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

    def __init__(self, character: Character, slug: str, config: CollectConfig, directory: Path):
        self.character = character
        self.slug = slug
        self.config = config
        self.directory = directory
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
                "query": self.character.search_query,
                "fetched_at": entry["time"],
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
    root: Path,
    character: Character,
    slug: str,
    config: CollectConfig,
    candidates: list[str],
    progress: Progress | None = None,
) -> CharacterCollectResult:
    """Fetch, validate and store candidates in order until ``limit`` images are kept,
    reusing the journal; then record the collection as complete. A character already
    complete for these settings is left untouched and reported as skipped, whatever the
    candidates (so a caller may pass [] once ``is_collected`` said yes)."""
    root = Path(root)
    if is_collected(root, character, slug, config):
        return _skipped_result(root, character, slug, config)
    directory = character_dir(root, slug)
    directory.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(directory)
    fingerprint = collection_fingerprint(root, character, slug, config)
    candidates = unique(candidates)
    local = config.backend == "folder"
    policy = policy_digest(config)
    selection = _Selection(character, slug, config, directory)
    journal = Journal(directory / JOURNAL)
    fetched = processed = 0

    def cached(candidate: str) -> dict | None:
        entry = journal.entries.get(redact_credentials(candidate))  # how _obtain keyed it
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
        selection.reject("", "no candidates: the search returned nothing", _now())
    if progress:
        progress(len(candidates), len(candidates))
    atomic_write_json(
        directory / DONE,
        {
            "fingerprint": fingerprint,
            "finished_at": _now(),
            "candidates": len(candidates),
            "kept": selection.kept,
            "rejected": selection.rejected,
        },
    )
    (directory / SEARCH_ERROR).unlink(missing_ok=True)
    _prune_unselected(directory, selection.kept)
    return CharacterCollectResult(
        character.name,
        slug,
        len(candidates),
        len(selection.kept),
        len(selection.rejected),
        fetched,
        False,
    )


# --- searching, failures, the whole stage ------------------------------------------------------


def find_candidates(
    character: Character, slug: str, config: CollectConfig, root: Path | None = None
) -> list[str]:
    """Ask the configured backend; raises SearchError. ``root`` resolves relative
    folder/CSV paths (default: the working directory)."""
    return unique(get_backend(config)(character, slug, config, root=root))


def record_search_failure(
    root: Path, character: Character, slug: str, config: CollectConfig, reason: str
) -> CharacterCollectResult:
    directory = character_dir(Path(root), slug)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        directory / SEARCH_ERROR,
        {
            "fingerprint": collection_fingerprint(Path(root), character, slug, config),
            "reason": redact_credentials(reason),  # a search error may quote its URL
            "time": _now(),
        },
    )
    return CharacterCollectResult(character.name, slug, 0, 0, 1, 0, False)


def _search_failure_reason(reason: str) -> str:
    return reason if reason.startswith("search failed") else f"search failed: {reason}"


def _search_label(character: Character, config: CollectConfig) -> str:
    source = {"folder": config.folder, "urls": config.urls}.get(config.backend)
    return f"search:{config.backend}:{source or character.search_query}"


def character_rows(
    root: Path, character: Character, slug: str, config: CollectConfig
) -> tuple[list[dict], list[dict]]:
    """Manifest and reject rows of one character under the current settings."""
    directory = character_dir(root, slug)
    reject = {
        "character": character.name,
        "slug": slug,
        "url_or_path": _search_label(character, config),
        "backend": config.backend,
    }
    done = _done_record(root, character, slug, config)
    if done is None:
        failure = _read_json(directory / SEARCH_ERROR)
        fingerprint = collection_fingerprint(root, character, slug, config)
        if failure is not None and failure.get("fingerprint") == fingerprint:
            return [], [
                {
                    **reject,
                    "reason": _search_failure_reason(failure["reason"]),
                    "time": failure["time"],
                }
            ]
        return [], [{**reject, "reason": "not collected for the current settings", "time": _now()}]
    kept, rejected = [], [{**row, "character": character.name} for row in done.get("rejected", [])]
    for row in done.get("kept", []):
        if (directory / Path(row["path"]).name).is_file():
            kept.append({**row, "character": character.name})
        else:
            rejected.append(
                {
                    **reject,
                    "url_or_path": row["url"],
                    "reason": "stored file missing",
                    "time": _now(),
                }
            )
    return kept, rejected


def prune_unlisted(root: Path, slugs: Iterable[str]) -> list[str]:
    """Remove ``data/raw/<slug>`` directories of characters no longer in params."""
    raw = Path(root) / RAW_DIR
    listed = set(slugs)
    removed = []
    if raw.is_dir():
        for entry in sorted(raw.iterdir()):
            if entry.name in listed or not entry.is_dir():
                continue
            if entry.is_symlink():
                entry.unlink()
            else:
                shutil.rmtree(entry)
            removed.append(entry.name)
    return removed


def write_collect_outputs(root: Path, params: Params) -> list[dict]:
    """manifest.csv and rejects.csv for exactly the characters in params; returns one
    summary row per character: {character, slug, images, rejected}."""
    root = Path(root)
    slugs = params.slugs
    manifest: list[dict] = []
    rejects: list[dict] = []
    summary: list[dict] = []
    for character in params.characters:
        slug = slugs[character.name]
        kept, rejected = character_rows(root, character, slug, params.collect)
        manifest += kept
        rejects += rejected
        summary.append(
            {
                "character": character.name,
                "slug": slug,
                "images": len(kept),
                "rejected": len(rejected),
            }
        )
    prune_unlisted(root, slugs.values())
    write_csv(root / RAW_MANIFEST, RAW_COLUMNS, sorted(manifest, key=lambda row: row["path"]))
    reject_order = sorted(rejects, key=lambda row: (row["slug"], row["url_or_path"], row["reason"]))
    write_csv(root / RAW_REJECTS, RAW_REJECT_COLUMNS, reject_order)
    return summary


def _skipped_result(
    root: Path, character: Character, slug: str, config: CollectConfig
) -> CharacterCollectResult:
    done = _done_record(root, character, slug, config) or {}
    return CharacterCollectResult(
        character.name,
        slug,
        int(done.get("candidates", 0)),
        len(done.get("kept", [])),
        len(done.get("rejected", [])),
        0,
        True,
    )


def collect_character(
    root: Path,
    character: Character,
    slug: str,
    config: CollectConfig,
    search: Callable[..., list[str]] = find_candidates,
    progress: Callable[[int, int], None] | None = None,
) -> CharacterCollectResult:
    """Skip a character already collected with these settings; otherwise search (through
    ``search``, which an orchestrator may wrap with retries) and download. A failed search
    is recorded as a reject, never raised."""
    if is_collected(root, character, slug, config):
        return _skipped_result(root, character, slug, config)
    try:
        candidates = search(character, slug, config, root=root)
    except SearchError as error:
        return record_search_failure(root, character, slug, config, str(error))
    return fetch_candidates(root, character, slug, config, candidates, progress)


def sweep_interrupted(root: Path) -> int:
    """Remove temporaries an interrupted run left in data/raw (call before collecting)."""
    return sweep_temporaries(Path(root) / RAW_DIR)


def prepare_collection(root: Path, params: Params) -> None:
    """Before any character: remove what an interrupted run left, and when some character
    still needs a web search, check once that the search engine answers (StageError if
    not: one line in seconds rather than a failed search per character)."""
    sweep_interrupted(root)
    slugs = params.slugs
    if any(
        not is_collected(root, character, slugs[character.name], params.collect)
        for character in params.characters
    ):
        check_search_reachable(params.collect)


def check_something_collected(results: list[CharacterCollectResult], root: Path) -> None:
    """A collection with no image for any character is a failure, not a result to lock
    (DVC would record it, and the next run would not search again): StageError naming the
    commonest reasons in data/raw/rejects.csv."""
    if not results or any(result.kept for result in results):
        return
    reasons = Counter(
        row["reason"].split(":")[0]
        for row in read_csv(Path(root) / RAW_REJECTS)
        if row.get("reason")
    )
    common = "; ".join(f"{reason} ({count})" for reason, count in reasons.most_common(3))
    raise StageError(
        f"collect obtained no image for any of the {len(results)} character(s)"
        + (f": {common}" if common else "")
        + f". See {RAW_REJECTS.as_posix()}; nothing was recorded as collected, so the next "
        "run searches again."
    )


def collect_all(
    root: Path,
    params: Params,
    progress: Callable[[int, int, CharacterCollectResult], None] | None = None,
) -> list[CharacterCollectResult]:
    """Collect every character in turn, then write the stage outputs. ``progress`` is
    called after each character with (characters done, characters in all, its result)."""
    root = Path(root)
    prepare_collection(root, params)
    slugs = params.slugs
    results = []
    for index, character in enumerate(params.characters, start=1):
        result = collect_character(root, character, slugs[character.name], params.collect)
        results.append(result)
        if progress:
            progress(index, len(params.characters), result)
    write_collect_outputs(root, params)
    check_something_collected(results, root)
    return results
