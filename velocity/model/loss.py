"""The seed's training criterion and its "average distance" metric.

Label smoothing (Szegedy et al.) as The Annotated Transformer implements it: the target
distribution puts 1 - smoothing on the true token and spreads `smoothing` evenly over the other
tokens except <pad>; the loss is the KL divergence from it to the model's distribution, summed over
the non-pad target positions. Callers divide by the token count (`n_tokens`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from velocity.model.codec import N_SPECIALS, PAD


def label_smoothed_kl(
    logits: torch.Tensor,  # (..., V)
    target: torch.Tensor,  # (...) ids, PAD where there is no note
    smoothing: float = 0.1,
    pad: int = PAD,
) -> tuple[torch.Tensor, int]:
    """Summed KL(smoothed target || softmax(logits)) over non-pad positions, and their count."""
    V = logits.shape[-1]
    logits = logits.reshape(-1, V).float()
    target = target.reshape(-1)
    keep = target != pad
    log_q = F.log_softmax(logits[keep], dim=-1)  # (N, V)
    target = target[keep]
    n_tokens = int(target.numel())
    confidence = 1.0 - smoothing
    spread = smoothing / (V - 2)  # every column but the true one and <pad>
    # KL = sum_v p_v log p_v - sum_v p_v log q_v; the first sum is the same for every token.
    entropy_term = confidence * math.log(confidence) if confidence > 0 else 0.0
    if spread > 0:
        entropy_term += (V - 2) * spread * math.log(spread)
    log_q_true = log_q.gather(1, target[:, None]).squeeze(1)  # (N,)
    log_q_rest = log_q.sum(dim=1) - log_q_true - log_q[:, pad]  # columns that get `spread`
    cross = -(confidence * log_q_true + spread * log_q_rest)
    return (cross + entropy_term).sum(), n_tokens


def crps(logits: torch.Tensor, target: torch.Tensor, pad: int = PAD) -> tuple[torch.Tensor, int]:
    """Summed ranked probability score over non-pad positions, and their count.

    Per note: sum over velocities v of (P(velocity <= v) - [true velocity <= v])^2, the discrete
    CRPS. The specials get no probability (the softmax runs over the velocity tokens only).
    """
    V = logits.shape[-1]
    logits, target = logits.reshape(-1, V).float(), target.reshape(-1)
    keep = target != pad
    cdf = F.softmax(logits[keep, N_SPECIALS:], dim=-1).cumsum(dim=-1)  # (N, 128)
    levels = torch.arange(V - N_SPECIALS, device=logits.device)
    true_cdf = (levels[None, :] >= (target[keep] - N_SPECIALS)[:, None]).float()
    return ((cdf - true_cdf) ** 2).sum(), int(keep.sum())


def velocity_argmax(logits: torch.Tensor) -> torch.Tensor:
    """Likeliest velocity token id per position, ignoring the specials (as greedy decoding does)."""
    return logits[..., N_SPECIALS:].argmax(dim=-1) + N_SPECIALS


def abs_error_sum(logits: torch.Tensor, target: torch.Tensor, pad: int = PAD) -> tuple[torch.Tensor, int]:
    """Sum of |predicted id - true id| (= velocity error) over non-pad positions, and their count.

    Teacher-forced: the seed's "average distance" is this sum divided by the count.
    """
    keep = target != pad
    err = (velocity_argmax(logits) - target).abs()[keep]
    return err.sum(), int(keep.sum())
