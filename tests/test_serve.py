"""`velocity serve`: a scheduled deployment on a real `prefect server start`, and a clear refusal without one."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import free_port, make_project, project_env, stop, velocity, velocity_env


def test_serve_without_api_url_says_how_to_start_a_server(tmp_path: Path) -> None:
    proc = velocity(["serve", "--cron", "0 3 * * *", "--root", str(tmp_path)], velocity_env(tmp_path), tmp_path)
    assert proc.returncode == 2
    assert "PREFECT_API_URL is not set" in proc.stderr
    assert "prefect server start --host 127.0.0.1" in proc.stderr


def test_serve_with_no_server_answering_fails_clearly(tmp_path: Path) -> None:
    api_url = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    proc = velocity(
        ["serve", "--interval", "60", "--root", str(tmp_path)], velocity_env(tmp_path, PREFECT_API_URL=api_url), tmp_path
    )
    assert proc.returncode == 2
    assert f"no Prefect server answers at PREFECT_API_URL={api_url}" in proc.stderr


def test_bad_schedules_are_refused_before_any_server_is_asked(tmp_path: Path) -> None:
    from velocity.pipeline.serve import create_deployment

    with pytest.raises(ValueError, match="Invalid cron string"):
        create_deployment(tmp_path, cron="0 3 * *")
    with pytest.raises(ValueError, match="unknown timezone 'Mars/Olympus'"):
        create_deployment(tmp_path, cron="0 3 * * *", timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="interval must be positive"):
        create_deployment(tmp_path, interval_seconds=0)


@pytest.mark.slow
def test_deployment_schedule_on_a_real_server(prefect_ui_server: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from velocity.pipeline.serve import check_server, create_deployment

    api_url, env = prefect_ui_server
    project = make_project(tmp_path / "project", {"data": {"source": "demo", "demo_pieces": 10}})
    assert check_server(api_url) == api_url
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        create_deployment(project, "nightly", cron="0 3 * * *", target="download", timezone="Europe/Paris")
        create_deployment(project, "hourly", interval_seconds=3600)
        with get_client(sync_client=True) as client:
            nightly = client.read_deployment_by_name("velocity-pipeline/nightly")
            hourly = client.read_deployment_by_name("velocity-pipeline/hourly")
    assert [(s.schedule.cron, s.schedule.timezone) for s in nightly.schedules] == [("0 3 * * *", "Europe/Paris")]
    assert nightly.parameters["root"] == str(project.resolve())
    assert nightly.parameters["target"] == "download"
    assert nightly.entrypoint == "velocity.pipeline.flows.velocity_pipeline"
    assert [s.schedule.interval for s in hourly.schedules] == [timedelta(seconds=3600)]

    # The real command: `velocity serve` serves the deployment; a run asked of it executes the flow.
    serve_env = {**project_env(project), **env, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    serving = subprocess.Popen(
        [sys.executable, "-m", "velocity.pipeline", "serve", "download", "--cron", "0 3 * * *", "--name", "nightly", "--root", str(project)],
        cwd=tmp_path, env=serve_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
            flow_run = client.create_flow_run_from_deployment(nightly.id)
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline:
                flow_run = client.read_flow_run(flow_run.id)
                if flow_run.state.is_final() or serving.poll() is not None:
                    break
                time.sleep(1)
    finally:
        stop(serving, signal.SIGINT)
    output = serving.stdout.read() if serving.stdout else ""
    assert flow_run.state.is_completed(), f"{flow_run.state}\n{output}"
    assert (project / "data" / "raw").is_dir()  # the served run really ran the DVC stage
    assert "download" in (project / "dvc.lock").read_text()
