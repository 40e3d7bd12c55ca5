"""Resolved suites and runs: what the generate, cost, evaluate and report stages consume, and the config hash."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.guidance import GuidanceSpec
from harness.models import ModelSpec
from harness.numerics import DEFAULT_PRECISION
from harness.sampling import SamplerSpec

# Config entries that do not change a single sample: they are kept in the config but not in its hash.
NOT_HASHED = (("suite", "metrics"), ("suite", "reference"), ("run", "paper"))
# Entries hashed only when they differ from their default, so runs made before the option existed keep their hash.
HASHED_UNLESS_DEFAULT = {("run", "precision"): DEFAULT_PRECISION, ("run", "compile"): False}


#################################################################################
#                            Resolved suites and runs                           #
#################################################################################


@dataclass(frozen=True, eq=False)
class Run:
    """One run of a suite with everything resolved: what the runner, cost and report stages consume.

    `models` maps a role ("main", and "weak" for ag / ag+sg) to its ModelSpec (checkpoint paths absolute);
    `model_keys` maps the same roles to the suite's [models.<key>] names. `config` is the JSON-able resolved
    configuration written to the manifest; `config_hash` is the sha256 of its canonical JSON without the entries
    that do not change a sample (metrics, reference, paper).
    """

    suite: str
    run_id: str
    name: str
    method: str
    models: dict[str, ModelSpec]
    model_keys: dict[str, str]
    guidance: GuidanceSpec
    sampler: SamplerSpec
    samples: int
    batch_size: int
    seed: int
    labels: str
    metrics: tuple[str, ...]
    reference: Path | str | None  # a batch path, or a built-in such as "testbed:10000"
    paper: tuple[str, ...]
    config: dict[str, Any]
    config_hash: str
    prompts: str | None = None  # a built-in prompt set name or an absolute file path (text-to-image)
    images_per_prompt: int = 1
    precision: str = DEFAULT_PRECISION  # harness.numerics.PRECISIONS
    compile: bool = False


@dataclass(frozen=True, eq=False)
class Suite:
    """A validated suite file: its shared settings and its runs in file order (grid points in axis order)."""

    path: Path
    root: Path
    name: str
    samples: int
    batch_size: int
    seed: int
    labels: str
    metrics: tuple[str, ...]
    reference: Path | str | None
    sampler: SamplerSpec
    models: dict[str, ModelSpec]
    runs: tuple[Run, ...]
    prompts: str | None = None
    images_per_prompt: int = 1
    launch: dict[str, Any] = field(default_factory=dict)  # the [launch] table's set fields (harness launch)

    def select(self, pattern: str | None) -> list[Run]:
        """The runs whose id matches the regular expression `pattern` (re.search); all runs for None."""
        if pattern is None:
            return list(self.runs)
        try:
            regex = re.compile(pattern)
        except re.error as err:
            raise HarnessError(f"--only {pattern!r}: not a regular expression ({err})") from err
        chosen = [r for r in self.runs if regex.search(r.run_id)]
        if not chosen:
            raise HarnessError(f"--only {pattern!r}: matches none of the runs of {self.path} "
                               f"({', '.join(r.run_id for r in self.runs)})")
        return chosen


def canonical_json(obj: Any) -> str:
    """Key-sorted, whitespace-free JSON: the text a config hash is taken of."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of a resolved config's canonical JSON, leaving out entries that do not change any sample."""
    hashed = json.loads(json.dumps(config))
    for section, key in NOT_HASHED:
        hashed.get(section, {}).pop(key, None)
    for (section, key), default in HASHED_UNLESS_DEFAULT.items():
        if hashed.get(section, {}).get(key, default) == default:
            hashed.get(section, {}).pop(key, None)
    return hashlib.sha256(canonical_json(hashed).encode()).hexdigest()
