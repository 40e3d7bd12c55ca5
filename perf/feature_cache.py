"""What the feature caches save: the time of a run's first evaluation, of a second one, and of adding a metric.

Run as `python -m perf.feature_cache [--images 64] [--size 64] [--device cpu]`; prints one JSON object. Random
Inception weights (written to a temporary folder) and the random tiny DINOv2 of dry runs, so it runs offline; the
metrics are kid, precision and recall (Inception), then fd_dinov2 is added. The extractor calls of each step are
counted: the second evaluation and the added metric's step must extract only what is missing.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from harness.metrics.evaluate import Evaluator
from harness.metrics.extractor import FeatureExtractor
from harness.metrics.features import random_smooth_images, write_random_inception_weights


def run(images: int, size: int, device: str) -> dict[str, object]:
    """Seconds and extractor calls of three evaluations of one run."""
    calls: list[str] = []
    original = FeatureExtractor.extract

    def counted(self, *args, **kwargs):
        calls.append(type(self).__name__)
        return original(self, *args, **kwargs)

    FeatureExtractor.extract = counted
    out: dict[str, object] = {"machine": platform.machine(), "torch_threads": torch.get_num_threads(),
                              "device": device, "images": images, "size": size, "date": time.strftime("%Y-%m-%d")}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            weights = write_random_inception_weights(tmp / "inception.pth")
            rng = np.random.default_rng(0)
            run_dir = tmp / "suite" / "run"
            run_dir.mkdir(parents=True)
            np.savez(run_dir / "samples-000000.npz", arr_0=random_smooth_images(images, size, rng),
                     labels=np.zeros(images, np.int64), indices=np.arange(images))
            reference = random_smooth_images(images, size, rng)
            options = dict(device=device, reference_cache_dir=tmp / "suite", progress=False,
                           extractor_options={"inception": {"weights_path": str(weights)},
                                              "dinov2": {"random_weights": True}})
            steps = [("first", ["kid", "precision", "recall"]), ("second", ["kid", "precision", "recall"]),
                     ("add_fd_dinov2", ["kid", "precision", "recall", "fd_dinov2"])]
            for name, metrics in steps:
                calls.clear()
                start = time.perf_counter()
                Evaluator(reference, **options).evaluate(run_dir, metrics)  # a fresh evaluator: a new process
                out[name] = {"seconds": time.perf_counter() - start, "extractions": list(calls)}
    finally:
        FeatureExtractor.extract = original
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(json.dumps(run(args.images, args.size, args.device), indent=2))


if __name__ == "__main__":
    main()
