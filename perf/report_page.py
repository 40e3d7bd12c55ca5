"""`make report-bench`: how long the HTML report takes to load and draw in headless Chromium, and how big its folder is.

A benchmark, not a test. It writes two suites of synthetic run folders in the runner's layout (random pixels; the page
does not care what they show): a testbed-like class suite (17 runs x 64 images of 32 px, as `bench --samples 64`) and
a 4,000-image text suite (10 runs x 100 prompts x 4 images of 64 px, as the text testbed), builds each report with
`harness report`'s writer, loads each page REPEATS times in headless Chromium (time from navigation to the front's
points drawn) and prints the median with the report folder's size. `--report DIR` times an existing report instead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from harness.report import write_report

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
REPEATS = 5
METHODS = ("none", "cfg", "sg", "cfg+sg", "ag", "ag+sg", "icg")


def synth(runs_dir: Path, suite: str, runs: int, samples: int, size: int, prompts: Path | None) -> None:
    """A suite of `runs` runs of `samples` images each, with cost, timing and metrics as the pipeline writes them."""
    rng = np.random.default_rng(0)
    for k in range(runs):
        run, method = f"run{k:02d}-omega{1 + k % 4}", METHODS[k % len(METHODS)]
        folder = runs_dir / suite / run
        folder.mkdir(parents=True)
        config = {"suite": {"name": suite, "seed": 0, "batch_size": 50},
                  "run": {"id": run, "name": run, "method": method, "gamma_strong": 0.1 * (k % 5), "gamma_weak": 0.9,
                          "omega": 1 + k % 4, "samples": samples}}
        if prompts is not None:
            config["run"] |= {"prompts": str(prompts), "images_per_prompt": 4}
        (folder / "manifest.json").write_text(json.dumps({"run": run, "suite": suite, "config": config}))
        for start in range(0, samples, 50):
            n = min(50, samples - start)
            np.savez(folder / f"samples-{start:06d}.npz", arr_0=rng.integers(0, 256, (n, size, size, 3), np.uint8),
                     labels=np.arange(start, start + n) // 4, indices=np.arange(start, start + n))
        (folder / "cost.json").write_text(json.dumps({"gflops": 0.05 + 0.01 * k, "tflops_image": 0.001 * k,
                                                      "img_per_s": 5.0 + k % 3, "device": "cpu"}))
        (folder / "timing.json").write_text(json.dumps({"batches": [{"images": 50, "total": 9.0 + i % 2}
                                                                    for i in range(samples // 50)]}))
        metric = "geneval_testbed" if prompts is not None else "fd_testbed"
        value = 20.0 + rng.normal()
        (folder / "metrics.json").write_text(json.dumps({metric: value, f"{metric}_ci": [value - 1, value + 1]}))


def folder_size(path: Path) -> int:
    """Bytes of every file under a folder."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def load_times(index: Path) -> list[float]:
    """Seconds from navigation to the front's points drawn, REPEATS fresh pages in one headless Chromium."""
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        for _ in range(REPEATS):
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            start = time.perf_counter()
            page.goto(index.as_uri())
            page.wait_for_selector("#front-plot .scatterlayer .point")
            times.append(time.perf_counter() - start)
            page.close()
        browser.close()
    return times


def measure(name: str, report: Path) -> None:
    """Print one report's load time (median of REPEATS) and folder size."""
    times = load_times(report / "index.html")
    print(f"{name}: load+draw median {statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f}); "
          f"folder {folder_size(report) / 1e6:.2f} MB (index.html {(report / 'index.html').stat().st_size / 1e6:.2f} MB,"
          f" images/ {folder_size(report / 'images') / 1e6:.2f} MB, plotly.min.js "
          f"{(report / 'plotly.min.js').stat().st_size / 1e6:.2f} MB)")


def main() -> None:
    """Build the synthetic reports (or take --report) and measure them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, help="an existing report folder to time (holding index.html)")
    args = parser.parse_args()
    if args.report:
        measure(str(args.report), args.report)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prompts = root / "prompts.txt"
        prompts.write_text("".join(f"a photo of {i} shapes\n" for i in range(100)))
        for suite, runs, samples, size, spec in (("testbed_like", 17, 64, 32, None), ("text4000", 10, 400, 64, prompts)):
            synth(root / "runs", suite, runs, samples, size, spec)
            start = time.perf_counter()
            write_report(suite, root / "runs", root / "reports")
            print(f"{suite}: report written in {time.perf_counter() - start:.1f} s")
            measure(suite, root / "reports" / suite)


if __name__ == "__main__":
    main()
