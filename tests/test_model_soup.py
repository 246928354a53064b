"""The mean of detector weights files (the shipped file is one): against a tensor-by-tensor
reference, as a working detector, refusals, and the command with its MLflow run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from anime_face_id.faces.centernet import FaceCenterNet, load_weights, save_weights
from anime_face_id.faces.detectors import (
    PACKAGED_WEIGHTS,
    CenterNetDetector,
    DetectorWeightsError,
)
from anime_face_id.faces.model_soup import (
    ModelSoupError,
    average_weights,
    averaged_state,
)
from anime_face_id.fileio import file_sha256

REPO = Path(__file__).resolve().parents[1]


def random_weights(path: Path, seed: int, **architecture) -> Path:
    torch.manual_seed(seed)
    model = FaceCenterNet(**architecture)
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.normal_()
            else:
                value.fill_(seed)
    save_weights(model, path, {"seed": seed})
    return path


def test_the_mean_is_each_tensors_mean_and_counters_are_the_first_files() -> None:
    states = [
        {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)},
        {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(5)},
        {"w": torch.tensor([5.0, 1.0]), "n": torch.tensor(7)},
    ]
    mean = averaged_state(states)
    torch.testing.assert_close(mean["w"], torch.tensor([3.0, 3.0]))
    assert int(mean["n"]) == 3 and mean["n"].dtype == states[0]["n"].dtype


def test_averaged_file_holds_the_mean_of_the_files_and_their_recipes(tmp_path: Path) -> None:
    paths = [random_weights(tmp_path / f"w{seed}.pt", seed, neck_channels=32) for seed in (1, 2, 3)]
    out = tmp_path / "mean.pt"
    sha256 = average_weights(paths, out)
    assert sha256 == file_sha256(out)
    model, metadata = load_weights(out)
    assert model.architecture == {"neck_channels": 32, "head_convs": 1}
    inputs = [load_weights(path)[0].state_dict() for path in paths]
    for key, value in model.state_dict().items():
        if value.is_floating_point():  # the inputs as stored (half precision), then rounded
            reference = sum(state[key] for state in inputs) / 3
            torch.testing.assert_close(value, reference.half().float(), atol=2e-3, rtol=2e-3)
        else:
            assert torch.equal(value, inputs[0][key])
    assert [entry["file"] for entry in metadata["averaged_from"]] == ["w1.pt", "w2.pt", "w3.pt"]
    assert [entry["sha256"] for entry in metadata["averaged_from"]] == [
        file_sha256(path) for path in paths
    ]
    assert [entry["metadata"] for entry in metadata["averaged_from"]] == [
        {"seed": 1},
        {"seed": 2},
        {"seed": 3},
    ]


def test_the_mean_of_the_shipped_file_with_itself_detects_as_it_does(tmp_path: Path) -> None:
    out = tmp_path / "same.pt"
    average_weights([PACKAGED_WEIGHTS, PACKAGED_WEIGHTS], out)
    picture = np.full((200, 300, 3), 235, np.uint8)
    picture[40:160, 90:210] = (250, 215, 200)  # a skin-coloured square: any boxes will do
    picture[80:100, 115:135] = picture[80:100, 165:185] = (40, 60, 160)  # two "eyes"
    here = CenterNetDetector(out, 512, 0.05).detect(picture)
    shipped = CenterNetDetector(PACKAGED_WEIGHTS, 512, 0.05).detect(picture)
    assert here and [d.box for d in here] == [d.box for d in shipped]
    assert [d.score for d in here] == pytest.approx([d.score for d in shipped], abs=1e-3)


def test_files_that_cannot_be_averaged_are_refused_with_the_reason(tmp_path: Path) -> None:
    narrow = random_weights(tmp_path / "narrow.pt", 1, neck_channels=32)
    wide = random_weights(tmp_path / "wide.pt", 2, neck_channels=64)
    out = tmp_path / "out.pt"
    with pytest.raises(ModelSoupError, match="another architecture"):
        average_weights([narrow, wide], out)
    with pytest.raises(ModelSoupError, match="two or more"):
        average_weights([narrow], out)
    with pytest.raises(DetectorWeightsError, match=r"detector weights not found: .*missing\.pt"):
        average_weights([narrow, tmp_path / "missing.pt"], out)
    (tmp_path / "notes.pt").write_text("not weights")
    with pytest.raises(DetectorWeightsError, match=r"notes\.pt: not a PyTorch weights file"):
        average_weights([narrow, tmp_path / "notes.pt"], out)
    assert not out.exists()


def run_command(args: list, env: dict) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "flows.detector_average", *map(str, args)]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_command_writes_the_mean_and_records_an_mlflow_run(tmp_path: Path, prefect_api):
    from mlflow import MlflowClient

    paths = [random_weights(tmp_path / f"w{seed}.pt", seed, neck_channels=32) for seed in (1, 2)]
    out = tmp_path / "models" / "mean.pt"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, **prefect_api, "MLFLOW_TRACKING_URI": uri}
    result = run_command([*paths, "--out", out], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the mean of 2 weights files written to" in result.stdout + result.stderr
    assert load_weights(out)[1]["averaged_from"][1]["file"] == "w2.pt"
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("anime-face-id").experiment_id],
        "attributes.run_name = 'detector-average'",
    )
    assert run.data.params["weights_0"] == str(paths[0])
    assert run.data.tags["sha256"] == file_sha256(out)
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "detector")]
    assert artifacts == ["detector/mean.pt"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["w1.pt", "--out", "out.pt"], "two or more"),
        (["w1.pt", "missing.pt", "--out", "out.pt"], "missing.pt is not a file"),
        (["w1.pt", "w2.pt", "--out", "w2.pt"], "is one of the files averaged"),
    ],
)
def test_the_command_refuses_before_any_work(tmp_path: Path, arguments, message) -> None:
    for seed in (1, 2):
        random_weights(tmp_path / f"w{seed}.pt", seed, neck_channels=32)
    args = [tmp_path / a if a.endswith(".pt") else a for a in arguments]
    result = run_command(args, {**os.environ})
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out.pt").exists()


def test_make_detector_recipe_is_accepted_by_the_commands_it_runs() -> None:
    """Every step of `make detector` parses (a renamed or dropped option fails here, not
    two hours into the recipe), and the last one averages the three runs before it."""
    import shlex

    from flows import detector, detector_average

    printed = subprocess.run(
        ["make", "-n", "detector"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.replace("\\\n", " ")
    steps = [shlex.split(line) for line in printed.splitlines() if " -m flows.detector" in line]
    modules = [step[step.index("-m") + 1] for step in steps]
    assert modules == ["flows.detector"] * 5 + ["flows.detector_average"]
    outs = []
    for step, module in zip(steps, modules, strict=True):
        args = step[step.index("-m") + 2 :]
        parsed = (detector if module == "flows.detector" else detector_average).parse_args(args)
        outs.append(parsed.out)
    averaged = detector_average.parse_args(steps[-1][steps[-1].index("-m") + 2 :])
    assert averaged.weights == outs[2:5] and averaged.out == PACKAGED_WEIGHTS.relative_to(REPO)
