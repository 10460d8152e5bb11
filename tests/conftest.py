"""Shared fixtures: paths to the shared MAESTRO archives and throwaway copies of the project."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

# Every test, and every process a test starts, on one torch thread unless it asks for more: `make test`
# runs two workers on two cores, where torch's default pool (a thread a core) only spins against the
# other worker.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
FULL_ZIP = SHARED_DATA / "maestro-v3.0.0-asap-midi.zip"
TINY_ZIP = SHARED_DATA / "maestro-v3.0.0-asap-tiny-midi.zip"

# What a throwaway project copy needs: the code and the pipeline definition, never data.
PROJECT_FILES = ["dvc.yaml", ".dvcignore", "params.yaml", "pyproject.toml", "downloads.lock.json", "velocity"]


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread meanwhile: tiny models run fastest so, and on 2 shared cores more threads
    only spin against each other (and change float sums)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def single_threaded(monkeypatch) -> Iterator[None]:
    """One torch thread in a test and in the processes it starts, so that a run split across
    processes (kill, then resume) adds its floats as an uninterrupted one does:
    `pytestmark = pytest.mark.usefixtures("single_threaded")`."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with one_torch_thread():
        yield


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found: the shared MAESTRO archives sit in ../shared/data beside the repo (CI has them)")
    return path


@pytest.fixture(scope="session")
def tiny_zip() -> Path:
    """The 10-performance MAESTRO archive in ../shared/data."""
    return _require(TINY_ZIP)


@pytest.fixture(scope="session")
def full_zip() -> Path:
    """The 460-performance MAESTRO archive in ../shared/data."""
    return _require(FULL_ZIP)


@pytest.fixture(scope="session")
def tiny_raw(tiny_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny archive extracted once per session: its `maestro-v3.0.0/` folder (csv + MIDI)."""
    dest = tmp_path_factory.mktemp("tiny_raw")
    with zipfile.ZipFile(tiny_zip) as archive:
        archive.extractall(dest)
    return dest / "maestro-v3.0.0"


def deep_update(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def params_section(cls: type, name: str, **overrides: Any) -> Any:
    """Section `name` of the project's params.yaml as a `cls`, with `overrides` laid over it: the
    params dataclasses have no defaults of their own. `name` may be dotted (performance_rnn.train)."""
    from velocity.params import read_params, section

    values: Any = read_params(ROOT / "params.yaml")
    for part in name.split("."):
        values = values[part]
    return section(cls, name, {name: {**values, **overrides}})


def make_project(dest: Path, params: dict[str, Any] | None = None) -> Path:
    """Copy the project's code into `dest`, `git init` + `dvc init` it, and apply param overrides."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    if params:
        set_params(dest, params)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=dest, check=True, env=env)
    subprocess.run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], cwd=dest, check=True, env=env)
    return dest


def set_params(project: Path, overrides: dict[str, Any]) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump(deep_update(params, overrides), sort_keys=False))


def project_env(project: Path) -> dict[str, str]:
    """Environment for commands run inside a project copy: its own code first, this venv's `python`."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(project), "PATH": path}


def dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    """Run a real `dvc` command in `project`; fail the test with its output if it fails."""
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=project_env(project), capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


# A demo corpus small enough for tests: a few seconds per stage on 2 cores.
SMALL_DEMO = {"data": {"source": "demo", "demo_pieces": 20}}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh copy of the project on a small demo corpus."""
    return make_project(tmp_path / "project", SMALL_DEMO)


@pytest.fixture(scope="session")
def prefect_ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """One real `prefect server start` with its UI for the session (`prefect_server_process`): the flow
    runs of the tests' own process (`prefect_harness`) and of the commands they start report to it."""
    with prefect_server_process(tmp_path_factory.mktemp("prefect_server"), ui=True) as server:
        yield server


@pytest.fixture(scope="session")
def prefect_harness(prefect_ui_server: tuple[str, dict[str, str]]) -> Iterator[None]:
    """Flows run in the tests' own process report to the session's server (no network needed)."""
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api_url, _ = prefect_ui_server
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        yield
        APILogHandler().flush()  # the last logs in before the server stops


# --- the demo pipeline, run once through the Prefect flow ------------------------------------------

# A 100-piece demo corpus and models just big enough to beat the baselines in 200 steps
# (tests/test_evaluate.py says by how much); the Performance RNN tiny (its own tests train it).
DEMO_RUN: dict[str, Any] = {
    "data": {"source": "demo", "demo_pieces": 100},
    "extract": {"workers": 1},
    "vocab": {"velocity_hint": False},
    "windows": {"length": 64, "step": 32},
    "model": {"layers": 2, "heads": 4, "d_model": 64, "d_ff": 128, "dropout": 0.1, "aligned": True, "kind": "encoder-decoder"},
    "gbt": {"max_iter": 20, "max_train_notes": 1_000_000, "seed": 0},
    "train": {"batch_size": 16, "warmup": 50, "lr_factor": 0.5, "epochs": None, "max_steps": 200, "input_dropout": 0.75, "eval_every": 100,
              "checkpoint_every": 200, "device": "cpu", "ensemble": 1, "member_processes": 1},
    "evaluate": {"segments": 2, "segment_notes": 64},
    # The score model as the default one (encoder-only: its four decodings in evaluate take seconds, not minutes).
    "score_train": {"model": {"kind": "encoder"}, "train": {"epochs": None, "max_steps": 60, "notation_dropout": 0.25, "ensemble": 2}},
    "timing_train": {"model": {"layers": 1}, "train": {"epochs": None, "max_steps": 50, "eval_every": 25, "checkpoint_every": 50, "device": "cpu", "ensemble": 2}},
    "timing_tree": {"max_iter": 20},
    "performance_rnn": {
        "events": {"window": 32, "step": 32},
        "model": {"hidden_size": 16, "layers": 1},
        "train": {"epochs": None, "steps": 4, "batch_size": 4, "eval_every": 4, "checkpoint_every": 4, "val_windows": 4, "device": "cpu",
                  "nproc_per_node": 1},
        "evaluate": {"device": "cpu"},
    },
}  # fmt: skip
# The test files that read the demo run or talk to the session's Prefect servers: `make test` runs
# them on one worker, which starts the servers and runs the demo once.
PREFECT_FILES = ("tests/test_flows.py", "tests/test_evaluate.py", "tests/test_sweep.py", "tests/test_serve.py")
# On 2 cores shared with other processes torch's default thread pool spins against them (the first
# LSTM call of perf_evaluate took 16 s instead of 2); the stages' subprocesses get one thread.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def read_flow_run(flow_run_id: Any) -> dict[str, Any]:
    """The flow run's task runs, artifacts and logs, as the UI would see them (through the API)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.client.schemas.sorting import TaskRunSort
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs are shipped in batches; make sure this run's are all in
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
        )
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return {
        "flow_run": flow_run,
        "task_runs": task_runs,
        "artifacts": {artifact.key: artifact for artifact in artifacts},
        "log": "\n".join(log.message for log in logs),
    }


def run_pipeline(project: Path, **params: Any) -> tuple[Any, dict[str, Any]]:
    """The project's pipeline as one real flow run: its final state and what the Prefect API shows of it."""
    from velocity.pipeline.flows import pipeline_flow

    state = pipeline_flow()(root=str(project), retry_delay_seconds=0, return_state=True, **params)
    return state, read_flow_run(state.state_details.flow_run_id)


@pytest.fixture(scope="session")
def demo_run(prefect_harness: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A fresh DEMO_RUN project run once through the flow (every stage runs): the project, the
    flow's state, and its task runs, artifacts and log."""
    project = make_project(tmp_path_factory.mktemp("demo_run") / "project", DEMO_RUN)
    with pytest.MonkeyPatch.context() as env:
        for key, value in ONE_THREAD.items():
            env.setenv(key, value)
        state, seen = run_pipeline(project)
    return {"project": project, "state": state, **seen}


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # before pytest-xdist's own; a hook only xdist knows
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile` (each test file whole on one worker, its module fixtures built once), except
    that the PREFECT_FILES share one worker."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class PrefectFilesTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return "prefect" if scope in PREFECT_FILES else scope

    return PrefectFilesTogether(config, log)


# --- a real `prefect server start` -----------------------------------------------------------------

SERVER_START_TIMEOUT_SECONDS = 180  # 2 shared cores: migrations on a fresh database take a while


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def velocity_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """A clean Prefect environment for a `velocity` subprocess: its own PREFECT_HOME, no inherited API URL."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.update(overrides)
    return env


def velocity(args: list[str], env: dict[str, str], cwd: Path, timeout_seconds: float = 120) -> subprocess.CompletedProcess:
    """Run the real `velocity` command (this checkout's code) in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "velocity.pipeline", *args], cwd=cwd, env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=timeout_seconds,
    )


def stage_error(cwd: Path, module: str, *args: str) -> str:
    """Run `python -m module args` in `cwd` (this checkout's code), expect it to fail with exit
    code 1 and no traceback, and return the last line it wrote to stderr: the one-line error."""
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return proc.stderr.strip().splitlines()[-1]


def wait_for_health(api_url: str, server: subprocess.Popen, timeout_seconds: float) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no answer from {api_url}/health within {timeout_seconds}s")


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a process we started in its own session, and everything it started."""
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    try:
        os.killpg(process.pid, signal.SIGKILL)  # children left behind by a clean exit of the leader
    except ProcessLookupError:
        pass


@contextlib.contextmanager
def prefect_server_process(tmp_path: Path, ui: bool = False) -> Iterator[tuple[str, dict[str, str]]]:
    """A real `prefect server start` on 127.0.0.1 and a free port, with its own PREFECT_HOME (and so
    its own sqlite database); yields its API URL and an environment pointing at it; killed afterwards."""
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    # The UI asks /ui-settings where the API is; that comes from settings, not from --port.
    env = velocity_env(tmp_path, PREFECT_UI_ENABLED=str(ui).lower(), PREFECT_UI_API_URL=api_url)
    with (tmp_path / "server.log").open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            wait_for_health(api_url, server, SERVER_START_TIMEOUT_SECONDS)
            yield api_url, {**env, "PREFECT_API_URL": api_url}
        finally:
            stop(server)


def assert_weights_close(a: dict, b: dict) -> None:
    """Two state dicts equal within float tolerance (two ways of adding the same floats).
    An attention key bias gets an exactly-zero gradient (softmax ignores a shift shared by all
    keys), so Adam turns float noise in it into full-size steps; it changes no output, so it is left out."""
    import torch

    assert a.keys() == b.keys()
    for name in a:
        if not name.endswith("w_k.bias"):
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


# The tiny trained models, shared by the predict and studio tests (imported last: they use the helpers above).
from trained_models import demo_data, demo_raw, demo_score_windows, trained_model, trained_score_model, trained_timing_model  # noqa: E402,F401
