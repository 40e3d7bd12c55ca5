"""`harness status SUITE`: how far a suite's generation has come, read from its runs folder alone (no scheduler
query): per run the images made, who holds claims, the recent rate and an ETA; stale claims and failed launch jobs
named with their logs; the suite's total. `harness launch` prints the same while it waits."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.generate.claims import CLAIMS_DIR, TIMEOUT_S, pid_alive, stale_reason
from harness.generate.runner import plan_shards
from harness.rundir import run_dir_of, shard_path

LAUNCH_RECORD = "launch.json"  # runs/<suite>/launch.json: the last launch's executor, jobs and log paths
RATE_WINDOW_S = 600.0  # img/s counts the shards written in the last ten minutes


@dataclass
class Claim:
    """A claim file as status shows it."""

    unit: int
    owner: dict[str, Any]
    age: float
    stale: str | None


@dataclass
class RunStatus:
    """One run's progress."""

    run_id: str
    done: int
    total: int
    rate: float | None  # images per second over the last RATE_WINDOW_S
    claims: list[Claim] = field(default_factory=list)

    @property
    def eta(self) -> float | None:
        if self.done >= self.total:
            return 0.0
        return (self.total - self.done) / self.rate if self.rate else None


def run_status(run: Any, runs_root: Path, now: float | None = None, timeout: float = TIMEOUT_S) -> RunStatus:
    """Progress of one run from its folder: shards present (not read), claim files, shard times."""
    now = time.time() if now is None else now
    run_dir = run_dir_of(runs_root, run)
    done, recent = 0, []
    for s in plan_shards(run.samples, run.batch_size):
        try:
            mtime = shard_path(run_dir, s.start).stat().st_mtime
        except FileNotFoundError:
            continue
        done += len(s)
        if now - mtime <= RATE_WINDOW_S:
            recent.append((mtime, len(s)))
    rate = None
    if recent:
        recent.sort()
        span = now - recent[0][0] if len(recent) == 1 else recent[-1][0] - recent[0][0]
        images = sum(n for _, n in recent[1:]) if len(recent) > 1 else recent[0][1]
        rate = images / span if span > 0 else None
    claims = []
    for path in sorted((run_dir / CLAIMS_DIR).glob("*.claim")):
        try:
            owner = json.loads(path.read_text())
            age = now - path.stat().st_mtime
        except (OSError, ValueError):
            continue  # released while we looked
        claims.append(Claim(int(path.stem), owner, age, stale_reason(owner, age, timeout)))
    return RunStatus(run.run_id, done, run.samples, rate, claims)


def read_launch(runs_root: Path, suite_name: str) -> dict[str, Any] | None:
    """The suite's launch record (harness launch writes it), None without one."""
    try:
        return json.loads((Path(runs_root) / suite_name / LAUNCH_RECORD).read_text())
    except (OSError, ValueError):
        return None


def job_outcome(job: dict[str, Any], executor: str | None = None) -> tuple[str, str]:
    """("running" | "done" | "failed", detail) of a launch job: submitit writes a result file when a job ends, and
    its log says whether the job raised (the last line of the traceback is the detail). A local job whose process
    is gone without a result was killed; a SLURM job's state needs the scheduler (squeue, sacct)."""
    if not Path(job["result"]).is_file():
        if executor == "local" and not pid_alive(int(job["job_id"])):
            return "failed", "its process ended without a result (killed)"
        return "running", "no result yet (queued, running, or killed without one)"
    try:
        log = Path(job["stderr"]).read_text(errors="replace")
    except OSError:
        return "done", ""
    if "Submitted job triggered an exception" not in log:
        return "done", ""
    lines = [line for line in log.split("Submitted job triggered an exception")[0].splitlines()
             if line.strip() and not line.startswith("submitit ")]
    return "failed", lines[-1].strip() if lines else "error"


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _holder(claim: Claim) -> str:
    o = claim.owner
    job = f" job {o['job']}" if o.get("job") else ""
    rank = f" rank {o['rank']}" if o.get("rank") else ""
    return f"{o.get('host')}:{o.get('pid')}{job}{rank} (beat {claim.age:.0f} s ago)"


def format_status(statuses: Sequence[RunStatus], launch: dict[str, Any] | None) -> str:
    """The status report: a line per run, stale claims, failed jobs, the suite's total."""
    width = max([len("run")] + [len(s.run_id) for s in statuses])
    lines = [f"{'run':<{width}}  {'images':>17}  {'img/s':>7}  {'ETA':>7}  claims"]
    for s in statuses:
        live = [c for c in s.claims if c.stale is None]
        held = "; ".join(_holder(c) for c in live) or "-"
        rate = f"{s.rate:.2f}" if s.rate else "-"
        images = f"{s.done}/{s.total} ({100 * s.done / s.total:.0f}%)"
        lines.append(f"{s.run_id:<{width}}  {images:>17}  {rate:>7}  {_fmt_time(s.eta):>7}  {held}")
    logs = {str(j["job_id"]): j for j in (launch or {}).get("jobs", [])}
    for s in statuses:
        for c in s.claims:
            if c.stale is not None:
                job = logs.get(str(c.owner.get("job")))
                log = f"; log {job['stderr']}" if job else ""
                lines.append(f"stale claim: {s.run_id} unit {c.unit:06d} held by {_holder(c)}: {c.stale} (the next "
                             f"worker takes it over){log}")
    for job in (launch or {}).get("jobs", []):
        outcome, detail = job_outcome(job, launch.get("executor"))
        if outcome == "failed":
            lines.append(f"failed {job['kind']}: job {job['job_id']}: {detail}; log {job['stderr']}")
    done, total = sum(s.done for s in statuses), sum(s.total for s in statuses)
    rate = sum(s.rate or 0.0 for s in statuses)
    eta = (total - done) / rate if rate and done < total else (0.0 if done >= total else None)
    lines.append(f"suite: {done}/{total} images ({100 * done / max(total, 1):.0f}%), "
                 f"{f'{rate:.2f} img/s' if rate else '- img/s'}, ETA {_fmt_time(eta)}")
    return "\n".join(lines)


def add_status_parser(sub: Any) -> argparse.ArgumentParser:
    """`harness status SUITE [--out DIR] [--only REGEX] [--samples N] [--dry-run]`."""
    parser = sub.add_parser("status", help="a suite's progress: images per run, claim holders, img/s, ETA, stale "
                                           "claims and failed launch jobs")
    parser.add_argument("suite", help="suite TOML file")
    parser.add_argument("--out", metavar="DIR", help="runs folder (default: ROOT/runs)")
    parser.add_argument("--only", metavar="REGEX", help="only the runs whose id matches")
    parser.add_argument("--samples", type=int, metavar="N", help="the --samples the suite was launched with")
    parser.add_argument("--steps", type=int, metavar="N", help="the --steps the suite was launched with")
    parser.add_argument("--root", metavar="DIR", help="folder the suite's relative paths start from (default: .)")
    parser.add_argument("--dry-run", action="store_true", help="the status of the suite's dry run")
    parser.set_defaults(func=cmd_status, device=None, dry_run_arch=None)
    return parser


def suite_status(suite: Any, runs: Sequence[Any], runs_root: Path) -> str:
    """The status report of `runs` of `suite` in `runs_root`."""
    return format_status([run_status(run, runs_root) for run in runs], read_launch(runs_root, suite.name))


def cmd_status(args: argparse.Namespace) -> int:
    """Print the suite's status; exit 0 (status never changes anything)."""
    from harness.cli import load_selected, runs_root_of

    suite, runs, _ = load_selected(args)
    print(suite_status(suite, runs, runs_root_of(args, suite)))
    return 0
