"""Usage telemetry of the libraries the project runs, off unless the user opts in.

Prefect's server reports usage analytics and MLflow reports usage events by default;
a project that runs on people's own pictures sends nothing anywhere it was not asked to.
Variables already set (a user opting in) are left alone.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

TELEMETRY_OFF = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",  # the cross-tool convention (MLflow honours it too)
}


def disable_telemetry(env: MutableMapping[str, str] = os.environ) -> None:
    for name, value in TELEMETRY_OFF.items():
        env.setdefault(name, value)
