"""params.yaml: every problem is one line naming the file and the place, never a traceback,
from the config loader, `anime-face-id check` and the stage runners alike."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from anime_face_id.cli import main
from anime_face_id.config import ConfigError, TrainConfig, load_params, parse_params

REPO = Path(__file__).resolve().parents[1]
GOOD = "characters:\n  - name: Alice\n  - name: Bob\n"


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "params.yaml"
    path.write_bytes(data)
    return path


def check(capsys, path: Path) -> tuple[int, str]:
    code = main(["check", "--params", str(path)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured.err


def test_params_that_are_not_utf8_name_the_file_the_byte_offset_and_the_line(tmp_path, capsys):
    path = write(tmp_path, b'characters:\n  - name: A\n  - name: "B\xe9"\n')  # Latin-1
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    message = str(caught.value)
    assert message == (
        f"{path} is not UTF-8 text (byte 0xe9 at offset 36, line 3); save it as UTF-8"
    )
    code, err = check(capsys, path)
    assert code == 2 and err == f"error: {message}\n"


def test_invalid_yaml_is_one_line_naming_the_file_and_the_line(tmp_path, capsys):
    path = write(tmp_path, GOOD.encode() + b"collect: [backend\n")
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    message = str(caught.value)
    assert message.startswith(f"{path} is not valid YAML: line 5, column 1: ")
    assert "\n" not in message
    code, err = check(capsys, path)
    assert code == 2 and err.count("\n") == 1 and "line 5" in err


@pytest.mark.parametrize("entry", ["banana", "10.0.0.0/33", "127.0.0.1/8/8", "", " 10.0.0.0/8"])
def test_allow_networks_entries_that_are_not_networks_are_refused(entry):
    with pytest.raises(ConfigError, match=r"collect\.allow_networks") as caught:
        parse_params({"characters": [{"name": "A"}], "collect": {"allow_networks": [entry]}})
    assert repr(entry) in str(caught.value)


def test_allow_networks_names_every_bad_entry_and_keeps_good_ones_as_written():
    with pytest.raises(ConfigError) as caught:
        parse_params(
            {
                "characters": [{"name": "A"}],
                "collect": {"allow_networks": ["banana", "127.0.0.0/8", "10.0.0.0/33"]},
            }
        )
    assert "'banana', '10.0.0.0/33' are not IP networks" in str(caught.value)
    written = ["127.0.0.0/8", "10.1.2.3/8", "::1/128", "192.168.1.7"]
    params = parse_params({"characters": [{"name": "A"}], "collect": {"allow_networks": written}})
    assert params.collect.allow_networks == written


def test_check_refuses_allow_networks_that_are_not_networks(tmp_path, capsys):
    path = write(tmp_path, (GOOD + "collect:\n  allow_networks: [banana]\n").encode())
    code, err = check(capsys, path)
    assert code == 2
    assert err.startswith(f"error: {path}: collect.allow_networks: ")
    assert "'banana' is not an IP network" in err
    assert check(capsys, write(tmp_path, GOOD.encode()))[0] == 0


def test_a_stage_runner_prints_a_params_error_without_traceback(tmp_path):
    write(tmp_path, b"characters:\n  - name: \xff\n")
    process = subprocess.run(
        [sys.executable, "-m", "flows.review", "--root", str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 2
    assert "Traceback" not in process.stdout + process.stderr
    assert process.stderr == (
        f"error: {tmp_path / 'params.yaml'} is not UTF-8 text "
        "(byte 0xff at offset 22, line 2); save it as UTF-8\n"
    )


def test_keys_that_moved_sections_say_where_they_went():
    from anime_face_id.config import ConfigError, parse_params

    old = {
        "characters": [{"name": "A"}],
        "identify": {"top": 3, "gallery_source": "curated", "threshold": 0.5},
    }
    with pytest.raises(ConfigError) as error:
        parse_params(old, "params.yaml")
    message = str(error.value)
    assert "identify.gallery_source is now package.gallery_source" in message
    assert "identify.threshold is now package.threshold" in message
    moved = parse_params(
        {"characters": [{"name": "A"}], "package": {"gallery_source": "curated", "threshold": 0.5}}
    )
    assert moved.package.gallery_source == "curated" and moved.package.threshold == 0.5


def test_the_review_apps_and_sign_offs_settings_have_their_own_subsections():
    """The review section: the stage's setting, then the app's and the sign-off's apart."""
    from anime_face_id.config import ConfigError, parse_params

    old = {"characters": [{"name": "A"}], "review": {"page_size": 10, "signoff_timeout_s": 5}}
    with pytest.raises(ConfigError) as error:
        parse_params(old, "params.yaml")
    message = str(error.value)
    assert "review.page_size is now review.app.page_size" in message
    assert "review.signoff_timeout_s is now review.signoff.timeout_s" in message
    new = parse_params(
        {
            "characters": [{"name": "A"}],
            "review": {"app": {"page_size": 10}, "signoff": {"timeout_s": 5}},
        }
    )
    assert new.review.app.page_size == 10 and new.review.signoff.timeout_s == 5
    assert new.review.app.duplicate_distance == 4 and new.review.require_complete
    with pytest.raises(ConfigError, match=r"review\.app\.pages"):
        parse_params({"characters": [{"name": "A"}], "review": {"app": {"pages": 2}}})


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("collect", "timeout_s", ".inf"),
        ("collect", "deadline_s", "1e300"),
        ("collect", "backoff_s", ".nan"),
        ("train", "lr", ".inf"),
        ("crop", "margin", ".nan"),
        ("balance", "min_per_class", "3200000"),  # a typo: millions of rows per character
    ],
)
def test_numbers_that_would_break_timers_or_training_are_refused(
    tmp_path, capsys, section, key, value
):
    path = write(tmp_path, f"{GOOD}{section}:\n  {key}: {value}\n".encode())
    with pytest.raises(ConfigError, match=rf"{section}\.{key}"):
        load_params(path)
    code, err = check(capsys, path)
    assert code == 2 and err.count("\n") == 1


@pytest.mark.parametrize("other", ["rem", "Rem ", " REM", "Rem"])
def test_names_that_differ_only_in_case_or_spaces_are_one_character(other):
    with pytest.raises(ConfigError, match="Rem") as caught:
        parse_params({"characters": [{"name": "Rem"}, {"name": "Ram"}, {"name": other}]})
    expected = "listed twice" if other == "Rem" else "differ only in case or spaces"
    assert expected in str(caught.value)
    assert len(parse_params({"characters": [{"name": "Rem"}, {"name": "Ram"}]}).slugs) == 2


def test_names_that_would_share_a_slug_are_refused_so_no_slug_changes_when_one_is_added():
    before = parse_params({"characters": [{"name": "Kuroko Tetsuya"}]}).slugs
    with pytest.raises(ConfigError, match="would share the folder name 'kuroko_tetsuya'"):
        parse_params({"characters": [{"name": "Kuroko Tetsuya"}, {"name": "kuroko_tetsuya"}]})
    after = parse_params({"characters": [{"name": "Kuroko Tetsuya"}, {"name": "Kise"}]}).slugs
    assert after["Kuroko Tetsuya"] == before["Kuroko Tetsuya"] == "kuroko_tetsuya"


def test_a_warm_up_as_long_as_the_run_is_refused():
    with pytest.raises(ConfigError, match=r"train.warmup_epochs \(5\) must be less than"):
        parse_params({"characters": [{"name": "A"}], "train": {"epochs": 5, "warmup_epochs": 5}})
    assert parse_params({"characters": [{"name": "A"}], "train": {"epochs": 6, "warmup_epochs": 5}})
    # a checkpoint trained before the rule stores such a TrainConfig, and must still load
    assert TrainConfig(epochs=1, warmup_epochs=1).warmup_epochs == 1


def test_check_shows_control_characters_in_names_as_escapes(tmp_path, capsys):
    path = write(tmp_path, b'characters:\n  - name: "Alice\\nerror: forged"\n  - name: Bob\n')
    code = main(["check", "--params", str(path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "Alice\\x0aerror: forged" in out and "\nerror: forged" not in out


@pytest.mark.parametrize(
    ("section", "typed", "meant"),
    [
        ({"train": {"epoch": 3}}, "train.epoch", "train.epochs"),
        ({"trian": {}}, "trian", "train"),
        (
            {"review": {"signoff": {"timeout": 1}}},
            "review.signoff.timeout",
            "review.signoff.timeout_s",
        ),
        ({"characters": [{"name": "A", "nmae": "B"}]}, "characters.0.nmae", "characters.0.name"),
    ],
)
def test_a_misspelt_key_is_refused_with_the_key_it_resembles(section, typed, meant):
    with pytest.raises(ConfigError) as refused:
        parse_params({"characters": [{"name": "A"}], **section})
    message = str(refused.value)
    assert f"unknown key '{typed}' (did you mean '{meant}'?" in message
    assert "comments of the repository's params.yaml" in message


def test_an_unknown_key_like_no_known_one_gets_no_guess():
    with pytest.raises(ConfigError) as refused:
        parse_params({"characters": [{"name": "A"}], "collect": {"zzz": 1}})
    assert "unknown key 'collect.zzz' (every key is described" in str(refused.value)


def test_a_section_left_out_gets_the_values_of_the_shipped_params_yaml():
    """README's "your own data" example writes only a few sections: the others (train's
    recipe above all) must be the ones the README's figures were measured with."""
    import yaml

    shipped = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    full = parse_params(shipped)
    bare = parse_params({"characters": shipped["characters"]})
    for section in full.model_fields:
        assert getattr(bare, section) == getattr(full, section), section
    # a checkpoint's stored config still reads with the defaults it was saved under
    old = TrainConfig()
    assert old.neck == "none" and old.flip_test is False and old.append_features == "none"
    assert full.train.append_features == "trained"
