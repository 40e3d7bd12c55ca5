"""Where and how `harness launch` runs its workers: the executor, the worker count and SLURM's settings, from flags
over the suite's [launch] table, and the submitit executor they make."""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

EXECUTORS = ("slurm", "local")
SLURM_FIELDS = ("partition", "account", "qos", "time", "cpus_per_worker", "mem", "constraint", "setup")
LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # a local worker runs until done (submitit's local default would stop it at 2 min)
SIGNAL_DELAY_S = 120  # SLURM signals a worker this long before its time limit: it releases its claims and requeues


@dataclass(frozen=True)
class LaunchSettings:
    """One launch: executor, workers, GPUs per worker, and (SLURM) each worker's allocation."""

    executor: str
    workers: int
    gpus_per_worker: int = 1
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    cpus_per_worker: int | None = None
    mem: str | None = None
    constraint: str | None = None
    setup: tuple[str, ...] = ()


def require_submitit() -> None:
    """Stop with a HarnessError when submitit is not installed."""
    if importlib.util.find_spec("submitit") is None:
        raise HarnessError("harness launch needs submitit, which is not installed: "
                           "pip install 'guidance-harness[cluster]' (or pip install submitit)")


def require_slurm() -> None:
    """Stop with a HarnessError when SLURM's commands are not on PATH (not a login node of a SLURM cluster)."""
    missing = [cmd for cmd in ("sbatch", "srun") if shutil.which(cmd) is None]
    if missing:
        raise HarnessError(f"--executor slurm: {' and '.join(missing)} not found on PATH; run harness launch on a "
                           f"login node of the SLURM cluster (or use --executor local)")


def resolve_settings(args: argparse.Namespace, table: dict[str, Any], suite_path: Path) -> LaunchSettings:
    """Flags over the suite's [launch] table; SLURM settings given as flags need --executor slurm."""
    executor = args.executor or table.get("executor")
    if executor is None:
        raise HarnessError(f"harness launch needs --executor slurm|local (or executor = ... in the [launch] table "
                           f"of {suite_path})")
    if executor not in EXECUTORS:  # from the table; argparse checks the flag
        raise HarnessError(f"{suite_path}: [launch] executor {executor!r}: unknown; known: {', '.join(EXECUTORS)}")
    flags = {name: getattr(args, name) for name in SLURM_FIELDS if getattr(args, name) not in (None, [])}
    if flags and executor != "slurm":
        given = ", ".join("--" + name.replace("_", "-") for name in flags)
        raise HarnessError(f"{given}: SLURM settings apply only with --executor slurm (this launch is {executor})")
    slurm = {name: table[name] for name in SLURM_FIELDS if name in table} if executor == "slurm" else {}
    slurm.update(flags)
    if "time" in slurm:
        time_minutes(slurm["time"])
    if "setup" in slurm:
        slurm["setup"] = tuple(slurm["setup"])
    workers = args.workers if args.workers is not None else table.get("workers", 1)
    gpus = args.gpus_per_worker if args.gpus_per_worker is not None else table.get("gpus_per_worker", 1)
    if workers < 1 or gpus < 1:
        raise HarnessError(f"--workers {workers}, --gpus-per-worker {gpus}: both must be >= 1")
    return LaunchSettings(executor=executor, workers=workers, gpus_per_worker=gpus, **slurm)


def time_minutes(text: str) -> int:
    """SLURM's time forms (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in whole minutes (rounded up)."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(text))
    if not m:
        raise HarnessError(f"--time {text!r}: not a SLURM time (MM, HH:MM:SS or D-HH:MM:SS)")
    days, a, b, c = (int(g) if g else None for g in m.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = a * 3600 + b * 60 + c
    else:  # MM or MM:SS
        seconds = a * 60 + (b or 0)
    return max(1, -(-seconds // 60))


def make_executor(settings: LaunchSettings, folder: Path, name: str) -> Any:
    """The submitit executor of these settings, writing its scripts and logs into `folder`."""
    import submitit

    gpus = settings.gpus_per_worker
    if settings.executor == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN, tasks_per_node=gpus)
        return executor
    executor = submitit.SlurmExecutor(folder=folder)
    params: dict[str, Any] = {"job_name": name, "nodes": 1, "ntasks_per_node": gpus, "gpus_per_node": gpus,
                              "signal_delay_s": SIGNAL_DELAY_S, "array_parallelism": settings.workers}
    for field in ("partition", "account", "qos", "mem", "constraint"):
        if getattr(settings, field) is not None:
            params[field] = getattr(settings, field)
    if settings.time is not None:
        params["time"] = time_minutes(settings.time)
    if settings.cpus_per_worker is not None:
        params["cpus_per_task"] = max(1, settings.cpus_per_worker // gpus)
    if settings.setup:
        params["setup"] = list(settings.setup)
    executor.update_parameters(**params)
    return executor
