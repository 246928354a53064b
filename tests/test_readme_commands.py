"""Every command the README shows works when pasted into a fresh shell (issue 12).

The commands are read from README.md itself (``tests/support/readme.py``). Each one is either
run here, literally, with ``bash -c`` in a shell that has nothing but PATH=/usr/bin:/bin and a
HOME, in a copy of this checkout set up as `make setup` leaves it; or started here and probed
until it answers (servers); or named with the test that runs it elsewhere and why (the
internet, hours of CPU, the suite itself). A README command that is in none of these fails
the first test, so the README cannot gain an unchecked command.

Only two things are changed in what runs: the project uses small generated characters (the
default params.yaml collects 40 characters from Google Images), and a server's port is a free
one (through make's own variables, or the number in the command) so that the test never
collides with a server already running.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from flows import warm
from tests.support.processes import answers, free_port
from tests.support.project import Project, prefect_post
from tests.support.readme import readme_commands
from tests.support.synthetic import PIPELINE_NAMES, configure_small_pipeline, write_picture_folder

REPO = Path(__file__).resolve().parents[1]
FRESH_PATH = "/usr/bin:/bin"

# Run here, literally, in this order (the order a reader follows).
RUN = [
    ".venv/bin/anime-face-id check",
    "make pipeline",
    ".venv/bin/dvc repro",
    ".venv/bin/python -m flows.pipeline",
    "make help",
    "source .venv/bin/activate",
    ".venv/bin/dvc metrics show",
    ".venv/bin/dvc metrics show metrics/eval.json",
    ".venv/bin/dvc plots show",
    ".venv/bin/dvc exp run -S train.lr=1e-4 -S train.margin=0.2",
    ".venv/bin/dvc exp run",
    ".venv/bin/dvc metrics diff",
    ".venv/bin/dvc exp show --only-changed --drop 'Created|.*/.*'",
    ".venv/bin/dvc exp show --drop '.*' --keep 'Experiment|train\\.lr$|identification_p1|open_p1'",
    ".venv/bin/anime-face-id identify picture.jpg other.png",
    ".venv/bin/anime-face-id identify --json --top 5 picture.jpg",
    ".venv/bin/dvc repro split",
    ".venv/bin/anime-face-id gallery rebuild",
    ".venv/bin/anime-face-id gallery info",
    ".venv/bin/dvc repro review",
    ".venv/bin/anime-face-id gallery rebuild --source curated",
    ".venv/bin/dvc repro --single-item package",
    "make lint",
    "make prefect-ui",
    "make prefect-start",
    "make prefect-stop",
]
# Started here until they answer, then stopped (with what answers, and how the port is set).
SERVE = [
    "make serve",
    "make serve MODEL=models:/anime-face-id/3 SERVE_PORT=5002",
    'PATH="$PWD/.venv/bin:$PATH" .venv/bin/mlflow models serve -m models:/anime-face-id@champion '
    "--env-manager local -h 127.0.0.1 -p 5001",
    "make review",
    "make app",
    "make mlflow-ui",
    '.venv/bin/python -m flows.pipeline --serve --cron "0 3 * * 1"',
]
CURL = (
    'printf \'{"dataframe_split": {"columns": ["image"], "data": [["%s"]]}}\' '
    '"$(base64 -w0 picture.jpg)" |\n'
    "  curl -s -X POST http://127.0.0.1:5001/invocations \\\n"
    "       -H 'Content-Type: application/json' --data-binary @-"
)
# Run by another test, with the reason it is not run here.
ELSEWHERE = {
    ".venv/bin/anime-face-id check --fill": (
        "tests/test_params_fill.py::test_the_readme_own_data_params_run_after_check_fill",
        "the test fills the README's own-data example and runs DVC on it",
    ),
    "make test": (".ci/run", "the suite this test belongs to"),
    "make test-fast": (".ci/run", "the same pytest as make test, without slow and browser tests"),
    ".venv/bin/python benchmarks/quality.py": (
        "tests/test_benchmark_quality.py::test_benchmark_trains_each_seed_and_compares_with_imagenet",
        "about 12 minutes per seed on 2 cores; the test runs the script on a small folder",
    ),
    ".venv/bin/python benchmarks/quality.py my_crops/ --seeds 0 1 2 -S train.epochs=20 "
    "--json q.json": (
        "tests/test_benchmark_quality.py::test_benchmark_trains_each_seed_and_compares_with_imagenet",
        "my_crops/ is the reader's folder; the test passes a folder, seeds, -S and --json",
    ),
    ".venv/bin/python benchmarks/quality.py --split-seeds 0 1 2 --seeds 0 1": (
        "tests/test_benchmark_quality.py::test_several_held_out_sets_are_measured_and_pooled",
        "six trainings of about 10 minutes; the test measures two sets of two seeds, tiny",
    ),
    ".venv/bin/python benchmarks/rescoring.py DIR/seed-*/project": (
        "tests/test_benchmark_rescoring.py::test_script_counts_each_rule_on_stored_embeddings",
        "DIR is a quality.py --workdir; the test writes two such projects and runs the script",
    ),
    ".venv/bin/python benchmarks/input_views.py DIR/seed-*/project": (
        "tests/test_benchmark_rescoring.py::"
        "test_the_plain_view_names_what_the_pipeline_embedding_names",
        "DIR is a quality.py --workdir; the test runs the script on a generated project",
    ),
    ".venv/bin/python benchmarks/unknown_faces.py DIR/split-*/seed-*/project": (
        "tests/test_benchmark_unknown_faces.py::test_script_counts_every_face_once_per_rule",
        "DIR is a quality.py --workdir; the test writes two such projects and runs the script",
    ),
    ".venv/bin/python benchmarks/thresholds.py DIR/split-*/seed-*/project": (
        "tests/test_benchmark_thresholds.py::test_script_prints_each_way_over_the_projects",
        "DIR is a quality.py --workdir; the test writes two such projects and runs the script",
    ),
    ".venv/bin/python benchmarks/quality.py --split-seeds 0 1 2 --seeds 0 1 --workdir runs/": (
        "tests/test_benchmark_quality.py::test_several_held_out_sets_are_measured_and_pooled",
        "six trainings of about 10 minutes; the test measures two sets of two seeds, tiny",
    ),
    ".venv/bin/python benchmarks/reevaluate.py runs/split-*/seed-*/project "
    "-S train.append_features=none": (
        "tests/test_benchmark_reevaluate.py::"
        "test_the_setting_trained_with_gives_the_stored_figures_and_another_changes_the_vectors",
        "runs/ is a quality.py --workdir; the test keeps a tiny run and re-evaluates it",
    ),
    ".venv/bin/python benchmarks/web_pictures.py --seeds 0 1 2": (
        "tests/test_benchmark_web_pictures.py::"
        "test_benchmark_names_new_pictures_of_characters_trained_from_scraped_ones",
        "about 18 minutes per seed on 2 cores; the test runs the script on generated pictures",
    ),
    ".venv/bin/python -m flows.detector_average --out FILE A.pt B.pt ...": (
        "tests/test_model_soup.py::test_the_command_writes_the_mean_and_records_an_mlflow_run",
        "FILE and A.pt B.pt are the reader's; the test averages two weights files it writes",
    ),
    ".venv/bin/python benchmarks/detection.py": (
        "tests/test_benchmark_detection.py::test_detection_benchmark_compares_both_detectors",
        "minutes on the whole of ../shared; the test runs the script on a few of its pictures",
    ),
    ".venv/bin/python benchmarks/detector_views.py": (
        "tests/test_benchmark_detector_views.py::"
        "test_views_are_counted_in_turn_and_by_workers_with_the_ratio",
        "a minute or two on the whole of ../shared; the test runs the script on six frames",
    ),
    ".venv/bin/python benchmarks/incremental.py --whole": (
        "tests/test_benchmark_incremental.py::test_incremental_benchmark_measures_both_modes",
        "ten minutes; the test runs the script with --whole on 14 pictures per character and "
        "one epoch",
    ),
    "make detector": (
        "tests/test_centernet.py::test_detector_command_trains_and_records_an_mlflow_run",
        "about 85 minutes of CPU; the test runs the same command for two steps",
    ),
    ".venv/bin/dvc remote add -d store /mnt/shared/anime-face-id": (
        "tests/test_dvc_remote.py::test_push_then_pull_in_a_second_clone_gives_the_same_data_and_status",
        "the remote is the reader's; the test adds a local one",
    ),
    'git add .dvc/config dvc.lock && git commit -m "data and its remote"': (
        "tests/test_dvc_remote.py::test_push_then_pull_in_a_second_clone_gives_the_same_data_and_status",
        "commits in the reader's repository; the test commits in its own",
    ),
    ".venv/bin/dvc push": (
        "tests/test_dvc_remote.py::test_push_then_pull_in_a_second_clone_gives_the_same_data_and_status",
        "needs a remote; the test pushes to a local one",
    ),
    ".venv/bin/dvc pull": (
        "tests/test_dvc_remote.py::test_push_then_pull_in_a_second_clone_gives_the_same_data_and_status",
        "on a second clone; the test pulls into one",
    ),
    ".venv/bin/dvc pull --with-deps balance": (
        "tests/test_dvc_remote.py::test_push_then_pull_in_a_second_clone_gives_the_same_data_and_status",
        "on a second clone; the test runs exactly this",
    ),
    ".venv/bin/dvc status": (
        "tests/test_dvc_remote.py::test_push_then_pull_in_a_second_clone_gives_the_same_data_and_status",
        "compared between two clones there",
    ),
    ".venv/bin/pip install dvc-s3": (
        "tests/test_dvc_remote.py::test_push_then_pull_in_a_second_clone_gives_the_same_data_and_status",
        "needs the package index; the test's remote is local and needs no plugin",
    ),
    ".venv/bin/dvc remote modify --local store ...": (
        "tests/test_dvc_remote.py::test_push_then_pull_in_a_second_clone_gives_the_same_data_and_status",
        "a placeholder for the reader's credentials",
    ),
    "make postgres-server": (".ci/run", "installs a Debian package; CI runs it before the tests"),
    "sudo -u postgres createuser --pwprompt anime": (
        "tests/test_postgres.py::test_prefect_and_mlflow_keep_their_runs_in_postgresql",
        "the reader's server and password; the test makes its own cluster with this user",
    ),
    "sudo -u postgres createdb -O anime prefect && sudo -u postgres createdb -O anime mlflow": (
        "tests/test_postgres.py::test_prefect_and_mlflow_keep_their_runs_in_postgresql",
        "the test creates the same two databases in its own cluster",
    ),
    "PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://anime:PASSWORD@127.0.0.1:5432/"
    "prefect \\\n  .venv/bin/prefect server start --host 127.0.0.1 --port 4200": (
        "tests/test_postgres.py::test_prefect_and_mlflow_keep_their_runs_in_postgresql",
        "the test starts it with this setting, on its own cluster and port",
    ),
    ".venv/bin/mlflow server --backend-store-uri postgresql+psycopg2://anime:PASSWORD@127.0.0.1:"
    "5432/mlflow \\\n  --artifacts-destination /shared/mlflow-artifacts --host 127.0.0.1 "
    "--port 5000": (
        "tests/test_postgres.py::test_prefect_and_mlflow_keep_their_runs_in_postgresql",
        "the test starts it with these options, on its own cluster, directory and port",
    ),
    ".venv/bin/dvc exp run -S train.processes=2": (
        "tests/test_distributed.py::test_two_processes_train_the_stage_like_one",
        "the test sets train.processes=2 and runs the train stage",
    ),
    ".venv/bin/torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint "
    "HOST:29400 -m flows.train": (
        "tests/test_distributed.py::test_two_processes_train_the_stage_like_one",
        "needs two machines; the test runs torchrun on one (the stage starts it)",
    ),
    ".venv/bin/dvc commit train": (
        "tests/test_distributed.py::test_two_processes_train_the_stage_like_one",
        "after a torchrun started by hand; the test's run goes through dvc repro",
    ),
    ".venv/bin/python benchmarks/scale.py": (
        "tests/test_benchmark_scale.py::test_scale_benchmark_compares_dask_workers_with_one_process",
        "minutes on 120 pictures; the test runs the script on 9",
    ),
    ".venv/bin/mlflow server": (
        "tests/test_pipeline_train.py::test_tracking_to_a_real_mlflow_server_and_failing_fast_without_one",
        "the README says to run it with a database of one's own",
    ),
}
# Not commands: placeholders and names in prose.
NOT_COMMANDS = {
    ".venv/bin/<tool>": "a placeholder",
    "make <target>": "a placeholder",
    ".venv/bin/": "a prefix in prose",
    ".venv/bin/python": "the interpreter, named",
    "sh flows/run <stage>": "a placeholder (tests/test_fresh_shell.py runs the launcher)",
    ".venv/bin/mlflow models serve": "named as the form that fails without make (uvicorn on PATH)",
    ".venv/bin/python -m flows.detector ...": "the same command as the interrupted run (its forms are run above)",
}


def test_every_readme_command_is_checked() -> None:
    commands = {c.text for c in readme_commands((REPO / "README.md").read_text())}
    known = set(RUN) | set(SERVE) | {CURL} | set(ELSEWHERE) | set(NOT_COMMANDS)
    assert commands - known == set(), "README commands that no test checks"
    assert known - commands == set(), "checked commands that the README no longer shows"


@pytest.mark.parametrize("command", sorted(ELSEWHERE))
def test_the_tests_named_for_commands_run_elsewhere_exist(command: str) -> None:
    where, _why = ELSEWHERE[command]
    path, _, name = where.partition("::")
    assert (REPO / path).is_file(), where
    if name:
        assert f"def {name}(" in (REPO / path).read_text(), where


def test_comments_and_continuations_are_read_as_a_reader_copies_them() -> None:
    text = (
        "```bash\n"
        "make a   # comment\n"
        "echo '# not a comment' \"x # y\" |\n"
        "  cat \\\n"
        "   -n\n"
        "# a whole comment line\n"
        "```\n"
        "Then `make b` or `.venv/bin/c --x`, not `other`.\n"
        'With `PATH="$PWD/x:$PATH" .venv/bin/d`, not `A=1 other` or `PATH=x`.\n'
        "```\n"
        "make not-bash\n"
        "```\n"
    )
    found = [(c.text, c.line, c.inline) for c in readme_commands(text)]
    assert found == [
        ("make a", 2, False),
        ("echo '# not a comment' \"x # y\" |\n  cat \\\n   -n", 3, False),
        ("make b", 8, True),
        (".venv/bin/c --x", 8, True),
        ('PATH="$PWD/x:$PATH" .venv/bin/d', 9, True),
    ]


# ------------------------------------------------------------------ the commands, run


def assert_plots_draw_offline(page_path: Path) -> None:
    """The page `dvc plots show` wrote draws every chart with no network, each picture once."""
    from tests.support.browser import chromium_page

    html = page_path.read_text()
    assert "cdn.jsdelivr" not in html and "vegaEmbed" in html
    with chromium_page(page_path.as_uri(), 1280, 900, 60_000) as page:
        page.wait_for_function(
            "() => document.querySelectorAll('.vega-embed canvas, .vega-embed svg').length >= 4"
        )
        sources = page.evaluate("() => Array.from(document.images, image => image.src)")
        assert len(sources) == len(set(sources)) == 4, sources
        artifacts = REPO / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        page.screenshot(path=str(artifacts / "dvc-plots.png"), full_page=True)


def copy_checkout(destination: Path) -> Path:
    """The files a clone of this checkout has (tracked, and new files not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (item.decode() for item in listed)):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def installed_venv() -> Path:
    """The virtualenv running these tests, as `make setup` made it (its stamp is there)."""
    venv = Path(sys.prefix)
    if sys.prefix == sys.base_prefix or not (venv / ".installed").exists():
        pytest.skip("not run from a virtualenv made by `make setup`")
    return venv


class Shell:
    """A fresh shell in the project: PATH=/usr/bin:/bin, its own HOME, nothing activated."""

    def __init__(self, root: Path, home: Path, extra: dict[str, str]):
        self.root = root
        self.env = {
            "PATH": FRESH_PATH,
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "DVC_NO_ANALYTICS": "1",
            # who the reader is, for the commits dvc exp run makes
            "GIT_AUTHOR_NAME": "reader",
            "GIT_AUTHOR_EMAIL": "reader@example.invalid",
            "GIT_COMMITTER_NAME": "reader",
            "GIT_COMMITTER_EMAIL": "reader@example.invalid",
            **extra,
        }
        self.ran: list[str] = []

    def run(self, command: str, timeout: float = 900, **env: str) -> str:
        process = subprocess.run(
            ["bash", "-c", command],
            cwd=self.root,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        output = process.stdout + process.stderr
        assert process.returncode == 0, (
            f"$ {command}\n(exit {process.returncode})\n{output[-6000:]}"
        )
        self.ran.append(command)
        return output

    @contextmanager
    def serving(
        self, command: str, health: str, timeout: float = 180, **env: str
    ) -> Iterator[None]:
        """``command`` running until ``health`` answers 200 (or, for a text, until its log
        says it), then stopped with its whole process group (make starts children)."""
        log_path = self.root.parent / f"serve-{len(self.ran)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                ["bash", "-c", command],
                cwd=self.root,
                env={**self.env, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                deadline = time.monotonic() + timeout
                while not self._ready(health, log_path):
                    tail = log_path.read_text(errors="replace")[-4000:]
                    assert process.poll() is None, f"$ {command} exited:\n{tail}"
                    assert time.monotonic() < deadline, f"$ {command} never answered:\n{tail}"
                    time.sleep(0.5)
                self.ran.append(command)
                yield
            finally:
                stop_group(process)

    @staticmethod
    def _ready(health: str, log_path: Path) -> bool:
        if health.startswith("http"):
            return answers(health)
        return health in log_path.read_text(errors="replace")


def scheduled_runs(api: str, deployment_id: str) -> list[dict]:
    return prefect_post(
        api,
        "flow_runs/filter",
        {
            "deployments": {"id": {"any_": [deployment_id]}},
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
        },
    )


def stop_group(process: subprocess.Popen) -> None:
    import signal

    for sig, wait in ((signal.SIGINT, 15), (signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=wait)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


@pytest.fixture(scope="module")
def reader(tmp_path_factory) -> Iterator[Shell]:
    """A copy of the checkout with `.venv` from `make setup`, configured for generated data
    (the README's own-data path), and a fresh shell in it. No Prefect server is configured,
    as on a newcomer's machine: `make pipeline` starts the project's own (on a free port,
    PREFECT_PORT, and no analytics), and it is stopped at the end whatever happens."""
    venv = installed_venv()
    where = tmp_path_factory.mktemp("readme")
    root = copy_checkout(where / "anime-face-id")
    (root / ".venv").symlink_to(venv, target_is_directory=True)
    # make's setup target compares pyproject.toml and constraints.txt with the venv's stamp;
    # the copies keep their times, older than an install made from them.
    stamp = (venv / ".installed").stat().st_mtime
    for name in ("pyproject.toml", "constraints.txt"):
        os.utime(root / name, (stamp - 60, stamp - 60))

    pictures = write_picture_folder(where / "pictures", PIPELINE_NAMES, count=16)
    project = Project(root)
    configure_small_pipeline(
        project,
        pictures,
        epochs=2,
        batches=4,
        evaluate={"grid_queries": 2, "baseline": False},
        identify={"device": "cpu"},
    )
    # One character waits for the README's "adding a character without retraining".
    project.set_params(characters=[{"name": name} for name in PIPELINE_NAMES[:-1]])
    first, second = sorted((pictures / PIPELINE_NAMES[0]).iterdir())[:2]
    shutil.copy(first, root / "picture.jpg")
    shutil.copy(second, root / "other.png")

    home = where / "home"
    home.mkdir()
    own_server = {"PREFECT_PORT": str(free_port()), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    shell = Shell(root, home, own_server)
    for command in ("git init -q", "git add -A", "git commit -qm 'a fresh clone'"):
        shell.run(command)
    shell.ran.clear()
    try:
        yield shell
    finally:
        subprocess.run(["make", "prefect-stop"], cwd=root, env=shell.env, capture_output=True)


@pytest.mark.slow
@pytest.mark.browser
def test_readme_commands_work_when_pasted_into_a_fresh_shell(reader: Shell) -> None:
    root = reader.root
    new_character = PIPELINE_NAMES[-1]

    # Quick start and own data
    assert "akane_red" in reader.run(".venv/bin/anime-face-id check")  # each slug listed
    prefect_port = reader.env["PREFECT_PORT"]
    assert f"starting the project's Prefect server on http://127.0.0.1:{prefect_port}" in (
        reader.run("make pipeline")
    )
    assert json.loads((root / "metrics" / "eval.json").read_text())["val"]["map_at_r"] >= 0
    reader.run("git add -A && git commit -qm 'first model'")
    again = reader.run(".venv/bin/dvc repro")
    assert "Running stage" not in again, again  # "nothing re-runs"
    reader.run(".venv/bin/python -m flows.pipeline")
    assert "make review" in reader.run("make help")
    activated = reader.run("source .venv/bin/activate && command -v dvc")
    assert activated.strip().endswith("/bin/dvc") and activated.strip() != "/usr/bin/dvc"
    reader.ran[-1] = "source .venv/bin/activate"

    # Experiments, metrics and plots
    headline = reader.run(".venv/bin/dvc metrics show")
    assert "metrics/headline.json" in headline and "identification_p1" in headline
    assert max(map(len, headline.splitlines())) <= 120, headline  # a handful of columns
    assert "val.map_at_r" in reader.run(".venv/bin/dvc metrics show metrics/eval.json")
    reader.run(".venv/bin/dvc plots show")
    assert_plots_draw_offline(root / "dvc_plots" / "index.html")
    reader.run(".venv/bin/dvc exp run -S train.lr=1e-4 -S train.margin=0.2")
    reader.run(".venv/bin/dvc exp run")
    # In a terminal of 120 columns (DVC squeezes a table to the terminal's width and cuts
    # what does not fit with an ellipsis): every column whole.
    terminal = {"COLUMNS": "120"}
    diff = reader.run(".venv/bin/dvc metrics diff", **terminal)  # the experiment's numbers
    assert "metrics/headline.json" in diff and max(map(len, diff.splitlines())) <= 120, diff
    assert "…" not in diff, diff
    experiments = reader.run(
        ".venv/bin/dvc exp show --only-changed --drop 'Created|.*/.*'", **terminal
    )
    assert max(map(len, experiments.splitlines())) <= 120, experiments
    assert "…" not in experiments, experiments
    # --only-changed: the changed params, and the headline metrics the two runs disagree on
    # (on these tiny characters both may name every val face: identification_p1 then drops)
    headline_metrics = ("identification_p1", "map_at_r", "open_p1", "open_map_at_r", "eer")
    assert "train.lr" in experiments and "train.margin" in experiments, experiments
    assert any(metric in experiments for metric in headline_metrics), experiments
    chosen = reader.run(
        ".venv/bin/dvc exp show --drop '.*' --keep 'Experiment|train\\.lr$|identification_p1|open_p1'",
        **terminal,
    )
    header = next(line for line in chosen.splitlines() if "Experiment" in line)
    assert header.split() == ["Experiment", "identification_p1", "open_p1", "train.lr"], chosen

    # Identifying characters in new pictures
    text = reader.run(".venv/bin/anime-face-id identify picture.jpg other.png")
    assert "picture.jpg:" in text and "other.png:" in text
    answer = json.loads(reader.run(".venv/bin/anime-face-id identify --json --top 5 picture.jpg"))
    assert answer["schema"] == "anime-face-id/identify/v1"
    assert answer["pictures"][0]["status"] in ("ok", "no_face")

    # Adding a character without retraining: "1. add the character to params.yaml"
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["characters"].append({"name": new_character})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    reader.run(".venv/bin/dvc repro split")
    reader.run(".venv/bin/anime-face-id gallery rebuild")
    assert new_character in reader.run(".venv/bin/anime-face-id gallery info")
    reader.run(".venv/bin/dvc repro review")
    reader.run(".venv/bin/anime-face-id gallery rebuild --source curated")
    assert new_character in reader.run(".venv/bin/anime-face-id gallery info")
    reader.run(".venv/bin/dvc repro --single-item package")

    # Serving: the champion, then version 3 (pipeline, experiment, re-package)
    port = free_port()
    with reader.serving("make serve", f"http://127.0.0.1:{port}/ping", SERVE_PORT=str(port)):
        served = json.loads(reader.run(CURL.replace("5001", str(port))))
        assert served["predictions"][0]["status"] in ("ok", "no_face")
        reader.ran[-1] = CURL
    port = free_port()
    other = "make serve MODEL=models:/anime-face-id/3 SERVE_PORT=5002"
    with reader.serving(other.replace("5002", str(port)), f"http://127.0.0.1:{port}/ping"):
        reader.ran[-1] = other
    bare = SERVE[2]  # mlflow itself, .venv/bin first on PATH for it alone
    port = free_port()
    with reader.serving(bare.replace("5001", str(port)), f"http://127.0.0.1:{port}/ping"):
        served = json.loads(reader.run(CURL.replace("5001", str(port))))
        assert served["predictions"][0]["status"] in ("ok", "no_face")
        reader.ran[-2:] = [bare, CURL]

    # The web apps and the UIs
    for command, variable, health in (
        ("make review", "REVIEW_PORT", "/_stcore/health"),
        ("make app", "APP_PORT", "/_stcore/health"),
        ("make mlflow-ui", "MLFLOW_PORT", "/health"),
    ):
        port = free_port()
        with reader.serving(command, f"http://127.0.0.1:{port}{health}", **{variable: str(port)}):
            pass
    # The project's own Prefect server, which `make pipeline` started in the background
    # (its data under the project, the UI on), still up for the UI and the deployment.
    api = f"http://127.0.0.1:{prefect_port}/api"
    assert f"http://127.0.0.1:{prefect_port}" in reader.run("make prefect-ui")
    assert answers(f"{api}/health") and answers(f"http://127.0.0.1:{prefect_port}/")
    assert (root / ".prefect" / "prefect.db").is_file()
    assert "starting" not in reader.run("make prefect-start")  # already running
    # every stage's runs, from make, dvc and flows.pipeline alike, are kept there
    flows = {flow["name"] for flow in prefect_post(api, "flows/filter", {})}
    assert {"collect", "crop", "train", "evaluate", "package", "pipeline"} <= flows, flows
    deployment = '.venv/bin/python -m flows.pipeline --serve --cron "0 3 * * 1"'
    with reader.serving(deployment, "being served"):
        found = prefect_post(api, "deployments/filter", {})
        served = next((d for d in found if d["name"] == "anime-face-id"), None)
        assert served is not None, found
        # and its cron makes runs: Mondays at 03:00 (the server's scheduler failed to
        # insert any under SQLAlchemy 2.1, and its logged error killed a server started
        # with `prefect server start --background`)
        deadline = time.monotonic() + 120
        while not (scheduled := scheduled_runs(api, served["id"])):
            assert time.monotonic() < deadline, (root / ".prefect" / "server.log").read_text()
            time.sleep(2)
        starts = [datetime.fromisoformat(run["expected_start_time"]) for run in scheduled]
        assert {(start.weekday(), start.hour, start.minute) for start in starts} == {(0, 3, 0)}
        assert answers(f"{api}/health")
    reader.run("make prefect-stop")
    assert not answers(f"{api}/health")
    assert not warm.is_running(root)  # the warm stage runner stopped with it

    reader.run("make lint")
    assert set(RUN) | set(SERVE) | {CURL} <= set(reader.ran)
