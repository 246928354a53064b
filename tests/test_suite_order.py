"""The suite's own scheduling: the files named as the slowest exist (a renamed file would
silently fall back to the end of the run) and collection puts them first, in order."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO, SLOWEST_FIRST


def test_the_slowest_files_exist() -> None:
    missing = [name for name in SLOWEST_FIRST if not (REPO / "tests" / name).is_file()]
    assert missing == []


def test_collection_starts_with_the_slowest_files_in_order() -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    files = []
    for line in listed:
        name = line.partition("::")[0].rpartition("/")[2]
        if "::" in line and (not files or files[-1] != name):
            files.append(name)
    assert files[: len(SLOWEST_FIRST)] == list(SLOWEST_FIRST)
    assert len(files) == len(set(files)), "a file's tests were split apart"
