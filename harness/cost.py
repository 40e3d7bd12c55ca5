"""Compute accounting: FLOPs per image per sampling step in two conventions, and measured throughput and memory.

FLOPs are multiply-accumulates (one multiply-add = 1, the field's "GFLOPs"), counted per image per sampling step
and summed over the branches a run actually computes (guidance intervals and omega = 1 skip the weak branch, gamma
schedules change the token count from step to step, AG's weak model may be another size):

- `gflops`: linear and conv MACs, fused attention not counted: what fvcore's FlopCountAnalysis counts on these
  models with F.scaled_dot_product_attention (its `linear` and `conv` handles; SDPA is an unsupported op, so 0).
  The SG paper's convention: SiT-XL/2 + route r2->24 gives 114.39 dense (paper 114.42), 97.66 for SG(0.5, 0.9)
  (paper 97.67). fvcore also adds 4 "flops" per element for each LayerNorm and 4096 for the unpatchify einsum; that
  is not a MAC and is 0.06% of SiT-XL/2, so it is left out (tests check linear + conv against fvcore itself).
- `gflops_full`: the attention matmuls (QK^T and AV) counted too, DiT's convention (dense DiT-XL/2 = 118.62).

Both come from one pass of torch.utils.flop_counter.FlopCounterMode (2 FLOPs per MAC, halved here) over the network
built under FakeTensorMode: shapes only, no weights, no arithmetic, so SiT-XL/2 is counted in a fraction of a
second. fvcore itself cannot count this way: it traces with torch.jit.trace, which fails on meta and fake tensors
(the meta convolution kernel receives traced sizes), so it would need the real 2.7 GB of SiT-XL/2 weights and ~10 s
per count on a CPU. Under fake CPU tensors SDPA dispatches to aten._scaled_dot_product_flash_attention_for_cpu,
which FlopCounterMode has no formula for; it gets the formula torch registers for the CUDA flash kernel, and that
op's count is what separates the two conventions. A count depends on gamma only through int(N * gamma), the number
of tokens routed or masked, so counts are cached per (config, token count).
"""

from __future__ import annotations

import functools
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from harness.errors import HarnessError
from harness.guidance import GuidanceSpec
from harness.models import ModelSpec, family_of
from harness.models.adapters import FlowModel
from harness.models.batching import FORWARD_ROWS
from harness.models.dit import num_sparse
from harness.precision import DEFAULT_PRECISION, precision_context
from harness.sampling import SamplerSpec, generate, synchronize

aten = torch.ops.aten
# The fused attention kernels FlopCounterMode can see; their count is what `gflops` leaves out.
ATTENTION_OPS = frozenset({
    aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_flash_attention,
    aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_cudnn_attention,
})


def _cpu_flash_attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of the CPU flash-attention op: torch's own formula for its CUDA flash op, 2*b*h*s_q*s_k*(d_q + d_v)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


@functools.lru_cache(maxsize=8)
def _fake_network(config) -> tuple[FakeTensorMode, torch.nn.Module]:
    """The network of `config` (any model family) with fake parameters (shapes only), and the mode that owns them."""
    mode = FakeTensorMode()
    with mode:
        net = family_of(config).network(config).eval()
    return mode, net


@functools.lru_cache(maxsize=None)
def _count_tokens(config, sparse_tokens: int) -> tuple[int, int]:
    """(linear/conv FLOPs, attention FLOPs) of one single-image forward with `sparse_tokens` routed or masked.

    Counted on a chunk of FORWARD_ROWS images (the shape every network call has) and divided: every count is linear
    in the batch."""
    n = config.num_tokens
    batch = FORWARD_ROWS
    gamma = 0.0 if sparse_tokens == 0 else (sparse_tokens + 0.5) / n  # any gamma with int(n * gamma) = sparse_tokens
    mode, net = _fake_network(config)
    counter = FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flop})
    with mode, torch.no_grad(), sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        x, t, cond = net.dummy_inputs(batch)
        with counter:
            net(x, t, cond, gamma)
    counts = counter.get_flop_counts()["Global"]
    attention = sum(v for op, v in counts.items() if op in ATTENTION_OPS)
    if attention == 0:
        raise RuntimeError(f"FlopCounterMode saw no attention kernel among {sorted(map(str, counts))}")
    return (sum(counts.values()) - attention) // batch, attention // batch


def count_forward(config, gamma: float) -> tuple[float, float]:
    """GMACs of one network forward for one image at token sparsity gamma: (fvcore convention, full)."""
    if gamma > 0 and config.sparsity == "none":
        raise ValueError(f"a model with sparsity 'none' cannot run at gamma {gamma:g}")
    linear, attention = _count_tokens(config, num_sparse(config.num_tokens, gamma))
    return linear / 2e9, (linear + attention) / 2e9


def run_cost(models: Mapping[str, ModelSpec], guidance: GuidanceSpec, sampler: SamplerSpec) -> dict[str, float | int]:
    """FLOPs of one run: per image per sampling step (`gflops`, `gflops_full`), per image (`tflops_image`), NFE.

    `models` maps the roles GuidedDenoiser uses ("main", and "weak" for ag / ag+sg) to their specs. Every denoiser
    call of the sampler (SamplerSpec.evaluations) is charged the branches GuidanceSpec.branches_at says it computes,
    each at its own gamma and on its own model; CFG's batched branches cost what two forwards cost (the count is
    linear in the batch). Per step = per image over the whole sampling / steps (Heun's step makes two calls).
    """
    configs = {role: spec.config()[0] for role, spec in models.items()}
    total = total_full = 0.0
    nfe = 0
    for t, progress in sampler.evaluations():
        for branch, gamma in guidance.branches_at(t, progress):
            if branch.model not in configs:
                raise HarnessError(f"method {guidance.method!r} needs a {branch.model!r} model; got {sorted(models)}")
            config = configs[branch.model]
            if gamma > 0 and config.sparsity == "none":
                raise HarnessError(f"the {branch.model!r} model ({models[branch.model].arch}) has sparsity 'none' "
                                   f"but method {guidance.method!r} runs it at gamma {gamma:g}")
            gmacs, gmacs_full = count_forward(config, gamma)
            total += gmacs
            total_full += gmacs_full
            nfe += 1
    return {"gflops": total / sampler.steps, "gflops_full": total_full / sampler.steps, "tflops_image": total / 1e3,
            "nfe": nfe, "steps": sampler.steps}


#################################################################################
#                           Throughput and memory                               #
#################################################################################


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


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile); all three equal for a single value."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def throughput_stats(batches: Sequence[Mapping[str, float]], batch_size: int, steps: int) -> dict[str, float | int]:
    """Robust throughput of timed batches, each {"images", "denoise" s, "total" s}: medians and their spread.

    `img_per_s` is the median of the per-batch rates of the denoising loop, `img_per_s_iqr` their interquartile
    range and `img_per_s_spread` that range relative to the median (0.1 = the middle half of the batches lies within
    a 10% band): a median over batches shrugs off the few a busy machine slows down, and the spread says how busy it
    was. `img_per_s_e2e` also counts labels, noise, decoding and uint8 conversion; `sec_per_step` is a batch of
    `batch_size` images at the median rate.
    """
    if not batches:
        raise ValueError("no timed batches")
    rates = [b["images"] / b["denoise"] for b in batches]
    q1, median, q3 = _quartiles(rates)
    e2e = statistics.median(b["images"] / b["total"] for b in batches)
    return {"img_per_s": median, "img_per_s_iqr": q3 - q1, "img_per_s_spread": (q3 - q1) / median,
            "img_per_s_e2e": e2e, "sec_per_step": batch_size / median / steps, "timed_batches": len(batches)}


@torch.no_grad()
def measure_throughput(
    models: Mapping[str, FlowModel],
    guidance: GuidanceSpec,
    sampler: SamplerSpec,
    batch_size: int,
    device: torch.device | str,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    warmup: int = 1,
    repeats: int = 3,
    precision: str = DEFAULT_PRECISION,
) -> dict[str, float | int | str | list[float]]:
    """Time the real generation (harness.sampling.generate) on batches of `batch_size`; JSON-ready dict.

    The timing pass for runs that generated nothing to time (all resumed), and for `make perf`: `warmup` untimed
    batches, then `repeats` timed ones, summarised by throughput_stats. `peak_mem_mb` is
    torch.cuda.max_memory_allocated over the timed batches on a GPU, the process's peak RSS on a CPU (which cannot
    be reset, so it also covers whatever ran before in the process).
    """
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"need batch_size >= 1, repeats >= 1, warmup >= 0; got {batch_size}, {repeats}, {warmup}")
    device = torch.device(device)
    seeds = list(range(batch_size))

    def one_batch() -> dict[str, float]:
        timing: dict[str, float] = {"images": batch_size}
        with precision_context(precision, device):
            generate(models, guidance, sampler, seeds, device=device, decode=decode, timing=timing)
        return timing

    for _ in range(warmup):
        one_batch()
    reset_peak_memory(device)
    timings = [one_batch() for _ in range(repeats)]
    return {
        **throughput_stats(timings, batch_size, sampler.steps),
        "peak_mem_mb": peak_memory_mb(device),
        "device": device_name(device),
        "batch_size": batch_size,
        "batch_seconds": [t["denoise"] for t in timings],
    }


#################################################################################
#                     The device's own rate: matmul calibration                 #
#################################################################################


@functools.lru_cache(maxsize=None)
def matmul_calibration(device: str, precision: str = DEFAULT_PRECISION, seconds: float = 0.3) -> float:
    """GMAC/s of square matmuls on `device` at `precision` (the best of repeated timings over ~`seconds`).

    The device's attainable rate for dense linear algebra, measured in the MAC convention of `gflops`, so that
    `utilization` = achieved / calibration compares runs across machines. n = 1024 on a CPU, 8192 on a GPU.
    Measured once per process for each (device, precision).
    """
    dev = torch.device(device)
    n = 8192 if dev.type == "cuda" else 1024
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=generator).to(dev) for _ in range(2))
    best = 0.0
    with torch.no_grad(), precision_context(precision, dev):
        torch.matmul(a, b)  # first call: library setup
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or best == 0.0:
            synchronize(dev)
            start = time.perf_counter()
            torch.matmul(a, b)
            synchronize(dev)
            best = max(best, n**3 / (time.perf_counter() - start) / 1e9)
    return best


def achieved_rate(cost: Mapping[str, float], img_per_s: float, calibration: float) -> dict[str, float]:
    """GMAC/s the generation reached (`gflops` per step x steps x img/s) and its fraction of the calibration."""
    achieved = cost["gflops"] * cost["steps"] * img_per_s
    return {"gflops_per_s": achieved, "calibration_gflops_per_s": calibration, "utilization": achieved / calibration}


__all__ = ["ATTENTION_OPS", "achieved_rate", "count_forward", "device_name", "matmul_calibration", "measure_throughput",
           "peak_memory_mb", "reset_peak_memory", "run_cost", "throughput_stats"]
