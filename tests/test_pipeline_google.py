"""End to end: `dvc repro` from collect through balance with the google backend, through
the real google_images_download library and Debian's Chromium, against a results page and
HTTPS image server on 127.0.0.1 standing in for Google and the web."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from anime_face_id import layout
from tests.support.project import make_project
from tests.support.tls import make_tls_files
from tests.support.webserver import WebServer, search_results_page

pytestmark = [pytest.mark.slow, pytest.mark.browser]

# character name -> (one-word query, shared folder with its pictures)
CHARACTERS = {
    "Nishikino Maki": ("maki", "nishikino_maki"),
    "Sakurauchi Riko": ("riko", "sakurauchi_riko"),
    "Takimoto Hifumi": ("hifumi", "takimoto_hifumi"),
}
LIMIT = 4


def read(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def publish_character(images: WebServer, pages: WebServer, shared_dir: Path, name: str) -> None:
    """A results page for the character's query listing a dead link and six real pictures."""
    query, folder = CHARACTERS[name]
    pictures = sorted((shared_dir / "testdata" / "raw" / folder).glob("*.jpg"))[:6]
    urls = [images.url(f"/{query}/gone.jpg")]  # unknown path: 404
    for picture in pictures:
        urls.append(images.serve(f"/{query}/{picture.name}", picture.read_bytes(), "image/jpeg"))
    pages.serve(f"/search/{query}", search_results_page(urls), "text/html; charset=utf-8")


def image_requests(images: WebServer, query: str) -> int:
    return sum(count for path, count in images.counts().items() if path.startswith(f"/{query}/"))


def test_google_backend_dvc_repro(tmp_path, shared_dir, prefect_api):
    with WebServer() as pages, WebServer(tls=make_tls_files(tmp_path / "tls")) as images:
        for name in CHARACTERS:
            publish_character(images, pages, shared_dir, name)
        project = make_project(tmp_path, {**prefect_api, "REQUESTS_CA_BUNDLE": str(images.ca_file)})
        first_two = list(CHARACTERS)[:2]
        project.set_params(
            characters=[{"name": n, "query": CHARACTERS[n][0]} for n in first_two],
            collect={
                "backend": "google",
                "limit": LIMIT,
                "search_url": pages.url("/search/{query}"),
                "allow_networks": ["127.0.0.0/8"],
            },
            crop={"detector": "none", "size": 64},
            split={"val": 0.25, "test": 0.25, "min_per_character": 2},
            balance={"min_per_class": 8},
        )

        # The review checkpoint stops the pipeline while crops await review.
        stopped = project.dvc("repro", "balance", check=False)
        assert stopped.returncode != 0
        output = stopped.stdout + stopped.stderr
        assert "await review" in output and "make review" in output
        assert not (project.root / layout.CURATED_MANIFEST).exists()

        raw = read(project.root / layout.RAW_MANIFEST)
        for name in first_two:
            kept = [row for row in raw if row["character"] == name]
            assert len(kept) == LIMIT, name
            assert {row["backend"] for row in kept} == {"google"}
            assert all(row["url"].startswith(images.base_url) for row in kept)
            assert all((project.root / row["path"]).is_file() for row in kept)
        rejects = read(project.root / layout.RAW_REJECTS)
        for row in rejects:
            assert row["reason"], row
        if images.count("/maki/gone.jpg"):
            assert any(
                r["url_or_path"].endswith("/maki/gone.jpg") and "404" in r["reason"]
                for r in rejects
            )

        # Accept pending crops by the param: only review and later stages run.
        project.set_params(review={"require_complete": False})
        resumed = project.dvc("repro", "balance")
        assert "Running stage 'collect'" not in resumed.stdout
        assert "Running stage 'balance'" in resumed.stdout
        balanced = read(project.root / layout.BALANCED_TRAIN)
        assert {row["character"] for row in balanced} == set(first_two)

        assert "Data and pipelines are up to date." in project.dvc("repro", "balance").stdout

        # Adding a character searches and downloads only that character.
        searches_before = {q: pages.count(f"/search/{q}") for q, _ in CHARACTERS.values()}
        downloads_before = {q: image_requests(images, q) for q, _ in CHARACTERS.values()}
        assert searches_before["hifumi"] == 0
        project.set_params(characters=[{"name": n, "query": CHARACTERS[n][0]} for n in CHARACTERS])
        project.dvc("repro", "balance")
        for name, (query, _) in CHARACTERS.items():
            added = name == "Takimoto Hifumi"
            assert pages.count(f"/search/{query}") == searches_before[query] + int(added), name
            if not added:
                assert image_requests(images, query) == downloads_before[query], name
        assert image_requests(images, "hifumi") >= LIMIT
        raw = read(project.root / layout.RAW_MANIFEST)
        assert sum(row["character"] == "Takimoto Hifumi" for row in raw) == LIMIT
        balanced = read(project.root / layout.BALANCED_TRAIN)
        assert {row["character"] for row in balanced} == set(CHARACTERS)
