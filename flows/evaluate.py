"""evaluate: the embedder as a retrieval system (DVC stage `evaluate`). Adds the numbers
and plots to the MLflow run of `train`; the package stage then logs and registers the
identifier (embedder + gallery + threshold + detector) and decides on the `champion`
alias from the val MAP@R logged here."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from anime_face_id import evaluate, evaluation_plots
from flows._stage import fail_on_stage_error, load, run_stage
from tasks.embedding import baseline_embedder, stage_embedder
from tasks.reporting import publish_summary
from tracking import runs

SPLITS = ("val", "test", "open_set")
NUMBERS = ("precision_at_1", "r_precision", "map_at_r", "precision_at_5", "eer")


def flat_metrics(report: dict) -> dict[str, float]:
    metrics = {}
    for split in (*SPLITS, "baseline_val"):
        for name in NUMBERS:
            value = report.get(split, {}).get(name)
            if value is not None:
                metrics[f"{split}_{name}"] = float(value)
        for k, value in report.get(split, {}).get("top_k_accuracy", {}).items():
            if value is not None:
                metrics[f"{split}_top_{k}_accuracy"] = float(value)
        ident = report.get(split, {}).get("identification", {})
        if ident.get("precision_at_1") is not None:
            metrics[f"{split}_identification_precision_at_1"] = float(ident["precision_at_1"])
    naming = report.get("naming", {})
    for split, outcomes in (
        ("test", naming.get("test", {})),
        ("open_set", naming.get("open_set", {})),
    ):
        for name in ("named_right", "called_unknown"):
            if outcomes.get(name) is not None:
                metrics[f"{split}_{name}"] = float(outcomes[name])
    return metrics


@task
def evaluate_embedder(root: Path, params, run_id: str) -> dict:
    return evaluate.evaluate(
        root, params.evaluate, run_id=run_id, leave_out_misfiled=params.package.leaves_out_misfiled
    )


@flow(name="evaluate", log_prints=True)
def evaluate_flow(params_path: str = "params.yaml", root: str = "."):
    return fail_on_stage_error(lambda: _evaluate(*load(root, params_path)))


def _evaluate(root_path: Path, params) -> dict:
    import mlflow

    runs.configure(root_path)
    run_id = runs.load_run_id(root_path)
    embedder = stage_embedder(
        root_path, params.compute, params.evaluate.batch_size, params.evaluate.device
    )
    if embedder is None:
        report = evaluate_embedder(root_path, params, run_id)
    else:  # its embedding tasks go from the flow to the flow's task runner (compute.runner)
        baseline = baseline_embedder(
            root_path, params.compute, params.evaluate.batch_size, params.evaluate.device
        )
        report = evaluate.evaluate(
            root_path,
            params.evaluate,
            run_id=run_id,
            embedder=embedder,
            baseline_embedder=baseline,
            leave_out_misfiled=params.package.leaves_out_misfiled,
        )
    metrics = flat_metrics(report)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(metrics)
        below = evaluate.below_baseline(report)
        mlflow.set_tag("below_untrained_baseline", str(below is not None))
        # tags, not params: a changed evaluate (or package.misfiled) setting evaluates the
        # same training run again, and MLflow refuses to change a logged param
        mlflow.set_tags(
            {
                **runs.flatten("evaluate", params.evaluate.model_dump(mode="json")),
                "package.misfiled": params.package.misfiled,
            }
        )
        mlflow.log_artifact(str(root_path / evaluate.EVAL_METRICS), "metrics")
        for plot in sorted((root_path / evaluation_plots.PLOTS_DIR).glob("*")):
            mlflow.log_artifact(str(plot), "plots")
    rows = [
        {"split": split, **{name: report[split].get(name) for name in NUMBERS}}
        for split in SPLITS
        if split in report
    ]
    description = f"Retrieval metrics (MLflow run {run_id})"
    if below:
        description += f". WARNING: {below}"
    publish_summary("evaluate", rows, description)
    return {"run_id": run_id, "val_map_at_r": metrics.get("val_map_at_r")}


if __name__ == "__main__":
    run_stage("evaluate", evaluate_flow, distributes=True)
