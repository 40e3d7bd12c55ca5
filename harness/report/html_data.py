"""What the HTML report shows of each run: its files (and which are missing), seeds or prompts, and compare images."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.image import imsave

from harness.report.results import shard_paths

RUN_FILES = ("manifest.json", "cost.json", "timing.json", "metrics.json")
COMPARE_IMAGES = 64  # images per run written for the side-by-side view (whole prompts for text runs)


def read_optional(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A JSON object from a run folder, or None and why (missing, unreadable), so the page can say so."""
    if not path.is_file():
        return None, f"{path.name} missing"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return None, f"{path.name} unreadable ({err})"
    return (data, None) if isinstance(data, dict) else (None, f"{path.name} is not a JSON object")


def prompt_texts(config: Mapping[str, Any]) -> list[str] | None:
    """The prompts of a text run in file order, or None for a class run or when the prompt set cannot be read."""
    spec = (config.get("run") or {}).get("prompts") or (config.get("suite") or {}).get("prompts")
    if not spec:
        return None
    try:
        from harness.prompts import load_prompts

        return list(load_prompts(str(spec)).prompts)
    except Exception:  # noqa: BLE001 - a missing prompt file must not stop the report; prompts shown by index
        return []


def images_per_prompt(config: Mapping[str, Any]) -> int:
    """Images per prompt of a text run as its config records it (1 when absent)."""
    for section in (config.get("run") or {}, config.get("suite") or {}):
        if section.get("images_per_prompt"):
            return int(section["images_per_prompt"])
    return 1


def read_images(run_dir: Path, limit: int) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """The first `limit` images of a run with their image indices, or None and why."""
    images, indices = [], []
    try:
        for shard in shard_paths(run_dir):
            with np.load(shard) as data:
                arr = np.asarray(data["arr_0"])
                idx = np.asarray(data["indices"]) if "indices" in data.files else None
            start = int(shard.stem.split("-")[-1]) if shard.stem.split("-")[-1].isdigit() else 0
            images.append(arr)
            indices.append(idx if idx is not None else np.arange(start, start + len(arr)))
            if sum(len(a) for a in images) >= limit:
                break
    except (OSError, KeyError, ValueError) as err:
        return None, None, f"samples unreadable ({err})"
    if not images:
        return None, None, "no samples-*.npz"
    return np.concatenate(images)[:limit], np.concatenate(indices)[:limit], None


def compare_limit(config: Mapping[str, Any], texts: list[str] | None) -> int:
    """How many images of a run the side-by-side view gets: COMPARE_IMAGES, rounded to whole prompts."""
    if texts is None:
        return COMPARE_IMAGES
    per = images_per_prompt(config)
    return max(per, COMPARE_IMAGES // per * per)


def write_compare_images(run: str, run_dir: Path, config: Mapping[str, Any], out: Path,
                         texts: list[str] | None) -> tuple[dict[str, list[str]], str | None]:
    """Write a run's first images as PNGs under out/images/<run>/; key (seed or prompt) -> their paths."""
    images, indices, problem = read_images(run_dir, compare_limit(config, texts))
    if images is None:
        return {}, problem
    seed = int((config.get("suite") or {}).get("seed", 0))
    per = images_per_prompt(config)
    folder = out / "images" / run
    folder.mkdir(parents=True, exist_ok=True)
    keyed: dict[str, list[str]] = {}
    for image, index in zip(images, indices):
        path = folder / f"{int(index):06d}.png"  # rewritten every time: a regenerated run must not show old images
        imsave(path, image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
        key = f"p{int(index) // per}" if texts is not None else f"s{seed + int(index)}"
        keyed.setdefault(key, []).append(path.relative_to(out).as_posix())
    return keyed, None


def run_record(run: str, run_dir: Path, out: Path) -> dict[str, Any]:
    """Everything the page shows of one run, with the list of what is missing from its folder."""
    files = {name: read_optional(run_dir / name) for name in RUN_FILES}
    missing = [why for _, why in files.values() if why]
    manifest = files["manifest.json"][0] or {}
    config = manifest.get("config") or {}
    texts = prompt_texts(config)
    images, problem = write_compare_images(run, run_dir, config, out, texts)
    if problem:
        missing.append(problem)
    if texts == []:
        missing.append("prompt set unreadable: prompts shown by index")
    timing = files["timing.json"][0] or {}
    return {"run": run, "config": config, "manifest": {k: v for k, v in manifest.items() if k != "config"},
            "cost": files["cost.json"][0], "metrics": files["metrics.json"][0], "missing": missing,
            "batches": [b for b in timing.get("batches", []) if isinstance(b, dict)], "images": images,
            "text": texts is not None, "prompts": {f"p{i}": t for i, t in enumerate(texts or [])
                                                   if f"p{i}" in images}}


def seed_groups(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Runs that differ only in their seed, grouped by the run's name (for the seed-to-seed spread)."""
    groups: dict[str, list[str]] = {}
    for record in records:
        config = json.loads(json.dumps(record["config"]))
        (config.get("suite") or {}).pop("seed", None)
        (config.get("run") or {}).pop("id", None)
        groups.setdefault(json.dumps(config, sort_keys=True), []).append(record["run"])
    return {str(next(r for r in records if r["run"] == runs[0])["config"].get("run", {}).get("name", runs[0])): runs
            for runs in groups.values() if len(runs) > 1}
