"""`harness search SUITE`: the parser hook for harness/cli.py, the plan printout, and the entry point."""

from __future__ import annotations

import argparse
import copy
import dataclasses
from pathlib import Path

from harness.errors import HarnessError
from harness.search.policy import DEFAULT_BUDGET, check_rungs, default_rungs, parse_budget
from harness.suite import Suite, config_hash

DRY_SEARCH_SAMPLES = 16  # a dry search's top rung; rungs 4, 8, 16 (batch 4) exercise promotions


def add_search_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `search` on the harness CLI; the parsed args carry func=main_search."""
    parser = subparsers.add_parser(
        "search", help="adaptive search of a suite's grid for the quality-vs-cost front (a fraction of its samples)")
    parser.add_argument("suite", help="suite TOML file, e.g. suites/testbed_search.toml")
    parser.add_argument("--budget", default=DEFAULT_BUDGET,
                        help="what the search may spend: samples (8000), a share of the full grid's samples (25%%) "
                             "or GPU-hours (2.5h, from measured img/s); default " + DEFAULT_BUDGET.replace("%", "%%"))
    parser.add_argument("--metric", help="quality axis: a metric of the suite (default: fid if measured, else the "
                                         "suite's first metric)")
    parser.add_argument("--cost", default="gflops", choices=("gflops", "gflops_full", "tflops_image", "nfe",
                                                             "img_per_s"), help="cost axis (default: gflops)")
    parser.add_argument("--rungs", metavar="N,N,...",
                        help="samples per point at each rung, ending at the suite's samples (default: samples/8, "
                             "samples/2, samples, in whole shards of batch_size)")
    parser.add_argument("--plan", action="store_true", help="print the points, rungs and budget, and stop")
    parser.add_argument("--only", metavar="REGEX", help="search only the runs whose id matches")
    parser.add_argument("--out", metavar="DIR", help="runs folder, holding <suite>/<run-id>/ and <suite>/search.json "
                                                     "(default: ROOT/runs)")
    parser.add_argument("--reports", metavar="DIR", help="reports folder (default: ROOT/reports)")
    parser.add_argument("--root", metavar="DIR", help="folder that relative paths in the suite are relative to")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--samples", type=int, metavar="N", help="samples per point at the top rung, overriding "
                                                                 f"the suite (dry run default {DRY_SEARCH_SAMPLES})")
    parser.add_argument("--steps", type=int, metavar="N", help="sampling steps, overriding the suite")
    parser.add_argument("--fresh", action="store_true", help="delete the searched runs and search.json first")
    parser.add_argument("--dry-run", action="store_true",
                        help="search on random weights (as `harness bench --dry-run`), into runs/<suite>-dryrun")
    parser.add_argument("--dry-run-arch", metavar="ARCH", help="with --dry-run: build every model as this smaller "
                                                               "architecture (e.g. SiT-S/8)")
    parser.set_defaults(func=main_search)
    return parser


def rebatched(suite: Suite, batch_size: int) -> Suite:
    """The suite with another batch size (images do not depend on it); run configs and hashes follow."""
    runs = []
    for run in suite.runs:
        config = copy.deepcopy(run.config)
        config["suite"]["batch_size"] = batch_size
        runs.append(dataclasses.replace(run, batch_size=batch_size, config=config, config_hash=config_hash(config)))
    return dataclasses.replace(suite, batch_size=batch_size, runs=tuple(runs))


def _load(args: argparse.Namespace):
    """(suite, selected runs, DrySuite or None)."""
    if args.dry_run_arch and not args.dry_run:
        raise HarnessError("--dry-run-arch only applies with --dry-run")
    if args.dry_run:
        from harness.dryrun import DRY_STEPS, DryRun, load_dry_suite

        samples = args.samples or DRY_SEARCH_SAMPLES
        if samples < 8 or samples % 4:
            raise HarnessError(f"--samples {samples}: a dry search needs a multiple of 4, at least 8 (rungs of "
                               "whole 4-image shards)")
        dry = load_dry_suite(args.suite, args.root, args.out, DryRun(samples, args.steps or DRY_STEPS,
                                                                      args.dry_run_arch))
        dry = dataclasses.replace(dry, suite=rebatched(dry.suite, 4))
        return dry.suite, dry.suite.select(args.only), dry
    from harness.suite import load_suite

    suite = load_suite(args.suite, root=args.root, samples=args.samples, steps=args.steps)
    return suite, suite.select(args.only), None


def _rungs(args: argparse.Namespace, suite: Suite, samples: int) -> tuple[int, ...]:
    if args.rungs is None:
        return tuple(default_rungs(samples, suite.batch_size))
    try:
        given = [int(part) for part in args.rungs.split(",")]
    except ValueError:
        raise HarnessError(f"--rungs {args.rungs!r}: give comma-separated sample counts, e.g. 32,128,512") from None
    return tuple(check_rungs(given, samples, suite.batch_size))


def format_search_plan(runs, rungs: tuple[int, ...], budget_text: str) -> str:
    """The search's plan: points, rungs, what the first rung costs, and how many points the budget lets reach
    each later rung if none were pruned (pruning only lowers the spend)."""
    from harness.search.loop import full_grid_samples

    full = full_grid_samples(runs)
    budget = parse_budget(budget_text, full)
    lines = [f"points: {len(runs)} ({', '.join(dict.fromkeys(r.name for r in runs))})",
             f"rungs (samples per point): {', '.join(map(str, rungs))}",
             f"full grid: {full:,} samples ({len(runs)} x {rungs[-1]})"]
    first = len(runs) * rungs[0]
    lines.append(f"first rung: {first:,} samples ({100 * first / full:.1f}% of the full grid)")
    if budget.unit == "samples":
        lines.append(f"budget: {budget.amount:,.0f} samples ({100 * budget.amount / full:.1f}% of the full grid)")
        left, points = budget.amount - first, len(runs)
        for index in range(1, len(rungs)):
            step = rungs[index] - rungs[index - 1]
            points = min(points, int(left / (len(rungs) - index) // step))
            left -= points * step
            lines.append(f"  at most {points} point(s) reach {rungs[index]} samples")
    else:
        lines.append(f"budget: {budget.amount:g} GPU-hours (points priced by their measured img/s)")
    return "\n".join(lines)


def main_search(args: argparse.Namespace) -> int:
    """Run `harness search`: the plan, or the search, its results table, search.json and report."""
    from harness import distributed
    from harness.search.loop import SearchOptions, check_axes, default_metric, run_search

    suite, runs, dry = _load(args)
    samples = runs[0].samples
    rungs = _rungs(args, suite, samples)
    check_axes(suite, runs, args.metric or default_metric(suite), args.cost)
    if args.plan:
        print(format_search_plan(runs, rungs, args.budget))
        return 0
    runs_root = Path(args.out) if args.out else suite.root / "runs"
    if dry is not None:
        runs_root = dry.folder.parent
    options = SearchOptions(metric=args.metric or default_metric(suite), cost=args.cost, rungs=rungs,
                            budget=args.budget, runs_root=runs_root, device=args.device, fresh=args.fresh,
                            dry_run=dry is not None)
    record = run_search(suite, runs, options, dry)
    if distributed.is_main():
        from harness.report import write_report
        from harness.report.command import suite_meta
        from harness.suite import read_suite_data

        reports = Path(args.reports) if args.reports else suite.root / "reports"
        meta = dry.meta if dry is not None else suite_meta(read_suite_data(args.suite))
        path = write_report(suite.name, runs_root, reports, meta)
        print(f"front: {', '.join(record['front'])}")
        print(f"spent {record['samples_spent']:,} of {record['samples_full_grid']:,} samples "
              f"({100 * record['fraction_of_full_grid']:.1f}% of the full grid); wrote {path}")
    return 0
