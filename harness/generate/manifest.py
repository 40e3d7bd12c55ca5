"""A run's manifest.json: its resolved config and hash, the checkpoints' sha256 and the environment, and the check a
rerun makes against an existing run folder (same config, grown, or changed: stop unless --fresh)."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

import harness
from harness import distributed
from harness.device import device_name
from harness.errors import HarnessError
from harness.files import file_sha256
from harness.rundir import RUN_MANIFEST, SHARD_GLOB
from harness.suite import NOT_HASHED, Run


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


def weights_fingerprint(run: Run) -> dict[str, str]:
    """sha256 of every checkpoint the run samples from, by model key: retrained weights at the same path change it."""
    return {run.model_keys[role]: file_sha256(spec.checkpoint) for role, spec in run.models.items()
            if spec.checkpoint and Path(spec.checkpoint).is_file()}


def make_manifest(run: Run, run_dir: Path, env: dict[str, Any], dry_run: bool, complete: bool,
                  models: dict[str, Any] | None = None) -> dict[str, Any]:
    """manifest.json of a run: its resolved config and hash, the checkpoints' sha256 (pinned once a shard exists:
    a checkpoint that failed to load pins nothing) and, once `models` are loaded, what was taken from each file
    (format, wrapper, EMA or trained weights, step), the environment, and whether all shards exist."""
    pinned = not dry_run and any(run_dir.glob(SHARD_GLOB))
    loaded = {run.model_keys[role]: m.checkpoint for role, m in (models or {}).items()
              if getattr(m, "checkpoint", None)}
    return {"run": run.run_id, "suite": run.suite, "config": run.config, "config_hash": run.config_hash,
            "weights_sha256": weights_fingerprint(run) if pinned else {},
            **({"checkpoints": loaded} if loaded else {}), **env, "dry_run": dry_run, "complete": complete}


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
    path = run_dir / RUN_MANIFEST
    if not path.is_file():
        if any(run_dir.glob(SHARD_GLOB)):
            raise HarnessError(f"{run_dir}: sample shards without a {RUN_MANIFEST}; their config is unknown. "
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
