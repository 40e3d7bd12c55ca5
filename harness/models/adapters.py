"""Adapters that present every checkpoint in the harness convention: t in [0, 1], 0 = noise, velocity x - noise.

The samplers and guidance see only `FlowModel.velocity`, `null_condition` and `random_condition`. What a condition is
(a class label, a prompt of a prompt set) is the job of a `Conditions` object; what the network's time axis and
prediction are is the job of the convention. Any network whose forward is
`net(x, t_native, cond_native, gamma, generators, ids)` and whose `config` has `in_channels` plugs in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from harness.models.batching import FORWARD_ROWS, pad_rows

# What a masked weak branch of a guided denoiser keeps at the positions it dropped: the network's own output there
# ("decoder": the decoder's output from the mask token, trained on other targets than the kept tokens) or the strong
# branch's prediction ("strong": guidance acts on the weak branch's kept tokens only). Default: "decoder", which
# measured better on the testbed's masking twin (README, "Masked branches").
DROPPED = ("decoder", "strong")
DEFAULT_DROPPED = "decoder"


def _dit_alphas_cumprod() -> torch.Tensor:
    """DiT's DDPM schedule: 1000 steps, linear betas 1e-4 .. 0.02 (float64)."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


class ClassConditions:
    """Class labels as conditions: (B,) long tensors; the null class is index `num_classes`."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def null(self, cond: torch.Tensor) -> torch.Tensor:
        """The unconditional input CFG's weak branch uses: the null class for every image."""
        return torch.full_like(cond, self.num_classes)

    def random(self, cond: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """ICG's independent condition: a real class drawn uniformly from each image's own generator."""
        draws = [torch.randint(self.num_classes, (1,), generator=g) for g in generators]
        return torch.cat(draws).to(cond.device)

    def resolve(self, cond: torch.Tensor) -> torch.Tensor:
        """What the network takes for `cond` (labels are passed through)."""
        return cond


class TextCondition(NamedTuple):
    """What a text-conditioned network takes: token states (B, L, C) and their mask (B, L), True = a real token."""

    states: torch.Tensor
    mask: torch.Tensor


class PromptConditions:
    """The prompts of a prompt set as conditions: (B,) long prompt indices into encoded states; -1 = the null caption.

    `states` (P, L, C) and `mask` (P, L) hold the text encoder's output for each prompt, encoded once per prompt set;
    `null_states` (L, C) / `null_mask` (L,) are the null caption as the model was trained (empty prompt or zeros).
    """

    def __init__(self, states: torch.Tensor, mask: torch.Tensor, null_states: torch.Tensor, null_mask: torch.Tensor):
        if len(states) < 2:
            raise ValueError("a prompt set needs at least two prompts (ICG draws another prompt of the set)")
        self.states = torch.cat([states, null_states[None]])  # index -1 is the null caption
        self.mask = torch.cat([mask, null_mask[None]]).bool()

    @property
    def num_prompts(self) -> int:
        return len(self.states) - 1

    def null(self, cond: torch.Tensor) -> torch.Tensor:
        """The null caption for every image."""
        return torch.full_like(cond, -1)

    def random(self, cond: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """ICG's independent condition: another prompt of the set, uniform over the others, from each image's generator."""
        draws = torch.cat([torch.randint(self.num_prompts - 1, (1,), generator=g) for g in generators]).to(cond.device)
        return draws + (draws >= cond).long()

    def resolve(self, cond: torch.Tensor) -> TextCondition:
        """Token states and mask of the prompts `cond` indexes (-1 = null caption)."""
        index = cond.cpu() % len(self.states)
        device = cond.device
        return TextCondition(self.states[index].to(device), self.mask[index].to(device))

    def to(self, device: torch.device | str) -> PromptConditions:
        """Keep the encoded prompts on `device` (a prompt set is small next to a model)."""
        self.states, self.mask = self.states.to(device), self.mask.to(device)
        return self


class FlowModel(nn.Module):
    """A network plus the conversion from its native time axis and prediction to the harness's flow velocity.

    Conventions: `sit` (t: 0 = noise, predicts x - noise), `tread` (t: 1 = noise, predicts noise - x, so
    v(t) = -net(1 - t)), `dit` (DDPM epsilon on integer steps 0..999, mapped onto the flow path by matching the
    signal-to-noise ratio t / (1 - t) and rescaling x), `edm` (Karras et al.'s preconditioning with the network's
    `config.sigma_data`: sigma = (1 - t) / t, x_edm = x_t / t, D = c_skip x_edm + c_out F(c_in x_edm, ln(sigma) / 4),
    v = (D - x_t) / (1 - t)).
    `conditions` says what a condition is (default: class labels of `net.config.num_classes`). `dropped` says what
    a masked guidance branch keeps at the positions it dropped (DROPPED; applied by harness.sampling.GuidedDenoiser).
    """

    def __init__(self, net: nn.Module, convention: str = "sit", conditions=None, dropped: str = DEFAULT_DROPPED,
                 rows: int = FORWARD_ROWS):
        super().__init__()
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        self.rows = rows
        if convention not in CONVENTIONS:
            raise KeyError(f"unknown convention {convention!r}; known: {', '.join(CONVENTIONS)}")
        if dropped not in DROPPED:
            raise KeyError(f"unknown dropped-position treatment {dropped!r}; known: {', '.join(DROPPED)}")
        self.net = net
        self.convention = convention
        self.dropped = dropped
        if conditions is None and hasattr(net.config, "num_classes"):
            conditions = ClassConditions(net.config.num_classes)
        self.conditions = conditions  # a text-conditioned network gets PromptConditions from the runner
        self.checkpoint: dict | None = None  # what build_model took from the checkpoint file, for the manifest
        if convention == "dit":
            abar = _dit_alphas_cumprod()
            # float64: a float32 table moved the step the network is given by up to 4e-6 of a step
            # (tests/models/test_conventions.py checks the step to 1e-6)
            self.register_buffer("log_snr", torch.log(abar / (1 - abar)).flip(0), persistent=False)

    @property
    def config(self):
        return self.net.config

    def conditioned(self, conditions) -> "FlowModel":
        """A view of this model (the same network) that resolves conditions with `conditions` (a prompt set's)."""
        view = FlowModel(self.net, self.convention, conditions, self.dropped, self.rows)
        view.checkpoint = self.checkpoint
        return view

    @property
    def num_classes(self) -> int:
        return self.net.config.num_classes

    def null_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """The unconditional input CFG's weak branch uses (null class, empty or zero caption)."""
        return self.conditions.null(cond)

    def random_condition(self, cond: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """ICG's independent condition, drawn from each image's own generator."""
        return self.conditions.random(cond, generators)

    def velocity(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        gamma: float = 0.0,
        generators: Sequence[torch.Generator] | None = None,
        ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Flow velocity (B, C, H, W) at harness time t (B,), condition `cond`, token sparsity gamma.

        `ids` (B, N_keep), when given, fixes the kept tokens of a sparse forward instead of drawing them.
        The network always sees `self.rows` images at a time (the last chunk padded with copies of its first image):
        BLAS libraries pick kernels, and so rounding, by matrix shape, so one fixed shape for every call makes image
        i's numbers independent of the batch it came in, whatever kernels a machine's BLAS chooses.
        """
        if self.conditions is None:
            raise RuntimeError("this network conditions on text: set model.conditions to the prompt set's "
                               "PromptConditions first (harness.prompts.encode.prompt_conditions)")
        batch, rows = x.shape[0], self.rows
        pad = -batch % rows
        x, t, cond = (pad_rows(v, rows) for v in (x, t, cond))
        ids = None if ids is None else pad_rows(ids, rows)
        if generators is not None:
            generators = [*generators, *(torch.Generator().manual_seed(0) for _ in range(pad))]
        out = [
            self._velocity(x[i : i + rows], t[i : i + rows], cond[i : i + rows], gamma,
                           None if generators is None else generators[i : i + rows],
                           None if ids is None else ids[i : i + rows])
            for i in range(0, batch + pad, rows)
        ]
        return torch.cat(out)[:batch]

    def _velocity(self, x, t, cond, gamma, generators, ids) -> torch.Tensor:
        """The velocity of one fixed-size chunk, through the checkpoint's convention."""
        cond = self.conditions.resolve(cond)
        channels = self.net.config.in_channels
        if self.convention == "sit":
            return self.net(x, t, cond, gamma, generators, ids)[:, :channels]
        if self.convention == "tread":
            return -self.net(x, 1.0 - t, cond, gamma, generators, ids)[:, :channels]
        if self.convention == "edm":
            return self._edm_velocity(x, t, cond, gamma, generators, ids)
        return self._dit_velocity(x, t, cond, gamma, generators, ids)

    def _edm_velocity(self, x, t, cond, gamma, generators, ids) -> torch.Tensor:
        # t = 1 / (1 + sigma) puts EDM's x_edm = x0 + sigma * noise on the flow path as x_t = t * x_edm.
        sd = self.net.config.sigma_data
        t64 = t.double().clamp(1e-6, 1 - 1e-6).view(-1, 1, 1, 1)
        sigma = (1 - t64) / t64
        x_edm = x.double() / t64
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sigma**2 + sd**2).sqrt()
        c_noise = (sigma.log() / 4).flatten().to(x.dtype)
        f = self.net((c_in * x_edm).to(x.dtype), c_noise, cond, gamma, generators, ids)
        d = c_skip * x_edm + c_out * f[:, : self.net.config.in_channels].double()
        return ((d - x.double()) / (1 - t64)).to(x.dtype)

    def _dit_velocity(self, x, t, cond, gamma, generators, ids) -> torch.Tensor:
        # Flow state x_t = t*x0 + (1-t)*eps has SNR (t/(1-t))^2; the DDPM step with the same SNR sees
        # x_vp = x_t / sqrt(t^2 + (1-t)^2). Continuous step index by interpolating log-SNR (clamped to 0..999).
        t = t.double().clamp(1e-5, 1 - 1e-5)
        log_snr = 2 * (torch.log(t) - torch.log1p(-t))
        table = self.log_snr.double()  # increasing in index; index i <-> DDPM step 999 - i
        pos = torch.searchsorted(table, log_snr.contiguous()).clamp(1, len(table) - 1)
        lo, hi = table[pos - 1], table[pos]
        frac = ((log_snr - lo) / (hi - lo)).clamp(0, 1)
        step = 999 - (pos - 1 + frac)
        log_snr_used = torch.lerp(lo, hi, frac)
        abar = torch.sigmoid(log_snr_used)
        scale = torch.rsqrt(t**2 + (1 - t) ** 2)
        x_vp = (x.double() * scale.view(-1, 1, 1, 1)).to(x.dtype)
        eps = self.net(x_vp, step.to(x.dtype), cond, gamma, generators, ids)[:, : self.net.config.in_channels].double()
        a, s = abar.sqrt().view(-1, 1, 1, 1), (1 - abar).sqrt().view(-1, 1, 1, 1)
        x0 = (x_vp.double() - s * eps) / a
        return (x0 - eps).to(x.dtype)


CONVENTIONS = ("sit", "tread", "dit", "edm")
