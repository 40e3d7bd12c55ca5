"""HPSv3's folder layout (evaluate/benchmark.py): one folder per category, each image `<name>.png` beside
`<name>.txt` holding its prompt; benchmark.py globs `*.png` / `*.jpg` recursively and reads the sibling `.txt`.
The writer lets the official tool (and our worker) read our samples; the reader lets `harness evaluate` score
samples any other generator wrote."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.metrics.layouts import Sample, image_loader, save_png
from harness.prompts.sets import PromptSet

UNCATEGORISED = "all"


def category_folder(prompts: PromptSet, prompt: int) -> str:
    """The HPSv3 category folder of a prompt: its category, else "all"."""
    category = prompts.metadata[prompt].get("category")
    return str(category) if category else UNCATEGORISED


def hpsv3_name(prompts: PromptSet, prompt: int, index: int) -> str:
    """Image `index` of a run in HPSv3's layout (the .txt beside it has the same stem)."""
    return f"{category_folder(prompts, prompt)}/{index:06}.png"


def write_hpsv3(images: Iterable[np.ndarray], labels: np.ndarray, prompts: PromptSet, out: Path) -> list[Path]:
    """Write images in HPSv3's layout: <category>/<index:06>.png with <index:06>.txt holding the prompt."""
    out = Path(out)
    written = []
    for index, (image, prompt) in enumerate(zip(images, labels.tolist())):
        path = out / hpsv3_name(prompts, prompt, index)
        save_png(path, image)
        path.with_suffix(".txt").write_text(prompts.prompts[prompt])
        written.append(path)
    return written


def read_hpsv3(folder: Path) -> tuple[PromptSet, list[Sample]]:
    """The images of an HPSv3-layout folder: each category folder's .png/.jpg with the prompt of its sibling .txt."""
    folder = Path(folder)
    prompts, metadata, samples = [], [], []
    for category in sorted(p for p in folder.iterdir() if p.is_dir()):
        for path in sorted([*category.rglob("*.png"), *category.rglob("*.jpg")]):
            text_path = path.with_suffix(".txt")
            if not text_path.is_file():
                raise HarnessError(f"{path}: no {text_path.name} beside it with its prompt (HPSv3's layout)")
            with open(text_path) as fp:
                prompt = "\n".join(fp.readlines())  # as benchmark.py reads it (line ends kept, then joined)
            prompts.append(prompt)
            metadata.append({"category": category.name, "prompt": prompt})
            samples.append(Sample(str(path.relative_to(folder)), len(prompts) - 1, image_loader(path)))
    if not samples:
        raise HarnessError(f"{folder}: no HPSv3 samples (<category>/<name>.png with <name>.txt)")
    return PromptSet(str(folder), tuple(prompts), tuple(metadata), 1), samples
