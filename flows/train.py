"""train: the embedding network with batch-hard triplet loss (DVC stage `train`),
tracked as an MLflow run named `train`."""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task

from anime_face_id import distributed, train, training_report
from anime_face_id.errors import StageError
from flows._stage import check_params, fail_on_stage_error, load, parse_args, run_stage
from tasks.reporting import StageProgress, publish_summary
from tracking import runs


class PrefectLogHandler(logging.Handler):
    """Forwards the core library's progress lines (epoch, loss, throughput, ETA)."""

    def emit(self, record: logging.LogRecord) -> None:
        get_run_logger().log(record.levelno, self.format(record))


@task
def train_embedder(root: Path, params, run_id: str) -> training_report.TrainResult:
    import mlflow

    progress = StageProgress("train", params.train.epochs, unit="epochs")

    def on_epoch(report: training_report.EpochReport) -> None:
        metrics = {
            "loss": report.loss,
            "identity_loss": report.identity_loss,
            "active_fraction": report.active_fraction,
            "left_out_fraction": report.left_out_fraction,
            "mean_positive_distance": report.mean_positive_distance,
            "mean_negative_distance": report.mean_negative_distance,
            # per-epoch validation; the final val_* numbers come from the evaluate stage
            "epoch_val_precision_at_1": report.val_precision_at_1,
            "epoch_val_map_at_r": report.val_map_at_r,
            "images_per_s": report.images_per_s,
            "lr": report.lr,
        }
        mlflow.log_metrics(
            {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)},
            step=report.epoch,
            run_id=run_id,
        )
        progress.advance(f"epoch {report.epoch}")

    handler = PrefectLogHandler()
    core_logger = logging.getLogger("anime_face_id")
    core_logger.addHandler(handler)
    core_logger.setLevel(logging.INFO)
    # The run logger prints to the console already; propagating to the root logger's
    # console handler as well showed every training line twice.
    propagate, core_logger.propagate = core_logger.propagate, False
    try:
        return train.train(root, params.train, on_epoch=on_epoch)
    finally:
        core_logger.removeHandler(handler)
        core_logger.propagate = propagate


@flow(name="train", log_prints=True)
def train_flow(params_path: str = "params.yaml", root: str = "."):
    return fail_on_stage_error(lambda: _train(*load(root, params_path)))


def _train(root_path: Path, params) -> dict:
    import mlflow

    uri = runs.configure(root_path)  # fails fast when runs could not be recorded
    with mlflow.start_run(run_name="train") as run:
        mlflow.log_params(runs.flatten("train", params.train.model_dump(mode="json")))
        mlflow.log_params(
            {**runs.data_version(root_path), "git_commit": runs.git_commit(root_path)}
        )
        mlflow.set_tags({"stage": "train", "characters": str(len(params.characters))})
        result = train_embedder(root_path, params, run.info.run_id)
        best = result.history[result.best_epoch - 1]
        mlflow.log_metrics(
            {"best_epoch": result.best_epoch, "best_val_map_at_r": float(best.val_map_at_r or 0)}
        )
        mlflow.log_artifact(str(root_path / training_report.TRAIN_METRICS), "metrics")
        mlflow.log_artifact(str(root_path / training_report.TRAIN_HISTORY), "plots")
        runs.save_run_id(root_path, run.info.run_id, uri)
    rows = [
        {
            "epoch": r.epoch,
            "loss": round(r.loss, 4),
            "val_precision_at_1": r.val_precision_at_1,
            "val_map_at_r": r.val_map_at_r,
            "images_per_s": round(r.images_per_s, 1),
        }
        for r in result.history
    ]
    publish_summary(
        "train",
        rows,
        f"Training on {result.device}: best epoch {result.best_epoch} (MLflow run {run.info.run_id})",
    )
    return {"run_id": run.info.run_id, "best_epoch": result.best_epoch}


def torchrun_command(processes: int, argv: list[str]) -> list[str]:
    """This stage again, as ``processes`` processes started by torchrun on this machine."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={processes}", "-m", "flows.train", *argv,
    ]  # fmt: skip


def main() -> None:
    ranks = distributed.ranks_from_env()
    if ranks.distributed and not ranks.is_main:
        # a helper process: trains its share, while the first process runs the flow,
        # writes the outputs and reports to Prefect and MLflow
        args = parse_args("train")
        root, params = load(args.root, args.params)
        try:
            train.train(root, params.train)
        except StageError as error:
            raise SystemExit(f"train (process {ranks.rank}) stopped: {error}") from None
        return
    if not ranks.distributed:
        args = parse_args("train")
        processes = check_params(Path(args.root) / args.params).train.processes
        if processes > 1:
            # torch uses every core in each process by default: share them instead
            threads = max(1, (os.cpu_count() or 1) // processes)
            os.environ.setdefault("OMP_NUM_THREADS", str(threads))
            command = torchrun_command(processes, sys.argv[1:])
            os.execv(command[0], command)
    run_stage("train", train_flow)


if __name__ == "__main__":
    main()
