"""Combination rules of the guidance methods: pure functions of the branch predictions (harness velocities), with
per-image state across calls where the method has it (APG's momentum buffer).

A rule takes `preds` (branch label -> velocity (B, C, H, W); the strong branch is "cond") and a Context. Every
operation is per image (norms and inner products over all non-batch dims), so an image's output never depends on
the batch it sits in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Context:
    """What a rule may use besides the predictions: state x_t, harness time t, the weight omega at t, the run's
    method parameters, and the mutable per-batch state dict."""

    x: torch.Tensor
    t: float
    omega: float
    params: Mapping[str, Any]
    state: dict[str, Any]


def _other(preds: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The one guidance branch of a two-branch method."""
    (weak,) = (v for k, v in preds.items() if k != "cond")
    return weak


def lerp(preds: Mapping[str, torch.Tensor], ctx: Context) -> torch.Tensor:
    """weak + omega (strong - weak): CFG, AG, ICG, SG, PAG, SEG, SLG, PDG (harness.guidance.combine)."""
    strong, weak = preds["cond"], _other(preds)
    return weak + ctx.omega * (strong - weak)


def three_branch(preds: Mapping[str, torch.Tensor], ctx: Context) -> torch.Tensor:
    """c + (omega - 1)(c - u) + (omega_pag - 1)(c - p), with a term left out while its branch is not computed
    (diffusers' PerturbedAttentionGuidance with use_original_formulation, scales omega - 1 and omega_pag - 1)."""
    c = preds["cond"]
    out = c
    if "uncond" in preds:
        out = out + (ctx.omega - 1) * (c - preds["uncond"])
    if "pag" in preds:
        out = out + (ctx.params["omega_pag"] - 1) * (c - preds["pag"])
    return out


def _dims(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(1, x.ndim))


def apg_update(d_cond: torch.Tensor, d_weak: torch.Tensor, eta: float, norm_threshold: float, momentum: float,
               state: dict[str, Any]) -> torch.Tensor:
    """APG's guidance direction (Sadat et al. 2024, Alg. 1) per image on denoised predictions: the difference
    D_c - D_w through the momentum buffer (buffer <- diff + momentum * buffer, kept in `state`), rescaled to norm
    <= norm_threshold (0: no rescaling), then its part orthogonal to D_c plus eta times its parallel part."""
    diff = d_cond - d_weak
    buffer = state.get("apg_buffer")
    if buffer is not None and momentum != 0:
        diff = diff + momentum * buffer
    state["apg_buffer"] = diff
    dims = _dims(diff)
    if norm_threshold > 0:
        norm = diff.norm(p=2, dim=dims, keepdim=True)
        diff = diff * torch.clamp(norm_threshold / norm, max=1.0)
    unit = F.normalize(d_cond, dim=dims)
    parallel = (diff * unit).sum(dim=dims, keepdim=True) * unit
    return diff - parallel + eta * parallel


def apg(preds: Mapping[str, torch.Tensor], ctx: Context) -> torch.Tensor:
    """APG on the denoised prediction D = x_t + (1 - t) v of each branch: D_c + (omega - 1) APG-direction, back to a
    velocity as v_c + (omega - 1) direction / (1 - t). At t = 1 (Heun's last evaluation) D_c = D_w = x_t and there
    is nothing to project: the strong velocity is returned and the buffer is left alone."""
    strong, weak = preds["cond"], _other(preds)
    scale = 1.0 - ctx.t
    if scale <= 0:
        return strong
    x = ctx.x.double()
    d_cond, d_weak = x + scale * strong.double(), x + scale * weak.double()
    p = ctx.params
    direction = apg_update(d_cond, d_weak, p["eta"], p["norm_threshold"], p["momentum"], ctx.state)
    return (strong.double() + (ctx.omega - 1) * direction / scale).to(strong.dtype)


def cfg_zero_star(preds: Mapping[str, torch.Tensor], ctx: Context) -> torch.Tensor:
    """CFG-Zero* (Fan et al. 2025) on the velocity: weak = s* u with s* = <c, u> / (|u|^2 + 1e-8) per image, then
    weak + omega (c - weak). Its zeroed first steps never reach a rule (harness.guidance.GuidanceSpec.zeroed)."""
    c, u = preds["cond"], preds["uncond"]
    cf, uf = c.flatten(1).double(), u.flatten(1).double()
    s = (cf * uf).sum(1) / (uf.square().sum(1) + 1e-8)
    weak = u * s.to(u.dtype).view(-1, *(1,) * (u.ndim - 1))
    return weak + ctx.omega * (c - weak)


__all__ = ["Context", "apg", "apg_update", "cfg_zero_star", "lerp", "three_branch"]
