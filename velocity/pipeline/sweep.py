"""`velocity sweep`: a grid of DVC experiments, one Prefect task each, and a table comparing them.

`velocity sweep bins.dstart=3,5,7 model.d_model=64,128` runs `dvc exp run --set-param ...` once per
grid point, one after another in the workspace (DVC cannot run two workspace experiments at once,
and stages a point does not change are skipped). Each experiment gets a name made from its point,
so rerunning a sweep replaces the same experiments. Their params and metrics, read back with
`dvc exp show --json`, become a Prefect table artifact and are printed.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from velocity.pipeline.flows import (
    OUTPUT_TAIL_LINES,
    PipelineError,
    StageFailed,
    dvc_env,
    flatten,
    format_table,
    stage_order,
    stream_command,
)

SWEEP_ARTIFACT = "velocity-sweep"
DEFAULT_PREFIX = "sweep"
PARAMS_FILE = "params.yaml"


def parse_grid(specs: Sequence[str], params_path: Path | str | None = None) -> dict[str, list[str]]:
    """`["bins.dstart=3,5,7", ...]` as {"bins.dstart": ["3", "5", "7"], ...}, keys checked against params.yaml.

    Values stay strings: DVC parses them as YAML, as `dvc exp run --set-param` does.
    """
    if not specs:
        raise PipelineError("no grid given: pass PARAM=V1,V2,... e.g. bins.dstart=3,5,7")
    params = yaml.safe_load(Path(params_path).read_text()) if params_path is not None else None
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, values_text = spec.partition("=")
        key = key.strip()
        values = [value.strip() for value in values_text.split(",")]
        if not sep or not key or not all(values):
            raise PipelineError(f"bad grid entry '{spec}': expected PARAM=V1,V2,... e.g. bins.dstart=3,5,7")
        if key in grid:
            raise PipelineError(f"bad grid: '{key}' is given twice")
        if params is not None and ":" not in key and key not in flatten(params):
            # DVC would add an unknown key silently, and the stage's params loader then rejects it.
            raise PipelineError(f"{params_path}: no param '{key}' to sweep")
        grid[key] = list(dict.fromkeys(values))
    return grid


def grid_points(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    """Every combination of the grid's values, the first key varying slowest."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[key] for key in keys))]


def experiment_name(prefix: str, point: dict[str, str]) -> str:
    """A deterministic, git-ref-safe experiment name: sweep-bins.dstart-3_model.d_model-64."""
    body = "_".join(f"{key}-{value}" for key, value in point.items())
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{prefix}-{body}")
    return re.sub(r"\.{2,}", ".", name).strip("._-")


def _dvc(root: Path | str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=root, env=dvc_env(), capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise PipelineError(f"{root}: `dvc {' '.join(args)}` failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def require_commit(root: Path | str) -> None:
    """DVC experiments are stored relative to a git commit; fail early and clearly without one."""
    proc = subprocess.run(["git", "rev-parse", "--verify", "--quiet", "HEAD"], cwd=root, capture_output=True)
    if proc.returncode != 0:
        raise PipelineError(f"{root}: DVC experiments need a git commit to start from; commit the project first")


def remove_experiments(root: Path | str, names: Sequence[str]) -> list[str]:
    """Remove earlier experiments of this baseline with these names, so a rerun replaces them."""
    existing = set(_dvc(root, "exp", "list", "--name-only").split())
    stale = [name for name in names if name in existing]
    if stale:
        _dvc(root, "exp", "remove", *stale)
    return stale


def run_experiment(
    root: Path | str,
    name: str,
    point: dict[str, str],
    target: str | None = None,
    log_line: Callable[[str], None] = print,
) -> None:
    """`dvc exp run --name NAME --set-param k=v ... [TARGET]`; raise StageFailed naming it if it fails."""
    args = [sys.executable, "-m", "dvc", "exp", "run", "--name", name]
    for key, value in point.items():
        args += ["--set-param", f"{key}={value}"]
    if target:
        args.append(target)
    code, lines = stream_command(args, root, log_line)
    if code != 0:
        tail = "\n".join(line for line in lines[-OUTPUT_TAIL_LINES:] if line)
        raise StageFailed(f"DVC experiment '{name}' failed (exit {code}):\n{tail}")


def experiments_by_name(exp_show: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each named experiment's `data` (params, metrics) from `dvc exp show --json` output."""
    found: dict[str, dict[str, Any]] = {}
    for baseline in exp_show:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                if rev.get("name") and rev.get("data"):
                    found.setdefault(rev["name"], rev["data"])
    return found


def comparison_rows(
    exp_show: list[dict[str, Any]], names: Sequence[str], swept: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per experiment in `names` order: its name, swept params, then every metric."""
    found = experiments_by_name(exp_show)
    metrics_per_name: dict[str, dict[tuple[str, str], Any]] = {}
    for name in names:
        metric_files = (found.get(name) or {}).get("metrics") or {}
        metrics_per_name[name] = {
            (path, key): value
            for path, entry in metric_files.items()
            for key, value in flatten((entry or {}).get("data") or {}).items()
        }
    all_metrics = list(dict.fromkeys(metric for metrics in metrics_per_name.values() for metric in metrics))
    # Name a metric by its key alone unless two files share that key.
    key_counts: dict[str, int] = {}
    for _, key in all_metrics:
        key_counts[key] = key_counts.get(key, 0) + 1
    label = {(path, key): key if key_counts[key] == 1 else f"{path}:{key}" for path, key in all_metrics}

    rows = []
    for name in names:
        data = found.get(name)
        row: dict[str, Any] = {"experiment": name}
        params = {}
        for params_file, entry in ((data or {}).get("params") or {}).items():
            for key, value in flatten((entry or {}).get("data") or {}).items():
                params[key if params_file == PARAMS_FILE else f"{params_file}:{key}"] = value
        for key in swept:
            row[key] = params.get(key)
        for metric in all_metrics:
            row[label[metric]] = metrics_per_name[name].get(metric)
        if data is None:
            row["status"] = "missing"
        rows.append(row)
    return rows


def experiment_table(root: Path | str, names: Sequence[str], swept: Sequence[str]) -> list[dict[str, Any]]:
    """The comparison table of the named experiments, read with `dvc exp show --json`."""
    return comparison_rows(json.loads(_dvc(root, "exp", "show", "--json") or "[]"), names, swept)


def _make_flow() -> Any:
    """Build the sweep's Prefect task and flow (prefect imported only here)."""
    from prefect import flow, get_run_logger, task
    from prefect.artifacts import create_table_artifact
    from prefect.cache_policies import NO_CACHE

    @task(cache_policy=NO_CACHE, persist_result=False)
    def dvc_experiment(root: str, name: str, point: dict[str, str], target: str | None) -> str:
        """Run one grid point as a DVC experiment, streaming its output into the task's log."""
        run_experiment(root, name, point, target, get_run_logger().info)
        return name

    @flow(name="velocity-sweep", persist_result=False)
    def velocity_sweep(
        grid: dict[str, list[str]], root: str = ".", target: str | None = None, prefix: str = DEFAULT_PREFIX
    ) -> list[dict[str, Any]]:
        """Run every grid point as a DVC experiment, in order, and publish their comparison table."""
        logger = get_run_logger()
        root = str(Path(root).resolve())
        require_commit(root)
        points = grid_points(grid)
        names = [experiment_name(prefix, point) for point in points]
        if len(set(names)) != len(names):
            raise PipelineError(f"grid points map to the same experiment name: {names}")
        replaced = remove_experiments(root, names)
        if replaced:
            logger.info("Replacing earlier experiments: %s", ", ".join(replaced))
        failed = []
        for name, point in zip(names, points):
            # Sequential on purpose: workspace experiments share one checkout and DVC's lock.
            state = dvc_experiment.with_options(name="experiment", task_run_name=name)(
                root, name, point, target, return_state=True
            )
            if not state.is_completed():
                failed.append(name)
        rows = experiment_table(root, names, list(grid))
        for row, name in zip(rows, names):
            if name in failed:
                row["status"] = "failed"
        create_table_artifact(rows, key=SWEEP_ARTIFACT, description=f"DVC experiments of the sweep over {', '.join(grid)}")
        logger.info("Comparison of %d experiments:\n%s", len(rows), format_table(rows))
        if failed:
            raise StageFailed(f"{len(failed)} of {len(names)} experiments failed: {', '.join(failed)}")
        return rows

    return velocity_sweep


@functools.cache
def sweep_flow() -> Any:
    """The `velocity-sweep` Prefect flow (built once): built on first use, so importing this module does not import Prefect."""
    return _make_flow()


def __getattr__(name: str) -> Any:
    if name == "velocity_sweep":
        return sweep_flow()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("grid", nargs="+", metavar="PARAM=V1,V2,...", help="params.yaml key and the values to try, e.g. bins.dstart=3,5,7")
    parser.add_argument("--root", default=".", help="project root holding dvc.yaml (default: .)")
    parser.add_argument("--target", help="run each experiment only up to this DVC stage (default: the whole pipeline)")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"experiment name prefix (default: {DEFAULT_PREFIX})")


def run(args: argparse.Namespace) -> int:
    import logging

    root = Path(args.root).resolve()
    try:
        grid = parse_grid(args.grid, root / PARAMS_FILE)
        if args.target:
            stage_order(root, args.target)
        require_commit(root)
    except (PipelineError, OSError) as err:
        print(f"velocity sweep: {err}", file=sys.stderr)
        return 2
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per API call drowns the DVC output
    state = sweep_flow()(grid=grid, root=str(root), target=args.target, prefix=args.prefix, return_state=True)
    if not state.is_completed():
        print(f"velocity sweep: flow {state.name}: {state.message}", file=sys.stderr)
        return 1
    rows = state.result()
    print(format_table(rows))
    print(f"\nThe workspace holds the last experiment ({rows[-1]['experiment']}); "
          "`dvc exp apply NAME` switches to another, `dvc exp show` compares them.")
    return 0
