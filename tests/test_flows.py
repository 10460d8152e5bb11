"""The DVC pipeline as a Prefect flow: real `dvc repro` per stage on a small demo project, real Prefect runs."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml
from conftest import ROOT, SMALL_DEMO, deep_update, make_project

from pipeline.flows import PipelineError, figure_paths, read_stages, stage_order, stage_status, stream_command

# The demo corpus with models so small that the whole pipeline takes seconds per stage.
TINY_PIPELINE: dict[str, Any] = deep_update(
    json.loads(json.dumps(SMALL_DEMO)),
    {
        "windows": {"length": 32, "step": 32},
        "model": {"layers": 1, "heads": 2, "d_model": 16, "d_ff": 32},
        "train": {
            "batch_size": 4, "epochs": 1, "max_steps": 4, "warmup": 2, "eval_every": 4,
            "checkpoint_every": 4, "eval_windows": 4, "device": "cpu",
        },
        "evaluate": {"batch_windows": 64, "segments": 1, "segment_notes": 32},
        "performance_rnn": {
            "events": {"window": 32, "step": 32},
            "model": {"hidden_size": 16, "layers": 1},
            "train": {
                "steps": 4, "batch_size": 4, "eval_every": 4, "checkpoint_every": 4,
                "val_windows": 4, "device": "cpu",
            },
            "evaluate": {"device": "cpu"},
        },
    },
)


# On 2 cores shared with other processes torch's default thread pool spins against them (the first
# LSTM call of perf_evaluate took 16 s instead of 2); the stages' subprocesses get one thread.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def tiny_params() -> dict[str, Any]:
    """TINY_PIPELINE limited to the sections params.yaml has (a section nobody reads would be an error)."""
    present = yaml.safe_load((ROOT / "params.yaml").read_text())
    return {name: section for name, section in TINY_PIPELINE.items() if name in present}


def read_flow_run(flow_run_id: UUID) -> dict[str, Any]:
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
    from pipeline.flows import pipeline_flow

    state = pipeline_flow()(root=str(project), retry_delay_seconds=0, return_state=True, **params)
    return state, read_flow_run(state.state_details.flow_run_id)


@pytest.fixture(scope="module")
def first_run(prefect_harness: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A fresh tiny project run once through the flow (every stage runs)."""
    project = make_project(tmp_path_factory.mktemp("flows") / "project", tiny_params())
    with pytest.MonkeyPatch.context() as env:
        for key, value in ONE_THREAD.items():
            env.setenv(key, value)
        state, seen = run_pipeline(project)
    return {"project": project, "state": state, **seen}


def test_stage_order_follows_dvc_graph(project: Path) -> None:
    order = stage_order(project)
    for upstream, downstream in [("download", "extract"), ("extract", "bins"), ("bins", "vocab"), ("vocab", "windows")]:
        assert order.index(upstream) < order.index(downstream)
    declared = list(yaml.safe_load((project / "dvc.yaml").read_text())["stages"])
    assert sorted(order) == sorted(declared)
    assert stage_order(project, "vocab") == ["download", "extract", "bins", "vocab"]


def test_stage_order_reports_bad_target_and_root(project: Path, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"no stage named 'nope' \(stages: download, extract"):
        stage_order(project, "nope")
    with pytest.raises(PipelineError, match="not a DVC project"):
        stage_order(tmp_path / "empty")


def test_stream_command_passes_lines_and_progress_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.flows

    monkeypatch.setattr(pipeline.flows, "PROGRESS_LOG_SECONDS", 0.0)  # log every redraw that arrives
    script = (
        "import sys, time\n"
        "print('first line', flush=True)\n"
        "for i in range(3):\n"
        "    sys.stderr.write(f'\\rbar {i}/2'); sys.stderr.flush(); time.sleep(0.3)\n"
        "sys.stderr.write('\\n'); print('last line', end='')\n"
        "sys.exit(3)\n"
    )
    logged: list[str] = []
    code, lines = stream_command([sys.executable, "-c", script], ".", logged.append)
    assert code == 3
    assert lines == ["first line", "bar 2/2", "last line"]  # a finished bar counts once, as it ended
    assert logged[0] == "first line" and logged[-2:] == ["bar 2/2", "last line"]
    assert {"bar 0/2", "bar 1/2"} & set(logged)  # a running bar reached the log before it finished


def test_stage_status_reads_dvc_output() -> None:
    assert stage_status("bins", ["Running stage 'bins':", "> python -m stages.bins"]) == "ran"
    assert stage_status("bins", ["Stage 'bins' didn't change, skipping"]) == "skipped"
    assert stage_status("bins", ["Stage 'bins' is cached - skipping run, checking out outputs"]) == "restored"
    assert stage_status("bins", ["Stage 'binsx' didn't change, skipping"]) == "unknown"


@pytest.mark.slow
def test_flow_runs_one_task_per_stage_and_publishes_results(first_run: dict[str, Any]) -> None:
    project = first_run["project"]
    assert first_run["state"].is_completed(), first_run["state"].message
    stages = stage_order(project)
    assert [run.name for run in first_run["task_runs"]] == stages
    assert all(run.state.is_completed() for run in first_run["task_runs"])
    assert [result["status"] for result in first_run["state"].result()] == ["ran"] * len(stages)
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert sorted(lock["stages"]) == sorted(stages)
    # The stages' own output reached the Prefect logs.
    assert "Running stage 'windows':" in first_run["log"]

    summary = first_run["artifacts"]["velocity-run-summary"].data
    assert all(f"| {stage} | ran |" in summary for stage in stages)
    assert "bins.dstart" in summary  # first run: every param is new since the last run
    metrics = json.loads(first_run["artifacts"]["velocity-metrics"].data)
    assert metrics and all(set(row) == {"file", "metric", "value"} for row in metrics)
    declared = {
        next(iter(entry)) if isinstance(entry, dict) else entry
        for stage in yaml.safe_load((project / "dvc.yaml").read_text())["stages"].values()
        for entry in stage.get("metrics", [])
    }
    assert {row["file"] for row in metrics} == declared  # every stage's metrics file, as DVC reads it
    figures = figure_paths(project, [out for stage in read_stages(project) for out in stage.outs])
    if figures:  # once a stage (evaluate) declares images among its outputs, the run links them
        links = first_run["artifacts"]["velocity-figures"].data
        assert all(path.as_uri() in links for path in figures)


@pytest.mark.slow
def test_second_run_skips_every_stage(first_run: dict[str, Any]) -> None:
    project = first_run["project"]
    state, seen = run_pipeline(project)
    assert state.is_completed(), state.message
    stages = stage_order(project)
    assert [run.name for run in seen["task_runs"]] == stages
    assert [result["status"] for result in state.result()] == ["skipped"] * len(stages)
    assert all(f"Stage '{stage}' didn't change, skipping" in seen["log"] for stage in stages)
    summary = seen["artifacts"]["velocity-run-summary"].data
    assert "None: every stage that ran used the same params as last time." in summary


@pytest.mark.slow
def test_failing_stage_fails_the_flow_naming_it(first_run: dict[str, Any], tmp_path: Path) -> None:
    project = tmp_path / "broken"
    shutil.copytree(first_run["project"], project, symlinks=True)
    lock_before = (project / "dvc.lock").read_text()
    pipeline = yaml.safe_load((project / "dvc.yaml").read_text())
    pipeline["stages"]["vocab"]["cmd"] = "python -c \"import sys; sys.exit('vocab is broken on purpose')\""
    (project / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))

    state, seen = run_pipeline(project, retries=1)
    assert state.is_failed()
    assert "DVC stage 'vocab' failed" in state.message
    ran = [run.name for run in seen["task_runs"]]
    assert ran == ["download", "extract", "bins", "vocab"]  # nothing after the failing stage
    vocab_run = seen["task_runs"][-1]
    assert vocab_run.state.is_failed() and vocab_run.run_count == 2  # the one retry happened
    assert "vocab is broken on purpose" in seen["log"]
    assert "| vocab | **failed** |" in seen["artifacts"]["velocity-run-summary"].data
    # DVC recorded nothing for the failed stage: dvc.lock is as before.
    assert (project / "dvc.lock").read_text() == lock_before


@pytest.mark.slow
def test_velocity_run_command(first_run: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    # Only up to a target: the target and what it depends on, nothing after it.
    assert main(["run", "--root", str(first_run["project"]), "extract"]) == 0
    table = capsys.readouterr().out.split()
    assert [word for word in table if word in stage_order(first_run["project"])] == ["download", "extract"]
    assert table.count("skipped") == 2
    assert main(["run", "--root", str(first_run["project"]), "nope"]) == 2
    assert "no stage named 'nope'" in capsys.readouterr().err
