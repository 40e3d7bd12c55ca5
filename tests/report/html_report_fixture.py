"""A small synthetic suite written in the run folder layout the runner writes, for the HTML report's tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

METHODS = [("unguided-seed0", "none", 0.0, None, 1.0, 0), ("unguided-seed100", "none", 0.0, None, 1.0, 100),
           ("cfg-omega2", "cfg", 0.0, None, 2.0, 0), ("sg-omega2", "sg", 0.5, 0.9, 2.0, 0),
           ("cfg_sg", "cfg+sg", 0.2, 0.7, 3.0, 0)]


def write_json(path: Path, data: dict) -> None:
    """One JSON file of a run folder."""
    path.write_text(json.dumps(data, indent=2))


def synth_suite(runs_dir: Path, suite: str = "tiny", samples: int = 16, size: int = 32, broken: bool = True) -> None:
    """Runs of every kind of the testbed (two seeds of one run among them); with broken, the last run lacks its
    cost.json, timing.json and metrics.json."""
    rng = np.random.default_rng(0)
    for k, (run, method, gs, gw, omega, seed) in enumerate(METHODS):
        folder = runs_dir / suite / run
        folder.mkdir(parents=True)
        config = {"suite": {"name": suite, "seed": seed, "batch_size": 8, "metrics": ["fd_testbed", "class_acc"]},
                  "sampler": {"kind": "euler", "steps": 4},
                  "models": {"main": {"arch": "Testbed-S/4", "sparsity": "routing"}},
                  "run": {"id": run, "name": run.split("-seed")[0], "method": method, "model": "main",
                          "gamma_strong": gs, "gamma_weak": gw, "omega": omega, "samples": samples}}
        write_json(folder / "manifest.json", {"run": run, "suite": suite, "config": config, "device": "cpu",
                                              "dry_run": False, "complete": True})
        for start in range(0, samples, 8):
            images = rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8)
            np.savez(folder / f"samples-{start:06d}.npz", arr_0=images, labels=np.arange(8) % 4,
                     indices=np.arange(start, start + 8))
        if broken and k == len(METHODS) - 1:
            continue
        nfe = 4 if method == "none" else 8
        write_json(folder / "cost.json", {"gflops": 0.08 * nfe / 4 * (1 - gs / 2), "gflops_full": 0.09 * nfe / 4,
                                          "tflops_image": 0.0003 * nfe, "nfe": nfe, "img_per_s": 40.0 / nfe + k,
                                          "peak_mem_mb": 100.0, "device": "cpu"})
        write_json(folder / "timing.json", {"batches": [{"images": 8, "warmup": i == 0, "total": 0.2 + 0.01 * i}
                                                         for i in range(samples // 8)]})
        fd = 30.0 - 3 * k
        write_json(folder / "metrics.json", {"fd_testbed": fd, "fd_testbed_ci": [fd - 1.5, fd + 1.5],
                                             "class_acc": 0.5 + 0.05 * k, "class_acc_ci": [0.45 + 0.05 * k,
                                                                                           0.55 + 0.05 * k]})
