"""`velocity generate`: sample a piano performance with the Performance RNN and write it as MIDI.

With `--primer IN.mid`, the primer's notes are encoded (pedal handled as the model's training data
was: the model file records `extract.sustain`), read by the network, and continued for
`--seconds`; the output holds the primer followed by the continuation. Without a primer the model
starts from silence. The same `--seed` gives the same file on CPU.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MODEL = Path("models/performance_rnn.pt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", type=Path, required=True, help="MIDI file to write")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the sampled music (default 30)")
    parser.add_argument("--temperature", type=float, default=1.0, help="<1 plays safer, >1 wilder (default 1.0)")
    parser.add_argument("--top-p", type=float, default=None, help="sample only from the top-p probability mass, e.g. 0.95")
    parser.add_argument("--primer", type=Path, default=None, help="MIDI file to continue")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one, logged)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=f"trained model (default {DEFAULT_MODEL})")
    parser.add_argument("--device", default="cpu", help="cpu (default, deterministic), cuda or auto")


class GenerateError(Exception):
    """Bad arguments or inputs: the message names the file or option and the problem."""


def read_primer_notes(path: Path, sustain: bool):  # -> pd.DataFrame (pandas imported lazily)
    """Notes of the primer MIDI file, read exactly as the extract stage reads the training data."""
    from velocity.model.midi import MidiError
    from velocity.model.notes import read_notes

    if not path.is_file():
        raise GenerateError(f"{path}: primer file not found")
    try:
        return read_notes(path, sustain)
    except (MidiError, OSError, ValueError) as err:
        message = str(err) if str(path) in str(err) else f"{path}: {err}"
        raise GenerateError(f"cannot read primer: {message}") from err


def generate(args: argparse.Namespace) -> Path:
    """Sample and write the performance; raises GenerateError on bad input."""
    import secrets

    import torch
    from tqdm import tqdm

    from velocity.midi_writer import write_piano_midi
    from velocity.model.checkpoint import CheckpointError, load_checkpoint
    from velocity.model.events import decode, duration_seconds, encode_frame
    from velocity.model.performance_rnn import ModelFileError, model_from_state, sample
    from velocity.model.runtime import pick_device

    if args.seconds <= 0:
        raise GenerateError(f"--seconds must be > 0, got {args.seconds}")
    if args.temperature <= 0:
        raise GenerateError(f"--temperature must be > 0, got {args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise GenerateError(f"--top-p must be in (0, 1], got {args.top_p}")
    try:
        state = load_checkpoint(args.model)
        model = model_from_state(state, source=str(args.model))
    except (CheckpointError, ModelFileError) as err:
        hint = " (train one with `dvc repro perf_train`)" if not Path(args.model).exists() else ""
        raise GenerateError(f"{err}{hint}") from err

    primer: list[int] = []
    if args.primer is not None:
        notes = read_primer_notes(args.primer, bool(state.get("sustain", False)))
        primer = encode_frame(notes, source=str(args.primer)).tolist()
        log.info("primer %s: %d notes, %d events, %.1f s", args.primer, len(notes), len(primer), duration_seconds(primer))

    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    if args.seed is None:
        log.info("seed %d (pass --seed %d to get this performance again)", seed, seed)
    device = pick_device(args.device)
    model.to(device)
    generator = torch.Generator().manual_seed(seed)  # a CPU generator: sampling draws on the CPU
    with tqdm(total=round(args.seconds, 3), desc="generate", unit="s", bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s") as bar:
        events = sample(
            model,
            primer,
            args.seconds,
            temperature=args.temperature,
            top_p=args.top_p,
            generator=generator,
            device=device,
            progress=lambda seconds: bar.update(min(seconds, bar.total - bar.n)),  # the last shift may overshoot
        )
    notes = decode(primer + events)
    write_piano_midi(notes, args.output, name="Performance RNN", resolution=220)  # pretty_midi's default resolution
    log.info("wrote %s: %d notes, %.1f s (%d sampled events)", args.output, len(notes), duration_seconds(primer + events), len(events))
    return args.output


def run(args: argparse.Namespace) -> int:
    try:
        generate(args)
    except GenerateError as err:
        log.error("%s", err)
        return 2
    return 0
