"""detector-average: one detector from the mean of several runs' weights (a model soup),
tracked as an MLflow run named `detector-average`.

    .venv/bin/python -m flows.detector_average --out models/detector/centernet.pt \\
        models/detector/centernet_third.pt models/detector/centernet_fourth.pt ...

The runs must share one architecture (refinements of one file do); the mean is written
atomically to ``--out`` and records each file's name, sha256 and recipe. ``make detector``
makes the shipped file this way (see the model card).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect import flow

from anime_face_id.faces.model_soup import average_weights
from flows._stage import fail_on_stage_error, finish, run_from_command_line
from tracking import runs


@flow(name="detector-average", log_prints=True)
def detector_average_flow(weights: list[str], out: str):
    return fail_on_stage_error(lambda: _average([Path(p) for p in weights], Path(out)))


def _average(weights: list[Path], out: Path) -> dict:
    import mlflow

    root = Path(".")
    runs.configure(root)
    with mlflow.start_run(run_name="detector-average"):
        sha256 = average_weights(weights, out)
        mlflow.log_params(
            {f"weights_{index}": str(path) for index, path in enumerate(weights)}
            | {"out": str(out), "git_commit": runs.git_commit(root)}
        )
        mlflow.set_tags({"stage": "detector-average", "sha256": sha256})
        mlflow.log_artifact(str(out), artifact_path="detector")
    print(f"detector-average: the mean of {len(weights)} weights files written to {out}")
    return {"out": str(out), "sha256": sha256}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m flows.detector_average",
        description="Average several detector weights files of one architecture.",
    )
    parser.add_argument("weights", nargs="+", type=Path, help="two or more weights files")
    parser.add_argument("--out", type=Path, required=True, help="weights file to write")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if len(args.weights) < 2:
        print("error: give two or more weights files to average", file=sys.stderr)
        raise SystemExit(2)
    for path in args.weights:
        if not path.is_file():
            print(f"error: {path} is not a file", file=sys.stderr)
            raise SystemExit(2)
    if args.out.resolve() in {path.resolve() for path in args.weights}:
        print(f"error: --out {args.out} is one of the files averaged", file=sys.stderr)
        raise SystemExit(2)
    state = run_from_command_line(
        "detector-average",
        lambda: detector_average_flow(
            weights=[str(p) for p in args.weights], out=str(args.out), return_state=True
        ),
        after_ctrl_c="nothing was written; run the same command again",
    )
    finish("detector-average", state)


if __name__ == "__main__":
    main()
