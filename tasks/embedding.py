"""Embedding passes on the flow's task runner (a Dask cluster with ``compute.runner: dask``):
the crops go out in chunks of a few batches, each worker process loads the checkpoint once
and embeds its chunks, and the flow gathers the vectors in order.

The result is the local pass's up to the last float digits (torch's kernels round
differently with another number of threads), never more; crops are read from the project
folder, which the workers must see at the same path, as for crop."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from prefect import task

from anime_face_id.config import ComputeConfig
from anime_face_id.embedding_store import PathEmbedder
from anime_face_id.layout import EMBEDDER

# Batches per task: enough work to outweigh a task's overhead, small enough to spread.
CHUNK_BATCHES = 4


@functools.lru_cache(maxsize=2)
def _loaded(checkpoint: str, stamp: tuple[int, int], device: str):
    """The checkpoint's network, once per worker process (and per version of the file)."""
    from anime_face_id.checkpoint import load_checkpoint
    from anime_face_id.device import resolve_device

    torch_device = resolve_device(device)
    return load_checkpoint(Path(checkpoint), torch_device), torch_device


@task(task_run_name="embed-{first}-{last}")
def embed_chunk(
    root: str,
    checkpoint: str,
    paths: list[str],
    batch_size: int,
    device: str,
    first: int,
    last: int,
) -> np.ndarray:
    """Crops ``first`` to ``last`` of a pass (their numbers name the task run)."""
    from anime_face_id.embed import embed_paths

    status = Path(checkpoint).stat()
    loaded, torch_device = _loaded(checkpoint, (status.st_mtime_ns, status.st_size), device)
    crops = [Path(root) / path for path in paths]
    return embed_paths(loaded.model, crops, loaded.image_size, torch_device, batch_size).numpy()


def embedder_on_workers(
    root: Path, checkpoint: Path, batch_size: int, device: str, dimension: int
) -> PathEmbedder:
    """A ``PathEmbedder`` that submits one task per chunk; call it inside the flow."""
    chunk = CHUNK_BATCHES * batch_size

    def embed(paths: Sequence[str]) -> np.ndarray:
        paths = list(paths)
        futures = [
            embed_chunk.submit(
                str(root),
                str(checkpoint),
                paths[start : start + chunk],
                batch_size,
                device,
                start,
                min(start + chunk, len(paths)),
            )
            for start in range(0, len(paths), chunk)
        ]
        parts = [future.result() for future in futures]
        return np.concatenate(parts) if parts else np.zeros((0, dimension), dtype=np.float32)

    return embed


def stage_embedder(
    root: Path, compute: ComputeConfig, batch_size: int, device: str
) -> PathEmbedder | None:
    """The stage's embedder for the project's checkpoint: on the workers with
    ``compute.runner: dask``; None (embed in the stage's process) otherwise."""
    if compute.runner != "dask":
        return None
    from anime_face_id.checkpoint import load_checkpoint

    checkpoint = Path(root) / EMBEDDER
    dimension = load_checkpoint(checkpoint, "cpu").embedding_dim
    return embedder_on_workers(Path(root), checkpoint, batch_size, device, dimension)
