"""Claims on units of work in a runs folder: exclusive creation, takeover of claims whose owner is gone (dead
process, silent heartbeat, requeued job), heartbeats, races between claimants, and two `harness generate` processes
splitting one run between them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.generate import claims as claims_mod
from harness.generate.claims import Claims, check_folder, create, locked, owner
from harness.rundir import TIMING_FILE

from tests.helpers import RUN, images_by_index, random_checkpoint, run_dir, write_generation_suite


def foreign_claim(folder: Path, first: int, age: float = 0.0, **fields) -> Path:
    """A claim file another owner holds, its heartbeat `age` seconds old."""
    folder.mkdir(parents=True, exist_ok=True)
    record = {**owner(), "host": "elsewhere", "pid": 1, **fields}
    path = folder / f"{first:06d}.claim"
    assert create(path, record)
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_claim_is_exclusive_and_released(tmp_path):
    a, b = Claims(tmp_path), Claims(tmp_path)
    assert a.acquire(0) and not b.acquire(0) and a.holds(0) and not b.holds(0)
    assert b.acquire(4)
    a.release(0)
    assert not (tmp_path / "000000.claim").exists() and b.acquire(0)
    assert json.loads((tmp_path / "000000.claim").read_text())["token"] == b.me["token"]
    a.close(), b.close()


def test_takeover_when_the_owner_process_is_dead(tmp_path):
    import socket

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        foreign_claim(tmp_path, 0, host=socket.gethostname(), pid=live.pid)
        foreign_claim(tmp_path, 4, host=socket.gethostname(), pid=dead_pid())
        claims = Claims(tmp_path)
        assert not claims.acquire(0)  # its owner runs: held
        assert claims.acquire(4) and claims.holds(4)  # its owner is gone: taken over
    finally:
        live.kill()
        live.wait()
    assert claims.acquire(0)  # now that one is gone too
    claims.close()


def test_takeover_when_the_heartbeat_is_stale(tmp_path):
    foreign_claim(tmp_path, 0, age=50)
    foreign_claim(tmp_path, 4, age=200)
    claims = Claims(tmp_path, timeout=100)
    assert not claims.acquire(0) and claims.acquire(4)
    assert not list(tmp_path.glob(".*")), "takeover left a temporary file"
    claims.close()


def test_a_requeued_job_takes_its_own_claims_back(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    foreign_claim(tmp_path, 0, job="4242", rank=1, restart=0)  # the earlier run of this job, on another node
    foreign_claim(tmp_path, 4, job="4242", rank=0, restart=0)  # another rank of the same job
    foreign_claim(tmp_path, 8, job="4242", rank=1, restart=1)  # another process of this very run of the job
    claims = Claims(tmp_path)
    assert claims.acquire(0) and not claims.acquire(4) and not claims.acquire(8)
    claims.close()


def test_the_heartbeat_keeps_a_claim_fresh_and_a_taken_over_claim_is_noticed(tmp_path):
    holder = Claims(tmp_path, timeout=0.4)
    assert holder.acquire(0)
    path = tmp_path / "000000.claim"
    os.utime(path, (time.time() - 100, time.time() - 100))
    deadline = time.monotonic() + 10
    while time.time() - path.stat().st_mtime > 50:
        assert time.monotonic() < deadline, "no heartbeat"
        time.sleep(0.02)
    holder._stop.set()  # the holder stalls: no more heartbeats
    time.sleep(0.05)
    os.utime(path, (time.time() - 100, time.time() - 100))
    taker = Claims(tmp_path, timeout=0.4)
    assert taker.acquire(0)
    assert not holder.holds(0) and taker.holds(0)
    holder.release(0)  # releasing what it lost leaves the new owner's claim alone
    assert taker.holds(0)
    taker.close()


@pytest.mark.parametrize("round_", range(8))
def test_racing_claimants_win_each_unit_once(tmp_path, round_):
    """Eight claimants race for 40 units, half of them stale claims to take over: each unit goes to exactly one.
    (Eight rounds: a late taker moving a fresh claim away let a third claimant win a unit twice in about 1 of 6.)"""
    for first in range(0, 40, 2):
        foreign_claim(tmp_path, first, age=1000)
    winners: dict[int, list[str]] = {first: [] for first in range(40)}
    start = threading.Barrier(8)

    def claimant() -> None:
        claims = Claims(tmp_path, timeout=100)
        start.wait()
        for first in range(40):
            if claims.acquire(first):
                winners[first].append(claims.me["token"])

    threads = [threading.Thread(target=claimant) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(len(w) == 1 for w in winners.values()), {k: len(v) for k, v in winners.items() if len(v) != 1}
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "takeover files left behind"


def test_lock_serialises_read_modify_write(tmp_path):
    counter = tmp_path / "n"
    counter.write_text("0")

    def add() -> None:
        for _ in range(20):
            with locked(tmp_path / ".lock"):
                counter.write_text(str(int(counter.read_text()) + 1))

    threads = [threading.Thread(target=add) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.read_text() == "80"


def test_a_folder_without_atomic_creation_is_refused(tmp_path, monkeypatch):
    check_folder(tmp_path)  # a local disk: fine

    def no_links(src, dst):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(claims_mod.os, "link", no_links)
    with pytest.raises(HarnessError, match=r"exclusive file creation .*EPERM"):
        check_folder(tmp_path / "runs")


def test_two_generate_processes_split_a_run_and_make_no_image_twice(tmp_path):
    """Process A is stopped while it holds a unit; B makes every other unit and waits for A's; A, resumed, finishes
    its unit. Together: each image once, equal to one process's, each process's timings its own batches only."""
    weights = random_checkpoint(tmp_path / "w.safetensors")
    out = tmp_path / "runs"
    samples, batch = 12, 2
    # 12 steps: batches long enough that A is stopped holding a unit however fast the machine
    suite = write_generation_suite(tmp_path, weights, samples=samples, batch_size=batch, steps=12)
    cmd = [sys.executable, "-m", "harness", "generate", str(suite), "--out", str(out), "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    a = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    claims_dir = run_dir(out) / claims_mod.CLAIMS_DIR
    deadline = time.monotonic() + 120
    while not list(run_dir(out).glob("samples-*.npz")) or not list(claims_dir.glob("*.claim")):
        assert a.poll() is None and time.monotonic() < deadline, "A made no shard"
        time.sleep(0.005)
    a.send_signal(signal.SIGSTOP)
    try:
        held = {p.name for p in claims_dir.glob("*.claim")}
        b = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        while len(list(run_dir(out).glob("samples-*.npz"))) < samples // batch - len(held):
            assert b.poll() is None and time.monotonic() < deadline + 120, b.stderr.read() if b.poll() else ""
            time.sleep(0.02)
        time.sleep(1.0)
        assert b.poll() is None, "B finished while A still held a unit"
    finally:
        a.send_signal(signal.SIGCONT)
    a_out, a_err = a.communicate(timeout=300)
    b_out, b_err = b.communicate(timeout=300)
    assert a.returncode == 0 and b.returncode == 0, a_err[-2000:] + b_err[-2000:]
    made = [int(o.split(f"{RUN}: ")[1].split(" generated")[0]) for o in (a_err + a_out, b_err + b_out)]
    assert sum(made) == samples and min(made) > 0, made
    indices, images, _ = images_by_index(out)
    assert list(indices) == list(range(samples))
    ref = tmp_path / "ref"
    from harness.generate import generate_suite
    from harness.suite import load_suite

    generate_suite(load_suite(suite, root=tmp_path), runs_root=ref, device="cpu")
    assert (images == images_by_index(ref)[1]).all()
    timing = json.loads((run_dir(out) / TIMING_FILE).read_text())
    assert len(timing["batches"]) == samples // batch  # no batch twice
    assert sum(b["warmup"] for b in timing["batches"]) == 2  # one first batch per process
    assert not list(claims_dir.glob("*.claim"))


def test_done_records_spare_rereading_until_a_shard_changes(tmp_path, monkeypatch):
    """A finished unit's .done record lets a later process skip reading its shards; a changed shard is read again,
    and a unit first made only in part (search's prefixes) is not taken as done."""
    from harness.generate import generate_suite
    from harness.generate import runner
    from harness.suite import load_suite

    monkeypatch.setattr(claims_mod, "MAX_UNITS", 1)  # one unit of two shards
    checkpoint = random_checkpoint(tmp_path / "w.safetensors")
    suite = load_suite(write_generation_suite(tmp_path, checkpoint, samples=4, batch_size=2), root=tmp_path)
    out = tmp_path / "runs"
    (partial,) = generate_suite(suite, runs_root=out, device="cpu", upto=2)
    assert partial.generated == 2
    (rest,) = generate_suite(suite, runs_root=out, device="cpu")
    assert (rest.generated, rest.kept) == (2, 2)
    reads = []
    real = runner.shard_is_valid
    monkeypatch.setattr(runner, "shard_is_valid", lambda *a: reads.append(a[0].name) or real(*a))
    (again,) = generate_suite(suite, runs_root=out, device="cpu")
    assert (again.generated, reads) == (0, [])
    os.utime(run_dir(out) / "samples-000002.npz")
    (touched,) = generate_suite(suite, runs_root=out, device="cpu")
    assert touched.generated == 0 and sorted(reads) == ["samples-000000.npz", "samples-000002.npz"]
