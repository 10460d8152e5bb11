"""The decodings: how a trained model's distributions become one velocity per note.

Torch-free on purpose, so that reading params (evaluate) and `velocity --help` stay quick. The
machinery that carries them out is velocity/model/pieces.py.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decoding:
    """How a window's velocities are chosen, and the evaluate metric that scores it."""

    pick: str  # argmax or median of each note's distribution (`pick_velocity`)
    feed_back: bool  # feed each choice back into the decoder (`greedy_decode`); an encoder has none
    metric: str  # evaluate's key for its MAE on the test notes
    average: bool = False  # average each note's distribution over every window holding it (one pass)
    calibrated: bool = False  # then stretch the dynamics as learned on validation (`Calibration`)


# In the order they were added, the seed's first: evaluate scores them in this order.
DECODINGS = {
    "greedy": Decoding("argmax", True, "velocity_mae"),  # the likeliest velocity, fed back note by note
    "median": Decoding("median", True, "velocity_mae_median"),  # the median of each note's distribution (least absolute error), fed back
    "notes-only": Decoding("median", False, "velocity_mae_notes_only"),  # each note's median from the notes alone, centre window
    "averaged": Decoding("median", False, "velocity_mae_averaged", average=True),  # the median of the note's distribution averaged over its windows
    "pianist": Decoding("median", False, "velocity_mae_pianist", average=True, calibrated=True),  # averaged, with a pianist's range restored
}

# What `velocity predict` and the studio use unless told otherwise, and what evaluate's `*_predict` keys score.
DEFAULT_DECODING = "pianist"

# Windows decoded at once by the averaged decodings unless told otherwise. Small on purpose: a batch's
# activations (8 windows: 2 MB a tensor) are reused by the allocator, and each CPU thread decodes its
# own batch (velocity.model.runtime.batch_map); 256 windows' (67 MB a tensor) were page-faulted afresh
# on every op, which cost `velocity predict` on a 200,000-note piece a third more CPU time and 600 MB.
DEFAULT_BATCH_WINDOWS = 8
# The other decodings keep 256: an encoder-decoder decodes a batch note by note, each step's Python
# work shared by every window of the batch.
STEPWISE_BATCH_WINDOWS = 256

# The order the command and the studio offer them: the newest, the default, first.
OFFERED = tuple(reversed(DECODINGS))


def find_decoding(name: str) -> Decoding:
    """The decoding called `name`; ValueError naming the known ones otherwise."""
    if name not in DECODINGS:
        raise ValueError(f"unknown decoding {name!r}: expected one of {', '.join(DECODINGS)}")
    return DECODINGS[name]


def default_batch_windows(decoding: str) -> int:
    """Windows decoded at once by `decoding` unless told otherwise."""
    return DEFAULT_BATCH_WINDOWS if find_decoding(decoding).average else STEPWISE_BATCH_WINDOWS
