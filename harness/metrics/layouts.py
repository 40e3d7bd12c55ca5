"""What the official folder layouts of GenEval and HPSv3 share: the Sample of a text-to-image evaluation, the image
reading and PNG writing, which layout a folder holds and what scoring it skips; each layout's own writer (so the
official tools read our samples) and reader (so `harness evaluate` scores samples any other generator wrote in
them) lie in harness/metrics/geneval/layout.py and harness/metrics/hpsv3/layout.py, named here by "module:function".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from harness.errors import HarnessError

# Each layout's writer (images, labels, PromptSet, out) -> paths and reader (folder) -> (PromptSet, samples).
WRITERS = {"geneval": "harness.metrics.geneval.layout:write_geneval",
           "hpsv3": "harness.metrics.hpsv3.layout:write_hpsv3"}
READERS = {"geneval": "harness.metrics.geneval.layout:read_geneval",
           "hpsv3": "harness.metrics.hpsv3.layout:read_hpsv3"}
LAYOUTS = tuple(WRITERS)


@dataclass(frozen=True)
class Sample:
    """One image of a text-to-image evaluation: its path in the official layout, its prompt, how to read it."""

    filename: str  # relative to the layout's root folder, e.g. 00012/samples/00003.png or Animals/000123.png
    prompt: int  # index into the PromptSet
    load: Callable[[], np.ndarray]  # uint8 (H, W, 3)


def per_prompt_positions(labels: np.ndarray) -> np.ndarray:
    """k of each image: how many earlier images share its prompt (its number within the prompt)."""
    seen: dict[int, int] = {}
    out = np.empty(len(labels), dtype=np.int64)
    for i, p in enumerate(labels.tolist()):
        out[i] = seen.get(p, 0)
        seen[p] = out[i] + 1
    return out


def save_png(path: Path, image: np.ndarray) -> None:
    """Write a uint8 HWC image as PNG through a temporary file, so an interrupted write leaves no partial image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(image).save(tmp, format="PNG")
    tmp.replace(path)


def image_loader(path: Path) -> Callable[[], np.ndarray]:
    """A Sample's loader: the image as evaluate_images.py reads it (EXIF orientation applied, RGB, uint8 HWC)."""
    def load() -> np.ndarray:
        from PIL import ImageOps

        try:
            with Image.open(path) as image:
                return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        except OSError as err:
            raise HarnessError(f"{path}: unreadable image ({err})") from err

    return load


def detect_layout(folder: Path) -> str:
    """"geneval" when the folder has numbered prompt folders with metadata.jsonl, else "hpsv3" when it has
    category folders of images with .txt prompts; HarnessError otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HarnessError(f"{folder}: not a folder")
    subs = [p for p in folder.iterdir() if p.is_dir()]
    if any(p.name.isdigit() and (p / "metadata.jsonl").is_file() for p in subs):
        return "geneval"
    if any(next(p.rglob("*.txt"), None) is not None for p in subs):
        return "hpsv3"
    raise HarnessError(f"{folder}: neither GenEval's layout (<index:05>/metadata.jsonl + samples/<k>.png) nor "
                       "HPSv3's (<category>/<name>.png + <name>.txt)")


def folder_problems(folder: Path, layout: str, samples: Sequence[Sample]) -> list[str]:
    """What scoring `folder` as `layout` skips or finds odd: prompt folders without samples, the other layout's
    folders, images of several sizes or not in RGB (read from their headers)."""
    folder = Path(folder)
    subs = sorted(p for p in folder.iterdir() if p.is_dir())
    problems = []
    numbered = [p for p in subs if p.name.isdigit() and (p / "metadata.jsonl").is_file()]
    if layout == "geneval":
        empty = [p.name for p in numbered if not any((p / "samples").glob("*.png"))]
        if empty:
            problems.append(f"{len(empty)} prompt folder(s) without samples/, skipped: {', '.join(empty[:10])}"
                            + (", ..." if len(empty) > 10 else ""))
        other = [p.name for p in subs if p not in numbered and next(p.rglob("*.txt"), None) is not None]
        if other:
            problems.append(f"it holds HPSv3's layout too, not scored: {', '.join(other[:10])}")
    elif numbered:
        problems.append(f"it holds GenEval's layout too, not scored: {', '.join(p.name for p in numbered[:10])}")
    sizes: dict[tuple[int, int], int] = {}
    modes: dict[str, int] = {}
    for sample in samples:
        try:
            with Image.open(folder / sample.filename) as image:
                sizes[image.size] = sizes.get(image.size, 0) + 1
                if image.mode != "RGB":
                    modes[image.mode] = modes.get(image.mode, 0) + 1
        except OSError as err:
            raise HarnessError(f"{folder / sample.filename}: unreadable image ({err})") from err
    if len(sizes) > 1:
        counts = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sorted(sizes.items()))
        problems.append(f"{len(sizes)} image sizes: {counts}")
    if modes:
        problems.append(f"{sum(modes.values())} image(s) not RGB ({', '.join(sorted(modes))}), converted")
    return problems

