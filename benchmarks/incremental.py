"""Adding a character and a no-op `dvc repro`, with a temporary Prefect server per stage
(what a bare `dvc repro` does with no server) against the project's long-lived server
(`make pipeline`, `python -m flows.server start`), measured in the same run.

    .venv/bin/python benchmarks/incremental.py [--pictures 20]

A folder project of 3 generated characters (the default centernet detector) is brought up
to date through the data stages (`dvc repro split`: collect, crop, review, split); then a
fourth character is added and the same command run again, then once more with nothing to
do. Prints seconds and the ratio of adding a character to the full build, per mode.
Targets (issue 12): adding one character < 10% of a full build; a no-op run < 3 s.
"""

from __future__ import annotations

import argparse
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
from tests.support.synthetic import PIPELINE_NAMES, write_picture_folder  # noqa: E402


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


def measure(where: Path, pictures: Path, api_url: str | None) -> dict[str, float]:
    project = make_project(where, {"ANIME_FACE_ID_PYTHON": sys.executable})
    project.env.pop("PREFECT_API_URL", None)  # no server: each stage starts a temporary one
    if api_url:
        project.env["PREFECT_API_URL"] = api_url
    params = project.params()
    params["characters"] = [{"name": name} for name in PIPELINE_NAMES[:3]]
    params["collect"].update(backend="folder", folder=str(pictures))
    params["review"]["require_complete"] = False
    project.params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    dvc = [str(Path(sys.executable).parent / "dvc"), "repro", "split"]
    full = timed(dvc, project.root, project.env)
    params["characters"].append({"name": PIPELINE_NAMES[3]})
    project.params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    added = timed(dvc, project.root, project.env)
    nothing = timed(dvc, project.root, project.env)
    return {"full": full, "add one": added, "no-op": nothing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pictures", type=int, default=20, help="per character")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        where = Path(scratch)
        pictures = write_picture_folder(where / "pictures", PIPELINE_NAMES[:4], args.pictures, 256)
        base = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        results = {"temporary server per stage": measure(where / "temporary", pictures, None)}
        server_root = where / "server"
        server_root.mkdir()
        port = str(free_port())
        start = [
            sys.executable,
            "-m",
            "flows.server",
            "url",
            "--port",
            port,
            "--root",
            str(server_root),
        ]
        url = subprocess.run(start, cwd=REPO, env=base, capture_output=True, text=True, check=True)
        try:
            results["one long-lived server"] = measure(
                where / "long-lived", pictures, url.stdout.strip()
            )
        finally:
            stop = [sys.executable, "-m", "flows.server", "stop", "--root", str(server_root)]
            subprocess.run(stop, cwd=REPO, env=base, capture_output=True)
    print(f"3 characters x {args.pictures} pictures, then a 4th; `dvc repro split`, 2-core CPU")
    for mode, seconds in results.items():
        ratio = seconds["add one"] / seconds["full"]
        print(
            f"{mode:28s} full {seconds['full']:6.1f} s | add one {seconds['add one']:6.1f} s "
            f"({ratio:.2f} of full) | no-op {seconds['no-op']:4.1f} s"
        )


if __name__ == "__main__":
    main()
