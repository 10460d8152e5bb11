"""Performance RNN: event windows, training, resume, evaluation, sampling and `velocity generate`.

Everything runs on the 10-performance MAESTRO archive with a one-layer, 64-cell LSTM on 64-event
windows: seconds of CPU per training.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pretty_midi
import pytest
import torch
import yaml

from conftest import ROOT, dvc, make_project, one_torch_thread, params_section, project_env, stage_error
from velocity.model.checkpoint import load_checkpoint, save_checkpoint
from velocity.model.harness import file_digest
from velocity.model.events import VOCAB_SIZE, decode, duration_seconds, velocity_to_bin
from velocity.model.performance_rnn import (
    PerformanceRNNConfig,
    build_model,
    checkpoint_state,
    filter_logits,
    sample,
    sequence_nll,
)
from velocity.pipeline.cli import main as velocity_main
from velocity.stages.extract import extract_notes
from velocity.stages.perf_evaluate import PerfEvaluateParams, evaluate_performance_rnn, load_split, untrained_model
from velocity.params import ParamsError
from velocity.model.codec import window_starts
from velocity.params import load_perf_params
from velocity.stages.perf_events import PerfEventsParams, build_perf_events, encode_split
from velocity.stages.perf_train import PerfModelParams, PerfTrainParams, train_performance_rnn

WINDOW = 64
TINY_MODEL = params_section(PerfModelParams, "performance_rnn.model", hidden_size=64, layers=1, dropout=0.0)
TINY_TRAIN = params_section(
    PerfTrainParams, "performance_rnn.train",
    seed=0, epochs=None, steps=150, batch_size=16, lr=0.003, clip_norm=3.0, eval_every=50, checkpoint_every=50, val_windows=64, device="cpu",
    nproc_per_node=1,
)


pytestmark = pytest.mark.usefixtures("single_threaded")


@pytest.fixture(scope="module")
def tiny_data(tiny_zip: Path, tmp_path_factory) -> dict[str, Path]:
    """The tiny archive through the real extract stage, then perf_events (64-event windows)."""
    root = tmp_path_factory.mktemp("perf_tiny")
    with zipfile.ZipFile(tiny_zip) as archive:
        archive.extractall(root / "raw")
    extract_notes(root / "raw" / "maestro-v3.0.0", root / "notes", sustain=False, workers=1)
    build_perf_events(root / "notes", root / "perf_events", params_section(PerfEventsParams, "performance_rnn.events", window=WINDOW, step=WINDOW // 2))
    return {"raw": root / "raw" / "maestro-v3.0.0", "notes": root / "notes", "events": root / "perf_events"}


def load_windows(events_dir: Path, split: str) -> np.ndarray:
    return np.load(events_dir / f"{split}_windows.npy", mmap_mode="r")


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """A 150-step model on the tiny archive, and its file as `velocity generate` reads it."""
    ckpt_dir = tmp_path_factory.mktemp("perf_ckpt")
    with one_torch_thread():  # a module fixture runs outside the tests' single_threaded
        model, result = train_performance_rnn(
            load_windows(tiny_data["events"], "train"),
            load_windows(tiny_data["events"], "validation"),
            TINY_MODEL,
            TINY_TRAIN,
            ckpt_dir,
            data_digest="tiny",
        )
    assert result.step == TINY_TRAIN.steps
    model_path = ckpt_dir.parent / "performance_rnn.pt"
    save_checkpoint(model_path, checkpoint_state(model, init_seed=TINY_TRAIN.seed, step=TINY_TRAIN.steps, sustain=False))
    return model, result.history, model_path


def test_window_starts_cover_each_piece_to_its_end():
    assert window_starts(10, 64, 32) == [0]
    assert window_starts(64, 64, 32) == [0]
    assert window_starts(100, 64, 32) == [0, 32, 36]
    assert window_starts(128, 64, 64) == [0, 64]


def test_a_piece_the_codec_rejects_is_skipped_and_counted(caplog):
    notes = pd.DataFrame(
        {
            "piece_id": ["good", "good", "bad", "bad"],
            "pitch": [60, 62, 60, 62],
            "start": [0.0, 0.5, 0.0, 0.5],
            "end": [0.4, 0.9, 0.4, 0.2],  # the bad piece has a note ending before it starts
            "velocity": [64, 70, 64, 70],
        }
    )
    with caplog.at_level(logging.WARNING, logger="velocity.stages.perf_events"):
        events, offsets, counts = encode_split(notes, "train")
    assert counts["pieces"] == 1 and counts["skipped"] == 1
    assert "train/bad: 1 notes end before they start" in counts["skipped_reasons"]["bad"]
    assert "train/bad" in caplog.text
    assert offsets.tolist() == [0, len(events)] and len(decode(events)) == 2


def test_perf_params_errors_name_the_full_key(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("performance_rnn:\n  events: {window: 64, stepp: 32}\n")
    with pytest.raises(ParamsError, match="unknown key 'performance_rnn.events.stepp'"):
        load_perf_params(PerfEventsParams, "events", params)
    with pytest.raises(ParamsError, match="missing section 'performance_rnn.train'"):
        load_perf_params(PerfTrainParams, "train", params)
    with pytest.raises(ParamsError, match="performance_rnn.train.ema must be in"):
        params_section(PerfTrainParams, "performance_rnn.train", ema=-0.5)
    with pytest.raises(ParamsError, match=r"batch_size \(30\) must share out evenly among nproc_per_node \(4\)"):
        params_section(PerfTrainParams, "performance_rnn.train", batch_size=30, nproc_per_node=4)


def test_perf_events_writes_memmappable_sequences_that_decode_to_the_notes(tiny_data):
    events_dir = tiny_data["events"]
    stats = json.loads((events_dir / "stats.json").read_text())
    for split, n_pieces in (("train", 6), ("validation", 2), ("test", 2)):
        events = np.load(events_dir / f"{split}_events.npy", mmap_mode="r")
        offsets = np.load(events_dir / f"{split}_offsets.npy")
        windows = load_windows(events_dir, split)
        assert isinstance(events, np.memmap) and events.dtype == np.int16 and windows.dtype == np.int16
        assert offsets.dtype == np.int64 and len(offsets) == n_pieces + 1 and offsets[-1] == len(events)
        assert stats[split]["pieces"] == n_pieces and stats[split]["events"] == len(events)
        assert windows.shape == (stats[split]["windows"], WINDOW)
        assert events.min() >= 0 and events.max() < VOCAB_SIZE

        notes = pd.read_parquet(tiny_data["notes"] / f"{split}.parquet")
        pieces = [events[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
        for (piece_id, piece_notes), piece_events in zip(notes.groupby("piece_id", sort=False), pieces):
            decoded = decode(piece_events)
            assert len(decoded) == len(piece_notes), piece_id  # no note lost (these files have no re-strikes)
            assert abs(decoded["start"].min() - piece_notes["start"].min()) <= 0.008

        # Every window is a slice of one piece, padded with -1 only at its end.
        stream = np.asarray(events).tobytes()
        for row in np.asarray(windows):
            real = row[row >= 0]
            assert (row[len(real) :] == -1).all()
            assert real.tobytes() in stream
    train_windows = load_windows(events_dir, "train")
    assert np.array_equal(train_windows[0][WINDOW // 2 :], train_windows[1][: WINDOW // 2])  # hop = step


@pytest.mark.slow
def test_short_training_lowers_test_nll_well_below_the_untrained_model(trained, tiny_data):
    model, history, _ = trained
    assert [p["step"] for p in history] == [50, 100, 150]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    untrained = untrained_model(model.cfg, TINY_TRAIN.seed)
    metrics = evaluate_performance_rnn(model, untrained, load_split(tiny_data["events"], "test"), params_section(PerfEvaluateParams, "performance_rnn.evaluate", device="cpu"))
    assert metrics["vocab_size"] == 413
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["nll_per_event"]))
    assert metrics["untrained_perplexity"] == pytest.approx(math.exp(metrics["untrained_nll_per_event"]))
    # An untrained network is close to uniform over 413 events (ln 413 = 6.02 nats).
    assert abs(metrics["untrained_nll_per_event"] - math.log(413)) < 0.2
    assert metrics["nll_per_event"] < metrics["untrained_nll_per_event"] - 1.0
    assert metrics["events"] == sum(len(p) - 1 for p in load_split(tiny_data["events"], "test"))
    assert metrics["untrained_events"] == metrics["events"]  # a few pieces: the untrained network reads them all


def test_the_untrained_network_reads_a_sample_spread_over_the_split():
    from velocity.stages.perf_evaluate import spread_sample

    pieces = [np.full(n + 1, n) for n in range(96)]
    assert [p[0] for p in spread_sample(pieces, 16)] == list(range(0, 96, 6))
    assert [p[0] for p in spread_sample(pieces, 20)] == list(range(0, 96, 5))
    assert spread_sample(pieces, 0) is pieces and len(spread_sample(pieces, 200)) == 96


def test_untrained_model_is_the_network_training_starts_from():
    cfg = PerformanceRNNConfig(hidden_size=32, layers=2)
    torch.manual_seed(123)  # whatever ran before
    a = untrained_model(cfg, 7).state_dict()
    b = untrained_model(cfg, 7).state_dict()
    c = untrained_model(cfg, 8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_sequence_nll_carries_state_across_chunks_and_batches(tiny_data):
    torch.manual_seed(0)
    model = build_model(PerformanceRNNConfig(hidden_size=32, layers=2))
    pieces = [p[:700] for p in load_split(tiny_data["events"], "test")] + [np.array([5]), np.array([5, 300, 133])]
    whole = sequence_nll(model, pieces, batch_size=1, chunk_events=10_000)
    chunked = sequence_nll(model, pieces, batch_size=3, chunk_events=97)
    assert whole[1] == chunked[1] == 699 + 699 + 0 + 2
    assert chunked[0] == pytest.approx(whole[0], rel=1e-5)


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_model_and_curves(tiny_data, tmp_path, caplog):
    """SIGKILL the stage after its first checkpoints; the rerun continues from the last one and
    ends with the weights and curves of an uninterrupted run."""
    events = tiny_data["events"]
    train_w, val_w = load_windows(events, "train"), load_windows(events, "validation")
    params = replace(TINY_TRAIN, steps=300, eval_every=10, checkpoint_every=5, val_windows=16)
    digest = file_digest(events / "train_windows.npy", events / "validation_windows.npy")
    straight, straight_result = train_performance_rnn(train_w, val_w, TINY_MODEL, params, tmp_path / "a", data_digest=digest)

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "params.yaml").write_text(yaml.safe_dump(
        {"extract": {"sustain": False}, "performance_rnn": {"model": asdict(TINY_MODEL), "train": asdict(params)}}
    ))  # fmt: skip
    last = run_dir / "ckpt" / "last.pt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "velocity.stages.perf_train", str(events), "model.pt", "ckpt", "live"],
        cwd=run_dir, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while (not last.exists() or load_checkpoint(last)["step"] < 15) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"training ended before it could be killed:\n{stderr.decode()[-2000:]}"
    killed_at = load_checkpoint(last)["step"]
    assert 0 < killed_at < params.steps

    live_dir = run_dir / "live"
    with caplog.at_level(logging.INFO, logger="velocity.model.harness"):
        resumed, resumed_result = train_performance_rnn(train_w, val_w, TINY_MODEL, params, run_dir / "ckpt", data_digest=digest, live_dir=live_dir)
    assert f"resuming from step {killed_at} of 300" in caplog.text
    assert weights_equal(straight, resumed)
    assert resumed_result.history == straight_result.history
    # The curves hold each evaluation once, as if never interrupted.
    loss_tsv = (live_dir / "plots" / "metrics" / "val_loss.tsv").read_text().split()
    assert loss_tsv[0:2] == ["step", "val_loss"] and loss_tsv[2::2] == [str(s) for s in range(10, 301, 10)]

    # Changed params (or data) must not resume an old run.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="velocity.model.harness"):
        short = replace(params, steps=5, lr=0.001)
        train_performance_rnn(train_w, val_w, TINY_MODEL, short, run_dir / "ckpt", data_digest=digest)
        assert "starting over" in caplog.text
        caplog.clear()
        train_performance_rnn(train_w, val_w, TINY_MODEL, short, run_dir / "ckpt", data_digest="other")
        assert "starting over" in caplog.text


def test_an_empty_test_split_stops_perf_evaluate_with_one_line(tmp_path):
    events = tmp_path / "data" / "perf_events"
    events.mkdir(parents=True)
    np.save(events / "test_events.npy", np.zeros(0, dtype=np.int16))
    np.save(events / "test_offsets.npy", np.zeros(1, dtype=np.int64))  # what perf_events writes for no pieces
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    for events_dir, message in [
        ("data/perf_events", "perf_evaluate: data/perf_events/test_events.npy: no events to score (the test split is empty)"),
        ("data/missing", "perf_evaluate: data/missing/test_events.npy: missing (run the perf_events stage)"),
    ]:
        assert stage_error(tmp_path, "velocity.stages.perf_evaluate", "models/performance_rnn.pt", events_dir, "metrics/performance_rnn.json") == message


def test_top_p_keeps_the_smallest_set_covering_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    kept = lambda p: torch.isfinite(filter_logits(logits, 1.0, p)).tolist()  # noqa: E731
    assert kept(None) == [True] * 4
    assert kept(0.5) == [True, False, False, False]
    assert kept(0.6) == [True, True, False, False]
    assert kept(0.95) == [True, True, True, False]
    assert kept(0.01) == [True, False, False, False]  # the top event always stays
    probs = torch.softmax(filter_logits(logits, 2.0), -1)
    assert probs[0] < 0.5 and probs[3] > 0.05  # temperature > 1 flattens
    with pytest.raises(ValueError):
        filter_logits(logits, 0.0)


def test_sampling_is_deterministic_for_a_seed_and_stops_at_the_length():
    torch.manual_seed(0)
    model = build_model(PerformanceRNNConfig(hidden_size=32, layers=1))
    draw = lambda seed: sample(model, [], 3.0, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    first, again, other = draw(1), draw(1), draw(2)
    assert first == again and first != other
    assert 3.0 <= duration_seconds(first) < 4.0  # stops at the first shift past 3 s
    capped = sample(model, [60], 100.0, generator=torch.Generator().manual_seed(1), max_events=50)
    assert len(capped) == 50


def run_generate(*args: str) -> int:
    return velocity_main(["generate", *map(str, args)])


def midi_notes(path: Path) -> pd.DataFrame:
    midi = pretty_midi.PrettyMIDI(str(path))
    rows = [(n.pitch, n.start, n.end, n.velocity) for inst in midi.instruments for n in inst.notes]
    return pd.DataFrame(rows, columns=["pitch", "start", "end", "velocity"]).sort_values(["start", "pitch"], ignore_index=True)


@pytest.mark.slow
def test_generate_writes_playable_midi_deterministically(trained, tmp_path):
    _, _, model_path = trained
    out, again = tmp_path / "a.mid", tmp_path / "b.mid"
    assert run_generate("-o", out, "--seconds", "8", "--seed", "3", "--model", model_path) == 0
    assert run_generate("-o", again, "--seconds", "8", "--seed", "3", "--model", model_path, "--top-p", "1.0") == 0
    notes = midi_notes(out)
    assert len(notes) > 5
    assert (notes["end"] > notes["start"]).all() and notes["velocity"].between(1, 127).all()
    assert notes["start"].max() < 9.0
    assert out.read_bytes() == again.read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))  # nothing half-written left behind


@pytest.mark.slow
def test_generate_continues_a_primer(trained, tiny_data, tmp_path):
    _, _, model_path = trained
    primer = sorted(tiny_data["raw"].rglob("*.midi"))[2]
    out = tmp_path / "continued.mid"
    rc = run_generate("-o", out, "--primer", primer, "--seconds", "5", "--seed", "0", "--temperature", "0.9", "--top-p", "0.95", "--model", model_path)
    assert rc == 0
    primer_notes, notes = midi_notes(primer), midi_notes(out)
    assert len(notes) > len(primer_notes)
    head = notes.iloc[: len(primer_notes)].sort_values(["pitch", "start"], ignore_index=True)
    expected = primer_notes.sort_values(["pitch", "start"], ignore_index=True)
    assert np.array_equal(head["pitch"], expected["pitch"])
    assert np.abs(head["start"] - expected["start"]).max() <= 0.008 + 1e-9
    assert np.array_equal(velocity_to_bin(head["velocity"]), velocity_to_bin(expected["velocity"]))
    assert notes["start"].max() > primer_notes["end"].max() - 0.01  # music after the primer


def test_generate_fails_clearly_on_a_missing_model_or_a_bad_primer(tmp_path, caplog):
    missing = tmp_path / "nope.pt"
    with caplog.at_level(logging.ERROR):
        assert run_generate("-o", tmp_path / "x.mid", "--model", missing) == 2
    assert f"{missing}: no such checkpoint" in caplog.text
    assert not (tmp_path / "x.mid").exists()

    not_a_model = tmp_path / "weights.pt"
    save_checkpoint(not_a_model, {"something": torch.zeros(2)})
    caplog.clear()
    assert run_generate("-o", tmp_path / "x.mid", "--model", not_a_model) == 2
    assert "not a Performance RNN model file" in caplog.text

    model_path = tmp_path / "untrained.pt"
    save_checkpoint(model_path, checkpoint_state(build_model(PerformanceRNNConfig(hidden_size=8, layers=1)), init_seed=0, step=0, sustain=False))
    bad_primer = tmp_path / "broken.mid"
    bad_primer.write_bytes(b"MThd this is not midi")
    caplog.clear()
    assert run_generate("-o", tmp_path / "x.mid", "--primer", bad_primer, "--model", model_path, "--seconds", "1") == 2
    assert "cannot read primer" in caplog.text and str(bad_primer) in caplog.text
    caplog.clear()
    assert run_generate("-o", tmp_path / "x.mid", "--primer", tmp_path / "absent.mid", "--model", model_path) == 2
    assert "absent.mid: primer file not found" in caplog.text
    assert not (tmp_path / "x.mid").exists()


SMALL_PERF = {
    "data": {"source": "demo", "demo_pieces": 20},
    "performance_rnn": {
        "events": {"window": 64, "step": 32},
        "model": {"hidden_size": 64, "layers": 1},
        "train": {"epochs": None, "steps": 120, "batch_size": 16, "eval_every": 30, "checkpoint_every": 10, "val_windows": 32, "device": "cpu"},
        "evaluate": {"device": "cpu"},
    },
}


@pytest.mark.slow
def test_dvc_repro_perf_evaluate_resumes_after_kill_9(tmp_path):
    project = make_project(tmp_path / "project", SMALL_PERF)
    dvc(project, "repro", "perf_events")

    # Kill the whole `dvc repro` (its process group) once training has checkpointed.
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "perf_train"],
        cwd=project, env=project_env(project), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    checkpoint = project / "models" / "perf_checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(checkpoint)["step"]
    assert 0 < killed_at < 120
    assert not (project / "models" / "performance_rnn.pt").exists()

    result = dvc(project, "repro", "perf_evaluate")
    assert f"resuming from step {killed_at} of 120" in result.stdout + result.stderr
    metrics = json.loads((project / "metrics" / "performance_rnn.json").read_text())
    assert set(metrics) >= {"nll_per_event", "perplexity", "vocab_size", "untrained_nll_per_event", "untrained_perplexity"}
    assert metrics["vocab_size"] == 413
    assert metrics["nll_per_event"] < metrics["untrained_nll_per_event"] - 0.5
    curve = (project / "dvclive" / "perf_train" / "plots" / "metrics" / "val_loss.tsv").read_text().split()[2::2]
    assert curve == ["30", "60", "90", "120"]
    state = load_checkpoint(project / "models" / "performance_rnn.pt")
    assert state["kind"] == "performance_rnn" and state["sustain"] is False

    assert "up to date" in dvc(project, "status", "perf_evaluate").stdout
