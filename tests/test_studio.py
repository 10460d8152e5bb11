"""`velocity studio`: the real server on a free port, driven by a real headless Chromium."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import time
import urllib.error
import urllib.request
import wave
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from playwright.sync_api import Download, Page, expect

from browser import MAX_DRAWN_MEAN_DIFFERENCE, MIN_DRAWN_CORRELATION, chromium_page, drawn_likeness, open_image, require_chromium, show
from conftest import ONE_THREAD, ROOT, free_port, stop, velocity, velocity_env  # ONE_THREAD: server and command add their floats alike
from velocity.model.midi import read_midi
from trained_models import DEMO_PIECE, TEST_SCORE

UPLOAD_LIMIT_MB = 1.5  # the test server's limit: an oversized file is cheap to make


def has_audio() -> bool:
    from velocity.pipeline.audio import AudioUnavailable, find_renderer

    try:
        find_renderer()
        return True
    except AudioUnavailable:
        return False


HAS_AUDIO = has_audio()
AUDIO_MISSING = "no fluidsynth or soundfont (apt-get install fluidsynth fluid-soundfont-gm; .ci/run installs them)"


@pytest.fixture(scope="module")
def studio(trained_model, trained_score_model, trained_timing_model, tmp_path_factory) -> Iterator[dict]:
    """`velocity studio` serving the tiny models; yields its address and inputs."""
    tmp = tmp_path_factory.mktemp("studio")
    port = free_port()
    score_model, scores = trained_score_model
    command = [sys.executable, "-m", "velocity.pipeline", "studio", "--port", str(port), "--model", str(trained_model),
               "--score-model", str(score_model), "--timing-model", str(trained_timing_model), "--max-upload-mb", str(UPLOAD_LIMIT_MB)]  # fmt: skip
    server = subprocess.Popen(
        command, cwd=tmp, env={**velocity_env(tmp), **ONE_THREAD, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        address = server.stdout.readline().strip()  # the first line says where it serves
        assert address == f"velocity studio: http://127.0.0.1:{port} (Ctrl+C to stop)", address
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/config", timeout=5).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the studio did not start"
                time.sleep(0.2)
        yield {"base": base, "tmp": tmp, "model": trained_model, "score_model": score_model, "timing_model": trained_timing_model, "scores": scores}
    finally:
        stop(server)


@pytest.fixture
def page() -> Iterator[Page]:
    with chromium_page(require_chromium("the page needs a real browser")) as page:
        yield page


def open_studio(page: Page, studio: dict) -> None:
    page.goto(studio["base"])
    expect(page.locator("body")).to_have_attribute("data-ready", "true")  # the page has its config


def cards(page: Page) -> list[dict]:
    """Each file's card as the page shows it."""
    return page.evaluate("""[...document.querySelectorAll('.card')].map(card => ({
        name: card.querySelector('.name').textContent, state: card.dataset.state || '', result: card.dataset.result || '',
        error: card.querySelector('.error').hidden ? '' : card.querySelector('.error').textContent,
        kind: card.querySelector('.kind').textContent, counts: card.querySelector('.counts').textContent,
        performed: card.querySelector('.performed').textContent, listen: card.querySelector('.humanized-label').textContent,
        download: card.querySelector('a.download').getAttribute('href'),
        tempo_map: card.querySelector('a.download-tempo-map').hidden ? null : card.querySelector('a.download-tempo-map').getAttribute('href'),
        tempo: card.querySelector('img.tempo').hidden ? null : card.querySelector('img.tempo').naturalWidth,
        warnings: [...card.querySelectorAll('.warnings li')].map(item => item.textContent),
    }))""")


def wait_settled(page: Page, count: int, timeout_seconds: float = 120) -> list[dict]:
    """The cards once all `count` of them are ready or failed."""
    page.wait_for_function("""count => { const all = [...document.querySelectorAll('.card')];
        return all.length === count && all.every(card => ['ready', 'error'].includes(card.dataset.state)); }""",
                           arg=count, timeout=timeout_seconds * 1000)  # fmt: skip
    return cards(page)


def move(page: Page, control: str, value: float) -> None:
    """Move a slider as a hand does: Playwright sets it, then fires its input and change events."""
    page.locator(f"#{control}").fill(str(value))


def wait_remade(page: Page, card: dict, index: int = 0) -> dict:
    """Card `index` once a control's change has made it anew (a result other than `card`'s) and it is ready."""
    page.wait_for_function("""([index, before]) => { const card = document.querySelectorAll('.card')[index];
        return card.dataset.result !== before && card.dataset.state === 'ready'; }""", arg=[index, card["result"]])  # fmt: skip
    return cards(page)[index]


def download(page: Page, selector: str) -> Download:
    """Click the link at `selector` and wait for the file it downloads."""
    with page.expect_download() as started:
        page.locator(selector).click()
    return started.value


def downloaded_bytes(download: Download) -> bytes:
    """The downloaded file's bytes, once Chromium has finished writing it."""
    assert download.failure() is None, download.failure()  # waits until the file is complete
    return Path(download.path()).read_bytes()


def fetch(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST" if data is not None else "GET"), timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def declared_upload(base: str, name: str, size: int) -> tuple[int, bytes]:
    """An upload that declares `size` bytes and sends none: the answer must not wait for them."""
    import http.client

    connection = http.client.HTTPConnection(base.removeprefix("http://"), timeout=60)
    connection.putrequest("POST", f"/api/files?name={name}")
    connection.putheader("Content-Length", str(size))
    connection.endheaders()
    response = connection.getresponse()
    return response.status, response.read()


def chunked_upload(base: str, name: str, data: bytes) -> tuple[int, bytes]:
    """An upload without a declared length, sent in 64 KB chunks until the server answers."""
    import http.client

    connection = http.client.HTTPConnection(base.removeprefix("http://"), timeout=60)
    connection.putrequest("POST", f"/api/files?name={name}")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    try:
        for start in range(0, len(data), 65536):
            chunk = data[start : start + 65536]
            connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        connection.send(b"0\r\n\r\n")
    except OSError:  # the server stopped reading once over the limit; its answer is waiting
        pass
    response = connection.getresponse()
    return response.status, response.read()


def cli_predict(studio: dict, source: Path, out: Path, *options: str) -> str:
    """`velocity predict` with the studio's models, through the command's own `main` in this process
    (the same code as the command, without a Python and torch start-up: tests/test_predict.py runs
    the command itself); its log."""
    from velocity.pipeline.cli import main

    log = io.StringIO()
    handler = logging.StreamHandler(log)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        assert main(["predict", str(source), "-o", str(out), "--model", str(studio["model"]), "--score-model", str(studio["score_model"]),
                     "--timing-model", str(studio["timing_model"]), *options]) == 0  # fmt: skip
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return log.getvalue()


def ogg_seconds(data: bytes) -> float:
    """An Ogg Vorbis file's length: its last page's granule position (samples) over the sample rate."""
    import struct

    last_page = data.rfind(b"OggS")
    samples = struct.unpack_from("<q", data, last_page + 6)[0]
    rate = struct.unpack_from("<I", data, data.find(b"\x01vorbis") + 12)[0]
    return samples / rate


def png_size(data: bytes) -> tuple[int, int]:
    return open_image(data).size


def differing_pixels(screenshot: Path, rect: dict, figure: bytes) -> int:
    """Pixels of the screenshot inside `rect` whose grey level is 32+ away from the figure's (at its size)."""
    box = (round(rect["x"]), round(rect["y"]), round(rect["x"] + rect["width"]), round(rect["y"] + rect["height"]))
    drawn = np.asarray(open_image(screenshot.read_bytes()).convert("L").crop(box), dtype=np.int16)
    expected = np.asarray(open_image(figure).convert("L").resize((drawn.shape[1], drawn.shape[0])), dtype=np.int16)
    return int((np.abs(drawn - expected) >= 32).sum())


def test_a_dropped_score_is_humanized_a_control_reshapes_it_and_the_download_is_the_commands_file(studio, page, demo_raw, tmp_path):
    score = studio["scores"] / TEST_SCORE
    open_studio(page, studio)
    page.set_input_files("#files", [score])
    [card] = wait_settled(page, 1)
    assert card["state"] == "ready" and card["name"] == "midi_score.mid", card
    assert card["kind"].startswith("read as a score: ") and "1/96-beat grid" in card["kind"]
    notes = len(read_midi(score).notes)
    assert card["counts"].startswith(f"{notes} notes read: {notes} given the model's velocity")

    # Strength 0.5 and dynamics 1.5: a new result from the same upload, no new upload.
    move(page, "strength", 0.5)
    move(page, "dynamics", 1.5)
    page.wait_for_function("""before => { const card = document.querySelector('.card');
        return card.dataset.result !== before && card.dataset.state === 'ready'; }""", arg=card["result"])  # fmt: skip
    [moved] = cards(page)
    assert moved["result"] != card["result"]

    expect(page.locator("a.download")).to_have_attribute("aria-disabled", "false")
    file = download(page, "a.download")
    assert file.suggested_filename == "midi_score-humanized.mid"
    downloaded = downloaded_bytes(file)
    cli_predict(studio, score, tmp_path / "cli.mid", "--strength", "0.5", "--dynamics", "1.5")
    assert downloaded == (tmp_path / "cli.mid").read_bytes()  # one code path: the same bytes
    assert downloaded != score.read_bytes()

    # The performance beside it, read as a performance; the zip holds both, as the command writes them.
    performance = demo_raw.parent / DEMO_PIECE
    page.set_input_files("#files", [performance])
    settled = wait_settled(page, 2)
    assert settled[1]["state"] == "ready" and settled[1]["kind"].startswith("read as a performance: ")
    file = download(page, "#download-all")
    assert file.suggested_filename == "humanized.zip"
    archive = zipfile.ZipFile(io.BytesIO(downloaded_bytes(file)))
    assert sorted(archive.namelist()) == sorted(["midi_score-humanized.mid", Path(DEMO_PIECE).stem + "-humanized.mid"])
    cli_predict(studio, performance, tmp_path / "cli_performance.mid", "--strength", "0.5", "--dynamics", "1.5")
    assert archive.read(Path(DEMO_PIECE).stem + "-humanized.mid") == (tmp_path / "cli_performance.mid").read_bytes()


def in_score_order(score: pd.DataFrame, performed: pd.DataFrame) -> pd.DataFrame:
    """The performed file's piano notes, row for row with the score's: a key's notes keep their order
    in a performance (the file's own note order does not: the notes moved), so a key's k-th is its k-th."""
    score_order = np.lexsort((np.arange(len(score)), score["start"].to_numpy(), score["pitch"].to_numpy()))
    performed_order = np.lexsort((np.arange(len(performed)), performed["start"].to_numpy(), performed["pitch"].to_numpy()))
    assert np.array_equal(score["pitch"].to_numpy()[score_order], performed["pitch"].to_numpy()[performed_order])  # one for one
    rows = np.empty(len(score), dtype=np.int64)
    rows[score_order] = performed_order
    return performed.iloc[rows].reset_index(drop=True)


def test_the_perform_switch_plays_a_score_like_a_pianist_and_both_downloads_are_the_commands_files(studio, page, demo_raw, tmp_path):
    from velocity.figures import performed_roll_figure, png_bytes
    from velocity.model.notes import piece_notes
    from velocity.pipeline.humanize import plot_notes
    from velocity.pipeline.studio import FIGURE_DPI, KEPT_TIMING

    score = studio["scores"] / TEST_SCORE
    open_studio(page, studio)
    # Off, as the command is without --perform; timing and pedal shape it only, with the command's range and defaults.
    expect(page.locator("#perform")).not_to_be_checked()
    expect(page.locator("#timing")).to_be_disabled()
    expect(page.locator("#pedal")).to_be_checked()
    timing = page.locator("#timing")
    assert (timing.get_attribute("min"), timing.get_attribute("max"), timing.input_value()) == ("0", "2", "1")
    page.set_input_files("#files", [score])
    [card] = wait_settled(page, 1)
    assert card["state"] == "ready" and card["performed"] == "" and card["tempo"] is None and card["tempo_map"] is None, card

    # On: the score played at the model's timing, its tempo curve drawn and a second download offered.
    page.locator("#perform").check()
    card = wait_remade(page, card)
    assert card["performed"] == "played at timing 1" and card["listen"] == "performed" and card["tempo_map"], card
    assert card["tempo"] > 0  # the tempo figure is drawn
    expect(page.locator(".card img.tempo")).to_be_visible()

    # Timing 0.5: both downloads are the command's files, byte for byte.
    move(page, "timing", 0.5)
    card = wait_remade(page, card)
    assert card["performed"] == "played at timing 0.5", card
    file = download(page, "a.download")
    assert file.suggested_filename == "midi_score-performed.mid"
    log = cli_predict(studio, score, tmp_path / "cli.mid", "--perform", "--timing", "0.5")
    assert downloaded_bytes(file) == (tmp_path / "cli.mid").read_bytes()
    assert f"{score}: played at timing 0.5" in log
    file = download(page, "a.download-tempo-map")
    assert file.suggested_filename == "midi_score-performed-tempo-map.mid"
    cli_predict(studio, score, tmp_path / "cli_tempo_map.mid", "--perform", "--timing", "0.5", "--tempo-map")
    assert downloaded_bytes(file) == (tmp_path / "cli_tempo_map.mid").read_bytes()

    # The notes moved, and the piano roll on the page shows them where the command's file has them.
    piece = piece_notes(read_midi(score))
    written = plot_notes(piece)
    performed = in_score_order(piece.notes, piece_notes(read_midi(tmp_path / "cli.mid")).notes).iloc[: len(written)]
    onset, end, velocity = (performed[column].to_numpy() for column in ("start", "end", "velocity"))
    assert np.abs(onset - written["start"].to_numpy()).max() > 0.05
    assert np.abs((end - onset) - (written["end"] - written["start"]).to_numpy()).max() > 0.05
    title = f"{score.name}: as written vs played at timing 0.5"
    figures = {
        "moved": png_bytes(performed_roll_figure(written, velocity, onset, end, title), dpi=FIGURE_DPI),
        "as written": png_bytes(performed_roll_figure(written, velocity, written["start"].to_numpy(), written["end"].to_numpy(), title), dpi=FIGURE_DPI),
    }  # fmt: skip
    rect = show(page.locator(".card img.rolls"))
    shot = tmp_path / "studio-performed-rolls.png"
    page.screenshot(path=shot)
    differing = {name: differing_pixels(shot, rect, figure) for name, figure in figures.items()}
    assert differing["as written"] > 5 * differing["moved"] + 500, differing

    if HAS_AUDIO:  # what the page plays is the command's file rendered: its exact length, not the score's
        from velocity.pipeline.audio import render_audio

        duration = page.evaluate("""() => new Promise((done, fail) => { const audio = document.querySelector('.card audio.humanized');
            audio.onloadedmetadata = () => done(audio.duration); audio.onerror = () => fail(audio.error.code);
            audio.preload = 'auto'; audio.load(); })""")
        lengths = {}
        for name, source in (("performed", tmp_path / "cli.mid"), ("score", score)):
            render_audio(source, tmp_path / f"{name}.ogg")
            lengths[name] = ogg_seconds((tmp_path / f"{name}.ogg").read_bytes())
        assert abs(duration - lengths["performed"]) < 0.05 < abs(duration - lengths["score"]), (duration, lengths)

    # A tempo of the player's own: the command's --tempo (unticking "the model's own" frees the slider).
    expect(page.locator("#tempo")).to_be_disabled()
    page.locator("#tempo-own").uncheck()
    move(page, "tempo", 80)
    for _ in range(2):  # unticking and moving may each make the card anew
        card = wait_remade(page, card)
        if card["performed"] == "played at timing 0.5, 80 quarter notes a minute":
            break
    assert card["performed"] == "played at timing 0.5, 80 quarter notes a minute", card
    cli_predict(studio, score, tmp_path / "cli_tempo.mid", "--perform", "--timing", "0.5", "--tempo", "80")
    assert downloaded_bytes(download(page, "a.download")) == (tmp_path / "cli_tempo.mid").read_bytes()
    page.locator("#tempo-own").check()
    card = wait_remade(page, card)
    assert card["performed"] == "played at timing 0.5", card

    # No pedal: the command's --no-pedal.
    page.locator("#pedal").uncheck()
    card = wait_remade(page, card)
    assert card["performed"] == "played at timing 0.5, no pedal", card
    cli_predict(studio, score, tmp_path / "cli_no_pedal.mid", "--perform", "--timing", "0.5", "--no-pedal")
    assert downloaded_bytes(download(page, "a.download")) == (tmp_path / "cli_no_pedal.mid").read_bytes()

    # A performance keeps its pianist's timing, says so as the command does, and has nothing to download with a tempo map.
    performance = demo_raw.parent / DEMO_PIECE
    page.set_input_files("#files", [performance])
    settled = wait_settled(page, 2)
    assert settled[1]["kind"].startswith("read as a performance: ") and settled[1]["performed"] == KEPT_TIMING, settled[1]
    assert settled[1]["tempo"] is None and settled[1]["tempo_map"] is None and settled[1]["listen"] == "humanized"
    log = cli_predict(studio, performance, tmp_path / "cli_performance.mid", "--perform", "--timing", "0.5", "--no-pedal")
    assert f"{performance}: {KEPT_TIMING}" in log
    assert downloaded_bytes(download(page, ".card:nth-child(2) a.download")) == (tmp_path / "cli_performance.mid").read_bytes()
    # Download all: each as the page offers it.
    archive = zipfile.ZipFile(io.BytesIO(downloaded_bytes(download(page, "#download-all"))))
    assert sorted(archive.namelist()) == sorted(["midi_score-performed.mid", Path(DEMO_PIECE).stem + "-humanized.mid"])
    assert archive.read("midi_score-performed.mid") == (tmp_path / "cli_no_pedal.mid").read_bytes()


def test_a_bad_file_shows_its_error_and_the_good_ones_still_come_back(studio, page, tmp_path):
    good = studio["scores"] / TEST_SCORE
    damaged = tmp_path / "damaged.mid"
    damaged.write_bytes(good.read_bytes()[:30])  # a header and the start of a track
    not_midi = tmp_path / "notes.mid"
    not_midi.write_text("these are not the notes you are looking for")
    oversized = tmp_path / "huge.mid"
    oversized.write_bytes(good.read_bytes() + bytes(int(UPLOAD_LIMIT_MB * 1e6)))
    open_studio(page, studio)
    page.set_input_files("#files", [damaged, good, not_midi, oversized])
    by_name = {card["name"]: card for card in wait_settled(page, 4)}
    assert by_name["midi_score.mid"]["state"] == "ready" and by_name["midi_score.mid"]["error"] == ""
    # The shared reader's own one-line errors, beside each file's name.
    assert by_name["notes.mid"]["error"] == "notes.mid: not a readable MIDI file (no MThd header)"
    assert by_name["damaged.mid"]["error"].startswith("damaged.mid: ") and by_name["damaged.mid"]["state"] == "error"
    assert by_name["huge.mid"]["error"] == f"huge.mid: {oversized.stat().st_size / 1e6:.1f} MB is over the {UPLOAD_LIMIT_MB:g} MB upload limit"
    # Download all: only the file that worked.
    zip_url = page.evaluate("document.getElementById('download-all').href")
    status, data = fetch(zip_url)
    assert status == 200 and zipfile.ZipFile(io.BytesIO(data)).namelist() == ["midi_score-humanized.mid"]

    # The server refuses an oversized body itself, whatever a page does: on its declared length, before
    # reading it, and when a body without one (chunked) grows past the limit.
    status, answer = declared_upload(studio["base"], "huge.mid", oversized.stat().st_size)
    assert status == 413 and json.loads(answer)["error"] == f"huge.mid: {oversized.stat().st_size / 1e6:.1f} MB is over the 1.5 MB upload limit"
    status, answer = chunked_upload(studio["base"], "huge.mid", oversized.read_bytes())
    assert status == 413 and json.loads(answer)["error"] == "huge.mid: over the 1.5 MB upload limit"
    # A client's name never becomes a path.
    status, answer = fetch(f"{studio['base']}/api/files?name=../../x.mid", good.read_bytes())
    assert status == 200 and not (studio["tmp"].parent.parent / "x.mid").exists()
    status, answer = fetch(f"{studio['base']}/api/files/{json.loads(answer)['id']}/humanize", json.dumps({"strength": 2}).encode())
    assert status == 422 and json.loads(answer)["error"] == "bad controls: strength must be between 0 and 1, got 2"


def test_the_page_is_drawn_as_it_should_be(studio, page, tmp_path):
    """A screenshot of the page, compared with the figures its result should show."""
    from velocity.model.notes import piece_notes
    from velocity.pipeline.humanize import plot_notes, plot_title
    from velocity.pipeline.studio import FIGURE_DPI
    from velocity.figures import piano_roll_figure, png_bytes, velocity_curve_figure

    score = studio["scores"] / TEST_SCORE
    open_studio(page, studio)
    page.set_input_files("#files", [score])
    [card] = wait_settled(page, 1)
    # What it should show, drawn here from the command's file with the same settings.
    cli_predict(studio, score, tmp_path / "cli.mid")
    piece = piece_notes(read_midi(score))
    shown = plot_notes(piece)
    velocity = read_midi(tmp_path / "cli.mid").notes["velocity"].to_numpy()[shown["note"].to_numpy()]
    title = plot_title(piece, score.name)
    expected = {"rolls": png_bytes(piano_roll_figure(shown, velocity, title), dpi=FIGURE_DPI),
                "curve": png_bytes(velocity_curve_figure(shown, velocity, title), dpi=FIGURE_DPI)}  # fmt: skip
    loud = png_bytes(piano_roll_figure(shown, np.full(len(shown), 120), title), dpi=FIGURE_DPI)
    drawn, rect_of = {}, {}
    for which in ("rolls", "curve"):
        rect = rect_of[which] = show(page.locator(f".card img.{which}"))
        shot = tmp_path / f"studio-{which}.png"
        page.screenshot(path=shot)
        drawn[which] = drawn_likeness(shot, rect, expected[which])
        assert drawn[which][0] >= MIN_DRAWN_CORRELATION and drawn[which][1] <= MAX_DRAWN_MEAN_DIFFERENCE, (which, drawn[which], shot)
        assert rect["width"] == pytest.approx(png_size(expected[which])[0], abs=1)  # drawn at its own size, not scaled
    # The comparison can fail: the piano rolls on screen are not those of every note at 120 (the notes
    # are a small part of the figure, so count the pixels that differ rather than average them).
    screen = tmp_path / "studio-rolls.png"
    differing = {name: differing_pixels(screen, rect_of["rolls"], figure) for name, figure in (("model", expected["rolls"]), ("loud", loud))}
    assert differing["loud"] > 10 * differing["model"] + 500, differing
    text = page.locator("body").inner_text()
    assert "midi_score.mid" in text and "read as a score" in text and "Download all (zip)" in text


@pytest.mark.skipif(not HAS_AUDIO, reason=AUDIO_MISSING)
def test_the_page_plays_both_files_rendered_by_fluidsynth(studio, page):
    score = studio["scores"] / TEST_SCORE
    open_studio(page, studio)
    page.set_input_files("#files", [score])
    wait_settled(page, 1)
    expect(page.locator("#notice")).to_have_text("")
    durations = page.evaluate("""() => Promise.all(['original', 'humanized'].map(which => new Promise((done, fail) => {
        const audio = document.querySelector('.card audio.' + which);
        audio.onloadedmetadata = () => done(audio.duration); audio.onerror = () => fail(which + ': ' + audio.error.code);
        audio.preload = 'auto'; audio.load(); })))""")
    from velocity.model.notes import piece_notes

    end = float(piece_notes(read_midi(score)).notes["end"].max())
    for duration in durations:
        # The whole piece: FluidSynth stops once the last notes have died away, a little before or after their note-offs.
        assert end - 3 <= duration <= end + 5, (durations, end)


@pytest.mark.skipif(not HAS_AUDIO, reason=AUDIO_MISSING)
def test_predict_audio_renders_the_humanized_file_louder_when_asked(trained_model, demo_raw, tmp_path):
    source = demo_raw.parent / DEMO_PIECE
    rms = {}
    for loudness in (30, 110):
        wav = tmp_path / f"loud_{loudness}.wav"
        proc = velocity(["predict", str(source), "-o", str(tmp_path / f"{loudness}.mid"), "--model", str(trained_model),
                         "--loudness", str(loudness), "--audio", str(wav)], {**velocity_env(tmp_path), **ONE_THREAD}, tmp_path)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        with wave.open(str(wav)) as audio:
            assert audio.getframerate() == 44_100 and audio.getsampwidth() == 2
            samples = np.frombuffer(audio.readframes(audio.getnframes()), dtype=np.int16).astype(np.float64)
            seconds = audio.getnframes() / audio.getframerate()
        rms[loudness] = float(np.sqrt(np.mean(samples**2)))
        assert seconds >= 5
    assert rms[110] > 2 * rms[30], rms  # the new velocities are what is heard


def test_without_fluidsynth_the_command_says_how_to_install_it_and_still_writes_the_file(trained_model, demo_raw, tmp_path):
    source = demo_raw.parent / DEMO_PIECE
    env = {**velocity_env(tmp_path), **ONE_THREAD, "PATH": str(Path(sys.executable).parent)}  # no fluidsynth on it
    proc = velocity(["predict", str(source), "-o", str(tmp_path / "out.mid"), "--model", str(trained_model), "--audio", str(tmp_path / "out.wav")],
                    env, tmp_path)  # fmt: skip
    assert proc.returncode == 0 and (tmp_path / "out.mid").is_file() and not (tmp_path / "out.wav").exists()
    [line] = [line for line in proc.stderr.splitlines() if "no audio" in line]
    assert "sudo apt-get install fluidsynth fluid-soundfont-gm" in line


def test_audio_unavailable_is_one_line_in_the_page_config(monkeypatch, trained_model, tmp_path):
    from velocity.pipeline.humanize import Models
    from velocity.pipeline.studio import Studio

    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    config = Studio(Models(trained_model, None, tmp_path / "none.pt")).config()
    assert config["audio_unavailable"].startswith("FluidSynth is not installed: install FluidSynth")
    # No timing model: the perform switch is off, and the page says why in the command's words.
    assert config["perform_unavailable"] == f"{tmp_path / 'none.pt'}: no timing model file; train one with `dvc repro timing_train`, or leave out --perform"
    assert config["controls"]["strength"] == {"min": 0.0, "max": 1.0, "default": 1.0}
    assert config["controls"]["loudness"] == {"min": 1.0, "max": 127.0, "default": None}
    assert config["controls"]["timing"] == {"min": 0.0, "max": 2.0, "default": 1.0} and config["pedal"] is True
    assert config["controls"]["tempo"] == {"min": 20.0, "max": 400.0, "default": None}  # the model's own
    assert config["max_upload_bytes"] == 20_000_000 and config["decoding"] == "pianist" and config["input"] == "auto"


def test_a_missing_model_is_one_line_saying_how_to_train_one(tmp_path):
    proc = velocity(["studio", "--port", str(free_port()), "--model", str(tmp_path / "none.pt")], velocity_env(tmp_path), tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"ERROR velocity.pipeline.studio: {tmp_path / 'none.pt'}: no performance model file; train one with `dvc repro train`"]


def test_a_taken_port_is_one_line(trained_model, tmp_path):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proc = velocity(["studio", "--port", str(port), "--model", str(trained_model), "--score-model", str(tmp_path / "none.pt")],
                        velocity_env(tmp_path), tmp_path)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"ERROR velocity.pipeline.studio: cannot serve on 127.0.0.1:{port} (Address already in use): choose another with --port"
    assert "velocity studio: http" not in proc.stdout


def test_controls_are_refused_as_the_command_refuses_them(tmp_path):
    from velocity.pipeline.perform import PerformControls
    from velocity.pipeline.predict import PredictError, plan_jobs
    from velocity.pipeline.studio import byte_range, controls_from

    assert controls_from({}) == controls_from({"strength": 1, "loudness": None, "dynamics": 1, "decoding": "pianist", "input": "auto", "perform": None})
    assert controls_from({}).perform is None  # off, as without --perform
    assert controls_from({"perform": {}}).perform == PerformControls()  # --perform alone
    assert controls_from({"perform": {"timing": 0.5, "pedal": False}}).perform == PerformControls(0.5, False)  # --timing 0.5 --no-pedal
    assert controls_from({"perform": {"tempo": 80}}).perform == PerformControls(tempo=80.0)  # --tempo 80
    assert controls_from({"perform": {"tempo": None}}).perform == PerformControls()  # the model's own
    for bad, why in [({"dynamics": float("inf")}, "dynamics must be at least 0, got inf"), ({"strength": float("nan")}, "strength must be between 0 and 1"),
                     ({"loudness": 0}, "loudness must be between 1 and 127"), ({"volume": 3}, "no control named volume"),
                     ({"decoding": "loud"}, "decoding must be one of pianist"), ({"perform": {"timing": 2.5}}, "timing must be between 0 and 2, got 2.5"),
                     ({"perform": {"tempo_map": True}}, "no perform control named tempo_map"), ({"perform": {"pedal": "no"}}, "pedal must be true or false"),
                     ({"perform": {"tempo": 10}}, "tempo must be between 20 and 400, got 10"),
                     ({"perform": True}, "perform must be null or")]:  # fmt: skip
        with pytest.raises(ValueError, match=why):
            controls_from(bad)
    # --audio (and --plot) files collide like the MIDI files do: a.mid and a.midi would both render a.wav.
    (tmp_path / "songs").mkdir()
    for name in ("a.mid", "a.midi"):
        (tmp_path / "songs" / name).write_bytes(b"")
    with pytest.raises(PredictError, match="would both be written to .*a.wav"):
        plan_jobs([tmp_path / "songs"], tmp_path / "out", audio=tmp_path / "audio")
    # The audio's byte ranges (what a browser asks to read an Ogg file's length and to seek).
    assert [byte_range(header, 100) for header in (None, "bytes=0-", "bytes=10-19", "bytes=-10", "bytes=90-500", "bytes=0-1,5-6")] == [
        None, (0, 99), (10, 19), (90, 99), (90, 99), None]  # fmt: skip
    for beyond in ("bytes=100-", "bytes=-0", "bytes=5-2"):
        with pytest.raises(ValueError):
            byte_range(beyond, 100)
