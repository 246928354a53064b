"""End to end: `dvc repro` from collect through balance, offline, with the folder backend
on the real illustrations in ../shared/testdata/raw and the trained detector (the default)."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import pytest

from anime_face_id import layout
from tests.support.project import make_project, prefect_post

pytestmark = pytest.mark.slow

CHARACTERS = ["nishikino_maki", "sakurauchi_riko", "takimoto_hifumi"]


def read(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_folder_backend_dvc_repro(tmp_path, shared_dir, prefect_api):
    # The Prefect server serves the whole session (other tests' runs may have failed on
    # purpose): only this test's runs count.
    started = datetime.now(UTC).isoformat()
    project = make_project(tmp_path, prefect_api)
    project.set_params(
        characters=[{"name": name} for name in CHARACTERS],
        collect={"backend": "folder", "folder": str(shared_dir / "testdata" / "raw"), "limit": 60},
        crop={"size": 128},  # the default detector: the trained CenterNet
        review={"require_complete": False},
        split={"val": 0.2, "test": 0.2},
        balance={"min_per_class": 40},
    )

    first = project.dvc("repro", "balance")
    assert "Running stage 'balance'" in first.stdout
    n = len(CHARACTERS)  # per-character progress in the terminal, as the tasks finish
    for stage in ("collect", "crop"):
        assert f"{stage}: {n} of {n} characters done" in first.stdout + first.stderr

    raw = read(project.root / layout.RAW_MANIFEST)
    for name in CHARACTERS:
        available = len(list((shared_dir / "testdata" / "raw" / name).iterdir()))
        kept = [row for row in raw if row["character"] == name]
        assert len(kept) == min(available, 60), name
        assert all((project.root / row["path"]).is_file() for row in kept)
        assert all(row["path"].startswith(f"data/raw/{name}/") for row in kept)

    faces = read(project.root / layout.FACES_MANIFEST)
    assert {row["character"] for row in faces} == set(CHARACTERS)
    sources_with_face = {row["source"] for row in faces}
    # The trained detector finds a face in nearly every one of these illustrations (the
    # cascade did in 0.86 of them).
    assert len(sources_with_face) >= 0.88 * len(raw)
    assert {row["detector"] for row in faces} == {"centernet"}

    curated = read(project.root / layout.CURATED_MANIFEST)
    assert len(curated) == len(faces)  # nothing reviewed, pending accepted by the param

    splits = {name: read(project.root / layout.split_csv(name)) for name in layout.SPLIT_NAMES}
    split_paths = [row["path"] for rows in splits.values() for row in rows]
    assert sorted(split_paths) == sorted(row["path"] for row in curated)
    for name in CHARACTERS:
        assert any(row["character"] == name for row in splits["val"]), name
    # Crops of one source picture never straddle two splits.
    side_of_source = {}
    for split_name, rows in splits.items():
        for row in rows:
            assert side_of_source.setdefault(row["source"], split_name) == split_name

    balanced = read(project.root / layout.BALANCED_TRAIN)
    train_paths = {row["path"] for row in splits["train"]}
    assert {row["path"] for row in balanced} == train_paths
    for name in CHARACTERS:
        assert sum(row["character"] == name for row in balanced) >= 40

    again = project.dvc("repro", "balance")
    assert "Data and pipelines are up to date." in again.stdout
    assert "Running stage" not in again.stdout

    # Every stage ran as a Prefect flow with tasks and a summary table artifact.
    api = prefect_api["PREFECT_API_URL"]
    flow_names = {flow["id"]: flow["name"] for flow in prefect_post(api, "flows/filter", {})}
    runs = prefect_post(
        api, "flow_runs/filter", {"limit": 200, "flow_runs": {"start_time": {"after_": started}}}
    )
    ran = {flow_names.get(run["flow_id"]) for run in runs}
    assert {"collect", "crop", "review", "split", "balance"} <= ran, ran
    assert all(run["state_type"] == "COMPLETED" for run in runs if run["state_type"] != "SCHEDULED")
    tasks = prefect_post(api, "task_runs/filter", {"limit": 200})
    assert any(task["name"].startswith("crop-") for task in tasks)
    keys = {a["key"] for a in prefect_post(api, "artifacts/filter", {"limit": 200})}
    assert {
        "collect-summary",
        "crop-summary",
        "review-summary",
        "split-summary",
        "balance-summary",
    } <= keys
