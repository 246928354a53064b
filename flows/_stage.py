"""Running a stage flow from the command line (the cmd of its DVC stage)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from prefect.states import Failed, State

from anime_face_id.config import ConfigError, Params, load_params
from anime_face_id.errors import StageError


def parse_args(stage: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m flows.{stage}", description=f"Run the {stage} stage."
    )
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: params.yaml)"
    )
    parser.add_argument("--root", default=".", help="project root (default: the current directory)")
    return parser.parse_args()


def fail_on_stage_error(action: Callable[[], object]) -> object:
    """Run ``action``; an expected StageError becomes a Failed state with its message
    (no traceback in the log), anything else propagates."""
    try:
        return action()
    except StageError as error:
        return Failed(message=str(error))


def check_params(path: Path) -> None:
    """Fail fast on a bad params file, before Prefect starts, with the message only."""
    try:
        load_params(path)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def run_stage(stage: str, flow) -> None:
    args = parse_args(stage)
    check_params(Path(args.root) / args.params)
    state: State = flow(params_path=args.params, root=args.root, return_state=True)
    if not state.is_completed():
        print(f"\n{stage} stopped: {state.message}", file=sys.stderr)
        raise SystemExit(1)


def load(root: str, params_path: str) -> tuple[Path, Params]:
    root_path = Path(root).resolve()
    return root_path, load_params(root_path / params_path)
