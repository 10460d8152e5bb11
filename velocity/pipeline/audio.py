"""Hear a MIDI file: render it to audio with FluidSynth and a General MIDI soundfont.

The `fluidsynth` program (not a Python binding) does the work; on Debian and Ubuntu the packages
`fluidsynth` and `fluid-soundfont-gm` provide it and its soundfont. VELOCITY_SOUNDFONT names
another .sf2 file. Where either is missing, AudioUnavailable says in one line how to install them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

INSTALL_HINT = (
    "install FluidSynth and a General MIDI soundfont (Debian/Ubuntu: `sudo apt-get install fluidsynth fluid-soundfont-gm`; "
    "macOS: `brew install fluid-synth` and set VELOCITY_SOUNDFONT to an .sf2 file)"
)
SOUNDFONTS = (  # where Linux distributions and Homebrew put a General MIDI soundfont
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/opt/homebrew/share/soundfonts/default.sf2",
)
FILE_TYPES = {".wav": "wav", ".flac": "flac", ".ogg": "oga", ".oga": "oga"}  # suffix -> fluidsynth's -T
SAMPLE_RATE = 44_100
GAIN = 0.6  # fluidsynth's default 0.2 is quiet for one piano
RENDER_TIMEOUT_SECONDS = 600


class AudioUnavailable(RuntimeError):
    """FluidSynth or a soundfont is missing (the message says how to install them)."""


class AudioError(RuntimeError):
    """One file could not be rendered."""


def find_renderer() -> tuple[str, Path]:
    """The fluidsynth executable and the soundfont to use; AudioUnavailable when either is missing."""
    fluidsynth = shutil.which("fluidsynth")
    if fluidsynth is None:
        raise AudioUnavailable(f"FluidSynth is not installed: {INSTALL_HINT}")
    if chosen := os.environ.get("VELOCITY_SOUNDFONT"):
        if not Path(chosen).is_file():
            raise AudioUnavailable(f"VELOCITY_SOUNDFONT={chosen} is not a file: {INSTALL_HINT}")
        return fluidsynth, Path(chosen)
    soundfont = next((Path(path) for path in SOUNDFONTS if Path(path).is_file()), None)
    if soundfont is None:
        raise AudioUnavailable(f"no General MIDI soundfont found: {INSTALL_HINT}")
    return fluidsynth, soundfont


def render_audio(midi: Path | bytes, out_path: Path) -> None:
    """Render `midi` (a file or its bytes) to `out_path`, its format from the suffix (.wav, .flac,
    .ogg), written atomically. AudioUnavailable without FluidSynth or a soundfont, AudioError when
    the render fails."""
    from velocity.io import atomic_path

    out_path = Path(out_path)
    file_type = FILE_TYPES.get(out_path.suffix.lower())
    if file_type is None:
        raise AudioError(f"{out_path}: audio is written as {', '.join(FILE_TYPES)}, not {out_path.suffix or 'a file without a suffix'}")
    fluidsynth, soundfont = find_renderer()
    with tempfile.TemporaryDirectory(prefix="velocity-audio-") as scratch:
        if isinstance(midi, bytes):
            midi_path = Path(scratch) / "input.mid"
            midi_path.write_bytes(midi)
        else:
            midi_path = Path(midi)
        with atomic_path(out_path) as tmp:
            command = [
                fluidsynth, "-n", "-i", "-q", "-g", str(GAIN), "-r", str(SAMPLE_RATE),
                "-T", file_type, "-F", str(tmp), str(soundfont), str(midi_path),
            ]  # fmt: skip
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=RENDER_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                raise AudioError(f"{midi_path}: FluidSynth took over {RENDER_TIMEOUT_SECONDS} s") from None
            if done.returncode != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
                why = (done.stderr or done.stdout).strip().splitlines()
                raise AudioError(f"{midi_path}: FluidSynth could not render it ({why[-1] if why else f'exit {done.returncode}'})")
