"""Train the CenterNet face detector on labelled frames plus pasted illustration faces.

Read top to bottom: config, loss, evaluation, the run's state, the loop.
``train_detector`` reports each epoch to a callback (the CLI prints it, the flow logs it to
MLflow) and keeps the best weights by validation F1 at IoU 0.5, written atomically. After
every epoch it also writes what an interrupted run needs to go on (``<out>.state``): run
again with the same recipe and data, it continues from the last finished epoch and ends
with the same weights as an uninterrupted run; a finished run is not trained again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import pickle
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from anime_face_id.device import place, resolve_device
from anime_face_id.errors import StageError
from anime_face_id.faces.boxes import recall_precision
from anime_face_id.faces.centernet import (
    HEAD_CONV_RANGE,
    NECK_CHANNEL_RANGE,
    NECK_CHANNELS,
    STRIDE,
    FaceCenterNet,
    detect_boxes,
    load_trunk_imagenet_weights,
    load_weights,
    save_weights,
)
from anime_face_id.faces.detector_data import (
    FRAME_SCALE,
    FaceCrop,
    LabelledImage,
    LeftOut,
    ViewSettings,
    centred_face,
    pseudo_label,
    read_labelled_frames,
    split_validation,
    training_sample,
)
from anime_face_id.faces.view_pool import SEED_BOUND, ViewPool
from anime_face_id.fileio import atomic_write_bytes, file_sha256, sweep_temporaries
from anime_face_id.imaging import load_rgb_array


class DetectorTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)
    # What is trained from scratch on the ImageNet trunk: the FPN's width and the separable
    # convolutions of each head (the shipped weights: 64 and 1).
    neck_channels: int = Field(NECK_CHANNELS, ge=NECK_CHANNEL_RANGE[0], le=NECK_CHANNEL_RANGE[1])
    head_convs: int = Field(1, ge=HEAD_CONV_RANGE[0], le=HEAD_CONV_RANGE[1])
    # The output grid: 8 (the shipped weights) or 4, CenterNet's own, with four times the
    # cells for faces of a few dozen pixels. A stride-4 run may start from stride-8 weights.
    stride: Literal[4, 8] = STRIDE
    view_size: int = Field(320, ge=64, multiple_of=32)  # square training views
    input_size: int = Field(512, ge=64, multiple_of=32)  # longest side at detection time
    lr: float = Field(2e-3, gt=0)
    backbone_lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(100, ge=0)
    # The stem and first blocks see edges and textures, which ImageNet already covers; frozen,
    # they cost no backward pass at the highest resolutions.
    frozen_blocks: int = Field(5, ge=0, le=16)
    paste_probability: float = Field(0.4, ge=0, le=1)
    # Views that are one identity crop, scaled up to well beyond the view (close-ups).
    close_up_probability: float = Field(0.0, ge=0, le=1)
    # A frame's longest side in a view, drawn log-uniformly from this range times
    # ``view_size`` (the shipped weights: 2/3-5/3, 213-533 px, below the 512 px input).
    frame_scale: tuple[float, float] = FRAME_SCALE
    # An earlier detector (``pseudo_labels_from``, else ``init_weights``) labels the identity
    # crops' faces at this score; crops it finds no face in are not used. Without one: the
    # crop's centred share.
    pseudo_label_min_score: float = Field(0.4, gt=0, lt=1)
    # TTFNet's GIoU loss on the box seen from every cell of each face's central area, at
    # this weight beside the centre cell's L1 losses; 0 (the first recipe): L1 alone.
    giou_weight: float = Field(0.0, ge=0)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    min_score: float = Field(0.3, gt=0, lt=1)
    nms_iou: float = Field(0.5, gt=0, le=1)
    max_steps: int | None = Field(None, ge=1)  # stop early (smoke runs and tests)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # auto: a GPU when there is one
    # 0: the main process draws the views from the run's generator (the shipped weights'
    # runs); N: N processes draw them ahead, each view from its own seed, the same views for
    # any N (a GPU waits for views otherwise; see view_pool).
    workers: int = Field(0, ge=0, le=64)
    # Continue from an earlier weights file instead of the ImageNet trunk: on a CPU a long
    # recipe is run as several shorter runs, each recorded in the file it writes.
    init_weights: str | None = None
    # The detector that labels the identity crops' faces; None: the init weights' (if any).
    # With it, a run from the ImageNet trunk still trains on pseudo-labelled close-ups.
    pseudo_labels_from: str | None = None

    @field_validator("frame_scale")
    @classmethod
    def _ordered_and_positive(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high:
            raise ValueError(f"frame_scale needs 0 < LOW <= HIGH, got {low} {high}")
        return value


@dataclass(frozen=True)
class DetectorEpoch:
    epoch: int
    loss: float
    heatmap_loss: float
    size_loss: float
    offset_loss: float
    giou_loss: float  # unweighted; 0 is a perfect box (1 - GIoU, averaged over faces)
    recall: float  # validation, IoU 0.5
    precision: float
    seconds: float

    @property
    def f1(self) -> float:
        total = self.recall + self.precision
        return 2 * self.recall * self.precision / total if total else 0.0


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, summed and divided by the number of faces."""
    positive = target.eq(1.0).float()
    log_p = F.logsigmoid(logits)
    log_not_p = F.logsigmoid(-logits)
    p = log_p.exp()
    positive_loss = positive * (1 - p) ** 2 * log_p
    negative_loss = (1 - positive) * (1 - target) ** 4 * p**2 * log_not_p
    return -(positive_loss.sum() + negative_loss.sum()) / positive.sum().clamp(min=1.0)


def generalised_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GIoU (Rezatofighi et al. 2019) of boxes ``x0, y0, x1, y1`` along dimension 1."""
    ax0, ay0, ax1, ay1 = a.unbind(1)
    bx0, by0, bx1, by1 = b.unbind(1)
    inter = (torch.minimum(ax1, bx1) - torch.maximum(ax0, bx0)).clamp(min=0) * (
        torch.minimum(ay1, by1) - torch.maximum(ay0, by0)
    ).clamp(min=0)
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    hull = (torch.maximum(ax1, bx1) - torch.minimum(ax0, bx0)) * (
        torch.maximum(ay1, by1) - torch.minimum(ay0, by0)
    )
    return inter / union - (hull - union) / hull


def _cell_boxes(log_size: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """The box each cell predicts, in cells relative to that cell (GIoU ignores where the
    cell is): (B, 2, h, w) twice -> (B, 4, h, w)."""
    half = log_size.clamp(max=10).exp() / 2
    return torch.cat([offset - half, offset + half], dim=1)


def giou_loss(
    log_size: torch.Tensor, offset: torch.Tensor, targets: dict[str, torch.Tensor]
) -> torch.Tensor:
    """1 - GIoU of each central-area cell's box, Gaussian-weighted, averaged over faces."""
    weight = targets["box_weight"]
    faces = targets["mask"].sum().clamp(min=1.0)
    used = weight > 0
    if not used.any():
        return log_size.sum() * 0.0
    predicted = _cell_boxes(log_size, offset).permute(0, 2, 3, 1)[used]
    truth = _cell_boxes(targets["box_log_size"], targets["box_offset"]).permute(0, 2, 3, 1)[used]
    return (weight[used] * (1 - generalised_iou(predicted, truth))).sum() / faces


def detection_loss(
    outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    targets: dict[str, torch.Tensor],
    giou_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    heatmap, log_size, offset = outputs
    mask = targets["mask"][:, None]
    faces = mask.sum().clamp(min=1.0)
    parts = {
        "heatmap": focal_loss(heatmap, targets["heatmap"]),
        "size": (F.l1_loss(log_size, targets["log_size"], reduction="none") * mask).sum() / faces,
        "offset": (F.l1_loss(offset, targets["offset"], reduction="none") * mask).sum() / faces,
    }
    total = parts["heatmap"] + parts["size"] + parts["offset"]
    if giou_weight > 0:
        parts["giou"] = giou_loss(log_size, offset, targets)
        total = total + giou_weight * parts["giou"]
    else:  # reported, outside the graph: the first recipe trains without it
        with torch.no_grad():
            parts["giou"] = giou_loss(log_size, offset, targets)
    return total, {name: float(value.detach()) for name, value in parts.items()}


def evaluate_detector(
    model: FaceCenterNet,
    items: list[LabelledImage],
    input_size: int,
    min_score: float,
    nms_iou: float,
    threshold: float = 0.5,
) -> tuple[float, float]:
    """Recall and precision at IoU ``threshold`` over labelled pictures."""
    model.eval()

    def truths_and_found(item: LabelledImage) -> tuple[list, list]:
        found = detect_boxes(
            model,
            load_rgb_array(item.path),
            input_size=input_size,
            min_score=min_score,
            nms_iou=nms_iou,
        )
        return [tuple(b) for b in item.boxes.tolist()], [b[:4] for b in found]

    return recall_precision(map(truths_and_found, items), threshold)


def _freeze_stem(model: FaceCenterNet, blocks: int) -> None:
    frozen = [model.trunk._conv_stem, model.trunk._bn0, *model.trunk._blocks[:blocks]]
    for module in frozen:
        for parameter in module.parameters():
            parameter.requires_grad_(False)


def _trunk_batchnorm_eval(model: FaceCenterNet) -> None:
    # Batches of 16 views are too few for fresh BatchNorm statistics in the pretrained
    # trunk; its ImageNet statistics stay, as detection fine-tuning usually does.
    for module in model.trunk.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()


def _learning_rate(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _batch(samples: list, device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    images = torch.from_numpy(np.stack([image for image, _ in samples])).to(device)
    targets = {
        key: torch.from_numpy(np.stack([target[key] for _, target in samples])).to(device)
        for key in samples[0][1]
    }
    return images, targets


def label_crops(
    crops: list[Path],
    model: FaceCenterNet | None,
    config: DetectorTrainConfig,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[FaceCrop]:
    """Each identity crop with its face box: found by ``model`` when there is one (crops
    without a face it trusts are left out), else the centred share. Detecting takes
    minutes for thousands of crops, so ``on_progress(done, total)`` follows each crop."""
    if model is None:
        return [centred_face(path) for path in crops]
    model.eval()

    def detect(rgb: np.ndarray) -> list:
        return detect_boxes(
            model, rgb, input_size=config.input_size, min_score=0.1, nms_iou=config.nms_iou
        )

    labelled = []
    for done, path in enumerate(crops, start=1):
        crop = pseudo_label(path, detect, config.pseudo_label_min_score)
        if crop is not None:
            labelled.append(crop)
        if on_progress is not None:
            on_progress(done, len(crops))
    return labelled


# ------------------------------------------------------------------ the run's state

STATE_FORMAT = "anime-face-id/detector-train-state/2"
# What a resumed run may change: where it runs, and how many processes draw its seeded
# views (not whether they are seeded: see seeded_views). A run continued on the device it
# started on ends with the weights of an uninterrupted one; only the CPU's generator is kept.
RESUMABLE_DIFFERENCES = {"device", "workers"}
STATE_READ_ERRORS = (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError)


def resume_state_path(out: Path) -> Path:
    """What an interrupted run needs to go on, kept beside its weights until it ends."""
    return out.with_name(out.name + ".state")


def data_fingerprint(
    items: list[LabelledImage], crops: list[Path], config: DetectorTrainConfig
) -> str:
    """What a run learns from besides its recipe: the frames (name, bytes and labels), the
    crops (character folder, name and bytes) and the contents of the weights files it
    starts from or labels with. Paths as typed do not count: the same folder given as a
    relative path, or moved, is the same data."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{item.path.name}\0{file_sha256(item.path)}\0".encode())
        digest.update(np.ascontiguousarray(item.boxes, dtype=np.float32).tobytes())
    for path in crops:
        digest.update(f"{path.parent.name}/{path.name}\0{file_sha256(path)}\0".encode())
    for weights in (config.init_weights, config.pseudo_labels_from):
        digest.update((file_sha256(Path(weights)) if weights else "-").encode())
    return digest.hexdigest()


@dataclass
class RunState:
    """Everything a run carries from one epoch to the next."""

    model: FaceCenterNet
    optimizer: torch.optim.Optimizer
    rng: np.random.Generator
    faces: list[FaceCrop]
    init_metadata: dict
    reports: list[DetectorEpoch]
    best_f1: float = -1.0
    best_sha256: str | None = None  # of the weights file the best epoch wrote
    step: int = 0

    def save(
        self, path: Path, config: DetectorTrainConfig, fingerprint: str, finished: bool = False
    ) -> None:
        """Written atomically after every epoch; once ``finished``, only what says so (the
        reports and what they were trained from), so the same run is not trained twice."""
        payload = {
            "format": STATE_FORMAT,
            "finished": finished,
            "config": config.model_dump(mode="json"),
            "data": fingerprint,
            "reports": [asdict(report) for report in self.reports],
            "best_f1": float(self.best_f1),
            "best_sha256": self.best_sha256,
            "step": self.step,
        }
        if not finished:
            payload |= {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "numpy_rng": self.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                # plain floats: a numpy scalar would not load with weights_only
                "faces": [(str(face.path), [float(v) for v in face.box]) for face in self.faces],
                "init_metadata": self.init_metadata,
            }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        atomic_write_bytes(path, buffer.getvalue())


def saved_state(
    path: Path, config: DetectorTrainConfig, fingerprint: str, out: Path
) -> tuple[dict | None, str]:
    """The state of an interrupted run this one can continue, or None and why not."""
    if not path.is_file():
        return None, "no interrupted run to continue"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except STATE_READ_ERRORS as error:  # torn or foreign: a reason to start over
        return None, f"{path} is unreadable ({type(error).__name__}): starting over"
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        return None, f"{path} is not this version's detector training state: starting over"
    now, then = config.model_dump(mode="json"), payload["config"]
    # a setting added since the state was written was then at its default
    defaults = DetectorTrainConfig().model_dump(mode="json")
    changed = sorted(
        key
        for key in set(now) | set(then)
        if key not in RESUMABLE_DIFFERENCES and now.get(key) != then.get(key, defaults.get(key))
    )
    if seeded_views(now) != seeded_views(then):
        changed.append("workers")
    if changed:
        return None, f"the interrupted run had another recipe ({', '.join(changed)}): starting over"
    if payload["data"] != fingerprint:
        return None, (
            "the interrupted run had other frames, labels, crops or starting weights: starting over"
        )
    if not _holds_the_runs_weights(out, payload, fingerprint):
        return None, f"{out} no longer holds the interrupted run's best weights: starting over"
    if payload["finished"]:
        return payload, (
            "the same run finished before with this recipe and data: nothing to train "
            "(--start-over trains it again)"
        )
    return payload, f"continuing the interrupted run after epoch {len(payload['reports'])}"


def seeded_views(config: dict) -> bool:
    """Whether a run's views are seeded one by one (any workers) or drawn in turn (none)."""
    return config.get("workers", 0) > 0


def _holds_the_runs_weights(out: Path, payload: dict, fingerprint: str) -> bool:
    """Whether ``out`` holds the interrupted run's best weights: those its state names, or
    those of the epoch after its last one, when the run stopped between writing that
    epoch's weights and its state (the epoch is trained again, to the same weights)."""
    if payload["best_sha256"] is None:
        return True
    if not out.is_file():
        return False
    if file_sha256(out) == payload["best_sha256"]:
        return True
    try:
        metadata = load_weights(out)[1]
    except (*STATE_READ_ERRORS, KeyError):
        return False
    return (
        metadata.get("run_data") == fingerprint
        and metadata.get("epoch") == len(payload["reports"]) + 1
    )


def restore(payload: dict, config: DetectorTrainConfig, device: torch.device) -> RunState:
    """The run as its state file left it (the recipe was checked to be ``config``)."""
    model = FaceCenterNet(config.neck_channels, config.head_convs, config.stride)
    model.load_state_dict(payload["model"], strict=True)
    place(model, device)  # before the optimiser's state, which follows its parameters
    _freeze_stem(model, config.frozen_blocks)
    optimizer = make_optimizer(model, config)
    optimizer.load_state_dict(payload["optimizer"])
    rng = np.random.default_rng()
    rng.bit_generator.state = payload["numpy_rng"]
    torch.set_rng_state(payload["torch_rng"])
    return RunState(
        model=model,
        optimizer=optimizer,
        rng=rng,
        faces=[FaceCrop(Path(path), tuple(box)) for path, box in payload["faces"]],
        init_metadata=payload["init_metadata"],
        reports=[DetectorEpoch(**report) for report in payload["reports"]],
        best_f1=payload["best_f1"],
        best_sha256=payload["best_sha256"],
        step=payload["step"],
    )


def make_optimizer(model: FaceCenterNet, config: DetectorTrainConfig) -> torch.optim.Optimizer:
    """AdamW over what is not frozen: the trunk at ``backbone_lr``, the rest at ``lr``.
    Each group keeps its ``initial_lr``, which the schedule scales (and a state keeps)."""
    trunk = [p for p in model.trunk.parameters() if p.requires_grad]
    rest = [p for name, p in model.named_parameters() if not name.startswith("trunk.")]
    return torch.optim.AdamW(
        [
            {"params": trunk, "lr": config.backbone_lr, "initial_lr": config.backbone_lr},
            {"params": rest, "lr": config.lr, "initial_lr": config.lr},
        ],
        weight_decay=config.weight_decay,
    )


def initial_model(
    config: DetectorTrainConfig, device: torch.device, pretrained: bool
) -> tuple[FaceCenterNet, dict]:
    """The ImageNet trunk with fresh heads, or the ``init_weights`` run's detector (a
    stride-8 one grown to stride 4 if the config asks for it)."""
    model = FaceCenterNet(config.neck_channels, config.head_convs, config.stride)
    if config.init_weights is None:
        if pretrained:
            load_trunk_imagenet_weights(model)
        return place(model, device), {}
    earlier, metadata = load_weights(config.init_weights)
    have = earlier.architecture
    if (have["neck_channels"], have["head_convs"]) != (config.neck_channels, config.head_convs):
        raise StageError(
            f"{config.init_weights} has --neck-channels {have['neck_channels']} and "
            f"--head-convs {have['head_convs']}; give the same to continue from it"
        )
    if earlier.stride == model.stride:
        return place(earlier, device), metadata
    if earlier.stride < model.stride:
        raise StageError(
            f"{config.init_weights} has output stride {earlier.stride}; a stride-"
            f"{model.stride} run cannot start from it (give --stride {earlier.stride})"
        )
    grow_to_finer_stride(earlier, model)
    return place(model, device), metadata


def grow_to_finer_stride(earlier: FaceCenterNet, model: FaceCenterNet) -> None:
    """``model`` (stride 4) takes every weight of ``earlier`` (stride 8) and starts as it:
    its new lateral's BatchNorm scale is 0, so the finer map begins as the coarser one
    upsampled, and sizes are in cells, so the size head's bias gains log 2."""
    missing, unexpected = model.load_state_dict(earlier.state_dict(), strict=False)
    if unexpected or not all(key.startswith("fine.") for key in missing):
        raise StageError(f"cannot grow the detector: keys {unexpected or missing} do not match")
    with torch.no_grad():
        model.fine[1].weight.zero_()
        model.size[-1].bias += math.log(earlier.stride / model.stride)


def labeller(
    config: DetectorTrainConfig, model: FaceCenterNet, device: torch.device
) -> FaceCenterNet | None:
    """The detector that labels the identity crops' faces, if any."""
    if config.pseudo_labels_from is not None:
        return place(load_weights(config.pseudo_labels_from)[0], device)
    return model if config.init_weights is not None else None


def fresh_state(
    config: DetectorTrainConfig,
    crops: list[Path],
    device: torch.device,
    pretrained: bool,
    on_label: Callable[[int, int], None] | None,
) -> RunState:
    """A run's start: seeded weights, the crops' face boxes, a new optimiser."""
    torch.manual_seed(config.seed)
    model, init_metadata = initial_model(config, device, pretrained)
    faces = label_crops(crops, labeller(config, model, device), config, on_label)
    _freeze_stem(model, config.frozen_blocks)
    return RunState(
        model=model,
        optimizer=make_optimizer(model, config),
        rng=np.random.default_rng(config.seed),
        faces=faces,
        init_metadata=init_metadata,
        reports=[],
    )


# ------------------------------------------------------------------ the loop


def view_settings(config: DetectorTrainConfig) -> ViewSettings:
    return ViewSettings(
        config.view_size,
        config.paste_probability,
        config.close_up_probability,
        config.stride,
        config.frame_scale,
    )


def epoch_views(
    run: RunState,
    config: DetectorTrainConfig,
    train_items: list[LabelledImage],
    steps: int,
    pool: ViewPool | None,
) -> Iterator[list]:
    """The epoch's batches of views (at most ``steps``), in a fresh order of the frames:
    drawn here from the run's generator, or by ``pool`` from seeds that generator draws."""
    rng, settings, size = run.rng, view_settings(config), config.batch_size
    order = rng.permutation(len(train_items))
    batches = [order[first : first + size] for first in range(0, len(order), size)][:steps]
    if pool is not None:
        seeds = rng.integers(SEED_BOUND, size=len(order))
        return pool.batches(
            [
                [(int(i), int(s)) for i, s in zip(batch, seeds[k * size :], strict=False)]
                for k, batch in enumerate(batches)
            ]
        )
    return (
        [training_sample(train_items[i], run.faces, rng, settings) for i in batch]
        for batch in batches
    )


def train_epoch(
    run: RunState,
    config: DetectorTrainConfig,
    train_items: list[LabelledImage],
    total_steps: int,
    device: torch.device,
    on_step: Callable[[int, int, float], None] | None,
    pool: ViewPool | None = None,
) -> dict[str, float]:
    """One pass over the training frames in a fresh order; the mean losses."""
    model, optimizer = run.model, run.optimizer
    model.train()
    _trunk_batchnorm_eval(model)
    sums = {"loss": 0.0, "heatmap": 0.0, "size": 0.0, "offset": 0.0, "giou": 0.0}
    batches = 0
    steps_left = max(0, total_steps - run.step)
    for samples in epoch_views(run, config, train_items, steps_left, pool):
        images, targets = _batch(samples, device)
        factor = _learning_rate(run.step, total_steps, config.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        loss, parts = detection_loss(model(images), targets, config.giou_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        run.step += 1
        batches += 1
        sums["loss"] += float(loss.detach())
        for name, value in parts.items():
            sums[name] += value
        if on_step is not None:
            on_step(run.step, total_steps, float(loss.detach()))
    return {name: value / max(batches, 1) for name, value in sums.items()}


def train_detector(
    config: DetectorTrainConfig,
    frames: Path,
    out: Path,
    crops: list[Path] | None = None,
    on_epoch: Callable[[DetectorEpoch], None] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    pretrained: bool = True,
    on_label: Callable[[int, int], None] | None = None,
    resume: bool = True,
    on_notice: Callable[[str], None] | None = None,
    on_left_out: Callable[[list[LeftOut], int], None] | None = None,
) -> list[DetectorEpoch]:
    """Train, keep the best epoch's weights at ``out``, return every epoch's report.

    With ``resume``, a run interrupted with the same recipe and data goes on after its last
    finished epoch, and one that finished is not trained again (earlier epochs are reported
    to ``on_epoch`` again first); ``on_notice`` hears which, or why the run starts over.
    ``on_left_out`` hears of the pictures left out (with why) and of label files with no
    picture, before training."""
    out = Path(out)
    crops = list(crops or [])
    _check_out(out, config)
    labelled = read_labelled_frames(frames)
    if on_left_out is not None and (labelled.left_out or labelled.orphan_labels):
        on_left_out(labelled.left_out, labelled.orphan_labels)
    items = labelled.items
    train_items, val_items = split_validation(items, config.val_fraction)
    if not train_items:
        raise StageError(f"{frames}: no training pictures left after the validation split")
    if not any(len(item.boxes) for item in val_items):
        raise StageError(
            f"{frames}: no labelled face among the {len(val_items)} pictures held out for "
            f"validation (val_fraction {config.val_fraction:g} of {len(items)}), so no epoch "
            "could be judged: give more labelled frames"
        )
    fingerprint = data_fingerprint(items, crops, config)
    state_path = resume_state_path(out)
    device = resolve_device(config.device)
    sweep_temporaries(out.parent, recursive=False)  # of a run killed while writing

    payload, why = (None, "starting over (asked to)")
    if resume:
        payload, why = saved_state(state_path, config, fingerprint, out)
    if on_notice is not None:
        on_notice(why)
    if payload is not None and payload["finished"]:
        return replayed([DetectorEpoch(**report) for report in payload["reports"]], on_epoch)
    if payload is None:
        state_path.unlink(missing_ok=True)  # never to be continued with this run's weights
        run = fresh_state(config, crops, device, pretrained, on_label)
    else:
        run = restore(payload, config, device)
    replayed(run.reports, on_epoch)

    steps_per_epoch = math.ceil(len(train_items) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)

    drawers = (
        ViewPool(config.workers, train_items, run.faces, view_settings(config))
        if config.workers
        else contextlib.nullcontext()
    )
    with drawers as pool:
        for epoch in range(len(run.reports) + 1, config.epochs + 1):
            if run.step >= total_steps:
                break
            started = time.perf_counter()
            losses = train_epoch(run, config, train_items, total_steps, device, on_step, pool)
            recall, precision = evaluate_detector(
                run.model, val_items, config.input_size, config.min_score, config.nms_iou
            )
            report = DetectorEpoch(
                epoch,
                losses["loss"],
                losses["heatmap"],
                losses["size"],
                losses["offset"],
                losses["giou"],
                recall,
                precision,
                time.perf_counter() - started,
            )
            run.reports.append(report)
            if on_epoch is not None:
                on_epoch(report)
            if report.f1 > run.best_f1:
                run.best_f1 = report.f1
                run.best_sha256 = save_weights(
                    run.model,
                    out,
                    {
                        "config": config.model_dump(),
                        "epoch": epoch,
                        "val_recall": recall,
                        "val_precision": precision,
                        "val_pictures": len(val_items),
                        "train_pictures": len(train_items),
                        "pasted_crops": len(run.faces),
                        # The run this one continued, so the whole recipe stays in the file.
                        "continued_from": run.init_metadata or None,
                        # lets a resumed run recognise these weights (see saved_state)
                        "run_data": fingerprint,
                    },
                )
            run.save(state_path, config, fingerprint)
    run.save(state_path, config, fingerprint, finished=True)
    return run.reports


def _check_out(out: Path, config: DetectorTrainConfig) -> None:
    """The weights file must not be one the run reads: epoch 1 would overwrite it."""
    for option, source in (
        ("--init", config.init_weights),
        ("--pseudo-labels-from", config.pseudo_labels_from),
    ):
        if source is not None and Path(source).resolve() == out.resolve():
            raise StageError(
                f"{option} and --out are the same file ({out}): the run would overwrite the "
                "weights it starts from; write to another --out"
            )


def replayed(
    reports: list[DetectorEpoch], on_epoch: Callable[[DetectorEpoch], None] | None
) -> list[DetectorEpoch]:
    """Epochs trained before, reported again (a continued run's curve starts at epoch 1)."""
    for report in reports:
        if on_epoch is not None:
            on_epoch(report)
    return reports
