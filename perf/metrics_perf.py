"""Metric performance: Inception images/s (harness vs torch-fidelity) and precision/recall peak memory.

Run as `python -m perf.metrics_perf [--device cuda]`; prints one JSON object (run_benchmarks returns it).
Inception uses random weights written to a temporary file, so it runs offline; speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from harness.metrics.extractor import no_tf32
from harness.metrics.features import (
    InceptionExtractor,
    TorchFidelityImages,
    random_smooth_images,
    write_random_inception_weights,
)
from harness.metrics.inception_score import inception_score
from harness.metrics.precision_recall import ADM_TILE, precision_recall



def _sync(device: torch.device) -> None:
    """Wait for queued GPU work so timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_inception(
    n_images: int | None = None, size: int = 256, batch_size: int = 64, device: str | None = None
) -> dict[str, object]:
    """Images per second of Inception Score end to end (model build, features, score): harness vs torch-fidelity.

    torch-fidelity runs twice: with torch's default TF32 flags (its own behaviour) and with TF32 off, as the
    harness always runs. n_images defaults to 4096 on CUDA and 128 on CPU.
    """
    import torch_fidelity

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    n_images = n_images or (4096 if device.type == "cuda" else 128)
    images = random_smooth_images(n_images, size, np.random.default_rng(0))
    with tempfile.TemporaryDirectory() as tmp:
        weights = write_random_inception_weights(Path(tmp) / "random-inception.pth")
        extractor = InceptionExtractor(device, weights)

        def harness_features(subset: np.ndarray) -> None:
            extractor.extract([subset], batch_size=batch_size, progress=False)

        def harness_run(subset: np.ndarray) -> None:
            built = InceptionExtractor(device, weights)
            inception_score(built.extract([subset], batch_size=batch_size, progress=False)["logits"])

        def fidelity_run(subset: np.ndarray) -> None:
            torch_fidelity.calculate_metrics(
                input1=TorchFidelityImages(subset), isc=True, isc_splits=1, samples_shuffle=False,
                cuda=device.type == "cuda",
                batch_size=batch_size, feature_extractor_weights_path=str(weights), cache=False, verbose=False,
            )

        def fidelity_no_tf32_run(subset: np.ndarray) -> None:
            with no_tf32():
                fidelity_run(subset)

        runs = {
            "harness": harness_run,
            "harness_features_only": harness_features,
            "torch_fidelity": fidelity_run,
            "torch_fidelity_no_tf32": fidelity_no_tf32_run,
        }
        rates = {}
        for name, run in runs.items():
            run(images[:batch_size])  # warm-up: CUDA context, cuDNN autotuning, file cache
            _sync(device)
            start = time.perf_counter()
            run(images)
            _sync(device)
            rates[f"{name}_img_per_s"] = n_images / (time.perf_counter() - start)
    return {
        "device": str(torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
        "images": n_images,
        "image_size": size,
        "batch_size": batch_size,
        **rates,
        "harness_vs_torch_fidelity": rates["harness_img_per_s"] / rates["torch_fidelity_img_per_s"],
    }


def _pr_peak_rss(n_samples: int, n_ref: int, dim: int, tile: int, queue: multiprocessing.Queue) -> None:
    """In a fresh process: peak resident memory added by precision/recall beyond its input features (MB)."""
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((n_ref, dim), dtype=np.float32)
    sam = rng.standard_normal((n_samples, dim), dtype=np.float32)
    torch.as_tensor(ref[:8]) @ torch.as_tensor(sam[:8]).T  # load BLAS before the baseline
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    precision_recall(ref, sam, tile=tile)
    seconds = time.perf_counter() - start
    queue.put(((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, seconds))


def bench_precision_recall_memory(
    n_samples: int = 50000, n_ref: int = 10000, dim: int | None = None, tile: int = ADM_TILE, device: str | None = None
) -> dict[str, object]:
    """Peak memory of precision/recall on synthetic features beyond the features themselves (ADM: 50k x 10k).

    On CUDA: torch's peak allocation. On CPU: peak RSS growth of a fresh process. dim defaults to 2048 on CUDA and
    64 on CPU (tile memory does not depend on dim; 2048-d distances take minutes on a few CPU cores).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dim = dim or (2048 if device.type == "cuda" else 64)
    if device.type == "cuda":
        generator = torch.Generator(device).manual_seed(0)
        ref = torch.randn(n_ref, dim, device=device, generator=generator)
        sam = torch.randn(n_samples, dim, device=device, generator=generator)
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        precision_recall(ref, sam, tile=tile, device=device)
        _sync(device)
        seconds = time.perf_counter() - start
        peak_mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        child = context.Process(target=_pr_peak_rss, args=(n_samples, n_ref, dim, tile, queue))
        child.start()
        peak_mb, seconds = queue.get()
        child.join()
    features_mb = (n_samples + n_ref) * dim * 4 / 2**20
    return {"samples": n_samples, "reference": n_ref, "dim": dim, "tile": tile, "device": str(device),
            "pr_peak_mb_beyond_features": peak_mb, "features_mb": features_mb, "pr_seconds": seconds}


def run_benchmarks(
    device: str | None = None, images: int | None = None, size: int = 256, pr_dim: int | None = None
) -> dict[str, dict[str, object]]:
    """Both metric benchmarks as one dict (for `make perf`)."""
    return {
        "inception": bench_inception(images, size, device=device),
        "precision_recall": bench_precision_recall_memory(dim=pr_dim, device=device),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: print the benchmark dict as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--images", type=int, default=None, help="images per Inception run (4096 CUDA, 128 CPU)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (fed at native size)")
    parser.add_argument("--pr-dim", type=int, default=None, help="feature dim for precision/recall memory")
    args = parser.parse_args(argv)
    print(json.dumps(run_benchmarks(args.device, args.images, args.size, args.pr_dim), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
