"""Rank helpers that work with or without torch.distributed (EDM2's torch_utils/distributed.py, trimmed).

A launcher such as `torchrun` sets RANK, WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR/PORT); `init` then joins the
process group, over NCCL when the device is CUDA and over gloo otherwise. Without those variables every helper
answers as the single process of a world of one, so the same code runs under `python -m harness` and `torchrun`.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

from harness.errors import HarnessError


def launched() -> bool:
    """Whether a launcher (torchrun, SLURM wrappers, ...) set the usual environment for a process group."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def get_rank() -> int:
    """This process's global rank (0 without a launcher)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0))


def get_world_size() -> int:
    """Number of processes (1 without a launcher)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def get_local_rank() -> int:
    """Rank within this node, which picks the GPU (0 without a launcher)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """Whether this is rank 0, the only process that writes manifests and merged outputs."""
    return get_rank() == 0


def resolve_device(device: str | None = None) -> torch.device:
    """The device this process computes on: `device` (default cuda if available, else cpu), cuda:LOCAL_RANK per rank.

    A bare "cuda" under a launcher becomes this rank's GPU, so each process of `torchrun` uses its own.
    """
    name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is not None and dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", get_local_rank() if launched() else 0)
    if dev is None or not _present(dev):
        raise HarnessError(f"device '{name}' is not available here (available: {', '.join(available_devices())})")
    return dev


def available_devices() -> list[str]:
    """The devices this machine can compute on: cpu, then each CUDA GPU and mps where present."""
    names = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return names + (["mps"] if torch.backends.mps.is_available() else [])


def _present(dev: torch.device) -> bool:
    """Whether `dev` exists on this machine."""
    if dev.type == "cuda":
        return torch.cuda.device_count() > dev.index
    return dev.type == "cpu" or (dev.type == "mps" and torch.backends.mps.is_available())


def init(device: torch.device) -> None:
    """Join the launcher's process group once (NCCL for CUDA devices, gloo otherwise); no-op without a launcher."""
    if not launched() or not dist.is_available() or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", init_method="env://", device_id=device)
    else:
        dist.init_process_group("gloo", init_method="env://")


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a world of one)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def print0(*args, **kwargs) -> None:
    """print on rank 0 only (to stderr unless `file` is given), so a log is not repeated once per process."""
    if is_main():
        kwargs.setdefault("file", sys.stderr)
        print(*args, **kwargs)
