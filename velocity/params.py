"""Read one params.yaml section into a frozen dataclass.

The dataclasses have no defaults: params.yaml holds every value. A missing or unknown key is a
`ParamsError` naming the key and the file, so a typo fails loudly instead of falling back to a
default somewhere in the code.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml

from velocity.model.config import ParamsError

T = TypeVar("T")

PARAMS_FILE = Path("params.yaml")


def read_params(path: Path | str = PARAMS_FILE) -> dict[str, Any]:
    """The whole params file as a dict."""
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such params file") from None
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(params).__name__}")
    return params


def section(cls: type[T], name: str, params: dict[str, Any]) -> T:
    """Build dataclass `cls` from section `name` of `params`, checking every key."""
    values = params.get(name)
    if not isinstance(values, dict):
        raise ParamsError(f"params.yaml: missing section '{name}'")
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ParamsError(f"params.yaml: unknown key '{name}.{unknown[0]}'")
    required = {
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    missing = sorted(required - set(values))
    if missing:
        raise ParamsError(f"params.yaml: missing key '{name}.{missing[0]}'")
    return cls(**values)


def value(params: dict[str, Any], dotted: str) -> Any:
    """One value, e.g. `extract.sustain`, for a stage that reads a single key of another section."""
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ParamsError(f"params.yaml: missing key '{dotted}'")
        node = node[part]
    return node


def load(cls: type[T], name: str, path: Path | str = PARAMS_FILE) -> T:
    """Section `name` of the params file at `path` as a `cls`."""
    return section(cls, name, read_params(path))


def load_perf_params(cls: type[T], name: str, path: Path | str = PARAMS_FILE) -> T:
    """Subsection `performance_rnn.<name>` of params.yaml as a `cls` (errors name the full key)."""
    key = f"performance_rnn.{name}"
    perf = read_params(path).get("performance_rnn") or {}
    return section(cls, key, {key: perf.get(name)})
