from __future__ import annotations

import os
from pathlib import Path

import pytest

# Flows that tests run in this process, and the processes it forks afterwards, behave as in
# the stages: forked children forget the Prefect services they inherit (flows/_fork.py).
import flows  # noqa: F401

# No telemetry or update checks from Prefect processes started by tests.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ANIME_FACE_ID_SHARED", REPO.parent / "shared")).resolve()

# The files that take minutes, longest first (seconds in one process on the 2-core CI
# machine: 472, 392, 351, 317, 175, 139, 137, 136, 114, 113). `make test` runs files on two
# workers in collection order (pytest-xdist's loadfile without its reordering by test
# count, which put these last): started first, they leave the short files to fill in
# around them instead of one worker waiting alone on a long file at the end.
SLOWEST_FIRST = (
    "test_readme_commands.py",
    "test_pipeline_train.py",
    "test_benchmark_incremental.py",
    "test_pipeline_flow.py",
    "test_dask.py",
    "test_serve.py",
    "test_pipeline_google.py",
    "test_distributed.py",
    "test_pipeline_folder.py",
    "test_postgres.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: place for place, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept


@pytest.fixture(autouse=True)
def _environment_restored():
    """Each test leaves os.environ as it found it. MLflow 3's ``set_tracking_uri`` also
    writes MLFLOW_TRACKING_URI into os.environ, so a test that loads a model in this process
    sent every later project on the same worker (which copies os.environ) to its database.
    Only the variables that changed are put back (pytest's own PYTEST_CURRENT_TEST aside),
    so a test that changes nothing costs no write."""
    saved = dict(os.environ)
    yield
    for name in set(os.environ) | set(saved):
        if name == "PYTEST_CURRENT_TEST" or os.environ.get(name) == saved.get(name):
            continue
        if name in saved:
            os.environ[name] = saved[name]
        else:
            del os.environ[name]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"the shared test data folder is missing: {SHARED} (set ANIME_FACE_ID_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def cascade_path(shared_dir: Path) -> Path:
    return shared_dir / "detector" / "lbpcascade_animeface.xml"


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory):
    """A real Prefect server for the session; yields its API URL and a matching env."""
    from tests.support.prefect_server import prefect_server, quiet_prefect_env

    home = tmp_path_factory.mktemp("prefect-home")
    with prefect_server(home) as url:
        yield {"PREFECT_API_URL": url, **quiet_prefect_env(home)}


@pytest.fixture(scope="session")
def _harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def prefect_harness(_harness):
    """Flows in this process (and the processes they start) report to a test server."""
    yield
