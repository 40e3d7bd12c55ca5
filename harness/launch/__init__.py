"""`harness launch SUITE --executor slurm|local --workers N`: bench a suite with N workers sharing its runs folder.

Everything is checked before anything is submitted (the suite, the assets, the manifests, submitit, the settings,
that the runs folder supports atomic claims). Then submitit submits N workers (a SLURM job array, or local
processes) that each claim, generate and release units until every run is made (harness.generate.claims), and a
finisher (a SLURM job depending on the array; locally a process that waits for the workers) that generates whatever
the workers left, then measures cost, evaluates and reports: `harness bench`. The launch is recorded in
runs/<suite>/launch.json for `harness status`. Without --detach, launch waits and prints progress.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.launch.settings import (EXECUTORS, LaunchSettings, make_executor, require_slurm, require_submitit,
                                     resolve_settings)

POLL_S = 5.0  # seconds between progress lines while launch waits
LOG_DIR = "launch-logs"  # runs/<suite>/launch-logs/: submitit's scripts, pickles and logs


def add_launch_parser(sub: Any) -> argparse.ArgumentParser:
    """`harness launch`: bench's options, the executor and workers, SLURM's settings."""
    from harness.cli import suite_args

    parser = sub.add_parser("launch", help="bench a suite with N workers sharing its runs folder (SLURM job array "
                                           "or local processes, through submitit)")
    suite_args(parser, samples=True)
    parser.add_argument("--reports", metavar="DIR", help="reports folder (default: ROOT/reports)")
    parser.add_argument("--executor", choices=EXECUTORS, help="slurm: a job array and a dependent finisher job; "
                                                              "local: processes on this machine (default: [launch] "
                                                              "executor of the suite)")
    parser.add_argument("--workers", type=int, metavar="N", help="workers (default: [launch] workers, else 1)")
    parser.add_argument("--gpus-per-worker", type=int, metavar="G", help="GPUs per worker, one torch.distributed "
                                                                         "group of G processes (default 1)")
    parser.add_argument("--detach", action="store_true", help="return once submitted (see `harness status`)")
    parser.add_argument("--logs", metavar="DIR", help=f"submitit's folder of scripts and logs (default: "
                                                      f"OUT/<suite>/{LOG_DIR})")
    slurm = parser.add_argument_group("SLURM (with --executor slurm; default: the suite's [launch] table)")
    slurm.add_argument("--partition")
    slurm.add_argument("--account")
    slurm.add_argument("--qos")
    slurm.add_argument("--time", help="each worker's time limit (MM, HH:MM:SS or D-HH:MM:SS); a worker out of time "
                                      "is requeued and resumes")
    slurm.add_argument("--cpus-per-worker", type=int, metavar="N")
    slurm.add_argument("--mem", help="memory per worker, e.g. 64G")
    slurm.add_argument("--constraint", help="node features, e.g. a100|h100")
    slurm.add_argument("--setup", action="append", metavar="LINE", default=[],
                       help="a shell line each job runs first (repeatable), e.g. 'source .venv/bin/activate'")
    parser.set_defaults(func=cmd_launch)
    return parser


def worker_argv(args: argparse.Namespace, runs_root: Path) -> list[str]:
    """The arguments of `harness generate` (and `bench`) that every job runs: the launch's own, paths made absolute."""
    argv = [str(Path(args.suite).resolve()), "--out", str(runs_root),
            "--root", str(Path(args.root).resolve() if args.root else Path.cwd())]
    for flag, value in (("--only", args.only), ("--device", args.device), ("--samples", args.samples),
                        ("--steps", args.steps), ("--dry-run-arch", args.dry_run_arch)):
        if value is not None:
            argv += [flag, str(value)]
    return argv + (["--dry-run"] if args.dry_run else []) + (["--adm-npz"] if args.adm_npz else [])


def prepare(suite: Any, runs: Sequence[Any], runs_root: Path, fresh: bool, dry: Any) -> None:
    """Every check generation makes, done once here before submitting: assets present, configs unchanged, the runs
    folder able to hold claims. --fresh deletes the selected runs' folders here (never in a worker)."""
    from harness.generate.claims import check_folder
    from harness.generate.runner import preflight_runs
    from harness.rundir import run_dir_of

    check_folder(runs_root / suite.name)
    preflight_runs(runs, runs_root, fresh, suite.root, dry_run=dry is not None)
    if fresh:
        for run in runs:
            shutil.rmtree(run_dir_of(runs_root, run), ignore_errors=True)


def _job_record(job: Any, kind: str) -> dict[str, str]:
    return {"kind": kind, "job_id": str(job.job_id), "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
            "result": str(job.paths.result_pickle)}


def worker_threads(settings: LaunchSettings, cpus: int | None = None) -> int | None:
    """CPU threads per worker: local workers share this machine's cores (as torchrun's one thread per process, so N
    workers do not oversubscribe it); a SLURM worker uses its own allocation (None: torch's default)."""
    if settings.executor != "local":
        return None
    return max(1, (cpus or os.cpu_count() or 1) // settings.workers)


def submit(settings: LaunchSettings, argv: list[str], bench_argv: list[str], folder: Path,
           name: str) -> tuple[list[Any], Any]:
    """Submit the workers and the finisher; (worker jobs, finisher job)."""
    from harness.launch.jobs import Finisher, Worker

    executor = make_executor(settings, folder, name)
    with executor.batch():
        worker = Worker(argv, settings.gpus_per_worker, worker_threads(settings))
        jobs = [executor.submit(worker) for _ in range(settings.workers)]
    if settings.executor == "slurm":
        array = str(jobs[0].job_id).split("_")[0]
        executor.update_parameters(ntasks_per_node=1, gpus_per_node=1, dependency=f"afterany:{array}",
                                   job_name=f"{name}-finish")
        finisher = executor.submit(Finisher(bench_argv))
    else:
        executor.update_parameters(tasks_per_node=1)
        finisher = executor.submit(Finisher(bench_argv, wait_pids=[int(j.job_id) for j in jobs]))
    return jobs, finisher


def cmd_launch(args: argparse.Namespace) -> int:
    """Check, submit, record; then wait with progress unless --detach."""
    from harness.cli import load_selected, runs_root_of
    from harness.files import write_json
    from harness.status import LAUNCH_RECORD

    require_submitit()
    suite, runs, dry = load_selected(args)
    settings = resolve_settings(args, suite.launch, suite.path)
    if settings.executor == "slurm":
        require_slurm()
    runs_root = runs_root_of(args, suite).resolve()
    prepare(suite, runs, runs_root, args.fresh, dry)
    argv = worker_argv(args, runs_root)
    bench_argv = argv + (["--reports", str(Path(args.reports).resolve())] if args.reports else [])
    folder = Path(args.logs).resolve() if args.logs else runs_root / suite.name / LOG_DIR
    jobs, finisher = submit(settings, argv, bench_argv, folder, f"harness-{suite.name}")
    record = {"executor": settings.executor, "workers": settings.workers, "gpus_per_worker": settings.gpus_per_worker,
              "threads_per_worker": worker_threads(settings),
              "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "logs": str(folder), "argv": sys.argv[1:],
              "jobs": [_job_record(j, "worker") for j in jobs] + [_job_record(finisher, "finisher")]}
    write_json(runs_root / suite.name / LAUNCH_RECORD, record)
    ids = ", ".join(str(j.job_id) for j in jobs)
    print(f"launch: {settings.workers} worker(s) ({settings.executor}: {ids}), finisher {finisher.job_id}; "
          f"logs in {folder}")
    status_cmd = f"harness status {args.suite}" + (f" --out {args.out}" if args.out else "") + \
        (" --dry-run" if args.dry_run else "")
    if args.detach:
        print(f"launch: detached; follow it with `{status_cmd}`")
        return 0
    return wait(jobs, finisher, suite, runs, runs_root, status_cmd)


def wait(jobs: Sequence[Any], finisher: Any, suite: Any, runs: Sequence[Any], runs_root: Path, status_cmd: str,
         poll: float | None = None) -> int:
    """Print a progress line whenever it changes until the finisher ends; then the status table. A failed finisher
    is a HarnessError naming its log."""
    from harness.status import run_status, suite_status

    last = None
    try:
        while not finisher.done():
            statuses = [run_status(run, runs_root) for run in runs]
            done, total = sum(s.done for s in statuses), sum(s.total for s in statuses)
            running = sum(not j.done() for j in jobs)
            line = f"launch: {done}/{total} images, {running} of {len(jobs)} worker(s) running"
            if line != last:
                print(line, flush=True)
                last = line
            time.sleep(POLL_S if poll is None else poll)
    except KeyboardInterrupt:  # SLURM jobs run on; local ones got the same Ctrl-C (launch again to resume)
        print(f"launch: stopped waiting; submitted SLURM jobs keep running (`{status_cmd}`), local workers stop "
              f"with this terminal and resume when launched again", file=sys.stderr)
        raise
    print(suite_status(suite, runs, runs_root))
    try:
        finisher.result()
    except Exception as err:  # noqa: BLE001 - submitit re-raises the job's failure; its log has the traceback
        raise HarnessError(f"the finisher (generation left-overs, cost, evaluation, report) failed: "
                           f"{str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__}; "
                           f"log {finisher.paths.stderr}; `{status_cmd}` shows what is left") from err
    return 0
