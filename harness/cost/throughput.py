"""Throughput and memory of generation: the timed batches of timing.json, their robust statistics, a timing pass
for runs with nothing timed, the device's matmul calibration, and the cost stage that writes cost.json."""

from __future__ import annotations

import functools
import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from harness import distributed
from harness.cost.flops import run_cost
from harness.device import device_name, peak_memory_mb, reset_peak_memory
from harness.files import write_json
from harness.guidance import GuidanceSpec
from harness.models.adapters import FlowModel
from harness.numerics import DEFAULT_PRECISION, precision_context
from harness.rundir import COST_FILE, TIMING_FILE, run_dir_of
from harness.sampling import SamplerSpec, generate, synchronize


class ModelSource(Protocol):
    """Where the cost stage gets a run's models for a timing pass (harness.generate.ModelCache)."""

    device: torch.device

    def run_models(self, run: Any, cache_dir: Path) -> dict[str, FlowModel]: ...

    def decoder(self, vae: str | None) -> Callable[[torch.Tensor], torch.Tensor] | None: ...


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


def read_timing(run: Any, run_dir: Path, device: str) -> dict[str, Any] | None:
    """The run's timing.json when it was recorded for this config on this device, else None."""
    path = run_dir / TIMING_FILE
    try:
        timing = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(timing, dict) or timing.get("config_hash") != run.config_hash or timing.get("device") != device:
        return None
    return timing


def record_timing(run: Any, run_dir: Path, batches: list[dict[str, Any]], device: str, peak_mem_mb: float) -> None:
    """Add this attempt's timed batches to timing.json (those of earlier attempts at the same config and device are
    kept, so a resumed run's throughput covers all of its batches)."""
    old = read_timing(run, run_dir, device) or {"batches": [], "peak_mem_mb": 0.0}
    write_json(run_dir / TIMING_FILE, {"config_hash": run.config_hash, "device": device, "batch_size": run.batch_size,
                                  "precision": run.precision, "compile": run.compile,
                                  "peak_mem_mb": max(old["peak_mem_mb"], peak_mem_mb),
                                  "batches": old["batches"] + batches})


def throughput_from_timing(run: Any, timing: dict[str, Any]) -> dict[str, Any]:
    """cost.json's throughput fields from the generation's timed batches.

    Warm-up batches (the first of each attempt: allocations, kernel selection, torch.compile) are left out, and so
    are shorter last batches (another shape) when full ones exist. A run of a single batch has only its warm-up to
    report, and says so in `throughput_source`. With compile, `compile_seconds` is the warm-up batch's excess over
    the median timed batch.
    """
    batches = timing["batches"]
    steady = [b for b in batches if not b["warmup"]]
    timed = [b for b in steady if b["images"] == run.batch_size] or steady
    source = "generation" if timed else "generation (warm-up batch only)"
    stats = throughput_stats(timed or batches, run.batch_size, run.sampler.steps)
    warmups = [b for b in batches if b["warmup"]]
    compile_seconds = None
    if run.compile and warmups and timed:
        typical = statistics.median(b["total"] / b["images"] for b in timed)
        compile_seconds = max(0.0, statistics.median(b["total"] - typical * b["images"] for b in warmups))
    return {**stats, "peak_mem_mb": timing["peak_mem_mb"], "batch_size": run.batch_size,
            "batch_seconds": [b["denoise"] for b in timed or batches], "throughput_source": source,
            "compile_seconds": compile_seconds}


def measure_costs(runs: Sequence[Any], runs_root: str | Path, cache: ModelSource, warmup: int = 1, repeats: int = 2,
                  progress: bool = True) -> list[Path]:
    """cost.json per run: FLOPs (harness.cost.flops.run_cost), throughput, and the rate reached against the device's.

    Throughput comes from the generation's own timed batches (timing.json, throughput_from_timing). A run with none
    for its config on this device (every shard was resumed from an earlier process) keeps a cost.json measured for
    the same config on the same device, or gets a short timing pass (measure_throughput, `warmup` + `repeats`
    batches) on the models of `cache`, on its device. Prints one summary line.
    """
    dev = cache.device
    name = device_name(dev)
    written, passes = [], 0
    start = time.perf_counter()
    for run in tqdm(runs, desc="cost", unit="run", dynamic_ncols=True, disable=not progress, leave=False):
        run_dir = run_dir_of(runs_root, run)
        path = run_dir / COST_FILE
        timing = read_timing(run, run_dir, name)
        if timing is None and path.is_file():
            old = json.loads(path.read_text())
            if old.get("config_hash") == run.config_hash and old.get("device") == name:
                continue
        if timing is not None:
            throughput = throughput_from_timing(run, timing)
        else:
            passes += 1
            throughput = {**measure_throughput(cache.run_models(run, run_dir.parent), run.guidance, run.sampler,
                                               run.batch_size, dev, decode=cache.decoder(run.models["main"].vae),
                                               warmup=warmup, repeats=repeats, precision=run.precision),
                          "throughput_source": "timing pass", "compile_seconds": None}
        flops = run_cost(run.models, run.guidance, run.sampler)
        cost = {**flops, **throughput, "device": name, "precision": run.precision, "compile": run.compile,
                **achieved_rate(flops, throughput["img_per_s"], matmul_calibration(str(dev), run.precision)),
                "config_hash": run.config_hash}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, cost)
        written.append(path)
    if progress and written:
        spreads = [json.loads(p.read_text())["img_per_s_spread"] for p in written]
        distributed.print0(f"cost: {len(written)} run(s) in {time.perf_counter() - start:.1f} s, throughput from "
                           f"generation for {len(written) - passes}, timing pass for {passes}; img/s spread (IQR / "
                           f"median) {statistics.median(spreads):.1%} median, {max(spreads):.1%} max")
    return written
