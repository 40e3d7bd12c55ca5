"""GenEval's folder layout (generation/diffusers_generate.py, read by evaluation/evaluate_images.py): one folder per
prompt, `<prompt index:05>/metadata.jsonl` holding that prompt's metadata line as `json.dump` writes it, and its
images as `<prompt index:05>/samples/<k:05>.png` (the official reader takes any `\\d+.png`). The writer lets the
official tool read our samples; the reader lets `harness evaluate` score samples any other generator wrote."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.metrics.layouts import Sample, image_loader, per_prompt_positions, save_png
from harness.prompts.sets import PromptSet

_GENEVAL_IMAGE = re.compile(r"\d+\.png")  # re.match, as evaluate_images.py filters


def geneval_name(prompt: int, k: int) -> str:
    """Image k of prompt `prompt` in GenEval's layout."""
    return f"{prompt:05}/samples/{k:05}.png"


def write_geneval(images: Iterable[np.ndarray], labels: np.ndarray, prompts: PromptSet, out: Path) -> list[Path]:
    """Write images (uint8 HWC, in index order) with their prompt indices in GenEval's layout under `out`."""
    out = Path(out)
    written = []
    for prompt in np.unique(labels).tolist():
        folder = out / f"{prompt:05}"
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        with open(folder / "metadata.jsonl", "w") as fp:
            json.dump(prompts.metadata[prompt], fp)  # as diffusers_generate.py writes it
    for image, prompt, k in zip(images, labels.tolist(), per_prompt_positions(labels).tolist()):
        path = out / geneval_name(prompt, k)
        save_png(path, image)
        written.append(path)
    return written


def read_geneval(folder: Path) -> tuple[PromptSet, list[Sample]]:
    """The prompts (one per numbered folder, from its metadata.jsonl) and images of a GenEval-layout folder."""
    folder = Path(folder)
    prompts, metadata, samples = [], [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()):
        meta_path = sub / "metadata.jsonl"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise HarnessError(f"{meta_path}: unreadable GenEval metadata ({err})") from err
        if not isinstance(meta, dict) or not isinstance(meta.get("prompt"), str):
            raise HarnessError(f"{meta_path}: must hold one JSON object with a \"prompt\" (a line of GenEval's "
                               "evaluation_metadata.jsonl)")
        names = sorted(p.name for p in (sub / "samples").glob("*.png") if _GENEVAL_IMAGE.match(p.name))
        index = len(prompts)
        prompts.append(meta["prompt"])
        metadata.append(meta)
        samples += [Sample(f"{sub.name}/samples/{n}", index, image_loader(sub / "samples" / n)) for n in names]
    if not samples:
        raise HarnessError(f"{folder}: no GenEval samples (<index>/metadata.jsonl and <index>/samples/<k>.png)")
    return PromptSet(str(folder), tuple(prompts), tuple(metadata), 1), samples
