"""Prefect flows: one module per DVC stage (`python -m flows.<stage>` is the stage's cmd)."""
