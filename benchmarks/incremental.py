"""Adding a character and a no-op `dvc repro`, with a temporary Prefect server per stage
(what a bare `dvc repro` does with no server) against the project's long-lived server
(`make pipeline`, `python -m flows.server start`), with stages started cold and with the
warm stage runner that server starts (flows/warm.py), measured in the same run.

    .venv/bin/python benchmarks/incremental.py [--pictures 20] [--whole] [--epochs N]

A folder project of 3 generated characters (the default centernet detector) is brought up
to date through the data stages (`dvc repro split`: collect, crop, review, split); then a
fourth character is added and the same command run again, then once more with nothing to
do. Prints seconds and the ratio of adding a character to the full build, per mode.

`--whole` also measures the whole pipeline on the long-lived server and warm stage runner
(what `make pipeline` sets up), training included, at
the repository's recipe (`--epochs` shortens it): a full `dvc repro` of the 3 characters,
then a fourth added as the README does without retraining (`dvc repro split`, then
`anime-face-id gallery rebuild`, which the warm runner forks too; the gallery must then
name 4 characters), the `dvc repro` that would retrain with it, and one more with nothing
left to do.

Targets (issue 12): adding one character < 10% of a full build; a no-op run < 3 s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.project import make_project  # noqa: E402
from tests.support.synthetic import DETECTED_NAMES, write_picture_folder  # noqa: E402
from tests.support.warm import forked_commands, warm_runner  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    process = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if process.returncode != 0:
        raise SystemExit(
            f"{' '.join(command)} failed:\n{process.stdout[-3000:]}\n{process.stderr[-3000:]}"
        )
    return time.perf_counter() - started


def folder_project(
    where: Path, pictures: Path, api_url: str | None, epochs: int | None, warm: bool = False
):
    """A project of the first 3 characters, read from the picture folder; returns it with
    its params (a dict to change and write back). ``warm``: its stages may go to a warm
    stage runner (`runner`), else they always start cold."""
    project = make_project(where, {"ANIME_FACE_ID_PYTHON": sys.executable})
    project.env.pop("PREFECT_API_URL", None)  # no server: each stage starts a temporary one
    if not warm:
        project.env["ANIME_FACE_ID_WARM"] = "0"
    if api_url:
        project.env["PREFECT_API_URL"] = api_url
    project.env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project.root / 'mlflow.db'}"
    params = project.params()
    params["characters"] = [{"name": name} for name in DETECTED_NAMES[:3]]
    params["collect"].update(backend="folder", folder=str(pictures))
    params["review"]["require_complete"] = False
    if epochs is not None:
        params["train"]["epochs"] = epochs
    project.params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    return project, params


def runner(project, warm: bool):
    """The warm stage runner that the project's server starts (flows/warm.py), ready before
    anything is timed, or nothing."""
    return warm_runner(project.root, project.env) if warm else contextlib.nullcontext()


def add_fourth_character(project, params: dict) -> None:
    params["characters"].append({"name": DETECTED_NAMES[3]})
    project.params_path.write_text(yaml.safe_dump(params, sort_keys=False))


def tool(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def measure(
    where: Path, pictures: Path, api_url: str | None, warm: bool = False
) -> dict[str, float]:
    project, params = folder_project(where, pictures, api_url, None, warm)
    with runner(project, warm):
        dvc = [tool("dvc"), "repro", "split"]
        full = timed(dvc, project.root, project.env)
        add_fourth_character(project, params)
        added = timed(dvc, project.root, project.env)
        nothing = timed(dvc, project.root, project.env)
    return {"full": full, "add one": added, "no-op": nothing}


def measure_whole(where: Path, pictures: Path, api_url: str, epochs: int | None) -> dict:
    """The whole pipeline: a full build, a character added without retraining (README:
    "Adding a character without retraining"), and the `dvc repro` that retrains."""
    project, params = folder_project(where, pictures, api_url, epochs, warm=True)
    with runner(project, warm=True) as log:
        return _measure_whole(project, params, log)


def _measure_whole(project, params: dict, log: Path) -> dict:
    full = timed([tool("dvc"), "repro"], project.root, project.env)
    add_fourth_character(project, params)
    data = timed([tool("dvc"), "repro", "split"], project.root, project.env)
    rebuild = [tool("anime-face-id"), "gallery", "rebuild"]
    started = time.perf_counter()
    answer = subprocess.run(
        rebuild, cwd=project.root, env=project.env, capture_output=True, text=True
    )
    gallery = time.perf_counter() - started
    if answer.returncode != 0 or " of 4 characters " not in answer.stdout:
        raise SystemExit(
            f"gallery rebuild did not add the fourth character:\n{answer.stdout}{answer.stderr}"
        )
    retrain = timed([tool("dvc"), "repro"], project.root, project.env)
    nothing = timed([tool("dvc"), "repro"], project.root, project.env)
    return {
        "full": full,
        "data stages": data,
        "gallery rebuild": gallery,
        "rebuild forked": len(forked_commands(log)) == 1,  # by the warm runner, or cold
        "retrain": retrain,
        "no-op": nothing,
        "epochs": params["train"]["epochs"],
    }


def long_lived_server(server_root: Path, env: dict[str, str]) -> str:
    server_root.mkdir()
    start = [sys.executable, "-m", "flows.server", "url", "--port", str(free_port())]
    start += ["--root", str(server_root)]
    url = subprocess.run(start, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return url.stdout.strip()


def stop_server(server_root: Path, env: dict[str, str]) -> None:
    stop = [sys.executable, "-m", "flows.server", "stop", "--root", str(server_root)]
    subprocess.run(stop, cwd=REPO, env=env, capture_output=True)


def print_whole(seconds: dict, pictures: int) -> None:
    added = seconds["data stages"] + seconds["gallery rebuild"]
    retrained = seconds["data stages"] + seconds["retrain"]
    full = seconds["full"]
    print(
        f"\nwhole pipeline (`dvc repro`, {seconds['epochs']} epochs), 3 characters x {pictures} "
        "pictures, then a 4th; one long-lived server"
    )
    print(f"{'full build':36s} {full:7.1f} s")
    print(
        f"{'add one, no retraining':36s} {added:7.1f} s ({added / full:.2f} of full: "
        f"`dvc repro split` {seconds['data stages']:.1f} s + `gallery rebuild` "
        f"{seconds['gallery rebuild']:.1f} s, "
        f"{'forked by the warm runner' if seconds['rebuild forked'] else 'run cold'})"
    )
    print(
        f"{'add one, retrained':36s} {retrained:7.1f} s ({retrained / full:.2f} of full: "
        f"`dvc repro split` {seconds['data stages']:.1f} s + `dvc repro` {seconds['retrain']:.1f} s)"
    )
    print(f"{'no-op `dvc repro`':36s} {seconds['no-op']:7.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pictures", type=int, default=20, help="per character")
    parser.add_argument(
        "--whole", action="store_true", help="also the whole pipeline, training included"
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="--whole: train.epochs (default: params.yaml)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        where = Path(scratch)
        pictures = write_picture_folder(where / "pictures", DETECTED_NAMES[:4], args.pictures, 256)
        base = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        results = {"temporary server per stage": measure(where / "temporary", pictures, None)}
        server_root = where / "server"
        api_url = long_lived_server(server_root, base)
        try:
            results["one long-lived server"] = measure(where / "long-lived", pictures, api_url)
            results["server + warm stage runner"] = measure(
                where / "warm", pictures, api_url, warm=True
            )
            if args.whole:
                whole = measure_whole(where / "whole", pictures, api_url, args.epochs)
        finally:
            stop_server(server_root, base)
    print(f"3 characters x {args.pictures} pictures, then a 4th; `dvc repro split`, 2-core CPU")
    for mode, seconds in results.items():
        ratio = seconds["add one"] / seconds["full"]
        print(
            f"{mode:28s} full {seconds['full']:6.1f} s | add one {seconds['add one']:6.1f} s "
            f"({ratio:.2f} of full) | no-op {seconds['no-op']:4.1f} s"
        )
    if args.whole:
        print_whole(whole, args.pictures)


if __name__ == "__main__":
    main()
