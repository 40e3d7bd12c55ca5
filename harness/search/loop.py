"""`harness search`'s loop: generate every point's first images, evaluate, keep what can still be on the front, repeat.

A point at a rung of n images is the suite's run generated only up to its first n images (harness.generate's
`upto`: the same run directory, the same shards, seeds suite.seed + i), so a point that goes on keeps its images
and generates only the next ones; its metrics are recomputed on all of them. Rank 0 evaluates and decides
(harness.search.policy) and writes runs/<suite>/search.json after every rung; every rank reads the promotions
back from it, so under torchrun all processes generate the same points. A rerun resumes: shards already written
are kept, and evaluations recorded in search.json for the same run config and sample count are reused.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness import distributed
from harness.errors import HarnessError
from harness.report.results import COST_HIGHER_IS_BETTER, metric_higher_is_better
from harness.report.search_front import SEARCH_FILE
from harness.files import write_json
from harness.generate import ModelCache, generate_suite
from harness.rundir import COST_FILE, run_dir_of
from harness.search.policy import Budget, Score, choose_promotions, dominators, front, parse_budget
from harness.suite import Run, Suite, config_hash

FLOP_COSTS = ("gflops", "gflops_full", "tflops_image", "nfe")


@dataclasses.dataclass(frozen=True)
class SearchOptions:
    """What `harness search` was asked: metric and cost axes, rungs, budget, where runs go."""

    metric: str
    cost: str
    rungs: tuple[int, ...]
    budget: str
    runs_root: Path
    device: str | None = None
    fresh: bool = False
    dry_run: bool = False


def default_metric(suite: Suite) -> str:
    """fid when the suite measures it, else the suite's first metric of known direction (fd_testbed, ...)."""
    if "fid" in suite.metrics:
        return "fid"
    known = [m for m in suite.metrics if metric_higher_is_better(m) is not None]
    if not known:
        raise HarnessError(f"{suite.path}: [suite] metrics {list(suite.metrics)} has no metric the search can rank")
    return known[0]


def check_axes(suite: Suite, runs: Sequence[Run], metric: str, cost: str) -> None:
    """The metric is one the suite computes (with a known direction), the cost a known column, runs share samples."""
    if metric not in suite.metrics:
        raise HarnessError(f"--metric {metric}: not among {suite.path}'s [suite] metrics {list(suite.metrics)}")
    if metric_higher_is_better(metric) is None:
        raise HarnessError(f"--metric {metric}: unknown whether higher or lower is better")
    if cost not in FLOP_COSTS + ("img_per_s",):
        raise HarnessError(f"--cost {cost}: choose one of {', '.join(FLOP_COSTS + ('img_per_s',))}")
    counts = {r.samples for r in runs}
    if len(counts) != 1:
        raise HarnessError(f"{suite.path}: the searched runs have different samples per run ({sorted(counts)}); "
                           "the search needs one top rung for all of them")


def full_grid_samples(runs: Sequence[Run]) -> int:
    """What running every point to the suite's samples would generate."""
    return sum(r.samples for r in runs)


#################################################################################
#                                    Costs                                      #
#################################################################################


def counted_costs(runs: Sequence[Run]) -> dict[str, dict[str, Any]]:
    """Every point's counted FLOPs and NFE (harness.cost.flops.run_cost; no weights, no timing)."""
    from harness.cost import run_cost

    return {run.run_id: {**run_cost(run.models, run.guidance, run.sampler), "config_hash": run.config_hash}
            for run in runs}


def point_costs(runs: Sequence[Run], options: SearchOptions, budget: Budget,
                cache: ModelCache | None) -> dict[str, dict[str, Any]]:
    """cost.json of every point (rank 0): counted FLOPs always; measured throughput when the cost axis or a
    GPU-hour budget needs it. A cost.json already there for the same config is kept."""
    from harness.cost import measure_costs

    if options.cost == "img_per_s" or budget.unit == "gpu_hours":
        if cache is None:
            cache = ModelCache(distributed.resolve_device(options.device), options.dry_run)
        measure_costs(runs, options.runs_root, cache)
    out = {}
    for run in runs:
        path = run_dir_of(options.runs_root, run) / COST_FILE
        old = json.loads(path.read_text()) if path.is_file() else {}
        if old.get("config_hash") != run.config_hash:
            # counted FLOPs only, and no device: `harness bench` still measures throughput for this run later
            old = counted_costs([run])[run.run_id]
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, old)
        out[run.run_id] = old
    return out


def oriented_cost(cost: dict[str, Any], axis: str, run_id: str) -> float:
    """A point's cost with lower = better (throughput negated)."""
    if cost.get(axis) is None:
        raise HarnessError(f"run {run_id!r}: cost.json has no {axis!r}")
    return -float(cost[axis]) if COST_HIGHER_IS_BETTER[axis] else float(cost[axis])


def image_price(cost: dict[str, Any], budget: Budget) -> float:
    """What one image of a point costs in the budget's unit."""
    if budget.unit == "samples":
        return 1.0
    rate = cost.get("img_per_s")
    if not rate:
        raise HarnessError("a GPU-hour budget needs measured throughput (img_per_s in cost.json)")
    return 1.0 / float(rate) / 3600.0


#################################################################################
#                                  Evaluation                                   #
#################################################################################


def _score(run_id: str, metrics: dict[str, Any], metric: str, cost: float) -> Score:
    """A Score from metrics.json-style values, oriented lower = better; no interval -> the point value."""
    if metric not in metrics:
        raise HarnessError(f"run {run_id!r}: no {metric!r} among its metrics ({sorted(metrics)})")
    value = float(metrics[metric])
    lo, hi = metrics.get(f"{metric}_ci", [value, value])
    if metric_higher_is_better(metric):
        value, lo, hi = -value, -float(hi), -float(lo)
    return Score(run_id, cost, value, float(lo), float(hi))


class RungEvaluator:
    """Metrics of points at a rung's sample count, on rank 0, against the suite's reference (features cached)."""

    def __init__(self, suite: Suite, options: SearchOptions, dry=None):
        from harness.metrics.evaluate import Evaluator

        if suite.reference is None:
            raise HarnessError(f"{suite.path}: [suite] field 'reference' is needed to evaluate {options.metric}")
        if dry is not None:
            dry.prepare_evaluation()
        self.metrics = list(suite.metrics)
        self.options = options
        self.evaluator = Evaluator(str(suite.reference), distributed.resolve_device(options.device),
                                   reference_cache_dir=options.runs_root / suite.name, progress=False,
                                   extractor_options=dry.extractor_options if dry is not None else None)

    def __call__(self, run: Run, samples: int) -> dict[str, Any]:
        return self.evaluator.evaluate(run_dir_of(self.options.runs_root, run), self.metrics, samples=samples)


#################################################################################
#                                   The loop                                    #
#################################################################################


def _previous(path: Path) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Evaluations an earlier attempt recorded, by (run, config hash, samples); empty without a search.json."""
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
        return {(e["run"], e["config_hash"], int(rung["samples"])): e["metrics"]
                for rung in record["rungs"] for e in rung["evaluations"]}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return {}  # unreadable: evaluate again (features stay cached in the run folders)


def _record_hash(options: SearchOptions, runs: Sequence[Run]) -> str:
    """What the decisions depend on besides the measurements: axes, rungs, budget and the points' configs."""
    return config_hash({"metric": options.metric, "cost": options.cost, "rungs": list(options.rungs),
                        "budget": options.budget, "runs": {r.run_id: r.config_hash for r in runs}})


def run_search(suite: Suite, runs: Sequence[Run], options: SearchOptions, dry=None) -> dict[str, Any]:
    """Search the front of `runs` in rungs; returns (on every rank) the record written to search.json."""
    runs = list(runs)
    check_axes(suite, runs, options.metric, options.cost)
    dev = distributed.resolve_device(options.device)
    distributed.init(dev)
    cache = ModelCache(dev, options.dry_run, dry.vae_config if dry is not None else None, suite.root)
    path = options.runs_root / suite.name / SEARCH_FILE
    budget = parse_budget(options.budget, full_grid_samples(runs))
    if budget.unit == "samples":  # priced without cost.json: refuse before anything is written
        check_budget(runs, {r.run_id: {} for r in runs}, budget, options.rungs)
    by_id = {r.run_id: r for r in runs}
    if distributed.is_main():
        if options.fresh:  # before cost.json is written into the run folders
            path.unlink(missing_ok=True)
            for run in runs:
                shutil.rmtree(run_dir_of(options.runs_root, run), ignore_errors=True)
        previous = _previous(path)
        evaluate = RungEvaluator(suite, options, dry)
        costs = point_costs(runs, options, budget, cache)
        check_budget(runs, costs, budget, options.rungs)
    distributed.barrier()

    record = start_record(suite.name, runs, options, budget)
    candidates, have = runs, {r.run_id: 0 for r in runs}
    for index, samples in enumerate(options.rungs):
        generate_suite(suite, candidates, options.runs_root, options.device, dry_run=options.dry_run,
                       dry_vae_config=dry.vae_config if dry is not None else None, cache=cache, upto=samples)
        if distributed.is_main():
            decide_rung(record, index, candidates, have, costs, budget, evaluate, options, previous)
            write_json(path, record)
        distributed.barrier()
        record = json.loads(path.read_text())  # every rank goes on with rank 0's decisions
        candidates = [by_id[r] for r in record["rungs"][index]["promoted"]]
    return record


def replay(runs: Sequence[Run], options: SearchOptions, costs: dict[str, dict[str, Any]],
           evaluate: Callable[[Run, int], dict[str, Any]]) -> dict[str, Any]:
    """The search's decisions on measurements `evaluate(run, samples)` supplies, without generating anything:
    for tests and for replaying a grid whose runs are already measured (prefixes of finished runs)."""
    runs = list(runs)
    budget = parse_budget(options.budget, full_grid_samples(runs))
    by_id = {r.run_id: r for r in runs}
    check_budget(runs, costs, budget, options.rungs)
    record = start_record(runs[0].suite, runs, options, budget)
    candidates, have = runs, {r.run_id: 0 for r in runs}
    for index in range(len(options.rungs)):
        decide_rung(record, index, candidates, have, costs, budget, evaluate, options)
        candidates = [by_id[r] for r in record["rungs"][index]["promoted"]]
    return record


def check_budget(runs: Sequence[Run], costs: dict[str, dict[str, Any]], budget: Budget,
                 rungs: Sequence[int]) -> None:
    """Before anything is generated: the budget pays for the first rung and for one point taken to the top."""
    first = sum(rungs[0] * image_price(costs[r.run_id], budget) for r in runs)
    to_top = min((rungs[-1] - rungs[0]) * image_price(costs[r.run_id], budget) for r in runs)
    if first + to_top > budget.amount + 1e-9:
        raise HarnessError(f"--budget {budget.text}: the first rung ({rungs[0]} samples per point) and one point "
                           f"taken on to {rungs[-1]} cost {first + to_top:.6g} {budget.unit}, more than the "
                           "budget; raise it or lower --rungs")


def start_record(suite_name: str, runs: Sequence[Run], options: SearchOptions, budget: Budget) -> dict[str, Any]:
    """search.json before the first rung."""
    return {"suite": suite_name, "metric": options.metric, "cost": options.cost,
            "budget": {"text": budget.text, "amount": budget.amount, "unit": budget.unit},
            "rung_samples": list(options.rungs), "points": [r.run_id for r in runs],
            "decisions_hash": _record_hash(options, runs), "dry_run": options.dry_run,
            "rungs": [], "promotions": [], "front": [], "samples": {r.run_id: 0 for r in runs},
            "samples_spent": 0, "samples_full_grid": full_grid_samples(runs), "fraction_of_full_grid": 0.0,
            "budget_spent": 0.0, "complete": False}


def decide_rung(record: dict[str, Any], index: int, candidates: Sequence[Run], have: dict[str, int],
                costs: dict[str, dict[str, Any]], budget: Budget, evaluate: Callable[[Run, int], dict[str, Any]],
                options: SearchOptions, previous: dict[tuple[str, str, int], dict[str, Any]] | None = None) -> None:
    """One rung: evaluate its points (or reuse `previous` evaluations), account the samples, decide who goes on;
    updates `record` and `have` (samples each point holds)."""
    samples = options.rungs[index]
    previous = previous or {}
    evaluations, scores = [], []
    for run in candidates:
        metrics = previous.get((run.run_id, run.config_hash, samples)) or evaluate(run, samples)
        evaluations.append({"run": run.run_id, "config_hash": run.config_hash, "metrics": metrics})
        scores.append(_score(run.run_id, metrics, options.metric,
                             oriented_cost(costs[run.run_id], options.cost, run.run_id)))
        record["samples"][run.run_id] = samples
        record["budget_spent"] += (samples - have[run.run_id]) * image_price(costs[run.run_id], budget)
        have[run.run_id] = samples
    record["samples_spent"] = sum(record["samples"].values())
    record["fraction_of_full_grid"] = record["samples_spent"] / record["samples_full_grid"]
    rung = {"samples": samples, "evaluations": evaluations,
            "scores": [dataclasses.asdict(s) for s in scores], "promoted": [], "pruned": []}
    last = index == len(options.rungs) - 1
    if last:
        record["front"] = front(scores)
        record["complete"] = True
    else:
        step = options.rungs[index + 1] - samples
        prices = {s.run: step * image_price(costs[s.run], budget) for s in scores}
        steps_left = len(options.rungs) - 1 - index
        allowance = max(0.0, budget.amount - record["budget_spent"]) / steps_left
        to_top = {s.run: (options.rungs[-1] - samples) * image_price(costs[s.run], budget) for s in scores}
        promoted = choose_promotions(scores, prices, allowance,
                                     at_least_one=record["budget_spent"] + min(to_top.values()) <= budget.amount)
        dominated = dominators(scores)
        rung.update(allowance=allowance, promoted=promoted,
                    pruned=[{"run": s.run, "dominated_by": dominated[s.run]} for s in scores
                            if s.run not in promoted])
        record["promotions"] += [{"run": r, "from": samples, "to": options.rungs[index + 1]} for r in promoted]
    record["rungs"] = [*record["rungs"][:index], rung]
    shown = f"{len(rung['promoted'])} go on to {options.rungs[index + 1]}" if not last else \
        f"front: {', '.join(record['front'])}"
    distributed.print0(f"search rung {index + 1}/{len(options.rungs)} ({samples} samples, {len(scores)} points): "
                       f"{shown}; spent {record['samples_spent']} of {record['samples_full_grid']} samples "
                       f"({100 * record['fraction_of_full_grid']:.1f}% of the full grid)")


__all__ = ["SEARCH_FILE", "SearchOptions", "counted_costs", "decide_rung", "default_metric", "full_grid_samples", "replay",
           "run_search", "start_record"]
