"""Embedding passes in chunks, for workers elsewhere (a Dask cluster): each worker process
loads the network once and embeds the chunks it is given; the caller gathers the vectors
in order. The pipeline's stages submit chunks as Prefect tasks (tasks/embedding.py); a
hand-run command connects to the cluster itself (``dask_embedder``).

The result is the local pass's up to the last float digits (torch's kernels round
differently with another number of threads); crops are read from the project folder, which
the workers must see at the same path, as for crop."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anime_face_id.config import ComputeConfig
from anime_face_id.embedding_store import PathEmbedder

# The network of a pass that is not a checkpoint: the untrained backbone's pooled ImageNet
# features (evaluate's baseline).
IMAGENET = "imagenet"
# Batches per chunk: enough work to outweigh a task's overhead, small enough to spread.
CHUNK_BATCHES = 4


@functools.lru_cache(maxsize=2)
def _loaded(network: str, stamp: tuple[int, int] | None, device: str, image_size: int | None):
    """The network once per worker process (and per version of its file): the model, its
    input size and the torch device."""
    from anime_face_id.device import place, resolve_device

    torch_device = resolve_device(device)
    if network == IMAGENET:
        from anime_face_id.embed import ImageNetFeatures

        return place(ImageNetFeatures(), torch_device).eval(), image_size, torch_device
    from anime_face_id.checkpoint import load_checkpoint

    loaded = load_checkpoint(Path(network), torch_device)
    return loaded.model, loaded.image_size, torch_device


def embed_chunk(
    root: str,
    network: str,
    paths: list[str],
    batch_size: int,
    device: str,
    image_size: int | None = None,
) -> np.ndarray:
    """The crops at ``paths`` (relative to ``root``) through a checkpoint (``network`` is
    its path) or the ImageNet features (``IMAGENET``, at ``image_size``)."""
    from anime_face_id.embed import embed_paths

    stamp = None
    if network != IMAGENET:
        status = Path(network).stat()
        stamp = (status.st_mtime_ns, status.st_size)
    model, size, torch_device = _loaded(network, stamp, device, image_size)
    crops = [Path(root) / path for path in paths]
    return embed_paths(model, crops, size, torch_device, batch_size).numpy()


def chunks(count: int, batch_size: int) -> list[tuple[int, int]]:
    """(first, end) of each chunk of a pass over ``count`` crops."""
    size = CHUNK_BATCHES * batch_size
    return [(start, min(start + size, count)) for start in range(0, count, size)]


def stacked(parts: list[np.ndarray], network: Path | str) -> np.ndarray:
    """The chunks' vectors in order; with no chunk at all, an empty array as wide as the
    network's vectors (the only case that loads the network here)."""
    if not parts:
        return np.zeros((0, network_dimension(network)), dtype=np.float32)
    return np.concatenate(parts)


def chunked_embedder(
    submit: Callable[[list[str], int, int], Any], network: Path | str, batch_size: int
) -> PathEmbedder:
    """A ``PathEmbedder`` that starts every chunk of a pass with ``submit(paths, first,
    end)`` (a Dask or Prefect future: anything with ``result()``), then gathers the
    vectors in order."""

    def embed(paths: Sequence[str]) -> np.ndarray:
        paths = list(paths)
        futures = [
            submit(paths[first:end], first, end) for first, end in chunks(len(paths), batch_size)
        ]
        return stacked([future.result() for future in futures], network)

    return embed


def network_dimension(network: Path | str) -> int:
    """The length of the vectors ``network`` gives."""
    if str(network) == IMAGENET:
        from anime_face_id.embed import FEATURE_DIM

        return FEATURE_DIM
    from anime_face_id.checkpoint import load_checkpoint

    return load_checkpoint(Path(network), "cpu").output_dim


@contextlib.contextmanager
def dask_client(compute: ComputeConfig) -> Iterator:
    """A ``distributed.Client`` of the cluster that ``compute`` names: its scheduler at
    ``dask_address``, or a cluster of ``dask_workers`` processes started here (on
    127.0.0.1) for the duration of the ``with`` block."""
    from distributed import Client, LocalCluster

    if compute.dask_address:
        with Client(compute.dask_address) as client:
            yield client
        return
    with (
        LocalCluster(**compute.local_cluster) as cluster,
        Client(cluster) as client,
    ):
        yield client


def client_embedder(
    client,
    root: Path,
    network: Path | str,
    batch_size: int,
    device: str,
    image_size: int | None = None,
) -> PathEmbedder:
    """A ``PathEmbedder`` that sends its chunks to ``client``'s cluster. Nothing is loaded
    here: the workers load the network."""
    # the workers may run elsewhere: they get absolute paths (the same folder must be there)
    root = str(Path(root).resolve())
    network = network if str(network) == IMAGENET else str(Path(network).resolve())

    def submit(part: list[str], _first: int, _end: int):
        return client.submit(
            embed_chunk, root, network, part, batch_size, device, image_size, pure=False
        )

    return chunked_embedder(submit, network, batch_size)


@contextlib.contextmanager
def dask_embedder(
    compute: ComputeConfig,
    root: Path,
    network: Path | str,
    batch_size: int,
    device: str,
    image_size: int | None = None,
) -> Iterator[PathEmbedder]:
    """A ``PathEmbedder`` on the cluster ``compute`` names (see ``dask_client``), for one
    command's duration."""
    with dask_client(compute) as client:
        yield client_embedder(client, root, network, batch_size, device, image_size)
