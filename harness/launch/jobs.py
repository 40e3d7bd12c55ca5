"""What a `harness launch` job runs: a worker (claim -> generate -> release until the suite's runs are made) and the
finisher (after the workers: whatever is left, then cost, evaluation and report). Both are picklable callables that
submitit runs; a worker's checkpoint (SLURM's preemption or time-limit signal) releases its claims and requeues it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any


def _run(command: str, argv: Sequence[str]) -> None:
    """`harness COMMAND ARGV` in this process; an exit status other than 0 fails the job (its log has the reason)."""
    from harness.cli import main

    status = main([command, *argv])
    if status:
        raise RuntimeError(f"harness {command} exited with status {status} (the message is above in this log)")


class Worker:
    """A launch worker: `harness generate` on the suite, which claims units until every run is made. With G GPUs the
    worker's G tasks form one torch.distributed group (submitit sets RANK, WORLD_SIZE, MASTER_ADDR/PORT)."""

    def __init__(self, argv: Sequence[str], gpus: int = 1, threads: int | None = None) -> None:
        self.argv = list(argv)
        self.gpus = gpus
        self.threads = threads

    def __call__(self) -> None:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        if self.gpus > 1:
            from submitit.helpers import TorchDistributedEnvironment

            TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        _run("generate", self.argv)

    def checkpoint(self) -> Any:
        """Preempted or out of time: give the claims back at once (others may take them) and requeue; the requeued
        worker resumes, keeping every shard written (claims it did not release go to it by its job id)."""
        from submitit.helpers import DelayedSubmission

        from harness.generate.claims import release_everything

        release_everything()
        return DelayedSubmission(Worker(self.argv, self.gpus, self.threads))


class Finisher:
    """The last job: waits for the given local worker processes (SLURM orders it by a dependency instead), then
    `harness bench`: generation of anything the workers left (a crashed worker's units), cost, evaluation, report."""

    def __init__(self, argv: Sequence[str], wait_pids: Sequence[int] = (), poll: float = 1.0) -> None:
        self.argv = list(argv)
        self.wait_pids = list(wait_pids)
        self.poll = poll

    def __call__(self) -> None:
        from harness.generate.claims import pid_alive

        while any(pid_alive(pid) for pid in self.wait_pids):
            time.sleep(self.poll)
        _run("bench", self.argv)
