"""Every guidance method as one formula, out = weak + omega * (strong - weak), with per-method branch specs.

| method  | strong branch           | weak branch                      |
| none    | main(c; gamma_strong)   | -                                |
| cfg     | main(c; gamma_strong)   | main(null; gamma_weak)           |
| ag      | main(c; gamma_strong)   | weak_model(c; gamma_weak)        |
| icg     | main(c; gamma_strong)   | main(random class; gamma_weak)   |
| sg      | main(c; gamma_strong)   | main(c; gamma_weak)              |
| cfg+sg  | main(c; gamma_strong)   | main(null; gamma_weak)           |
| ag+sg   | main(c; gamma_strong)   | weak_model(c; gamma_weak)        |
omega = 1 is no guidance (the EDM2 / SG-paper lerp convention). gamma is the fraction of tokens routed or masked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# method -> (model, condition) of the weak branch; the strong branch is always ("main", "c").
METHODS: dict[str, tuple[str, str] | None] = {
    "none": None,
    "cfg": ("main", "null"),
    "ag": ("weak", "c"),
    "icg": ("main", "random"),
    "sg": ("main", "c"),
    "cfg+sg": ("main", "null"),
    "ag+sg": ("weak", "c"),
}
SPARSE_METHODS = ("sg", "cfg+sg", "ag+sg")  # the weak branch is defined by a higher sparsity rate
SCHEDULES = ("constant", "cosine", "linear")


@dataclass(frozen=True)
class Schedule:
    """gamma over sampling progress s in [0, 1]: constant, `linear` or `cosine` (half-cosine) from start to end."""

    kind: str = "constant"
    start: float = 0.0
    end: float = 0.0

    def at(self, progress: float) -> float:
        if self.kind == "constant":
            return self.start
        if self.kind == "linear":
            return self.start + (self.end - self.start) * progress
        if self.kind == "cosine":
            return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * progress))
        raise ValueError(f"unknown schedule {self.kind!r}; known: {', '.join(SCHEDULES)}")

    def label(self) -> str:
        """Short text for tables: `0.5` or `cos(0->0.6)`."""
        if self.kind == "constant":
            return f"{self.start:g}"
        return f"{self.kind[:3]}({self.start:g}->{self.end:g})"

    @classmethod
    def constant(cls, gamma: float) -> Schedule:
        return cls("constant", gamma, gamma)


@dataclass(frozen=True)
class Branch:
    """One network evaluation of a guidance method: which model, which condition, which sparsity."""

    model: str  # "main" | "weak"
    cond: str  # "c" | "null" | "random"
    gamma: Schedule


@dataclass(frozen=True)
class GuidanceSpec:
    """A method with its weight, sparsity rates, optional guidance interval and channel restriction."""

    method: str = "none"
    omega: float = 1.0
    gamma_strong: Schedule = Schedule()
    gamma_weak: Schedule | None = None  # defaults to gamma_strong for cfg / ag / icg
    interval: tuple[float, float] | None = None  # [t_lo, t_hi] on the harness axis (0 = noise)
    cfg_channels: int | None = None  # None = all channels; 3 = the official DiT/SiT quirk
    omega_power: float | None = None  # MDT's power-cosine weight schedule with this power (None: omega constant)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; known: {', '.join(METHODS)}")

    def omega_at(self, t: float) -> float:
        """The guidance weight at harness time t: omega, or MDT's power-cosine ramp to omega evaluated at the DDPM
        step whose signal-to-noise ratio equals t's (the `dit` convention's mapping, for every model)."""
        if self.omega_power is None:
            return self.omega
        return float(power_cosine_scale(torch.tensor(ddpm_step(t)), self.omega, self.omega_power))

    @property
    def strong(self) -> Branch:
        return Branch("main", "c", self.gamma_strong)

    @property
    def weak(self) -> Branch | None:
        spec = METHODS[self.method]
        if spec is None:
            return None
        return Branch(spec[0], spec[1], self.gamma_weak or self.gamma_strong)

    def guides_at(self, t: float) -> bool:
        """Whether the weak branch is computed at time t (never when omega = 1 or outside the interval)."""
        if self.weak is None or self.omega == 1.0:
            return False
        return self.interval is None or self.interval[0] <= t <= self.interval[1]

    def branches_at(self, t: float, progress: float) -> list[tuple[Branch, float]]:
        """The branches actually evaluated at one network call, with their gamma at this progress."""
        active = [(self.strong, self.strong.gamma.at(progress))]
        if self.guides_at(t):
            active.append((self.weak, self.weak.gamma.at(progress)))
        return active


def ddpm_step(t: float) -> float:
    """The continuous DDPM step (999 = noise, 0 = data; linear betas 1e-4..0.02) with the SNR of harness time t."""
    from harness.models.adapters import _dit_alphas_cumprod  # late: guidance stays importable without models

    abar = _dit_alphas_cumprod()
    log_snr = torch.log(abar / (1 - abar)).flip(0)  # increasing; index i <-> step 999 - i
    t = min(max(t, 1e-5), 1 - 1e-5)
    target = 2 * (math.log(t) - math.log1p(-t))
    pos = float(torch.searchsorted(log_snr, torch.tensor([target], dtype=torch.float64)).clamp(1, 999))
    lo, hi = float(log_snr[int(pos) - 1]), float(log_snr[int(pos)])
    return 999 - (pos - 1 + min(max((target - lo) / (hi - lo), 0.0), 1.0))


def power_cosine_scale(step: torch.Tensor, scale: float, power: float, steps: int = 1000) -> torch.Tensor:
    """MDT's CFG weight at DDPM step `step` (steps - 1 = noise, 0 = data): 1 + (scale - 1)(1 - cos(pi (1 -
    step/steps)^power)) / 2, rising from 1 at the noise end to `scale` at the data end (sail-sg/MDT forward_with_cfg).
    """
    ramp = (1 - torch.cos(((1 - step / steps) ** power) * math.pi)) / 2
    return (scale - 1) * ramp + 1


def combine(
    strong: torch.Tensor, weak: torch.Tensor | None, omega: float, cfg_channels: int | None = None
) -> torch.Tensor:
    """weak + omega * (strong - weak); strong itself when unguided; only the first `cfg_channels` if set."""
    if weak is None or omega == 1.0:
        return strong
    if cfg_channels is None:
        return weak + omega * (strong - weak)
    guided = weak[:, :cfg_channels] + omega * (strong[:, :cfg_channels] - weak[:, :cfg_channels])
    return torch.cat([guided, strong[:, cfg_channels:]], dim=1)
