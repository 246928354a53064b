"""The embedding passes of evaluate (its ImageNet baseline included) and the gallery
rebuild, locally and on a Dask cluster,
in a process of their own (tests/test_dask.py runs it): a flow run in the test process
would leave Prefect's services behind, and later tests that fork would inherit them.

    python -m tests.support.dask_embedding FOLDER    # prints one JSON document
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

SPLITS = ("val", "test", "baseline_val")  # baseline_val: the ImageNet features' pass


def main(folder: Path) -> None:
    from distributed import Client, LocalCluster, get_task_stream
    from prefect import flow
    from prefect_dask import DaskTaskRunner

    from anime_face_id import cli, suspicion
    from anime_face_id.chunked_embedding import client_embedder
    from anime_face_id.config import ComputeConfig, EvaluateConfig
    from anime_face_id.embedding_store import EMBEDDINGS
    from anime_face_id.evaluate import evaluate
    from anime_face_id.gallery import GALLERY, load_gallery, rebuild_gallery
    from anime_face_id.train import train
    from tasks.embedding import baseline_embedder, stage_embedder
    from tests.test_identify import NAMES, params_dict, params_for, write_params
    from tests.test_train import make_synthetic_project, tiny_config

    local, remote = folder / "local", folder / "remote"
    make_synthetic_project(local, names=NAMES, counts=(6, 3, 3))
    train(local, tiny_config(epochs=1, batches_per_epoch=2))
    shutil.copytree(local, remote)
    config = EvaluateConfig(device="cpu", baseline=True, batch_size=4, grid_queries=0)
    params = params_for(NAMES)
    checkpoint = Path("models/embedder.pt")

    here = evaluate(local, config)
    (local / EMBEDDINGS).unlink()  # the gallery then embeds everything itself
    gallery_here, _ = rebuild_gallery(local, params, local / checkpoint, local / GALLERY)

    baseline_sent: list[str] = []
    cluster_options = {"threads_per_worker": 1, "host": "127.0.0.1", "dashboard_address": None}
    with LocalCluster(n_workers=2, **cluster_options) as cluster, Client(cluster) as client:
        compute = ComputeConfig(runner="dask", dask_address=cluster.scheduler_address)

        @flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
        def on_the_cluster():
            embedder = stage_embedder(remote, compute, config.batch_size, "cpu")
            on_workers = baseline_embedder(remote, compute, config.batch_size, "cpu")

            def baseline(image_size):  # counts what the baseline sends to the workers
                embed = on_workers(image_size)
                return lambda paths: baseline_sent.extend(paths) or embed(paths)

            report = evaluate(remote, config, embedder=embedder, baseline_embedder=baseline)
            (remote / EMBEDDINGS).unlink()
            gallery, _ = rebuild_gallery(
                remote, params, remote / checkpoint, remote / GALLERY, embedder=embedder
            )
            return report, gallery

        there, gallery_there = on_the_cluster()
        ran = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes))

        # by hand: `anime-face-id gallery rebuild` with compute.runner dask in params.yaml
        # (models/embeddings.npz is gone: it embeds everything)
        data = params_dict(NAMES, "none", None)
        data["compute"] = {"runner": "dask", "dask_address": cluster.scheduler_address}
        write_params(remote, data)
        with get_task_stream(client) as stream:  # what the workers ran meanwhile
            status = cli.main(["gallery", "rebuild", "--root", str(remote), "--device", "cpu"])
        by_hand = load_gallery(remote / GALLERY)

        # the review app's suspicion scores (a broken crop among them) through the cluster
        crops = sorted(p.relative_to(local).as_posix() for p in local.rglob("data/faces/*/*.png"))
        for root in (local, remote):
            (root / "data/faces/broken.png").write_bytes(b"not a picture")
        crops.append("data/faces/broken.png")
        sent: list[str] = []

        def elsewhere(spec):
            embed = client_embedder(client, remote, spec.network, 16, "cpu", spec.image_size)
            return lambda paths: sent.extend(paths) or embed(paths)

        review_here = suspicion.embed_files(
            local, crops, suspicion.trained_spec(local / checkpoint)
        )
        review_there = suspicion.embed_files(
            remote, crops, suspicion.trained_spec(remote / checkpoint), elsewhere=elsewhere
        )

    scores = ("precision_at_1", "map_at_r", "r_precision")
    print(
        json.dumps(
            {
                "ran": ran,
                "embeddings": [gallery_here.meta["embeddings"], gallery_there.meta["embeddings"]],
                "same_paths": gallery_there.paths == gallery_here.paths,
                "largest_difference": float(
                    np.abs(gallery_there.embeddings - gallery_here.embeddings).max()
                ),
                "here": {s: {n: here[s][n] for n in scores} for s in SPLITS},
                "there": {s: {n: there[s][n] for n in scores} for s in SPLITS},
                "baseline_sent": len(baseline_sent),
                "review_sent": len(sent),
                "review_crops": len(crops),
                "review_failed": [sorted(review_here.failed), sorted(review_there.failed)],
                "review_same_paths": sorted(review_here.vectors) == sorted(review_there.vectors),
                "review_largest_difference": max(
                    float(np.abs(review_here.vectors[p] - review_there.vectors[p]).max())
                    for p in review_here.vectors
                ),
                "cli_status": status,
                "cli_tasks": sorted({str(task["key"]).split("-")[0] for task in stream.data}),
                "cli_largest_difference": float(
                    np.abs(by_hand.embeddings - gallery_here.embeddings).max()
                ),
                "cli_same_paths": by_hand.paths == gallery_here.paths,
                "cli_embeddings": by_hand.meta["embeddings"],
                "local_runner_embeds_here": stage_embedder(remote, ComputeConfig(), 4, "cpu")
                is None,
            }
        )
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
