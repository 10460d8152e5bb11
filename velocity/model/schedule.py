"""The Noam learning-rate schedule of "Attention Is All You Need"."""

from __future__ import annotations


def lr_at(step: int, d_model: int, warmup: int, factor: float = 1.0) -> float:
    """Learning rate for optimizer step `step` (counted from 1; 0 is treated as 1).

    Rises linearly for `warmup` steps, then decays as 1/sqrt(step); peaks at step == warmup with
    factor / sqrt(d_model * warmup).
    """
    step = max(step, 1)
    return factor * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)
