"""A params.yaml of a few keys: every stage names the keys DVC needs and the file lacks,
and `anime-face-id check --fill` writes them in at their defaults, keeping the file's own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from anime_face_id.config import parse_params
from anime_face_id.params_fill import (
    default_value,
    dvc_missing_keys,
    dvc_param_keys,
    fill_text,
    missing_keys,
    missing_message,
)
from tests.support.project import make_project
from tests.support.synthetic import DETECTED_NAMES, DETECTED_SIZE, write_picture_folder

REPO = Path(__file__).resolve().parents[1]
DVC_KEYS = dvc_param_keys(REPO / "dvc.yaml")
SHIPPED = yaml.safe_load((REPO / "params.yaml").read_text())

SHORT = """\
# my characters
characters:
  - name: Kuroko Tetsuya   # the main one
collect:
  backend: folder
  folder: /pictures
crop:
  # faces are already cut
  detector: none
"""


def readme_own_data_params() -> str:
    """The YAML block of the README's "Your own data, offline" section, as printed."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Your own data, offline", 1)[1]
    return section.split("```yaml\n", 1)[1].split("```", 1)[0]


def test_the_keys_dvc_reads_are_every_stages_params_entry(tmp_path):
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "a": {"cmd": "x", "params": ["characters", "crop.margin"]},
                    "b": {
                        "cmd": "y",
                        "params": [{"params.yaml": ["split"]}, {"other.yaml": ["z"]}],
                    },
                    "c": {"cmd": "z", "params": ["crop.margin"]},
                    "d": {"cmd": "w"},
                }
            }
        )
    )
    assert dvc_param_keys(tmp_path / "dvc.yaml") == ["characters", "crop.margin", "split"]
    assert dvc_param_keys(tmp_path / "missing.yaml") == []
    assert {"crop.margin", "crop.size", "train", "package"} <= set(DVC_KEYS)


def test_filling_keeps_the_files_keys_values_and_comments_and_adds_the_rest():
    filled = fill_text(SHORT, DVC_KEYS)
    assert not filled.rewritten
    assert filled.text.startswith(SHORT.split("crop:")[0])  # untouched up to crop
    for comment in ("# my characters", "# the main one", "# faces are already cut"):
        assert comment in filled.text
    data = yaml.safe_load(filled.text)
    assert missing_keys(data, DVC_KEYS) == []
    assert set(filled.added) == set(missing_keys(yaml.safe_load(SHORT), DVC_KEYS))
    assert data["crop"]["detector"] == "none" and data["collect"]["folder"] == "/pictures"
    assert data["crop"]["margin"] == default_value("crop.margin")
    assert parse_params(data).train == parse_params(yaml.safe_load(SHORT)).train
    again = fill_text(filled.text, DVC_KEYS)
    assert again.text == filled.text and again.added == []


def test_a_file_it_cannot_edit_in_place_is_written_again_with_the_same_values():
    flow_style = "characters: [{name: A}]\ncrop: {detector: none}  # inline\n"
    filled = fill_text(flow_style, DVC_KEYS)
    assert filled.rewritten and "crop.margin" in filled.added
    data = yaml.safe_load(filled.text)
    assert data["crop"]["detector"] == "none" and data["characters"] == [{"name": "A"}]
    assert missing_keys(data, DVC_KEYS) == []


@pytest.mark.parametrize("key", [k for k in DVC_KEYS if k != "characters"])
def test_each_key_left_out_of_the_shipped_params_comes_back_as_shipped(key):
    """The defaults written in are the code's, and they equal what params.yaml ships."""
    section, *rest = key.split(".")
    shortened = yaml.safe_load(yaml.safe_dump(SHIPPED))
    if rest:
        del shortened[section][rest[0]]
    else:
        del shortened[section]
    filled = fill_text(yaml.safe_dump(shortened, sort_keys=False), DVC_KEYS)
    assert filled.added == [key]
    assert yaml.safe_load(filled.text) == SHIPPED


def test_no_key_is_missing_from_the_shipped_params_or_for_another_params_file(tmp_path):
    assert dvc_missing_keys(REPO / "params.yaml") == []
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    (tmp_path / "experiment.yaml").write_text(SHORT)  # DVC reads params.yaml, not this
    assert dvc_missing_keys(tmp_path / "experiment.yaml") == []
    (tmp_path / "params.yaml").write_text(SHORT)
    assert "crop.margin" in dvc_missing_keys(tmp_path / "params.yaml")


@pytest.mark.slow
def test_the_readme_own_data_params_run_after_check_fill(tmp_path, prefect_api):
    """The README's example as the whole params.yaml: the first stage stops at once naming
    the missing keys (DVC would have stopped at review, after collecting and cropping);
    after `check --fill`, `dvc repro` goes through review and split."""
    project = make_project(tmp_path, prefect_api)
    readme = readme_own_data_params()
    names = [c["name"] for c in yaml.safe_load(readme)["characters"]]
    designs = DETECTED_NAMES[: len(names)]  # the crop stage runs the packaged detector
    pictures = write_picture_folder(tmp_path / "generated", designs, 4, DETECTED_SIZE)
    for design, name in zip(designs, names, strict=True):
        (pictures / design).rename(pictures / name)
    params = project.root / "params.yaml"
    params.write_text(readme.replace("/path/to/my/pictures", str(pictures)))

    stopped = project.run("sh", "flows/run", "collect", check=False)
    assert stopped.returncode == 2, stopped.stderr
    assert "lacks crop.margin, crop.size" in stopped.stderr
    assert "anime-face-id check --fill" in stopped.stderr
    assert "Traceback" not in stopped.stderr and not (project.root / "data" / "raw").exists()

    tool = str(Path(sys.executable).parent / "anime-face-id")
    filled = project.run(tool, "check", "--fill")
    assert "added crop.margin, crop.size" in filled.stdout and "comments" not in filled.stdout
    assert "# the default" in params.read_text()  # the README's comments are kept
    repro = project.dvc("repro", "split")
    assert "Running stage 'split'" in repro.stdout, repro.stdout
    assert "Still processing items" not in repro.stdout + repro.stderr  # Prefect's exit noise
    assert (project.root / "data" / "splits").is_dir()
    assert subprocess.run([tool, "check"], cwd=project.root, capture_output=True).returncode == 0


def test_awkward_files_are_filled_or_refused_with_a_message_not_a_traceback(tmp_path):
    ended = "characters:\n  - name: A\ncrop:\n  detector: none\n...\n"  # an explicit end
    data = yaml.safe_load(fill_text(ended, DVC_KEYS).text)
    assert missing_keys(data, DVC_KEYS) == [] and data["crop"]["detector"] == "none"
    crlf = SHORT.replace("\n", "\r\n")
    filled = fill_text(crlf, DVC_KEYS)
    assert not filled.rewritten and "\n" not in filled.text.replace("\r\n", "")
    with pytest.raises(ValueError, match="not a mapping"):
        fill_text("characters: [{name: A}]\ncrop:\n", DVC_KEYS)  # a section set to nothing


def test_dvc_yaml_of_any_shape_gives_the_keys_it_can_name(tmp_path):
    dvc = tmp_path / "dvc.yaml"
    dvc.write_text("stages:\n  - a\n")  # not DVC's shape: DVC reports it, not this
    assert dvc_param_keys(dvc) == []
    dvc.write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "many": {"foreach": [1, 2], "do": {"cmd": "x ${item}", "params": ["split"]}},
                    "each": {"cmd": "y", "params": ["train.${item}", "crop.size"]},
                }
            },
            sort_keys=False,
        )
    )
    assert dvc_param_keys(dvc) == ["split", "crop.size"]


def test_a_key_with_no_setting_is_named_as_dvc_yamls_to_fix(tmp_path):
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump({"stages": {"a": {"cmd": "x", "params": ["crop.foo", "crop.margin"]}}})
    )
    params = tmp_path / "params.yaml"
    params.write_text(SHORT)
    missing = dvc_missing_keys(params)
    assert missing == ["crop.foo", "crop.margin"]
    message = missing_message(missing)
    assert "lacks crop.margin," in message and "check --fill" in message
    assert "read crop.foo, which this project has no setting for" in message
    assert fill_text(SHORT, missing).added == ["crop.margin"]  # the unknown one is not made up


def test_check_fill_edits_only_the_params_file_dvc_reads(tmp_path, capsys):
    from anime_face_id.cli import main

    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    other = tmp_path / "experiment.yaml"
    other.write_text(SHORT)
    assert main(["check", "--params", str(other), "--fill"]) == 2
    assert "DVC reads params.yaml, not experiment.yaml" in capsys.readouterr().err
    assert other.read_text() == SHORT
    params = tmp_path / "params.yaml"
    params.write_text(SHORT)
    assert main(["check", "--params", str(params)]) == 2
    assert "check --fill" in capsys.readouterr().err
    assert main(["check", "--params", str(params), "--fill"]) == 0
    assert "added crop.margin" in capsys.readouterr().out
    assert dvc_missing_keys(params) == [] and "# the main one" in params.read_text()
