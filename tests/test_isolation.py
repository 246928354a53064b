"""Tests on one worker run one after another in one process: what a test changes in the
process's environment must not reach the projects that later tests start."""

from __future__ import annotations

import os

import mlflow

TRACKING_URI_AT_IMPORT = os.environ.get("MLFLOW_TRACKING_URI")


def test_setting_mlflows_tracking_uri_writes_the_environment(tmp_path):
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    mlflow.set_tracking_uri(uri)
    # the reason for the autouse fixture: MLflow exports it for the processes it starts
    assert os.environ["MLFLOW_TRACKING_URI"] == uri


def test_the_next_test_starts_from_the_environment_before_it():
    assert os.environ.get("MLFLOW_TRACKING_URI") == TRACKING_URI_AT_IMPORT
