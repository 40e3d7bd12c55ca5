"""The suite file's schema: one pydantic model per TOML table, with the checks that need no other table.

A suite has [suite], [sampler], [models.<key>] and [[runs]] tables, and optionally [launch] (harness launch). In a
run, a list-valued field (omega, gamma_strong, gamma_weak, interval, cfg_channels, weak_model, seed) is a grid axis
(harness.suite.load expands it).
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from harness.guidance import METHODS, Schedule
from harness.models import ARCHS
from harness.models.adapters import CONVENTIONS, DROPPED
from harness.numerics import DEFAULT_PRECISION, PRECISIONS
from harness.sampling import SAMPLERS

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"  # suite and run names become directory names


#################################################################################
#                      Schema: one pydantic model per table                     #
#################################################################################


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SuiteTable(_Table):
    """[suite]: what every run shares."""

    name: str = Field(pattern=_NAME)
    samples: int | None = Field(None, ge=1)  # required, except in a prompt suite: default all its prompts
    batch_size: int = Field(ge=1)
    seed: int = Field(0, ge=0)
    labels: Literal["uniform", "balanced"] = "uniform"
    metrics: list[str] = []
    reference: str | None = None
    prompts: str | None = None  # text-to-image: "geneval", "hpsv3" or a .txt / .jsonl file (harness.prompts)
    images_per_prompt: int | None = Field(None, ge=1)  # default: the prompt set's (GenEval 4, others 1)
    precision: Literal[PRECISIONS] = DEFAULT_PRECISION  # harness.numerics; a run may override it
    compile: bool = False  # torch.compile the models (long runs; compile time is reported apart from throughput)


class SamplerTable(_Table):
    """[sampler]: the SamplerSpec of every run."""

    kind: Literal[SAMPLERS] = "euler"
    steps: int = Field(40, ge=1)
    shift: float = Field(1.0, gt=0)
    last_step: float = Field(0.04, gt=0, lt=1)
    diffusion_norm: float = Field(1.0, ge=0)
    sigma_min: float = Field(0.002, gt=0)  # edm_heun's Karras schedule
    sigma_max: float = Field(80.0, gt=0)
    rho: float = Field(7.0, gt=0)


class RunSamplerTable(_Table):
    """A run's `sampler = {...}`: the [sampler] fields it changes for that run alone (e.g. an ODE beside an SDE)."""

    kind: Literal[SAMPLERS] | None = None
    steps: int | None = Field(None, ge=1)
    shift: float | None = Field(None, gt=0)
    last_step: float | None = Field(None, gt=0, lt=1)
    diffusion_norm: float | None = Field(None, ge=0)
    sigma_min: float | None = Field(None, gt=0)
    sigma_max: float | None = Field(None, gt=0)
    rho: float | None = Field(None, gt=0)


class ModelTable(_Table):
    """[models.<key>]: an architecture preset, its checkpoint and sparsity, and any config field of its family.

    Family fields (depth, learn_sigma, MicroDiT's expert_capacity, PixArt's num_layers, ...) are written directly in
    the table or under `options = {...}`; the family (harness.models.family.Family) checks their names and types when
    harness.suite.load builds the model's config.
    """

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    arch: str
    checkpoint: str | None = None
    weights: Literal["ema", "model"] | None = None  # a training checkpoint's EMA or trained weights (default: EMA)
    sparsity: Literal["none", "routing", "masking"] = "none"
    route: Annotated[list[int], Field(min_length=2, max_length=2)] | None = None
    vae: str | None = None
    cfg_channels: Literal["all", 3] | None = None  # default for the runs on this model (DiT/SiT's quirk is 3)
    dropped: Literal[DROPPED] | None = None  # masking: what a masked weak branch keeps where it dropped tokens
    forward_rows: int | None = Field(None, ge=1)  # images per network call (default 8; harness.models.batching)
    convention: Literal[CONVENTIONS] | None = None
    text_encoder: str | None = None  # a harness.models.text_encoders name (text-conditioned models)
    text_encoder_options: dict[str, Any] | None = None
    options: dict[str, Any] | None = None  # family config fields, as an alternative to writing them in the table

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        if arch not in ARCHS:
            close = difflib.get_close_matches(arch, list(ARCHS), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(ARCHS)}"
            raise ValueError(f"unknown architecture {arch!r}; {hint}")
        return arch

    def overrides(self) -> dict[str, Any]:
        """The family config fields (and convention) this table sets over its architecture's preset."""
        named = dict(self.model_extra or {})
        if self.convention is not None:
            named["convention"] = self.convention
        return {**(self.options or {}), **named}


class GammaTable(_Table):
    """A gamma: a constant in [0, 1), or {schedule = "cosine" | "linear", start, end} over sampling progress."""

    schedule: Literal["constant", "cosine", "linear"] = "constant"
    start: float = Field(ge=0, lt=1)
    end: float | None = Field(None, ge=0, lt=1)

    def to_schedule(self) -> Schedule:
        return Schedule(self.schedule, self.start, self.start if self.end is None else self.end)


def _gamma_input(value: Any) -> Any:
    """A bare number means a constant gamma; tables pass through; anything else is a type error."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"start": value}
    if isinstance(value, dict):
        return value
    raise ValueError(f"must be a number in [0, 1) or a table {{schedule, start, end}}, got {value!r}")


def _axis(value: Any, nested: bool = False) -> list:
    """A grid field as a list of values: a scalar is an axis of one (for `interval`, a pair is one value)."""
    if isinstance(value, list) and (not nested or (value and isinstance(value[0], list))):
        return value
    return [value]


_Interval = Annotated[list[Annotated[float, Field(ge=0, le=1)]], Field(min_length=2, max_length=2)]


def _grid_field() -> Any:
    """An optional grid axis: absent, or at least one value."""
    return Field(None, min_length=1)


class RunTable(_Table):
    """One [[runs]] entry; list-valued grid fields expand into several runs."""

    name: str = Field(pattern=_NAME)
    method: Literal[tuple(METHODS)]
    model: str = "main"
    weak_model: list[str] | None = _grid_field()
    omega: list[Annotated[float, Field(gt=0)]] | None = _grid_field()
    gamma_strong: list[GammaTable] | None = _grid_field()
    gamma_weak: list[GammaTable] | None = _grid_field()
    interval: list[_Interval] | None = _grid_field()
    cfg_channels: list[Literal["all", 3]] | None = _grid_field()
    # MDT's CFG weight schedule: omega ramps from 1 (noise) to omega (data) as 1 + (omega - 1)(1 - cos(pi (1 -
    # k/1000)^power)) / 2 over the DDPM step k with t's SNR (sail-sg/MDT image_sample.py: omega 3.8, power 4)
    omega_power_cosine: float | None = Field(None, gt=0)
    seed: list[Annotated[int, Field(ge=0)]] | None = _grid_field()  # overrides [suite] seed; a list measures spread
    # The method's own parameters (harness.guidance.METHODS[method].params: APG's eta / norm_threshold / momentum,
    # PAG's layers, ...); every one has a published default, checked by the loader against the model
    params: dict[str, Any] | None = None
    paper: list[Annotated[str, Field(pattern=r"^[^:]+:[^:]+$")]] | None = None
    samples: int | None = Field(None, ge=1)
    sampler: RunSamplerTable | None = None
    precision: Literal[PRECISIONS] | None = None
    compile: bool | None = None

    @field_validator("gamma_strong", "gamma_weak", mode="before")
    @classmethod
    def _gammas(cls, value: Any) -> Any:
        return [_gamma_input(v) for v in _axis(value)]

    @field_validator("weak_model", "omega", "cfg_channels", "seed", "paper", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        return _axis(value)

    @field_validator("interval", mode="before")
    @classmethod
    def _intervals(cls, value: Any) -> Any:
        return _axis(value, nested=True)

    @field_validator("interval")
    @classmethod
    def _ordered(cls, value: list[list[float]] | None) -> list[list[float]] | None:
        for lo, hi in value or []:
            if not lo < hi:
                raise ValueError(f"must be [t_lo, t_hi] with t_lo < t_hi, got {[lo, hi]}")
        return value


class LaunchTable(_Table):
    """[launch]: defaults of `harness launch` for this suite (flags override them): the executor, the number of
    workers and the SLURM settings of each worker."""

    executor: Literal["slurm", "local"] | None = None
    workers: int | None = Field(None, ge=1)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = Field(None, pattern=r"^(\d+-)?\d+(:\d\d){0,2}$")  # SLURM's forms: MM, HH:MM:SS, D-HH:MM:SS
    gpus_per_worker: int | None = Field(None, ge=1)
    cpus_per_worker: int | None = Field(None, ge=1)
    mem: str | None = Field(None, pattern=r"^\d+[KMGT]?$")  # SLURM's --mem, e.g. "64G"
    constraint: str | None = None
    setup: list[str] | None = None  # shell lines each job runs first (module load ..., source venv/bin/activate)


class SuiteFile(_Table):
    """The whole TOML document."""

    suite: SuiteTable
    sampler: SamplerTable = SamplerTable()
    models: dict[Annotated[str, Field(pattern=_NAME)], ModelTable] = Field(min_length=1)
    runs: list[RunTable] = Field(min_length=1)
    launch: LaunchTable | None = None
