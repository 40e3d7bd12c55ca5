"""Shared fixtures: small routing models with non-zero random weights (a fresh DiT predicts exactly zero), and the
suite builder every test that needs a suite file uses (`write_suite`, `suite_text`)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from harness.models import ModelSpec, build_model, randomize_weights

# A small valid suite: the routing Testbed-XS/4, two Euler steps, one SG run. Tests change what they exercise.
BASE_SUITE: dict[str, Any] = {
    "suite": {"name": "t", "samples": 8, "batch_size": 4, "seed": 0, "metrics": ["fd_testbed"]},
    "sampler": {"kind": "euler", "steps": 2},
    "models": {"main": {"arch": "Testbed-XS/4", "sparsity": "routing", "route": [1, 2]}},
    "runs": [{"name": "sg", "method": "sg", "gamma_strong": 0.25, "gamma_weak": 0.5, "omega": 1.5}],
}


def toml_value(value: Any) -> str:
    """A TOML literal of a Python value, inline (strings as JSON, whose escapes TOML mostly shares)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, (int, str)):
        return json.dumps(value) if isinstance(value, str) else str(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    return "[" + ", ".join(toml_value(v) for v in value) + "]"


def _key(key: str) -> str:
    """A TOML key: bare where TOML allows it, else quoted."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _merged(base: Mapping[str, Any], changes: Mapping[str, Any] | None) -> dict[str, Any]:
    """base updated by changes; a change to None removes the key."""
    out = {**base, **(changes or {})}
    return {k: v for k, v in out.items() if v is not None}


def suite_text(suite: Mapping[str, Any] | None = None, sampler: Mapping[str, Any] | None = None,
               main: Mapping[str, Any] | None = None, models: Mapping[str, Mapping[str, Any]] | None = None,
               runs: list[Mapping[str, Any]] | None = None) -> str:
    """The TOML of BASE_SUITE changed: `suite`, `sampler` and `main` (models.main) update their tables key by key (a
    key set to None is dropped); `models` and `runs` replace theirs whole."""
    tables = {"suite": _merged(BASE_SUITE["suite"], suite), "sampler": _merged(BASE_SUITE["sampler"], sampler)}
    all_models = dict(models) if models is not None else {"main": _merged(BASE_SUITE["models"]["main"], main)}
    lines = []
    for name, table in tables.items():
        lines += [f"[{name}]", *(f"{k} = {toml_value(v)}" for k, v in table.items()), ""]
    for key, table in all_models.items():
        lines += [f"[models.{key}]", *(f"{k} = {toml_value(v)}" for k, v in table.items()), ""]
    for run in BASE_SUITE["runs"] if runs is None else runs:
        lines += ["[[runs]]", *(f"{k} = {toml_value(v)}" for k, v in run.items()), ""]
    return "\n".join(lines)


@pytest.fixture
def write_suite(tmp_path: Path) -> Callable[..., Path]:
    """write_suite(name="suite.toml", folder=tmp_path, **changes) -> the path of a suite_text(**changes) file."""

    def write(name: str = "suite.toml", folder: Path | None = None, **changes: Any) -> Path:
        path = (folder or tmp_path) / name
        path.write_text(suite_text(**changes))
        return path

    return write


@pytest.fixture(scope="module")
def models():
    """{"main", "weak"}: two different Testbed-XS/4 routing models, route [1, 2]."""
    spec = ModelSpec("Testbed-XS/4", sparsity="routing", route=(1, 2))
    return {role: randomize_weights(build_model(spec), seed=i) for i, role in enumerate(("main", "weak"))}
