"""Perturbed forwards for guidance branches (PAG, SEG, SLG, PDG) inside the harness's own DiT blocks.

A perturbation is any object with `kind`, `layers` (0-based block indices) and `blur_sigma` (harness.guidance's
Perturbation). Kinds:
- `identity_attention` (PAG, Ahn et al. 2024): in the chosen blocks softmax(QK^T / sqrt(d)) is the identity, so the
  attention returns each token's own value vector V (then the output projection, as usual).
- `blur_queries` (SEG, Hong 2024): in the chosen blocks the queries are blurred by a 2-D Gaussian of width
  `blur_sigma` tokens over the token grid, per channel (before the head split; DiT has no q-norm or RoPE, so
  before or after is the same), kernel ceil(6 sigma) + 1 made odd and clipped to the grid, reflect padding, as
  SusungHong/SEG-SDXL's gaussian_blur_2d; sigma = inf replaces every query by the mean query (uniform attention).
- `skip_blocks` (SLG, SD3.5; STG-R): the chosen blocks pass their input through unchanged.
- `drop_route` (SPRINT's path drop): a routing model skips its whole route (every token routed around it); a masking
  model masks every token (the encoder sees none, the decoder only mask tokens).
A network that supports some of these lists them in its class attribute PERTURBATIONS and implements them while its
`perturbation` attribute is set (see `perturbed`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

INF_SIGMA = 9999.0  # SEG's threshold: a wider blur is the mean query (SusungHong/SEG-SDXL, `blur_sigma > 9999`)


def seg_kernel_size(sigma: float) -> int:
    """SEG's Gaussian kernel size for width sigma: ceil(6 sigma) + 1, made odd."""
    size = math.ceil(6 * sigma)
    return size + 1 - size % 2


def blur_token_grid(q: torch.Tensor, sigma: float) -> torch.Tensor:
    """Queries (B, heads, N, d) of a square token grid blurred per channel by SEG's 2-D Gaussian (mean for sigma >
    INF_SIGMA); ValueError when N is not a full square grid (a routed or masked subset of the tokens)."""
    B, heads, N, d = q.shape
    side = math.isqrt(N)
    if side * side != N:
        raise ValueError(f"SEG blurs queries over the token grid, but this block sees {N} tokens (not a square grid: "
                         "run the perturbed branch dense, gamma 0, or choose blocks outside the route)")
    if sigma > INF_SIGMA:
        return q.mean(dim=2, keepdim=True).expand_as(q)
    grid = q.permute(0, 1, 3, 2).reshape(B, heads * d, side, side)
    size = min(seg_kernel_size(sigma), side - (side % 2 - 1))
    half = (size - 1) / 2
    pos = torch.linspace(-half, half, size, dtype=torch.float64)
    pdf = torch.exp(-0.5 * (pos / sigma) ** 2)
    k1 = (pdf / pdf.sum()).to(q)
    kernel = (k1[:, None] @ k1[None, :]).expand(heads * d, 1, size, size)
    grid = F.conv2d(F.pad(grid, [size // 2] * 4, mode="reflect"), kernel, groups=heads * d)
    return grid.reshape(B, heads, d, N).permute(0, 1, 3, 2)


class SkippedBlock(nn.Module):
    """A block that returns its input: SLG's skipped layer."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x


def supported(net: nn.Module) -> frozenset[str]:
    """The perturbation kinds network `net` implements."""
    return frozenset(getattr(net, "PERTURBATIONS", ()))


@contextmanager
def perturbed(net: nn.Module, perturbation: Any | None) -> Iterator[None]:
    """Run `net`'s forwards inside with `perturbation` (None: unchanged); ValueError when the network's family does
    not implement that kind or a block index lies outside its blocks."""
    if perturbation is None:
        yield
        return
    net = getattr(net, "_orig_mod", net)  # a torch.compile'd network: set the flag on the module it wraps
    if perturbation.kind not in supported(net):
        raise ValueError(f"network {type(net).__name__} does not implement the {perturbation.kind!r} perturbation "
                         f"(it implements: {', '.join(sorted(supported(net))) or 'none'})")
    depth = len(net.blocks)
    bad = [i for i in perturbation.layers if not 0 <= i < depth]
    if bad:
        raise ValueError(f"perturbed blocks {bad} lie outside blocks 0..{depth - 1}")
    saved = net.perturbation
    net.perturbation = perturbation
    try:
        yield
    finally:
        net.perturbation = saved


__all__ = ["INF_SIGMA", "SkippedBlock", "blur_token_grid", "perturbed", "seg_kernel_size", "supported"]
