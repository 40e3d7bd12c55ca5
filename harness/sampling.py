"""Flow-matching samplers over a guided denoiser, with one random generator per image.

Time runs from t = 0 (noise) to t = 1 (data); x_t = (1 - t) * noise + t * x and the models predict x - noise.
Every random draw for image i (label, initial noise, token selections, ICG condition, SDE noise) comes from its own
generator seeded with its seed, so image i is the same whatever batch or process it is generated in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from harness.guidance import Branch, GuidanceSpec, step_index
from harness.models.adapters import FlowModel
from harness.models.perturb import perturbed
from harness.models.tokens import dropped_pixels, num_sparse, select_tokens

SAMPLERS = ("euler", "heun", "euler_maruyama", "edm_heun")


@dataclass(frozen=True)
class SamplerSpec:
    """Sampler kind and steps; `shift` > 1 spends more steps near noise (SD3's shift); SDE settings as SiT's;
    `edm_heun`'s Karras schedule from sigma_max to sigma_min with exponent rho (EDM's defaults)."""

    kind: str = "euler"
    steps: int = 40
    shift: float = 1.0
    last_step: float = 0.04  # euler_maruyama: final deterministic mean step, as SiT's `--last-step-size`
    diffusion_norm: float = 1.0  # euler_maruyama: w(t) = norm * (1 - t), SiT's `sigma` diffusion form
    sigma_min: float = 0.002  # edm_heun
    sigma_max: float = 80.0
    rho: float = 7.0

    def __post_init__(self) -> None:
        if self.kind not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.kind!r}; known: {', '.join(SAMPLERS)}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min:g}, {self.sigma_max:g}")

    def sigmas(self) -> torch.Tensor:
        """edm_heun's noise levels (float64): steps of Karras et al.'s schedule (Eq. 5), sigma_max down to
        sigma_min, then 0."""
        ramp = torch.arange(self.steps, dtype=torch.float64) / max(self.steps - 1, 1)
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return torch.cat([(hi + ramp * (lo - hi)) ** self.rho, torch.zeros(1, dtype=torch.float64)])

    def time_grid(self) -> torch.Tensor:
        """Increasing times (float64): steps + 1 from 0 to 1 for the ODEs (for edm_heun t = 1 / (1 + sigma) of its
        sigmas, ending at 1); for the SDE, steps from 0 to 1 - last_step (its final mean step ends at 1)."""
        if self.kind == "edm_heun":
            return 1.0 / (1.0 + self.sigmas())
        if self.kind == "euler_maruyama":
            return torch.linspace(0.0, 1.0 - self.last_step, self.steps, dtype=torch.float64)
        sigma = torch.linspace(1.0, 0.0, self.steps + 1, dtype=torch.float64)
        sigma = self.shift * sigma / (1 + (self.shift - 1) * sigma)
        return 1.0 - sigma

    def evaluations(self) -> list[tuple[float, float]]:
        """(t, progress) of every denoiser call, in order; progress = step / (steps - 1)."""
        grid = self.time_grid().tolist()
        denom = max(self.steps - 1, 1)
        if self.kind == "heun":
            return [(t, k / denom) for k in range(self.steps) for t in (grid[k], grid[k + 1])]
        if self.kind == "edm_heun":  # EDM's last step (to sigma = 0) is a plain Euler step: 2 * steps - 1 calls
            return [(t, k / denom) for k in range(self.steps)
                    for t in ((grid[k], grid[k + 1]) if k + 1 < self.steps else (grid[k],))]
        return [(grid[k], k / denom) for k in range(self.steps)]

    @property
    def nfe(self) -> int:
        """Denoiser calls per image (each may run one or two branches)."""
        return len(self.evaluations())


def make_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def draw_labels(generators: Sequence[torch.Generator], num_classes: int) -> torch.Tensor:
    """One uniform class per image, drawn first from its generator."""
    return torch.cat([torch.randint(num_classes, (1,), generator=g) for g in generators])


def draw_noise(generators: Sequence[torch.Generator], shape: Sequence[int]) -> torch.Tensor:
    """(B, *shape) standard normal noise, image i from generator i, on the CPU."""
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators])


class GuidedDenoiser:
    """The guided velocity of one run: evaluates the branches the method needs and combines them.

    Branches with the same model and the same number of sparse tokens (CFG, ICG) share one batched forward; each
    image's generator is still consumed in the same order (condition, strong selection, weak selection); a perturbed
    branch (PAG, SEG, SLG, PDG) runs as its own forward after them.
    A masked weak branch of a model whose `dropped` option is "strong" draws its kept tokens here (select_tokens, the
    same draws the network would make), and its velocity at the dropped positions is replaced by the strong
    branch's, so that guidance there is zero; with "decoder" the network's output is kept everywhere.
    `steps` (the sampler's) places step windows and zeroed steps (SLG, CFG-Zero*); `state` holds per-image state
    across the calls of one batch (APG's momentum), so one denoiser serves one batch.
    """

    def __init__(self, models: Mapping[str, FlowModel], guidance: GuidanceSpec, steps: int | None = None):
        for branch in guidance.guidance_branches(_depth(models["main"])):
            if branch.model not in models:
                raise KeyError(f"method {guidance.method!r} needs a {branch.model!r} model")
        self.models = models
        self.guidance = guidance
        self.steps = steps
        self.state: dict[str, object] = {}
        self.calls: list[list[tuple[str, float]]] = []  # (model, gamma) per call, for accounting and tests

    def _cond(self, kind: str, cond: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        if kind == "c":
            return cond
        if kind == "null":
            return self.models["main"].null_condition(cond)
        return self.models["main"].random_condition(cond, generators)

    def __call__(
        self, x: torch.Tensor, t: float, progress: float, cond: torch.Tensor, generators: Sequence[torch.Generator]
    ) -> torch.Tensor:
        step = None if self.steps is None else step_index(progress, self.steps)
        branches = self.guidance.branches_at(t, progress, step, self.steps, _depth(self.models["main"]))
        self.calls.append([(b.model, g) for b, g in branches])
        if not branches:  # CFG-Zero*'s zeroed steps
            return torch.zeros_like(x)
        conds = [self._cond(b.cond, cond, generators) for b, _ in branches]
        tt = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        (strong, g_s), *rest = branches
        model = self.models[strong.model]
        if not rest:
            return model.velocity(x, tt, conds[0], g_s, generators)
        preds = {}
        first, g_w = rest[0]
        if first.perturb is None:
            preds["cond"], preds[first.label] = self._pair(x, tt, conds[:2], g_s, first, g_w, generators)
            todo = list(zip(rest[1:], conds[2:]))
        else:
            preds["cond"] = model.velocity(x, tt, conds[0], g_s, generators)
            todo = list(zip(rest, conds[1:]))
        for (branch, gamma), branch_cond in todo:
            preds[branch.label] = self._weak(x, tt, branch_cond, branch, gamma, preds["cond"], generators)
        return self.guidance.combine(preds, x, t, self.state)

    def _pair(self, x: torch.Tensor, tt: torch.Tensor, conds: list[torch.Tensor], g_s: float, weak: Branch,
              g_w: float, generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        """The strong branch and an unperturbed weak one, batched into one forward when they can be."""
        model = self.models["main"]
        weak_model = self.models[weak.model]
        n = model.config.num_tokens
        if weak.model == "main" and num_sparse(n, g_s) == num_sparse(n, g_w):
            ids = None
            keep_strong = self._keeps_strong(weak_model, g_w)
            if keep_strong:  # both selections drawn here, in the order the batched forward would draw them
                ids = torch.cat([select_tokens(len(x), n, g, generators, x.device) for g in (g_s, g_w)])
            both = model.velocity(
                torch.cat([x, x]), torch.cat([tt, tt]), torch.cat(conds), g_s, [*generators, *generators], ids
            )
            v_strong, v_weak = both.chunk(2)
            if keep_strong:
                weak_ids = ids[len(x):]
                dropped = dropped_pixels(weak_ids, weak_model.config.num_tokens, weak_model.config.patch_size)
                v_weak = torch.where(dropped, v_strong, v_weak)
            return v_strong, v_weak
        v_strong = model.velocity(x, tt, conds[0], g_s, generators)
        return v_strong, self._weak(x, tt, conds[1], weak, g_w, v_strong, generators)

    @staticmethod
    def _keeps_strong(model: FlowModel, gamma: float) -> bool:
        return (model.dropped == "strong" and model.config.sparsity == "masking"
                and num_sparse(model.config.num_tokens, gamma) > 0)

    def _weak(self, x: torch.Tensor, tt: torch.Tensor, cond: torch.Tensor, branch: Branch, gamma: float,
              v_strong: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """One guidance branch as its own forward (perturbed if the method says so)."""
        weak_model = self.models[branch.model]
        n_weak = weak_model.config.num_tokens
        weak_ids = select_tokens(len(x), n_weak, gamma, generators, x.device) \
            if self._keeps_strong(weak_model, gamma) else None
        with perturbed(weak_model.net, branch.perturb):
            v_weak = weak_model.velocity(x, tt, cond, gamma, generators, weak_ids)
        if weak_ids is not None:
            v_weak = torch.where(dropped_pixels(weak_ids, n_weak, weak_model.config.patch_size), v_strong, v_weak)
        return v_weak


def _depth(model: FlowModel) -> int | None:
    """The number of transformer blocks of a model's network (None when it has no `blocks`)."""
    blocks = getattr(model.net, "blocks", None)
    return None if blocks is None else len(blocks)


Denoise = Callable[[torch.Tensor, float, float, torch.Tensor, Sequence[torch.Generator]], torch.Tensor]


@torch.no_grad()
def sample(
    denoise: Denoise,
    noise: torch.Tensor,
    cond: torch.Tensor,
    generators: Sequence[torch.Generator],
    sampler: SamplerSpec,
) -> torch.Tensor:
    """Integrate from t = 0 (noise) to t = 1 with Euler, Heun, SiT's Euler-Maruyama SDE or EDM's Heun; returns x at
    t = 1."""
    if sampler.kind == "edm_heun":
        return _edm_heun(denoise, noise, cond, generators, sampler)
    grid = sampler.time_grid().tolist()
    denom = max(sampler.steps - 1, 1)
    x = noise
    if sampler.kind == "euler_maruyama":
        norm = sampler.diffusion_norm
        for k in range(sampler.steps):
            t = grid[k]
            v = denoise(x, t, k / denom, cond, generators)
            drift = v + norm * (t * v - x)  # v + w(t) * score, score = (t v - x) / (1 - t), w = norm (1 - t)
            if k + 1 < sampler.steps:
                dt = grid[k + 1] - t
                dw = draw_noise(generators, x.shape[1:]).to(x.device, x.dtype) * dt**0.5
                x = x + drift * dt + (2 * norm * (1 - t)) ** 0.5 * dw
            else:  # SiT's `last_step = Mean`: the noiseless mean step to t = 1
                x = x + drift * (1.0 - t)
        return x
    for k in range(sampler.steps):
        t, t_next = grid[k], grid[k + 1]
        v = denoise(x, t, k / denom, cond, generators)
        if sampler.kind == "heun":
            x_euler = x + (t_next - t) * v
            v = 0.5 * (v + denoise(x_euler, t_next, k / denom, cond, generators))
        x = x + (t_next - t) * v
    return x


def _edm_heun(denoise: Denoise, noise: torch.Tensor, cond: torch.Tensor, generators: Sequence[torch.Generator],
              sampler: SamplerSpec) -> torch.Tensor:
    """EDM's deterministic sampler in sigma space (Karras et al. 2022, Alg. 1; MaskDiT's `edm_sampler`, S_churn 0).

    The state is x_edm = x + sigma * noise in float64, starting at sigma_max * noise; the denoiser D comes from the
    harness velocity at t = 1 / (1 + sigma): D = x_t + (1 - t) v with x_t = t * x_edm. Heun's correction on every
    step but the last, whose Euler step to sigma = 0 lands on D. Guidance on v is guidance on D (D is affine in v).
    """
    sigmas = sampler.sigmas().tolist()
    denom = max(sampler.steps - 1, 1)

    def slope(x_edm: torch.Tensor, sigma: float, progress: float) -> torch.Tensor:
        t = 1.0 / (1.0 + sigma)
        v = denoise((t * x_edm).to(noise.dtype), t, progress, cond, generators).double()
        denoised = t * x_edm + (1.0 - t) * v
        return (x_edm - denoised) / sigma

    x = noise.double() * sigmas[0]
    for k in range(sampler.steps):
        sigma, sigma_next = sigmas[k], sigmas[k + 1]
        d = slope(x, sigma, k / denom)
        x_next = x + (sigma_next - sigma) * d
        if k + 1 < sampler.steps:
            x_next = x + (sigma_next - sigma) * 0.5 * (d + slope(x_next, sigma_next, k / denom))
        x = x_next
    return x.to(noise.dtype)


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work, so that a wall-clock reading covers it (no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3) by clamp(127.5 x + 128, 0, 255), as DiT/SiT convert samples."""
    return (127.5 * images + 128.0).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def generate(
    models: Mapping[str, FlowModel],
    guidance: GuidanceSpec,
    sampler: SamplerSpec,
    seeds: Sequence[int],
    labels: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    timing: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 NHWC) and labels for `seeds`: labels drawn from each seed's generator unless given.

    `decode` maps model space to pixels in [-1, 1] (a VAE); pixel-space models need none. A given `timing` dict
    receives the seconds of the denoising loop (`denoise`) and of the whole call (`total`), between device syncs.
    """
    synchronize(device)
    start = time.perf_counter()
    main = models["main"]
    generators = make_generators(seeds)
    if labels is None:
        labels = draw_labels(generators, getattr(main.conditions, "num_prompts", None) or main.num_classes)
    cfg = main.config
    noise = draw_noise(generators, (cfg.in_channels, cfg.input_size, cfg.input_size)).to(device)
    synchronize(device)
    begin = time.perf_counter()
    x = sample(GuidedDenoiser(models, guidance, sampler.steps), noise, labels.to(device), generators, sampler)
    synchronize(device)
    end = time.perf_counter()
    pixels = decode(x) if decode is not None else x
    images = to_uint8(pixels.float())
    if timing is not None:
        timing.update(denoise=end - begin, total=time.perf_counter() - start)
    return images, labels.cpu().numpy()
