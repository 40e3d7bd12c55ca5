"""The measured numbers the README states, each written to a committed result file under perf/results/.

    python -m perf.readme_results detector        # rendered evaluation scenes through the T2I world detector
    python -m perf.readme_results masking-twin    # suites/testbed_dropped.toml: the "Masked branches" table
    python -m perf.readme_results masking-twin --runs DIR --reports DIR   # from a finished `harness bench` of it
    python -m perf.readme_results t2i-testbed     # suites/t2i_testbed.toml: scores, and each guided run vs best CFG

Each file records the command, machine, torch version, git commit and date beside the numbers;
tests/test_readme_numbers.py checks that every number the README quotes equals its file, so a rerun that changes a
number fails until the README says the new one. These are measurements by this harness on the CPU testbeds, not
paper numbers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "perf" / "results"
DETECTOR_SEEDS = (0, 11)


def provenance(command: str) -> dict[str, Any]:
    """Where and when a result was measured: command, machine, torch, git commit, UTC date."""
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"command": command, "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
            "torch": torch.__version__, "threads": torch.get_num_threads(), "git": commit,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def detector_scores(seeds: tuple[int, ...] = DETECTOR_SEEDS) -> dict[str, Any]:
    """GenEval's rules with the world detector on one rendered scene per evaluation prompt, per drawing seed."""
    from harness.metrics.geneval.rules import summarize
    from harness.testbed import scenes
    from harness.metrics.geneval.detectors import build_detector
    from harness.testbed.geneval_testbed import judge_images

    metas = scenes.evaluation_prompts()
    detector = build_detector("testbed")
    out = {}
    for seed in seeds:
        summary = summarize(judge_images(scenes.draw(metas, seed), metas, detector))
        out[str(seed)] = {k: round(float(v), 6) for k, v in summary.items()}
    return {"prompts": len(metas), "images_per_prompt": 1, "seeds": out}


def masking_twin(runs: Path, reports: Path, fresh: bool) -> dict[str, Any]:
    """fd_testbed and class_acc of every run of suites/testbed_dropped.toml, benched here unless already done."""
    import pandas as pd

    suite = ROOT / "suites" / "testbed_dropped.toml"
    table = reports / "testbed_dropped" / "results.csv"
    if fresh or not table.is_file():
        subprocess.run([sys.executable, "-m", "harness", "bench", str(suite), "--out", str(runs), "--reports",
                        str(reports), "--device", "cpu"], cwd=ROOT, check=True)
    frame = pd.read_csv(table)
    keep = ["fd_testbed", "fd_testbed_lo", "fd_testbed_hi", "class_acc"]
    return {"suite": "suites/testbed_dropped.toml",
            "runs": {r["run"]: {k: round(float(r[k]), 6) for k in keep if k in r} for _, r in frame.iterrows()}}


def t2i_testbed(runs: Path, reports: Path, fresh: bool) -> dict[str, Any]:
    """geneval_testbed of every run of suites/t2i_testbed.toml with its interval, cost and measured img/s, and each
    guided run's paired difference from the best CFG run (harness.testbed.t2i_gate's `--versus cfg`)."""
    import pandas as pd

    from harness.metrics.geneval.rules import paired_differences, read_results
    from harness.metrics.geneval.score import RESULTS_FILE

    suite = ROOT / "suites" / "t2i_testbed.toml"
    table = reports / "t2i_testbed" / "results.csv"
    if fresh or not table.is_file():
        subprocess.run([sys.executable, "-m", "harness", "bench", str(suite), "--out", str(runs), "--reports",
                        str(reports), "--device", "cpu"], cwd=ROOT, check=True)
    rows = pd.read_csv(table).set_index("run")
    folder = runs / "t2i_testbed"
    base = str(rows[rows["method"] == "cfg"]["geneval_testbed"].idxmax())
    base_records = read_results(folder / base / RESULTS_FILE)
    out = {}
    for run, r in rows.iterrows():
        entry = {"method": r["method"], "gflops": round(float(r["gflops"]), 6),
                 "img_per_s": round(float(r["img_per_s"]), 3)}
        entry.update({k: round(float(r[k]), 4) for k in ("geneval_testbed", "geneval_testbed_lo", "geneval_testbed_hi")})
        if r["method"] != "none" and run != base:
            d, lo, hi = paired_differences(read_results(folder / str(run) / RESULTS_FILE), base_records)["geneval"]
            entry["minus_best_cfg"] = [round(d, 4), round(lo, 4), round(hi, 4)]
        out[str(run)] = entry
    return {"suite": "suites/t2i_testbed.toml", "best_cfg": base, "runs": out}


def write(name: str, command: str, result: dict[str, Any]) -> Path:
    """perf/results/<name>.json with the provenance first."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({**provenance(command), **result}, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """Measure one README result and write its file."""
    parser = argparse.ArgumentParser(prog="python -m perf.readme_results", description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("detector", "masking-twin", "t2i-testbed"))
    parser.add_argument("--runs", type=Path, default=ROOT / "runs", help="run folder (the suites)")
    parser.add_argument("--reports", type=Path, default=ROOT / "reports", help="reports folder (the suites)")
    parser.add_argument("--fresh", action="store_true", help="bench again even if the results table exists")
    args = parser.parse_args(argv)
    command = "python -m perf.readme_results " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.what == "detector":
        path = write("t2i_detector_rendered", command, detector_scores())
    elif args.what == "masking-twin":
        path = write("masking_twin", command, masking_twin(args.runs, args.reports, args.fresh))
    else:
        path = write("t2i_testbed", command, t2i_testbed(args.runs, args.reports, args.fresh))
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
