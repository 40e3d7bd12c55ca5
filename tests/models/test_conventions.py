"""The `sit`, `tread` and `dit` conventions on networks whose exact answer is known, and against a DDPM/DDIM step.

An oracle network knows the clean image x and recovers the true noise z from the input it is given, in its own
convention (its own time axis, its own state scaling); the harness velocity of the flow path x_t = t x + (1 - t) z is
then exactly x - z. A convention that passed the wrong time, the wrong sign or an unscaled state would make the
oracle recover another z, and the velocity another value.
"""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from harness.models.adapters import FlowModel

C, H = 3, 4


def _ddpm_alphas_cumprod() -> torch.Tensor:
    """DiT's schedule written out here (1000 linear betas 1e-4 .. 0.02), not taken from the adapter."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


class Oracle(nn.Module):
    """A network that returns its convention's true target for a known clean image `x0`."""

    def __init__(self, x0: torch.Tensor, convention: str, learn_sigma: bool = False):
        super().__init__()
        self.x0, self.convention = x0.double(), convention
        self.config = SimpleNamespace(in_channels=C, num_classes=10)
        self.learn_sigma = learn_sigma
        self.abar = _ddpm_alphas_cumprod()
        self.calls = []

    def forward(self, x, t, cond, gamma=0.0, generators=None, ids=None):
        self.calls.append(t.detach().double().clone())
        dtype, x, s = x.dtype, x.double(), t.double().view(-1, 1, 1, 1)
        if self.convention == "sit":  # x_s = s x0 + (1 - s) z, target x0 - z
            z = (x - s * self.x0) / (1 - s)
            out = self.x0 - z
        elif self.convention == "tread":  # x_s = (1 - s) x0 + s z (s = 1 is noise), target z - x0
            z = (x - (1 - s) * self.x0) / s
            out = z - self.x0
        else:  # dit: x = sqrt(abar_k) x0 + sqrt(1 - abar_k) z at a (fractional) DDPM step k, target z
            abar = self._abar(t.double()).view(-1, 1, 1, 1)
            out = (x - abar.sqrt() * self.x0) / (1 - abar).sqrt()
        if self.learn_sigma:  # DiT's variance channels: must be dropped by the adapter
            out = torch.cat([out, torch.full_like(out, 1e3)], dim=1)
        return out.to(dtype)

    def _abar(self, k: torch.Tensor) -> torch.Tensor:
        """abar at a fractional step: log-SNR interpolated linearly between the integer steps around k."""
        log_snr = torch.log(self.abar / (1 - self.abar))
        lo = k.floor().long().clamp(0, 998)
        frac = k - lo
        return torch.sigmoid(torch.lerp(log_snr[lo], log_snr[lo + 1], frac))


def _path(seed: int = 0, batch: int = 5):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, C, H, H, generator=gen, dtype=torch.float64)
    z = torch.randn(batch, C, H, H, generator=gen, dtype=torch.float64)
    return x0, z


@torch.no_grad()
@pytest.mark.parametrize("convention", ["sit", "tread"])
def test_flow_conventions_give_the_true_velocity(convention):
    """An oracle in its own time axis: the harness velocity is x - z (tread: time reversed and sign flipped)."""
    x0, z = _path()
    t = torch.tensor([0.05, 0.3, 0.5, 0.71, 0.95], dtype=torch.float64)
    xt = t.view(-1, 1, 1, 1) * x0 + (1 - t.view(-1, 1, 1, 1)) * z
    net = Oracle(x0, convention)
    v = FlowModel(net, convention, rows=5).velocity(xt.float(), t.float(), torch.zeros(5, dtype=torch.long))
    torch.testing.assert_close(v.double(), x0 - z, atol=1e-5, rtol=1e-5)  # float32 round trip of x_t
    native = 1 - t if convention == "tread" else t
    torch.testing.assert_close(net.calls[0], native, atol=1e-7, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("learn_sigma", [False, True])
def test_dit_convention_gives_the_true_velocity(learn_sigma):
    """A DDPM epsilon oracle at matched signal-to-noise: the velocity is x - z to 1e-6 (float64 inputs)."""
    x0, z = _path(1)
    t = torch.tensor([0.02, 0.25, 0.5, 0.8, 0.97], dtype=torch.float64)
    xt = t.view(-1, 1, 1, 1) * x0 + (1 - t.view(-1, 1, 1, 1)) * z
    net = Oracle(x0, "dit", learn_sigma).double()
    model = FlowModel(net, "dit", rows=5)
    v = model.velocity(xt, t, torch.zeros(5, dtype=torch.long))
    torch.testing.assert_close(v.double(), x0 - z, atol=1e-6, rtol=0)


@torch.no_grad()
def test_dit_convention_maps_ddpm_steps_to_matching_times():
    """At t whose SNR (t / (1 - t))^2 equals DDPM step k's abar / (1 - abar), the network is called at step k."""
    abar = _ddpm_alphas_cumprod()
    steps = torch.tensor([999, 750, 500, 250, 20])
    a, s = abar[steps].sqrt(), (1 - abar[steps]).sqrt()
    t = a / (a + s)
    x0, z = _path(2)
    net = Oracle(x0, "dit").double()
    xt = t.view(-1, 1, 1, 1) * x0 + (1 - t.view(-1, 1, 1, 1)) * z
    FlowModel(net, "dit", rows=5).velocity(xt, t, torch.zeros(5, dtype=torch.long))
    torch.testing.assert_close(net.calls[0], steps.double(), atol=1e-6, rtol=0)


class LinearEps(nn.Module):
    """An arbitrary (not oracle) epsilon network: a fixed random channel mix plus a step-dependent bias."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.mix = torch.randn(C, C, generator=gen, dtype=torch.float64) / 2
        self.config = SimpleNamespace(in_channels=C, num_classes=10)

    def forward(self, x, t, cond, gamma=0.0, generators=None, ids=None):
        out = torch.einsum("dc,bchw->bdhw", self.mix, x.double()) + 1e-3 * t.double().view(-1, 1, 1, 1)
        return torch.cat([out, -out], dim=1).to(x.dtype)  # second half: learned-sigma channels


@torch.no_grad()
def test_euler_step_in_the_dit_convention_is_the_hand_computed_ddim_step():
    """One harness Euler step between the times of DDPM steps k and k' equals DDIM's (eta = 0) step from k to k'.

    By hand in DDPM's variables: x0_hat = (x_k - sqrt(1 - abar_k) eps) / sqrt(abar_k),
    x_k' = sqrt(abar_k') x0_hat + sqrt(1 - abar_k') eps, with eps = net(x_k, k). The harness state is
    x_t = x_k * sqrt(t^2 + (1 - t)^2) = x_k / (sqrt(abar_k) + sqrt(1 - abar_k)) at the matching t.
    """
    abar = _ddpm_alphas_cumprod()
    net = LinearEps().double()
    model = FlowModel(net, "dit", rows=4)
    gen = torch.Generator().manual_seed(4)
    x_k = torch.randn(4, C, H, H, generator=gen, dtype=torch.float64)
    for k, k_next in [(999, 979), (600, 580), (100, 80), (20, 0)]:
        a, s = abar[k].sqrt(), (1 - abar[k]).sqrt()
        a2, s2 = abar[k_next].sqrt(), (1 - abar[k_next]).sqrt()
        eps = net(x_k, torch.full((4,), float(k), dtype=torch.float64), None)[:, :C]
        x0_hat = (x_k - s * eps) / a
        ddim = a2 * x0_hat + s2 * eps

        t, t_next = a / (a + s), a2 / (a2 + s2)  # t / (1 - t) = sqrt(abar / (1 - abar))
        x_t = x_k / (a + s)  # sqrt(t^2 + (1 - t)^2) = sqrt(a^2 + s^2) / (a + s) = 1 / (a + s)
        v = model.velocity(x_t, t.expand(4), torch.zeros(4, dtype=torch.long))
        x_next = x_t + (t_next - t) * v
        torch.testing.assert_close(x_next * (a2 + s2), ddim, atol=1e-6, rtol=1e-6)
