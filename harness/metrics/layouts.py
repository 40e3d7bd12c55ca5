"""The official folder layouts of GenEval and HPSv3: writers (so the official tools read our samples) and readers
(so `harness evaluate` scores samples any other generator wrote in them).

GenEval (generation/diffusers_generate.py, read by evaluation/evaluate_images.py): one folder per prompt,
`<prompt index:05>/metadata.jsonl` holding that prompt's metadata line as `json.dump` writes it, and its images as
`<prompt index:05>/samples/<k:05>.png` (the official reader takes any `\\d+.png`).
HPSv3 (evaluate/benchmark.py): one folder per category, each image `<name>.png` beside `<name>.txt` holding its
prompt; benchmark.py globs `*.png` / `*.jpg` recursively and reads the sibling `.txt`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from harness.errors import HarnessError
from harness.prompts.sets import PromptSet

LAYOUTS = ("geneval", "hpsv3")
_GENEVAL_IMAGE = re.compile(r"\d+\.png")  # re.match, as evaluate_images.py filters
UNCATEGORISED = "all"


@dataclass(frozen=True)
class Sample:
    """One image of a text-to-image evaluation: its path in the official layout, its prompt, how to read it."""

    filename: str  # relative to the layout's root folder, e.g. 00012/samples/00003.png or Animals/000123.png
    prompt: int  # index into the PromptSet
    load: Callable[[], np.ndarray]  # uint8 (H, W, 3)


def geneval_name(prompt: int, k: int) -> str:
    """Image k of prompt `prompt` in GenEval's layout."""
    return f"{prompt:05}/samples/{k:05}.png"


def category_folder(prompts: PromptSet, prompt: int) -> str:
    """The HPSv3 category folder of a prompt: its category, else "all"."""
    category = prompts.metadata[prompt].get("category")
    return str(category) if category else UNCATEGORISED


def hpsv3_name(prompts: PromptSet, prompt: int, index: int) -> str:
    """Image `index` of a run in HPSv3's layout (the .txt beside it has the same stem)."""
    return f"{category_folder(prompts, prompt)}/{index:06}.png"


def per_prompt_positions(labels: np.ndarray) -> np.ndarray:
    """k of each image: how many earlier images share its prompt (its number within the prompt)."""
    seen: dict[int, int] = {}
    out = np.empty(len(labels), dtype=np.int64)
    for i, p in enumerate(labels.tolist()):
        out[i] = seen.get(p, 0)
        seen[p] = out[i] + 1
    return out


def _save_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(image).save(tmp, format="PNG")
    tmp.replace(path)


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
        _save_png(path, image)
        written.append(path)
    return written


def write_hpsv3(images: Iterable[np.ndarray], labels: np.ndarray, prompts: PromptSet, out: Path) -> list[Path]:
    """Write images in HPSv3's layout: <category>/<index:06>.png with <index:06>.txt holding the prompt."""
    out = Path(out)
    written = []
    for index, (image, prompt) in enumerate(zip(images, labels.tolist())):
        path = out / hpsv3_name(prompts, prompt, index)
        _save_png(path, image)
        path.with_suffix(".txt").write_text(prompts.prompts[prompt])
        written.append(path)
    return written


WRITERS = {"geneval": write_geneval, "hpsv3": write_hpsv3}


def _loader(path: Path) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from PIL import ImageOps

        try:
            with Image.open(path) as image:
                return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        except OSError as err:
            raise HarnessError(f"{path}: unreadable image ({err})") from err

    return load


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
        samples += [Sample(f"{sub.name}/samples/{n}", index, _loader(sub / "samples" / n)) for n in names]
    if not samples:
        raise HarnessError(f"{folder}: no GenEval samples (<index>/metadata.jsonl and <index>/samples/<k>.png)")
    return PromptSet(str(folder), tuple(prompts), tuple(metadata), 1), samples


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
            samples.append(Sample(str(path.relative_to(folder)), len(prompts) - 1, _loader(path)))
    if not samples:
        raise HarnessError(f"{folder}: no HPSv3 samples (<category>/<name>.png with <name>.txt)")
    return PromptSet(str(folder), tuple(prompts), tuple(metadata), 1), samples


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


READERS = {"geneval": read_geneval, "hpsv3": read_hpsv3}


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

