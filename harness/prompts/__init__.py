"""Prompt sets of text-to-image suites: built-in ones by name (GenEval, HPSv3) or a user's TXT/JSONL file.

A suite's `prompts = "geneval" | "hpsv3" | "<path>"` names the set; image i of a run gets prompt
i // images_per_prompt and seed `seed + i`, and its shard stores the prompt index as the image's label.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.prompts.files import SUFFIXES, read_prompt_file
from harness.prompts.geneval import IMAGES_PER_PROMPT as geneval_ipp
from harness.prompts.geneval import geneval_prompts
from harness.prompts.hpsv3 import IMAGES_PER_PROMPT as hpsv3_ipp
from harness.prompts.hpsv3 import hpsv3_prompts
from harness.prompts.sets import PromptSet

# Built-in prompt sets by name: a loader taking the repository root (where assets live).
PROMPT_SETS: dict[str, Callable[[Path | None], PromptSet]] = {
    "geneval": lambda root: geneval_prompts(),
    "hpsv3": lambda root: hpsv3_prompts(root),
}


def default_images_per_prompt(spec: str) -> int:
    """Images per prompt when a suite does not say: GenEval's 4, HPSv3's and a user file's 1."""
    return {"geneval": geneval_ipp, "hpsv3": hpsv3_ipp}.get(spec, 1)


def resolve_prompts(spec: str, root: str | Path | None = None) -> str:
    """A suite's `prompts` value as stored in a run: a built-in name as is, a file as an absolute path."""
    if spec in PROMPT_SETS:
        return spec
    path = Path(spec).expanduser()
    return str(path if path.is_absolute() else Path(root or Path.cwd()) / path)


def load_prompts(spec: str, root: str | Path | None = None) -> PromptSet:
    """The prompt set a suite names: a built-in set, else a .txt / .jsonl file (relative to `root`)."""
    if spec in PROMPT_SETS:
        return PROMPT_SETS[spec](Path(root) if root is not None else None)
    if Path(spec).suffix not in SUFFIXES:
        raise HarnessError(f"unknown prompt set {spec!r}: neither a built-in set ({', '.join(PROMPT_SETS)}) nor a "
                           f"prompt file ({' or '.join(SUFFIXES)})")
    return read_prompt_file(resolve_prompts(spec, root))


def prompt_indices(samples: int, images_per_prompt: int) -> np.ndarray:
    """The prompt index of every image of a run: image i gets prompt i // images_per_prompt."""
    return np.arange(samples, dtype=np.int64) // images_per_prompt


__all__ = ["PROMPT_SETS", "PromptSet", "default_images_per_prompt", "geneval_prompts", "hpsv3_prompts", "load_prompts",
           "prompt_indices",
           "read_prompt_file", "resolve_prompts"]
