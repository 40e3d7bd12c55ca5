"""Claims on a run's units of work, so that any number of processes (plain `harness generate`, torchrun ranks,
`harness launch` workers on many hosts) share one runs folder without making an image twice.

A unit is a range of consecutive shards of a run (plan_units). A process claims unit u by creating
runs/<suite>/<run>/claims/<first index>.claim exclusively: the record (host, pid, job id, rank, a random token) is
written to a private file that is then hard-linked to the claim's name. link() fails when the name exists, atomically
also on NFS (where O_EXCL once was not), so exactly one claimant wins. The holder's heartbeat is the file's mtime,
touched by a thread every `timeout / 4` s. A claim is stale when its owner is gone: the same host and its pid no
longer exists, the same job id and rank with a lower SLURM restart count (a requeued job's earlier run), or a
heartbeat older than `timeout` (any host). A stale claim is taken over by renaming it to a private name (one renamer wins) and checking that the moved
file is the stale one read before; a live claim moved by mistake (it replaced the stale one in between) is linked
back. The taker then competes for the name like any claimant. Finishing a unit writes claims/<first>.done (each
shard's size, mtime and inode, so a later process trusts the shards without reading them while they are unchanged)
and deletes the claim.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.files import write_json

CLAIMS_DIR = "claims"
TIMEOUT_S = 600.0  # a heartbeat older than this makes a claim stale (beats come every TIMEOUT_S / 4)
MAX_UNITS = 256  # units per run at most: a unit is then ~0.4% of a run, and claims stay few


def plan_units(shards: Sequence[range]) -> list[list[range]]:
    """A run's shards cut into at most MAX_UNITS units of consecutive shards (every process computes the same)."""
    size = max(1, math.ceil(len(shards) / MAX_UNITS))
    return [list(shards[i:i + size]) for i in range(0, len(shards), size)]


def job_id() -> str | None:
    """The scheduler's id of this job (SLURM array task, SLURM job, or submitit local job), None outside one."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID")


def owner() -> dict[str, Any]:
    """This process's claim record: who holds it, and a token no other claim shares."""
    env = os.environ
    return {"host": socket.gethostname(), "pid": os.getpid(), "job": job_id(),
            "rank": int(env.get("RANK") or env.get("SLURM_PROCID") or 0),
            "restart": int(env.get("SLURM_RESTART_COUNT") or 0), "token": uuid.uuid4().hex, "since": time.time()}


def _read(path: Path) -> dict[str, Any] | None:
    """A claim's record, None when it does not exist (or is being replaced)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host runs (a zombie, finished but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (macOS): kill(0) said it exists
        return True


def stale_reason(record: dict[str, Any], age: float, timeout: float, me: dict[str, Any] | None = None) -> str | None:
    """Why a claim's owner is gone (None while it holds): process gone, earlier run of this job, silent heartbeat."""
    if record.get("host") == socket.gethostname() and isinstance(record.get("pid"), int) \
            and record["pid"] != os.getpid() and not pid_alive(record["pid"]):
        return f"process {record['pid']} on {record['host']} is gone"
    if me is not None and record.get("job") and record.get("job") == me.get("job") \
            and record.get("rank") == me.get("rank") and record.get("restart", 0) < me.get("restart", 0):
        return f"job {record['job']} was requeued"
    if age > timeout:
        return f"heartbeat {age:.0f} s old (timeout {timeout:.0f} s)"
    return None


def create(path: Path, record: dict[str, Any]) -> bool:
    """Create `path` holding `record` if it does not exist, atomically (link(2), NFS-safe); whether we created it."""
    tmp = path.with_name(f".{path.name}.{record['token']}.tmp")
    tmp.write_text(json.dumps(record))
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:
        # NFS may report a failure for a link the server did make (lost reply): the link count tells
        if tmp.stat().st_nlink == 2:
            return True
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _take_over(path: Path, stale: dict[str, Any], me: dict[str, Any], timeout: float) -> None:
    """Remove the stale claim `stale` at `path` if it is still there. One taker per stale claim: the right to remove
    it is a file created atomically beside it (named by its token), so a late taker can never move away the claim a
    faster one made after it (the window in which a third process could win a unit twice)."""
    right = path.with_name(f".{path.name}.{stale.get('token')}.takeover")
    if not create(right, me):
        record = _read(right)
        with contextlib.suppress(FileNotFoundError):
            if record is not None and stale_reason(record, time.time() - right.stat().st_mtime, timeout, me):
                right.unlink()  # a taker that died mid-takeover: the next attempt takes the right
        return
    try:
        current = _read(path)
        if current is None or current.get("token") != stale.get("token"):
            return  # released, or already taken over
        tomb = path.with_name(f".{path.name}.{me['token']}.stale")
        try:
            os.rename(path, tomb)
        except FileNotFoundError:  # its owner released it just now
            return
        moved = _read(tomb)
        if moved is None or moved.get("token") != stale.get("token"):  # released and claimed anew meanwhile
            with contextlib.suppress(FileExistsError):
                os.link(tomb, path)
        tomb.unlink(missing_ok=True)
    finally:
        right.unlink(missing_ok=True)


class Claims:
    """This process's claims in one claims folder: acquire, heartbeat (a thread), check, release."""

    def __init__(self, folder: Path, timeout: float = TIMEOUT_S) -> None:
        self.folder = Path(folder)
        self.timeout = timeout
        self.me = owner()
        self.held: set[Path] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.seconds = 0.0  # time spent on claim files: the protocol's overhead
        _ACTIVE.add(self)

    def path(self, first: int) -> Path:
        return self.folder / f"{first:06d}.claim"

    def acquire(self, first: int) -> bool:
        """Claim the unit starting at image `first`, taking over a stale claim; whether this process now holds it."""
        start = time.perf_counter()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.path(first)
            for _ in range(3):
                if create(path, self.me):
                    with self._lock:
                        self.held.add(path)
                    self._beat()
                    return True
                record = _read(path)
                if record is None:
                    continue  # released or being taken over just now: try again
                if record.get("token") == self.me["token"]:
                    return False  # already ours (a caller's mistake): do not hold it twice
                try:
                    age = time.time() - path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if stale_reason(record, age, self.timeout, self.me) is None:
                    return False
                _take_over(path, record, self.me, self.timeout)
            return False
        finally:
            self.seconds += time.perf_counter() - start

    def holds(self, first: int) -> bool:
        """Whether the claim on `first` is still ours (another process may have taken it over as stale)."""
        start = time.perf_counter()
        record = _read(self.path(first))
        self.seconds += time.perf_counter() - start
        return record is not None and record.get("token") == self.me["token"]

    def finish(self, first: int, done: dict[str, Any]) -> None:
        """Record the unit as done (`done`: its shards' stats) and release its claim."""
        start = time.perf_counter()
        write_json(self.folder / f"{first:06d}.done", done)
        self.seconds += time.perf_counter() - start
        self.release(first)

    def release(self, first: int) -> None:
        """Give the claim on `first` up (delete it if it is still ours)."""
        start = time.perf_counter()
        path = self.path(first)
        with self._lock:
            self.held.discard(path)
        if self.holds(first):
            path.unlink(missing_ok=True)
        self.seconds += time.perf_counter() - start

    def release_all(self) -> None:
        """Release every claim held (a preempted worker does this before it is requeued) and stop the heartbeat."""
        with self._lock:
            held = list(self.held)
        for path in held:
            self.release(int(path.stem))
        self.close()

    def close(self) -> None:
        """Stop the heartbeat (call after the last release)."""
        self._stop.set()
        _ACTIVE.discard(self)

    def _beat(self) -> None:
        """Start the heartbeat thread once."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._heartbeat, name="claims-heartbeat", daemon=True)
            self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.timeout / 4):
            with self._lock:
                held = list(self.held)
            for path in held:
                record = _read(path)
                if record is not None and record.get("token") == self.me["token"]:
                    with contextlib.suppress(OSError):
                        os.utime(path)


_ACTIVE: set[Claims] = set()  # every Claims of this process, for release_everything


def release_everything() -> None:
    """Release the claims of every Claims of this process (submitit's checkpoint, before a requeue)."""
    for claims in list(_ACTIVE):
        claims.release_all()


@contextlib.contextmanager
def locked(path: Path, timeout: float = TIMEOUT_S, wait: float = 0.01) -> Iterator[None]:
    """Hold `path` as a lock file (a claim: atomic, NFS-safe, taken over when its owner is gone) while the body runs;
    for short read-modify-write of a file several processes update (timing.json)."""
    me = owner()
    while not create(path, me):
        record = _read(path)
        if record is not None:
            with contextlib.suppress(FileNotFoundError):
                if stale_reason(record, time.time() - path.stat().st_mtime, timeout) is not None:
                    _take_over(path, record, me, timeout)
                    continue
        time.sleep(wait)
    try:
        yield
    finally:
        record = _read(path)
        if record is not None and record.get("token") == me["token"]:
            path.unlink(missing_ok=True)


def check_folder(folder: Path) -> None:
    """Stop with a HarnessError unless exclusive creation works in `folder` (claims need it): a probe claim is made,
    made again (which must fail) and removed."""
    folder = Path(folder)
    probe = folder / f".claim-probe-{uuid.uuid4().hex}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        me = owner()
        first = create(probe, me)
        second = create(probe, {**me, "token": uuid.uuid4().hex})
    except OSError as err:
        reason = errno.errorcode.get(err.errno, str(err.errno)) if err.errno else type(err).__name__
        raise HarnessError(f"{folder}: exclusive file creation (link) fails here ({reason}: {err.strerror or err}); "
                           f"processes sharing this runs folder could not claim work. Use a folder on a "
                           f"filesystem that supports hard links (local disk, NFS, Lustre)") from err
    finally:
        probe.unlink(missing_ok=True)
    if not first or second:
        raise HarnessError(f"{folder}: exclusive file creation is not atomic here (a second create of the same name "
                           f"{'succeeded' if second else 'failed first'}); processes sharing this runs folder could "
                           f"make images twice. Use a folder on local disk, NFS or Lustre")


def unit_done(folder: Path, first: int, shard_files: Sequence[Path]) -> bool:
    """Whether claims/<first>.done says the unit is finished and all its shards exist unchanged since (size, mtime,
    inode): then they need not be read again."""
    record = _read(Path(folder) / f"{first:06d}.done")
    stats = shard_stats(shard_files)
    return record is not None and len(stats) == len(shard_files) and record == stats


def shard_stats(shard_files: Sequence[Path]) -> dict[str, Any]:
    """{shard name: [size, mtime_ns, inode]} of existing files, what a .done record holds."""
    stats = {}
    for path in shard_files:
        with contextlib.suppress(FileNotFoundError):
            st = path.stat()
            stats[path.name] = [st.st_size, st.st_mtime_ns, st.st_ino]
    return stats
