"""`harness plan | generate | evaluate | report | bench | launch | status | search | inspect | adm-eval | reference`:
the command line.

Stages import their modules only when they run, so `harness --help` and a suite error answer at once. A user
error (HarnessError) prints its message on stderr and exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from harness.errors import HarnessError, check_inputs

# Subcommands whose parser and entry point live in another module: (module, add_<x>_parser(subparsers)).
# Their arguments are parsed by that module's own parser, imported only when the subcommand runs.
DELEGATED = {
    "plan": ("harness.suite.plan", "add_plan_parser", "every run's method, gammas, NFE and FLOPs; needs no weights"),
    "report": ("harness.report", "add_report_parser", "results table, Pareto plots, paper tables, report.md"),
    "adm-eval": ("harness.metrics.adm_eval", "add_adm_eval_parser",
                 "ADM's evaluator.py in PyTorch: IS, FID, sFID, precision, recall of two batches"),
    "reference": ("harness.metrics.reference", "add_reference_parser",
                  "write an ADM-format reference batch from images"),
    "export": ("harness.export", "add_export_parser",
               "write a prompt run's images in GenEval's or HPSv3's folder layout"),
    "assets": ("harness.assets", "add_assets_parser",
               "real assets (checkpoints, VAEs, reference batches, Inception weights): status; --fetch downloads"),
    "inspect": ("harness.inspect_checkpoint", "add_inspect_parser",
                "what a checkpoint holds (format, EMA, step, architecture) and a [models.x] table for a suite"),
    "search": ("harness.search", "add_search_parser",
               "adaptive search of a suite's grid for the quality-vs-cost front, with a fraction of its samples"),
    "launch": ("harness.launch", "add_launch_parser",
               "bench a suite with N workers sharing its runs folder: SLURM job array (submitit) or local processes"),
    "status": ("harness.status", "add_status_parser",
               "a suite's progress: images per run, claim holders, img/s, ETA, stale claims, failed workers"),
}
DRY_RUN_HELP = ("run on random weights (models and VAE from their configs, random Inception weights, a small "
                "reference batch), a few samples and steps per run, into runs/<suite>-dryrun and "
                "reports/<suite>-dryrun, every number marked as a dry run; nothing is downloaded. On a CPU the real "
                "SiT-XL/2 takes about 10-40 s per forward of 8 images, so without a GPU every model is built as the "
                "smallest architecture of its family unless --dry-run-arch says otherwise")


#################################################################################
#                                   Parsers                                     #
#################################################################################


def suite_args(parser: argparse.ArgumentParser, *, samples: bool) -> None:
    """The arguments every suite command shares (generate, evaluate, bench, launch)."""
    parser.add_argument("suite", help="suite TOML file, e.g. suites/testbed.toml")
    parser.add_argument("--only", metavar="REGEX", help="only the runs whose id matches this regular expression")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu; cuda:LOCAL_RANK "
                                         "per process under torchrun)")
    parser.add_argument("--out", metavar="DIR", help="runs folder, holding <suite>/<run-id>/ (default: ROOT/runs)")
    parser.add_argument("--root", metavar="DIR", help="folder that relative paths in the suite are relative to "
                                                      "(default: the current directory)")
    parser.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)
    if samples:
        parser.add_argument("--samples", type=int, metavar="N", help="images per run, overriding the suite "
                                                                     "(dry run default: 4)")
        parser.add_argument("--steps", type=int, metavar="N", help="sampling steps of every run, overriding the "
                                                                   "suite (dry run default: 2)")
        parser.add_argument("--dry-run-arch", metavar="ARCH",
                            help="with --dry-run: build every model as ARCH (e.g. SiT-S/8; same latent space, route "
                                 "clamped to its depth) with a narrow random VAE; 'small': each model as the "
                                 "smallest architecture of its family (SiT-XL/2 -> SiT-S/2), the default without a "
                                 "GPU; 'full': the suite's own architectures, the default on a GPU")
        parser.add_argument("--fresh", action="store_true",
                            help="delete the selected runs' earlier output and start over")
        parser.add_argument("--adm-npz", action="store_true",
                            help="also write samples.npz (ADM's format, arr_0 only) in each run folder")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser; delegated subcommands appear in its help and are parsed by their own module."""
    parser = argparse.ArgumentParser(prog="harness", description="Benchmark guidance methods for token-sparse "
                                                                 "diffusion transformers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    gen = sub.add_parser("generate", help="generate the samples of a suite's runs (resumable; torchrun-aware)")
    suite_args(gen, samples=True)
    ev = sub.add_parser("evaluate", help="compute the suite's metrics for each generated run (metrics.json); or "
                                         "score a folder in GenEval's or HPSv3's layout made by any generator")
    suite_args(ev, samples=False)
    ev.add_argument("--metrics", metavar="M[,M]", help="with a sample folder: geneval, hpsv3, clip_score (default: "
                                                       "geneval for GenEval's layout, hpsv3 for HPSv3's)")
    ev.add_argument("--strict", action="store_true", help="with a sample folder: stop (exit 2) when any prompt "
                                                          "folder is skipped or any image is odd, instead of warning")
    bench = sub.add_parser("bench", help="generate, measure cost, evaluate and report a suite")
    suite_args(bench, samples=True)
    bench.add_argument("--reports", metavar="DIR", help="reports folder (default: ROOT/reports)")
    for name, (_, _, text) in DELEGATED.items():
        sub.add_parser(name, help=text, add_help=False)
    return parser


#################################################################################
#                                   Stages                                      #
#################################################################################


def load_selected(args: argparse.Namespace):
    """(suite, selected runs, DrySuite or None): with --dry-run the suite prepared by harness.dryrun."""
    samples, steps = getattr(args, "samples", None), getattr(args, "steps", None)
    check_inputs(paths={"--root": args.root})
    if getattr(args, "dry_run_arch", None) and not args.dry_run:
        raise HarnessError("--dry-run-arch only applies with --dry-run")
    if args.dry_run:
        from harness.dryrun import DRY_SAMPLES, DRY_STEPS, FULL, SMALL, DryRun, load_dry_suite

        from harness.distributed import resolve_device

        arch = getattr(args, "dry_run_arch", None) or (FULL if resolve_device(args.device).type == "cuda" else SMALL)
        dry = load_dry_suite(args.suite, args.root, args.out, DryRun(samples or DRY_SAMPLES, steps or DRY_STEPS, arch))
        for key, (old, new) in dry.substituted.items():
            print(f"dry run: [models.{key}] {old} built as {new}"
                  + (" (no GPU; --dry-run-arch full builds the suite's own)" if arch == SMALL else ""))
        return dry.suite, dry.suite.select(args.only), dry
    from harness.suite import load_suite

    suite = load_suite(args.suite, root=args.root, samples=samples, steps=steps)
    return suite, suite.select(args.only), None


def runs_root_of(args: argparse.Namespace, suite) -> Path:
    """The runs folder of a command: --out, else <root>/runs."""
    return Path(args.out) if args.out else suite.root / "runs"


def _generate(args: argparse.Namespace, suite, runs, dry=None, cache=None) -> None:
    from harness import distributed
    from harness.generate import generate_suite

    results = generate_suite(suite, runs, runs_root_of(args, suite), args.device, fresh=args.fresh,
                             adm_npz=args.adm_npz, dry_run=dry is not None,
                             dry_vae_config=dry.vae_config if dry is not None else None, cache=cache)
    for r in results:
        rate = f", {r.generated / r.seconds:.2f} img/s" if r.generated and r.seconds > 0 else ""
        distributed.print0(f"{r.run_id}: {r.generated} generated, {r.kept} kept{rate} -> {r.run_dir}")


def cmd_generate(args: argparse.Namespace) -> int:
    """`harness generate SUITE`: samples of every selected run, resuming finished shards."""
    suite, runs, dry = load_selected(args)
    _generate(args, suite, runs, dry)
    return 0


def _stage(module: str, name: str, stage: str):
    """A function another module provides for a stage, imported now; a HarnessError naming it when absent."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise HarnessError(f"the {stage} stage needs {module}.{name}, which is not available ({err})") from err


def cmd_evaluate(args: argparse.Namespace) -> int:
    """`harness evaluate SUITE`: metrics.json for each selected run; `harness evaluate FOLDER`: a sample folder."""
    if Path(args.suite).is_dir():
        from harness.evaluate import evaluate_sample_folder

        return evaluate_sample_folder(Path(args.suite), args.metrics, args.out, args.device, args.dry_run,
                                      args.strict, args.root)
    from harness.evaluate import evaluate_runs

    suite, runs, dry = load_selected(args)
    evaluate_runs(suite, runs, runs_root_of(args, suite), args.device, dry)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """`harness bench SUITE`: generate (every rank), then on rank 0 cost, evaluate and report; reruns resume.

    Every asset the suite needs is checked before any work. A dry run first prints (and saves) its plan, times one
    batch per run for cost.json, and writes its report to reports/<suite>-dryrun.
    """
    from harness import distributed

    suite, runs, dry = load_selected(args)
    reports = Path(args.reports) if args.reports else suite.root / "reports"
    if dry is None:
        from harness.preflight import require_assets

        require_assets(runs, suite.root, generate=True, evaluate=bool(suite.metrics))
    elif distributed.is_main():
        _dry_plan(suite, runs, reports)
    from harness.cost import measure_costs
    from harness.evaluate import evaluate_runs
    from harness.generate import ModelCache

    # one cache for generation and cost measurement: the models and VAE are built once
    cache = ModelCache(distributed.resolve_device(args.device), dry is not None,
                       dry.vae_config if dry is not None else None, suite.root)
    _generate(args, suite, runs, dry, cache)
    if not distributed.is_main():
        return 0
    runs_root = runs_root_of(args, suite)
    timing = {"warmup": 0, "repeats": 1} if dry is not None else {}
    measure_costs(runs, runs_root, cache, **timing)
    evaluate_runs(suite, runs, runs_root, args.device, dry)
    if dry is not None:
        from harness.report import write_report

        print(f"wrote {write_report(suite.name, runs_root, reports, dry.meta)} (dry run: random weights)")
        return 0
    paper = ["--paper"] if any(run.paper for run in runs) else []  # paper tables when runs map to baselines
    start = time.perf_counter()
    status = run_delegated("report", [str(suite.path), "--runs-dir", str(runs_root), "--reports-dir", str(reports),
                                      *paper])
    print(f"report: {len(runs)} run(s) in {time.perf_counter() - start:.1f} s")
    return status


def _dry_plan(suite, runs, reports: Path) -> None:
    """The plan stage of a dry run: the selected runs' plan table, printed and saved as <reports>/<suite>/plan.csv."""
    import dataclasses

    from harness.suite.plan import format_plan, plan_table

    table = plan_table(dataclasses.replace(suite, runs=tuple(runs)))
    out = reports / suite.name / "plan.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(format_plan(table, "csv"))
    print(format_plan(table, "table"))


def run_delegated(command: str, argv: Sequence[str]) -> int:
    """Parse `argv` with the owning module's parser for `command` and run the function it sets as func."""
    module, adder, _ = DELEGATED[command]
    add_parser = _stage(module, adder, command)
    parser = argparse.ArgumentParser(prog="harness")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([command, *argv])
    check_device(args)
    return int(args.func(args) or 0)


def check_device(args: argparse.Namespace) -> None:
    """Stop with a HarnessError before any work when the command's --device does not exist on this machine."""
    if getattr(args, "device", None):
        from harness.distributed import resolve_device

        resolve_device(args.device)


COMMANDS = {"generate": cmd_generate, "evaluate": cmd_evaluate, "bench": cmd_bench}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `harness` and `python -m harness`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in DELEGATED:
            return run_delegated(argv[0], argv[1:])
        args = build_parser().parse_args(argv)
        check_device(args)
        return COMMANDS[args.command](args)
    except HarnessError as err:
        print(f"harness: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output left (`| head`): stop quietly, as a SIGPIPE would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the exit's flush cannot fail
        return 141
    finally:
        if "torch.distributed" in sys.modules:
            from harness import distributed

            distributed.shutdown()
