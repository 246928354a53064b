"""package: the identifier (DVC stage `package`). Builds the gallery of training embeddings
and its calibrated unknown-face threshold (models/gallery.npz, metrics/package.json), logs
embedder + gallery + detector as one MLflow pyfunc model in the run of `train`, registers it
as `anime-face-id`, and moves the `champion` alias when this run beats the holder on val
MAP@R (logged by evaluate)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from anime_face_id import gallery, layout, package
from flows._stage import fail_on_stage_error, load, run_stage
from tasks.embedding import stage_embedder
from tasks.reporting import publish_summary
from tracking import runs
from tracking.identifier_model import log_identifier


@task
def build_gallery(root: Path, params) -> dict:
    return package.package_gallery(root, params, layout.EMBEDDER)


@task
def log_and_register(root: Path, params, run_id: str, summary: dict) -> dict:
    import mlflow

    score = runs.run_score(run_id)
    calibration = summary["calibration"]
    metrics = {
        "gallery_items": summary["items"],
        "gallery_characters": summary["characters"],
        "gallery_left_out_misfiled": len(summary["left_out_misfiled"]),
        "unknown_threshold": summary["threshold"],
        "unknown_false_accept": calibration["false_accept"],
        "unknown_false_reject": calibration["false_reject"],
    }
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
        # tags, not params: a run may be packaged again with other settings
        mlflow.set_tags(
            {
                **runs.flatten("package", params.package.model_dump(mode="json")),
                **runs.flatten("identify", params.identify.model_dump(mode="json")),
                "package.calibration": calibration["method"],
                "crop.detector": params.crop.detector,
            }
        )
        mlflow.log_artifact(str(root / package.PACKAGE_METRICS), "metrics")
        mlflow.log_artifact(str(root / package.LEFT_OUT_PNG), "plots")
        model_uri = log_identifier(root, params, root / layout.EMBEDDER, root / gallery.GALLERY)
        registration = runs.register_if_better(run_id, model_uri, score)
        mlflow.set_tags({f"registry.{k}": str(v) for k, v in registration.items()})
    return registration


@flow(name="package", log_prints=True)
def package_flow(params_path: str = "params.yaml", root: str = "."):
    return fail_on_stage_error(lambda: _package(*load(root, params_path)))


def _package(root_path: Path, params) -> dict:
    runs.configure(root_path)  # fails fast when the model could not be recorded
    run_id = runs.load_run_id(root_path)
    embedder = stage_embedder(
        root_path, params.compute, params.package.batch_size, params.package.device
    )
    if embedder is None:
        summary = build_gallery(root_path, params)
    else:  # what evaluate did not store is embedded on the flow's task runner
        summary = package.package_gallery(root_path, params, layout.EMBEDDER, embedder)
    registration = log_and_register(root_path, params, run_id, summary)
    calibration = summary["calibration"]
    champion = "now the champion" if registration["champion"] else "champion unchanged"
    publish_summary(
        "package",
        [
            {
                "gallery_images": summary["items"],
                "characters": summary["characters"],
                "left_out_misfiled": len(summary["left_out_misfiled"]),
                "embeddings_reused": (summary.get("embeddings") or {}).get("reused", 0),
                "threshold": round(summary["threshold"], 4),
                "calibration": calibration["method"],
                "false_accept": calibration["false_accept"],
                "false_reject": calibration["false_reject"],
            }
        ],
        f"Identifier: model version {registration['version']}, {champion}"
        # a calibration that warns (e.g. the threshold separates nothing) says so here
        + (f"; calibration: {calibration['note']}" if calibration["note"] else ""),
    )
    return {"run_id": run_id, **registration}


if __name__ == "__main__":
    run_stage("package", package_flow, distributes=True)
