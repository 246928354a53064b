"""benchmarks/quality.py runs the recipe from params.yaml, with -S overrides and several
seeds, in the users' regime (a capped sample of crops per character, characters held out)
and reports numbers next to the ImageNet baseline (a smoke test of the machinery on
generated characters; the measurement itself is the benchmark's job), plus its pieces:
the sample, the choice of held-out characters, the comparison."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from anime_face_id.config import ConfigError
from anime_face_id.errors import StageError
from tests.support.scripts import script_module
from tests.support.synthetic import PIPELINE_NAMES, write_picture_folder

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "quality.py"


def run_benchmark(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def quality():
    """The benchmark script as a module (it is a script, not part of the package)."""
    with script_module(SCRIPT, "quality_benchmark") as module:
        yield module


def table_lines(stdout: str) -> list[str]:
    """The comparison table's rows, after its header and rule."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("metric"))
    return lines[start + 2 :]


def tiny_recipe(batches_per_epoch: int) -> list[str]:
    """-S overrides for a smoke run on generated pictures: a tiny network, one short epoch."""
    overrides = {
        "train.image_size": 64,
        "train.embedding_dim": 16,
        "train.p": 4,
        "train.epochs": 1,
        "train.batches_per_epoch": batches_per_epoch,
        "train.device": "cpu",
        "evaluate.device": "cpu",
        "balance.min_per_class": 8,
    }
    return [arg for key, value in overrides.items() for arg in ("-S", f"{key}={value}")]


@pytest.mark.slow
def test_benchmark_trains_each_seed_and_compares_with_imagenet(tmp_path, quality):
    folder = write_picture_folder(tmp_path / "faces", PIPELINE_NAMES, count=12)
    result = run_benchmark(
        str(folder),
        "--holdout", "1",
        "--seeds", "0", "1",
        "--per-character", "10",
        # split.seed 1 holds out Akane Red, which a hard case must never be (one hard
        # character: at most half of one, i.e. none, may be held out)
        "--hard-case", "Akane Red",
        "-S", "split.seed=1",
        "--json", str(tmp_path / "quality.json"),
        *tiny_recipe(batches_per_epoch=2),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "quality.json").read_text())

    assert report["seeds"] == [0, 1]
    # the recipe is params.yaml's, changed only where -S said so
    assert report["changes"]["train.image_size"] == 64
    assert report["recipe"]["train"]["loss"] == "batch_hard"
    assert "train.loss" not in report["changes"]
    assert [r["train_config"]["seed"] for r in report["reports"]] == [0, 1]

    # at most 10 crops per character, drawn per seed, the same draw for the same seed
    assert report["per_character"] == 10
    assert report["sample_of_seed"] == {"0": "seed-0", "1": "seed-1"}
    for seed in (0, 1):
        sample = report["samples"][f"seed-{seed}"]
        assert sample == quality.sample_crops(folder, PIPELINE_NAMES, 10, seed)
        assert all(len(files) == 10 for files in sample.values())
    assert report["samples"]["seed-0"] != report["samples"]["seed-1"]
    for seed_report in report["reports"]:  # the pipeline saw the sample, not the folder
        trained = seed_report["val"]
        assert (
            trained["num_images"]
            + seed_report["test"]["num_images"]
            + trained["identification"]["gallery_images"]
            + seed_report["open_set"]["num_images"]
        ) == 10 * len(PIPELINE_NAMES)

    # held-out characters: never the hard case, the same for both seeds, printed
    held_out = report["held_out"]
    assert len(held_out) == 1 and "Akane Red" not in held_out
    assert report["split_seed"]["seed-0"] > 1  # split.seed 1 was refused
    assert report["split_seed"]["seed-0"] == report["split_seed"]["seed-1"]
    assert all(r["held_out"] == held_out for r in report["reports"])
    assert all(r["open_set"]["num_characters"] == 1 for r in report["reports"])
    assert f"held out (split.seed={report['split_seed']['seed-0']}): {held_out[0]}" in (
        result.stdout
    )
    assert f"1 held out: {held_out[0]}" in result.stdout

    # headline: identification precision@1, then val MAP@R, then the open set
    metrics = [row["metric"] for row in report["rows"]]
    assert metrics[:4] == [
        "identification precision@1",
        "val MAP@R",
        "open-set precision@1",
        "open-set MAP@R",
    ]
    assert table_lines(result.stdout)[0].startswith("identification precision@1")
    rows = {row["metric"]: row for row in report["rows"]}
    headline = rows["identification precision@1"]
    assert len(headline["per_seed"]) == 2
    assert headline["per_seed"] == [
        r["val"]["identification"]["precision_at_1"] for r in report["reports"]
    ]
    assert headline["model"] == pytest.approx(sum(headline["per_seed"]) / 2)
    assert headline["worst"] == headline["min"] == min(headline["per_seed"])
    assert headline["max"] == max(headline["per_seed"])
    assert 0.0 <= headline["baseline"] <= 1.0
    assert headline["target"] == 0.95 and headline["passed"] == (headline["model"] >= 0.95)
    assert rows["val MAP@R"]["target"] == 0.80
    assert rows["open-set precision@1"]["target"] == 0.90
    assert rows["open-set MAP@R"]["target"] == 0.60
    p_at_1 = rows["val precision@1 (within val)"]
    assert len(p_at_1["per_seed"]) == 2 and 0.0 <= p_at_1["baseline"] <= 1.0
    assert "ImageNet" in result.stdout and "min-max" in result.stdout
    # identify's answers with its unknown-face threshold, each seed's from its report
    named = rows["test faces named right (with the threshold)"]["per_seed"]
    assert named == [r["naming"]["test"]["named_right"] for r in report["reports"]]
    for r in report["reports"]:
        outcomes = r["naming"]["test"]
        assert outcomes["named_right"] + outcomes["called_unknown"] + outcomes["named_wrong"] == (
            pytest.approx(1.0)
        )
    assert len(rows["held-out characters' faces called unknown"]["per_seed"]) == 2
    # identification again, against the gallery without the faces the trained embedding
    # calls misfiled
    cleaned = rows["identification P@1, misfiled gallery faces left out"]
    assert cleaned["per_seed"] == [r["without_misfiled"]["val"] for r in report["reports"]]
    assert all(0.0 <= r["without_misfiled"]["left_out"] < 1.0 for r in report["reports"])

    # seconds per epoch, per seed and on average
    per_epoch = report["seconds_per_epoch"]
    assert len(per_epoch["per_seed"]) == 2 and per_epoch["mean"] > 0
    assert [r["seconds_per_epoch"] for r in report["reports"]] == per_epoch["per_seed"]
    assert "s per epoch" in result.stdout


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.no_such_param=1", "no_such_param"),
        ("lr=1e-4", "SECTION.KEY=VALUE"),
        ("crop.size=64", "recipe has sections"),
        ("package.misfiled=sometimes", "package.misfiled"),
        ("train.lr=-1", "train.lr"),
    ],
)
def test_bad_override_is_refused_before_any_work(tmp_path, override, message):
    folder = write_picture_folder(tmp_path / "faces", PIPELINE_NAMES[:2], count=3)
    result = run_benchmark(str(folder), "--workdir", str(tmp_path / "work"), "-S", override)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--per-character", "-1"], "must be 0 or more"),
        # all five hard: at most two may go, so three would leave only hard ones to hold out
        (["--holdout", "3", "--hard-case", *PIPELINE_NAMES], "--holdout 3"),
        (["--split-seeds", "0", "1", "0"], "a seed twice"),
        (["--split-seeds", "0", "1", "-S", "split.seed=3"], "give one of them"),
        (["--label-noise", "1"], "not a share from 0 up to (not) 1"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(tmp_path, arguments, message):
    folder = write_picture_folder(tmp_path / "faces", PIPELINE_NAMES, count=3)
    result = run_benchmark(str(folder), "--workdir", str(tmp_path / "work"), *arguments)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "work").exists()


# --------------------------------------------------------------------- the sample


def touch_crops(folder: Path, counts: dict[str, int]) -> Path:
    """Empty files are enough: the sample only lists names."""
    for name, count in counts.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            (folder / name / f"{index:03d}.jpg").touch()
    return folder


def test_sample_caps_each_character_deterministically_per_seed(tmp_path, quality):
    folder = touch_crops(tmp_path / "faces", {"many": 50, "also_many": 40, "few": 7})
    (folder / "many" / ".DS_Store").touch()  # not a crop: the folder backend skips it too
    names = ["also_many", "few", "many"]

    sample = quality.sample_crops(folder, names, 30, sample_seed=0)
    assert {name: len(files) for name, files in sample.items()} == {
        "also_many": 30,
        "few": 7,
        "many": 30,
    }
    assert sample["few"] == sorted(path.name for path in (folder / "few").iterdir())
    assert set(sample["many"]) <= {f"{i:03d}.jpg" for i in range(50)}
    assert sample == quality.sample_crops(folder, names, 30, sample_seed=0)
    assert sample["many"] != quality.sample_crops(folder, names, 30, sample_seed=1)["many"]
    # a character's sample depends on the seed and its name alone
    alone = quality.sample_crops(folder, ["many"], 30, sample_seed=0)
    assert alone["many"] == sample["many"]
    # 0: every crop
    every = quality.sample_crops(folder, names, 0, sample_seed=0)
    assert len(every["many"]) == 50 and len(every["also_many"]) == 40


def test_sample_is_copied_as_a_folder_backend_tree(tmp_path, quality):
    folder = touch_crops(tmp_path / "faces", {"a": 5, "b": 5})
    sample = quality.sample_crops(folder, ["a", "b"], 2, sample_seed=3)
    copied = quality.write_sample(folder, sample, tmp_path / "sample")
    assert {
        name: sorted(path.name for path in (copied / name).iterdir()) for name in ("a", "b")
    } == sample


# --------------------------------------------------------------------- held-out characters

CHARACTERS = [f"other_{i:02d}" for i in range(16)]


def test_at_most_half_of_the_hard_case_may_be_held_out(quality):
    names = sorted([*CHARACTERS, *quality.HARD_CASE])
    hard = quality.HARD_CASE
    assert len(names) == 22
    assert quality.holdout_acceptable(["other_00", *hard[:3]], hard, names)
    assert not quality.holdout_acceptable(list(hard[:4]), hard, names)
    assert quality.holdout_acceptable(["other_00", "other_01"], hard, names)
    # only the hard-case characters in the folder count: of one, none may be held out
    assert quality.holdout_acceptable(["other_00"], ["other_00", "not_here"], names) is False
    assert quality.holdout_acceptable(["other_00"], ["other_00", "other_01"], names)


def test_a_holdout_that_must_take_the_hard_case_is_refused(quality):
    names = ["a", "b", "hard_1", "hard_2", "hard_3"]
    quality.check_holdout_possible(names, 3, ["hard_1", "hard_2", "hard_3"])  # a, b, one hard
    with pytest.raises(ConfigError, match="--holdout 4"):
        quality.check_holdout_possible(names, 4, ["hard_1", "hard_2", "hard_3"])


def test_split_seed_search_takes_the_first_acceptable_seed(quality):
    tried = []

    def held_out_for(seed):
        tried.append(seed)
        return ["hard"] if seed < 7 else ["other"]

    def acceptable(held):
        return "hard" not in held

    assert quality.first_acceptable_split_seed(5, held_out_for, acceptable) == (7, ["other"])
    assert tried == [5, 6, 7]  # stops at once: the accepted split is the last one written
    with pytest.raises(StageError, match=r"no split seed in 0\.\.2"):
        quality.first_acceptable_split_seed(0, held_out_for, acceptable, attempts=3)


def test_two_split_seeds_ending_at_one_held_out_set_are_refused(quality):
    sets = [(0, 0, ["a"]), (1, 3, ["b"]), (2, 3, ["b"])]  # 2 was refused and moved to 3
    assert "--split-seeds 1 and 2 both hold out b (split seed 3" in quality.repeated_set(sets)
    assert quality.repeated_set(sets[:2]) is None


@pytest.mark.slow
def test_several_held_out_sets_are_measured_and_pooled(tmp_path):
    folder = write_picture_folder(tmp_path / "faces", PIPELINE_NAMES, count=8)
    result = run_benchmark(
        str(folder),
        "--holdout", "1",
        "--hard-case",
        "--seeds", "0", "1",
        "--split-seeds", "0", "1",
        "--label-noise", "0.25",
        "--json", str(tmp_path / "quality.json"),
        # evaluate searches identify's gallery: misfiled faces left out, as package does
        "-S", "package.misfiled=leave_out",
        *tiny_recipe(batches_per_epoch=1),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "quality.json").read_text())
    sets = report["sets"]
    assert [s["requested_split_seed"] for s in sets] == [0, 1]
    assert report["split_seeds"] == [0, 1]
    assert sets[0]["held_out"] != sets[1]["held_out"]  # two held-out sets, not one twice
    for held_out_set in sets:
        assert [r["seed"] for r in held_out_set["reports"]] == [0, 1]
        assert all(r["held_out"] == held_out_set["held_out"] for r in held_out_set["reports"])
    # the headline pools every set and seed: four runs
    headline = report["rows"][0]
    assert headline["metric"] == "identification precision@1"
    runs = [r for s in sets for r in s["reports"]]
    assert headline["per_seed"] == [r["val"]["identification"]["precision_at_1"] for r in runs]
    assert headline["model"] == pytest.approx(sum(headline["per_seed"]) / 4)
    each = [s["rows"][0]["model"] for s in sets]
    assert headline["model"] == pytest.approx(sum(each) / 2)
    assert "pooled over 2 held-out sets (split seeds 0, 1) x 2 seeds: 4 runs" in result.stdout
    headlines = [
        line for line in result.stdout.splitlines() if line.startswith("identification precision")
    ]
    assert len(headlines) == 3  # each set's table, then the pooled one
    # with --label-noise, how many renamed faces review's order lists first, per run, with
    # the trained embedder against the ImageNet features
    flagged = next(
        row for row in report["rows"] if row["metric"] == "misnamed faces review lists first"
    )
    assert flagged["per_seed"] == [r["misnamed"]["flagged_first"] for r in runs]
    assert all(0.0 <= value <= 1.0 for value in flagged["per_seed"] + flagged["baseline_per_seed"])
    assert len(flagged["baseline_per_seed"]) == 4
    assert report["changes"]["package.misfiled"] == "leave_out"
    for run in runs:  # the gallery without misfiled faces: how many misnamed among them
        cleaned = run["without_misfiled"]
        left_out = cleaned["left_out_misnamed"] + cleaned["left_out_named_right"]
        assert left_out == run["gallery_left_out_misfiled"]  # evaluate left out the same
        embedded = run["val"]["identification"]["gallery_images"] + left_out
        assert left_out == round(cleaned["left_out"] * embedded)
        # so its identification (and its naming, with the threshold) is identify's
        assert run["val"]["identification"]["precision_at_1"] == pytest.approx(cleaned["val"])
        assert run["test"]["identification"]["precision_at_1"] == pytest.approx(cleaned["test"])


# --------------------------------------------------------------------- the comparison


def seed_report(identified: float, eer: float, baseline_identified: float) -> dict:
    return {
        "val": {"identification": {"precision_at_1": identified}, "map_at_r": 0.8, "eer": eer},
        "baseline_val": {"identification": {"precision_at_1": baseline_identified}},
        "open_set": {"precision_at_1": 0.9, "map_at_r": 0.6},
    }


def test_comparison_puts_identification_first_with_mean_spread_and_baseline(quality):
    rows = quality.comparison([seed_report(0.90, 0.10, 0.50), seed_report(1.00, 0.20, 0.60)])
    assert [row["metric"] for row in rows][:4] == [
        "identification precision@1",
        "val MAP@R",
        "open-set precision@1",
        "open-set MAP@R",
    ]
    headline = rows[0]
    assert headline["model"] == pytest.approx(0.95)
    assert headline["std"] == pytest.approx(0.0707, abs=1e-4)
    assert (headline["min"], headline["max"], headline["worst"]) == (0.90, 1.00, 0.90)
    assert headline["baseline"] == pytest.approx(0.55)  # each seed's sample has its own
    assert headline["passed"] is True  # 0.95 >= 0.95
    eer = next(row for row in rows if row["metric"].startswith("val verification EER"))
    assert eer["worst"] == 0.20 and eer["lower_is_better"]


# --------------------------------------------------------------------- label noise


def write_train_split(root: Path, counts: dict[str, int]) -> list[dict[str, str]]:
    from anime_face_id import layout
    from anime_face_id.fileio import write_csv

    rows = [
        {
            "character": name,
            "slug": name.lower().replace(" ", "_"),
            "path": f"data/curated/{name.lower().replace(' ', '_')}/{i}.jpg",
            "source": f"s{i}",
            "cluster": f"{name}-{i}",
        }
        for name, count in counts.items()
        for i in range(count)
    ]
    for split in ("train", "val"):
        write_csv(root / layout.split_csv(split), layout.SPLIT_COLUMNS, rows)
    return rows


def test_label_noise_renames_that_share_of_training_faces_to_other_trained_characters(
    tmp_path, quality
):
    from anime_face_id import layout

    counts = {"Aoi": 20, "Beni": 20, "Chiyo": 10}
    clean = write_train_split(tmp_path, counts)
    renamed, faces = quality.add_label_noise(tmp_path, 0.2, "sample-7")
    assert (len(renamed), faces) == (10, 50)
    noisy = layout.read_table(tmp_path, layout.split_csv("train"), layout.SPLIT_COLUMNS)
    changed = [(a, b) for a, b in zip(clean, noisy, strict=True) if a != b]
    assert len(changed) == 10  # each renamed face has another name than its own
    assert sorted(renamed) == sorted(after["path"] for _, after in changed)
    pairs = {(row["character"], row["slug"]) for row in clean}
    for before, after in changed:
        assert (after["character"], after["slug"]) in pairs  # a trained character, whole
        assert after["path"] == before["path"] and after["cluster"] == before["cluster"]
    # val keeps the true names; the same seed renames the same faces the same way
    assert layout.read_table(tmp_path, layout.split_csv("val"), layout.SPLIT_COLUMNS) == clean
    again = tmp_path / "again"
    write_train_split(again, counts)
    quality.add_label_noise(again, 0.2, "sample-7")
    assert layout.read_table(again, layout.split_csv("train"), layout.SPLIT_COLUMNS) == noisy
    other = tmp_path / "other"
    write_train_split(other, counts)
    quality.add_label_noise(other, 0.2, "sample-8")
    assert layout.read_table(other, layout.split_csv("train"), layout.SPLIT_COLUMNS) != noisy
    assert quality.add_label_noise(other, 0.0, "sample-8")[0] == []


def test_review_order_lists_the_misnamed_faces_far_from_their_character_first(quality):
    import numpy as np

    rng = np.random.default_rng(0)
    centres = {"Aoi": rng.normal(size=16) * 4, "Beni": rng.normal(size=16) * 4}
    vectors, characters = {}, {}
    for name in centres:
        for i in range(10):
            vectors[f"{name}/{i}.png"] = centres[name] + rng.normal(size=16)
            characters[f"{name}/{i}.png"] = name
    misnamed = {"Aoi/3.png", "Beni/7.png"}  # filed under one character, drawn as the other
    vectors["Aoi/3.png"] = centres["Beni"] + rng.normal(size=16)
    vectors["Beni/7.png"] = centres["Aoi"] + rng.normal(size=16)
    assert quality.misnamed_flagged_first(vectors, characters, misnamed, 0.2) == 1.0
    # faces like the rest of their character are not what review lists first
    looks_right = {"Aoi/0.png", "Beni/0.png"}
    assert quality.misnamed_flagged_first(vectors, characters, looks_right, 0.1) == 0.0
