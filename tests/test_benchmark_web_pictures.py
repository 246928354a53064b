"""benchmarks/web_pictures.py takes whole pictures through collect, crop, train, package and
identify (a smoke test on generated characters, with the crop stage's detector off so that
every picture is its face; the measurement itself is the benchmark's job), plus its pieces:
which pictures are scraped and which are named later, and how a picture's answer is scored."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from PIL import Image

from anime_face_id.identify_results import FaceResult, PictureResult
from tests.support.scripts import script_module
from tests.support.synthetic import PIPELINE_NAMES, write_picture_folder

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "web_pictures.py"


@pytest.fixture(scope="module")
def web():
    with script_module(SCRIPT, "web_pictures_benchmark") as module:
        yield module


def picture(*characters: str | None, status: str = "ok") -> PictureResult:
    faces = tuple(FaceResult((0, 0, 8, 8), (0, 0, 8), 0.9, c, 0.5, [], []) for c in characters)
    return PictureResult("p.png", status if faces or status == "error" else "no_face", faces=faces)


def test_a_picture_is_right_when_any_face_names_its_character(web) -> None:
    assert web.outcome(picture("Ao Blue", "Akane Red"), "Akane Red") == "named right"
    assert web.outcome(picture(None, "Ao Blue"), "Akane Red") == "named wrong"
    assert web.outcome(picture(None, None), "Akane Red") == "unknown only"
    assert web.outcome(picture(), "Akane Red") == "no face"
    assert web.outcome(picture(status="error"), "Akane Red") == "unreadable"


def test_the_strict_reading_asks_the_surest_face_to_be_right(web) -> None:
    right, wrong = picture("Akane Red", "Ao Blue").faces
    surest_right = PictureResult("p.png", "ok", faces=(right, replace(wrong, detector_score=0.1)))
    surest_wrong = PictureResult("p.png", "ok", faces=(right, replace(wrong, detector_score=1)))
    assert web.top_face_right(surest_right, "Akane Red")
    assert not web.top_face_right(surest_wrong, "Akane Red")
    assert web.outcome(surest_wrong, "Akane Red") == "named right"  # the lenient reading
    assert not web.top_face_right(picture(), "Akane Red")
    counts = {"Akane Red": {**dict.fromkeys(web.OUTCOMES, 0), "named right": 3, "no face": 1}}
    counts["Akane Red"].update({web.TOP_FACE: 2, "faces": 6})
    shares = web.shares_of(counts)
    assert shares["new_pictures"] == 4 and shares["named_right"] == 0.75
    assert shares["surest_face_named_right"] == 0.5 and shares["faces_per_picture"] == 1.5


def test_review_is_stood_in_for_by_each_pictures_surest_face(web) -> None:
    def row(character, sha, path, score):
        return {"character": character, "source_sha256": sha, "path": path, "score": score}

    rows = [
        row("Akane Red", "b", "b0.png", "0.4"),
        row("Akane Red", "a", "a0.png", "0.5"),
        row("Akane Red", "b", "b1.png", "0.9"),  # the other face in picture b is surer
        row("Akane Red", "a", "a1.png", "0.35"),
        row("Ao Blue", "a", "blue.png", "0.3"),  # the same picture under another name
    ]
    surest = web.surest_face_per_picture(rows)
    assert surest == {"Akane Red": ["a0.png", "b1.png"], "Ao Blue": ["blue.png"]}


def test_new_pictures_that_near_duplicate_a_scraped_one_are_counted(web, tmp_path) -> None:
    raw = write_picture_folder(tmp_path / "raw", PIPELINE_NAMES[:1], count=3)
    pictures = sorted((raw / PIPELINE_NAMES[0]).iterdir())
    copy = tmp_path / "copy.png"
    Image.open(pictures[0]).resize((48, 48)).save(copy)  # a smaller copy of a scraped one
    collected = {PIPELINE_NAMES[0]: pictures[:1]}
    assert web.near_duplicates(collected, {PIPELINE_NAMES[0]: [copy]}, 6) == 1
    assert web.near_duplicates(collected, {PIPELINE_NAMES[0]: pictures[1:]}, 6) == 0


def test_scraped_and_new_pictures_are_disjoint_and_fixed_by_the_seed(web, tmp_path) -> None:
    raw = write_picture_folder(tmp_path / "raw", PIPELINE_NAMES[:2], count=9)
    scraped, new = web.scraped_and_new(raw, PIPELINE_NAMES[:2], 6, seed=0)
    for name in PIPELINE_NAMES[:2]:
        assert len(scraped[name]) == 6 and len(new[name]) == 3
        assert sorted(scraped[name] + new[name]) == sorted((raw / name).iterdir())
    assert (scraped, new) == web.scraped_and_new(raw, PIPELINE_NAMES[:2], 6, seed=0)
    assert scraped != web.scraped_and_new(raw, PIPELINE_NAMES[:2], 6, seed=1)[0]
    with pytest.raises(SystemExit, match="need more than --scraped 9"):
        web.scraped_and_new(raw, PIPELINE_NAMES[:2], 9, seed=0)


@pytest.mark.slow
def test_benchmark_names_new_pictures_of_characters_trained_from_scraped_ones(
    web, tmp_path
) -> None:
    identities = write_picture_folder(tmp_path / "identities", PIPELINE_NAMES[:3], count=8)
    raw = write_picture_folder(tmp_path / "raw", PIPELINE_NAMES[3:5], count=10, seed=1)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["crop"].update(detector="none", size=64)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run(
        [
            sys.executable, str(SCRIPT),
            "--raw", str(raw), "--identities", str(identities), "--params",
            str(tmp_path / "params.yaml"), "--scraped", "6", "--per-character", "6",
            "--json", str(tmp_path / "web.json"), "--workdir", str(tmp_path / "work"),
            "-S", "train.image_size=64", "-S", "train.embedding_dim=16", "-S", "train.p=4",
            "-S", "train.epochs=1", "-S", "train.batches_per_epoch=2",
            "-S", "train.device=cpu", "-S", "evaluate.device=cpu",
            "-S", "balance.min_per_class=8",
        ],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (seed,) = json.loads((tmp_path / "web.json").read_text())["seeds"]
    # all five in the training split: three from crops, two from their scraped pictures
    assert seed["characters"] == 5 and seed["near_duplicates"] == 0
    assert seed["scraped_with_face"] == 1.0  # detector none: every picture is a face
    assert seed["new_pictures"] == 8 and seed["faces_per_picture"] == 1.0
    counts = seed["new_picture_outcomes"]
    assert set(counts) == set(PIPELINE_NAMES[3:5])
    assert all(sum(c[name] for name in web.OUTCOMES) == 4 for c in counts.values())
    named_right = sum(c["named right"] for c in counts.values())
    assert len(seed["misses"]) == 8 - named_right
    shares = [seed[key] for key in ("named_right", "named_wrong", "unknown_only")]
    assert sum(shares) == pytest.approx(1.0)
    # the scraped pictures' faces were trained on: they are in the project's splits
    project = tmp_path / "work" / "seed-0" / "project"
    trained = (project / "data" / "splits" / "train.csv").read_text()
    assert all(name in trained for name in PIPELINE_NAMES[3:5])
    assert "new pictures named right" in result.stdout
    again = subprocess.run(
        [sys.executable, str(SCRIPT), "--raw", str(raw), "--identities", str(identities),
         "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert again.returncode != 0 and "holds earlier runs of these seeds" in again.stderr
    clash = subprocess.run(
        [sys.executable, str(SCRIPT), "--raw", str(raw), "--identities", str(raw),
         "--scraped", "6"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert clash.returncode != 0 and "both in --identities and --raw" in clash.stderr
