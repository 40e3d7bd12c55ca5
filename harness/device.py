"""The device a process runs on, as records name it, and its peak memory."""

from __future__ import annotations

import platform
import resource
import sys

import torch


def device_name(device: torch.device | str) -> str:
    """The device as cost.json records it: `cuda:0 (NVIDIA H100 80GB HBM3)` or `cpu (x86_64, 2 threads)`."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"{device.type} ({platform.machine()}, {torch.get_num_threads()} threads)"


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory: allocated GPU memory since the last reset, or the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def reset_peak_memory(device: torch.device | str) -> None:
    """Start a new peak for peak_memory_mb on a GPU (a CPU's peak RSS cannot be reset)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
