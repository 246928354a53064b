"""collect and crop on a Dask cluster: a real `distributed.LocalCluster` of 2 worker
processes on 127.0.0.1 runs the per-character tasks (downloads from a local web server,
the trained detector), and the outputs equal the single-process run's."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest

from anime_face_id import layout
from anime_face_id.config import ComputeConfig
from flows._stage import on_compute
from tests.support.project import make_project
from tests.support.webserver import WebServer

CHARACTERS = ["nishikino_maki", "sakurauchi_riko", "takimoto_hifumi"]
TIMES = {"fetched_at", "time"}  # when something happened: the one expected difference


def publish(web: WebServer, shared_dir: Path, csv_path: Path) -> None:
    rows = ["character,url"]
    for name in CHARACTERS:
        for picture in sorted((shared_dir / "testdata" / "raw" / name).glob("*.jpg"))[:5]:
            url = web.serve(f"/{name}/{picture.name}", picture.read_bytes(), "image/jpeg")
            rows.append(f"{name},{url}")
        rows.append(f"{name},{web.url(f'/{name}/gone.jpg')}")  # a 404: a reject row
    csv_path.write_text("\n".join(rows) + "\n")


def table(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [{k: v for k, v in row.items() if k not in TIMES} for row in csv.DictReader(handle)]


def files(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.suffix in {".jpg", ".png", ".jpeg"}
    }


def run(tmp_path: Path, name: str, env: dict, urls: Path, compute: dict) -> tuple[Path, str]:
    project = make_project(tmp_path / name, env)
    project.set_params(
        characters=[{"name": n} for n in CHARACTERS],
        collect={"backend": "urls", "urls": str(urls), "allow_networks": ["127.0.0.0/8"]},
        crop={"size": 96},  # the default, trained detector
        compute=compute,
    )
    done = project.dvc("repro", "crop")
    return project.root, done.stdout + done.stderr


def test_on_compute_keeps_local_runs_local_and_binds_a_local_cluster_to_loopback():
    from prefect import flow

    @flow
    def stage():
        return 1

    assert on_compute(stage, ComputeConfig()) is stage
    runner = on_compute(stage, ComputeConfig(runner="dask", dask_workers=3)).task_runner
    assert runner.cluster_kwargs["n_workers"] == 3
    assert runner.cluster_kwargs["host"] == "127.0.0.1"
    assert runner.cluster_kwargs["dashboard_address"].startswith("127.0.0.1:")
    existing = on_compute(stage, ComputeConfig(runner="dask", dask_address="tcp://10.0.0.5:8786"))
    assert existing.task_runner.address == "tcp://10.0.0.5:8786"


@pytest.mark.slow
def test_collect_and_crop_on_a_dask_cluster_match_the_local_run(tmp_path, shared_dir, prefect_api):
    from distributed import Client, LocalCluster

    with WebServer() as web:
        urls = tmp_path / "urls.csv"
        publish(web, shared_dir, urls)
        local, _ = run(tmp_path, "local", prefect_api, urls, {"runner": "local"})
        downloads = sum(web.counts().values())

        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            compute = {"runner": "dask", "dask_address": cluster.scheduler_address}
            remote, _ = run(tmp_path, "dask", prefect_api, urls, compute)
            ran = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes))
        assert sum(web.counts().values()) == 2 * downloads  # every picture fetched again

        # and on a cluster the stage starts itself (compute.dask_address: null)
        compute = {"runner": "dask", "dask_workers": 2}
        started, output = run(tmp_path, "started", prefect_api, urls, compute)
        assert "LocalCluster" in output  # prefect-dask says what it started

    # the per-character tasks ran on the cluster's workers
    assert any("collect" in name for name in ran), ran
    assert any("crop" in name for name in ran), ran
    for manifest in (
        layout.RAW_MANIFEST,
        layout.RAW_REJECTS,
        layout.FACES_MANIFEST,
        layout.FACES_REJECTS,
    ):
        assert table(remote / manifest) == table(local / manifest), manifest
        assert table(started / manifest) == table(local / manifest), manifest
    assert files(remote / "data") == files(local / "data") == files(started / "data")
    assert len(table(local / layout.FACES_MANIFEST)) >= len(CHARACTERS)


@pytest.mark.slow
def test_embedding_passes_on_a_dask_cluster_match_the_local_ones(tmp_path, prefect_api):
    """evaluate and the gallery rebuild with compute.runner dask: the crops are embedded
    by tasks on the cluster's workers, and scores and gallery are the local pass's (up to
    float rounding: another thread count). Run in a process of its own (see the module)."""
    import json
    import os
    import subprocess
    import sys

    process = subprocess.run(
        [sys.executable, "-m", "tests.support.dask_embedding", str(tmp_path)],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, **prefect_api},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    found = json.loads(process.stdout.strip().splitlines()[-1])
    assert any("embed" in name for name in found["ran"]), found["ran"]
    here_counts, there_counts = found["embeddings"]
    assert here_counts == there_counts and there_counts["reused"] == 0
    assert found["same_paths"] and found["largest_difference"] < 1e-5
    assert found["baseline_sent"] > 0  # the ImageNet baseline was embedded there too
    for split in ("val", "test", "baseline_val"):
        for name, value in found["here"][split].items():
            assert found["there"][split][name] == pytest.approx(value, abs=1e-6), (split, name)
    assert found["local_runner_embeds_here"]
    # the review app's suspicion embeddings: sent to the cluster, the broken crop recorded
    assert found["review_sent"] >= found["review_crops"] - 1
    assert found["review_failed"] == [["data/faces/broken.png"]] * 2
    assert found["review_same_paths"] and found["review_largest_difference"] < 1e-5
    # `anime-face-id gallery rebuild` by hand, on the cluster params.yaml names
    assert found["cli_status"] == 0
    assert found["cli_tasks"] == ["embed_chunk"], found["cli_tasks"]
    assert found["cli_embeddings"] == here_counts
    assert found["cli_same_paths"] and found["cli_largest_difference"] < 1e-5
