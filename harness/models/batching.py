"""Fixed-shape batching: every network and VAE call sees the same number of rows, so results are batch-invariant.

CPU BLAS libraries (MKL, OpenBLAS, oneDNN) and cuBLAS choose kernels, and with them the order of floating-point
sums, by matrix shape. Padding every call to one shape makes image i's numbers independent of the batch it came in.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

FORWARD_ROWS = 8  # images per network call (FlowModel.velocity)


def pad_rows(v: torch.Tensor, multiple: int) -> torch.Tensor:
    """`v` with its first row repeated until its row count is a multiple of `multiple`."""
    pad = -v.shape[0] % multiple
    return torch.cat([v, v[:1].expand(pad, *v.shape[1:])]) if pad else v


def in_fixed_chunks(fn: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, rows: int) -> torch.Tensor:
    """fn applied to `v` in chunks of exactly `rows` rows (the last one padded); the padding rows are dropped."""
    padded = pad_rows(v, rows)
    return torch.cat([fn(chunk) for chunk in padded.split(rows)])[: v.shape[0]]
