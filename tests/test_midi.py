"""The one MIDI reader (velocity/model/midi.py) and the note rules on top of it, on hand-built damaged files.

`DAMAGED` is shared with tests/test_predict.py, which checks that `velocity predict` keeps, warns
about and refuses exactly what the extract stage does.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import symusic

from velocity.model.midi import MidiError, parse_midi, read_midi
from velocity.model.notes import read_piece


# ---------------------------------------------------------------------------------------------
# Byte helpers: Standard MIDI Files written by hand, so damage lands exactly where intended


def varlen(value: int) -> bytes:
    out = [value & 0x7F]
    while value > 0x7F:
        value >>= 7
        out.append(0x80 | (value & 0x7F))
    return bytes(reversed(out))


def ev(delta: int, *data: int) -> bytes:
    """One event: delta time (ticks) and its bytes."""
    return varlen(delta) + bytes(data)


EOT = ev(0, 0xFF, 0x2F, 0x00)


def tempo(delta: int, microseconds: int) -> bytes:
    return ev(delta, 0xFF, 0x51, 0x03, *microseconds.to_bytes(3, "big"))


def on(delta: int, pitch: int, velocity: int = 64, channel: int = 0) -> bytes:
    return ev(delta, 0x90 | channel, pitch, velocity)


def off(delta: int, pitch: int, channel: int = 0) -> bytes:
    return ev(delta, 0x80 | channel, pitch, 0)


def program(delta: int, number: int, channel: int = 0) -> bytes:
    return ev(delta, 0xC0 | channel, number)


def chunk(body: bytes, extra_length: int = 0) -> bytes:
    """A track chunk; `extra_length` makes its length field lie by that many bytes."""
    return b"MTrk" + struct.pack(">I", len(body) + extra_length) + body


def smf(*tracks: bytes, fmt: int = 1, tpq: int = 480, n_tracks: int | None = None) -> bytes:
    return b"MThd" + struct.pack(">IHHH", 6, fmt, len(tracks) if n_tracks is None else n_tracks, tpq) + b"".join(tracks)


CONDUCTOR = chunk(tempo(0, 500_000) + EOT)
THREE_NOTES = on(0, 60, 50) + off(480, 60) + on(0, 62, 60) + off(480, 62) + on(0, 64, 70) + off(480, 64)


def _damaged() -> dict[str, tuple[bytes, list[tuple[int, int, int, int]] | str, set[str]]]:
    """name -> (bytes, the piece's notes as (pitch, start_tick, end_tick, velocity) or the error, warning kinds)."""
    three = [(60, 0, 480, 50), (62, 480, 960, 60), (64, 960, 1440, 70)]
    intact = smf(CONDUCTOR, chunk(THREE_NOTES + EOT))
    return {
        "intact": (intact, three, set()),
        # The file ends inside the release of 64 (its last 2 bytes and End of Track missing).
        "truncated_mid_track": (intact[:-6], three[:2] + [(64, 960, 960, 70)], {"files_truncated", "notes_closed_at_track_end"}),
        # The header announces 3 tracks; the file ends after the second's first note-on.
        "truncated_between_tracks": (smf(CONDUCTOR, chunk(THREE_NOTES + EOT), chunk(on(0, 72, 90) + off(480, 72) + EOT), n_tracks=3)[:-7],
                                     three[:1] + [(72, 0, 0, 90)] + three[1:], {"files_truncated", "notes_closed_at_track_end"}),  # fmt: skip
        "missing_note_off": (smf(CONDUCTOR, chunk(on(0, 60, 50) + off(480, 60) + on(0, 62, 60) + ev(1000, 0xB0, 7, 100) + EOT)),
                             [(60, 0, 480, 50), (62, 480, 1480, 60)], {"notes_closed_at_track_end"}),  # fmt: skip
        "bad_chunk_length_long": (smf(chunk(tempo(0, 500_000) + EOT, extra_length=9), chunk(THREE_NOTES + EOT)), three, {"files_bad_chunk_length"}),
        "bad_chunk_length_short": (smf(CONDUCTOR, chunk(THREE_NOTES + EOT, extra_length=-5)), three, {"files_bad_chunk_length"}),
        "bad_event": (smf(CONDUCTOR, chunk(on(0, 60, 50) + off(480, 60) + ev(0, 0xF4) + on(0, 62, 60) + off(480, 62) + EOT)),
                      [(60, 0, 480, 50)], {"files_bad_event"}),  # fmt: skip
        "empty": (b"", "not a readable MIDI file (empty file)", set()),
        "text": (b"MIDI? Certainly a MIDI file.\n" * 3, "not a readable MIDI file (no MThd header)", set()),
        "no_notes": (smf(CONDUCTOR), "no notes", set()),
        "drums_only": (smf(CONDUCTOR, chunk(on(0, 36, 100, 9) + off(100, 36, 9) + on(0, 38, 90, 9) + off(100, 38, 9) + EOT)),
                       "no piano notes (GM programs 0-7, off the drum channel), only 2 on the drum channel", set()),  # fmt: skip
        "organ_only": (smf(CONDUCTOR, chunk(program(0, 19) + THREE_NOTES + EOT)),
                       "no piano notes (GM programs 0-7, off the drum channel), only 3 of non-piano programs (3 of program 19)", set()),  # fmt: skip
        "piano_and_organ": (smf(CONDUCTOR, chunk(THREE_NOTES + EOT), chunk(program(0, 19, 1) + on(0, 48, 80, 1) + off(960, 48, 1) + EOT)),
                            three, {"notes_ignored_non_piano_program"}),  # fmt: skip
        "piano_and_drums": (smf(CONDUCTOR, chunk(THREE_NOTES + on(0, 36, 100, 9) + off(100, 36, 9) + EOT)), three, {"drum_notes_ignored"}),
        "out_of_range": (smf(CONDUCTOR, chunk(on(0, 15, 40) + off(100, 15) + THREE_NOTES + on(0, 120, 40) + off(100, 120) + EOT)),
                         [(60, 100, 580, 50), (62, 580, 1060, 60), (64, 1060, 1540, 70)], {"notes_dropped_out_of_range"}),  # fmt: skip
        "all_out_of_range": (smf(CONDUCTOR, chunk(on(0, 15, 40) + off(100, 15) + EOT)), "no notes in the piano range 21..108 (1 outside it)", set()),
        "type_0": (smf(chunk(tempo(0, 500_000) + on(0, 60, 50) + on(0, 48, 40, 1) + off(480, 60) + ev(0, 0x81, 48, 0) + EOT), fmt=0),
                   [(48, 0, 480, 40), (60, 0, 480, 50)], set()),  # fmt: skip
        "type_2": (smf(chunk(tempo(0, 500_000) + on(0, 60, 50) + off(480, 60) + EOT), chunk(on(0, 62, 60) + off(480, 62) + EOT), fmt=2),
                   [(60, 0, 480, 50), (62, 0, 480, 60)], {"files_type_2"}),  # fmt: skip
    }


DAMAGED = _damaged()


def write_case(folder: Path, name: str) -> Path:
    path = folder / f"{name}.mid"
    path.write_bytes(DAMAGED[name][0])
    return path


def kinds(warnings) -> set[str]:
    return {w.kind for w in warnings}


@pytest.mark.parametrize("name", [n for n, (_, expected, _) in DAMAGED.items() if not isinstance(expected, str)])
def test_damaged_files_keep_every_good_note_with_a_warning(tmp_path, name):
    _, expected, expected_kinds = DAMAGED[name]
    piece = read_piece(write_case(tmp_path, name))
    rows = piece.midi.notes.iloc[piece.notes["note"].to_numpy()]
    got = list(zip(rows["pitch"], rows["start_tick"], rows["end_tick"], rows["velocity"]))
    assert got == expected
    assert piece.notes["pitch"].tolist() == [p for p, *_ in expected]
    assert kinds(piece.warnings) == expected_kinds
    assert all(w.count >= 1 and "\n" not in w.text for w in piece.warnings)


@pytest.mark.parametrize("name", [n for n, (_, expected, _) in DAMAGED.items() if isinstance(expected, str)])
def test_unusable_files_raise_one_line_naming_the_file(tmp_path, name):
    path = write_case(tmp_path, name)
    with pytest.raises(MidiError) as err:
        read_piece(path)
    assert str(err.value) == f"{path}: {DAMAGED[name][1]}"


def test_damage_is_described_with_its_place():
    data, _, _ = DAMAGED["truncated_mid_track"]
    [truncated, closed] = parse_midi(data, "cut.mid").warnings
    assert truncated.text == f"the file ends inside track 2 (an event cut off at byte {len(data) - 3}); the notes before it are kept"
    assert closed.text == "track 2: 1 note(s) never released, ended at the track's last event (tick 960)" and closed.count == 1
    [bad] = parse_midi(DAMAGED["bad_chunk_length_short"][0]).warnings
    assert bad.text == f"track 2: the chunk length says {len(THREE_NOTES + EOT) - 5} bytes, its End of Track comes after {len(THREE_NOTES + EOT)}"


def test_no_notes_after_damage_names_the_damage(tmp_path):
    path = tmp_path / "cut.mid"
    path.write_bytes(DAMAGED["intact"][0][:30])  # inside the tempo track's End of Track (bytes 29-32)
    with pytest.raises(MidiError, match=r"cut.mid: no notes \(the file ends inside track 1 \(an event cut off at byte 29\)"):
        read_piece(path)


def test_running_status_across_meta_events_and_velocity_offsets():
    """Raw bytes as real files write them: running status (also across a meta event), a note-on of
    velocity 0 as note end, system exclusive, the drum channel. Each note's offset is its velocity byte."""
    events = bytes([
        0x00, 0x90, 60, 50,               # note-on C4 velocity 50
        0x00, 0xFF, 0x01, 0x01, 0x41,     # text meta event; running status survives it
        0x00, 62, 60,                     # running status: note-on D4 velocity 60
        0x60, 60, 0,                      # running status: C4 velocity 0 = note end
        0x00, 62, 0,
        0x00, 0xF0, 0x02, 0x01, 0xF7,     # system exclusive
        0x00, 0x99, 36, 100,              # drum channel note-on
        0x10, 0x89, 36, 0,
        0x00, 0x91, 64, 70,               # channel 2 note-on E4
        0x20, 0x81, 64, 0,
        0x00, 0xFF, 0x2F, 0x00,           # end of track
    ])  # fmt: skip
    data = smf(chunk(events), fmt=0)
    midi = parse_midi(data)
    notes = midi.notes
    assert list(zip(notes["pitch"], notes["start_tick"], notes["end_tick"], notes["channel"])) == [
        (60, 0, 96, 0), (62, 0, 96, 0), (36, 96, 112, 9), (64, 112, 144, 1)
    ]
    assert [data[o] for o in notes["offset"]] == notes["velocity"].tolist() == [50, 60, 100, 70]
    assert midi.warnings == []


def symusic_notes(data: bytes) -> list[tuple[int, int, int, int]]:
    score = symusic.Score.from_midi(data, ttype="tick")
    return sorted((n.time, n.end, n.pitch, n.velocity) for track in score.tracks for n in track.notes)


def reader_notes(data: bytes) -> list[tuple[int, int, int, int]]:
    notes = parse_midi(data).notes
    return sorted(zip(*(notes[c].tolist() for c in ("start_tick", "end_tick", "pitch", "velocity"))))


def test_on_intact_files_the_reader_gives_symusics_notes(tiny_zip):
    """symusic is the reference on files it reads whole: every real file of the tiny archive, and
    the intact hand-built ones (overlapping notes of one key pair oldest first, as symusic does)."""
    overlapping = smf(CONDUCTOR, chunk(on(0, 60, 50) + on(100, 60, 70) + off(100, 60) + off(100, 60) + EOT))
    hand_built = [DAMAGED[n][0] for n in ("intact", "type_0", "type_2", "piano_and_organ", "piano_and_drums", "out_of_range")]
    with zipfile.ZipFile(tiny_zip) as archive:
        real = [archive.read(n) for n in archive.namelist() if n.endswith((".mid", ".midi"))]
    assert len(real) == 10
    for data in [overlapping, *hand_built, *real]:
        assert reader_notes(data) == symusic_notes(data)
        assert parse_midi(data).warnings == [] or data in hand_built


def test_tempo_map_and_pedal_of_all_tracks(tmp_path):
    data = smf(
        chunk(tempo(0, 500_000) + tempo(960, 250_000) + EOT),
        chunk(ev(0, 0xB0, 64, 100) + on(0, 60) + off(960, 60) + ev(0, 0xB0, 64, 0) + on(0, 62) + off(960, 62) + EOT),
        chunk(ev(10, 0xB9, 64, 127) + EOT),  # the drum channel's pedal is not the piano's
    )  # fmt: skip
    midi = parse_midi(data)
    assert midi.tempo_map.ticks.tolist() == [0, 960] and midi.tempo_map.ticks_per_quarter == 480
    assert midi.pedal_ticks.tolist() == [0, 960] and midi.pedal_values.tolist() == [100, 0]
    path = tmp_path / "t.mid"
    path.write_bytes(data)
    notes = read_piece(path).notes
    np.testing.assert_allclose(notes["start"], [0.0, 1.0])
    np.testing.assert_allclose(notes["end"], [1.0, 1.5])
    assert notes["pedal"].tolist() == [1, 0]


def test_read_midi_names_a_missing_file_or_a_folder(tmp_path):
    with pytest.raises(MidiError, match=f"^{tmp_path / 'nope.mid'}: no such file$"):
        read_midi(tmp_path / "nope.mid")
    with pytest.raises(MidiError, match="a folder, not a MIDI file"):
        read_midi(tmp_path)
