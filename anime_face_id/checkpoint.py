"""The trained model on disk: weights plus everything needed to use them again.

The file holds only tensors and plain Python values, so it loads with
``torch.load(weights_only=True)``, which refuses to run code from a tampered checkpoint.
It is written to a temporary file and renamed, so a crash never leaves half a model.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError

from anime_face_id.config import TrainConfig
from anime_face_id.device import place
from anime_face_id.errors import StageError
from anime_face_id.fileio import atomic_write_bytes
from anime_face_id.model.embedder import Embedder, build_embedder

FORMAT_VERSION = 1


@dataclass
class LoadedCheckpoint:
    model: Embedder  # in eval mode, on the requested device
    config: TrainConfig
    class_names: list[str]
    image_size: int
    embedding_dim: int  # the projection's size
    output_dim: int  # the length of the vectors the network gives (train.append_features)
    best_epoch: int
    val_metrics: dict
    sha256: str  # of the file the weights were read from: its embedder_fingerprint


def save_checkpoint(
    path: Path,
    model: Embedder,
    config: TrainConfig,
    class_names: Sequence[str],
    best_epoch: int,
    val_metrics: Mapping[str, float | None],
) -> None:
    """Write ``path`` atomically with the model's current weights."""
    payload = {
        "format_version": FORMAT_VERSION,
        "state_dict": {k: tensor.detach().cpu() for k, tensor in model.state_dict().items()},
        "config": config.model_dump(mode="json"),
        "class_names": list(class_names),
        "image_size": config.image_size,
        "embedding_dim": model.embedding_dim,
        "backbone": model.backbone_name,
        "best_epoch": int(best_epoch),
        "val_metrics": dict(val_metrics),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _read_payload(path: Path) -> tuple[dict, str]:
    """The checkpoint's contents and the sha256 of the very bytes they came from: read
    once, so that a file replaced meanwhile (training again) cannot pair these weights
    with the other file's fingerprint."""
    if not path.is_file():
        raise StageError(f"{path} not found: run the train stage first")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise StageError(f"{path} cannot be read: {error.strerror or error}") from None
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged or foreign file
        reason = f"{type(error).__name__}: {error}" if str(error).strip() else type(error).__name__
        raise StageError(f"{path} is not a readable checkpoint ({reason})") from None
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise StageError(
            f"{path} is not an anime-face-id checkpoint (format {FORMAT_VERSION}): retrain"
        )
    return payload, hashlib.sha256(data).hexdigest()


def _require_finite_weights(state_dict: Mapping[str, torch.Tensor], path: Path) -> None:
    """A diverged run saves NaN/inf weights; its embeddings would be NaN and fail much later
    (a numpy SVD in evaluate, a gallery identify refuses), so refuse it here."""
    for tensor in state_dict.values():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise StageError(
                f"{path} has non-finite weights (NaN or inf): training diverged; "
                "retrain with a lower train.lr"
            )


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> LoadedCheckpoint:
    """The model with its weights, ready for inference (no ImageNet weights needed)."""
    path = Path(path)
    payload, sha256 = _read_payload(path)
    try:
        config = TrainConfig.model_validate(payload["config"])
    except (KeyError, ValidationError) as error:
        raise StageError(f"{path}: the stored training config is invalid: {error}") from None
    # pretrained=False: the ImageNet weights would be overwritten by the checkpoint's anyway
    model = build_embedder(config, int(payload["embedding_dim"]), pretrained=False)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as error:
        raise StageError(f"{path}: weights do not fit the network: {error}") from None
    _require_finite_weights(payload["state_dict"], path)
    place(model, device).eval()
    return LoadedCheckpoint(
        model=model,
        config=config,
        class_names=list(payload["class_names"]),
        image_size=int(payload["image_size"]),
        embedding_dim=int(payload["embedding_dim"]),
        output_dim=model.output_dim,
        best_epoch=int(payload["best_epoch"]),
        val_metrics=dict(payload["val_metrics"]),
        sha256=sha256,
    )
