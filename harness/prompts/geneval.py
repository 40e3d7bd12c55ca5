"""GenEval's prompt set: the 553 prompts of its evaluation_metadata.jsonl and its 80 class names, checked by sha256.

The two files ship unchanged in harness/prompts/geneval/ (MIT, Copyright (c) 2023 Dhruba Ghosh; see the LICENSE
there). GenEval generates 4 images per prompt.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path

from harness.errors import HarnessError
from harness.prompts.sets import PromptSet

FOLDER = Path(__file__).resolve().parent / "geneval"
METADATA = FOLDER / "evaluation_metadata.jsonl"
OBJECT_NAMES = FOLDER / "object_names.txt"
SHA256 = {
    "evaluation_metadata.jsonl": "5c48e0813e812e3c373fa5c8ed07a8f0a483be30272b4427b0559c8048e67c13",
    "object_names.txt": "608f6a0e5c8ca1c7a92b818430141fe268c85b7930b50f4160f1d65893b5bacd",
}
IMAGES_PER_PROMPT = 4
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def _checked_bytes(path: Path) -> bytes:
    """The file's bytes when its sha256 is the one GenEval published (djghosh13/geneval af4902f)."""
    if not path.is_file():
        raise HarnessError(f"{path}: GenEval data file missing from the harness package (reinstall it)")
    data = path.read_bytes()
    got = hashlib.sha256(data).hexdigest()
    if got != SHA256[path.name]:
        raise HarnessError(f"{path}: sha256 {got} is not GenEval's {SHA256[path.name]}: the file was changed; "
                           f"restore it with `git checkout -- {path.name}` in {path.parent}")
    return data


@cache
def geneval_prompts() -> PromptSet:
    """GenEval's 553 prompts in file order, each with its metadata line as a dict."""
    lines = _checked_bytes(METADATA).decode().splitlines()
    metadata = tuple(json.loads(line) for line in lines)
    return PromptSet("geneval", tuple(m["prompt"] for m in metadata), metadata, IMAGES_PER_PROMPT)


@cache
def object_names() -> tuple[str, ...]:
    """The 80 class names; detector label i is line i + 1."""
    return tuple(_checked_bytes(OBJECT_NAMES).decode().splitlines())
