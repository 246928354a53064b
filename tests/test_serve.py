"""The served identifier, end to end: `dvc repro` trains on generated characters and its
`package` stage logs and registers the identifier in MLflow (SQLite); then
`mlflow models serve -m models:/anime-face-id@champion --env-manager local` on 127.0.0.1
answers valid pictures exactly as the CLI does, answers a non-image and oversized pictures
with their reasons, and keeps serving."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image

from anime_face_id.identify_results import PICTURE_JSON_SCHEMA
from tests.support.processes import free_port, running_server
from tests.support.project import Project, make_project
from tests.support.synthetic import (
    PIPELINE_NAMES,
    configure_small_pipeline,
    write_picture_folder,
)
from tests.test_identify import png_declaring

pytestmark = pytest.mark.slow

NAMES = PIPELINE_NAMES
MAX_BYTES = 60_000  # identify.max_bytes here, so that "too large" is cheap to send
BIN = Path(sys.executable).parent


def configure(project: Project, pictures: Path) -> None:
    configure_small_pipeline(
        project,
        pictures,
        epochs=2,
        batches=5,
        evaluate={"grid_queries": 2, "baseline": False},
        identify={"max_bytes": MAX_BYTES, "device": "cpu"},
    )


@pytest.fixture(scope="module")
def repro(tmp_path_factory, prefect_api) -> tuple[Project, str, Path]:
    """The whole pipeline, collect to package, on generated pictures."""
    where = tmp_path_factory.mktemp("serve")
    pictures = write_picture_folder(where / "pictures", NAMES, count=16)
    uri = f"sqlite:///{where / 'mlflow.db'}"
    project = make_project(where, {**prefect_api, "MLFLOW_TRACKING_URI": uri})
    configure(project, pictures)
    project.dvc("repro")
    return project, uri, pictures


def test_repro_packages_the_identifier_and_registers_it_as_champion(repro):
    project, uri, _ = repro
    root = project.root
    summary = json.loads((root / "metrics" / "package.json").read_text())
    assert summary["characters"] == len(NAMES) - 1 and summary["items"] > 0
    assert summary["calibration"]["method"] == "val_eer"
    assert -1.0 <= summary["threshold"] <= 1.0
    assert (root / "models" / "gallery.npz").is_file()
    run_id = json.loads((root / "metrics" / "eval.json").read_text())["run_id"]

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("anime-face-id", "champion")
    assert champion.run_id == run_id
    run = client.get_run(run_id)
    assert run.data.metrics["unknown_threshold"] == pytest.approx(summary["threshold"])
    assert run.data.tags["package.calibration"] == "val_eer"
    assert run.data.tags["registry.champion"] == "True"
    # the version's page shows its headline numbers without opening the run
    assert champion.description.startswith("val identification P@1 ")  # the headline first
    for label in ("val MAP@R", "open-set MAP@R", "val EER", "unknown-face threshold"):
        assert label in champion.description
    assert float(champion.tags["val_map_at_r"]) == pytest.approx(
        run.data.metrics["val_map_at_r"], abs=1e-5
    )
    assert "package" in project.dvc("dag").stdout
    assert "Data and pipelines are up to date." in project.dvc("repro").stdout


# --------------------------------------------------------------------- serving


def post(url: str, body: object) -> tuple[int, dict | str]:
    request = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def encoded(data: bytes) -> str:
    return base64.b64encode(data).decode()


def noise_png(side: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def cli_answer(project: Project, picture: Path) -> dict:
    process = project.run(str(BIN / "anime-face-id"), "identify", "--json", str(picture))
    return json.loads(process.stdout)["pictures"][0]


@pytest.fixture(scope="module")
def server(repro, tmp_path_factory) -> str:
    project, uri, _ = repro
    port = free_port()
    command = [
        str(BIN / "mlflow"), "models", "serve",
        "-m", "models:/anime-face-id@champion",
        "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port),
    ]  # fmt: skip
    env = {
        **project.env,
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    # Run from elsewhere: the server must need nothing of the project but the registry.
    cwd = tmp_path_factory.mktemp("elsewhere")
    env.pop("PYTHONPATH", None)
    url = f"http://127.0.0.1:{port}"
    log = cwd / "serve.log"
    with running_server(command, f"{url}/ping", log, env=env, cwd=cwd, timeout_s=180):
        yield url


def alive(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/ping", timeout=10) as response:
        return response.status == 200


def test_served_model_answers_like_the_cli_and_survives_bad_input(repro, server):
    project, _, pictures = repro
    picture = pictures / NAMES[0] / "015.png"
    expected = cli_answer(project, picture)
    jsonschema.validate(expected, PICTURE_JSON_SCHEMA)

    # a valid picture, dataframe_split: the same answer as `anime-face-id identify --json`
    body = {
        "dataframe_split": {
            "columns": ["image", "name"],
            "data": [[encoded(picture.read_bytes()), str(picture)]],
        }
    }
    status, answer = post(server, body)
    assert status == 200, answer
    (served,) = answer["predictions"]
    jsonschema.validate(served, PICTURE_JSON_SCHEMA)
    assert served == expected
    assert served["status"] == "ok" and len(served["faces"]) == 1

    # not an image, a huge declared size, too many bytes: each answered with its reason
    bad = {
        "notes": (b"hello, this is text", "not an image"),
        "bomb": (png_declaring(30_000, 30_000), "decompression bomb"),
        "big": (noise_png(200), "too large"),
    }
    assert len(bad["big"][0]) > MAX_BYTES
    for name, (data, reason) in bad.items():
        status, answer = post(
            server,
            {"dataframe_split": {"columns": ["image", "name"], "data": [[encoded(data), name]]}},
        )
        assert status == 200, answer
        (served,) = answer["predictions"]
        jsonschema.validate(served, PICTURE_JSON_SCHEMA)
        assert served["picture"] == name and served["status"] == "error"
        assert reason in served["error"], served["error"]
        assert alive(server)

    # a request without the image column is refused as a bad request, not a crash
    status, message = post(server, {"dataframe_records": [{"picture": "x"}]})
    assert status == 400 and "image" in str(message)

    # still serving; the "inputs" format, several pictures at once, good and bad mixed
    status, answer = post(
        server, {"inputs": {"image": [encoded(picture.read_bytes()), "not base64 !"]}}
    )
    assert status == 200
    good, garbage = answer["predictions"]
    assert good["faces"] == expected["faces"] and good["picture"] == "#0"
    assert garbage["status"] == "error" and "not base64" in garbage["error"]


# The request in README.md ("Serving the model over HTTP"), with its port and picture.
README_CURL = """printf '{"dataframe_split": {"columns": ["image"], "data": [["%s"]]}}' "$(base64 -w0 PICTURE)" |
  curl -s -X POST URL/invocations \\
       -H 'Content-Type: application/json' --data-binary @-"""


def test_the_readme_curl_command_works(server, repro, tmp_path):
    _, _, pictures = repro
    picture = tmp_path / "picture.png"  # the README's path has no spaces to quote either
    picture.write_bytes((pictures / NAMES[1] / "003.png").read_bytes())
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert (
        README_CURL.replace("URL", "http://127.0.0.1:5001").replace("PICTURE", "picture.jpg")
        in readme
    )
    command = README_CURL.replace("URL", server).replace("PICTURE", str(picture))
    process = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr
    answer = json.loads(process.stdout)["predictions"][0]
    assert answer["status"] == "ok" and answer["faces"][0]["candidates"]
