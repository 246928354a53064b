"""Prefect flows: one module per DVC stage; the stage's cmd, `sh flows/run <stage>`, runs
`python -m flows.<stage>` with the project's interpreter (or forks it from the warm stage
runner, flows/warm.py).

Process-wide settings, made before prefect or mlflow is imported (some are read then):
- Without PREFECT_API_URL each flow starts a temporary local Prefect server; on a busy
  machine that takes longer than Prefect's default 20 s allowance, so allow more.
- Nothing about a user's runs is reported to Prefect or MLflow (their usage telemetry is
  on by default); a user who wants it on sets the variables to true.
- Forked children (DataLoader workers) forget the Prefect services they inherit (_fork.py).
"""

import os
from collections.abc import MutableMapping

from anime_face_id.privacy import disable_telemetry
from flows import _fork  # noqa: F401  (registers its after-fork hook)


def stage_defaults(env: MutableMapping[str, str]) -> None:
    """Set in ``env`` what every stage process sets, leaving the user's values alone."""
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    disable_telemetry(env)


stage_defaults(os.environ)
