"""Prefect flows: one module per DVC stage (`python -m flows.<stage>` is the stage's cmd).

Without PREFECT_API_URL each flow starts a temporary local Prefect server; on a busy
machine that takes longer than Prefect's default 20 s allowance, so allow more (before
prefect is imported, which reads its settings then).
"""

import os

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
