"""The DVC pipeline as a Prefect flow: real `dvc repro` per stage on the demo run's project (conftest.demo_run), real Prefect runs."""

from __future__ import annotations

import base64
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from browser import MAX_DRAWN_MEAN_DIFFERENCE, MIN_DRAWN_CORRELATION, chromium_page, drawn_likeness, open_image, require_chromium, show
from conftest import ONE_THREAD, run_pipeline, velocity

from velocity.pipeline.flows import (
    FIGURE_MAX_WIDTH_PX,
    FIGURES_ARTIFACT,
    PipelineError,
    figure_paths,
    figures_markdown,
    read_stages,
    stage_order,
    stage_status,
    stream_command,
)

def embedded_images(markdown: str) -> dict[str, bytes]:
    """The images a markdown artifact carries as data: URIs, {alt text: file bytes}, in order."""
    found = re.findall(r"!\[([^\]]*)\]\(data:image/[a-z+]+;base64,([A-Za-z0-9+/=]+)\)", markdown)
    return {alt: base64.b64decode(data) for alt, data in found}


def project_figures(project: Path) -> list[Path]:
    return figure_paths(project, [out for stage in read_stages(project) for out in stage.outs])


def test_stage_order_follows_dvc_graph(project: Path) -> None:
    order = stage_order(project)
    for upstream, downstream in [("download", "extract"), ("scores", "extract"), ("extract", "bins"), ("bins", "vocab"), ("vocab", "windows")]:
        assert order.index(upstream) < order.index(downstream)
    declared = list(yaml.safe_load((project / "dvc.yaml").read_text())["stages"])
    assert sorted(order) == sorted(declared)
    # extract also reads the scores' ASAP-only performances
    assert stage_order(project, "vocab") == ["download", "scores", "extract", "bins", "vocab"]


def test_stage_order_reports_bad_target_and_root(project: Path, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"no stage named 'nope' \(stages: download, scores, extract"):
        stage_order(project, "nope")
    with pytest.raises(PipelineError, match="not a DVC project"):
        stage_order(tmp_path / "empty")


def test_stream_command_passes_lines_and_progress_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from velocity.pipeline import flows

    monkeypatch.setattr(flows, "PROGRESS_LOG_SECONDS", 0.0)  # log every redraw that arrives
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
    assert stage_status("bins", ["Running stage 'bins':", "> python -m velocity.stages.bins"]) == "ran"
    assert stage_status("bins", ["Stage 'bins' didn't change, skipping"]) == "skipped"
    assert stage_status("bins", ["Stage 'bins' is cached - skipping run, checking out outputs"]) == "restored"
    assert stage_status("bins", ["Stage 'binsx' didn't change, skipping"]) == "unknown"


def test_figures_markdown_embeds_images_downscales_and_keeps_to_its_budget(tmp_path: Path) -> None:
    from PIL import Image

    plots = tmp_path / "plots"
    plots.mkdir()
    Image.new("RGB", (40, 20), (200, 30, 30)).save(plots / "small.png")
    Image.new("RGB", (3 * FIGURE_MAX_WIDTH_PX, FIGURE_MAX_WIDTH_PX), (30, 200, 30)).save(plots / "wide.png")
    (plots / "vector.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>')
    (plots / "broken.png").write_bytes(b"not a png")
    figures = sorted(plots.iterdir())

    markdown = figures_markdown(tmp_path, figures)
    images = embedded_images(markdown)
    assert list(images) == ["plots/small.png", "plots/vector.svg", "plots/wide.png"]
    assert all(f"## `{name}`" in markdown for name in images)
    assert images["plots/small.png"] == (plots / "small.png").read_bytes()  # narrow enough: the file as it is
    assert images["plots/vector.svg"] == (plots / "vector.svg").read_bytes()
    assert "data:image/svg+xml;base64," in markdown
    wide = open_image(images["plots/wide.png"])
    assert (wide.format, wide.size) == ("PNG", (FIGURE_MAX_WIDTH_PX, FIGURE_MAX_WIDTH_PX // 3))
    assert wide.getpixel((5, 5)) == (30, 200, 30)
    assert f"- `{plots / 'broken.png'}`: cannot be read as an image" in markdown
    assert "file://" not in markdown

    # Over the budget: the figures that do not fit are listed by path, not embedded.
    budget = len(figures_markdown(tmp_path, figures[1:2]))  # room for small.png alone
    tight = figures_markdown(tmp_path, figures, max_chars=budget)
    assert list(embedded_images(tight)) == ["plots/small.png"]
    assert f"- `{plots / 'wide.png'}`: the artifact would pass {budget:,} characters" in tight


@pytest.mark.slow
def test_flow_runs_one_task_per_stage_and_publishes_results(demo_run: dict[str, Any]) -> None:
    project = demo_run["project"]
    assert demo_run["state"].is_completed(), demo_run["state"].message
    stages = stage_order(project)
    assert [run.name for run in demo_run["task_runs"]] == stages
    assert all(run.state.is_completed() for run in demo_run["task_runs"])
    assert [result["status"] for result in demo_run["state"].result()] == ["ran"] * len(stages)
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert sorted(lock["stages"]) == sorted(stages)
    # The stages' own output reached the Prefect logs.
    assert "Running stage 'windows':" in demo_run["log"]

    summary = demo_run["artifacts"]["velocity-run-summary"].data
    assert all(f"| {stage} | ran |" in summary for stage in stages)
    assert "bins.dstart" in summary  # first run: every param is new since the last run
    metrics = json.loads(demo_run["artifacts"]["velocity-metrics"].data)
    assert metrics and all(set(row) == {"file", "metric", "value"} for row in metrics)
    declared = {
        next(iter(entry)) if isinstance(entry, dict) else entry
        for stage in yaml.safe_load((project / "dvc.yaml").read_text())["stages"].values()
        for entry in stage.get("metrics", [])
    }
    assert {row["file"] for row in metrics} == declared  # every stage's metrics file, as DVC reads it
    # The figures travel inside the artifact, each under its path, at full size (evaluate's are narrower
    # than FIGURE_MAX_WIDTH_PX).
    figures = project_figures(project)
    assert figures, "evaluate declares plots/evaluate: the run must have drawn figures"
    embedded = embedded_images(demo_run["artifacts"][FIGURES_ARTIFACT].data)
    assert list(embedded) == [str(path.relative_to(project.resolve())) for path in figures]
    for name, data in embedded.items():
        assert data == (project / name).read_bytes()


@pytest.mark.slow
def test_second_run_skips_every_stage(demo_run: dict[str, Any]) -> None:
    project = demo_run["project"]
    state, seen = run_pipeline(project)
    assert state.is_completed(), state.message
    stages = stage_order(project)
    assert [run.name for run in seen["task_runs"]] == stages
    assert [result["status"] for result in state.result()] == ["skipped"] * len(stages)
    assert all(f"Stage '{stage}' didn't change, skipping" in seen["log"] for stage in stages)
    summary = seen["artifacts"]["velocity-run-summary"].data
    assert "None: every stage that ran used the same params as last time." in summary


@pytest.mark.slow
def test_a_changed_param_reruns_its_stage_and_dvc_decides_after_it(demo_run: dict[str, Any], tmp_path: Path) -> None:
    """`dvc status` spares DVC's start-up only before the first stage that runs: the changed stage and
    the one reading its output run, and every later stage is still asked of `dvc repro`."""
    project = tmp_path / "changed"
    shutil.copytree(demo_run["project"], project, symlinks=True)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["performance_rnn"]["train"]["steps"] += 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    state, seen = run_pipeline(project)
    assert state.is_completed(), state.message
    status = {result["stage"]: result["status"] for result in state.result()}
    stages = stage_order(project)
    first_ran = stages.index("perf_train")
    assert all(status[stage] == "skipped" for stage in stages[:first_ran])
    assert all(f"Stage '{stage}' didn't change, skipping (dvc status)" in seen["log"] for stage in stages[:first_ran])
    assert status["perf_train"] == status["perf_evaluate"] == "ran"
    assert "performance_rnn.train.steps" in seen["artifacts"]["velocity-run-summary"].data


@pytest.mark.slow
def test_failing_stage_fails_the_flow_naming_it(demo_run: dict[str, Any], tmp_path: Path) -> None:
    project = tmp_path / "broken"
    shutil.copytree(demo_run["project"], project, symlinks=True)
    lock_before = (project / "dvc.lock").read_text()
    pipeline = yaml.safe_load((project / "dvc.yaml").read_text())
    pipeline["stages"]["vocab"]["cmd"] = "python -c \"import sys; sys.exit('vocab is broken on purpose')\""
    (project / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))

    state, seen = run_pipeline(project, retries=1)
    assert state.is_failed()
    assert "DVC stage 'vocab' failed" in state.message
    ran = [run.name for run in seen["task_runs"]]
    assert ran == ["download", "scores", "extract", "align", "bins", "vocab"]  # in DVC's order; nothing after the failing stage
    vocab_run = seen["task_runs"][-1]
    assert vocab_run.state.is_failed() and vocab_run.run_count == 2  # the one retry happened
    assert "vocab is broken on purpose" in seen["log"]
    assert "| vocab | **failed** |" in seen["artifacts"]["velocity-run-summary"].data
    # DVC recorded nothing for the failed stage: dvc.lock is as before.
    assert (project / "dvc.lock").read_text() == lock_before


@pytest.mark.slow
def test_velocity_run_command(demo_run: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from velocity.pipeline.cli import main

    # Only up to a target: the target and what it depends on, nothing after it.
    assert main(["run", "--root", str(demo_run["project"]), "extract"]) == 0
    table = capsys.readouterr().out.split()
    assert [word for word in table if word in stage_order(demo_run["project"])] == ["download", "scores", "extract"]
    assert table.count("skipped") == 3
    assert main(["run", "--root", str(demo_run["project"]), "nope"]) == 2
    assert "no stage named 'nope'" in capsys.readouterr().err


# Every figure <img> of the page once all (at least `count`) have loaded, else null (naturalWidth 0
# means a broken image).
LOADED_FIGURES_JS = """count => {
  const images = [...document.querySelectorAll('img')].filter(img => img.src.startsWith('data:image/'));
  if (images.length < count || !images.every(img => img.complete)) return null;
  return images.map(img => ({alt: img.alt, naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight}));
}"""


@pytest.mark.slow
def test_figures_show_in_the_prefect_ui(demo_run: dict[str, Any], prefect_ui_server: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    """A real server with its UI, the real `velocity run`, the artifact's page in a real headless Chromium:
    every figure is drawn on screen (screenshots compared with the figure files), in both Prefect UIs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL, temporary_settings

    chromium = require_chromium("the UI check needs a real browser")
    project = demo_run["project"]
    names = [str(path.relative_to(project.resolve())) for path in project_figures(project)]
    api_url, env = prefect_ui_server
    figures_filter = ArtifactFilter(key=ArtifactFilterKey(any_=[FIGURES_ARTIFACT]))
    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        earlier = {artifact.id for artifact in client.read_artifacts(artifact_filter=figures_filter)}  # the demo run's and others'
    # Every stage is up to date, so this run only publishes the artifacts, on the session's server with its UI.
    proc = velocity(["run", "--root", str(project)], {**env, **ONE_THREAD}, tmp_path, timeout_seconds=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        [artifact] = [artifact for artifact in client.read_artifacts(artifact_filter=figures_filter) if artifact.id not in earlier]
    assert list(embedded_images(artifact.data)) == names
    ui_url = api_url.removesuffix("/api")
    # `/` sends a browser to the V2 UI; the V1 UI is still one click away. Both must show the figures.
    for ui, base in [("v2", f"{ui_url}/v2"), ("v1", ui_url)]:
        with chromium_page(chromium) as page:
            page.goto(f"{base}/artifacts/artifact/{artifact.id}")
            try:
                loaded = page.wait_for_function(LOADED_FIGURES_JS, arg=len(names), timeout=90_000).json_value()
            finally:
                page.screenshot(path=tmp_path / f"{ui}-artifact-page.png")
            assert [image["alt"] for image in loaded] == names, ui
            text = page.locator("body").inner_text()
            for image in loaded:
                name = image["alt"]
                expected = open_image((project / name).read_bytes())  # the stage's file: what we must see
                assert (image["naturalWidth"], image["naturalHeight"]) == expected.size, (ui, name)
                assert name in text, (ui, name)  # the heading says which file it is
                rect = show(page.get_by_alt_text(name, exact=True).first)
                assert rect["width"] >= min(expected.width, 400), (ui, name, rect)  # drawn, not a thumbnail
                shot = tmp_path / f"{ui}-{Path(name).stem}.png"
                page.screenshot(path=shot)
                correlation, difference = drawn_likeness(shot, rect, (project / name).read_bytes())
                assert correlation >= MIN_DRAWN_CORRELATION and difference <= MAX_DRAWN_MEAN_DIFFERENCE, (
                    f"{ui}: {name} is not drawn as the file is (r {correlation:.3f}, mean difference "
                    f"{difference:.1f}); see {shot}"
                )
