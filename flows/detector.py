"""detector-train: retrain the CenterNet face detector that crop, review, identify and the
served model use, tracked as an MLflow run named `detector-train`.

    .venv/bin/python -m flows.detector --frames ../shared/testdata/detection-train \\
        --crops ../shared/testdata/identities

The weights are written (atomically, best validation epoch) to ``--out``, by default
``models/detector/centernet.pt``; ``crop.detector_weights`` in params.yaml points the
pipeline at them. Replacing the file shipped in the package takes naming it as ``--out``
(``make detector`` does), and never for a smoke run (``--max-steps``). After every epoch the run's state is kept beside them
(``<out>.state``): run the same command again after an interruption and it continues from
the last finished epoch (``--start-over`` ignores it).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from pydantic import ValidationError

from anime_face_id.faces.detector_data import IMAGE_SUFFIXES, LeftOut
from anime_face_id.faces.detector_train import DetectorEpoch, DetectorTrainConfig, train_detector
from anime_face_id.faces.detectors import PACKAGED_WEIGHTS
from flows._stage import fail_on_stage_error, finish, run_from_command_line
from tasks.reporting import StageProgress
from tracking import runs

DEFAULT_OUT = Path("models/detector/centernet.pt")
SHOWN_LEFT_OUT = 20  # in the log; all of them go to the MLflow run


def face_crops(folder: Path | None) -> list[Path]:
    """Every picture one level down (``<character>/*.jpg``), as the identities folder."""
    if folder is None:
        return []
    return sorted(p for p in folder.glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES)


@task
def train_weights(
    config: DetectorTrainConfig,
    frames: Path,
    crops: list[Path],
    out: Path,
    run_id: str,
    resume: bool = True,
) -> list[DetectorEpoch]:
    import mlflow

    logger = get_run_logger()
    progress = StageProgress("detector-train", config.epochs, unit="epochs")
    last_shown = [0]

    def on_step(step: int, total: int, loss: float) -> None:
        if step - last_shown[0] >= 20 or step == total:
            last_shown[0] = step
            logger.info("step %d/%d, loss %.3f", step, total, loss)

    def on_epoch(report: DetectorEpoch) -> None:
        metrics = {
            "loss": report.loss,
            "heatmap_loss": report.heatmap_loss,
            "size_loss": report.size_loss,
            "offset_loss": report.offset_loss,
            "giou_loss": report.giou_loss,
            "val_recall": report.recall,
            "val_precision": report.precision,
            "val_f1": report.f1,
            "epoch_seconds": report.seconds,
        }
        mlflow.log_metrics(
            {k: float(v) for k, v in metrics.items() if math.isfinite(v)},
            step=report.epoch,
            run_id=run_id,
        )
        logger.info(
            "epoch %d: loss %.3f, validation recall %.3f precision %.3f (IoU 0.5), %.0f s",
            report.epoch,
            report.loss,
            report.recall,
            report.precision,
            report.seconds,
        )
        progress.advance(f"epoch {report.epoch}")

    def on_label(done: int, total: int) -> None:
        if done % 250 == 0 or done == total:
            logger.info("pseudo-labels: %d/%d identity crops looked at", done, total)

    def on_notice(notice: str) -> None:
        logger.info("%s", notice)
        mlflow.MlflowClient().set_tag(run_id, "resume", notice)

    def on_left_out(left_out: list[LeftOut], orphan_labels: int) -> None:
        for item in left_out[:SHOWN_LEFT_OUT]:
            logger.warning("left out %s: %s", item.path, item.reason)
        if len(left_out) > SHOWN_LEFT_OUT:
            logger.warning(
                "... and %d more (left_out.csv in the MLflow run)", len(left_out) - SHOWN_LEFT_OUT
            )
        if orphan_labels:
            logger.warning("%d label files name no picture in images/: not used", orphan_labels)
        mlflow.log_metrics(
            {"pictures_left_out": len(left_out), "orphan_labels": orphan_labels}, run_id=run_id
        )
        if left_out:
            table = io.StringIO()
            csv.writer(table).writerows(
                [("path", "reason"), *((i.path, i.reason) for i in left_out)]
            )
            mlflow.MlflowClient().log_text(run_id, table.getvalue(), "left_out.csv")

    return train_detector(
        config,
        frames,
        out,
        crops,
        on_epoch=on_epoch,
        on_step=on_step,
        on_label=on_label,
        resume=resume,
        on_notice=on_notice,
        on_left_out=on_left_out,
    )


@flow(name="detector-train", log_prints=True)
def detector_flow(
    frames: str,
    crops: str | None = None,
    out: str = str(DEFAULT_OUT),
    config: dict | None = None,
    resume: bool = True,
):
    return fail_on_stage_error(lambda: _train(frames, crops, out, config or {}, resume))


def _train(frames: str, crops: str | None, out: str, overrides: dict, resume: bool) -> dict:
    import mlflow

    config = DetectorTrainConfig.model_validate(overrides)
    pasted = face_crops(Path(crops) if crops else None)
    root = Path(".")
    runs.configure(root)
    with mlflow.start_run(run_name="detector-train") as run:
        mlflow.log_params(runs.flatten("detector", config.model_dump(mode="json")))
        mlflow.log_params(
            {
                "frames": frames,
                "crops": crops or "",
                "pasted_crops": len(pasted),
                "git_commit": runs.git_commit(root),
            }
        )
        mlflow.set_tags({"stage": "detector-train"})
        reports = train_weights(config, Path(frames), pasted, Path(out), run.info.run_id, resume)
        best = max(reports, key=lambda r: r.f1)
        mlflow.log_metrics(
            {
                "best_epoch": best.epoch,
                "best_val_recall": best.recall,
                "best_val_precision": best.precision,
            }
        )
        mlflow.log_artifact(out, artifact_path="detector")
    return {"best_epoch": best.epoch, "recall": best.recall, "precision": best.precision}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m flows.detector", description="Retrain the CenterNet face detector."
    )
    parser.add_argument(
        "--frames",
        required=True,
        type=Path,
        help="folder with images/ and YOLO labels/ (0 cx cy w h)",
    )
    parser.add_argument(
        "--crops",
        type=Path,
        default=None,
        help="face crops <character>/*.jpg to paste onto frames (optional)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"weights file to write (default {DEFAULT_OUT}; the shipped detector is "
        f"{PACKAGED_WEIGHTS.relative_to(PACKAGED_WEIGHTS.parents[3])})",
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--max-steps", type=int, default=None, help="stop early (smoke runs)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None, help="learning rate of the heads")
    parser.add_argument("--backbone-lr", type=float, default=None)
    parser.add_argument(
        "--close-up-probability",
        type=float,
        default=None,
        help="share of training views that are one identity crop, scaled up (default 0)",
    )
    parser.add_argument(
        "--frame-scale",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=None,
        help="a frame's longest side in a training view, drawn between LOW and HIGH times "
        "the view's side (default 0.667 1.667: 213-533 px in 320 px views)",
    )
    parser.add_argument(
        "--giou-weight",
        type=float,
        default=None,
        help="weight of the GIoU box loss over each face's central area (default 0: off)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda", "mps"),
        default=None,
        help="where to train (default auto: a GPU when there is one)",
    )
    parser.add_argument(
        "--init",
        type=Path,
        default=None,
        help="continue from this weights file (default: start from the ImageNet trunk)",
    )
    parser.add_argument(
        "--pseudo-labels-from",
        type=Path,
        default=None,
        help="weights file whose detections label the crops' faces (default: --init's)",
    )
    parser.add_argument(
        "--neck-channels",
        type=int,
        default=None,
        help="width of the feature pyramid and heads (default 64, the shipped weights')",
    )
    parser.add_argument(
        "--head-convs",
        type=int,
        default=None,
        help="separable 3x3 convolutions in each head (default 1)",
    )
    parser.add_argument(
        "--stride",
        type=int,
        choices=(4, 8),
        default=None,
        help="output stride in pixels (default 8, the shipped weights'; 4: finer cells for "
        "small faces; may start from 8's weights with --init)",
    )
    parser.add_argument(
        "--frozen-blocks",
        type=int,
        default=None,
        help="the trunk's stem and this many first blocks stay as ImageNet left them "
        "(default 5; fewer: more of the trunk adapts to drawn faces, at more time per step)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes that draw the training views ahead, each from its own seed (default "
        "0: drawn in turn by the training process, as the shipped weights were; a GPU needs "
        "several to be kept busy)",
    )
    parser.add_argument(
        "--start-over",
        action="store_true",
        help="ignore the state an interrupted run left beside --out (default: continue it)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for name, folder in (("--frames", args.frames), ("--crops", args.crops)):
        if folder is not None and not folder.is_dir():
            print(f"error: {name} {folder} is not a folder", file=sys.stderr)
            raise SystemExit(2)
    if not (args.frames / "images").is_dir():
        print(f"error: {args.frames} has no images/ folder", file=sys.stderr)
        raise SystemExit(2)
    if args.max_steps is not None and args.out.resolve() == PACKAGED_WEIGHTS.resolve():
        print(
            "error: a smoke run (--max-steps) would replace the shipped detector; give "
            "another --out",
            file=sys.stderr,
        )
        raise SystemExit(2)
    for name, path in (("--init", args.init), ("--pseudo-labels-from", args.pseudo_labels_from)):
        if path is not None and not path.is_file():
            print(f"error: {name} {path} is not a file", file=sys.stderr)
            raise SystemExit(2)
    overrides = {
        key: value
        for key, value in (
            ("epochs", args.epochs),
            ("max_steps", args.max_steps),
            ("seed", args.seed),
            ("lr", args.lr),
            ("backbone_lr", args.backbone_lr),
            ("close_up_probability", args.close_up_probability),
            ("frame_scale", tuple(args.frame_scale) if args.frame_scale else None),
            ("giou_weight", args.giou_weight),
            ("device", args.device),
            ("init_weights", str(args.init) if args.init else None),
            (
                "pseudo_labels_from",
                str(args.pseudo_labels_from) if args.pseudo_labels_from else None,
            ),
            ("neck_channels", args.neck_channels),
            ("head_convs", args.head_convs),
            ("stride", args.stride),
            ("frozen_blocks", args.frozen_blocks),
            ("workers", args.workers),
        )
        if value is not None
    }
    try:
        DetectorTrainConfig.model_validate(overrides)
    except ValidationError as error:
        for problem in error.errors():
            option = "--" + "-".join(str(part) for part in problem["loc"]).replace("_", "-")
            print(f"error: {option}: {problem['msg']}", file=sys.stderr)
        raise SystemExit(2) from None
    state = run_from_command_line(
        "detector-train",
        lambda: detector_flow(
            frames=str(args.frames),
            crops=str(args.crops) if args.crops else None,
            out=str(args.out),
            config=overrides,
            resume=not args.start_over,
            return_state=True,
        ),
        after_ctrl_c="the same command continues after the last finished epoch",
    )
    finish("detector-train", state)


if __name__ == "__main__":
    main()
