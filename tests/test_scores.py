"""The scores stage: ASAP-layout archives (path, file://, http), checksums, zip-slip, the demo scores."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, SHARED_DATA, set_params, stage_error
from velocity.datasets.demo_corpus import ASAP_COLUMNS, CSV_NAME, MAESTRO_PREFIX, asap_only_performances, generate_corpus
from velocity.datasets.archives import DataParams, DownloadError, sha256_of
from velocity.params import load
from velocity.stages.scores import ASAP, ASAP_DEFAULT, FILE_COLUMNS, scores
from test_download import ArchiveServer

TINY_SCORES = SHARED_DATA / "asap-maestro-v3.0.0-tiny-scores.zip"
TINY_SCORES_SHA256 = "555a5889fe6a6c8ae9311089b81bb56a914793053059e609d2e7f0c4ef1a5668"  # ../shared/data/README.md
FOLDER = "Bach/Fugue/bwv_1"


@pytest.fixture(scope="session")
def tiny_scores() -> Path:
    if not TINY_SCORES.exists():
        pytest.skip(f"{TINY_SCORES} not found: the shared ASAP score archives sit in ../shared/data beside the repo")
    return TINY_SCORES


def assert_scores_extracted(out: Path, n_rows: int) -> pd.DataFrame:
    """metadata.csv with `n_rows` rows, every file it names present, no temporary folders left."""
    root = out / "asap-dataset"
    table = pd.read_csv(root / "metadata.csv", keep_default_na=False)
    assert list(table.columns) == ASAP_COLUMNS and len(table) == n_rows
    for column in FILE_COLUMNS:
        for name in table[column]:
            assert (root / name).is_file(), name
    assert [p.name for p in out.iterdir()] == ["asap-dataset"]
    return table


def assert_nothing_extracted(out: Path) -> None:
    assert not out.exists() or list(out.iterdir()) == []


def make_asap_archive(path: Path, root: str = "asap-dataset", columns: list[str] = ASAP_COLUMNS,
                      extra: list[tuple[str, bytes]] = ()) -> Path:
    """A one-row zip in ASAP's layout under `root/`, plus `extra` members."""
    row = {column: "" for column in columns}
    row.update(composer="Bach", title="Fugue_bwv_1", folder=FOLDER, midi_score=f"{FOLDER}/midi_score.mid",
               midi_performance=f"{FOLDER}/A01.mid", performance_annotations=f"{FOLDER}/A01_annotations.txt",
               midi_score_annotations=f"{FOLDER}/midi_score_annotations.txt",
               maestro_midi_performance="{maestro}/2004/a.midi")  # fmt: skip
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerow(row)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{root}/metadata.csv", table.getvalue())
        for name in ("midi_score.mid", "A01.mid"):
            zf.writestr(f"{root}/{FOLDER}/{name}", b"MThd")
        for name in ("midi_score_annotations.txt", "A01_annotations.txt"):
            zf.writestr(f"{root}/{FOLDER}/{name}", "0.0\t0.0\tdb,4/4,0\n0.5\t0.5\tb\n")
        for name, data in extra:
            zf.writestr(name, data)
    return path


def params_dir(path: Path, **data) -> Path:
    """A folder with the project's params.yaml, `data:` overridden: where a stage runs."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "params.yaml", path / "params.yaml")
    set_params(path, {"data": data})
    return path


# --- sources ---

def test_tiny_archive_from_a_path(tiny_scores, tmp_path, caplog):
    caplog.set_level("INFO")
    final = scores(str(tiny_scores), tmp_path / "raw_scores")
    assert final == tmp_path / "raw_scores" / "asap-dataset"
    table = assert_scores_extracted(tmp_path / "raw_scores", 10)
    with zipfile.ZipFile(tiny_scores) as zf:
        assert (final / table["midi_score"][0]).read_bytes() == zf.read(f"asap-dataset/{table['midi_score'][0]}")
    assert f"sha256 {TINY_SCORES_SHA256} verified" in caplog.text  # the .sha256 beside it


def test_tiny_archive_from_a_file_url(tiny_scores, tmp_path):
    scores(tiny_scores.as_uri(), tmp_path / "raw_scores", sha256=TINY_SCORES_SHA256)
    assert_scores_extracted(tmp_path / "raw_scores", 10)


def test_metadata_under_another_top_folder_lands_in_asap_dataset(tmp_path):
    archive = make_asap_archive(tmp_path / "github.zip", root="asap-dataset-abc123")
    scores(str(archive), tmp_path / "raw_scores")
    assert_scores_extracted(tmp_path / "raw_scores", 1)


def test_rerun_replaces_earlier_scores(tiny_scores, tmp_path):
    out = tmp_path / "raw_scores"
    scores("demo", out, demo_pieces=3)
    scores(str(tiny_scores), out)
    assert_scores_extracted(out, 10)


def test_asap_is_fetched_from_the_lock_and_its_first_sha256_recorded(tmp_path):
    """`asap` as committed: a pinned URL without a sha256; the first download's is recorded."""
    server = ArchiveServer(tmp_path / "served")
    server.root.mkdir()
    make_asap_archive(server.root / "asap.zip", root="asap-dataset-abc123")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        lock = tmp_path / "downloads.lock.json"
        lock.write_text(json.dumps({ASAP: {"url": f"{server.url}/asap.zip", "sha256": None}}))
        scores(ASAP, tmp_path / "raw_scores", downloads_dir=tmp_path / "downloads", lock_path=lock)
        assert_scores_extracted(tmp_path / "raw_scores", 1)
        recorded = json.loads(lock.read_text())[ASAP]
        assert recorded["sha256"] == sha256_of(server.root / "asap.zip")

        # Later downloads must match it: a changed archive on the server is refused.
        shutil.rmtree(tmp_path / "raw_scores")
        shutil.rmtree(tmp_path / "downloads")
        make_asap_archive(server.root / "asap.zip", root="asap-dataset-def456")
        with pytest.raises(DownloadError, match="sha256 mismatch"):
            scores(ASAP, tmp_path / "raw_scores", downloads_dir=tmp_path / "downloads", lock_path=lock)
        assert_nothing_extracted(tmp_path / "raw_scores")
    finally:
        server.shutdown()
        server.server_close()


def test_committed_lock_pins_the_asap_commit():
    entry = json.loads((ROOT / "downloads.lock.json").read_text())[ASAP]
    assert entry["url"] == ASAP_DEFAULT["url"]
    assert "afc815c75c42e83a79c03feb6da8a35e77d4c6b8" in entry["url"]
    assert entry["sha256"] is None or len(entry["sha256"]) == 64  # null until the first download records it


def test_params_yaml_names_the_scores_source():
    params = load(DataParams, "data", ROOT / "params.yaml")
    assert params.scores == "demo" and params.scores_sha256 is None


# --- errors: one line, nothing written ---

def test_wrong_sha256_is_one_line_and_leaves_nothing(tiny_scores, tmp_path):
    cwd = params_dir(tmp_path / "run", scores=str(tiny_scores), scores_sha256="0" * 64)
    line = stage_error(cwd, "velocity.stages.scores", "data/raw_scores")
    assert line.startswith("scores: ") and "sha256 mismatch" in line and TINY_SCORES_SHA256 in line
    assert_nothing_extracted(cwd / "data" / "raw_scores")


def test_missing_column_names_the_file_and_the_column(tmp_path):
    columns = [c for c in ASAP_COLUMNS if c != "maestro_midi_performance"]
    archive = make_asap_archive(tmp_path / "old.zip", columns=columns)
    cwd = params_dir(tmp_path / "run", scores=str(archive))
    line = stage_error(cwd, "velocity.stages.scores", "data/raw_scores")
    assert line == f"scores: {archive}: metadata.csv lacks ASAP's column(s) maestro_midi_performance"
    assert_nothing_extracted(cwd / "data" / "raw_scores")


def test_zip_slip_member_is_refused(tmp_path):
    archive = make_asap_archive(tmp_path / "evil.zip", extra=[("../evil", b"x")])
    out = tmp_path / "work" / "raw_scores"
    with pytest.raises(DownloadError, match=r"unsafe member '\.\./evil' \('\.\.' in path\); nothing extracted"):
        scores(str(archive), out)
    assert_nothing_extracted(out)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "work" / "evil").exists()


def test_unknown_sources_are_clear_errors(tmp_path):
    with pytest.raises(DownloadError, match=r"data.scores 'missing.zip': no such file .*\(expected demo, asap"):
        scores("missing.zip", tmp_path / "raw_scores")
    with pytest.raises(DownloadError, match="data.scores_sha256: 'abc' is not a sha256"):
        scores("demo", tmp_path / "raw_scores", sha256="abc")
    archive = tmp_path / "maestro.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("maestro-v3.0.0/maestro-v3.0.0.csv", "canonical_composer\n")
    with pytest.raises(DownloadError, match="no metadata.csv in the archive; expected ASAP's layout"):
        scores(str(archive), tmp_path / "raw_scores")
    assert_nothing_extracted(tmp_path / "raw_scores")


# --- the demo scores, through the stage's command ---

def test_demo_scores_pair_with_the_demo_corpus(tmp_path):
    cwd = params_dir(tmp_path / "run", scores="demo", demo_pieces=10, demo_seed=0)
    proc = subprocess.run([sys.executable, "-m", "velocity.stages.scores", "data/raw_scores"], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrote the demo scores (10 pieces, seed 0) to data/raw_scores/asap-dataset" in proc.stderr
    table = assert_scores_extracted(cwd / "data" / "raw_scores", 10 + len(asap_only_performances(10, seed=0)))
    corpus = generate_corpus(tmp_path / "corpus", n_pieces=10, seed=0)
    expected = pd.read_csv(corpus / CSV_NAME)["midi_filename"]
    maestro = table["maestro_midi_performance"][table["maestro_midi_performance"] != ""]
    assert [name.removeprefix(MAESTRO_PREFIX) for name in maestro] == list(expected)
