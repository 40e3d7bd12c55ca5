"""Helpers the tests share, imported as `from tests.helpers import ...`: the suite builder (`suite_text`; the
`write_suite` fixture in conftest.py writes its files) and the generation tests' suite, checkpoint and shard readers."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

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



# The generation tests' suite "rt": one CFG+SG run (null condition and per-image token selections, so every random
# draw is used) on Testbed-XS/4 weights drawn at random.
RUN = "cfgsg"


def random_checkpoint(path: Path, nan: bool = False) -> Path:
    """Testbed-XS/4 weights drawn at random, all non-zero (the adaLN-Zero init alone predicts zero velocity, which
    would make every sampler, guidance and batch size give the initial noise back); `nan` poisons the output."""
    from safetensors.torch import save_file

    from harness.models import ModelSpec
    from harness.models.dit import SparseDiT

    config, _ = ModelSpec("Testbed-XS/4", sparsity="routing", route=(1, 2)).config()
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=gen) * 0.1 for k, v in SparseDiT(config).state_dict().items()}
    if nan:
        state["final_layer.linear.bias"][0] = float("nan")
    save_file(state, str(path))
    return path


def generation_suite(checkpoint: Path, samples: int = 12, batch_size: int = 4, steps: int = 2,
                     labels: str = "uniform", suite: Mapping[str, Any] | None = None,
                     run: Mapping[str, Any] | None = None, more_runs: Sequence[Mapping[str, Any]] = (),
                     main: Mapping[str, Any] | None = None) -> str:
    """suite_text of the suite "rt" on `checkpoint`; `suite`, `run` and `main` add keys to [suite], to its run and to
    [models.main], `more_runs` follow it."""
    first = {"name": RUN, "method": "cfg+sg", "gamma_strong": 0.25, "gamma_weak": 0.5, "omega": 2.0, **(run or {})}
    table = {"name": "rt", "samples": samples, "batch_size": batch_size, "seed": 7, "labels": labels, "metrics": None}
    return suite_text(suite={**table, **(suite or {})}, sampler={"steps": steps}, main={"checkpoint": str(checkpoint), **(main or {})},
                      runs=[first, *more_runs])


def write_generation_suite(folder: Path, checkpoint: Path, **kw: Any) -> Path:
    """folder/suite.toml holding generation_suite(checkpoint, **kw)."""
    path = folder / "suite.toml"
    path.write_text(generation_suite(checkpoint, **kw))
    return path


def run_dir(out: Path) -> Path:
    """The folder of the run of suite "rt" under the runs folder `out`."""
    return out / "rt" / RUN


def shards(out: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every shard of the run: file name -> its arrays."""
    result = {}
    for p in sorted(run_dir(out).glob("samples-*.npz")):
        with np.load(p) as data:
            result[p.name] = {k: data[k] for k in data.files}
    return result


def images_by_index(out: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices, images, labels) over all shards, checking that no index is duplicated."""
    parts = list(shards(out).values())
    indices = np.concatenate([p["indices"] for p in parts])
    assert len(np.unique(indices)) == len(indices), "an image index appears twice"
    order = np.argsort(indices)
    return (indices[order], np.concatenate([p["arr_0"] for p in parts])[order],
            np.concatenate([p["labels"] for p in parts])[order])
