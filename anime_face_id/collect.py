"""The collect stage: for each character, search, fetch, validate and store up to
``limit`` images, and write ``data/raw/manifest.csv`` and ``data/raw/rejects.csv``.

A character's state lives next to its images in ``data/raw/<slug>/``: its journal
(``collect_journal``), the records of a completed collection or a failed search
(``collect_records``); fetching and choosing its images is ``collect_fetch``.

Candidate URLs may carry credentials (``https://user:secret@host/x.jpg``). Only the fetch
sees them: the journal, ``_done.json`` and both CSVs hold ``redact_credentials(url)``; the
journal is keyed on a digest of the full URL (``collect_journal.candidate_key``).
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from anime_face_id.collect_fetch import fetch_candidates
from anime_face_id.collect_journal import JOURNAL, Journal, read_journal
from anime_face_id.collect_records import (
    DONE,
    SEARCH_ERROR,
    CharacterCollectResult,
    Collection,
    character_dir,
    is_collected,
    now_iso,
    read_json_object,
)
from anime_face_id.config import Character, CollectConfig, Params
from anime_face_id.errors import EngineRefused, StageError
from anime_face_id.fileio import atomic_write_json, read_csv, sweep_temporaries, write_csv
from anime_face_id.layout import (
    RAW_COLUMNS,
    RAW_DIR,
    RAW_MANIFEST,
    RAW_REJECT_COLUMNS,
    RAW_REJECTS,
    RAW_SOURCE_COLUMNS,
)
from anime_face_id.per_character import OnCharacter, Runner, run_in_order
from anime_face_id.redaction import redact_credentials
from anime_face_id.sources import SearchError, get_backend
from anime_face_id.sources.base import Found, as_found
from anime_face_id.sources.reachability import check_search_reachable, search_endpoint

__all__ = [  # what tests and adapters import from the stage module
    "DONE",
    "JOURNAL",
    "SEARCH_ERROR",
    "CharacterCollectResult",
    "Collection",
    "Found",
    "Journal",
    "collect_all",
    "collect_character",
    "fetch_candidates",
    "find_candidates",
    "is_collected",
    "read_journal",
    "record_search_failure",
    "write_collect_outputs",
]


def find_candidates(
    character: Character, slug: str, config: CollectConfig, root: Path | None = None
) -> Found:
    """Ask the configured backend; raises SearchError. ``root`` resolves relative
    folder/CSV paths (default: the working directory)."""
    return as_found(get_backend(config)(character, slug, config, root=root))


def record_search_failure(collection: Collection, reason: str) -> CharacterCollectResult:
    directory = collection.directory
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        directory / SEARCH_ERROR,
        {
            "fingerprint": collection.fingerprint,
            "reason": redact_credentials(reason),  # a search error may quote its URL
            "time": now_iso(),
        },
    )
    return collection.result(0, 0, 1, 0)


def _search_failure_reason(reason: str) -> str:
    return reason if reason.startswith("search failed") else f"search failed: {reason}"


def _search_label(character: Character, config: CollectConfig) -> str:
    source = {"folder": config.folder, "urls": config.urls}.get(config.backend)
    if config.backend == "booru":
        source = f"{config.booru_url} {character.booru_tag}"
    return f"search:{config.backend}:{source or character.search_query}"


def character_rows(collection: Collection) -> tuple[list[dict], list[dict]]:
    """Manifest and reject rows of one character under the current settings."""
    character, config, directory = collection.character, collection.config, collection.directory
    reject = {
        "character": character.name,
        "slug": collection.slug,
        "url_or_path": _search_label(character, config),
        "backend": config.backend,
    }
    done = collection.done_record()
    if done is None:
        failure = read_json_object(directory / SEARCH_ERROR)
        if failure is not None and failure.get("fingerprint") == collection.fingerprint:
            return [], [
                {
                    **reject,
                    "reason": _search_failure_reason(failure["reason"]),
                    "time": failure["time"],
                }
            ]
        return [], [
            {**reject, "reason": "not collected for the current settings", "time": now_iso()}
        ]
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
                    "time": now_iso(),
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
        kept, rejected = character_rows(Collection(root, character, slug, params.collect))
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
    columns = RAW_COLUMNS + RAW_SOURCE_COLUMNS
    write_csv(root / RAW_MANIFEST, columns, sorted(manifest, key=lambda row: row["path"]))
    reject_order = sorted(rejects, key=lambda row: (row["slug"], row["url_or_path"], row["reason"]))
    write_csv(root / RAW_REJECTS, RAW_REJECT_COLUMNS, reject_order)
    return summary


def collect_character(
    root: Path,
    character: Character,
    slug: str,
    config: CollectConfig,
    search: Callable[..., list[str] | Found] = find_candidates,
    progress: Callable[[int, int], None] | None = None,
) -> CharacterCollectResult:
    """Skip a character already collected with these settings; otherwise search (through
    ``search``, which an orchestrator may wrap with retries) and download. A failed search
    is recorded as a reject; an engine that refuses to search at all stops the stage
    (StageError), since it would refuse every other character too."""
    collection = Collection(Path(root), character, slug, config)
    if collection.is_collected():
        return collection.skipped_result()
    try:
        candidates = search(character, slug, config, root=root)
    except EngineRefused as error:
        raise StageError(
            f"{error}. Every other search would be refused the same way; "
            "the characters collected so far are kept and not searched again. Wait (an hour "
            "or more) and run again, or use another collect.backend (README: Your own data, "
            "offline)."
        ) from None
    except SearchError as error:
        return record_search_failure(collection, str(error))
    return fetch_candidates(collection, candidates, progress)


def sweep_interrupted(root: Path) -> int:
    """Remove temporaries an interrupted run left in data/raw (call before collecting)."""
    return sweep_temporaries(Path(root) / RAW_DIR)


def prepare_collection(root: Path, params: Params) -> None:
    """Before any character: remove what an interrupted run left, and when some character
    still needs a web search, check once that the search engine answers (StageError if
    not: one line in seconds rather than a failed search per character)."""
    sweep_interrupted(root)
    if search_endpoint(params.collect) is None:
        return  # folder and urls search nothing: no check, and no fingerprints computed twice
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
    for result in results:  # so that the next run searches and fetches again
        (character_dir(Path(root), result.slug) / DONE).unlink(missing_ok=True)
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


CharacterRunner = Runner[tuple[Character, str], CharacterCollectResult]  # see per_character


def one_after_another(root: Path, config: CollectConfig) -> CharacterRunner:
    def run(jobs: list[tuple[Character, str]]) -> Iterator[CharacterCollectResult]:
        for character, slug in jobs:
            yield collect_character(root, character, slug, config)

    return run


def collect_all(
    root: Path,
    params: Params,
    progress: OnCharacter | None = None,
    *,
    run_characters: CharacterRunner | None = None,
    report: Callable[[list[dict]], None] | None = None,
) -> list[CharacterCollectResult]:
    """The whole stage: collect every character (through ``run_characters``), then write
    the stage outputs, in the characters' order. ``progress`` is called with (0, characters
    in all, None) first, then as each character finishes with (characters done, characters
    in all, its result); ``report`` gets the
    summary rows (one per character, with its candidates and images downloaded now) before
    a collection that obtained nothing at all fails."""
    root = Path(root)
    prepare_collection(root, params)
    slugs = params.slugs
    jobs = [(character, slugs[character.name]) for character in params.characters]
    run = run_characters or one_after_another(root, params.collect)
    results = run_in_order(run, jobs, lambda job: job[1], progress)
    rows = write_collect_outputs(root, params)
    by_slug = {result.slug: result for result in results}
    for row in rows:
        result = by_slug[row["slug"]]
        row.update(candidates=result.candidates, downloaded_now=result.fetched)
    if report:
        report(rows)
    check_something_collected(results, root)
    return results
