"""params.yaml is the one home of every default: each section maps to one frozen dataclass without
defaults, and a missing, unknown or out-of-range key is one ParamsError naming it."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import ROOT, params_section
from velocity.model.config import ParamsError
from velocity.model.training import TrainConfig
from velocity.stages.bins import BinsParams
from velocity.datasets.archives import DataParams
from velocity.stages.evaluate import EvaluateParams
from velocity.stages.extract import ExtractParams
from velocity.stages.gbt import GbtParams
from velocity.params import read_params, section
from velocity.stages.perf_evaluate import PerfEvaluateParams
from velocity.stages.perf_events import PerfEventsParams
from velocity.stages.perf_train import PerfModelParams, PerfTrainParams
from velocity.stages.train import ModelParams
from velocity.stages.vocab import VocabParams
from velocity.stages.windows import WindowsParams

SECTIONS = {
    "data": DataParams, "extract": ExtractParams, "bins": BinsParams, "vocab": VocabParams, "windows": WindowsParams,
    "gbt": GbtParams, "model": ModelParams, "train": TrainConfig, "evaluate": EvaluateParams,
    "performance_rnn.events": PerfEventsParams, "performance_rnn.model": PerfModelParams,
    "performance_rnn.train": PerfTrainParams, "performance_rnn.evaluate": PerfEvaluateParams,
}  # fmt: skip


def values(name: str) -> dict:
    tree = read_params(ROOT / "params.yaml")
    for part in name.split("."):
        tree = tree[part]
    return dict(tree)


@pytest.mark.parametrize("name", SECTIONS)
def test_each_section_is_a_dataclass_without_defaults_that_reads_params_yaml(name):
    cls = SECTIONS[name]
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
    with_defaults = [f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
    assert not with_defaults, f"{cls.__name__} has code defaults {with_defaults}: they belong in params.yaml"
    assert {f.name for f in dataclasses.fields(cls)} == set(values(name))
    params_section(cls, name)  # params.yaml's values are valid


@pytest.mark.parametrize("name", SECTIONS)
def test_a_missing_or_unknown_key_names_the_key_and_params_yaml(name):
    cls, section_values = SECTIONS[name], values(name)
    first = sorted(section_values)[0]
    with pytest.raises(ParamsError, match=rf"params.yaml: missing key '{name}.{first}'"):
        section(cls, name, {name: {k: v for k, v in section_values.items() if k != first}})
    with pytest.raises(ParamsError, match=rf"params.yaml: unknown key '{name}.colour'"):
        section(cls, name, {name: {**section_values, "colour": "blue"}})


@pytest.mark.parametrize(("name", "key", "value"), [
    ("train", "batch_size", 0), ("train", "loss", "mse"), ("train", "nproc_per_node", 0), ("train", "averaged_max_windows", 0), ("windows", "tail", "wrap"),
    ("performance_rnn.train", "steps", 0), ("performance_rnn.events", "window", 1), ("evaluate", "figures", "beam"),
])  # fmt: skip
def test_an_out_of_range_value_is_the_same_error_naming_the_key(name, key, value):
    with pytest.raises(ParamsError, match=rf"{name}.{key}"):
        params_section(SECTIONS[name], name, **{key: value})
