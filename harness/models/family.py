"""The model-family contract: the config base every family's config extends, the protocol its network implements, and
the registry entry (`Family`) that makes it usable by suites, sampling, cost and checkpoint loading.

Adding a family is one file holding its config (a frozen dataclass extending `FamilyConfig`), its network (an
`nn.Module` implementing `Network`), its presets and a `FAMILY = Family(...)` entry, plus one line in
`harness.models.FAMILIES`. Nothing else lists a family's fields: a suite's [models.x] table takes any config field
of the model's family, checked here by name and type.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from pydantic import TypeAdapter, ValidationError

SPARSITIES = ("none", "routing", "masking")


class ConfigError(ValueError):
    """A family config that cannot be built, naming the config field at fault (a suite maps it to its table key)."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.field = name


class FamilyConfig:
    """Base of every family's frozen config dataclass: the checks all families share, done once.

    A subclass declares `sparsity` and `route` fields and sets which sparsities it supports (`SPARSITIES`), which
    field counts its blocks (`DEPTH`) and which is the latent side (`SIDE`); `MAY_BE_ZERO` names the integer fields
    that may be 0 (every other integer field must be positive). `check()` adds family-specific checks.
    """

    NAME: ClassVar[str] = "this model"
    SPARSITIES: ClassVar[tuple[str, ...]] = SPARSITIES
    DEPTH: ClassVar[str] = "depth"
    SIDE: ClassVar[str] = "input_size"
    MAY_BE_ZERO: ClassVar[frozenset[str]] = frozenset()
    sparsity: str
    route: tuple[int, int] | None
    patch_size: int

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, int) and not isinstance(value, bool) and value < (0 if f.name in self.MAY_BE_ZERO
                                                                                   else 1):
                raise ConfigError(f.name, f"{f.name} must be {'>= 0' if f.name in self.MAY_BE_ZERO else '>= 1'}, "
                                          f"got {value}")
        if self.sparsity not in self.SPARSITIES:
            raise ConfigError("sparsity", f"{self.NAME} supports sparsity {' or '.join(map(repr, self.SPARSITIES))}, "
                                          f"got {self.sparsity!r}")
        depth = getattr(self, self.DEPTH)
        if self.sparsity == "routing":
            if self.route is None:
                raise ConfigError("route", "sparsity 'routing' needs a route [first, last] (0-based block indices)")
            first, last = self.route
            if not 0 <= first <= last < depth:
                raise ConfigError("route", f"route {list(self.route)} lies outside blocks 0..{depth - 1} "
                                           f"(depth {depth}); need 0 <= first <= last < {depth}")
        elif self.route is not None:
            why = "" if "routing" in self.SPARSITIES else f": {self.NAME} has no route (it masks tokens, not routes)"
            raise ConfigError("route", f"a route only applies to sparsity 'routing' (this model has "
                                       f"{self.sparsity!r}){why}")
        side = getattr(self, self.SIDE)
        if side % self.patch_size:
            raise ConfigError(self.SIDE, f"{self.SIDE} {side} is not a multiple of patch_size {self.patch_size}")
        self.check()

    def check(self) -> None:
        """Family-specific checks beyond the shared ones (raise ConfigError naming the field)."""

    @property
    def num_tokens(self) -> int:
        """Tokens of one image: the latent grid over the patch size, squared."""
        return (getattr(self, self.SIDE) // self.patch_size) ** 2


class Network(Protocol):
    """What every family's network provides: the one forward FlowModel, sampling, cost and checkpoints call.

    `forward(x, t, cond, gamma, generators, ids)` takes inputs in the family's native convention
    (harness.models.adapters) and routes or masks a fraction gamma of the tokens with per-image generators;
    `dummy_inputs(batch)` gives (x, t, cond) of the right shapes for FLOP counting. A wrapped third-party module
    (PixArt's diffusers transformer) exposes the module its checkpoint loads into as `weights_module`.
    """

    config: FamilyConfig

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any, gamma: float = 0.0,
                generators: list[torch.Generator] | None = None, ids: torch.Tensor | None = None) -> torch.Tensor: ...

    def dummy_inputs(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, Any]: ...


@dataclass(frozen=True)
class Family:
    """One registered model family: its config class, its network, its named presets and checkpoint variants.

    A preset is the config's keyword arguments plus `convention` (harness.models.adapters.CONVENTIONS: the time and
    prediction convention of its checkpoints). `checkpoint_variants` are structural options the family's released
    models are trained with besides a preset's own value, tried when matching a checkpoint file to a preset.
    """

    config: type
    network: Callable[[Any], torch.nn.Module]
    presets: Mapping[str, Mapping[str, Any]]
    checkpoint_variants: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)

    def options(self) -> tuple[str, ...]:
        """The config fields a suite's [models.x] table may set for this family (sparsity and route are its own)."""
        return tuple(f.name for f in dataclasses.fields(self.config) if f.name not in ("sparsity", "route"))

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Raise ConfigError for an option this family does not have or a value of the wrong type."""
        known = self.options()
        for name, value in options.items():
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                raise ConfigError(name, f"unknown model option {name!r} for {self.config.__name__}"
                                        + (f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"))
            try:
                _adapter(self.config, name).validate_python(tuple(value) if isinstance(value, list) else value,
                                                            strict=True)
            except ValidationError as err:
                raise ConfigError(name, f"{name} = {value!r}: {err.errors()[0]['msg'].lower()}") from None

    def make_config(self, preset: Mapping[str, Any], sparsity: str, route: tuple[int, int] | None) -> Any:
        """The frozen config of `preset` (minus its convention) with the given sparsity and route."""
        kwargs = {k: v for k, v in preset.items() if k not in ("convention", "family")}
        self.check_options(kwargs)
        return self.config(**kwargs, sparsity=sparsity, route=route)


@functools.lru_cache(maxsize=None)
def _adapter(config: type, name: str) -> TypeAdapter:
    """A pydantic validator of one config field's annotated type."""
    return TypeAdapter(typing.get_type_hints(config)[name])


__all__ = ["ConfigError", "Family", "FamilyConfig", "Network", "SPARSITIES"]
