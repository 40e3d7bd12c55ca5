"""The go/no-go gate of the text-to-image testbed, recorded in checkpoints/testbed_record.json under t2i.gate.

Go when (1) every unguided seed range scores geneval_testbed clearly above random scenes (the 95% interval of its
difference from the random scenes' score lies above 0, the two read as independent with their intervals as +-1.96
standard errors) and (2) guidance moves it: some guided run's interval is disjoint from every unguided run's.
The first version of (1) asked for disjoint intervals, a test at about p < 0.006 rather than 0.05 (two intervals
that just touch); it is still recorded as `unguided_intervals_disjoint_from_random`. Random scenes: one scene of a
random training-grammar prompt per evaluation image, judged against the evaluation prompt by the same detector and
rules.

    python -m harness.testbed.t2i_gate reports/t2i_testbed/results.csv [--record checkpoints/testbed_record.json]
        [--versus cfg --runs runs/t2i_testbed]

`--versus METHOD` also prints every other guided run against the best run of METHOD, task by task: the paired
difference of GenEval-testbed scores over the same prompts and seeds with its 95% bootstrap interval
(harness.metrics.geneval.rules.paired_differences), and the cost ratios (GFLOPs, measured img/s).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from harness.metrics.geneval.rules import summarize
from harness.testbed import scenes
from harness.testbed.detector import WorldDetector
from harness.testbed.geneval_testbed import bootstrap_intervals, judge_images

RANDOM_SEED = 7


def random_scenes_score(images_per_prompt: int = 4) -> dict[str, float]:
    """geneval_testbed of random scenes (the floor a model that ignores its prompt reaches), with its interval."""
    rng = np.random.default_rng(RANDOM_SEED)
    metas = [m for m in scenes.evaluation_prompts() for _ in range(images_per_prompt)]
    grammar = scenes.training_prompts()
    drawn = []
    for tag in rng.integers(len(scenes.TASKS), size=len(metas)):
        pool = grammar[scenes.TASKS[tag]]
        drawn.append(pool[rng.integers(len(pool))])
    records = judge_images(scenes.draw(drawn, RANDOM_SEED), metas, WorldDetector())
    lo, hi = bootstrap_intervals(records, "g")["g_ci"]
    return {"geneval_testbed": summarize(records)["geneval"], "lo": lo, "hi": hi}


def gate(results: pd.DataFrame, floor: dict[str, float]) -> dict:
    """The gate's verdict from a results table with geneval_testbed and its _lo/_hi interval columns."""
    rows = results.set_index("run")
    unguided = rows[rows["method"] == "none"]
    unguided = unguided[unguided["gamma_strong"].astype(str).isin(["0", "0.0"])]
    guided = rows[rows["method"] != "none"]
    # a 95% interval is +-1.96 standard errors: the difference's half-width is the two half-widths in quadrature
    half = np.hypot((unguided["geneval_testbed_hi"] - unguided["geneval_testbed_lo"]) / 2,
                    (floor["hi"] - floor["lo"]) / 2)
    diff = unguided["geneval_testbed"] - floor["geneval_testbed"]
    margin = {run: [round(d, 4), round(d - h, 4), round(d + h, 4)] for run, d, h in zip(diff.index, diff, half)}
    some = len(unguided) > 0
    above = some and bool((diff - half > 0).all())
    disjoint = some and bool((unguided["geneval_testbed_lo"] > floor["hi"]).all())
    moved = [run for run, r in guided.iterrows()
             if all(r["geneval_testbed_lo"] > u["geneval_testbed_hi"] or r["geneval_testbed_hi"] < u["geneval_testbed_lo"]
                    for _, u in unguided.iterrows())]
    return {"random_scenes": floor, "unguided": unguided["geneval_testbed"].round(4).to_dict(),
            "unguided_minus_random": margin, "unguided_above_random": above,
            "unguided_intervals_disjoint_from_random": disjoint, "guided_runs_disjoint_from_unguided": moved,
            "go": above and bool(moved)}


def versus(results: pd.DataFrame, runs_root: Path, method: str = "cfg", metric: str = "geneval_testbed") -> str:
    """Markdown table: each guided run minus the best `method` run on every task (paired, with intervals)."""
    from harness.metrics.geneval.rules import paired_differences, read_results
    from harness.metrics.geneval.score import RESULTS_FILE

    rows = results.set_index("run")
    candidates = rows[rows["method"] == method]
    if candidates.empty:
        raise SystemExit(f"no {method} run in the results")
    base_run = str(candidates[metric].idxmax())
    base = read_results(runs_root / base_run / RESULTS_FILE)
    lines, header = [], None
    for run, row in rows[(rows["method"] != "none") & (rows.index != base_run)].iterrows():
        diffs = paired_differences(read_results(runs_root / str(run) / RESULTS_FILE), base)
        if header is None:
            header = [task.removeprefix("geneval_") for task in diffs]
            lines += [f"| run | GFLOPs ratio | img/s ratio | {' | '.join(header)} |",
                      "|---" * (3 + len(header)) + "|"]
        cells = [f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for d, lo, hi in diffs.values()]
        lines.append(f"| {run} | {row['gflops'] / rows.loc[base_run, 'gflops']:.2f} | "
                     f"{row['img_per_s'] / rows.loc[base_run, 'img_per_s']:.2f} | {' | '.join(cells)} |")
    return (f"Each run minus {base_run} (the best {method} run, {metric} {rows.loc[base_run, metric]:.3f}): "
            f"paired difference over the same prompts and seeds [95% bootstrap interval]\n\n" + "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    parser.add_argument("--record", type=Path, default=Path("checkpoints/testbed_record.json"))
    parser.add_argument("--versus", metavar="METHOD", help="also compare every guided run with the best METHOD run")
    parser.add_argument("--runs", type=Path, default=Path("runs/t2i_testbed"), help="the suite's run folders")
    args = parser.parse_args(argv)
    results = pd.read_csv(args.results)
    if args.versus:
        print(versus(results, args.runs, args.versus) + "\n")
    verdict = gate(results, random_scenes_score())
    record = json.loads(args.record.read_text()) if args.record.exists() else {}
    record.setdefault("t2i", {})["gate"] = {**verdict, "results": str(args.results)}
    args.record.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(verdict, indent=1))
    return 0 if verdict["go"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
