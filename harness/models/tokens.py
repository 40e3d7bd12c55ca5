"""Token selection shared by every model family, the sampler and the FLOP counter: which tokens a sparse forward
keeps (TREAD's routing and MaskDiT's masking draw them the same way), gathering them, the pixels of the dropped
ones, and putting a token grid back into an image."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def num_sparse(num_tokens: int, gamma: float) -> int:
    """Tokens routed or dropped at rate gamma: int(N * gamma), as TREAD's Router.get_mask counts them."""
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must lie in [0, 1), got {gamma}")
    return int(num_tokens * gamma)


def select_tokens(
    batch: int, num_tokens: int, gamma: float, generators: Sequence[torch.Generator] | None, device: torch.device
) -> torch.Tensor:
    """Indices (B, N - int(N*gamma)) of the tokens each image keeps, chosen uniformly at random.

    With `generators` (one per image) the draw comes from each image's own stream on the CPU, so an image's
    selection never depends on the batch it sits in; without them (training) the global RNG is used.
    """
    keep = num_tokens - num_sparse(num_tokens, gamma)
    if generators is None:
        noise = torch.rand(batch, num_tokens, device=device)
    else:
        if len(generators) != batch:
            raise ValueError(f"got {len(generators)} generators for a batch of {batch}")
        noise = torch.stack([torch.rand(num_tokens, generator=g) for g in generators]).to(device)
    return noise.argsort(dim=1)[:, :keep]


def dropped_pixels(ids: torch.Tensor, num_tokens: int, patch_size: int) -> torch.Tensor:
    """(B, 1, H, W) bool, True on the pixels of the tokens that `ids` (B, N_keep) does not keep (square grid)."""
    B = ids.shape[0]
    side = math.isqrt(num_tokens)
    kept = torch.zeros(B, num_tokens, dtype=torch.bool, device=ids.device).scatter(1, ids, True)
    dropped = ~kept.view(B, 1, side, 1, side, 1)
    return dropped.expand(B, 1, side, patch_size, side, patch_size).reshape(B, 1, side * patch_size, side * patch_size)


def unpatchify(x: torch.Tensor, channels: int, patch_size: int) -> torch.Tensor:
    """(B, N, p*p*C) tokens of a square grid -> (B, C, H, W) image, as DiT's unpatchify."""
    c, p = channels, patch_size
    h = w = int(x.shape[1] ** 0.5)
    x = x.reshape(x.shape[0], h, w, p, p, c)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The tokens (B, N_keep, D) of x (B, N, D) at the positions ids (B, N_keep)."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
