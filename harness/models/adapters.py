"""Adapters that present every checkpoint in the harness convention: t in [0, 1], 0 = noise, velocity x - noise.

The samplers and guidance see only `FlowModel.velocity`; a text-to-image model plugs in by providing the same three
methods (`velocity`, `null_condition`, `random_condition`) over its own condition type.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from harness.models.dit import SparseDiT


def _dit_alphas_cumprod() -> torch.Tensor:
    """DiT's DDPM schedule: 1000 steps, linear betas 1e-4 .. 0.02 (float64)."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


class FlowModel(nn.Module):
    """A SparseDiT plus the conversion from its native time axis and prediction to the harness's flow velocity.

    Conventions: `sit` (t: 0 = noise, predicts x - noise), `tread` (t: 1 = noise, predicts noise - x, so
    v(t) = -net(1 - t)), `dit` (DDPM epsilon on integer steps 0..999, mapped onto the flow path by matching the
    signal-to-noise ratio t / (1 - t) and rescaling x).
    """

    def __init__(self, net: SparseDiT, convention: str = "sit"):
        super().__init__()
        if convention not in CONVENTIONS:
            raise KeyError(f"unknown convention {convention!r}; known: {', '.join(CONVENTIONS)}")
        self.net = net
        self.convention = convention
        if convention == "dit":
            abar = _dit_alphas_cumprod()
            self.register_buffer("log_snr", torch.log(abar / (1 - abar)).float().flip(0), persistent=False)

    @property
    def config(self):
        return self.net.config

    @property
    def num_classes(self) -> int:
        return self.net.config.num_classes

    def null_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """The unconditional input CFG's weak branch uses: the null class for every image."""
        return torch.full_like(cond, self.num_classes)

    def random_condition(self, cond: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """ICG's independent condition: a real class drawn uniformly from each image's own generator."""
        draws = [torch.randint(self.num_classes, (1,), generator=g) for g in generators]
        return torch.cat(draws).to(cond.device)

    def velocity(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        gamma: float = 0.0,
        generators: Sequence[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """Flow velocity (B, C, H, W) at harness time t (B,), condition `cond`, token sparsity gamma.

        CPU BLAS kernels round a row differently for different row counts; padding makes image i's numbers
        independent of its batch's size. A network that pads its own per-image conditioning (`pads_conditioning`,
        SparseDiT) needs a second row only for a single image; any other is padded to a multiple of BATCH_MULTIPLE.
        """
        batch = x.shape[0]
        pad = max(0, 2 - batch) if getattr(self.net, "pads_conditioning", False) else -batch % BATCH_MULTIPLE
        if pad:
            x, t, cond = (torch.cat([v, v[:1].expand(pad, *v.shape[1:])]) for v in (x, t, cond))
            if generators is not None:
                generators = [*generators, *(torch.Generator().manual_seed(0) for _ in range(pad))]
        channels = self.net.config.in_channels
        if self.convention == "sit":
            v = self.net(x, t, cond, gamma, generators)[:, :channels]
        elif self.convention == "tread":
            v = -self.net(x, 1.0 - t, cond, gamma, generators)[:, :channels]
        else:
            v = self._dit_velocity(x, t, cond, gamma, generators)
        return v[:batch]

    def _dit_velocity(self, x, t, cond, gamma, generators) -> torch.Tensor:
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
        eps = self.net(x_vp, step.to(x.dtype), cond, gamma, generators)[:, : self.net.config.in_channels].double()
        a, s = abar.sqrt().view(-1, 1, 1, 1), (1 - abar).sqrt().view(-1, 1, 1, 1)
        x0 = (x_vp.double() - s * eps) / a
        return (x0 - eps).to(x.dtype)


CONVENTIONS = ("sit", "tread", "dit")
BATCH_MULTIPLE = 8
