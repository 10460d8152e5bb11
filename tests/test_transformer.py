"""The Velocity Transformer: masks, dropout, KV-cached greedy decoding, the loss and the Noam schedule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from velocity.model.loss import abs_error_sum, label_smoothed_kl
from velocity.model.schedule import lr_at
from velocity.model.transformer import (
    N_SPECIALS,
    PAD,
    PICKS,
    START,
    ModelConfig,
    attention,
    build_model,
    causal_mask,
    decoder_input,
    dropout,
    greedy_decode,
    pick_velocity,
)

pytestmark = pytest.mark.usefixtures("single_threaded")


TINY = dict(src_vocab=40, tgt_vocab=20, layers=2, heads=2, d_model=16, d_ff=32, dropout=0.0, max_len=16, aligned=False, kind="encoder-decoder",
            features=())


def tiny_model(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(**{**TINY, **overrides}))


def random_windows(n: int, length: int, pads: list[int] | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, length) source and target ids; window i ends after `pads[i]` real notes (rest padding)."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(N_SPECIALS, TINY["src_vocab"], (n, length), generator=g)
    tgt = torch.randint(N_SPECIALS, TINY["tgt_vocab"], (n, length), generator=g)
    for i, n_notes in enumerate(pads or []):
        src[i, n_notes:] = PAD
        tgt[i, n_notes:] = PAD
    return src, tgt


def test_forward_shapes_and_decoder_input():
    model = tiny_model()
    src, tgt = random_windows(3, 12)
    tgt_in = decoder_input(tgt)
    assert tgt_in[:, 0].eq(START).all() and torch.equal(tgt_in[:, 1:], tgt[:, :-1])
    logits = model(src, tgt_in)
    assert logits.shape == (3, 12, TINY["tgt_vocab"])
    memory = model.encode(src)
    assert memory.shape == (3, 12, TINY["d_model"])
    assert torch.allclose(model.generator(model.decode(memory, None, tgt_in)), logits, atol=1e-6)


def test_decoder_is_causal():
    """Changing a later decoder input leaves the logits of earlier positions unchanged."""
    model = tiny_model().eval()
    src, tgt = random_windows(2, 10)
    tgt_in = decoder_input(tgt)
    changed = tgt_in.clone()
    changed[:, 6:] = (changed[:, 6:] + 1 - N_SPECIALS) % (TINY["tgt_vocab"] - N_SPECIALS) + N_SPECIALS
    a, b = model(src, tgt_in), model(src, changed)
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6)
    assert not torch.allclose(a[:, 6:], b[:, 6:], atol=1e-3)


def test_padding_does_not_change_real_positions():
    """A window of 7 notes gives the same logits alone as padded to 12 (pad keys are masked)."""
    model = tiny_model().eval()
    src, tgt = random_windows(1, 12, pads=[7])
    padded = model(src, decoder_input(tgt))
    alone = model(src[:, :7], decoder_input(tgt[:, :7]))
    assert torch.allclose(padded[:, :7], alone, atol=1e-5)


def test_cpu_dropout_zeroes_a_share_p_scales_the_rest_and_repeats_with_the_seed():
    x = torch.rand(64, 4, 32, 32) + 1.0
    torch.manual_seed(0)
    y = dropout(x, 0.25, training=True)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.01
    torch.testing.assert_close(y[kept], (x / 0.75)[kept])
    torch.manual_seed(0)
    torch.testing.assert_close(dropout(x, 0.25, training=True), y)  # the same seed, the same mask
    assert not torch.equal(dropout(x, 0.25, training=True), y)
    assert dropout(x, 0.25, training=False) is x

    x.requires_grad_(True)
    torch.manual_seed(1)
    y = dropout(x, 0.25, training=True)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() / 0.75)  # the gradient passes where the value did


@pytest.mark.parametrize("mask", ["none", "keys", "causal", "both"])
def test_attention_written_out_for_cpu_dropout_matches_torchs(mask):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 4, generator=g, dtype=torch.float64) for _ in range(3))
    keys = torch.ones(3, 1, 1, 7, dtype=torch.bool)
    keys[1, ..., 5:] = False
    masks = {"none": None, "keys": keys, "causal": causal_mask(7), "both": causal_mask(7) & keys}
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=masks[mask])
    # p below the mask's resolution keeps every weight: the written-out path without its dropout
    torch.testing.assert_close(attention(q, k, v, masks[mask], 1e-9, training=True), expected)
    torch.manual_seed(0)
    dropped = attention(q, k, v, masks[mask], 0.5, training=True)
    assert not torch.allclose(dropped, expected)


def test_build_model_is_deterministic_given_the_seed():
    a, b, c = tiny_model(seed=3), tiny_model(seed=3), tiny_model(seed=4)
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def test_config_rejects_heads_that_do_not_divide_d_model():
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(**{**TINY, "heads": 3})


def test_longer_than_max_len_is_a_clear_error():
    model = tiny_model()
    src, tgt = random_windows(1, TINY["max_len"] + 1)
    with pytest.raises(ValueError, match="max_len"):
        model(src, decoder_input(tgt))


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("pick", PICKS)
def test_cached_greedy_decoding_equals_uncached(aligned, pick):
    model = tiny_model(seed=1, dropout=0.1, aligned=aligned)  # dropout must be off while decoding
    src, _ = random_windows(5, 16, pads=[16, 9, 1, 16, 12], seed=2)
    cached = greedy_decode(model, src, pick=pick, use_cache=True)
    uncached = greedy_decode(model, src, pick=pick, use_cache=False)
    assert cached.shape == src.shape
    assert torch.equal(cached, uncached)
    assert model.training  # mode restored


def test_notes_only_decoding_is_one_pass_with_every_velocity_hidden():
    model = tiny_model(seed=3, aligned=True)
    src, _ = random_windows(4, 16, pads=[16, 7, 16, 12], seed=4)
    out = greedy_decode(model, src, steps=12, pick="median", feed_back=False)
    with torch.no_grad():
        logits = model.eval()(src, torch.full_like(src, START))[:, :12]
    expected = pick_velocity(logits.flatten(0, 1), "median").view(4, 12).masked_fill(src[:, :12] == PAD, PAD)
    assert torch.equal(out, expected)


def test_pick_median_takes_the_middle_of_the_distribution_and_argmax_its_peak():
    probs = torch.zeros(2, 131)
    probs[0, [3, 10, 50]] = torch.tensor([0.45, 0.1, 0.45])  # median 10 (velocity 7); peaks tie: first
    probs[1, [5, 60, 61]] = torch.tensor([0.4, 0.3, 0.3])  # median 60, peak 5
    logits = probs.clamp(min=1e-12).log()
    logits[:, :N_SPECIALS] = 50.0  # specials are never picked, however likely
    assert pick_velocity(logits.clone(), "median").tolist() == [10, 60]
    assert pick_velocity(logits.clone(), "argmax").tolist() == [3, 5]
    with pytest.raises(ValueError, match="pick"):
        pick_velocity(logits, "mean")


@pytest.mark.parametrize("aligned", [False, True])
def test_cached_decoder_states_match_full_decoding(aligned):
    """Feeding the decoder one token at a time through the cache gives the teacher-forced states."""
    model = tiny_model(seed=5, aligned=aligned).eval()
    src, tgt = random_windows(3, 11, pads=[11, 4, 8])
    tgt_in = decoder_input(tgt)
    memory = model.encode(src)
    full = model.decode(memory, (src != PAD)[:, None, None, :], tgt_in)
    cache = model.new_cache(11)
    steps = [model.decode(memory, (src != PAD)[:, None, None, :], tgt_in[:, t : t + 1], cache=cache) for t in range(11)]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_greedy_decoding_emits_only_velocity_tokens_and_pad_at_padding():
    model = tiny_model(seed=2)
    with torch.no_grad():  # make the specials by far the likeliest: decoding must still skip them
        model.generator.proj.bias[:N_SPECIALS] = 1e4
    src, _ = random_windows(3, 16, pads=[16, 5, 11])
    out = greedy_decode(model, src)
    notes = src != PAD
    assert (out[notes] >= N_SPECIALS).all() and (out[notes] < TINY["tgt_vocab"]).all()
    assert (out[~notes] == PAD).all()


def test_overfits_one_small_batch():
    """A tiny model drives the loss on one batch to near zero and then decodes it exactly."""
    model = tiny_model(seed=0, d_model=32, d_ff=64)
    src, tgt = random_windows(4, 12, pads=[12, 12, 9, 12], seed=7)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.98), eps=1e-9)
    for _ in range(300):
        loss, n_tokens = label_smoothed_kl(model(src, decoder_input(tgt)), tgt, smoothing=0.0)
        optimizer.zero_grad()
        (loss / n_tokens).backward()
        optimizer.step()
    assert loss.item() / n_tokens < 0.02
    assert torch.equal(greedy_decode(model, src), tgt)


# --- loss -------------------------------------------------------------------------------------


def test_label_smoothed_loss_matches_a_hand_computation():
    """V = 4 tokens (0 = pad), two positions of which the second is padding."""
    logits = torch.tensor([[[0.0, 1.0, 2.0, 3.0], [5.0, 0.0, 0.0, 0.0]]])
    target = torch.tensor([[2, PAD]])
    smoothing = 0.1
    # By hand: softmax of [0, 1, 2, 3]; the true token 2 gets 0.9, tokens 1 and 3 get 0.1 / (4 - 2)
    # each, the pad column nothing. KL = sum_v p_v * (log p_v - log q_v).
    z = sum(math.exp(x) for x in (0.0, 1.0, 2.0, 3.0))
    log_q = [x - math.log(z) for x in (0.0, 1.0, 2.0, 3.0)]
    p = {1: 0.05, 2: 0.9, 3: 0.05}
    expected = sum(pv * (math.log(pv) - log_q[v]) for v, pv in p.items())
    loss, n_tokens = label_smoothed_kl(logits, target, smoothing)
    assert n_tokens == 1
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_loss_without_smoothing_is_cross_entropy_and_matches_kldiv():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 9)
    target = torch.randint(N_SPECIALS, 9, (2, 6))
    target[1, 4:] = PAD
    plain, n = label_smoothed_kl(logits, target, smoothing=0.0)
    assert n == 10
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 9), target.reshape(-1), ignore_index=PAD, reduction="sum")
    assert plain.item() == pytest.approx(ce.item(), rel=1e-5)
    # The Annotated Transformer's construction: an explicit smoothed distribution and KLDivLoss(sum).
    log_q = torch.log_softmax(logits.reshape(-1, 9), dim=-1)
    flat = target.reshape(-1)
    true_dist = torch.full_like(log_q, 0.1 / (9 - 2))
    true_dist.scatter_(1, flat[:, None], 0.9)
    true_dist[:, PAD] = 0
    true_dist[flat == PAD] = 0
    reference = torch.nn.KLDivLoss(reduction="sum")(log_q, true_dist)
    assert label_smoothed_kl(logits, target, 0.1)[0].item() == pytest.approx(reference.item(), rel=1e-5)


def test_abs_error_is_the_velocity_distance_over_notes():
    logits = torch.full((1, 3, 10), -5.0)
    logits[0, 0, 7] = 5.0  # predicts id 7 for true 4: distance 3
    logits[0, 1, 0] = 9.0  # the pad column is ignored; the best velocity is id 5 for true 5
    logits[0, 1, 5] = 5.0
    target = torch.tensor([[4, 5, PAD]])
    err, n = abs_error_sum(logits, target)
    assert (err.item(), n) == (3, 2)


# --- schedule ---------------------------------------------------------------------------------


def test_noam_schedule_values():
    d_model, warmup = 512, 4000
    assert lr_at(1, d_model, warmup) == pytest.approx(512**-0.5 * 4000**-1.5)
    assert lr_at(0, d_model, warmup) == lr_at(1, d_model, warmup)
    peak = lr_at(warmup, d_model, warmup)
    assert peak == pytest.approx(1 / math.sqrt(512 * 4000))
    assert lr_at(warmup // 2, d_model, warmup) == pytest.approx(peak / 2)  # linear warmup
    assert lr_at(4 * warmup, d_model, warmup) == pytest.approx(peak / 2)  # then 1/sqrt(step)
    assert max(lr_at(s, d_model, warmup) for s in range(1, 3 * warmup)) == pytest.approx(peak)
    assert lr_at(100, 128, 200, factor=2.0) == pytest.approx(2 * lr_at(100, 128, 200))
