import json

import pytest

from velocity.params import ParamsError, load
from velocity.model.codec import END, PAD, START, Vocab, id_to_velocity, velocity_to_id
from velocity.stages.vocab import VocabParams, build_vocab

BINS_3x3 = {"dstart": [0, 0.05, 0.5, 9], "duration": [0, 0.15, 0.45, 9], "velocity": [0, 57, 74, 128]}


def test_seed_sizes_795_and_131():
    vocab = build_vocab(BINS_3x3, velocity_hint=False)
    assert (len(vocab.src), len(vocab.tgt)) == (795, 131)
    assert len(set(vocab.src)) == 795


def test_velocity_hint_gives_2379_source_tokens():
    vocab = build_vocab(BINS_3x3, velocity_hint=True)
    assert (len(vocab.src), len(vocab.tgt)) == (2379, 131)
    assert vocab.velocity_hint and not build_vocab(BINS_3x3, False).velocity_hint


def test_sizes_follow_the_bins():
    bins = {**BINS_3x3, "dstart": [0, 0.01, 0.05, 0.2, 0.5, 9]}  # 5 dstart bins
    assert len(build_vocab(bins, False).src) == 88 * 5 * 3 + 3


def test_specials_and_target_ids():
    vocab = build_vocab(BINS_3x3, velocity_hint=False)
    for v in (vocab.src, vocab.tgt):
        assert v[PAD] == "<pad>" and v[START] == "<s>" and v[END] == "</s>"
    assert vocab.tgt[int(velocity_to_id(64))] == "v64"
    assert id_to_velocity(velocity_to_id([0, 1, 127])).tolist() == [0, 1, 127]
    assert Vocab.from_dict(json.loads(json.dumps(vocab.to_dict()))) == vocab


def test_params_loader_names_unknown_and_missing_keys(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("vocab:\n  velocity_hnt: true\n")
    with pytest.raises(ParamsError, match="vocab.velocity_hnt"):
        load(VocabParams, "vocab", path)
    path.write_text("other: {}\n")
    with pytest.raises(ParamsError, match="missing section 'vocab'"):
        load(VocabParams, "vocab", path)
