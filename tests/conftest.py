from __future__ import annotations

from pathlib import Path

import pytest

# No telemetry or update checks from Prefect processes started by tests.
__import__("os").environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(
    __import__("os").environ.get("ANIME_FACE_ID_SHARED", REPO.parent / "shared")
).resolve()


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
