"""Sample generation for a suite's runs: per-image seeds, shards across processes, resume, manifests, progress.

Image i of a run uses seed `suite.seed + i` for everything random, so a run's images do not depend on the batch
size or the number of processes. A run's index range is cut into shards of `batch_size` images, written as
runs/<suite>/<run-id>/samples-<first:06d>.npz (arr_0 uint8 NHWC, labels, indices) under a temporary name, then
renamed. Consecutive shards form units that processes claim (harness.generate.claims): any number of processes
(torchrun ranks, several `harness generate`, `harness launch` workers) share a runs folder, each unit made once.
A rerun keeps every shard that loads with the right indices and regenerates the rest; a rerun whose config hash
changed stops unless started --fresh (which must not be given to a process that shares the folder with others).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from harness import distributed
from harness.cost.throughput import record_timing
from harness.device import device_name, peak_memory_mb, reset_peak_memory
from harness.errors import HarnessError
from harness.files import write_json
from harness.generate.claims import CLAIMS_DIR, Claims, locked, plan_units, shard_stats, unit_done
from harness.generate.manifest import check_manifest, environment, make_manifest
from harness.generate.model_cache import ModelCache
from harness.numerics import precision_context
from harness.prompts import prompt_indices
from harness.rundir import (ADM_NPZ, METRICS_FILE, RUN_MANIFEST, SHARD_GLOB, run_dir_of, shard_is_valid, shard_path,
                            write_adm_npz, write_shard)
from harness.sampling import generate
from harness.suite import Run, Suite

POLL_S = 0.5  # pause between looks at units other processes hold
TIMING_LOCK = ".timing.lock"  # held while timing.json is read and rewritten (processes add their batches)


#################################################################################
#                               Shards of a run                                 #
#################################################################################


def plan_shards(samples: int, batch_size: int) -> list[range]:
    """The image-index ranges of a run's shards: consecutive blocks of batch_size (the last may be shorter)."""
    return [range(first, min(first + batch_size, samples)) for first in range(0, samples, batch_size)]


#################################################################################
#                                   Labels                                      #
#################################################################################


def balanced_labels(samples: int, num_classes: int, seed: int) -> np.ndarray:
    """Every class equally often (counts differ by at most one), in an order shuffled with the suite seed."""
    labels = np.arange(samples, dtype=np.int64) % num_classes
    return np.random.default_rng(seed).permutation(labels)


def run_labels(run: Run, num_classes: int) -> np.ndarray | None:
    """The labels of all of a run's images for `balanced`; None for `uniform` (drawn from each image's generator)."""
    if run.labels == "balanced":
        return balanced_labels(run.samples, num_classes, run.seed)
    return None


def prompt_labels(run: Run) -> np.ndarray:
    """The labels of a prompt run's images: image i gets prompt i // images_per_prompt."""
    return prompt_indices(run.samples, run.images_per_prompt)


#################################################################################
#                                 Generation                                    #
#################################################################################


def _finite_check(run_id: str, indices: range, decode: Callable | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A decode step that stops the run when a sample holds NaN or Inf (before uint8 conversion hides it)."""

    def checked(x: torch.Tensor) -> torch.Tensor:
        pixels = decode(x) if decode is not None else x
        bad = ~(torch.isfinite(x).flatten(1).all(1) & torch.isfinite(pixels).flatten(1).all(1))
        if bad.any():
            which = [indices[i] for i in torch.nonzero(bad).flatten().tolist()]
            shown = ", ".join(map(str, which[:16])) + (f", ... ({len(which)} images)" if len(which) > 16 else "")
            raise HarnessError(f"run {run_id!r}: NaN or Inf in the samples of image indices [{shown}] "
                               f"(seeds = suite seed + index); nothing was written for them")
        return pixels

    return checked


@dataclass
class RunResult:
    """What generate_suite did for one run."""

    run_id: str
    run_dir: Path
    generated: int  # images this process generated
    kept: int  # images of the run already made (by earlier attempts or other processes)
    seconds: float  # this process's generation time (its batches only)
    claim_seconds: float = 0.0  # time spent on claim files (harness.generate.claims)


def preflight_runs(runs: Sequence[Run], runs_root: Path, fresh: bool, root: Path | None = None,
               dry_run: bool = False) -> dict[str, str]:
    """Check every selected run before any work: checkpoints and VAEs present (harness.preflight; a dry run needs only
    diffusers for its random VAE), configs unchanged."""
    if dry_run:
        if any(spec.vae for run in runs for spec in run.models.values()):
            from harness.models.vae import require_diffusers

            require_diffusers()
    else:
        from harness.preflight import require_assets

        require_assets(runs, root, generate=True, evaluate=False)
    return {run.run_id: "new" if fresh else check_manifest(run, run_dir_of(runs_root, run)) for run in runs}


def prefix_shards(run: Run, upto: int | None = None) -> list[range]:
    """The shards of a run's first `upto` images (all of them for None); `upto` must end on a shard boundary, so
    that generating more later keeps every shard already written (harness search's rungs)."""
    shards = plan_shards(run.samples, run.batch_size)
    if upto is None or upto >= run.samples:
        return shards
    if upto < 1 or upto % run.batch_size:
        raise HarnessError(f"run {run.run_id!r}: {upto} images is not a whole number of shards of batch_size "
                           f"{run.batch_size}")
    return shards[:upto // run.batch_size]


def generate_run(run: Run, run_dir: Path, cache: ModelCache, env: dict[str, Any], state: str = "new",
                 fresh: bool = False, dry_run: bool = False, adm_npz: bool = False,
                 upto: int | None = None) -> RunResult:
    """Generate the shards of one run that this process claims; rank 0 writes the manifest and the ADM npz.

    `env` is environment()'s record for the manifest; `state` is what check_manifest said about the run folder.
    `upto` generates only the run's first images (whole shards; harness search): the run stays the same run,
    marked incomplete until all its shards exist.
    """
    world = distributed.get_world_size()
    desc = run.run_id if world == 1 else f"{run.run_id} (rank 0 of {world})"
    with tqdm(unit="img", desc=desc, dynamic_ncols=True, disable=not distributed.is_main()) as bar:
        batches = run_batches(run, run_dir, cache, env, state, fresh, dry_run, adm_npz, upto, bar)
        return round_robin({run.run_id: batches})[run.run_id]


def round_robin(active: dict[str, Iterator[bool]], poll: float = POLL_S) -> dict[str, RunResult]:
    """Drive run_batches generators one step each in turn until all are done; their RunResults by run id. A round in
    which every generator only waited (units held by other processes) is followed by a pause of `poll` s."""
    results: dict[str, RunResult] = {}
    while active:
        progressed = False
        for run_id, batches in list(active.items()):
            try:
                progressed |= next(batches)
            except StopIteration as stop:
                results[run_id] = stop.value
                del active[run_id]
                progressed = True
        if not progressed:
            time.sleep(poll)
    return results


def run_batches(run: Run, run_dir: Path, cache: ModelCache, env: dict[str, Any], state: str, fresh: bool,
                dry_run: bool, adm_npz: bool, upto: int | None, bar: tqdm) -> Generator[bool, None, RunResult]:
    """generate_run's work as a generator that yields True after every batch and False when every unit left is
    claimed by another process (so that generate_suite can interleave runs and wait), and returns the RunResult.

    Each unit of shards (claims.plan_units) is claimed, its shards checked (those a .done record vouches for are
    not read) and the invalid ones generated, then marked done and released. The generator returns once every unit
    is done, by this process or others. `bar` counts the images; its total grows by this run's share.
    """
    device = cache.device
    if distributed.is_main():
        if fresh and run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if state == "grown":  # metrics and cached features describe fewer images than the run now has
            distributed.print0(f"{run.run_id}: samples increased to {run.samples}; keeping the existing images")
            for stale in (run_dir / METRICS_FILE, run_dir / ADM_NPZ):
                stale.unlink(missing_ok=True)
        write_json(run_dir / RUN_MANIFEST, make_manifest(run, run_dir, env, dry_run, complete=False))
    distributed.barrier()

    models = cache.run_models(run, run_dir.parent)
    decode = cache.decoder(run.models["main"].vae)
    all_labels = prompt_labels(run) if run.prompts else run_labels(run, models["main"].num_classes)
    planned = prefix_shards(run, upto)
    expected = {s.start: (all_labels[s.start:s.stop] if all_labels is not None else None) for s in planned}
    wanted = {s.start for s in planned}
    units = [[s for s in unit if s.start in wanted] for unit in plan_units(plan_shards(run.samples, run.batch_size))]
    pending = {unit[0].start: unit for unit in units if unit}
    bar.total = (bar.total or 0) + sum(len(s) for s in planned)
    claims = Claims(run_dir / CLAIMS_DIR)
    batches: list[dict[str, Any]] = []  # the timed batches cost.json's throughput comes from; the first warms up
    peak_mb = 0.0
    try:
        while pending:
            progressed = False
            for first, unit in list(pending.items()):
                files = [shard_path(run_dir, s.start) for s in unit]
                if unit_done(claims.folder, first, files):
                    bar.update(sum(len(s) for s in unit))
                    del pending[first]
                    continue
                if not claims.acquire(first):
                    continue
                try:
                    for s in unit:
                        for tmp in run_dir.glob(f".{shard_path(run_dir, s.start).name}.*.tmp"):  # a dead writer's
                            tmp.unlink(missing_ok=True)
                    todo = [s for s in unit if not shard_is_valid(shard_path(run_dir, s.start), s, expected[s.start])]
                    bar.update(sum(len(s) for s in unit) - sum(len(s) for s in todo))
                    lost = False
                    for s in todo:
                        if not claims.holds(first):  # taken over as stale (a stalled process): leave it
                            lost = True
                            break
                        timing = _generate_shard(run, run_dir, s, models, decode, expected[s.start], device,
                                                 warmup=not batches)
                        peak_mb = max(peak_mb, timing.pop("peak_mb"))
                        if distributed.is_main() and not batches:  # our first shard: pin the checkpoints now
                            write_json(run_dir / RUN_MANIFEST, make_manifest(run, run_dir, env, dry_run,
                                                                             complete=False))
                        batches.append(timing)
                        bar.update(len(s))
                        yield True
                    if not lost:
                        claims.finish(first, shard_stats(files))
                        del pending[first]
                finally:
                    claims.release(first)
                progressed = True
            if pending and not progressed:
                yield False
    finally:  # also when stopped (preemption, an error): the batches made were made, and timed
        claims.close()
        if batches:
            with locked(run_dir / TIMING_LOCK):
                record_timing(run, run_dir, batches, device_name(device), peak_mb)
    distributed.barrier()

    generated = sum(b["images"] for b in batches)
    if distributed.is_main():
        _finish(run, run_dir, planned)
        complete = all(shard_path(run_dir, s.start).is_file() for s in plan_shards(run.samples, run.batch_size))
        if adm_npz and complete:
            write_adm_npz(run_dir, run.samples)
        write_json(run_dir / RUN_MANIFEST, make_manifest(run, run_dir, env, dry_run, complete=complete,
                                                                models=models))
    return RunResult(run.run_id, run_dir, generated, sum(len(s) for s in planned) - generated,
                     sum(b["total"] for b in batches), claims.seconds)


def _generate_shard(run: Run, run_dir: Path, s: range, models: dict[str, Any], decode: Callable | None,
                    labels: np.ndarray | None, device: torch.device, warmup: bool) -> dict[str, Any]:
    """Generate and write the shard of images `s`; its timing record (with the batch's peak memory, "peak_mb")."""
    timing: dict[str, Any] = {"images": len(s), "warmup": warmup}
    reset_peak_memory(device)
    with precision_context(run.precision, device):
        images, used_labels = generate(models, run.guidance, run.sampler, [run.seed + i for i in s],
                                       labels=torch.from_numpy(labels) if labels is not None else None,
                                       device=device, decode=_finite_check(run.run_id, s, decode), timing=timing)
    timing["peak_mb"] = peak_memory_mb(device)
    write_shard(shard_path(run_dir, s.start), images, used_labels, np.arange(s.start, s.stop))
    return timing


def _finish(run: Run, run_dir: Path, shards: Sequence[range]) -> None:
    """Rank 0, after every rank is done: each planned shard is present and no shard outside the run's plan is in
    the folder (a run generated only up to a prefix may already hold more of its own shards)."""
    planned = {shard_path(run_dir, s.start) for s in shards}
    allowed = {shard_path(run_dir, s.start) for s in plan_shards(run.samples, run.batch_size)}
    present = set(run_dir.glob(SHARD_GLOB))
    if planned - present:
        raise HarnessError(f"run {run.run_id!r}: shard(s) missing after generation: "
                           f"{', '.join(sorted(p.name for p in planned - present))}")
    if present - allowed:
        raise HarnessError(f"run {run.run_id!r}: {run_dir} holds shard(s) outside this run's plan "
                           f"({', '.join(sorted(p.name for p in present - allowed))}); pass --fresh to start over")


def generate_suite(suite: Suite, runs: Sequence[Run] | None = None, runs_root: str | Path | None = None,
                   device: str | None = None, fresh: bool = False, adm_npz: bool = False,
                   dry_run: bool = False, dry_vae_config: dict[str, Any] | None = None,
                   cache: ModelCache | None = None, upto: int | None = None,
                   interleave: bool = True) -> list[RunResult]:
    """Generate the samples of `runs` (default: all of the suite's), resuming where earlier attempts stopped.

    Under torchrun every rank calls this with the same arguments; the process group is joined here (NCCL on CUDA,
    gloo on CPU). `runs_root` defaults to <root>/runs; `device` defaults to cuda if available, else cpu. `dry_run`
    marks the manifests and builds random models and VAEs (from `dry_vae_config`, default SD-VAE's) instead of
    reading weights (harness.dryrun prepares such a suite). A given `cache` keeps the built models for later stages.
    `upto` generates only each run's first `upto` images (whole shards; harness search).

    A single process interleaves the runs batch by batch (round robin), so that every run's timed batches sample
    the machine's speed over the whole generation: a shared machine drifts by 10-20% over minutes, and runs of equal
    work generated one after the other would differ by that much. Under torchrun (or `interleave=False`) runs go
    one after another, each rank on its share of the shards.
    """
    runs = list(suite.runs if runs is None else runs)
    root_dir = Path(runs_root) if runs_root is not None else suite.root / "runs"
    dev = distributed.resolve_device(device)
    distributed.init(dev)
    states = preflight_runs(runs, root_dir, fresh, suite.root, dry_run)
    distributed.barrier()  # every rank has read the old manifests before rank 0 rewrites them
    cache = cache or ModelCache(dev, dry_run, dry_vae_config, suite.root)
    env = environment(dev) if distributed.is_main() else {}
    if not interleave or distributed.get_world_size() > 1:
        return [generate_run(run, run_dir_of(root_dir, run), cache, env, states[run.run_id], fresh, dry_run,
                             adm_npz, upto) for run in runs]
    with tqdm(unit="img", desc=f"generate ({len(runs)} runs, interleaved)", dynamic_ncols=True) as bar:
        results = round_robin({run.run_id: run_batches(run, run_dir_of(root_dir, run), cache, env, states[run.run_id],
                                                       fresh, dry_run, adm_npz, upto, bar) for run in runs})
    return [results[run.run_id] for run in runs]
