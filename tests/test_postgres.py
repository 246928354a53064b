"""Team servers on PostgreSQL: a real PostgreSQL cluster on 127.0.0.1 backs a real
`prefect server` and a real `mlflow server` (artifacts in a shared directory), with the
settings the README gives; `dvc repro` through train records its stage flow runs in
Prefect's database and its training run in MLflow's, both in PostgreSQL."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.support.postgres import MISSING, running_postgres, server_binaries
from tests.support.prefect_server import prefect_server
from tests.support.processes import free_port, running_server
from tests.support.project import make_project
from tests.support.synthetic import PIPELINE_NAMES, configure_small_pipeline, write_picture_folder

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(server_binaries() is None, reason=MISSING),
]


def mlflow_server_on(database_url: str, artifacts: Path, log: Path):
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", database_url,
        "--artifacts-destination", str(artifacts),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    return uri, running_server(command, f"{uri}/health", log)


def test_prefect_and_mlflow_keep_their_runs_in_postgresql(tmp_path):
    pictures = write_picture_folder(tmp_path / "pictures", PIPELINE_NAMES, count=12)
    with running_postgres() as postgres:
        postgres.create_database("prefect")
        postgres.create_database("mlflow")
        prefect_db = postgres.url("prefect", driver="postgresql+asyncpg")
        home = tmp_path / "prefect-home"
        home.mkdir()
        uri, mlflow_running = mlflow_server_on(
            postgres.url("mlflow", driver="postgresql+psycopg2"),
            tmp_path / "artifacts",
            tmp_path / "mlflow.log",
        )
        with (
            prefect_server(
                home, extra_env={"PREFECT_API_DATABASE_CONNECTION_URL": prefect_db}
            ) as api,
            mlflow_running,
        ):
            project = make_project(
                tmp_path / "p",
                {"PREFECT_API_URL": api, "PREFECT_HOME": str(home), "MLFLOW_TRACKING_URI": uri},
            )
            configure_small_pipeline(project, pictures, epochs=1, batches=2)
            project.dvc("repro", "train")

        flows = {name for (name,) in postgres.query("prefect", "SELECT name FROM flow")}
        assert {"collect", "train"} <= flows, flows
        (completed,) = postgres.query(
            "prefect", "SELECT count(*) FROM flow_run WHERE state_type = 'COMPLETED'"
        )
        assert completed[0] >= 6  # collect, crop, review, split, balance, train
        runs = postgres.query("mlflow", "SELECT run_uuid, status FROM runs")
        assert [status for _, status in runs] == ["FINISHED"]
        metrics = {key for (key,) in postgres.query("mlflow", "SELECT DISTINCT key FROM metrics")}
        assert {"best_val_map_at_r", "epoch_val_map_at_r"} <= metrics
        # the run's files went to the shared artifact store, not into the database
        stored = {path.name for path in (tmp_path / "artifacts").rglob("*")}
        assert {"train.json", "train_history.csv"} <= stored
