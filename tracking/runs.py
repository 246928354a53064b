"""MLflow around the core training and evaluation: where runs go, what they record, and
which model version the `champion` alias points at."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from anime_face_id.errors import StageError
from anime_face_id.fileio import atomic_write_json

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MODEL_NAME = "anime-face-id"
CHAMPION = "champion"
SELECTION_METRIC = "val_map_at_r"
RUN_FILE = Path("models/mlflow_run.json")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def check_tracking_server(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any training, when runs could not be recorded."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as answer:
                if answer.status == 200:
                    return
                problem = f"HTTP {answer.status}"
        except (urllib.error.URLError, OSError) as error:
            problem = str(getattr(error, "reason", error))
        raise StageError(
            f"the MLflow tracking server at {uri} is unreachable ({problem}). Start it "
            "(e.g. `mlflow server --host 127.0.0.1 --port 5000`) or unset MLFLOW_TRACKING_URI "
            f"to record runs in {DEFAULT_TRACKING_URI}."
        )
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise StageError(f"cannot write the MLflow database in {folder} (tracking URI {uri})")


def configure(root: Path) -> str:
    import mlflow

    uri = tracking_uri()
    check_tracking_server(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("anime-face-id")
    return uri


def flatten(prefix: str, values: Mapping[str, Any]) -> dict[str, str]:
    flat = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(name, value))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return flat


def data_version(root: Path) -> dict[str, str]:
    """The DVC hashes of the training data, from dvc.lock (what the run was trained on)."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    version = {}
    for stage in ("balance", "split", "review"):
        for out in stages.get(stage, {}).get("outs", []):
            version[f"data.{out['path']}"] = str(out.get("md5", ""))
    return version


def git_commit(root: Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=30
        ).stdout.strip()

    commit = git("rev-parse", "HEAD")
    if not commit:
        return "unknown"
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def save_run_id(root: Path, run_id: str, uri: str) -> None:
    atomic_write_json(root / RUN_FILE, {"run_id": run_id, "tracking_uri": uri})


def load_run_id(root: Path) -> str:
    path = root / RUN_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))["run_id"]
    except (OSError, KeyError, ValueError):
        raise StageError(f"{path} is missing or unreadable: run the train stage first") from None


def champion(client) -> tuple[str, float | None] | None:
    """The run behind the `champion` alias and its selection score; None without one."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    except MlflowException:
        return None
    metrics = client.get_run(version.run_id).data.metrics
    return version.run_id, metrics.get(SELECTION_METRIC)


def run_score(run_id: str) -> float:
    """The run's selection metric, logged by the evaluate stage."""
    from mlflow import MlflowClient

    score = MlflowClient().get_run(run_id).data.metrics.get(SELECTION_METRIC)
    if score is None:
        raise StageError(
            f"MLflow run {run_id} has no {SELECTION_METRIC}: evaluate has not run for it, or "
            "val had no character with two faces to rank (see the warnings in "
            "metrics/eval.json); raise split.val or collect more pictures, then dvc repro"
        )
    return float(score)


# What a model version's page in the MLflow UI shows first: (run metric, label).
VERSION_METRICS = (  # the headline first, as dvc metrics show prints it
    ("val_identification_precision_at_1", "val identification P@1"),
    ("baseline_val_identification_precision_at_1", "untrained identification P@1"),
    ("val_map_at_r", "val MAP@R"),
    ("test_map_at_r", "test MAP@R"),
    ("open_set_precision_at_1", "open-set P@1"),
    ("open_set_map_at_r", "open-set MAP@R"),
    ("val_eer", "val EER"),
    ("baseline_val_map_at_r", "untrained baseline val MAP@R"),
    ("unknown_threshold", "unknown-face threshold"),
    ("gallery_characters", "characters"),
    ("gallery_items", "gallery images"),
)


def version_description(metrics: dict[str, float], tags: dict[str, str]) -> str:
    """What the Models page shows for a version: a warning first when evaluate found the
    model below its untrained baseline, then its headline numbers and its detector."""
    parts = [f"{label} {metrics[name]:.4g}" for name, label in VERSION_METRICS if name in metrics]
    detector = tags.get("crop.detector")  # set by the package stage
    if detector:
        parts.append(f"detector {detector}")
    text = "; ".join(parts)
    if tags.get("below_untrained_baseline") == "True":  # set by the evaluate stage
        text = (
            "WARNING: below the untrained ImageNet baseline (see the run's evaluate "
            f"warnings). {text}"
        )
    return text


def describe_version(client, version: str, run_data) -> None:
    """A registered version carries its headline numbers (description and tags) and the
    detector that crops for it, so the Models page compares versions without opening runs."""
    metrics = run_data.metrics
    description = version_description(metrics, run_data.tags)
    client.update_model_version(MODEL_NAME, version, description=description)
    for name, _label in VERSION_METRICS:
        if name in metrics:
            client.set_model_version_tag(MODEL_NAME, version, name, f"{metrics[name]:.6g}")


def register_if_better(run_id: str, model_uri: str, score: float) -> dict[str, Any]:
    """Register this run's model; move the champion alias only when it beats the holder,
    or when the holder is this same run (its embedder packaged again, e.g. with a rebuilt
    gallery: the newer package of the champion's embedder replaces the older one)."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    holder = champion(client)
    holder_score = holder[1] if holder else None
    version = mlflow.register_model(model_uri, MODEL_NAME)
    describe_version(client, version.version, client.get_run(run_id).data)
    promoted = holder is None or holder[0] == run_id or holder_score is None or score > holder_score
    if promoted:
        client.set_registered_model_alias(MODEL_NAME, CHAMPION, version.version)
    return {
        "model": MODEL_NAME,
        "version": int(version.version),
        "champion": promoted,
        "previous_champion_score": holder_score,
    }
