"""Frechet distance paths and bootstrap cost: which tr sqrt(S1 S2) is faster on this machine, and what a bootstrap
interval costs per resample.

Run as `python -m perf.frechet_paths [--dims 2048] [--samples 256,2048,10000] [--device cpu]`; prints one JSON
object. Paths: scipy's sqrtm (ADM's) and the symmetric-eigen path in torch float64 (harness.metrics.frechet's
default, FRECHET_METHOD), and the relative difference of the two FDs. Bootstrap: bootstrap_fd's one-off setup
(sqrt of the reference covariance, C R and, when samples <= dims, the Gram matrix) and seconds per resample, the
per-resample cost of the plain d x d covariance path it replaced, and the total for the count of resamples an
Inception FD gets (harness.metrics.scores.BOOTSTRAP_RESAMPLES_LARGE).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from harness.metrics.frechet import (
    bootstrap_fd,
    frechet_distance,
    gaussian_stats,
    psd_sqrt,
    trace_sqrt_product,
    trace_sqrt_product_torch,
)
from harness.metrics.scores import BOOTSTRAP_RESAMPLES_LARGE


def _features(n: int, d: int, seed: int) -> np.ndarray:
    """Correlated Gaussian features with a decaying spectrum, like network pool features."""
    rng = np.random.default_rng(seed)
    scales = 1.0 / np.sqrt(1.0 + np.arange(d))
    return (rng.normal(size=(n, d)) * scales) @ np.linalg.qr(rng.normal(size=(d, d)))[0]


def _timed(fn, repeats: int = 2) -> tuple[float, object]:
    """Best wall time of `repeats` calls, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def _covariance_resample(x: np.ndarray, ref_root: np.ndarray, rng: np.random.Generator) -> float:
    """One resample of the former path: a d x d weighted covariance, then eigvalsh of R S R (d x d)."""
    n = len(x)
    centred = x - x.mean(axis=0)
    weights = np.bincount(rng.integers(0, n, size=n), minlength=n).astype(np.float64)
    mean_c = weights @ centred / n
    sigma = (centred.T * weights) @ centred / (n - 1) - np.outer(mean_c, mean_c) * n / (n - 1)
    inner = ref_root @ sigma @ ref_root
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum())


def run(dims: int, samples: list[int], device: str, resamples: int) -> dict[str, object]:
    """Timings of the FD paths and of the bootstrap per resample."""
    ref = gaussian_stats(_features(max(4 * dims, 2000), dims, 1))
    sam = gaussian_stats(_features(max(samples), dims, 2) + 0.05)
    t_scipy, tr_scipy = _timed(lambda: trace_sqrt_product(sam.sigma, ref.sigma))
    t_eigen, tr_eigen = _timed(lambda: trace_sqrt_product_torch(sam.sigma, ref.sigma, device))
    fd_scipy = frechet_distance(sam, ref, method="sqrtm")
    fd_eigen = fd_scipy + 2 * (tr_scipy - tr_eigen)
    out: dict[str, object] = {
        "machine": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
        "device": device, "dims": dims, "date": time.strftime("%Y-%m-%d"),
        "fd_seconds": {"scipy_sqrtm": t_scipy, "torch_eigh_float64": t_eigen},
        "fd_relative_difference": abs(fd_eigen - fd_scipy) / abs(fd_scipy),
        "bootstrap": [],
    }
    ref_root = psd_sqrt(ref.sigma)
    for n in samples:
        x = _features(n, dims, 3 + n)
        # two calls, 2 and 2 + resamples draws: their difference is the per-resample cost, the rest the setup
        short, _ = _timed(lambda: bootstrap_fd(x, ref.mu, ref.sigma, n_boot=2, device=device), repeats=1)
        long, _ = _timed(lambda: bootstrap_fd(x, ref.mu, ref.sigma, n_boot=2 + resamples, device=device), repeats=1)
        new = max(long - short, 0.0) / resamples
        rng = np.random.default_rng(0)
        old, _ = _timed(lambda: _covariance_resample(x, ref_root, rng), repeats=1)
        out["bootstrap"].append({"samples": n, "setup_seconds": short - 2 * new, "seconds_per_resample": new,
                                 "former_seconds_per_resample": old,
                                 "seconds_for_default_count": short - 2 * new + new * BOOTSTRAP_RESAMPLES_LARGE})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, default=2048)
    parser.add_argument("--samples", default="256,2048,10000", help="sample counts for the bootstrap timing")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resamples", type=int, default=4, help="resamples timed per sample count")
    args = parser.parse_args()
    print(json.dumps(run(args.dims, [int(s) for s in args.samples.split(",")], args.device, args.resamples),
                     indent=2))


if __name__ == "__main__":
    main()
