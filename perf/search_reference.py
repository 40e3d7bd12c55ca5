"""The full-grid reference of `harness search` on suites/testbed_search.toml, from a finished full grid.

    harness generate suites/testbed_search.toml --out runs/reference         # every point at the suite's samples
    python -m perf.search_reference --runs runs/reference               # this script

Measures every point of the grid at every whole-shard prefix of its images (32, 64, ..., the suite's samples) with
the Evaluator's own metric code, and writes tests/fixtures/search/: `reference.csv` (the full grid at the suite's
samples: the reference front comes from it) and `prefix_metrics.json` (what the search sees at any rung, since a
point at n samples is exactly its run's first n images). Then it replays the search on those measurements
(harness.search.loop.replay, the decisions `harness search` makes) and prints how its front compares. These are
measurements by this harness on the testbed, not paper numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from harness.metrics.evaluate import Evaluator, compute_metrics, shard_labels
from harness.rundir import list_shards
from harness.rundir import run_dir_of
from harness.search.loop import SearchOptions, counted_costs, replay
from harness.search.policy import DEFAULT_BUDGET, Score, default_rungs, front, front_covers
from harness.suite import load_suite

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "search"


def prefix_metrics(evaluator: Evaluator, run_dir: Path, metrics: list[str], step: int) -> dict[str, dict]:
    """A run's metrics on its first n images for every multiple n of `step`, features extracted once."""
    shards = list_shards(run_dir)
    features = {name: evaluator.run_features(run_dir, name, shards) for name in ("testbed",)}
    labels = shard_labels(shards)
    total = len(labels)
    out = {}
    for n in range(step, total + 1, step):
        values = compute_metrics(metrics, lambda ext, n=n: {k: v[:n] for k, v in features[ext].items()},
                                 evaluator.reference_features, labels=lambda n=n: labels[:n])
        out[str(n)] = values
    return out


def scores_at(table: pd.DataFrame, metric: str, cost: str) -> list[Score]:
    return [Score(r["run"], float(r[cost]), float(r[metric]), float(r[f"{metric}_lo"]), float(r[f"{metric}_hi"]))
            for _, r in table.iterrows()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", default="suites/testbed_search.toml")
    parser.add_argument("--runs", default="runs/reference", help="runs folder of the finished full grid")
    parser.add_argument("--out", default=str(FIXTURES))
    args = parser.parse_args()
    suite = load_suite(args.suite)
    metric, cost = "fd_testbed", "gflops"
    evaluator = Evaluator(str(suite.reference), "cpu", reference_cache_dir=Path(args.runs) / suite.name,
                          progress=False)
    start = time.perf_counter()
    measured = {run.run_id: prefix_metrics(evaluator, run_dir_of(args.runs, run), list(suite.metrics),
                                           suite.batch_size) for run in suite.runs}
    costs = counted_costs(suite.runs)
    rows = []
    for run in suite.runs:
        full = measured[run.run_id][str(run.samples)]
        lo, hi = full[f"{metric}_ci"]
        rows.append({"run": run.run_id, "method": run.method, "gamma_strong": run.guidance.gamma_strong.start,
                     "gamma_weak": run.guidance.weak.gamma.start, "omega": run.guidance.omega,
                     "samples": run.samples, "steps": run.sampler.steps, cost: costs[run.run_id][cost],
                     "tflops_image": costs[run.run_id]["tflops_image"], metric: full[metric],
                     f"{metric}_lo": lo, f"{metric}_hi": hi, "class_acc": full["class_acc"]})
    table = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "reference.csv", index=False)
    (out / "prefix_metrics.json").write_text(json.dumps(
        {"suite": suite.name, "made_by": "python -m perf.search_reference (measured by this harness on the "
                                         "testbed; not a paper number)",
         "points": measured}, indent=1) + "\n")
    print(f"measured {len(measured)} points at {suite.batch_size}-image prefixes in "
          f"{time.perf_counter() - start:.0f} s; wrote {out}")

    rungs = tuple(default_rungs(suite.runs[0].samples, suite.batch_size))
    options = SearchOptions(metric, cost, rungs, DEFAULT_BUDGET, Path(args.runs))
    record = replay(suite.runs, options, costs,
                    lambda run, n: measured[run.run_id][str(n)])
    scores = scores_at(table, metric, cost)
    ref = front(scores)
    missed = front_covers([s for s in scores if s.run in ref], [s for s in scores if s.run in record["front"]])
    print(f"reference front ({len(ref)}): {ref}")
    print(f"search front ({len(record['front'])}): {record['front']}")
    print(f"rungs {rungs}; spent {record['samples_spent']} of {record['samples_full_grid']} samples "
          f"({100 * record['fraction_of_full_grid']:.1f}%); reference front points not matched: {missed or 'none'}")
    print(json.dumps([{k: r[k] for k in ("samples", "promoted")} for r in record["rungs"]]))


if __name__ == "__main__":
    main()
