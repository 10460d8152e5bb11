"""Stage `vocab`: every source token (pitch x dstart bin x duration bin [x velocity bin]) and every
target token (velocity 0..127), each after the three specials.

Sizes follow the bins: 88*3*3 + 3 = 795 source and 128 + 3 = 131 target tokens for 3x3 bins,
88*3*3*3 + 3 = 2,379 source tokens with `vocab.velocity_hint` (the seed's original code).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from velocity import params as params_lib
from velocity.io import write_json
from velocity.model.codec import PIANO_PITCHES, SPECIALS, VELOCITIES, Vocab, n_bins, src_token_name, tgt_token_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VocabParams:
    velocity_hint: bool


def build_vocab(bins: dict, velocity_hint: bool) -> Vocab:
    """Source and target vocabularies for these bin edges."""
    dstart_bins = range(n_bins(bins["dstart"]))
    duration_bins = range(n_bins(bins["duration"]))
    if velocity_hint:
        velocity_bins = range(n_bins(bins["velocity"]))
        src = [src_token_name(*t) for t in itertools.product(PIANO_PITCHES, dstart_bins, duration_bins, velocity_bins)]
    else:
        src = [src_token_name(*t) for t in itertools.product(PIANO_PITCHES, dstart_bins, duration_bins)]
    tgt = [tgt_token_name(v) for v in VELOCITIES]
    return Vocab(src=SPECIALS + src, tgt=SPECIALS + tgt)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bins", type=Path, help="data/bins.json")
    parser.add_argument("out", type=Path, help="data/vocab.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    params = params_lib.load(VocabParams, "vocab")
    vocab = build_vocab(json.loads(args.bins.read_text()), params.velocity_hint)
    write_json(args.out, vocab.to_dict())
    log.info("wrote %s: %d source and %d target tokens", args.out, len(vocab.src), len(vocab.tgt))


if __name__ == "__main__":
    main()
