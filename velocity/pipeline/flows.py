"""`velocity run`: the DVC pipeline as a Prefect flow, one task per DVC stage.

The stage order comes from DVC's own graph (dvc.yaml read through `dvc.repo.Repo`), never from a
list kept here, and each task runs exactly its stage with `dvc repro --single-item`, so DVC still
decides what is up to date: a rerun with nothing changed only prints "didn't change, skipping".
One `dvc status` before the first stage spares that second of DVC start-up per stage: the stages
it finds up to date are skipped without asking DVC again, until the first stage that runs (after
it, every stage goes through `dvc repro`, which sees the new outputs).
After the stages, the flow publishes keyed artifacts (metrics table, run summary, and the figures
themselves, embedded in markdown) so the flow run in the Prefect UI shows what was trained and how
well it did.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import functools
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

# Artifact keys (Prefect keys: lowercase letters, digits, dashes); the latest of each key is what
# the UI's Artifacts page shows, and every flow run keeps its own version.
METRICS_ARTIFACT = "velocity-metrics"
SUMMARY_ARTIFACT = "velocity-run-summary"
FIGURES_ARTIFACT = "velocity-figures"
FIGURE_MIME_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
FIGURE_SUFFIXES = tuple(FIGURE_MIME_TYPES)
# The figures travel inside the artifact (the server stores it in its database, once per run), so keep
# them modest: wider images are downscaled (evaluate's are about 1,000 px wide at its dpi 110), and
# figures past the total budget are listed by path instead of embedded.
FIGURE_MAX_WIDTH_PX = 1200
FIGURES_ARTIFACT_MAX_CHARS = 3_000_000
OUTPUT_TAIL_LINES = 20  # how much of a failing stage's output goes into the error message
PROGRESS_LOG_SECONDS = 30.0  # how often a running progress bar's state reaches the log


class PipelineError(RuntimeError):
    """The project root, dvc.yaml or a requested target stage is unusable."""


class StageFailed(RuntimeError):
    """A DVC stage (or experiment) exited nonzero; the message names it and ends with its output."""


# --- DVC: the graph and one stage --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stage:
    """One dvc.yaml stage as the flow needs it; paths are relative to the project root."""

    address: str  # what `dvc repro` takes in the project root: "bins", or "sub/dvc.yaml:bins"
    outs: tuple[str, ...]  # every output, metrics and plots included
    metrics: tuple[str, ...]  # outputs declared under `metrics:`


def read_stages(root: Path | str, target: str | None = None) -> list[Stage]:
    """The project's dvc.yaml stages in an order DVC can run them (dependencies first).

    With `target`, only that stage and the stages it depends on. Ties keep dvc.yaml's order, so
    the order is the same on every call.
    """
    import networkx as nx
    from dvc.exceptions import DvcException, NotDvcRepoError
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    root = Path(root)
    try:
        with warnings.catch_warnings(), Repo(os.fspath(root)) as repo:
            warnings.simplefilter("ignore", DeprecationWarning)  # DVC's internals, nothing to act on
            graph = repo.index.graph  # edges point from a stage to the stages it depends on
            stages = [stage for stage in repo.index.stages if isinstance(stage, PipelineStage)]
    except NotDvcRepoError:
        raise PipelineError(f"{root}: not a DVC project (no .dvc/ directory); run `dvc init` there") from None
    except DvcException as err:
        raise PipelineError(f"{root / 'dvc.yaml'}: DVC cannot read the pipeline: {err}") from err

    def relative(path: str) -> str:
        return Path(os.path.relpath(path, repo.root_dir)).as_posix()

    def describe(stage: PipelineStage) -> Stage:
        # DVC's own `stage.addressing` is relative to the cwd; `dvc repro` runs in the project root.
        dvcfile = relative(stage.path)
        return Stage(
            address=stage.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{stage.name}",
            outs=tuple(relative(out.fs_path) for out in stage.outs),
            metrics=tuple(relative(out.fs_path) for out in stage.outs if out.metric),
        )

    described = {stage: describe(stage) for stage in stages}
    by_address = {info.address: stage for stage, info in described.items()}
    if not by_address:
        raise PipelineError(f"{root / 'dvc.yaml'}: no stages to run")
    if target is not None:
        if target not in by_address:
            raise PipelineError(
                f"{root / 'dvc.yaml'}: no stage named '{target}' (stages: {', '.join(by_address)})"
            )
        wanted = {by_address[target], *nx.descendants(graph, by_address[target])}
    else:
        wanted = set(stages)
    position = {stage: i for i, stage in enumerate(stages)}
    subgraph = graph.subgraph(wanted).reverse(copy=True)  # now edges run dependency -> dependent
    ordered = nx.lexicographical_topological_sort(subgraph, key=lambda stage: position.get(stage, -1))
    return [described[stage] for stage in ordered if stage in described]  # .dvc files have no cmd


def stage_order(root: Path | str, target: str | None = None) -> list[str]:
    """Addresses of the stages `read_stages` gives, in run order."""
    return [stage.address for stage in read_stages(root, target)]


def dvc_env() -> dict[str, str]:
    """Environment for DVC subprocesses: this interpreter's `python` first, unbuffered stage output."""
    # Stage cmds say `python -m velocity.stages.x`; a served deployment may run without the venv activated.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "PYTHONUNBUFFERED": "1", "DVC_NO_ANALYTICS": "1"}


def _last_redraw(raw: bytes) -> str:
    """The text a terminal would show for `raw`: what follows the last carriage return."""
    return raw.rstrip(b"\r").rsplit(b"\r", 1)[-1].decode("utf-8", errors="replace").rstrip()


def stream_command(
    args: Sequence[str], cwd: Path | str, log_line: Callable[[str], None]
) -> tuple[int, list[str]]:
    """Run `args` in `cwd`, handing each output line (stdout and stderr) to `log_line` as it comes.

    Returns the exit code and all lines. A progress bar redrawn with carriage returns is logged at
    most every PROGRESS_LOG_SECONDS while it runs and once when its line ends, not once per redraw.
    """
    lines: list[str] = []
    proc = subprocess.Popen(
        list(args), cwd=cwd, env=dvc_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    pending = b""  # output after the last newline: a line still being written or a bar being redrawn
    last_progress = time.monotonic()
    try:
        while chunk := os.read(proc.stdout.fileno(), 65536):
            *complete, pending = (pending + chunk).split(b"\n")
            for raw in complete:
                line = _last_redraw(raw)
                lines.append(line)
                if line:
                    log_line(line)
            if b"\r" in pending:
                pending = pending[pending.rstrip(b"\r").rfind(b"\r"):]  # keep only the latest redraw
                if time.monotonic() - last_progress >= PROGRESS_LOG_SECONDS and _last_redraw(pending):
                    log_line(_last_redraw(pending))
                    last_progress = time.monotonic()
        if pending and (line := _last_redraw(pending)):
            lines.append(line)
            log_line(line)
        return proc.wait(), lines
    except BaseException:
        # Interrupted (Ctrl-C, cancelled run): let DVC stop its stage and release its lock.
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise
    finally:
        proc.stdout.close()


def stage_status(address: str, lines: Sequence[str]) -> str:
    """What DVC did with a stage, read from its output: ran, skipped, restored (run-cache) or unknown."""
    quoted = re.escape(f"'{address}'")
    text = "\n".join(lines)
    if re.search(rf"^Running stage {quoted}", text, re.MULTILINE):
        return "ran"
    if re.search(rf"^Stage {quoted} is cached - skipping run", text, re.MULTILINE):
        return "restored"
    if re.search(rf"^(Stage )?{quoted} didn't change, skipping", text, re.MULTILINE):
        return "skipped"
    return "unknown"


def changed_stages(root: Path | str) -> set[str] | None:
    """Addresses of the stages `dvc status` finds changed (deps, outs, params or command), or None
    when it cannot tell (then every stage goes through `dvc repro`)."""
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json"], cwd=root, env=dvc_env(), capture_output=True, text=True
    )
    try:
        status = json.loads(proc.stdout) if proc.returncode == 0 else None
    except json.JSONDecodeError:
        status = None
    return set(status) if isinstance(status, dict) else None


def repro_stage(root: Path | str, address: str, log_line: Callable[[str], None] = print) -> dict[str, Any]:
    """Run one DVC stage with `dvc repro --single-item`; raise StageFailed naming it if it fails."""
    started = time.monotonic()
    code, lines = stream_command(
        [sys.executable, "-m", "dvc", "repro", "--single-item", address], root, log_line
    )
    seconds = round(time.monotonic() - started, 2)
    if code != 0:
        tail = "\n".join(line for line in lines[-OUTPUT_TAIL_LINES:] if line)
        raise StageFailed(f"DVC stage '{address}' failed (exit {code}) after {seconds}s:\n{tail}")
    return {"stage": address, "status": stage_status(address, lines), "seconds": seconds}


# --- what to show in the UI ----------------------------------------------------------------------


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as {"a.b.c": leaf}."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def metrics_rows(root: Path | str, files: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The workspace's metrics from `dvc metrics show --json` as rows of file, metric, value.

    With `files`, only those metrics files (paths relative to the root, as DVC prints them).
    """
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "metrics", "show", "--json"],
        cwd=root, env=dvc_env(), capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise PipelineError(f"{root}: `dvc metrics show` failed: {proc.stderr.strip()}")
    shown = json.loads(proc.stdout or "{}")
    rows = []
    for path, entry in (shown.get("", {}).get("data") or {}).items():
        if files is not None and path not in files:
            continue
        for metric, value in flatten(entry.get("data") or {}).items():
            rows.append({"file": path, "metric": metric, "value": value})
    return rows


def locked_params(root: Path | str) -> dict[str, Any]:
    """Params each stage ran with last time, from dvc.lock: {"bins.dstart": 3} ("file:key" for other files)."""
    lock_path = Path(root) / "dvc.lock"
    if not lock_path.exists():
        return {}
    lock = yaml.safe_load(lock_path.read_text()) or {}
    used: dict[str, Any] = {}
    for stage in (lock.get("stages") or {}).values():
        for params_file, values in (stage.get("params") or {}).items():
            for key, value in flatten(values or {}).items():
                used[key if params_file == "params.yaml" else f"{params_file}:{key}"] = value
    return used


def changed_params(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """Params whose value in dvc.lock changed during this run (new ones have `before` None)."""
    return [
        {"param": key, "before": before.get(key), "now": value}
        for key, value in sorted(after.items())
        if key not in before or before[key] != value
    ]


def figure_paths(root: Path | str, outs: Sequence[str]) -> list[Path]:
    """Images among the outputs `outs` (files, or files inside output directories), sorted."""
    root = Path(root).resolve()
    found: set[Path] = set()
    for out in outs:
        path = root / out
        candidates = path.rglob("*") if path.is_dir() else [path]
        found.update(p for p in candidates if p.suffix.lower() in FIGURE_SUFFIXES and p.is_file())
    return sorted(found)


def _cell(value: Any) -> str:
    return "—" if value is None else str(value).replace("|", "\\|")


def summary_markdown(
    root: Path | str,
    results: Sequence[dict[str, Any]],
    planned: Sequence[str],
    params: Sequence[dict[str, Any]],
    failed: str | None = None,
) -> str:
    """Markdown for the run summary artifact: stage outcomes and the params that changed."""
    done = {result["stage"] for result in results}
    lines = [f"# Pipeline run in `{Path(root).resolve()}`", "", "| stage | DVC | seconds |", "| --- | --- | --- |"]
    for result in results:
        lines.append(f"| {result['stage']} | {result['status']} | {result['seconds']} |")
    for address in planned:
        if address not in done:
            lines.append(f"| {address} | {'**failed**' if address == failed else 'not run'} | — |")
    lines += ["", "## Params changed since the last run (dvc.lock)", ""]
    if params:
        lines += ["| param | before | now |", "| --- | --- | --- |"]
        lines += [f"| {_cell(p['param'])} | {_cell(p['before'])} | {_cell(p['now'])} |" for p in params]
    else:
        lines.append("None: every stage that ran used the same params as last time.")
    return "\n".join(lines) + "\n"


def figure_bytes(path: Path, max_width_px: int = FIGURE_MAX_WIDTH_PX) -> tuple[bytes, str]:
    """The image file `path` as (bytes, MIME type); a raster image wider than `max_width_px` is
    downscaled to that width (same aspect ratio, same format), anything else is returned as it is."""
    mime = FIGURE_MIME_TYPES[path.suffix.lower()]
    data = path.read_bytes()
    if mime == "image/svg+xml":
        return data, mime
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        if image.width <= max_width_px:
            return data, mime
        height_px = max(1, round(image.height * max_width_px / image.width))
        small = image.resize((max_width_px, height_px), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if mime == "image/png":
        small.save(buffer, format="PNG", optimize=True)
    else:
        small.convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue(), mime


def data_uri(data: bytes, mime: str) -> str:
    """`data` as a base64 `data:` URI."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def figures_markdown(
    root: Path | str, figures: Sequence[Path], max_chars: int = FIGURES_ARTIFACT_MAX_CHARS
) -> str:
    """Markdown carrying the figures themselves, each under the file it came from.

    A browser cannot open a `file://` link from a web page, so each image is embedded as a
    `data:image/...;base64` URI, which both Prefect UIs show inline in a markdown artifact (the V2
    UI's sanitizer lets `data:image/` through for <img> only). Figures that would take the markdown
    past `max_chars` are listed by path instead.
    """
    root = Path(root).resolve()
    lines = ["# Figures", "", f"The images the stages wrote in `{root}`, embedded in this artifact.", ""]
    left_out: list[str] = []
    used_chars = sum(len(line) + 1 for line in lines)
    for path in figures:
        name = path.relative_to(root) if path.is_relative_to(root) else path
        try:
            image = f"![{name}]({data_uri(*figure_bytes(path))})"
        except OSError as err:  # unreadable or not an image after all: list it, publish the rest
            left_out.append(f"- `{path}`: cannot be read as an image ({err})")
            continue
        block = [f"## `{name}`", "", image, ""]
        size = sum(len(line) + 1 for line in block)
        if used_chars + size > max_chars:
            left_out.append(f"- `{path}`: the artifact would pass {max_chars:,} characters")
            continue
        lines += block
        used_chars += size
    if left_out:
        lines += ["## Not embedded", "", *left_out]
    return "\n".join(lines) + "\n"


def publish_artifacts(
    root: Path | str,
    results: Sequence[dict[str, Any]],
    plan: Sequence[Stage],
    params: Sequence[dict[str, Any]],
    failed: str | None = None,
) -> None:
    """Create the flow run's keyed artifacts: the summary always; the metrics table and the figures
    (embedded, see `figures_markdown`) when the stages that finished in this run (ran or were up to
    date) declare any."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    planned = [stage.address for stage in plan]
    create_markdown_artifact(
        summary_markdown(root, results, planned, params, failed),
        key=SUMMARY_ARTIFACT,
        description="Which DVC stages ran or were skipped, and the params that changed",
    )
    # A failed stage may have left half-written metrics or figures: show only finished stages' files.
    finished = {result["stage"] for result in results}
    finished_stages = [stage for stage in plan if stage.address in finished]
    metric_files = [path for stage in finished_stages for path in stage.metrics]
    rows = metrics_rows(root, metric_files) if metric_files else []
    if rows:
        create_table_artifact(rows, key=METRICS_ARTIFACT, description="dvc metrics show")
    figures = figure_paths(root, [path for stage in finished_stages for path in stage.outs])
    if figures:
        create_markdown_artifact(
            figures_markdown(root, figures), key=FIGURES_ARTIFACT, description="Figures the stages wrote"
        )


# --- the flow ------------------------------------------------------------------------------------


def _make_flow() -> Any:
    """Build the Prefect task and flow (prefect imported only here, so `velocity --help` is quick)."""
    from prefect import flow, get_run_logger, task
    from prefect.cache_policies import NO_CACHE

    # DVC decides what is up to date, so Prefect neither caches nor persists stage results.
    @task(cache_policy=NO_CACHE, persist_result=False)
    def dvc_stage(root: str, address: str, up_to_date: bool = False) -> dict[str, Any]:
        """Run one DVC stage, streaming its output into the task's log (`up_to_date`: `dvc status`
        found nothing changed, so skip it as `dvc repro` would)."""
        logger = get_run_logger()
        if up_to_date:
            logger.info("Stage '%s' didn't change, skipping (dvc status)", address)
            return {"stage": address, "status": "skipped", "seconds": 0.0}
        result = repro_stage(root, address, logger.info)
        logger.info("Stage '%s': %s in %.1fs", address, result["status"], result["seconds"])
        return result

    @flow(name="velocity-pipeline", persist_result=False)
    def velocity_pipeline(
        root: str = ".", target: str | None = None, retries: int = 0, retry_delay_seconds: float = 10.0
    ) -> list[dict[str, Any]]:
        """Run the DVC pipeline (up to `target`), one task per stage in DVC's graph order."""
        logger = get_run_logger()
        root = str(Path(root).resolve())
        plan = read_stages(root, target)
        logger.info("Stages in %s: %s", root, " -> ".join(stage.address for stage in plan))
        params_before = locked_params(root)
        changed = changed_stages(root)
        if changed is None:
            logger.warning("`dvc status` failed in %s: every stage goes through `dvc repro`", root)
        results: list[dict[str, Any]] = []
        for address in (stage.address for stage in plan):
            stage_task = dvc_stage.with_options(
                name=address, task_run_name=address, retries=retries, retry_delay_seconds=retry_delay_seconds
            )
            # Up to date only while nothing before it ran: a stage that ran may have changed its deps.
            up_to_date = changed is not None and address not in changed and all(r["status"] == "skipped" for r in results)
            try:
                results.append(stage_task(root, address, up_to_date))
            except Exception:
                # Later stages never start, so dvc.lock only records stages that finished.
                try:
                    params = changed_params(params_before, locked_params(root))
                    publish_artifacts(root, results, plan, params, failed=address)
                except Exception:  # the stage's error is the one to report
                    logger.exception("Could not publish the summary of the failed run")
                raise
        publish_artifacts(root, results, plan, changed_params(params_before, locked_params(root)))
        return results

    return velocity_pipeline


@functools.cache
def pipeline_flow() -> Any:
    """The `velocity-pipeline` Prefect flow (built once): built on first use, so importing this module does not import Prefect."""
    return _make_flow()


def __getattr__(name: str) -> Any:
    # `velocity.pipeline.flows.velocity_pipeline` resolves lazily: deployments load the flow by this path.
    if name == "velocity_pipeline":
        return pipeline_flow()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- CLI -----------------------------------------------------------------------------------------


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by `velocity run` and `velocity serve`."""
    parser.add_argument("target", nargs="?", help="run only up to this DVC stage (default: the whole pipeline)")
    parser.add_argument("--root", default=".", help="project root holding dvc.yaml (default: .)")
    parser.add_argument("--retries", type=int, default=0, help="retry a failed stage this many times (default: 0)")
    parser.add_argument("--retry-delay", type=float, default=10.0, help="seconds between retries (default: 10)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_pipeline_arguments(parser)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows of dicts as a plain aligned text table."""
    if not rows:
        return "(empty)"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    out = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in cells]
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    if args.retries < 0:
        print("velocity run: --retries must be >= 0", file=sys.stderr)
        return 2
    root = Path(args.root).resolve()
    try:
        stage_order(root, args.target)  # fail fast on a bad root or target, before Prefect starts
    except PipelineError as err:
        print(f"velocity run: {err}", file=sys.stderr)
        return 2
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per API call drowns the DVC output
    state = pipeline_flow()(
        root=str(root), target=args.target, retries=args.retries,
        retry_delay_seconds=args.retry_delay, return_state=True,
    )
    if not state.is_completed():
        print(f"velocity run: flow {state.name}: {state.message}", file=sys.stderr)
        return 1
    print(format_table(state.result()))
    return 0
