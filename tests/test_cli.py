"""The `anime-face-id` console script: identify (text and JSON), bad input, exit codes,
and rebuilding the gallery; on a briefly trained model of generated characters and on a
real illustration with the lbp cascade."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from anime_face_id.cli import main
from anime_face_id.identify_results import PICTURE_JSON_SCHEMA, SCHEMA
from tests.support.warm import forked_commands, warm_runner
from tests.test_gallery import add_character
from tests.test_identify import (
    GROUP,
    NAMES,
    bad_inputs,
    held_out_pictures,
    params_dict,
    save_untrained_checkpoint,
    trained_project,
    write_group_picture,
)

pytestmark = pytest.mark.slow  # trains a small model once per session

SCRIPT = Path(sys.executable).parent / "anime-face-id"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return trained_project(tmp_path_factory)


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def identify_json(capsys, project: Path, *args) -> tuple[int, dict]:
    code, out, err = run_cli(capsys, "identify", "--json", "--root", project, *args)
    assert "Traceback" not in err
    return code, json.loads(out)


def test_identify_names_known_characters_in_pictures_it_never_saw(project, capsys):
    pictures = held_out_pictures(project)
    code, document = identify_json(capsys, project, *(path for _, path in pictures))
    assert code == 0
    assert document["schema"] == SCHEMA
    assert document["model"]["characters"] == len(NAMES)
    assert document["model"]["detector"] == "none"
    assert len(document["pictures"]) == len(pictures)
    right = 0
    for (name, path), answer in zip(pictures, document["pictures"], strict=True):
        jsonschema.validate(answer, PICTURE_JSON_SCHEMA)
        assert answer["picture"] == str(path) and answer["status"] == "ok"
        (face,) = answer["faces"]
        assert len(face["candidates"]) == 3 and len(face["neighbours"]) == 5
        right += face["candidates"][0]["character"] == name
        if face["known"]:
            assert face["character"] == face["candidates"][0]["character"]
            assert face["score"] >= document["model"]["threshold"]
        else:
            assert face["character"] is None
            assert face["score"] < document["model"]["threshold"]
    assert right / len(pictures) >= 0.75, f"{right} of {len(pictures)} named right"


def test_top_and_neighbours_options(project, capsys):
    (_, picture), *_ = held_out_pictures(project)
    code, document = identify_json(capsys, project, picture, "--top", "2", "--neighbours", "0")
    face = document["pictures"][0]["faces"][0]
    assert code == 0 and len(face["candidates"]) == 2 and face["neighbours"] == []
    with pytest.raises(SystemExit):
        main(["identify", str(picture), "--top", "0"])


def test_text_output_gives_box_best_character_score_and_next_candidates(project, capsys):
    _name, picture = held_out_pictures(project)[0]
    code, out, err = run_cli(capsys, "identify", "--root", project, picture)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"{picture}: 1 face"
    pattern = (
        r"  face 1 at x=0 y=0 w=64 h=64: (.+) (\d\.\d{3})  \| next: .+ \d\.\d{3}, .+ \d\.\d{3}"
    )
    match = re.fullmatch(pattern, lines[1].replace("unknown (closest: ", "").replace(")", ""))
    assert match, lines[1]
    assert lines[-1].startswith("(unknown below similarity ")


def test_bad_files_get_their_own_message_and_the_rest_are_still_answered(project, capsys, tmp_path):
    (_, good), *_ = held_out_pictures(project)
    bad = bad_inputs(tmp_path)
    files = [good, *(path for path, _ in bad.values())]
    code, out, err = run_cli(capsys, "identify", "--root", project, *files)
    assert code == 1  # some pictures could not be read
    assert "Traceback" not in out + err
    assert out.startswith(f"{good}: 1 face")
    for path, reason in bad.values():
        assert re.search(rf"^{re.escape(str(path))}: error: .*{reason}", err, re.M), reason

    code, document = identify_json(capsys, project, *files)
    assert code == 1
    statuses = [answer["status"] for answer in document["pictures"]]
    assert statuses == ["ok"] + ["error"] * len(bad)
    for answer in document["pictures"]:
        jsonschema.validate(answer, PICTURE_JSON_SCHEMA)


def test_every_file_failing_is_exit_status_one(project, capsys, tmp_path):
    path, reason = bad_inputs(tmp_path)["text"]
    code, _out, err = run_cli(capsys, "identify", "--root", project, path)
    assert code == 1 and reason in err


def test_without_a_usable_model_or_gallery_nothing_runs_and_it_says_why(project, capsys, tmp_path):
    (_, picture), *_ = held_out_pictures(project)
    code, out, err = run_cli(
        capsys, "identify", "--root", project, "--gallery", tmp_path / "none.npz", picture
    )
    assert code == 2 and out == ""
    assert "none.npz not found" in err and "anime-face-id gallery rebuild" in err
    other = tmp_path / "other.pt"
    save_untrained_checkpoint(other, sorted(NAMES), seed=5)
    code, out, err = run_cli(capsys, "identify", "--root", project, "--model", other, picture)
    assert code == 2 and "another embedder" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "identify", "--root", tmp_path, picture)
    assert code == 2 and "params.yaml" in err


def test_the_console_script_answers_json(project):
    (_, picture), *_ = held_out_pictures(project)
    process = subprocess.run(
        [str(SCRIPT), "identify", "--json", str(picture), "--top", "1"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 0, process.stderr
    answer = json.loads(process.stdout)["pictures"][0]
    jsonschema.validate(answer, PICTURE_JSON_SCHEMA)
    assert len(answer["faces"][0]["candidates"]) == 1


def test_the_console_script_keeps_its_exit_status_and_output_when_leaving_quickly(tmp_path):
    """The script skips Python's last garbage collection on the way out (cli.run): every
    line still arrives, and a failure still exits 2."""
    good = subprocess.run([str(SCRIPT), "check"], cwd=REPO, capture_output=True, text=True)
    assert good.returncode == 0 and good.stdout.count("(query: ") >= 2, good.stderr
    (tmp_path / "params.yaml").write_text("characters: []\n")
    bad = subprocess.run([str(SCRIPT), "check"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: params.yaml"), bad.stderr


def test_gallery_rebuild_adds_a_character_without_training(project, capsys, tmp_path):
    copy = tmp_path / "project"
    shutil.copytree(project, copy)
    model = (copy / "models" / "embedder.pt").read_bytes()
    new = add_character(copy, "Shiro White")
    code, out, err = run_cli(capsys, "gallery", "rebuild", "--root", copy)
    assert code == 0, err
    assert "5 characters" in out and "not seen in training: Shiro White" in out
    code, out, _ = run_cli(capsys, "gallery", "info", "--root", copy)
    info = json.loads(out)
    assert code == 0 and info["matches_model"] is True
    assert info["images_per_character"]["Shiro White"] == len(new)
    assert info["not_trained_on"] == ["Shiro White"]
    assert (copy / "models" / "embedder.pt").read_bytes() == model
    code, document = identify_json(capsys, copy, copy / new[0])
    assert document["pictures"][0]["faces"][0]["candidates"][0]["character"] == "Shiro White"


def test_a_file_name_that_is_not_utf8_is_shown_escaped_not_a_crash(project, tmp_path):
    """Names from downloads or old archives are often not UTF-8; on a UTF-8 terminal
    printing them raw would raise after all the work was done."""
    (_, picture), *_ = held_out_pictures(project)
    odd = os.fsdecode(os.fsencode(tmp_path) + b"/face_\xff.png")
    shutil.copy(picture, odd)
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}  # strict, as a UTF-8 locale's stdout
    for json_output in (False, True):
        command = [str(SCRIPT), "identify", *(["--json"] if json_output else []), odd]
        process = subprocess.run(
            command, cwd=project, env=env, capture_output=True, text=True, timeout=120
        )
        assert process.returncode == 0 and "Traceback" not in process.stderr, process.stderr
        if json_output:
            name = json.loads(process.stdout)["pictures"][0]["picture"]
            assert name.endswith("face_\\xff.png")
        else:
            assert "face_\\xff.png" in process.stdout


def test_gallery_rebuild_names_each_unreadable_image_once(project, tmp_path):
    copy = tmp_path / "project"
    broken = with_a_broken_image(project, copy)
    process = console(copy, "gallery", "rebuild")
    assert process.returncode == 0, process.stderr
    assert process.stderr.count(broken) == 1 and "empty file" in process.stderr
    assert "1 images left out" in process.stderr


def with_a_broken_image(project: Path, copy: Path) -> str:
    """A copy of the project with one train image emptied; returns that image's path."""
    shutil.copytree(project, copy)
    with (copy / "data" / "splits" / "train.csv").open() as table:
        broken = next(csv.DictReader(table))["path"]
    (copy / broken).write_bytes(b"")
    return broken


def console(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), *args],
        cwd=root,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_command_forked_by_the_warm_runner_answers_as_in_its_own_process(project, tmp_path):
    """With the project's warm runner listening, the console script hands its commands to
    it (flows/console.py): the same output, log lines (printed bare, not in Prefect's
    format), files and exit status as when it runs them itself, on a copy of the project."""
    (_, picture), *_ = held_out_pictures(project)
    commands = [
        ("gallery", "rebuild"),
        ("identify", "--json", str(picture)),
        ("gallery", "info"),  # what the rebuild wrote
        ("gallery", "info", "--gallery", "models/missing.npz"),  # exit status 2
    ]
    warm, cold = tmp_path / "warm", tmp_path / "cold"
    broken = with_a_broken_image(project, warm)
    assert with_a_broken_image(project, cold) == broken
    with warm_runner(warm, dict(os.environ)) as log:
        forked = [console(warm, *command) for command in commands]
        assert len(forked_commands(log)) == len(commands), log.read_text()
    alone = [console(cold, *command) for command in commands]  # no runner there

    def answer(process: subprocess.CompletedProcess) -> tuple:
        return (
            process.returncode,
            re.sub(r'"built_at": "[^"]*"', "", process.stdout),
            process.stderr,
        )

    for command, one, other in zip(commands, forked, alone, strict=True):
        assert answer(one) == answer(other), command
    assert [process.returncode for process in forked] == [0, 0, 0, 2]
    assert forked[0].stderr.count(broken) == 1 and "| WARNING |" not in forked[0].stderr
    assert json.loads(forked[2].stdout)["embeddings"]["reused"] == 0


def test_a_command_the_runner_declines_runs_in_the_console_scripts_own_process(project, tmp_path):
    copy = tmp_path / "project"
    shutil.copytree(project, copy)
    with warm_runner(copy, dict(os.environ)) as log:
        process = console(copy, "gallery", "info", OMP_NUM_THREADS="3")
        assert forked_commands(log) == []
        assert "declined anime-face-id: an import-time environment variable" in log.read_text()
    assert process.returncode == 0, process.stderr
    assert json.loads(process.stdout)["matches_model"] is True


def test_gallery_info_flags_a_stale_gallery(project, capsys, tmp_path):
    other = tmp_path / "other.pt"
    save_untrained_checkpoint(other, sorted(NAMES), seed=6)
    code, out, _ = run_cli(capsys, "gallery", "info", "--root", project, "--model", other)
    assert code == 2 and json.loads(out)["matches_model"] is False


def test_every_face_of_a_real_illustration_with_the_lbp_cascade(
    project, capsys, tmp_path, shared_dir, cascade_path
):
    params = tmp_path / "lbp.yaml"
    params.write_text(yaml.safe_dump(params_dict(NAMES, "lbp", str(cascade_path))))
    picture = tmp_path / "three.png"
    write_group_picture(shared_dir, picture)
    code, document = identify_json(capsys, project, "--params", params, picture)
    answer = document["pictures"][0]
    assert code == 0 and document["model"]["detector"] == "lbp"
    jsonschema.validate(answer, PICTURE_JSON_SCHEMA)
    assert answer["status"] == "ok" and len(answer["faces"]) == len(GROUP)
    for face in answer["faces"]:
        box, crop = face["box"], face["crop"]
        assert box["x"] >= 0 and box["x"] + box["w"] <= answer["width"]
        assert box["y"] >= 0 and box["y"] + box["h"] <= answer["height"]
        assert crop["side"] > max(box["w"], box["h"])  # widened by crop.margin
        assert face["candidates"]


def test_check_still_lists_the_characters(capsys, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(params_dict(NAMES)))
    code, out, _ = run_cli(capsys, "check", "--params", params)
    assert code == 0 and "4 characters" in out and "akane_red" in out


def test_a_relative_root_is_joined_once(project, capsys, monkeypatch):
    (_, picture), *_ = held_out_pictures(project)
    monkeypatch.chdir(project.parent)
    code, out, err = run_cli(capsys, "identify", "--json", "--root", project.name, picture)
    assert code == 0, err
    assert json.loads(out)["pictures"][0]["status"] == "ok"
