"""End to end through train and evaluate: `dvc repro` on generated characters in a
temporary git repository, runs tracked in a real MLflow store (SQLite, and a real
`mlflow server` on 127.0.0.1), the model registered with a `champion` alias."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from tests.support.processes import free_port, running_server
from tests.support.project import Project, make_project
from tests.support.synthetic import (
    PIPELINE_NAMES,
    configure_small_pipeline,
    write_picture_folder,
)

pytestmark = pytest.mark.slow

NAMES = PIPELINE_NAMES


def configure(project: Project, pictures: Path) -> None:
    # Two DataLoader processes, as a user with cores to spare sets them: forked from a flow
    # that reports to Prefect, they used to exit 1 at the end of every epoch.
    configure_small_pipeline(
        project, pictures, epochs=3, batches=6, workers=2, evaluate={"grid_queries": 3}
    )


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    return write_picture_folder(tmp_path_factory.mktemp("pictures"), NAMES, count=16)


def mlflow_client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_repro_trains_evaluates_tracks_and_registers(tmp_path, pictures, prefect_api):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    project = make_project(tmp_path, {**prefect_api, "MLFLOW_TRACKING_URI": uri})
    configure(project, pictures)
    project.run("git", "add", "-A")
    project.run("git", "commit", "-qm", "small generated data set")

    repro = project.dvc("repro")
    output = repro.stdout + repro.stderr
    # each training line once (it used to come twice: run logger and root logger)
    assert sum(line.count("epoch 1/") for line in output.splitlines()) == 1, output
    # no library warning a user cannot act on (package used to print three of MLflow's)
    assert not re.search(r"\b\w*Warning\b|WARNING mlflow", output), output
    report = json.loads((project.root / "metrics" / "eval.json").read_text())
    for split in ("val", "test", "open_set"):
        for name in ("precision_at_1", "r_precision", "map_at_r", "precision_at_5"):
            assert 0.0 <= report[split][name] <= 1.0, (split, name)
        assert set(report[split]["top_k_accuracy"]) == {"1", "5", "10"}
    train_metrics = json.loads((project.root / "metrics" / "train.json").read_text())
    # Training beats the network it started from, on this data.
    assert report["val"]["map_at_r"] > train_metrics["untrained_val"]["map_at_r"]
    for plot in ("loss_curves.png", "embedding_map.png", "retrieval_grid.png", "per_character.png"):
        assert (project.root / "plots" / plot).stat().st_size > 1000, plot

    client = mlflow_client(uri)
    run = client.get_run(report["run_id"])
    assert run.info.run_name == "train"
    assert run.data.params["train.lr"] == "0.003"
    # The shipped recipe appends the trained backbone's pooled features to every vector:
    # logged, and in the gallery the package stage built (embedding_dim 32, Lite0's 1,280).
    assert run.data.params["train.append_features"] == "trained"
    from anime_face_id.gallery import load_gallery

    assert load_gallery(project.root / "models" / "gallery.npz").embeddings.shape[1] == 32 + 1280
    assert run.data.params["git_commit"].startswith(
        project.run("git", "rev-parse", "HEAD").stdout.strip()
    )
    assert any(key.startswith("data.data/balanced") for key in run.data.params)
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3]
    assert run.data.metrics["val_map_at_r"] == pytest.approx(report["val"]["map_at_r"])
    named = report["naming"]["test"]["named_right"]
    assert run.data.metrics["test_named_right"] == pytest.approx(named)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics", "plots", "model"} <= artifacts or {"metrics", "plots"} <= artifacts
    champion = client.get_model_version_by_alias("anime-face-id", "champion")
    assert champion.run_id == run.info.run_id

    # The registered model (the package stage's identifier) names the face in a picture
    # sent as base64, from the registry alone.
    import base64

    import mlflow.pyfunc
    import pandas as pd

    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/anime-face-id@champion")
    picture = next((pictures / NAMES[0]).iterdir()).read_bytes()
    answer = model.predict(
        pd.DataFrame({"image": [base64.b64encode(picture).decode(), "bm90IGFuIGltYWdl"]})
    )
    assert answer[0]["status"] == "ok" and answer[0]["faces"][0]["candidates"]
    assert answer[1]["status"] == "error" and "not an image" in answer[1]["error"]

    # DVC's views of the metrics and plots work.
    shown = project.dvc("metrics", "show").stdout
    assert "metrics/headline.json" in shown and "identification_p1" in shown
    headline = json.loads((project.root / "metrics" / "headline.json").read_text())
    assert headline["map_at_r"] == round(report["val"]["map_at_r"], 4)
    assert headline["face_found"] == 1.0  # crop.detector none: every picture
    project.dvc("plots", "show", "-o", str(tmp_path / "dvc_plots"))
    assert (tmp_path / "dvc_plots" / "index.html").is_file()
    assert "Data and pipelines are up to date." in project.dvc("repro").stdout

    # An experiment with other hyper-parameters: a second run, the alias moves only if better.
    project.run("git", "add", "-A")
    project.run("git", "commit", "-qm", "first model")
    project.dvc("exp", "run", "-S", "train.lr=0.0001", "-S", "train.margin=0.2")
    runs = client.search_runs([run.info.experiment_id], order_by=["attributes.start_time ASC"])
    assert len(runs) == 2 and runs[1].data.params["train.margin"] == "0.2"
    versions = client.search_model_versions("name='anime-face-id'")
    assert len(versions) == 2
    scores = [r.data.metrics["val_map_at_r"] for r in runs]
    expected_champion = runs[1] if scores[1] > scores[0] else runs[0]
    holder = client.get_model_version_by_alias("anime-face-id", "champion")
    assert holder.run_id == expected_champion.info.run_id
    diff = project.dvc("metrics", "diff").stdout
    assert "map_at_r" in diff

    # Another gallery setting evaluates and packages the same training run again (MLflow
    # refuses a changed param, so the evaluate and package settings are tags).
    trained_in = json.loads((project.root / "metrics" / "eval.json").read_text())["run_id"]
    other = "keep" if configured(project, "misfiled") == "leave_out" else "leave_out"
    project.dvc("exp", "run", "-S", f"package.misfiled={other}")
    again = json.loads((project.root / "metrics" / "eval.json").read_text())
    assert again["run_id"] == trained_in
    packaged = json.loads((project.root / "metrics" / "package.json").read_text())
    left_out = len(packaged["left_out_misfiled"])
    assert again["gallery_left_out_misfiled"] == left_out == (0 if other == "keep" else left_out)
    assert (project.root / "plots" / "gallery_left_out.png").stat().st_size > 1000
    tags = client.get_run(trained_in).data.tags
    assert tags["package.misfiled"] == other and "evaluate.k" in tags
    assert client.get_run(trained_in).data.metrics["gallery_left_out_misfiled"] == left_out


def configured(project: Project, key: str):
    from anime_face_id.config import load_params

    return getattr(load_params(project.root / "params.yaml").package, key)


def mlflow_server(tmp_path: Path):
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination", str(tmp_path / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    return uri, running_server(command, f"{uri}/health", tmp_path / "mlflow-server.log")


def test_tracking_to_a_real_mlflow_server_and_failing_fast_without_one(
    tmp_path, pictures, prefect_api
):
    uri, server = mlflow_server(tmp_path)
    with server:
        project = make_project(tmp_path / "p", {**prefect_api, "MLFLOW_TRACKING_URI": uri})
        configure(project, pictures)
        project.set_params(
            train={"epochs": 1, "batches_per_epoch": 2}, evaluate={"baseline": False}
        )
        project.dvc("repro")
        run_id = json.loads((project.root / "metrics" / "eval.json").read_text())["run_id"]
        client = mlflow_client(uri)
        assert client.get_run(run_id).data.metrics["val_map_at_r"] >= 0
        assert client.get_model_version_by_alias("anime-face-id", "champion").run_id == run_id

    # The server is gone: the train stage stops before training, with a clear message.
    project.set_params(train={"epochs": 2})
    stopped = project.dvc("repro", "train", check=False)
    assert stopped.returncode != 0
    output = stopped.stdout + stopped.stderr
    assert f"MLflow tracking server at {uri} is unreachable" in output
    assert "Traceback" not in output
    assert "epoch 1/2" not in output
