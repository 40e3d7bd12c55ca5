"""Improved precision and recall (Kynkaanniemi et al.) as ADM's ManifoldEstimator computes them, in tiles."""

from __future__ import annotations

import numpy as np
import torch

ADM_K = 3
ADM_TILE = 10000  # ADM's row and column batch size; a 10k x 10k float32 tile is 400 MB


def _as_tensor(features: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Features as a float32 [N, D] tensor on device."""
    tensor = torch.as_tensor(features).to(device=device, dtype=torch.float32)
    if tensor.ndim != 2:
        raise ValueError(f"need [N, D] features, got shape {tuple(tensor.shape)}")
    return tensor


def squared_distances(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """ADM's pairwise distances: max(|u|^2 - 2 u.v + |v|^2, 0), squared Euclidean without a square root."""
    norm_u = (u * u).sum(dim=1, keepdim=True)
    norm_v = (v * v).sum(dim=1, keepdim=True).T
    # in place, in ADM's order of operations, so a tile needs one [len(u), len(v)] buffer
    return (u @ v.T).mul_(-2).add_(norm_u).add_(norm_v).clamp_min_(0)


def manifold_radii(
    features: np.ndarray | torch.Tensor, k: int = ADM_K, tile: int = ADM_TILE, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Squared distance from each point to its k-th nearest neighbour in its own set (index 0 is the point itself)."""
    x = _as_tensor(features, torch.device(device))
    if len(x) <= k:
        raise ValueError(f"need more than k={k} points for k-NN radii, got {len(x)}")
    radii = torch.empty(len(x), dtype=torch.float32, device=x.device)
    for r0 in range(0, len(x), tile):
        rows = x[r0 : r0 + tile]
        nearest = None  # the k + 1 smallest distances seen so far, per row
        for c0 in range(0, len(x), tile):
            block = squared_distances(rows, x[c0 : c0 + tile])
            block = block.topk(min(k + 1, block.shape[1]), dim=1, largest=False).values
            if nearest is not None:
                block = torch.cat([nearest, block], dim=1)
            nearest = block.topk(min(k + 1, block.shape[1]), dim=1, largest=False).values
        radii[r0 : r0 + tile] = nearest[:, k]
    return radii


def precision_recall(
    reference: np.ndarray | torch.Tensor,
    samples: np.ndarray | torch.Tensor,
    k: int = ADM_K,
    tile: int = ADM_TILE,
    device: str | torch.device = "cpu",
) -> tuple[float, float]:
    """(precision, recall) as ADM: precision is the fraction of samples within some reference point's k-NN radius,
    recall the fraction of references within some sample's radius; comparisons use <=.

    Distances are computed tile x tile at a time, so memory stays O(tile^2) plus the features.
    """
    device = torch.device(device)
    ref, sam = _as_tensor(reference, device), _as_tensor(samples, device)
    if ref.shape[1] != sam.shape[1]:
        raise ValueError(f"feature dimensions differ: reference {ref.shape[1]}, samples {sam.shape[1]}")
    ref_radii = manifold_radii(ref, k, tile, device)
    sam_radii = manifold_radii(sam, k, tile, device)
    ref_in = torch.zeros(len(ref), dtype=torch.bool, device=device)  # reference inside the sample manifold
    sam_in = torch.zeros(len(sam), dtype=torch.bool, device=device)  # sample inside the reference manifold
    for r0 in range(0, len(ref), tile):
        for c0 in range(0, len(sam), tile):
            dist = squared_distances(ref[r0 : r0 + tile], sam[c0 : c0 + tile])
            ref_in[r0 : r0 + tile] |= (dist <= sam_radii[None, c0 : c0 + tile]).any(dim=1)
            sam_in[c0 : c0 + tile] |= (dist <= ref_radii[r0 : r0 + tile, None]).any(dim=0)
    return sam_in.double().mean().item(), ref_in.double().mean().item()
