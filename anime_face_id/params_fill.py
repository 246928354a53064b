"""The params.yaml keys DVC needs, and filling in the ones a short params file leaves out.

The code gives every setting a default, so a params.yaml of a few sections loads. DVC does
not: a stage whose `params:` in dvc.yaml names a key the file lacks stops `dvc repro` with
"Parameters '...' are missing", and only when that stage's turn comes (after the
downloads and crops before it). So a stage checks first (``missing_keys``), and
``fill_text`` writes the missing keys in with their defaults, keeping everything the file
already says, its comments included.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import NamedTuple

import yaml

from anime_face_id.config import Params, read_params_text

PARAMS_FILE = "params.yaml"


def dvc_param_keys(dvc_yaml: Path, params_file: str = PARAMS_FILE) -> list[str]:
    """The dotted keys of ``params_file`` that the stages of ``dvc_yaml`` read, in order;
    none when there is no such file (a project run without DVC)."""
    try:
        pipeline = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []  # DVC itself reports a broken dvc.yaml
    stages = pipeline.get("stages") if isinstance(pipeline, dict) else None
    keys: list[str] = []
    for stage in stages.values() if isinstance(stages, dict) else []:
        keys += _stage_keys(stage, params_file)
    return list(dict.fromkeys(keys))


def _stage_keys(stage: object, params_file: str) -> list[str]:
    if not isinstance(stage, dict):
        return []
    body = stage.get("do") if isinstance(stage.get("do"), dict) else stage  # foreach/matrix
    entries = body.get("params", [])
    keys: list[str] = []
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, str) and "${" not in entry:  # an interpolated key is DVC's
            keys.append(entry)
        elif isinstance(entry, dict):  # {other_file.yaml: [keys]}
            named = entry.get(params_file)
            keys += [str(k) for k in named if "${" not in str(k)] if isinstance(named, list) else []
    return keys


def _has(data: object, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def has_default(dotted: str) -> bool:
    try:
        default_value(dotted)
    except KeyError:
        return False
    return True


def missing_keys(data: object, keys: list[str]) -> list[str]:
    """The ``keys`` that ``data`` lacks; a key under one that is missing too is left out
    (``crop`` missing covers ``crop.margin``)."""
    missing = [key for key in keys if not _has(data, key)]
    return [key for key in missing if not any(key.startswith(f"{m}.") for m in missing)]


def dvc_missing_keys(params_path: Path) -> list[str]:
    """The keys dvc.yaml's stages read that params.yaml lacks; none for a params file
    other than the project's params.yaml (DVC reads that one) or a project without DVC."""
    params_path = Path(params_path)
    if params_path.name != PARAMS_FILE:
        return []
    keys = dvc_param_keys(params_path.parent / "dvc.yaml")
    if not keys:
        return []
    return missing_keys(yaml.safe_load(read_params_text(params_path)), keys)


def default_value(dotted: str) -> object:
    """The value the code uses for a key params.yaml leaves out (JSON-like)."""
    section, *rest = dotted.split(".")
    field = Params.model_fields.get(section)
    if field is None or field.is_required():
        raise KeyError(f"{dotted} has no default: set it in {PARAMS_FILE}")
    value: object = field.get_default(call_default_factory=True)
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    for part in rest:
        if not isinstance(value, dict) or part not in value:
            raise KeyError(f"{dotted} is not a setting the code knows")
        value = value[part]
    return value


def _merged(data: dict, defaults: dict[str, object]) -> dict:
    merged = yaml.safe_load(yaml.safe_dump(data))  # a deep copy
    for dotted, value in defaults.items():
        *parents, last = dotted.split(".")
        place = merged
        for part in parents:
            place = place.setdefault(part, {})
        place[last] = value
    return merged


def _block(mapping: dict, indent: str) -> str:
    text = yaml.safe_dump(mapping, sort_keys=False, default_flow_style=False)
    return "".join(indent + line if line.strip() else line for line in text.splitlines(True))


def _section_line(lines: list[str], section: str) -> int | None:
    for number, line in enumerate(lines):
        if line.rstrip("\n").split("#")[0].rstrip() == f"{section}:":
            return number
    return None


def _child_indent(lines: list[str], after: int) -> str:
    for line in lines[after + 1 :]:
        stripped = line.lstrip(" ")
        if stripped.strip() and not stripped.startswith("#"):
            indent = line[: len(line) - len(stripped)]
            return indent or "  "
    return "  "


def _inserted(text: str, data: dict, defaults: dict[str, object]) -> str | None:
    """``text`` with the missing keys written in: whole sections at the end, keys of a
    section under its heading. None where the file's layout is not the plain block style
    this can edit (a flow-style section, a deeper key)."""
    lines = text.splitlines(True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    if lines and lines[-1].strip() == "...":  # an explicit end of the document
        return None
    sections: dict[str, dict] = {}  # section: the keys to add to it, or the whole of it
    for dotted, value in defaults.items():
        section, *rest = dotted.split(".")
        if len(rest) > 1:
            return None
        if rest:
            sections.setdefault(section, {})[rest[0]] = value
        else:
            sections[section] = value
    appended = ""
    for section, keys in sections.items():
        if section not in data:
            appended += _block({section: keys}, "")
            continue
        heading = _section_line(lines, section)
        if heading is None or not isinstance(data.get(section), dict):
            return None
        lines.insert(heading + 1, _block(keys, _child_indent(lines, heading)))
    edited = "".join(lines) + appended
    return edited.replace("\r\n", "\n").replace("\n", "\r\n") if "\r\n" in text else edited


def _parsed(text: str) -> object:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


class Filled(NamedTuple):
    text: str
    added: list[str]
    rewritten: bool  # written out again: its comments are gone


def fill_text(text: str, keys: list[str]) -> Filled:
    """params.yaml's ``text`` with every key of ``keys`` it lacks added at its default. The
    file's own keys, values, order and comments are kept; where its layout cannot be
    edited in place it is written out again, without its comments."""
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict) or any(v is None for v in data.values()):
        raise ValueError(f"{PARAMS_FILE} is not a mapping of sections")
    defaults = {}
    for key in missing_keys(data, keys):
        with contextlib.suppress(KeyError):  # a key no setting has: missing_message names it
            defaults[key] = default_value(key)
    if not defaults:
        return Filled(text, [], False)
    expected = _merged(data, defaults)
    edited = _inserted(text, data, defaults)
    added = list(defaults)
    if edited is not None and _parsed(edited) == expected:
        return Filled(edited, added, False)
    return Filled(yaml.safe_dump(expected, sort_keys=False, allow_unicode=True), added, True)


def _listed(keys: list[str]) -> str:
    return ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")


def missing_message(missing: list[str], params: str = PARAMS_FILE) -> str:
    unknown = [key for key in missing if not has_default(key)]
    fillable = [key for key in missing if key not in unknown]
    parts = []
    if fillable:
        parts.append(
            f"{params} lacks {_listed(fillable)}, which the stages in dvc.yaml read (DVC "
            "would stop at the first stage that needs one). Run `.venv/bin/anime-face-id "
            "check --fill` to write them in with their default values, or add them yourself."
        )
    if unknown:
        parts.append(
            f"dvc.yaml's stages read {_listed(unknown)}, which this project has no setting "
            f"for ({params} cannot hold it): take it out of the stage's params in dvc.yaml."
        )
    return " ".join(parts)
