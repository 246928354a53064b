"""What training reports: one ``EpochReport`` per epoch (the progress line, the history
table ``plots/train_history.csv``), the ``TrainResult``, and ``metrics/train.json``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from anime_face_id.fileio import atomic_write_json, json_safe, write_csv

TRAIN_METRICS = Path("metrics/train.json")


TRAIN_HISTORY = Path("plots/train_history.csv")


@dataclass
class EpochReport:
    epoch: int
    epochs: int
    loss: float
    identity_loss: float  # NaN when train.id_loss_weight is 0
    active_fraction: float
    left_out_fraction: float  # faces the losses left out as outliers (train.batch_outliers)
    mean_positive_distance: float
    mean_negative_distance: float
    val_precision_at_1: float
    val_map_at_r: float
    images_per_s: float
    seconds: float
    eta_s: float
    lr: float


HISTORY_COLUMNS = tuple(f.name for f in fields(EpochReport))


@dataclass
class TrainResult:
    checkpoint: Path
    history: list[EpochReport]
    best_epoch: int
    class_names: list[str]
    device: str
    untrained_val: dict[str, float] = field(default_factory=dict)
    skipped_images: dict[str, str] = field(default_factory=dict)  # path -> reason
    warnings: list[str] = field(default_factory=list)


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def epoch_line(report: EpochReport) -> str:
    return (
        f"epoch {report.epoch}/{report.epochs} loss {report.loss:.3f} "
        f"active {report.active_fraction:.2f} val P@1 {report.val_precision_at_1:.2f} "
        f"MAP@R {report.val_map_at_r:.2f} | {report.images_per_s:.1f} img/s, "
        f"ETA {format_duration(report.eta_s)}"
    )


def history_row(report: EpochReport) -> dict[str, object]:
    row = {}
    for name, value in asdict(report).items():
        if isinstance(value, float):
            value = "" if not math.isfinite(value) else f"{value:.6g}"
        row[name] = value
    return row


def write_outputs(
    root: Path, history: list[EpochReport], best_epoch: int, extra: Mapping[str, object]
) -> None:
    best = history[best_epoch - 1]
    summary = {
        "best_epoch": best_epoch,
        "best": {
            "val_precision_at_1": best.val_precision_at_1,
            "val_map_at_r": best.val_map_at_r,
            "loss": best.loss,
        },
        "final": asdict(history[-1]),
        **extra,
    }
    atomic_write_json(root / TRAIN_METRICS, json_safe(summary))
    write_csv(root / TRAIN_HISTORY, HISTORY_COLUMNS, [history_row(r) for r in history])
