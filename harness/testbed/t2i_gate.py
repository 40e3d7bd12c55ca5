"""The go/no-go gate of the text-to-image testbed, recorded in checkpoints/testbed_record.json under t2i.gate.

Go when (1) every unguided seed range scores geneval_testbed clearly above random scenes (its interval lies above
the random scenes' interval) and (2) guidance moves it: some guided run's interval is disjoint from every unguided
run's. Random scenes: one scene of a random training-grammar prompt per evaluation image, judged against the
evaluation prompt by the same detector and rules.

    python -m harness.testbed.t2i_gate reports/t2i_testbed/results.csv [--record checkpoints/testbed_record.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from harness.metrics.geneval import summarize
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
    above = bool((unguided["geneval_testbed_lo"] > floor["hi"]).all()) and len(unguided) > 0
    moved = [run for run, r in guided.iterrows()
             if all(r["geneval_testbed_lo"] > u["geneval_testbed_hi"] or r["geneval_testbed_hi"] < u["geneval_testbed_lo"]
                    for _, u in unguided.iterrows())]
    return {"random_scenes": floor, "unguided": unguided["geneval_testbed"].round(4).to_dict(),
            "unguided_above_random": above, "guided_runs_disjoint_from_unguided": moved,
            "go": above and bool(moved)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    parser.add_argument("--record", type=Path, default=Path("checkpoints/testbed_record.json"))
    args = parser.parse_args(argv)
    verdict = gate(pd.read_csv(args.results), random_scenes_score())
    record = json.loads(args.record.read_text()) if args.record.exists() else {}
    record.setdefault("t2i", {})["gate"] = {**verdict, "results": str(args.results)}
    args.record.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(verdict, indent=1))
    return 0 if verdict["go"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
