"""Every guidance method as one registry entry (METHODS): its branches, its combination rule, its parameters.

A run evaluates the strong branch main(c; gamma_strong) and, while it guides, the method's other branches; the rule
combines their predictions (harness.guidance_rules). omega = 1 is no guidance for every method (the EDM2 / SG-paper
lerp convention: diffusers' `uncond + s (cond - uncond)` is omega = s). gamma is the fraction of tokens routed or
masked; every branch but the strong one runs at gamma_weak (default gamma_strong).

| method  | branches after main(c; gamma_strong)                   | rule                                         |
| none    | -                                                      | -                                            |
| cfg     | main(null)                                             | lerp: weak + omega (strong - weak)           |
| ag      | weak_model(c)                                          | lerp                                         |
| icg     | main(random class)                                     | lerp                                         |
| sg      | main(c; gamma_weak > gamma_strong)                     | lerp                                         |
| cfg+sg  | main(null; gamma_weak > gamma_strong)                  | lerp                                         |
| ag+sg   | weak_model(c; gamma_weak)                              | lerp                                         |
| apg     | main(null)                                             | APG on the denoised prediction (x0)          |
| cfgzero | main(null)                                             | CFG-Zero*: weak = s* uncond; first steps 0   |
| pag     | main(c), identity self-attention in `layers`           | lerp (omega = 1 + PAG's scale s)             |
| seg     | main(c), queries blurred by `blur_sigma` in `layers`   | lerp (omega = 1 + SEG's scale)               |
| slg     | main(c), `layers` skipped, steps skip_start..skip_stop | lerp (omega = 1 + SLG's scale)               |
| pdg     | main(null), the route dropped (SPRINT's path drop)     | lerp (omega = SPRINT's cfg_scale)            |
| cfg+pag | main(null); main(c) with identity attention in `layers`| c + (omega-1)(c-u) + (omega_pag-1)(c-p)      |
| sg+apg  | main(c; gamma_weak > gamma_strong)                     | APG on SG's difference                       |
Sources, defaults and the diffusers mapping of each: README "Guidance methods" and shared reference guidance-2025.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from harness import guidance_rules as rules

SCHEDULES = ("constant", "cosine", "linear")
PERTURBATIONS = ("identity_attention", "blur_queries", "skip_blocks", "drop_route")  # harness.models.perturb


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
class Perturbation:
    """A change to one network forward (harness.models.perturb): its kind, the blocks it acts on, SEG's blur."""

    kind: str
    layers: tuple[int, ...] = ()
    blur_sigma: float = math.inf

    def __post_init__(self) -> None:
        if self.kind not in PERTURBATIONS:
            raise ValueError(f"unknown perturbation {self.kind!r}; known: {', '.join(PERTURBATIONS)}")


@dataclass(frozen=True)
class Branch:
    """One network evaluation of a guidance method: which model, which condition, which sparsity, which
    perturbation; `label` names it in plans and in the rule's inputs."""

    model: str  # "main" | "weak"
    cond: str  # "c" | "null" | "random"
    gamma: Schedule
    perturb: Perturbation | None = None
    label: str = "cond"


#################################################################################
#                         Method entries and their parameters                   #
#################################################################################


@dataclass(frozen=True)
class Param:
    """A method parameter: default (a value, or a function of the model's depth for block lists), its check
    (returns the value as used, raises ValueError with the reason), and its meaning."""

    default: Any
    check: Callable[[Any], Any]
    doc: str


@dataclass(frozen=True)
class Role:
    """A guidance branch of a method before a run fixes its sparsity: label, model, condition, perturbation kind
    (its blocks and blur come from the run's params), its weight (None: omega; else a param name), whether it runs
    only in the method's step window, and whether it ignores gamma (a dropped route routes nothing)."""

    label: str
    model: str = "main"
    cond: str = "c"
    perturb: str | None = None
    weight: str | None = None
    windowed: bool = False
    dense: bool = False


def _number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, integer: bool = False,
            allow_inf: bool = False) -> Callable[[Any], Any]:
    """A check for a number in [lo, hi] ((lo, hi] with lo_open), an integer if asked, infinity if allowed."""
    def check(value: Any) -> Any:
        kind = "an integer" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
            raise ValueError(f"must be {kind}, got {value!r}")
        if math.isnan(value) or (math.isinf(value) and not allow_inf):
            raise ValueError(f"must be a finite number, got {value!r}")
        if lo is not None and (value <= lo if lo_open else value < lo):
            raise ValueError(f"must be {'>' if lo_open else '>='} {lo:g}, got {value!r}")
        if hi is not None and value > hi:
            raise ValueError(f"must be <= {hi:g}, got {value!r}")
        return value if integer else float(value)
    return check


def _layers(value: Any) -> tuple[int, ...]:
    """A check for a non-empty list of distinct block indices (>= 0; the model's depth is checked by the loader)."""
    if not isinstance(value, (list, tuple)) or not value or \
            any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value):
        raise ValueError(f"must be a non-empty list of block indices (integers >= 0), got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"lists a block twice: {value!r}")
    return tuple(value)


def middle_block(depth: int) -> tuple[int, ...]:
    """PAG's / SEG's default block for a DiT of `depth` blocks: the middle one (PixArt-Sigma's PAG example uses
    block 14 of 28; SEG-SDXL the mid block)."""
    return (depth // 2,)


def sd35_blocks(depth: int) -> tuple[int, ...]:
    """SLG's default blocks: SD3.5-medium's [7, 8, 9] of 24 (Stability-AI/sd3.5 sd3_infer.py) at the same relative
    depth (inferred; 28 blocks: 8, 9, 10)."""
    return tuple(sorted({min(depth - 1, round(i * depth / 24)) for i in (7, 8, 9)}))


_APG_PARAMS = {
    "eta": Param(0.0, _number(), "weight of the part of the difference parallel to the conditional x0 (paper: 0)"),
    "norm_threshold": Param(15.0, _number(lo=0.0),
                            "r: the difference is rescaled to norm <= r in x0 units, 0 = no clip (paper, SDXL: 15)"),
    "momentum": Param(-0.5, _number(), "beta: buffer <- difference + beta * buffer, per image (paper, SDXL: -0.5)"),
}
_LAYERS = Param(middle_block, _layers, "perturbed blocks, 0-based (default: the middle block)")


@dataclass(frozen=True)
class Method:
    """One guidance method: its branches after the strong main(c), the rule combining their predictions
    (harness.guidance_rules; None: no guidance), its parameters, and the facts the loader checks: `sparse` (the
    weak branch is SG's sparser one, gamma_weak required and > gamma_strong), `zero_steps` (the parameter counting
    leading steps whose output is zero), `window` (the parameters (start, stop) of the step window of windowed
    branches: start * N < step < stop * N, as SD3.5's SLG), and where it comes from."""

    summary: str
    source: str
    branches: tuple[Role, ...] = ()
    rule: Callable[..., torch.Tensor] | None = rules.lerp
    params: Mapping[str, Param] = field(default_factory=dict)
    sparse: bool = False
    zero_steps: str | None = None
    window: tuple[str, str] | None = None

    @property
    def uses_weak_model(self) -> bool:
        return any(role.model == "weak" for role in self.branches)

    @property
    def perturbations(self) -> tuple[str, ...]:
        return tuple(role.perturb for role in self.branches if role.perturb is not None)

    def resolve(self, given: Mapping[str, Any], depth: int | None = None) -> dict[str, Any]:
        """Every parameter checked, defaults filled in (a depth-dependent default stays None without `depth`);
        KeyError for an unknown name, ValueError('<name>: <reason>') for a bad value."""
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            raise KeyError(f"{unknown[0]!r} is not a parameter of this method (it has: "
                           f"{', '.join(self.params) or 'none'})")
        out = {}
        for name, param in self.params.items():
            if name in given:
                try:
                    out[name] = param.check(given[name])
                except ValueError as err:
                    raise ValueError(f"{name}: {err}") from None
            elif callable(param.default):
                out[name] = param.default(depth) if depth is not None else None
            else:
                out[name] = param.default
        if self.window is not None and not out[self.window[0]] < out[self.window[1]]:
            raise ValueError(f"{self.window[0]}: must be < {self.window[1]}, got {out[self.window[0]]:g} >= "
                             f"{out[self.window[1]]:g}")
        return out


_UNCOND = Role("uncond", cond="null")
METHODS: dict[str, Method] = {
    "none": Method("no guidance", "-", rule=None),
    "cfg": Method("classifier-free guidance", "Ho & Salimans 2022", (_UNCOND,)),
    "ag": Method("AutoGuidance: a weaker model", "Karras et al. 2024", (Role("weak_model", model="weak"),)),
    "icg": Method("independent condition guidance", "Sadat et al. 2024", (Role("random", cond="random"),)),
    "sg": Method("Sparse Guidance: the same model at a higher sparsity", "Krause et al. 2026",
                 (Role("sparse"),), sparse=True),
    "cfg+sg": Method("CFG whose weak branch is also sparser", "Krause et al. 2026", (Role("uncond_sparse",
                                                                                          cond="null"),), sparse=True),
    "ag+sg": Method("AutoGuidance with sparsity", "Krause et al. 2026", (Role("weak_model", model="weak"),),
                    sparse=True),
    "apg": Method("adaptive projected guidance on x0", "Sadat et al. 2024, arXiv 2410.02416 (Alg. 1)", (_UNCOND,),
                  rules.apg, _APG_PARAMS),
    "cfgzero": Method("CFG-Zero*: optimised scale of the unconditional branch, zeroed first steps",
                      "Fan et al. 2025, arXiv 2503.18886", (_UNCOND,), rules.cfg_zero_star,
                      {"zero_init_steps": Param(1, _number(lo=0, integer=True),
                                                "leading steps whose velocity is 0 (official zero_steps=0 = 1 step)")},
                      zero_steps="zero_init_steps"),
    "pag": Method("perturbed-attention guidance: identity self-attention", "Ahn et al. 2024, arXiv 2403.17377",
                  (Role("pag", perturb="identity_attention"),), params={"layers": _LAYERS}),
    "seg": Method("smoothed energy guidance: blurred queries", "Hong 2024, arXiv 2408.00760",
                  (Role("seg", perturb="blur_queries"),),
                  params={"layers": _LAYERS, "blur_sigma": Param(math.inf, _number(lo=0.0, lo_open=True,
                                                                                   allow_inf=True),
                                                                 "Gaussian width in tokens; inf = mean query "
                                                                 "(SEG-SDXL README: 100 or inf)")}),
    "slg": Method("skip-layer guidance: blocks skipped", "Stability-AI/sd3.5 sd3_infer.py (SD3.5-medium)",
                  (Role("slg", perturb="skip_blocks", windowed=True),),
                  params={"layers": Param(sd35_blocks, _layers, "skipped blocks (default: SD3.5-medium's 7-9 of 24 "
                                                                "at the same relative depth)"),
                          "skip_start": Param(0.01, _number(0.0, 1.0), "window start, fraction of the steps"),
                          "skip_stop": Param(0.2, _number(0.0, 1.0), "window stop, fraction of the steps")},
                  window=("skip_start", "skip_stop")),
    "pdg": Method("Path-Drop Guidance: null condition with the route dropped",
                  "Park et al. 2025 (SPRINT), arXiv 2510.21986", (Role("pdg", cond="null", perturb="drop_route",
                                                                       dense=True),)),
    "cfg+pag": Method("CFG plus PAG: three branches", "Ahn et al. 2024; diffusers PAG pipelines",
                      (_UNCOND, Role("pag", perturb="identity_attention", weight="omega_pag")), rules.three_branch,
                      {"layers": _LAYERS, "omega_pag": Param(4.0, _number(lo=0.0, lo_open=True),
                                                             "PAG's weight, lerp convention: 1 + diffusers' "
                                                             "pag_scale (3.0)")}),
    "sg+apg": Method("SG's difference through APG's projection", "Krause et al. 2026 + Sadat et al. 2024",
                     (Role("sparse"),), rules.apg, _APG_PARAMS, sparse=True),
}


#################################################################################
#                               A run's guidance                                #
#################################################################################


@dataclass(frozen=True)
class GuidanceSpec:
    """A method with its weight, sparsity rates, optional guidance interval, channel restriction and parameters
    (`params`: (name, value) pairs; missing ones take the method's defaults)."""

    method: str = "none"
    omega: float = 1.0
    gamma_strong: Schedule = Schedule()
    gamma_weak: Schedule | None = None  # defaults to gamma_strong for cfg / ag / icg
    interval: tuple[float, float] | None = None  # [t_lo, t_hi] on the harness axis (0 = noise)
    cfg_channels: int | None = None  # None = all channels; 3 = the official DiT/SiT quirk
    omega_power: float | None = None  # MDT's power-cosine weight schedule with this power (None: omega constant)
    params: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; known: {', '.join(METHODS)}")
        resolved = self.entry.resolve(dict(self.params))
        object.__setattr__(self, "params", tuple(sorted(resolved.items())))

    @property
    def entry(self) -> Method:
        return METHODS[self.method]

    def param(self, name: str) -> Any:
        return dict(self.params)[name]

    def omega_at(self, t: float) -> float:
        """The guidance weight at harness time t: omega, or MDT's power-cosine ramp to omega evaluated at the DDPM
        step whose signal-to-noise ratio equals t's (the `dit` convention's mapping, for every model)."""
        if self.omega_power is None:
            return self.omega
        return float(power_cosine_scale(torch.tensor(ddpm_step(t)), self.omega, self.omega_power))

    @property
    def strong(self) -> Branch:
        return Branch("main", "c", self.gamma_strong)

    def perturbation(self, role: Role, depth: int | None = None) -> Perturbation | None:
        """The perturbation of `role` with this run's blocks (a depth-dependent default needs the model's depth)."""
        if role.perturb is None:
            return None
        params = dict(self.params)
        layers = params.get("layers")
        if layers is None and "layers" in self.entry.params:
            if depth is None:
                raise ValueError(f"method {self.method!r}'s default blocks depend on the model's depth; give layers")
            layers = self.entry.params["layers"].default(depth)
        return Perturbation(role.perturb, tuple(layers or ()), params.get("blur_sigma", math.inf))

    def guidance_branches(self, depth: int | None = None) -> list[Branch]:
        """The method's branches after the strong one, in its order."""
        gamma = self.gamma_weak or self.gamma_strong
        return [Branch(r.model, r.cond, Schedule() if r.dense else gamma, self.perturbation(r, depth), r.label)
                for r in self.entry.branches]

    @property
    def weak(self) -> Branch | None:
        """The first guidance branch (the weak branch of a two-branch method); None for `none`. Its perturbation's
        depth-dependent blocks are left empty: `guidance_branches(depth)` gives them."""
        roles = self.entry.branches
        if not roles:
            return None
        r = roles[0]
        return Branch(r.model, r.cond, Schedule() if r.dense else self.gamma_weak or self.gamma_strong,
                      None if r.perturb is None else Perturbation(r.perturb), r.label)

    def weight(self, role: Role) -> float:
        return self.omega if role.weight is None else self.param(role.weight)

    def zeroed(self, step: int | None) -> bool:
        """Whether the output at sampling step `step` is zero with no network call (CFG-Zero*'s first steps; never
        at omega = 1, which is unguided sampling for every method)."""
        name = self.entry.zero_steps
        if name is None or self.param(name) == 0 or self.omega == 1.0:
            return False
        if step is None:
            raise ValueError(f"method {self.method!r} needs the sampling step index")
        return step < self.param(name)

    def _active(self, role: Role, t: float, step: int | None, steps: int | None) -> bool:
        if self.weight(role) == 1.0:
            return False
        if self.interval is not None and not self.interval[0] <= t <= self.interval[1]:
            return False
        if role.windowed:
            if step is None or steps is None:
                raise ValueError(f"method {self.method!r} needs the sampling step index and step count")
            start, stop = (self.param(n) for n in self.entry.window)
            return start * steps < step < stop * steps
        return True

    def guides_at(self, t: float, step: int | None = None, steps: int | None = None) -> bool:
        """Whether any guidance branch is computed at time t (never when its weight is 1 or outside the interval)."""
        return any(self._active(r, t, step, steps) for r in self.entry.branches)

    def branches_at(self, t: float, progress: float, step: int | None = None, steps: int | None = None,
                    depth: int | None = None) -> list[tuple[Branch, float]]:
        """The branches actually evaluated at one network call, with their gamma at this progress (none at all at a
        zeroed step); `step` (0-based) and `steps` place windowed branches and zeroed steps."""
        if self.zeroed(step):
            return []
        active = [(self.strong, self.strong.gamma.at(progress))]
        for role, branch in zip(self.entry.branches, self.guidance_branches(depth)):
            if self._active(role, t, step, steps):
                active.append((branch, branch.gamma.at(progress)))
        return active

    def combine(self, preds: Mapping[str, torch.Tensor], x: torch.Tensor, t: float,
                state: dict[str, Any]) -> torch.Tensor:
        """The guided prediction from the branch predictions `preds` (label -> velocity; the strong one "cond") at
        state x, time t; `state` carries per-image state across calls (APG's momentum) for one batch."""
        strong = preds["cond"]
        if len(preds) == 1:
            return strong
        omega = self.omega_at(t)
        if self.entry.rule is rules.lerp:  # the historical path, bit for bit
            (weak,) = (v for k, v in preds.items() if k != "cond")
            return combine(strong, weak, omega, self.cfg_channels)
        out = self.entry.rule(preds, rules.Context(x, t, omega, dict(self.params), state))
        if self.cfg_channels is None:
            return out
        return torch.cat([out[:, :self.cfg_channels], strong[:, self.cfg_channels:]], dim=1)


def step_index(progress: float, steps: int) -> int:
    """The 0-based sampling step of a denoiser call from its progress = step / (steps - 1)."""
    return round(progress * max(steps - 1, 1))


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
