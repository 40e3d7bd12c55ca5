"""Numeric precision and torch.compile for sampling: the `precision` and `compile` options of a suite or run.

- `fp32` (default, for reproduction): float32 throughout, with the TF32 flags the official DiT/SiT sampling scripts
  set (sample_ddp.py `--tf32`, on by default: CUDA matmuls and cuDNN convolutions may use TF32 on Ampere and later).
- `tf32`: the same flags plus `torch.set_float32_matmul_precision("high")`, which also lets other backends (oneDNN on
  CPUs that support it) use reduced-precision float32 matmuls.
- `bf16`: the model and VAE run under `torch.autocast(dtype=torch.bfloat16)`; the sampler's state stays float32.

Precision changes the samples, so it is part of a run's configuration hash; compilation is reported separately.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("fp32", "tf32", "bf16")
DEFAULT_PRECISION = "fp32"
COMPILE_BACKEND = "inductor"  # torch.compile's default; tests use "eager" (no C++ build)


@contextlib.contextmanager
def precision_context(precision: str, device: torch.device | str) -> Iterator[None]:
    """Run the enclosed sampling at `precision` on `device`; every global flag is restored afterwards."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    device = torch.device(device)
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if precision == "tf32":
        torch.set_float32_matmul_precision("high")
    try:
        if precision == "bf16":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with its network compiled by torch.compile (graphs are built on first use, one per token count)."""
    model.net = torch.compile(model.net, backend=COMPILE_BACKEND)
    return model


__all__ = ["DEFAULT_PRECISION", "PRECISIONS", "compile_model", "precision_context"]
