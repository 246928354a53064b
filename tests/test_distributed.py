"""Training on several processes: each takes its own share of the P x K batches, each steps
with the mean of every process's gradients, and a real 2-process `torchrun` run (gloo, CPU)
of the train stage writes one checkpoint and one MLflow run."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from anime_face_id import distributed
from anime_face_id.config import TrainParams
from anime_face_id.device import place
from anime_face_id.distributed import Ranks, ShardedBatches, ranks_from_env
from anime_face_id.identity_loss import make_classifier
from anime_face_id.model import build_embedder
from anime_face_id.sampler import PKSampler
from anime_face_id.train import TrainingNet, parallel
from tests.support.project import make_project
from tests.support.synthetic import PIPELINE_NAMES, configure_small_pipeline, write_picture_folder


def sampler(batches: int) -> PKSampler:
    labels = [label for label in range(6) for _ in range(5)]
    return PKSampler(labels, p=3, k=2, seed=4, batches_per_epoch=batches)


@pytest.mark.parametrize(("batches", "world"), [(8, 2), (9, 2), (10, 3), (5, 5)])
def test_ranks_share_the_batches_without_overlap_and_equally(batches, world):
    source = sampler(batches)
    source.set_epoch(3)
    everything = list(source)
    shards = []
    for rank in range(world):
        shard = ShardedBatches(sampler(batches), Ranks(rank, world))
        shard.set_epoch(3)
        shards.append(list(shard))
        assert len(shards[-1]) == len(shard) == batches // world
    # batch i goes to rank i mod world; the incomplete last round is left out
    kept = (batches // world) * world
    for index, batch in enumerate(everything[:kept]):
        assert shards[index % world][index // world] == batch


def test_one_process_takes_every_batch():
    assert list(ShardedBatches(sampler(7), Ranks())) == list(sampler(7))


def test_ranks_come_from_torchruns_environment(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert ranks_from_env() == Ranks(1, 4, 1)
    assert not ranks_from_env().is_main and ranks_from_env().distributed
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name)
    assert ranks_from_env() == Ranks(0, 1, 0) and ranks_from_env().is_main


def best_map(root: Path) -> float:
    return json.loads((root / "metrics" / "train.json").read_text())["best"]["val_map_at_r"]


@pytest.mark.slow
def test_two_processes_train_the_stage_like_one(tmp_path, prefect_api):
    pictures = write_picture_folder(tmp_path / "pictures", PIPELINE_NAMES, count=16)
    project = make_project(tmp_path / "p", prefect_api)
    configure_small_pipeline(project, pictures, epochs=3, batches=6)
    project.dvc("repro", "balance")

    # the cosine identity head and the weight average take part in the distributed step
    extras = {"id_head": "cosine", "weight_average": 0.5}
    project.set_params(train={"processes": 2, **extras})
    run = project.dvc("repro", "train")
    output = run.stdout + run.stderr
    assert "2 processes (cpu)" in output
    assert output.count("training on 2 processes") == 1  # one process reports
    assert len([line for line in output.splitlines() if "epoch 3/3 loss" in line]) == 1
    two = best_map(project.root)
    checkpoints = sorted(p.name for p in (project.root / "models").glob("*.pt"))
    assert checkpoints == ["embedder.pt"]
    with sqlite3.connect(project.root / "mlflow.db") as db:
        runs = db.execute("SELECT name, status FROM runs").fetchall()
    assert runs == [("train", "FINISHED")]

    # three short epochs of the margin head land anywhere in ~0.7-1.0 by CPU and by layout
    # of the weights (float kernels differ), one process or two: that they learned is all
    # this says; whether they learned together is the gradient test's below
    assert two > 0.5, two


def _training_net() -> TrainingNet:
    """The train stage's net at the recipe with the cosine identity head, the same weights
    in every process (as seed_everything makes them), placed as train.py places it."""
    torch.manual_seed(0)
    config = TrainParams(id_head="cosine", image_size=64)
    model = place(build_embedder(config, pretrained=False), "cpu")
    return TrainingNet(model, make_classifier(config, model.embedding_dim, 4))


def _one_step(net: torch.nn.Module, rank: int) -> None:
    """Forward and backward on the batch that process ``rank`` draws."""
    torch.manual_seed(100 + rank)  # its own pictures and its own dropout
    images = torch.rand(4, 3, 64, 64)
    labels = torch.tensor([0, 0, 1, 1]) + 2 * rank
    embeddings, logits = net(images, labels)
    (embeddings.square().sum() + torch.nn.functional.cross_entropy(logits, labels)).backward()


def _gradients(net: TrainingNet) -> dict[str, np.ndarray]:
    return {
        name: parameter.grad.numpy().copy()
        for name, parameter in net.named_parameters()
        if parameter.grad is not None
    }


def _exchanging_process(rank: int, port: int, results) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
    )  # fmt: skip
    ranks = ranks_from_env()
    cpu = torch.device("cpu")
    distributed.start(ranks, cpu)
    try:
        net = _training_net()
        _one_step(parallel(net, ranks, cpu), rank)
        results.put((rank, _gradients(net)))
    finally:
        distributed.stop()


@pytest.mark.slow
def test_each_process_steps_with_the_average_of_every_process_gradients():
    """Two real gloo processes, each with its own batch, through the DistributedDataParallel
    wrapper train.py uses: each ends with the mean of the gradients the two batches give
    one process alone (a brute-force reference), weights channels-last as trained."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [
        context.Process(target=_exchanging_process, args=(rank, port, results)) for rank in (0, 1)
    ]
    for process in processes:
        process.start()
    try:
        exchanged = dict(results.get(timeout=300) for _ in processes)
    finally:
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():  # its peer died: it waits in a collective for ever
                process.terminate()
    assert [process.exitcode for process in processes] == [0, 0]

    alone = _training_net()
    per_batch = []
    for rank in (0, 1):
        alone.zero_grad(set_to_none=True)
        _one_step(alone, rank)
        per_batch.append(_gradients(alone))
    expected = {name: (per_batch[0][name] + per_batch[1][name]) / 2 for name in per_batch[0]}
    assert set(exchanged[0]) == set(expected) == set(exchanged[1])
    differs = [name for name in expected if not np.allclose(per_batch[0][name], expected[name])]
    assert len(differs) > len(expected) // 2  # the two batches do pull apart
    for rank in (0, 1):
        for name, gradient in expected.items():
            np.testing.assert_allclose(
                exchanged[rank][name], gradient, rtol=1e-4, atol=1e-7, err_msg=name
            )
