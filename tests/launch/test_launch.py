"""`harness launch` and `harness status`: local workers (submitit's local executor) equal a plain generate bit for
bit, a killed launch relaunched finishes, a preempted worker requeues and resumes, the sbatch scripts hold the
settings, and bad input stops before anything is submitted."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import harness.launch
from harness.cli import main
from harness.generate import generate_suite
from harness.generate import claims as claims_mod
from harness.rundir import TIMING_FILE
from harness.status import LAUNCH_RECORD
from harness.suite import load_suite

from tests.helpers import RUN, images_by_index, random_checkpoint, run_dir, write_generation_suite

pytest.importorskip("submitit")

SAMPLES, BATCH = 12, 2
KILL_STEPS = 24


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    """(suite path, reference runs folder made by one plain generate process)."""
    folder = tmp_path_factory.mktemp("launch")
    checkpoint = random_checkpoint(folder / "w.safetensors")
    suite = write_generation_suite(folder, checkpoint, samples=SAMPLES, batch_size=BATCH)
    generate_suite(load_suite(suite, root=folder), runs_root=folder / "ref", device="cpu")
    return suite, folder / "ref"


@pytest.fixture(scope="module")
def slow_setup(setup, tmp_path_factory) -> tuple[Path, Path]:
    """(suite path, reference runs folder at KILL_STEPS): batches slow enough to interrupt a worker mid-run however
    fast the machine (at the suite's 2 steps one idle worker makes all 12 images in half a second)."""
    suite, _ = setup
    ref = tmp_path_factory.mktemp("slow") / "ref"
    generate_suite(load_suite(suite, root=suite.parent, steps=KILL_STEPS), runs_root=ref, device="cpu")
    return suite, ref


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}


def wait_for(condition, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def shard_count(out: Path) -> int:
    return len(list(run_dir(out).glob("samples-*.npz")))


def test_killed_launch_relaunched_equals_plain_generate(slow_setup, tmp_path, monkeypatch, capsys):
    """3 local workers are killed with their launcher mid-way; status names their stale claims and dead jobs; a
    second launch takes the claims over and finishes with the images of one plain process, each made once."""
    suite, ref = slow_setup
    out = tmp_path / "runs"
    cmd = ["launch", str(suite), "--executor", "local", "--workers", "3", "--out", str(out), "--device", "cpu",
           "--root", str(suite.parent), "--reports", str(tmp_path / "reports"), "--steps", str(KILL_STEPS)]
    first = subprocess.Popen([sys.executable, "-m", "harness", *cmd], env=env(), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    claims_dir = run_dir(out) / claims_mod.CLAIMS_DIR
    wait_for(lambda: shard_count(out) >= 1 and len(list(claims_dir.glob("*.claim"))) >= 1, "no worker made a shard")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    time.sleep(0.5)
    assert shard_count(out) < SAMPLES // BATCH, "the kill came too late"
    assert main(["status", str(suite), "--out", str(out), "--root", str(suite.parent)]) == 0
    report = capsys.readouterr().out
    assert "stale claim" in report and "is gone" in report and "launch-logs" in report
    assert "failed worker" in report and "ended without a result" in report

    monkeypatch.setattr(harness.launch, "POLL_S", 0.2)
    assert main(cmd) == 0
    indices, images, _ = images_by_index(out)
    assert list(indices) == list(range(SAMPLES))
    assert (images == images_by_index(ref)[1]).all()  # bit for bit
    timing = json.loads((run_dir(out) / TIMING_FILE).read_text())
    made = sum(b["images"] for b in timing["batches"])
    assert made <= SAMPLES + 3 * BATCH  # at most the killed workers' batches in flight were made again
    assert not list(claims_dir.glob("*.claim"))
    assert (tmp_path / "reports" / "rt" / "report.md").is_file()  # the finisher ran cost and report
    assert "12/12 images (100%)" in capsys.readouterr().out
    record = json.loads((out / "rt" / LAUNCH_RECORD).read_text())
    assert record["threads_per_worker"] == max(1, os.cpu_count() // 3)


def test_local_workers_share_the_cores_and_slurm_workers_keep_their_allocation(monkeypatch):
    """N local workers get cores // N torch threads each (never 0), set before generating; SLURM's keep torch's
    default (their allocation's cores)."""
    import torch

    from harness.launch import jobs, worker_threads
    from harness.launch.settings import LaunchSettings

    assert [worker_threads(LaunchSettings("local", n), cpus=8) for n in (1, 2, 3, 16)] == [8, 4, 2, 1]
    assert worker_threads(LaunchSettings("slurm", 4), cpus=8) is None
    seen = []
    monkeypatch.setattr(jobs, "_run", lambda command, argv: seen.append((command, torch.get_num_threads())))
    before = torch.get_num_threads()
    try:
        jobs.Worker(["suite.toml"], threads=1)()
        assert seen == [("generate", 1)]
    finally:
        torch.set_num_threads(before)


def test_a_preempted_worker_requeues_and_resumes(slow_setup, tmp_path):
    """SLURM's preemption signal (USR2, as submitit's job._interrupt sends) reaches the worker mid-run: it releases
    its claims, submitit requeues it under the same job id, and the requeued worker finishes the run."""
    suite, ref = slow_setup
    out = tmp_path / "runs"
    assert main(["launch", str(suite), "--executor", "local", "--workers", "1", "--out", str(out), "--device", "cpu",
                 "--root", str(suite.parent), "--detach", "--steps", str(KILL_STEPS)]) == 0
    record = json.loads((out / "rt" / LAUNCH_RECORD).read_text())
    worker, finisher = record["jobs"]
    claims_dir = run_dir(out) / claims_mod.CLAIMS_DIR
    wait_for(lambda: shard_count(out) >= 1 and list(claims_dir.glob("*.claim")), "the worker made no shard")
    holder = json.loads(next(claims_dir.glob("*.claim")).read_text())
    assert holder["job"] == worker["job_id"]
    os.kill(holder["pid"], signal.SIGUSR2)
    wait_for(lambda: Path(finisher["result"]).is_file(), "the launch did not finish", timeout=300)
    log = Path(worker["stdout"]).read_text()  # submitit logs to stdout
    assert "this job is preempted" in log and "Requeued job" in log
    assert log.count("Starting with JobEnvironment") == 2  # the same job ran again
    assert shard_count(out) == SAMPLES // BATCH and (images_by_index(out)[1] == images_by_index(ref)[1]).all()
    timing = json.loads((run_dir(out) / TIMING_FILE).read_text())
    assert sum(b["warmup"] for b in timing["batches"]) == 2  # two attempts of the one worker, each timed apart
    assert sum(b["images"] for b in timing["batches"]) <= SAMPLES + BATCH


def fake_sbatch(folder: Path) -> Path:
    """An `sbatch` that keeps each script it is given and answers as SLURM does, job ids 1000, 1001, ..."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    script = bin_dir / "sbatch"
    script.write_text(f"""#!/bin/sh
n=$(ls {folder}/scripts 2>/dev/null | wc -l)
mkdir -p {folder}/scripts
cp "$1" {folder}/scripts/$n.sh
echo "Submitted batch job $((1000 + n))"
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    (bin_dir / "srun").symlink_to("/bin/true")  # submitit looks for srun to tell it is on a cluster
    return bin_dir


def test_slurm_scripts_hold_the_settings(setup, tmp_path, monkeypatch):
    suite, _ = setup
    text = suite.read_text() + '\n[launch]\nexecutor = "slurm"\nworkers = 3\npartition = "from-table"\n' \
                               'account = "proj"\ntime = "1-00:00:00"\nsetup = ["module load cuda/12"]\n'
    path = tmp_path / "suite.toml"
    path.write_text(text)
    monkeypatch.setenv("PATH", f"{fake_sbatch(tmp_path)}:{os.environ['PATH']}")
    status = main(["launch", str(path), "--out", str(tmp_path / "runs"), "--root", str(suite.parent),
                   "--partition", "gpu", "--qos", "high", "--mem", "64G", "--constraint", "h100",
                   "--gpus-per-worker", "2", "--cpus-per-worker", "16", "--detach"])
    assert status == 0
    workers, finisher = ((tmp_path / "scripts" / f"{i}.sh").read_text() for i in (0, 1))
    for line in ("--array=0-2%3", "--partition=gpu", "--account=proj", "--qos=high", "--time=1440", "--mem=64G",
                 "--constraint=h100", "--gpus-per-node=2", "--ntasks-per-node=2", "--cpus-per-task=8",
                 "--signal=USR2@120", "--job-name=harness-rt"):
        assert f"#SBATCH {line}\n" in workers, line
    assert "module load cuda/12" in workers and "from-table" not in workers  # the flag overrides the table
    assert "#SBATCH --dependency=afterany:1000\n" in finisher and "#SBATCH --ntasks-per-node=1\n" in finisher
    assert "--array" not in finisher
    record = json.loads((tmp_path / "runs" / "rt" / LAUNCH_RECORD).read_text())
    assert [j["job_id"] for j in record["jobs"]] == ["1000_0", "1000_1", "1000_2", "1001"]


@pytest.mark.parametrize("extra, message", [
    (["--executor", "local", "--partition", "gpu"], "--partition: SLURM settings apply only with --executor slurm"),
    (["--executor", "local", "--time", "10"], "--time: SLURM settings apply only with --executor slurm"),
    ([], "harness launch needs --executor slurm|local"),
    (["--executor", "local", "--workers", "0"], "--workers 0"),
])
def test_bad_launch_options_stop_before_submitting(setup, tmp_path, capsys, extra, message):
    suite, _ = setup
    assert main(["launch", str(suite), "--out", str(tmp_path / "runs"), "--root", str(suite.parent), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs" / "rt" / "launch-logs").exists()


def test_unknown_executor_and_bad_launch_table(setup, tmp_path, capsys):
    suite, _ = setup
    with pytest.raises(SystemExit) as exit_info:
        main(["launch", str(suite), "--executor", "pbs"])
    assert exit_info.value.code == 2 and "invalid choice: 'pbs'" in capsys.readouterr().err
    path = tmp_path / "suite.toml"
    path.write_text(suite.read_text() + '\n[launch]\ntime = "soon"\n')
    assert main(["launch", str(path), "--executor", "local", "--root", str(suite.parent)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "[launch]" in err and "time" in err


def test_missing_submitit_and_a_folder_without_atomic_creation(setup, tmp_path, capsys, monkeypatch):
    suite, _ = setup
    args = ["launch", str(suite), "--executor", "local", "--out", str(tmp_path / "runs"), "--root", str(suite.parent)]
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "submitit" else real(name, *a))
    assert main(args) == 2
    assert "needs submitit" in capsys.readouterr().err
    monkeypatch.setattr(importlib.util, "find_spec", real)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert main([*args[:3], "slurm", *args[4:]]) == 2
    assert "--executor slurm: sbatch and srun not found on PATH" in capsys.readouterr().err

    def no_links(src, dst):
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(claims_mod.os, "link", no_links)
    assert main(args) == 2
    assert "exclusive file creation (link) fails here (" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "rt" / "launch-logs").exists()


def test_status_names_a_failed_worker_with_its_log(setup, tmp_path, capsys):
    suite, _ = setup
    out = tmp_path / "runs"
    logs = out / "rt" / "launch-logs"
    logs.mkdir(parents=True)
    (logs / "77_0_result.pkl").write_bytes(b"")
    (logs / "77_0_log.err").write_text("Traceback (most recent call last):\n  ...\nRuntimeError: harness generate "
                                       "exited with status 2\nsubmitit ERROR (x) - Submitted job triggered an "
                                       "exception\n")
    job = {"kind": "worker", "job_id": "77", "stderr": str(logs / "77_0_log.err"),
           "result": str(logs / "77_0_result.pkl"), "stdout": ""}
    (out / "rt" / LAUNCH_RECORD).write_text(json.dumps({"executor": "slurm", "jobs": [job]}))
    assert main(["status", str(suite), "--out", str(out), "--root", str(suite.parent)]) == 0
    report = capsys.readouterr().out
    assert f"{RUN}" in report and f"0/{SAMPLES} (0%)" in report
    assert f"failed worker: job 77: RuntimeError: harness generate exited with status 2; log {logs}" in report


def test_a_worker_of_two_processes_is_one_torch_distributed_group(setup, tmp_path, monkeypatch):
    """--gpus-per-worker 2 (here on CPUs, gloo): the worker's two tasks form one process group, both claim units,
    and the images equal one process's."""
    suite, ref = setup
    out = tmp_path / "runs"
    monkeypatch.setattr(harness.launch, "POLL_S", 0.2)
    assert main(["launch", str(suite), "--executor", "local", "--workers", "1", "--gpus-per-worker", "2",
                 "--out", str(out), "--device", "cpu", "--root", str(suite.parent)]) == 0
    assert (images_by_index(out)[1] == images_by_index(ref)[1]).all()
    record = json.loads((out / "rt" / LAUNCH_RECORD).read_text())
    assert "(rank 0 of 2)" in Path(record["jobs"][0]["stderr"]).read_text()  # one group of two
    timing = json.loads((run_dir(out) / TIMING_FILE).read_text())
    assert sum(b["warmup"] for b in timing["batches"]) == 2  # both ranks made batches
    assert sum(b["images"] for b in timing["batches"]) == SAMPLES  # and none twice
