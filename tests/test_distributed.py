"""Training on several processes: DistributedDataParallel over gloo through torchrun, on CPU.

Real torchrun launches of the real training loop (velocity/model/harness.py), and real `dvc repro` runs of
the train stages with `nproc_per_node: 2`.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import ROOT, assert_weights_close, dvc, make_project, project_env
from velocity.model.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

FIT = ROOT / "tests" / "helpers" / "fit_synthetic.py"


def fit_synthetic(out: Path, *args: str, processes: int = 1) -> dict[int, dict[str, torch.Tensor]]:
    """Run tests/helpers/fit_synthetic.py on `processes` processes through torchrun (one: in this
    process, sparing a Python and torch start-up); each rank's final weights."""
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([*launcher, str(FIT), str(out), *args], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    else:
        run_in_this_process([str(out), *args])
    return {rank: load_checkpoint(out / f"rank{rank}.pt")["model"] for rank in range(processes)}


@functools.cache
def fit_helper() -> Any:
    """tests/helpers/fit_synthetic.py as a module, loaded once."""
    spec = importlib.util.spec_from_file_location("fit_synthetic", FIT)
    helper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helper)
    return helper


def run_in_this_process(argv: list[str]) -> None:
    with torch.random.fork_rng(devices=[]):  # leave the test session's random state alone
        fit_helper().main(argv)


@pytest.mark.parametrize("task", ["velocity", "performance"])
def test_two_processes_take_the_steps_of_one_with_the_same_global_batch(tmp_path, task):
    two = fit_synthetic(tmp_path / "two", "--task", task, "--batch-size", "4", processes=2)
    assert all(torch.equal(two[0][k], two[1][k]) for k in two[0]), "the ranks' weights drifted apart"
    one = fit_synthetic(tmp_path / "one", "--task", task, "--batch-size", "8")[0]
    assert_weights_close(two[0], one)
    # ... and a different global batch gives different weights (the check can fail).
    other = fit_synthetic(tmp_path / "other", "--task", task, "--batch-size", "4")[0]
    assert not all(torch.allclose(one[k], other[k], rtol=1e-4, atol=1e-5) for k in one)


def test_a_run_resumes_with_another_number_of_processes(tmp_path):
    """3 steps on 2 processes, then on to step 6 in one: the same as 6 steps in one process, since
    the data stream is the same whatever the number of processes."""
    fit_synthetic(tmp_path / "switched", "--batch-size", "4", "--steps", "3", processes=2)
    assert load_checkpoint(tmp_path / "switched" / "checkpoints" / "last.pt")["world_size"] == 2
    switched = fit_synthetic(tmp_path / "switched", "--batch-size", "8", "--steps", "6")[0]
    straight = fit_synthetic(tmp_path / "straight", "--batch-size", "8", "--steps", "6")[0]
    assert_weights_close(switched, straight)


def steps_logged(tsv: Path) -> list[int]:
    with open(tsv, newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f, delimiter="\t")]


TINY = {
    "data": {"source": "demo", "demo_pieces": 12},
    "model": {"layers": 1, "heads": 2, "d_model": 16, "d_ff": 32},
    "train": {"batch_size": 4, "epochs": None, "max_steps": 90, "warmup": 10, "eval_every": 3, "checkpoint_every": 3, "eval_windows": 16,
              "device": "cpu", "nproc_per_node": 2, "ensemble": 1},
    "performance_rnn": {
        "events": {"window": 64, "step": 32},
        "model": {"hidden_size": 32, "layers": 1},
        "train": {"epochs": None, "steps": 20, "batch_size": 8, "eval_every": 10, "checkpoint_every": 10, "val_windows": 16,
                  "device": "cpu", "nproc_per_node": 2},
    },
}  # fmt: skip


def test_dvc_repro_trains_both_models_on_two_processes_and_resumes_after_kill(tmp_path):
    """`dvc repro train` on a small demo corpus through torchrun, its whole process group killed
    with SIGKILL mid-way; the next `dvc repro` continues from the checkpoint instead of step 0. Then
    the Performance RNN's `perf_train` on two processes, on the same data."""
    project = make_project(tmp_path / "project", TINY)
    dvc(project, "repro", "windows")  # the data first, so that the kill lands in training
    last = project / "models" / "checkpoints" / "last.pt"
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "train"], cwd=project, env=project_env(project),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "training ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(2)  # the workers die with their launcher: no checkpoint is written after the kill
    killed_at = load_checkpoint(last)["step"]
    time.sleep(2)
    assert load_checkpoint(last)["step"] == killed_at and 0 < killed_at < 90
    assert not (project / "models" / "velocity.pt").exists()

    out = dvc(project, "repro", "train")
    assert "2 processes" in out.stdout + out.stderr  # the stage launched itself through torchrun
    assert f"resuming from step {killed_at} of 90" in out.stdout + out.stderr
    model = load_checkpoint(project / "models" / "velocity.pt")
    assert model["steps_trained"] == 90 and model["train"]["nproc_per_node"] == 2
    assert model["vocab"] == json.loads((project / "data" / "vocab.json").read_text())
    assert model["bins"] == json.loads((project / "data" / "bins.json").read_text())
    assert list((project / "models").glob("*.pt")) == [project / "models" / "velocity.pt"]  # rank 0 alone wrote it
    assert steps_logged(project / "dvclive" / "train" / "plots" / "metrics" / "val_loss.tsv") == list(range(3, 91, 3))
    assert json.loads((project / "dvclive" / "train" / "metrics.json").read_text())["step"] == 90
    shown = json.dumps(json.loads(dvc(project, "metrics", "show", "--json").stdout))
    assert "val_loss" in shown and "val_mae" in shown
    assert "up to date" in dvc(project, "status", "train").stdout.lower()

    out = dvc(project, "repro", "perf_train")
    assert "2 processes" in out.stdout + out.stderr
    state = load_checkpoint(project / "models" / "performance_rnn.pt")
    assert state["kind"] == "performance_rnn" and state["step"] == 20
    assert [p["step"] for p in state["history"]] == [10, 20]
    assert steps_logged(project / "dvclive" / "perf_train" / "plots" / "metrics" / "val_loss.tsv") == [10, 20]
