"""Sample generation for a suite's runs: per-image seeds, shards across processes, resume, manifests, progress.

Image i of a run uses seed `suite.seed + i` for everything random, so a run's images do not depend on the batch
size or the number of processes. A run's index range is cut into shards of `batch_size` images; shard k goes to
rank k mod world_size and is written as runs/<suite>/<run-id>/samples-<first:06d>.npz (arr_0 uint8 NHWC, labels,
indices) under a temporary name, then renamed. A rerun keeps every shard that loads with the right indices and
regenerates the rest; a rerun whose config hash changed stops unless started --fresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import harness
from harness import distributed
from harness.errors import HarnessError
from harness.cost import device_name, peak_memory_mb, reset_peak_memory
from harness.models import FlowModel, ModelSpec, build_model
from harness.precision import precision_context
from harness.sampling import generate
from harness.suite import NOT_HASHED, Run, Suite

MANIFEST = "manifest.json"
ADM_NPZ = "samples.npz"
COST = "cost.json"
TIMING = "timing.json"  # the timed batches of the generation, which cost.json's throughput comes from
SHARD_GLOB = "samples-[0-9]*.npz"


#################################################################################
#                          Shards: layout, reading, writing                     #
#################################################################################


def plan_shards(samples: int, batch_size: int) -> list[range]:
    """The image-index ranges of a run's shards: consecutive blocks of batch_size (the last may be shorter)."""
    return [range(first, min(first + batch_size, samples)) for first in range(0, samples, batch_size)]


def rank_shards(shards: Sequence[range], rank: int, world_size: int) -> list[range]:
    """The shards one rank generates: round-robin by shard number, so the files do not depend on world_size."""
    return list(shards[rank::world_size])


def shard_path(run_dir: Path, first: int) -> Path:
    return run_dir / f"samples-{first:06d}.npz"


def run_dir_of(runs_root: str | Path, run: Run) -> Path:
    """runs/<suite>/<run-id>/."""
    return Path(runs_root) / run.suite / run.run_id


def read_shard(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 NHWC, labels int64, indices int64) of one shard; HarnessError if it is unreadable or malformed."""
    try:
        with np.load(path, allow_pickle=False) as data:
            images, labels, indices = data["arr_0"], data["labels"], data["indices"]
    except Exception as err:  # truncated zip, bad CRC, missing member, not an npz at all
        raise HarnessError(f"{path}: unreadable shard ({type(err).__name__}: {err})") from err
    n = len(indices)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != n or images.shape[-1] != 3:
        raise HarnessError(f"{path}: arr_0 must be uint8 [{n}, H, W, 3], found {images.dtype} {list(images.shape)}")
    if labels.shape != (n,) or labels.dtype != np.int64 or indices.dtype != np.int64:
        raise HarnessError(f"{path}: labels and indices must be int64 [{n}]")
    return images, labels, indices


def shard_is_valid(path: Path, indices: range, labels: np.ndarray | None = None) -> bool:
    """Whether a finished shard exists for exactly `indices` (and, when given, the expected labels)."""
    if not path.is_file():
        return False
    try:
        _, got_labels, got_indices = read_shard(path)
    except HarnessError:
        return False
    if not np.array_equal(got_indices, np.arange(indices.start, indices.stop)):
        return False
    return labels is None or np.array_equal(got_labels, labels)


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write via a hidden temporary file in the same folder, fsync it, then rename over `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_shard(path: Path, images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> None:
    """One shard, atomically: a reader sees either no file or the complete one."""
    _atomic_write(path, lambda f: np.savez(f, arr_0=images, labels=labels.astype(np.int64),
                                            indices=np.asarray(indices, dtype=np.int64)))


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """A JSON file, atomically."""
    _atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def read_samples(run_dir: Path, samples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All images and labels of a run in index order (the first `samples` of them); checks nothing is missing."""
    shards = sorted(run_dir.glob(SHARD_GLOB))
    if not shards:
        raise HarnessError(f"{run_dir}: no sample shards; run `harness generate` first")
    parts = [read_shard(p) for p in shards]
    indices = np.concatenate([p[2] for p in parts])
    n = len(indices) if samples is None else samples
    if len(indices) < n or not np.array_equal(indices[:n], np.arange(n)):
        raise HarnessError(f"{run_dir}: shards hold {len(indices)} images, not indices 0..{n - 1} in order")
    return np.concatenate([p[0] for p in parts])[:n], np.concatenate([p[1] for p in parts])[:n]


def write_adm_npz(run_dir: Path, samples: int) -> Path:
    """runs/.../samples.npz in ADM's evaluator format: arr_0 only, the run's first `samples` images."""
    images, _ = read_samples(run_dir, samples)
    out = run_dir / ADM_NPZ
    _atomic_write(out, lambda f: np.savez(f, arr_0=images))
    return out


#################################################################################
#                        Labels, manifests, environment                         #
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
    from harness.prompts import prompt_indices

    return prompt_indices(run.samples, run.images_per_prompt)


def _git_commit(root: Path) -> str | None:
    """HEAD of the git checkout holding `root`, with `-dirty` when tracked files changed; None outside git."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")


def environment(device: torch.device) -> dict[str, Any]:
    """Where samples come from, for the manifest: versions, device, world size, the harness code's git commit."""
    return {
        "versions": {"harness": harness.__version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "device": device_name(device),
        "world_size": distributed.get_world_size(),
        "git_commit": _git_commit(Path(harness.__file__).resolve().parent),
    }


_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so that a suite hashes each checkpoint once."""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _FINGERPRINTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
        _FINGERPRINTS[key] = digest.hexdigest()
    return _FINGERPRINTS[key]


def weights_fingerprint(run: Run) -> dict[str, str]:
    """sha256 of every checkpoint the run samples from, by model key: retrained weights at the same path change it."""
    return {run.model_keys[role]: file_sha256(spec.checkpoint) for role, spec in run.models.items()
            if spec.checkpoint and Path(spec.checkpoint).is_file()}


def make_manifest(run: Run, env: dict[str, Any], dry_run: bool, complete: bool,
                  models: dict[str, FlowModel] | None = None) -> dict[str, Any]:
    """manifest.json of a run: its resolved config and hash, the checkpoints' sha256 and (once `models` are loaded)
    what was taken from each file (format, wrapper, EMA or trained weights, step), the environment, and whether all
    shards exist."""
    loaded = {run.model_keys[role]: m.checkpoint for role, m in (models or {}).items()
              if getattr(m, "checkpoint", None)}
    return {"run": run.run_id, "suite": run.suite, "config": run.config, "config_hash": run.config_hash,
            "weights_sha256": {} if dry_run else weights_fingerprint(run), **({"checkpoints": loaded} if loaded else {}),
            **env, "dry_run": dry_run, "complete": complete}


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


def check_manifest(run: Run, run_dir: Path) -> str:
    """How an existing run directory relates to `run`: "new", "same", or "grown" (only samples increased).

    A run whose earlier config differs in anything that changes the samples, or whose checkpoint files changed
    (sha256, e.g. after `make testbed`), raises a HarnessError naming the run and the differences and saying to
    pass --fresh.
    """
    path = run_dir / MANIFEST
    if not path.is_file():
        if any(run_dir.glob(SHARD_GLOB)):
            raise HarnessError(f"{run_dir}: sample shards without a {MANIFEST}; their config is unknown. "
                               f"Pass --fresh to start run {run.run_id!r} over")
        return "new"
    try:
        old = json.loads(path.read_text())
        old_config, old_hash = old["config"], old["config_hash"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise HarnessError(f"{path}: unreadable manifest ({err}); pass --fresh to start run {run.run_id!r} "
                           f"over") from err
    old_weights = old.get("weights_sha256") or {}
    new_weights = weights_fingerprint(run) if old_weights else {}
    changed_weights = sorted(k for k in old_weights if k in new_weights and old_weights[k] != new_weights[k])
    if changed_weights:
        detail = "; ".join(f"[models.{k}] {run.config['models'][k]['checkpoint']}: sha256 {old_weights[k][:12]} -> "
                           f"{new_weights[k][:12]}" for k in changed_weights)
        raise HarnessError(f"run {run.run_id!r}: its checkpoint changed since {run_dir} was generated ({detail}). "
                           f"Pass --fresh to delete that run's samples and start over, or use another --out")
    if old_hash == run.config_hash:
        return "same"
    before, after = _flatten(old_config), _flatten(run.config)
    unhashed = {f"{section}.{key}" for section, key in NOT_HASHED}
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k) and k not in unhashed)
    if changed == ["run.samples"] and run.labels == "uniform" and after["run.samples"] > before["run.samples"]:
        return "grown"  # uniform labels do not depend on the count: existing images stay valid
    detail = "; ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in changed) or "hash differs"
    raise HarnessError(f"run {run.run_id!r}: its config changed since {run_dir} was generated ({detail}). "
                       f"Pass --fresh to delete that run's samples and start over, or use another --out")


#################################################################################
#                                 Generation                                    #
#################################################################################


class ModelCache:
    """Models built once per suite model key (and VAE decoders once per name), shared across a suite's runs.

    With `dry_run`, models without a checkpoint get their zero-initialised layers redrawn (harness.dryrun) and VAEs
    are built with random weights from `vae_config` (default SD-VAE's architecture); nothing is read from disk.
    """

    def __init__(self, device: torch.device, dry_run: bool = False, vae_config: dict[str, Any] | None = None,
                 root: Path | None = None):
        self.device = device
        self.dry_run = dry_run
        self.vae_config = vae_config
        self.root = root
        self.models: dict[tuple[str, bool], FlowModel] = {}
        self.decoders: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        self.prompt_sets: dict[str, Any] = {}  # harness.prompts.PromptSet by a suite's `prompts`
        self.encoded: dict[tuple[str, str], Any] = {}  # PromptConditions by (model key, prompts)

    def run_models(self, run: Run, cache_dir: Path) -> dict[str, FlowModel]:
        """The models of a run by role, compiled as its `compile` option asks; for a prompt run each gets the prompt
        set encoded by its text encoder (once per model key and prompt set, cached as a file in `cache_dir`)."""
        models = {role: self.model(run.model_keys[role], spec, run.compile) for role, spec in run.models.items()}
        if run.prompts is None:
            return models
        from harness.prompts import load_prompts
        from harness.prompts.encode import prompt_conditions

        if run.prompts not in self.prompt_sets:
            self.prompt_sets[run.prompts] = load_prompts(run.prompts, self.root)
        prompts = self.prompt_sets[run.prompts]
        if run.samples > len(prompts) * run.images_per_prompt:
            raise HarnessError(f"run {run.run_id!r}: {run.samples} images need "
                               f"{-(-run.samples // run.images_per_prompt)} prompts at {run.images_per_prompt} "
                               f"per prompt; prompt set {run.prompts!r} has {len(prompts)}")
        for role, spec in run.models.items():
            key = (run.model_keys[role], run.prompts)
            if key not in self.encoded:
                self.encoded[key] = prompt_conditions(spec, prompts, self.device, cache_dir, self.root)
                width, want = self.encoded[key].states.shape[-1], getattr(models[role].config, "text_dim", None)
                if want is not None and width != want:
                    raise HarnessError(f"[models.{key[0]}]: text encoder {spec.text_encoder!r} gives {width}-channel "
                                       f"states, {spec.arch} takes {want} (field 'text_encoder_options')")
            models[role].conditions = self.encoded[key]
        return models

    def model(self, key: str, spec: ModelSpec, compiled: bool = False) -> FlowModel:
        """The model of [models.<key>] (torch.compile'd when `compiled`); without a checkpoint its random weights are
        seeded from the key, so every process and every --only selection builds the same ones."""
        if (key, compiled) not in self.models:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))
                model = build_model(spec, self.device)
                if self.dry_run and not spec.checkpoint:
                    from harness.dryrun import redraw_zero_init

                    redraw_zero_init(model)
            if compiled:
                from harness.precision import compile_model

                model = compile_model(model)
            self.models[key, compiled] = model
        return self.models[key, compiled]

    def decoder(self, vae: str | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The latent-to-pixel decoder of a VAE name (None for pixel-space models)."""
        if vae is None:
            return None
        if vae not in self.decoders:
            self.decoders[vae] = load_decoder(vae, self.device, self.dry_run, self.vae_config, self.root)
        return self.decoders[vae]


def load_decoder(vae: str, device: torch.device, random_init: bool = False, config: dict[str, Any] | None = None,
                 root: Path | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The decoder of VAE `vae` from harness.models.vae.load_vae (latents -> pixels in [-1, 1])."""
    from harness.models.vae import load_vae

    return load_vae(vae, device, random_init=random_init, config=config, root=root)


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
    kept: int  # images of this process's shards found valid and kept
    seconds: float


def _preflight(runs: Sequence[Run], runs_root: Path, fresh: bool, root: Path | None = None,
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
    """Generate this process's missing shards of one run; rank 0 writes the manifest and the ADM npz.

    `env` is environment()'s record for the manifest; `state` is what check_manifest said about the run folder.
    `upto` generates only the run's first images (whole shards; harness search): the run stays the same run,
    marked incomplete until all its shards exist.
    """
    world = distributed.get_world_size()
    desc = run.run_id if world == 1 else f"{run.run_id} (rank 0 of {world})"
    with tqdm(unit="img", desc=desc, dynamic_ncols=True, disable=not distributed.is_main()) as bar:
        batches = run_batches(run, run_dir, cache, env, state, fresh, dry_run, adm_npz, upto, bar)
        return round_robin({run.run_id: batches})[run.run_id]


def round_robin(active: dict[str, Iterator[None]]) -> dict[str, RunResult]:
    """Drive run_batches generators one batch each in turn until all are done; their RunResults by run id."""
    results: dict[str, RunResult] = {}
    while active:
        for run_id, batches in list(active.items()):
            try:
                next(batches)
            except StopIteration as stop:
                results[run_id] = stop.value
                del active[run_id]
    return results


def run_batches(run: Run, run_dir: Path, cache: ModelCache, env: dict[str, Any], state: str, fresh: bool,
                dry_run: bool, adm_npz: bool, upto: int | None, bar: tqdm) -> Generator[None, None, RunResult]:
    """generate_run's work as a generator that yields after every batch (so that generate_suite can interleave
    runs) and returns the RunResult. `bar` counts the images; its total grows by this run's share."""
    rank, world = distributed.get_rank(), distributed.get_world_size()
    device = cache.device
    if distributed.is_main():
        if fresh and run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        for tmp in run_dir.glob(".samples-*.tmp"):  # left by a killed process
            tmp.unlink(missing_ok=True)
        if state == "grown":  # metrics and cached features describe fewer images than the run now has
            distributed.print0(f"{run.run_id}: samples increased to {run.samples}; keeping the existing images")
            for stale in (run_dir / "metrics.json", run_dir / ADM_NPZ):
                stale.unlink(missing_ok=True)
        write_json(run_dir / MANIFEST, make_manifest(run, env, dry_run, complete=False))
    distributed.barrier()

    models = cache.run_models(run, run_dir.parent)
    decode = cache.decoder(run.models["main"].vae)
    all_labels = prompt_labels(run) if run.prompts else run_labels(run, models["main"].num_classes)
    planned = prefix_shards(run, upto)
    mine = rank_shards(planned, rank, world)
    expected = {s.start: (all_labels[s.start:s.stop] if all_labels is not None else None) for s in mine}
    todo = [s for s in mine if not shard_is_valid(shard_path(run_dir, s.start), s, expected[s.start])]
    kept = sum(len(s) for s in mine) - sum(len(s) for s in todo)
    bar.total = (bar.total or 0) + sum(len(s) for s in mine)
    bar.update(kept)
    batches: list[dict[str, Any]] = []  # the timed batches cost.json's throughput comes from; the first warms up
    peak_mb = 0.0
    for s in todo:
        models = cache.run_models(run, run_dir.parent)  # models are shared by runs: set this run's conditions
        labels = torch.from_numpy(expected[s.start]) if all_labels is not None else None
        timing: dict[str, Any] = {"images": len(s), "warmup": not batches}
        reset_peak_memory(device)
        with precision_context(run.precision, device):
            images, used_labels = generate(models, run.guidance, run.sampler, [run.seed + i for i in s],
                                           labels=labels, device=device,
                                           decode=_finite_check(run.run_id, s, decode), timing=timing)
        peak_mb = max(peak_mb, peak_memory_mb(device))
        write_shard(shard_path(run_dir, s.start), images, used_labels, np.arange(s.start, s.stop))
        batches.append(timing)
        bar.update(len(s))
        yield
    distributed.barrier()

    if distributed.is_main():
        if batches:
            record_timing(run, run_dir, batches, device_name(device), peak_mb)
        _finish(run, run_dir, planned)
        complete = all(shard_path(run_dir, s.start).is_file() for s in plan_shards(run.samples, run.batch_size))
        if adm_npz and complete:
            write_adm_npz(run_dir, run.samples)
        write_json(run_dir / MANIFEST, make_manifest(run, env, dry_run, complete=complete, models=models))
    return RunResult(run.run_id, run_dir, sum(len(s) for s in todo), kept, sum(b["total"] for b in batches))


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
    states = _preflight(runs, root_dir, fresh, suite.root, dry_run)
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


def read_timing(run: Run, run_dir: Path, device: str) -> dict[str, Any] | None:
    """The run's timing.json when it was recorded for this config on this device, else None."""
    path = run_dir / TIMING
    try:
        timing = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(timing, dict) or timing.get("config_hash") != run.config_hash or timing.get("device") != device:
        return None
    return timing


def record_timing(run: Run, run_dir: Path, batches: list[dict[str, Any]], device: str, peak_mem_mb: float) -> None:
    """Add this attempt's timed batches to timing.json (those of earlier attempts at the same config and device are
    kept, so a resumed run's throughput covers all of its batches)."""
    old = read_timing(run, run_dir, device) or {"batches": [], "peak_mem_mb": 0.0}
    write_json(run_dir / TIMING, {"config_hash": run.config_hash, "device": device, "batch_size": run.batch_size,
                                  "precision": run.precision, "compile": run.compile,
                                  "peak_mem_mb": max(old["peak_mem_mb"], peak_mem_mb),
                                  "batches": old["batches"] + batches})


def throughput_from_timing(run: Run, timing: dict[str, Any]) -> dict[str, Any]:
    """cost.json's throughput fields from the generation's timed batches.

    Warm-up batches (the first of each attempt: allocations, kernel selection, torch.compile) are left out, and so
    are shorter last batches (another shape) when full ones exist. A run of a single batch has only its warm-up to
    report, and says so in `throughput_source`. With compile, `compile_seconds` is the warm-up batch's excess over
    the median timed batch.
    """
    from harness.cost import throughput_stats

    batches = timing["batches"]
    steady = [b for b in batches if not b["warmup"]]
    timed = [b for b in steady if b["images"] == run.batch_size] or steady
    source = "generation" if timed else "generation (warm-up batch only)"
    stats = throughput_stats(timed or batches, run.batch_size, run.sampler.steps)
    warmups = [b for b in batches if b["warmup"]]
    compile_seconds = None
    if run.compile and warmups and timed:
        typical = statistics.median(b["total"] / b["images"] for b in timed)
        compile_seconds = max(0.0, statistics.median(b["total"] - typical * b["images"] for b in warmups))
    return {**stats, "peak_mem_mb": timing["peak_mem_mb"], "batch_size": run.batch_size,
            "batch_seconds": [b["denoise"] for b in timed or batches], "throughput_source": source,
            "compile_seconds": compile_seconds}


def measure_costs(runs: Sequence[Run], runs_root: str | Path, device: str | None = None, dry_run: bool = False,
                  dry_vae_config: dict[str, Any] | None = None, root: Path | None = None, warmup: int = 1,
                  repeats: int = 2, cache: ModelCache | None = None, progress: bool = True) -> list[Path]:
    """cost.json per run: FLOPs (harness.cost.run_cost), throughput, and the rate reached against the device's.

    Throughput comes from the generation's own timed batches (timing.json, throughput_from_timing). A run with none
    for its config on this device (every shard was resumed from an earlier process) keeps a cost.json measured for
    the same config on the same device, or gets a short timing pass (harness.cost.measure_throughput, `warmup` +
    `repeats` batches) on the models of `cache` (built as generate_suite does from `dry_run` and `dry_vae_config`
    when not given). Prints one summary line.
    """
    from harness.cost import achieved_rate, matmul_calibration, measure_throughput, run_cost

    dev = distributed.resolve_device(device)
    name = device_name(dev)
    cache = cache or ModelCache(dev, dry_run, dry_vae_config, root)
    written, passes = [], 0
    start = time.perf_counter()
    for run in tqdm(runs, desc="cost", unit="run", dynamic_ncols=True, disable=not progress, leave=False):
        run_dir = run_dir_of(runs_root, run)
        path = run_dir / COST
        timing = read_timing(run, run_dir, name)
        if timing is None and path.is_file():
            old = json.loads(path.read_text())
            if old.get("config_hash") == run.config_hash and old.get("device") == name:
                continue
        if timing is not None:
            throughput = throughput_from_timing(run, timing)
        else:
            passes += 1
            throughput = {**measure_throughput(cache.run_models(run, run_dir.parent), run.guidance, run.sampler,
                                               run.batch_size, dev, decode=cache.decoder(run.models["main"].vae),
                                               warmup=warmup, repeats=repeats, precision=run.precision),
                          "throughput_source": "timing pass", "compile_seconds": None}
        flops = run_cost(run.models, run.guidance, run.sampler)
        cost = {**flops, **throughput, "device": name, "precision": run.precision, "compile": run.compile,
                **achieved_rate(flops, throughput["img_per_s"], matmul_calibration(str(dev), run.precision)),
                "config_hash": run.config_hash}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, cost)
        written.append(path)
    if progress and written:
        spreads = [json.loads(p.read_text())["img_per_s_spread"] for p in written]
        distributed.print0(f"cost: {len(written)} run(s) in {time.perf_counter() - start:.1f} s, throughput from "
                           f"generation for {len(written) - passes}, timing pass for {passes}; img/s spread (IQR / "
                           f"median) {statistics.median(spreads):.1%} median, {max(spreads):.1%} max")
    return written
