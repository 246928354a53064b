"""collect_all with the folder backend on generated images: outputs, resuming, skipping,
adding and removing characters, hostile names."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anime_face_id.collect import (
    DONE,
    JOURNAL,
    Collection,
    collect_all,
    collect_character,
    fetch_candidates,
    find_candidates,
    is_collected,
    read_journal,
    record_search_failure,
    write_collect_outputs,
)
from anime_face_id.config import Params, parse_params
from anime_face_id.fileio import TMP_PREFIX, read_csv
from anime_face_id.layout import (
    RAW_COLUMNS,
    RAW_DIR,
    RAW_MANIFEST,
    RAW_REJECT_COLUMNS,
    RAW_REJECTS,
    RAW_SOURCE_COLUMNS,
)
from anime_face_id.slugs import slugify
from tests.support.webserver import Response, WebServer, web_server

__all__ = ["web_server"]  # a fixture used below


def png_bytes(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def make_params(folder: Path, names: list[str], limit: int = 10) -> Params:
    return parse_params(
        {
            "characters": [{"name": name} for name in names],
            "collect": {"backend": "folder", "folder": str(folder), "limit": limit, "workers": 2},
        }
    )


def fill(directory: Path, seeds: list[int], size: tuple[int, int] = (48, 40)) -> list[bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    images = [png_bytes(seed, size) for seed in seeds]
    for index, data in enumerate(images):
        (directory / f"img_{index:02d}.png").write_bytes(data)
    return images


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """Two characters: one folder named by slug, one by exact name; plus a text file and
    a byte-identical duplicate."""
    folder = tmp_path / "source"
    fill(folder / "kuroko_tetsuya", [1, 2, 3], size=(48, 40))
    maki = fill(folder / "Nishikino Maki", [4, 5], size=(30, 60))
    (folder / "Nishikino Maki" / "notes.txt").write_text("not a picture")
    (folder / "Nishikino Maki" / "z_copy.png").write_bytes(maki[0])
    (folder / "Nishikino Maki" / ".DS_Store").write_bytes(b"\0\0")
    return folder


def read_outputs(root: Path) -> tuple[list[dict], list[dict]]:
    return read_csv(root / RAW_MANIFEST), read_csv(root / RAW_REJECTS)


def header(path: Path) -> tuple[str, ...]:
    return tuple(path.read_text(encoding="utf-8").splitlines()[0].split(","))


def test_collects_folder_images_into_manifest_and_rejects(tmp_path: Path, source: Path) -> None:
    root = tmp_path / "project"
    params = make_params(source, ["Kuroko Tetsuya", "Nishikino Maki"])
    results = collect_all(root, params)

    assert [(r.slug, r.kept, r.rejected, r.skipped) for r in results] == [
        ("kuroko_tetsuya", 3, 0, False),
        ("nishikino_maki", 2, 2, False),
    ]
    assert header(root / RAW_MANIFEST) == RAW_COLUMNS + RAW_SOURCE_COLUMNS
    assert header(root / RAW_REJECTS) == RAW_REJECT_COLUMNS
    manifest, rejects = read_outputs(root)
    assert [row["path"] for row in manifest] == sorted(row["path"] for row in manifest)
    for row in manifest:
        stored = root / row["path"]
        assert not Path(row["path"]).is_absolute() and "\\" not in row["path"]
        assert row["path"] == f"data/raw/{row['slug']}/{row['sha256']}.png"
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == row["sha256"]
        assert (row["backend"], row["format"], len(row["phash"])) == ("folder", "PNG", 16)
    sizes = {(row["slug"], row["width"], row["height"]) for row in manifest}
    assert sizes == {("kuroko_tetsuya", "48", "40"), ("nishikino_maki", "30", "60")}
    assert {Path(row["url"]).name for row in manifest if row["slug"] == "nishikino_maki"} == {
        "img_00.png",
        "img_01.png",
    }

    reasons = {Path(row["url_or_path"]).name: row["reason"] for row in rejects}
    first_maki = next(r for r in manifest if r["url"].endswith("Nishikino Maki/img_00.png"))
    assert reasons == {
        "notes.txt": "not an image: unrecognised format",
        "z_copy.png": f"duplicate of {first_maki['sha256']}",
    }
    # Only images and the stage's own state files are left behind.
    leftovers = {p.name for p in (root / RAW_DIR / "nishikino_maki").iterdir()}
    assert leftovers == {
        Path(r["path"]).name for r in manifest if r["slug"] == "nishikino_maki"
    } | {
        JOURNAL,
        DONE,
    }
    assert not list((root / RAW_DIR).rglob(f"{TMP_PREFIX}*"))


def without_times(text: str) -> str:
    """The two runs fetch a second apart at times: the fetch times are not what is compared."""
    return re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", "<time>", text)


def test_characters_finishing_in_any_order_give_the_sequential_outputs(
    tmp_path: Path, source: Path
) -> None:
    """The flow hands collect_all a runner that yields characters as its tasks finish: the
    outputs, the results' order and the summary are those of the sequential loop."""
    params = make_params(source, ["Kuroko Tetsuya", "Nishikino Maki"])
    sequential = collect_all(tmp_path / "a", params)
    root = tmp_path / "b"

    def backwards(jobs):
        for character, slug in reversed(jobs):
            yield collect_character(root, character, slug, params.collect)

    calls, reported = [], []
    results = collect_all(
        root,
        params,
        progress=lambda done, total, r: calls.append((done, total, r and r.slug)),
        run_characters=backwards,
        report=reported.extend,
    )
    assert results == sequential
    for name in (RAW_MANIFEST, RAW_REJECTS):
        assert without_times((root / name).read_text().replace("/b/", "/a/")) == without_times(
            (tmp_path / "a" / name).read_text()
        )
    assert calls == [(0, 2, None), (1, 2, "nishikino_maki"), (2, 2, "kuroko_tetsuya")]
    assert [
        (row["slug"], row["images"], row["candidates"], row["downloaded_now"]) for row in reported
    ] == [
        ("kuroko_tetsuya", 3, 3, 3),
        ("nishikino_maki", 2, 4, 4),  # its two broken files were fetched too
    ]


def test_second_run_skips_and_fetches_nothing(tmp_path: Path, source: Path) -> None:
    root = tmp_path / "project"
    params = make_params(source, ["Kuroko Tetsuya", "Nishikino Maki"])
    collect_all(root, params)
    first = (root / RAW_MANIFEST).read_bytes()

    again = collect_all(root, params)

    assert [(r.skipped, r.fetched) for r in again] == [(True, 0), (True, 0)]
    assert [(r.kept, r.rejected) for r in again] == [(3, 0), (2, 2)]
    assert (root / RAW_MANIFEST).read_bytes() == first


def test_adding_a_character_collects_only_it_and_removing_prunes(
    tmp_path: Path, source: Path
) -> None:
    root = tmp_path / "project"
    collect_all(root, make_params(source, ["Kuroko Tetsuya"]))
    fill(source / "takimoto_hifumi", [7, 8])

    results = collect_all(root, make_params(source, ["Kuroko Tetsuya", "Takimoto Hifumi"]))
    assert [(r.slug, r.skipped, r.fetched) for r in results] == [
        ("kuroko_tetsuya", True, 0),
        ("takimoto_hifumi", False, 2),
    ]

    collect_all(root, make_params(source, ["Takimoto Hifumi"]))
    assert not (root / RAW_DIR / "kuroko_tetsuya").exists()
    manifest, _rejects = read_outputs(root)
    assert {row["slug"] for row in manifest} == {"takimoto_hifumi"}


def test_limit_caps_kept_images_and_a_new_limit_reuses_the_journal(
    tmp_path: Path, source: Path
) -> None:
    root = tmp_path / "project"
    (first,) = collect_all(root, make_params(source, ["Kuroko Tetsuya"], limit=2))
    assert (first.kept, first.fetched, first.candidates) == (2, 2, 3)
    assert len(list((root / RAW_DIR / "kuroko_tetsuya").glob("*.png"))) == 2

    (second,) = collect_all(root, make_params(source, ["Kuroko Tetsuya"], limit=5))
    assert (second.skipped, second.kept, second.fetched) == (
        False,
        3,
        1,
    )  # only the third file is new


def test_changed_folder_is_imported_again_reading_only_new_files(
    tmp_path: Path, source: Path
) -> None:
    root = tmp_path / "project"
    params = make_params(source, ["Kuroko Tetsuya"])
    collect_all(root, params)
    (source / "kuroko_tetsuya" / "img_09.png").write_bytes(png_bytes(99))
    assert not is_collected(root, params.characters[0], "kuroko_tetsuya", params.collect)

    (result,) = collect_all(root, params)
    assert (result.skipped, result.kept, result.fetched) == (False, 4, 1)


def test_torn_journal_line_is_ignored_and_repaired(tmp_path: Path, source: Path) -> None:
    root = tmp_path / "project"
    params = make_params(source, ["Kuroko Tetsuya"])
    collect_all(root, params)
    directory = root / RAW_DIR / "kuroko_tetsuya"
    (directory / DONE).unlink()  # as if killed before the end
    with (directory / JOURNAL).open("a", encoding="utf-8") as journal:
        journal.write('{"url": "half a li')

    (result,) = collect_all(root, params)
    assert (result.kept, result.fetched) == (3, 0)
    entries, damaged = read_journal(directory / JOURNAL)
    assert len(entries) == 3 and not damaged


@pytest.mark.parametrize(
    "damage",
    [
        lambda done: [row.pop("path") for row in done["kept"]],
        lambda done: done.update(kept="oops"),
        lambda done: done.update(rejected=[1, 2]),
        lambda done: done.update(candidates="many"),
    ],
    ids=["kept without path", "kept a string", "rejected numbers", "candidates a word"],
)
def test_a_damaged_completion_record_means_collect_again(
    tmp_path: Path, source: Path, damage
) -> None:
    root = tmp_path / "project"
    params = make_params(source, ["Kuroko Tetsuya"])
    collect_all(root, params)
    record = root / RAW_DIR / "kuroko_tetsuya" / DONE
    done = json.loads(record.read_text())
    damage(done)
    record.write_text(json.dumps(done))
    assert not is_collected(root, params.characters[0], "kuroko_tetsuya", params.collect)
    (result,) = collect_all(root, params)
    assert (result.skipped, result.kept) == (False, 3)
    manifest, _rejects = read_outputs(root)
    assert len(manifest) == 3


def test_pipes_and_broken_links_in_a_folder_are_rejects_with_their_kind(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "source"
    fill(folder / "kuroko_tetsuya", [1, 2])
    os.mkfifo(folder / "kuroko_tetsuya" / "pipe.png")
    (folder / "kuroko_tetsuya" / "broken.png").symlink_to(tmp_path / "nowhere.png")
    (folder / "kuroko_tetsuya" / "album.png").mkdir()
    (folder / "kuroko_tetsuya" / ".DS_Store").write_bytes(b"hidden")
    root = tmp_path / "project"
    params = make_params(folder, ["Kuroko Tetsuya"])
    (result,) = collect_all(root, params)
    assert (result.candidates, result.kept, result.rejected) == (4, 2, 2)  # not the sub-folder
    reasons = {Path(row["url_or_path"]).name: row["reason"] for row in read_outputs(root)[1]}
    assert "a named pipe" in reasons["pipe.png"] and "file not found" in reasons["broken.png"]
    assert "album.png" not in reasons
    (tmp_path / "nowhere.png").write_bytes(png_bytes(3))  # the link mended: import again
    assert not is_collected(root, params.characters[0], "kuroko_tetsuya", params.collect)


def test_a_file_name_that_is_not_utf8_is_a_reject_and_the_outputs_are_written(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "source"
    fill(folder / "kuroko_tetsuya", [1, 2])
    (folder / "kuroko_tetsuya" / os.fsdecode(b"\xff\xfe.png")).write_bytes(png_bytes(3))
    root = tmp_path / "project"
    params = make_params(folder, ["Kuroko Tetsuya"])
    (result,) = collect_all(root, params)
    assert (result.kept, result.rejected) == (2, 1)
    manifest, rejects = read_outputs(root)
    assert len(manifest) == 2
    assert [(row["url_or_path"], row["reason"]) for row in rejects] == [
        (f"{folder}/kuroko_tetsuya/\\xff\\xfe.png", "file name is not valid UTF-8")
    ]
    assert is_collected(root, params.characters[0], "kuroko_tetsuya", params.collect)


def test_an_unreadable_character_folder_is_a_search_failed_reject(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = source / "kuroko_tetsuya"
    iterdir = Path.iterdir

    def guarded(self: Path):  # type: ignore[no-untyped-def]
        if self == refused:  # as chmod 000 would, were the tests not run as root
            raise PermissionError(13, "Permission denied", str(self))
        return iterdir(self)

    monkeypatch.setattr(Path, "iterdir", guarded)
    root = tmp_path / "project"
    results = collect_all(root, make_params(source, ["Kuroko Tetsuya", "Nishikino Maki"]))
    assert [(r.slug, r.kept, r.rejected) for r in results] == [
        ("kuroko_tetsuya", 0, 1),
        ("nishikino_maki", 2, 2),
    ]
    _manifest, rejects = read_outputs(root)
    assert rejects[0]["reason"] == (
        f"search failed: folder backend: cannot list {refused}: Permission denied"
    )


def test_missing_character_folder_is_a_reject_not_a_crash(tmp_path: Path, source: Path) -> None:
    root = tmp_path / "project"
    results = collect_all(root, make_params(source, ["Kuroko Tetsuya", "Nobody Here"]))
    assert [(r.slug, r.kept, r.rejected) for r in results] == [
        ("kuroko_tetsuya", 3, 0),
        ("nobody_here", 0, 1),
    ]
    _manifest, rejects = read_outputs(root)
    (reject,) = rejects
    assert reject["slug"] == "nobody_here"
    assert reject["reason"].startswith(
        "search failed: folder backend: no directory for 'Nobody Here'"
    )
    assert str(source / "nobody_here") in reject["reason"]


def test_hostile_names_stay_inside_data_raw(tmp_path: Path) -> None:
    folder = tmp_path / "source"
    names = ["../../escape", "a/b", "..", "Ré.mi", "初音ミク"]
    params = make_params(folder, names)
    slugs = params.slugs
    for seed, name in enumerate(names):
        # names with a slash cannot be directory names: those folders use the slug;
        # the unicode name is stored decomposed (NFD), as macOS would
        on_disk = slugs[name] if "/" in name or name == ".." else unicodedata.normalize("NFD", name)
        fill(folder / on_disk, [100 + seed])

    root = tmp_path / "project"
    results = collect_all(root, params)

    assert [r.kept for r in results] == [1] * len(names)
    raw = (root / RAW_DIR).resolve()
    assert sorted(p.name for p in raw.iterdir() if p.is_dir()) == sorted(slugs.values())
    for path in root.rglob("*"):
        assert path.resolve().is_relative_to(raw) or path.resolve() == raw.parent
    manifest, _rejects = read_outputs(root)
    assert {row["character"] for row in manifest} == set(names)
    assert slugs["初音ミク"] == slugify("初音ミク")


def test_fetch_candidates_respects_progress_and_find_candidates_order(
    tmp_path: Path, source: Path
) -> None:
    params = make_params(source, ["Kuroko Tetsuya"])
    character, config = params.characters[0], params.collect
    candidates = find_candidates(character, "kuroko_tetsuya", config, root=tmp_path)
    names = [Path(c).name for c in candidates.candidates]
    assert names == ["img_00.png", "img_01.png", "img_02.png"]
    calls: list[tuple[int, int]] = []
    result = fetch_candidates(
        Collection(tmp_path, character, "kuroko_tetsuya", config),
        candidates,
        lambda done, total: calls.append((done, total)),
    )
    assert result.kept == 3
    assert calls[-1] == (3, 3)
    done = json.loads((tmp_path / RAW_DIR / "kuroko_tetsuya" / DONE).read_text())
    assert done["candidates"] == 3 and len(done["kept"]) == 3


def test_fetch_on_a_collected_character_changes_nothing(tmp_path: Path, source: Path) -> None:
    root = tmp_path / "project"
    params = make_params(source, ["Kuroko Tetsuya"])
    character, config = params.characters[0], params.collect
    collect_all(root, params)
    before = sorted(p.name for p in (root / RAW_DIR / "kuroko_tetsuya").iterdir())

    result = fetch_candidates(Collection(root, character, "kuroko_tetsuya", config), [])

    assert (result.skipped, result.kept, result.fetched) == (True, 3, 0)
    assert sorted(p.name for p in (root / RAW_DIR / "kuroko_tetsuya").iterdir()) == before


def test_recorded_search_failure_is_one_reject_row_until_a_search_succeeds(
    tmp_path: Path, source: Path
) -> None:
    root = tmp_path / "project"
    params = make_params(source, ["Kuroko Tetsuya"])
    character, config = params.characters[0], params.collect
    result = record_search_failure(
        Collection(root, character, "kuroko_tetsuya", config), "search failed: engine down"
    )
    assert (result.kept, result.rejected, result.skipped) == (0, 1, False)
    write_collect_outputs(root, params)
    manifest, rejects = read_outputs(root)
    assert manifest == [] and [row["reason"] for row in rejects] == ["search failed: engine down"]

    collect_all(root, params)
    manifest, rejects = read_outputs(root)
    assert len(manifest) == 3 and rejects == []


def test_credentials_in_urls_never_reach_data_raw(tmp_path: Path, web_server: WebServer) -> None:
    secret = "s3cret-Pa55"
    image = web_server.serve("/kept.png", png_bytes(42), "image/png")
    missing = web_server.add("/missing.png", Response(status=404))
    with_credentials = [
        url.replace("://", f"://reader:{secret}@") for url in (image, missing, image + "?again")
    ]
    unparsable = f"http://reader:{secret}@127.0.0.1:99999/x.png"  # quoted in its reason
    root = tmp_path / "project"
    root.mkdir()
    rows = [f"Test Subject,{url}" for url in [*with_credentials, unparsable]]
    (root / "urls.csv").write_text("character,url\n" + "\n".join(rows) + "\n")
    collect = {
        "backend": "urls",
        "urls": "urls.csv",
        "allow_networks": ["127.0.0.0/8"],
        "retries": 0,
        "workers": 2,
    }
    params = parse_params({"characters": [{"name": "Test Subject"}], "collect": collect})

    (result,) = collect_all(root, params)

    assert (result.kept, result.rejected) == (1, 3)
    assert web_server.count("/kept.png") == 2  # fetched with the real URL: the server answered
    raw = root / RAW_DIR
    leaks = [
        path for path in raw.rglob("*") if path.is_file() and secret in path.read_text("latin-1")
    ]
    assert leaks == []
    manifest, rejects = read_outputs(root)
    base = web_server.base_url.replace("://", "://***@")
    assert [row["url"] for row in manifest] == [base + "/kept.png"]
    reasons = {row["url_or_path"]: row["reason"] for row in rejects}
    assert reasons[base + "/missing.png"] == "http 404"
    assert reasons[base + "/kept.png?again"].startswith("duplicate of ")
    unparsable_redacted = unparsable.replace(f"reader:{secret}", "***")
    assert reasons[unparsable_redacted].startswith("invalid URL: ")
    assert "***@" in reasons[unparsable_redacted]

    # the journal is keyed on a digest of the full URL: a second run fetches nothing again
    (directory,) = [path for path in raw.iterdir() if path.is_dir()]
    (directory / DONE).unlink()
    (again,) = collect_all(root, params)
    assert (again.kept, again.fetched) == (1, 0)

    # a journal from before redaction (or by hand) is cleaned the next time it is opened
    journal = directory / JOURNAL
    url = f"{with_credentials[1]}?token={secret}"
    old = {"key": "k", "url": url, "time": "t", "status": "rejected"}
    keyless = {**old, "url": f"{with_credentials[1]}?older", "key": None}  # before keys
    with journal.open("a", encoding="utf-8") as handle:
        for entry in (old, keyless):
            handle.write(json.dumps({**entry, "reason": f"http 404 for {url}"}) + "\n")
    (directory / DONE).unlink()
    collect_all(root, params)
    assert secret not in journal.read_text()
    entries = read_journal(journal)[0]
    assert entries["k"]["url"] == base + "/missing.png?token=***"
    assert not [entry for entry in entries.values() if entry["url"].endswith("?older")]


def test_urls_differing_only_in_a_redacted_secret_are_both_fetched_and_kept(
    tmp_path: Path, web_server: WebServer
) -> None:
    """?token=A and ?token=B redact alike (?token=***) but are different pictures: the
    journal must not take the second for the first."""
    first = web_server.serve("/get?token=A", png_bytes(51), "image/png")
    second = web_server.serve("/get?token=B", png_bytes(52), "image/png")
    root = tmp_path / "project"
    root.mkdir()
    (root / "urls.csv").write_text(f"character,url\nTest Subject,{first}\nTest Subject,{second}\n")
    collect = {
        "backend": "urls",
        "urls": "urls.csv",
        "allow_networks": ["127.0.0.0/8"],
        "retries": 0,
        "workers": 1,
    }
    params = parse_params({"characters": [{"name": "Test Subject"}], "collect": collect})

    (result,) = collect_all(root, params)

    assert (result.kept, result.rejected, result.fetched) == (2, 0, 2)
    assert web_server.count("/get") == 2
    manifest, rejects = read_outputs(root)
    assert rejects == [] and len({row["sha256"] for row in manifest}) == 2
    assert {row["url"] for row in manifest} == {web_server.url("/get?token=***")}
    directory = root / RAW_DIR / "test_subject"
    assert "token=A" not in (directory / JOURNAL).read_text()
    (directory / DONE).unlink()  # resuming reuses both entries, each under its own key
    (again,) = collect_all(root, params)
    assert (again.kept, again.fetched) == (2, 0) and web_server.count("/get") == 2


def test_a_failed_search_keeps_no_secret(tmp_path: Path) -> None:
    """A search error quoting its URL (an API key in the query, a password) is recorded and
    reported without them."""
    from anime_face_id.collect import collect_character
    from anime_face_id.sources import SearchError

    secret = "k3y-Secret"
    root = tmp_path / "project"
    params = make_params(tmp_path / "nowhere", ["Kuroko Tetsuya"])

    def failing_search(character, slug, config, root=None):
        raise SearchError(f"search failed: https://user:{secret}@api.example/?api_key={secret}")

    character, config = params.characters[0], params.collect
    collect_character(root, character, "kuroko_tetsuya", config, search=failing_search)
    write_collect_outputs(root, params)
    files = [path for path in (root / RAW_DIR).rglob("*") if path.is_file()]
    assert files and not [path for path in files if secret in path.read_text("latin-1")]
    _, rejects = read_outputs(root)
    assert rejects[0]["reason"] == "search failed: https://***@api.example/?api_key=***"


def test_a_collection_with_nothing_for_anyone_is_an_error(tmp_path: Path, source: Path) -> None:
    from anime_face_id.errors import StageError

    root = tmp_path / "project"
    with pytest.raises(StageError) as nothing:
        collect_all(root, make_params(source, ["Nobody Here", "Nor Here"]))
    assert "no image for any of the 2 character(s): search failed (2)" in str(nothing.value)
    _manifest, rejects = read_outputs(root)  # the reasons are still written down
    assert len(rejects) == 2
    assert not list((root / RAW_DIR).glob("*/" + DONE))
