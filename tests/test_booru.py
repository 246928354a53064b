"""The booru backend against a Danbooru-format board on 127.0.0.1: tag search with filters,
pagination, skipped posts with their reasons, the rate limit, 429 with Retry-After, a
descriptive User-Agent, near-tag hints for an unknown tag; then `dvc repro collect` end to
end, where adding a character searches and fetches only that character."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import pytest

from anime_face_id import layout
from anime_face_id.collect import collect_all
from anime_face_id.config import Character, CollectConfig, parse_params
from anime_face_id.errors import EngineRefused
from anime_face_id.sources import SearchError, get_backend
from anime_face_id.sources.booru import search
from tests.support.booru import FakeBooru
from tests.support.project import make_project


def config(board: FakeBooru, **overrides: object) -> CollectConfig:
    settings: dict[str, object] = {
        "backend": "booru",
        "booru_url": board.base_url,
        "limit": 4,
        "search_factor": 1.5,  # 6 candidates wanted
        "booru_requests_per_s": 10,
        "allow_networks": ["127.0.0.0/8"],
        "retries": 2,
        "backoff_s": 0.01,
    }
    return CollectConfig(**{**settings, **overrides})  # type: ignore[arg-type]


KUROKO = Character(name="Kuroko Tetsuya")


@pytest.fixture
def board():
    with FakeBooru() as fake:
        yield fake


def test_the_backend_is_chosen_by_the_config(board):
    assert get_backend(config(board)) is search


def test_search_lists_usable_posts_newest_first_with_their_details(board):
    for _ in range(3):
        board.add_post("kuroko_tetsuya")
    board.add_post("kuroko_tetsuya", is_deleted=True)
    board.add_post("kuroko_tetsuya", file_url=None, large_file_url=None)  # members only
    board.add_post("kuroko_tetsuya", file_ext="mp4")
    board.add_post("kuroko_tetsuya", rating="s")
    newest = board.add_post("kuroko_tetsuya")
    board.add_post("kuroko_tetsuya", tag_string="kuroko_tetsuya kagami_taiga 2boys")  # not solo
    board.add_post("kagami_taiga")

    found = search(KUROKO, "kuroko_tetsuya", config(board))
    assert found.query == "kuroko_tetsuya solo"
    assert len(found.candidates) == 4  # every usable solo post, fewer than the 6 wanted
    assert found.candidates[0] == newest["large_file_url"]
    assert found.details[newest["large_file_url"]] == {
        "post_id": str(newest["id"]),
        "post_artist": newest["tag_string_artist"],
        "post_tags": newest["tag_string"],
    }
    reasons = sorted(reason.split(": ", 1)[1] for _, reason in found.skipped)
    assert reasons == [
        "deleted",
        "no file URL (restricted to members, or removed)",
        "not a picture (mp4)",
        "rating 's' not in collect.booru_ratings",
    ]
    assert all(where.startswith(f"{board.base_url}/posts/") for where, _ in found.skipped)
    # one page was enough, asked with the configured page size and the filter tags
    (request,) = board.searches()
    assert request.query == {"tags": "kuroko_tetsuya solo", "page": "1", "limit": "100"}
    assert request.user_agent.startswith("anime-face-id/")


def test_pages_are_read_until_enough_candidates_and_no_further(board):
    for _ in range(20):
        board.add_post("kuroko_tetsuya")
    found = search(KUROKO, "kuroko_tetsuya", config(board, booru_page_size=4))
    assert len(found.candidates) == 6
    assert [r.query["page"] for r in board.searches()] == ["1", "2"]
    assert {r.query["limit"] for r in board.searches()} == {"4"}
    # a short last page ends the search before booru_max_pages
    board.requests.clear()
    found = search(KUROKO, "kuroko_tetsuya", config(board, booru_page_size=8, limit=40))
    assert len(found.candidates) == 20
    assert [r.query["page"] for r in board.searches()] == ["1", "2", "3"]


def test_requests_are_spaced_by_the_rate_limit(board):
    for _ in range(12):
        board.add_post("kuroko_tetsuya")
    search(KUROKO, "kuroko_tetsuya", config(board, booru_page_size=2, booru_requests_per_s=5))
    times = [r.time for r in board.searches()]
    assert len(times) == 3
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert min(gaps) >= 0.2 - 0.02


def test_a_429_waits_for_retry_after_then_goes_on(board):
    for _ in range(3):
        board.add_post("kuroko_tetsuya")
    board.rate_limit_once("/posts.json", retry_after="1")
    found = search(KUROKO, "kuroko_tetsuya", config(board))
    assert len(found.candidates) == 3
    first, second = board.searches()
    assert second.time - first.time >= 0.95


def test_a_board_that_keeps_answering_429_refuses_the_collection(board):
    board.add_post("kuroko_tetsuya")
    board.rate_limit_always("/posts.json")
    with pytest.raises(
        EngineRefused, match=r"kept answering HTTP 429 Too Many Requests \(http 429 after 2 retries"
    ):
        search(KUROKO, "kuroko_tetsuya", config(board))
    assert len(board.searches()) == 3  # the first try and the downloader's 2 retries


def test_an_unknown_tag_is_a_clear_error_with_near_tags(board):
    for _ in range(3):
        board.add_post("katou_megumi")
    board.add_post("katou_megumi_(cosplay)")
    megumi = Character(name="Megumi Kato")  # tag form megumi_kato: not the board's
    with pytest.raises(SearchError) as error:
        search(megumi, "megumi_kato", config(board))
    message = str(error.value)
    assert message.startswith("no posts for tag 'megumi_kato' with solo")
    assert "katou_megumi (3 posts)" in message
    assert "tag:" in message
    # the character's own tag fixes it
    found = search(Character(name="Megumi Kato", tag="katou_megumi"), "x", config(board))
    assert len(found.candidates) == 3


def test_a_search_over_the_boards_tag_limit_says_so(board):
    board.add_post("kuroko_tetsuya")
    with pytest.raises(SearchError) as error:
        search(KUROKO, "kuroko_tetsuya", config(board, booru_tags=["solo", "rating:g"]))
    message = str(error.value)
    assert "refused the search 'kuroko_tetsuya solo rating:g' (http 422)" in message
    assert "allows 2 without an account" in message


def test_collect_records_posts_in_the_manifest_and_skips_as_rejects(board, tmp_path):
    for _ in range(5):
        board.add_post("kuroko_tetsuya")
    deleted = board.add_post("kuroko_tetsuya", is_deleted=True)
    params = parse_params(
        {
            "characters": [{"name": "Kuroko Tetsuya"}, {"name": "Nobody Atall"}],
            "collect": config(board).model_dump(),
        }
    )
    results = collect_all(tmp_path, params)
    assert [result.kept for result in results] == [4, 0]
    with (tmp_path / layout.RAW_MANIFEST).open(newline="") as handle:
        manifest = list(csv.DictReader(handle))
    assert len(manifest) == 4
    assert all(row["post_id"] and "kuroko_tetsuya" in row["post_tags"] for row in manifest)
    assert {row["query"] for row in manifest} == {"kuroko_tetsuya solo"}
    with (tmp_path / layout.RAW_REJECTS).open(newline="") as handle:
        rejects = list(csv.DictReader(handle))
    reasons = {row["url_or_path"]: row["reason"] for row in rejects}
    assert reasons[f"{board.base_url}/posts/{deleted['id']}"] == f"post {deleted['id']}: deleted"
    nobody = [row for row in rejects if row["slug"] == "nobody_atall"]
    assert "no posts for tag 'nobody_atall'" in nobody[0]["reason"]


@pytest.mark.slow
def test_dvc_repro_collect_through_the_board_adds_only_the_new_character(tmp_path, prefect_api):
    with FakeBooru() as board:
        for character in ("kuroko_tetsuya", "kagami_taiga", "aomine_daiki"):
            for _ in range(4):
                board.add_post(character)
        project = make_project(tmp_path, prefect_api)
        collect = {
            "backend": "booru",
            "booru_url": board.base_url,
            "limit": 3,
            "booru_requests_per_s": 10,
            "allow_networks": ["127.0.0.0/8"],
        }
        project.set_params(
            characters=[{"name": "Kuroko Tetsuya"}, {"name": "Kagami Taiga"}], collect=collect
        )
        project.dvc("repro", "collect")
        with (project.root / layout.RAW_MANIFEST).open(newline="") as handle:
            manifest = list(csv.DictReader(handle))
        assert sorted({row["slug"] for row in manifest}) == ["kagami_taiga", "kuroko_tetsuya"]
        assert len(manifest) == 6 and all(row["post_id"] for row in manifest)
        assert board.downloads("kuroko_tetsuya") == board.downloads("kagami_taiga") == 3

        project.set_params(
            characters=[
                {"name": "Kuroko Tetsuya"},
                {"name": "Kagami Taiga"},
                {"name": "Aomine", "tag": "aomine_daiki"},
            ]
        )
        board.requests.clear()
        project.dvc("repro", "collect")
        assert [r.query["tags"] for r in board.searches()] == ["aomine_daiki solo"]
        assert board.downloads("kuroko_tetsuya") == board.downloads("kagami_taiga") == 0
        assert board.downloads("aomine_daiki") == 3
        with (project.root / layout.RAW_MANIFEST).open(newline="") as handle:
            assert len(list(csv.DictReader(handle))) == 9


def test_booru_settings_are_checked_at_load():
    with pytest.raises(ValueError, match="booru_url must start with http"):
        CollectConfig(backend="booru", booru_url="safebooru.donmai.us")
    with pytest.raises(ValueError, match="one tag per entry"):
        CollectConfig(backend="booru", booru_tags=["solo rating:g"])
    with pytest.raises(ValueError):
        Character(name="Kuroko", tag="kuroko tetsuya")
    assert Character(name="  Kuroko  Tetsuya ").booru_tag == "kuroko_tetsuya"


def test_unused_path_argument_is_accepted(board, tmp_path: Path):
    board.add_post("kuroko_tetsuya")
    assert search(KUROKO, "kuroko_tetsuya", config(board), root=tmp_path).candidates


@pytest.mark.parametrize(
    "answer",
    [
        b"[" * 100_000 + b"]" * 100_000,  # nesting that exhausts the parser's stack
        b"<html>maintenance</html>",
        b'{"posts": []}',
        b'[1, "two", null, {"id": {"x": 1}, "rating": ["g"], "file_url": 7}]',
    ],
)
def test_hostile_answers_are_a_search_error_or_skipped_posts_never_a_crash(board, answer):
    board.hostile = answer
    try:
        found = search(KUROKO, "kuroko_tetsuya", config(board))
    except SearchError as error:
        assert str(error).startswith("booru:")
        return
    assert found.candidates == [] and len(found.skipped) == 1


@pytest.mark.parametrize(
    "answer",
    [
        b'[{"name": "katou_megumi", "post_count": "many"}, {"name": 3}, "x"]',
        b"[" * 100_000 + b"]" * 100_000,
        b"<html>maintenance</html>",
    ],
)
def test_hostile_tag_hints_still_leave_a_clear_no_posts_error(board, answer):
    board.hostile_tags = answer
    with pytest.raises(SearchError) as error:
        search(Character(name="Megumi Kato"), "megumi_kato", config(board))
    assert str(error.value).startswith("no posts for tag 'megumi_kato' with solo")
