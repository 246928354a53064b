"""Prefect flows: one module per DVC stage; the stage's cmd, `sh flows/run <stage>`, runs
`python -m flows.<stage>` with the project's interpreter.

Settings that must be in place before prefect or mlflow is imported (they read them then):
- Without PREFECT_API_URL each flow starts a temporary local Prefect server; on a busy
  machine that takes longer than Prefect's default 20 s allowance, so allow more.
- Nothing about a user's runs is reported to Prefect or MLflow (their usage telemetry is
  on by default); a user who wants it on sets the variables to true.
"""

import os

from anime_face_id.privacy import disable_telemetry

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
disable_telemetry()
