"""Embedding passes on the flow's task runner (a Dask cluster with ``compute.runner: dask``):
the crops go out in chunks of a few batches (``chunked_embedding``), each worker process
loads the network once and embeds its chunks, and the flow gathers the vectors in order."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from prefect import task

from anime_face_id import chunked_embedding
from anime_face_id.chunked_embedding import IMAGENET, chunked_embedder
from anime_face_id.config import ComputeConfig
from anime_face_id.embedding_store import PathEmbedder
from anime_face_id.layout import EMBEDDER


@task(task_run_name="embed-{first}-{last}")
def embed_chunk(
    root: str,
    network: str,
    paths: list[str],
    batch_size: int,
    device: str,
    first: int,
    last: int,
    image_size: int | None = None,
) -> np.ndarray:
    """Crops ``first`` to ``last`` of a pass (their numbers name the task run)."""
    return chunked_embedding.embed_chunk(root, network, paths, batch_size, device, image_size)


def embedder_on_workers(
    root: Path,
    network: Path | str,
    batch_size: int,
    device: str,
    image_size: int | None = None,
) -> PathEmbedder:
    """A ``PathEmbedder`` that submits one task per chunk; call it inside the flow. Nothing
    is loaded here: the workers load the network."""

    def submit(part: list[str], first: int, end: int):
        return embed_chunk.submit(
            str(root), str(network), part, batch_size, device, first, end, image_size
        )

    return chunked_embedder(submit, network, batch_size)


def stage_embedder(
    root: Path, compute: ComputeConfig, batch_size: int, device: str
) -> PathEmbedder | None:
    """The stage's embedder for the project's checkpoint: on the workers with
    ``compute.runner: dask``; None (embed in the stage's process) otherwise."""
    if compute.runner != "dask":
        return None
    return embedder_on_workers(Path(root), Path(root) / EMBEDDER, batch_size, device)


def baseline_embedder(
    root: Path, compute: ComputeConfig, batch_size: int, device: str
) -> Callable[[int], PathEmbedder] | None:
    """evaluate's ImageNet baseline on the workers with ``compute.runner: dask``, given the
    input size (the checkpoint's); None (embed in the stage's process) otherwise."""
    if compute.runner != "dask":
        return None

    def at_size(image_size: int) -> PathEmbedder:
        return embedder_on_workers(Path(root), IMAGENET, batch_size, device, image_size)

    return at_size
