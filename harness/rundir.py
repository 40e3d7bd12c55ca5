"""The run folder, runs/<suite>/<run-id>/: its file names and its sample shards, for every stage that reads or
writes one (generate, cost, evaluate, export, report, search).

A run's images are cut into shards `samples-<first index:06d>.npz` (uint8 NHWC `arr_0`, int64 `labels` and
`indices`), each written atomically; `manifest.json` holds the resolved config, `timing.json` the timed generation
batches, `cost.json` FLOPs and throughput, `metrics.json` the scores, `samples.npz` ADM's evaluator batch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Protocol

import numpy as np

from harness.errors import HarnessError
from harness.files import atomic_write

RUN_MANIFEST = "manifest.json"
ADM_NPZ = "samples.npz"
COST_FILE = "cost.json"
TIMING_FILE = "timing.json"  # the timed batches of the generation, which cost.json's throughput comes from
METRICS_FILE = "metrics.json"
SHARD_GLOB = "samples-[0-9]*.npz"
SHARD_NAME = re.compile(r"^samples-(\d+)\.npz$")


class RunId(Protocol):
    """What names a run folder: its suite and run id (a harness.suite.Run)."""

    suite: str
    run_id: str


def run_dir_of(runs_root: str | os.PathLike, run: RunId) -> Path:
    """runs/<suite>/<run-id>/."""
    return Path(runs_root) / run.suite / run.run_id


def shard_path(run_dir: Path, first: int) -> Path:
    """The shard whose first image index is `first`."""
    return Path(run_dir) / f"samples-{first:06d}.npz"


def shard_paths(run_dir: str | os.PathLike) -> list[Path]:
    """The shards present in a run folder, in order of their first image index."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob(SHARD_GLOB) if (m := SHARD_NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def list_shards(run_dir: str | os.PathLike) -> list[Path]:
    """The run's shards in index order, checked to exist and to be contiguous from image 0."""
    run_dir = Path(run_dir)
    paths = shard_paths(run_dir)
    if not paths:
        raise HarnessError(f"{run_dir}: no sample shards (samples-<first index>.npz); run `harness generate` first")
    expected = 0
    for path in paths:
        first = int(SHARD_NAME.match(path.name).group(1))
        if first != expected:
            raise HarnessError(f"{path}: starts at index {first}, expected {expected} (missing or overlapping shard)")
        with np.load(path, allow_pickle=False) as data:
            expected = first + len(data["indices"])
    return paths


def read_shard(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 NHWC, labels int64, indices int64) of one shard; HarnessError if it is unreadable or malformed."""
    try:
        with np.load(path, allow_pickle=False) as data:
            images, labels, indices = data["arr_0"], data["labels"], data["indices"]
    except Exception as err:  # truncated zip, bad CRC, missing member, not an npz at all
        raise HarnessError(f"{path}: unreadable shard ({type(err).__name__}: {err})") from err
    if indices.ndim != 1:
        raise HarnessError(f"{path}: indices must be int64 [N], found {indices.dtype} {list(indices.shape)}")
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


def write_shard(path: Path, images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> None:
    """One shard, atomically: a reader sees either no file or the complete one."""
    atomic_write(path, lambda f: np.savez(f, arr_0=images, labels=labels.astype(np.int64),
                                           indices=np.asarray(indices, dtype=np.int64)))


def read_samples(run_dir: Path, samples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All images and labels of a run in index order (the first `samples` of them); checks nothing is missing."""
    shards = shard_paths(run_dir)
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
    return atomic_write(run_dir / ADM_NPZ, lambda f: np.savez(f, arr_0=images))
