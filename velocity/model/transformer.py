"""The seed's encoder-decoder Transformer, as in The Annotated Transformer, and an encoder-only twin.

Source tokens (pitch, dstart bin, duration bin) go through the encoder; the decoder reads `<s>`
followed by the previous notes' velocity tokens and predicts each note's velocity token. With
`aligned`, decoder position t also adds note t's encoder state to its input. Each note may also
carry per-note feature ids (velocity/model/features.py): every feature has its own embedding, summed with
the source token's (factorized embeddings); with no features the model is the seed's exactly.
`kind: encoder` drops the decoder: a bidirectional encoder reads the notes and a linear head gives
every note's velocity distribution in one pass (non-autoregressive). Names follow
the paper: `d_model`, `d_ff`, `heads`, `layers`. Masks are boolean, True = may attend, and broadcast
to the attention scores' shape (B, h, T_query, T_key).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from velocity.model.codec import N_SPECIALS, PAD, START

KINDS = ("encoder-decoder", "encoder")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the network: params.yaml's `model:` section, the vocabulary sizes, the window length
    and the note features of the data. The seed's: layers=6, heads=8, d_model=512, d_ff=2048."""

    src_vocab: int
    tgt_vocab: int
    layers: int
    heads: int
    d_model: int
    d_ff: int
    dropout: float
    max_len: int  # longest sequence the positional table covers (the window length)
    # Decoder input t also carries note t's encoder state (memory[:, t]), so the decoder need not
    # learn through cross-attention where note t is. Source and target are aligned one to one; the
    # seed's model (False) had to find the alignment itself, which it barely did (see README).
    aligned: bool
    kind: str  # "encoder-decoder" (the seed's) or "encoder": no decoder, every velocity from the notes in one pass
    features: tuple[int, ...]  # ids of each per-note feature (0 = pad included); () = the seed's inputs

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(int(n) for n in self.features))
        if self.kind not in KINDS:
            raise ValueError(f"ModelConfig: kind must be one of {KINDS}, got {self.kind!r}")
        if self.d_model % self.heads:
            raise ValueError(f"ModelConfig: d_model {self.d_model} is not divisible by heads {self.heads}")
        if self.tgt_vocab <= N_SPECIALS:
            raise ValueError(f"ModelConfig: tgt_vocab {self.tgt_vocab} has no velocity tokens")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return cls(**d)


# ---------------------------------------------------------------------------------------------
# Masks


def src_key_mask(src: torch.Tensor) -> torch.Tensor:
    """(B, S) source ids -> (B, 1, 1, S) mask hiding padded source positions from every query."""
    return (src != PAD)[:, None, None, :]


def causal_mask(size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(1, 1, T, T) mask letting position i see positions <= i only ("subsequent_mask")."""
    return torch.ones(size, size, dtype=torch.bool, device=device).tril()[None, None]


# ---------------------------------------------------------------------------------------------
# Dropout
#
# torch's CPU dropout draws one Bernoulli sample at a time from its Mersenne Twister: on this
# project's 2-core machine that was a third of a training step (docs/experiments.md). On the CPU the
# keep mask is drawn four notes at a time from 64-bit random words of the same seeded generator
# instead; on a GPU torch's own dropout is fast and stays.

KEEP_STEPS = 1 << 15  # the CPU keep mask's resolution: p is rounded to a multiple of 1/32768


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """A bool tensor of `shape`, each entry True with probability 1 - p (p in steps of 1/KEEP_STEPS),
    from the global torch generator: each 64-bit random word gives four 15-bit draws."""
    n = math.prod(shape)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_().view(torch.int16)[:n]
    return bits.bitwise_and_(KEEP_STEPS - 1).ge(round(p * KEEP_STEPS)).view(shape)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """`F.dropout(x, p, training)`: each entry zeroed with probability p, the rest scaled by 1 / (1 - p)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not 0.0 < p < 1.0:
        return F.dropout(x, p, True)
    return x * keep_mask(x.shape, p).to(x.dtype).mul_(1.0 / (1.0 - p))  # autograd keeps the scaled mask for the backward pass


class Dropout(nn.Module):
    """`nn.Dropout` through `dropout`."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, p: float, training: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_k)) v over (B, h, T, d_k) heads, the weights through `dropout` when
    training: torch's fused attention, except for dropout on the CPU, written out for `dropout`'s
    cheaper mask (the mask as an additive bias, which the score product adds in the same pass)."""
    if not (training and p > 0.0 and q.device.type == "cpu"):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p if training else 0.0)
    B, h, T_q, d_k = q.shape
    T_k = k.shape[2]
    q, k, v = q.reshape(B * h, T_q, d_k), k.reshape(B * h, T_k, d_k), v.reshape(B * h, T_k, d_k)
    if mask is None:
        scores = torch.bmm(q, k.transpose(1, 2)).mul_(1.0 / math.sqrt(d_k))
    else:
        bias = torch.zeros(mask.shape, dtype=q.dtype).masked_fill_(~mask, float("-inf"))  # (B or 1, h or 1, T_q or 1, T_k)
        if bias.shape[0] * bias.shape[1] > 1:
            bias = bias.expand(B, h, *bias.shape[2:])
        scores = torch.baddbmm(bias.reshape(-1, *bias.shape[2:]), q, k.transpose(1, 2), alpha=1.0 / math.sqrt(d_k))
    y = torch.bmm(dropout(scores.softmax(dim=-1), p, True), v)
    return y.view(B, h, T_q, d_k)


# ---------------------------------------------------------------------------------------------
# Building blocks


class KVCache:
    """Keys and values of one attention layer, so a decoding step only projects the new token.

    Self-attention appends one position per step into buffers preallocated for `max_len` steps
    (growing with torch.cat would copy the whole cache every step); cross-attention projects the
    encoder memory once and keeps it.
    """

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len
        self.length = 0
        self.k: torch.Tensor | None = None  # (B, h, max_len, d_k)
        self.v: torch.Tensor | None = None
        self.memory_kv: tuple[torch.Tensor, torch.Tensor] | None = None  # cross-attention's (k, v)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add (B, h, t, d_k) keys/values; return all of them so far."""
        B, h, t, d_k = k.shape
        if self.k is None:
            self.k = k.new_empty(B, h, self.max_len, d_k)
            self.v = v.new_empty(B, h, self.max_len, d_k)
        if self.length + t > self.max_len:
            raise ValueError(f"KVCache: {self.length + t} positions exceed max_len {self.max_len}")
        self.k[:, :, self.length : self.length + t] = k
        self.v[:, :, self.length : self.length + t] = v
        self.length += t
        return self.k[:, :, : self.length], self.v[:, :, : self.length]


class MultiHeadAttention(nn.Module):
    """h heads of scaled dot-product attention over d_k = d_model / h dimensions each."""

    def __init__(self, heads: int, d_model: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.d_k = heads, d_model // heads
        self.w_q = nn.Linear(d_model, d_model)
        self.w_k = nn.Linear(d_model, d_model)
        self.w_v = nn.Linear(d_model, d_model)
        self.w_o = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.heads, self.d_k).transpose(1, 2)  # (B, h, T, d_k)

    def forward(
        self,
        query: torch.Tensor,  # (B, T_q, d_model)
        key_value: torch.Tensor,  # (B, T_k, d_model)
        mask: torch.Tensor | None = None,  # broadcasts to (B, h, T_q, T_k)
        cache: KVCache | None = None,
        cross: bool = False,  # key_value is the encoder memory: with a cache, project it only once
    ) -> torch.Tensor:
        B, T_q, d_model = query.shape
        q = self.split_heads(self.w_q(query))  # (B, h, T_q, d_k)
        if cache is not None and cross and cache.memory_kv is not None:
            k, v = cache.memory_kv
        else:
            k = self.split_heads(self.w_k(key_value))  # (B, h, T_k, d_k)
            v = self.split_heads(self.w_v(key_value))
            if cache is not None:
                if cross:
                    cache.memory_kv = (k, v)
                else:
                    k, v = cache.append(k, v)  # (B, h, T_past + T_q, d_k)
        if mask is not None and mask.dim() == 3:  # The Annotated Transformer's (B, T_q, T_k) masks
            mask = mask.unsqueeze(1)
        y = attention(q, k, v, mask, self.dropout, self.training)  # (B, h, T_q, d_k)
        y = y.transpose(1, 2).reshape(B, T_q, d_model)  # heads side by side again
        return self.w_o(y)


class FeedForward(nn.Module):
    """Position-wise feed-forward: d_model -> d_ff -> d_model with a ReLU."""

    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ff)
        self.w_2 = nn.Linear(d_ff, d_model)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.dropout(F.relu(self.w_1(x))))


class Embeddings(nn.Module):
    """Token embeddings scaled by sqrt(d_model), plus fixed sinusoidal positions, then dropout.

    With `feature_sizes`, each position also carries one id per feature, (B, T, n_features), and
    each feature's embedding is added to the token's before scaling."""

    def __init__(self, vocab: int, d_model: int, max_len: int, dropout: float, feature_sizes: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.lut = nn.Embedding(vocab, d_model)
        self.features = nn.ModuleList(nn.Embedding(n, d_model) for n in feature_sizes)
        self.d_model = d_model
        self.dropout = Dropout(dropout)
        position = torch.arange(max_len, dtype=torch.float32)[:, None]  # (max_len, 1)
        div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        # Not part of the state dict: it is a function of the shape, not learned.
        self.register_buffer("pe", pe, persistent=False)  # (max_len, d_model)

    def forward(self, tokens: torch.Tensor, offset: int = 0, features: torch.Tensor | None = None) -> torch.Tensor:
        T = tokens.shape[1]
        if offset + T > self.pe.shape[0]:
            raise ValueError(f"sequence of {offset + T} tokens is longer than the model's max_len {self.pe.shape[0]}")
        x = self.lut(tokens)  # (B, T, d_model)
        if len(self.features):
            if features is None or features.shape[-1] != len(self.features):
                got = None if features is None else features.shape[-1]
                raise ValueError(f"the model embeds {len(self.features)} note features per position, got {got}")
            for j, embed in enumerate(self.features):
                x = x + embed(features[..., j])
        x = x * math.sqrt(self.d_model)
        return self.dropout(x + self.pe[offset : offset + T])


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward, each as x + dropout(sublayer(norm(x)))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.heads, cfg.d_model, cfg.dropout)
        self.feed_forward = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.norm_1, self.norm_2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor | None) -> torch.Tensor:
        h = self.norm_1(x)
        x = x + self.dropout(self.self_attn(h, h, src_mask))
        return x + self.dropout(self.feed_forward(self.norm_2(x)))


class DecoderLayer(nn.Module):
    """Masked self-attention, attention over the encoder memory, then feed-forward."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.heads, cfg.d_model, cfg.dropout)
        self.src_attn = MultiHeadAttention(cfg.heads, cfg.d_model, cfg.dropout)
        self.feed_forward = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.norm_1, self.norm_2, self.norm_3 = (nn.LayerNorm(cfg.d_model) for _ in range(3))
        self.dropout = Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, d_model)
        memory: torch.Tensor,  # (B, S, d_model)
        src_mask: torch.Tensor | None,
        tgt_mask: torch.Tensor | None,
        self_cache: KVCache | None = None,
        src_cache: KVCache | None = None,
    ) -> torch.Tensor:
        h = self.norm_1(x)
        x = x + self.dropout(self.self_attn(h, h, tgt_mask, cache=self_cache))
        x = x + self.dropout(self.src_attn(self.norm_2(x), memory, src_mask, cache=src_cache, cross=True))
        return x + self.dropout(self.feed_forward(self.norm_3(x)))


class Generator(nn.Module):
    """Decoder states -> target-vocabulary logits (log_softmax is left to the loss)."""

    def __init__(self, d_model: int, vocab: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class DecoderCache:
    """Per-layer self- and cross-attention caches for step-by-step greedy decoding."""

    def __init__(self, layers: int, max_len: int) -> None:
        self.self_attn = [KVCache(max_len) for _ in range(layers)]
        self.src_attn = [KVCache(max_len) for _ in range(layers)]

    @property
    def length(self) -> int:
        return self.self_attn[0].length if self.self_attn else 0


# ---------------------------------------------------------------------------------------------
# The model


def clones(module: nn.Module, n: int) -> nn.ModuleList:
    """n identical copies of `module` (The Annotated Transformer's `clones`)."""
    return nn.ModuleList(copy.deepcopy(module) for _ in range(n))


class NoteEncoder(nn.Module):
    """The encoder both kinds share: source (and feature) embeddings, `layers` self-attention
    layers over every note of the window, a final norm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.src_embed = Embeddings(cfg.src_vocab, cfg.d_model, cfg.max_len, cfg.dropout, cfg.features)
        self.encoder_layers = clones(EncoderLayer(cfg), cfg.layers)
        self.encoder_norm = nn.LayerNorm(cfg.d_model)
        self.generator = Generator(cfg.d_model, cfg.tgt_vocab)

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None, features: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S) source ids [and (B, S, n_features) feature ids] -> (B, S, d_model) memory."""
        if src_mask is None:
            src_mask = src_key_mask(src)
        x = self.src_embed(src, features=features)
        for layer in self.encoder_layers:
            x = layer(x, src_mask)
        return self.encoder_norm(x)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class EncoderOnly(NoteEncoder):
    """`kind: encoder`: each note's velocity logits straight from its encoder state."""

    def forward(self, src: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S) source ids -> (B, S, tgt_vocab) logits."""
        return self.generator(self.encode(src, features=features))


class EncoderDecoder(NoteEncoder):
    """The standard encoder-decoder: `encode` the notes once, `decode` velocities against them."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.tgt_embed = Embeddings(cfg.tgt_vocab, cfg.d_model, cfg.max_len, cfg.dropout)
        self.decoder_layers = clones(DecoderLayer(cfg), cfg.layers)
        self.decoder_norm = nn.LayerNorm(cfg.d_model)

    def decode(
        self,
        memory: torch.Tensor,  # (B, S, d_model)
        src_mask: torch.Tensor | None,  # (B, 1, 1, S)
        tgt: torch.Tensor,  # (B, T) decoder input ids: <s>, then the previous velocities
        tgt_mask: torch.Tensor | None = None,  # default: causal; ignored with a cache
        cache: DecoderCache | None = None,
    ) -> torch.Tensor:
        """Decoder states (B, T, d_model). With `cache`, `tgt` holds only the new positions and
        attends to the cached ones (no mask needed: the past is all it can see)."""
        offset = 0
        if cache is not None:
            offset, tgt_mask = cache.length, None
        elif tgt_mask is None:
            tgt_mask = causal_mask(tgt.shape[1], tgt.device)
        x = self.tgt_embed(tgt, offset)
        if self.cfg.aligned:
            x = x + memory[:, offset : offset + tgt.shape[1]]
        for i, layer in enumerate(self.decoder_layers):
            self_cache = cache.self_attn[i] if cache is not None else None
            src_cache = cache.src_attn[i] if cache is not None else None
            x = layer(x, memory, src_mask, tgt_mask, self_cache, src_cache)
        return self.decoder_norm(x)

    def forward(
        self,
        src: torch.Tensor,  # (B, S)
        tgt_in: torch.Tensor,  # (B, T): <s> followed by tgt[:, :-1]
        src_mask: torch.Tensor | None = None,
        tgt_mask: torch.Tensor | None = None,
        features: torch.Tensor | None = None,  # (B, S, n_features)
    ) -> torch.Tensor:
        """Teacher-forced logits (B, T, tgt_vocab) for training and evaluation."""
        if src_mask is None:
            src_mask = src_key_mask(src)
        memory = self.encode(src, src_mask, features)
        return self.generator(self.decode(memory, src_mask, tgt_in, tgt_mask))

    def new_cache(self, max_len: int | None = None) -> DecoderCache:
        return DecoderCache(self.cfg.layers, max_len or self.cfg.max_len)


class Ensemble(nn.Module):
    """Encoder-only networks trained alike from different seeds (`train.ensemble`): each note's
    velocity distribution is the mean of theirs. It answers as one `EncoderOnly` does, with the
    log of the mean probabilities as logits, so everything that reads a softmax reads their mean."""

    def __init__(self, members: list[EncoderOnly]) -> None:
        super().__init__()
        if not members or any(not isinstance(m, EncoderOnly) for m in members):
            raise ValueError("an ensemble needs one or more encoder-only networks (model.kind: encoder)")
        self.members = nn.ModuleList(members)
        self.cfg = members[0].cfg

    def forward(self, src: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S) source ids -> (B, S, tgt_vocab) log mean probabilities."""
        log_probs = torch.stack([member(src, features).float().log_softmax(dim=-1) for member in self.members])
        return log_probs.logsumexp(dim=0) - math.log(len(self.members))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


VelocityNet = EncoderDecoder | EncoderOnly | Ensemble


def build_model(cfg: ModelConfig) -> VelocityNet:
    """A fresh model of `cfg.kind`, Glorot-initialized as in the paper; deterministic given torch's seed."""
    model = EncoderOnly(cfg) if cfg.kind == "encoder" else EncoderDecoder(cfg)
    for p in model.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)
    return model


def decoder_input(tgt: torch.Tensor) -> torch.Tensor:
    """(B, T) target ids -> (B, T) decoder input: <s> followed by tgt[:, :-1] (teacher forcing)."""
    start = torch.full_like(tgt[:, :1], START)
    return torch.cat([start, tgt[:, :-1]], dim=1)


# ---------------------------------------------------------------------------------------------
# Decoding

PICKS = ("argmax", "median")


def pick_velocity(logits: torch.Tensor, pick: str = "argmax") -> torch.Tensor:
    """(B, tgt_vocab) logits -> (B,) velocity token ids, never a special token.

    argmax: the likeliest token (the seed's greedy decoding). median: the median of the predicted
    velocity distribution, which minimises the expected absolute error of that note.
    """
    logits = logits.float()
    logits[:, :N_SPECIALS] = float("-inf")  # a note always gets a velocity
    if pick == "argmax":
        return logits.argmax(dim=-1)
    if pick == "median":
        below_half = logits.softmax(dim=-1).cumsum(dim=-1) < 0.5  # True up to the median token
        return below_half.sum(dim=-1).clamp(min=N_SPECIALS, max=logits.shape[-1] - 1)
    raise ValueError(f"unknown pick {pick!r}: expected one of {PICKS}")


def one_pass_logits(model: VelocityNet, src: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, tgt_vocab) logits of every note from the notes alone: the encoder-only head, or the
    decoder fed <s> everywhere ("previous velocity unknown", as `train.input_dropout` teaches)."""
    if isinstance(model, EncoderDecoder):
        return model(src, torch.full_like(src, START), features=features)
    return model(src, features)


@torch.no_grad()
def greedy_decode(
    model: VelocityNet,
    src: torch.Tensor,  # (B, T) source ids, 0 = pad
    steps: int | None = None,
    pick: str = "argmax",
    feed_back: bool = True,
    use_cache: bool = True,
    features: torch.Tensor | None = None,  # (B, T, n_features)
) -> torch.Tensor:
    """Predicted target ids (B, steps or T): encode once, then choose each note's velocity token in
    turn (`pick_velocity`), feeding each choice back in. Positions where `src` is padding come back
    as PAD. Later choices never change earlier ones, so `steps` < T gives the first `steps` notes of
    the full decoding (windows whose later notes are owned by a neighbour stop early).

    `feed_back=False` feeds <s> ("previous velocity unknown", as `train.input_dropout` teaches)
    instead of the choices, so each velocity comes from the notes alone, all in one pass.
    With `use_cache` each step runs the decoder on one token against cached keys and values;
    without it, each step reruns the whole prefix (slower, same result; kept for testing).
    An encoder-only model (or an ensemble of them) has nothing to feed back: it always decodes in one pass.
    """
    was_training = model.training
    model.eval()
    try:
        B, T = src.shape
        steps = T if steps is None else steps
        if not isinstance(model, EncoderDecoder) or not feed_back:
            logits = one_pass_logits(model, src, features)[:, :steps]  # (B, steps, tgt_vocab)
            ids = pick_velocity(logits.flatten(0, 1), pick).view(B, steps)
            return ids.masked_fill(src[:, :steps] == PAD, PAD)
        src_mask = src_key_mask(src)
        memory = model.encode(src, src_mask, features)  # (B, T, d_model)
        cache = model.new_cache(steps) if use_cache else None
        # Decoder input: <s>, then each choice in turn. ys[:, t + 1] is the choice for note t.
        ys = torch.full((B, steps + 1), START, dtype=torch.long, device=src.device)
        for t in range(steps):
            if cache is not None:
                h = model.decode(memory, src_mask, ys[:, t : t + 1], cache=cache)  # (B, 1, d_model)
            else:
                h = model.decode(memory, src_mask, ys[:, : t + 1])  # (B, t + 1, d_model)
            ys[:, t + 1] = pick_velocity(model.generator(h[:, -1]), pick)
        return ys[:, 1:].masked_fill(src[:, :steps] == PAD, PAD)
    finally:
        model.train(was_training)
