"""A user's own prompt file: TXT (one prompt per line) or JSONL (one object per line with a "prompt" string).

JSONL lines keep their other keys as the prompt's metadata, so a file in GenEval's metadata format (tag, include,
exclude) is scored by the `geneval` metric and a "category" key groups `hpsv3` results. Any mistake is one
HarnessError naming the file and line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from harness.errors import HarnessError, shorten
from harness.prompts.sets import PromptSet

SUFFIXES = (".txt", ".jsonl")


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise HarnessError(f"{path}: prompt file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise HarnessError(f"{path}: not a UTF-8 text file ({err})") from err
    return text.removesuffix("\n").split("\n") if text else []


def _jsonl_entry(path: Path, number: int, line: str) -> tuple[str, dict[str, Any]]:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as err:
        raise HarnessError(f"{path}: line {number}: not a JSON object ({err.msg})") from err
    if not isinstance(entry, dict):
        raise HarnessError(f"{path}: line {number}: must be a JSON object with a \"prompt\", got "
                           f"{type(entry).__name__}")
    prompt = entry.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise HarnessError(f"{path}: line {number}: field 'prompt' must be a non-empty string, got {shorten(prompt)}")
    return prompt, entry


def read_prompt_file(path: str | Path) -> PromptSet:
    """The prompt set of a .txt or .jsonl file (at least two prompts, none empty)."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise HarnessError(f"{path}: a prompt file must end in {' or '.join(SUFFIXES)} (one prompt, or one JSON "
                           f"object with a \"prompt\", per line)")
    prompts, metadata = [], []
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            raise HarnessError(f"{path}: line {number}: empty line (every line must hold a prompt)")
        if path.suffix == ".jsonl":
            prompt, meta = _jsonl_entry(path, number, line)
        else:
            prompt, meta = line.strip(), {"prompt": line.strip()}
        if prompt in prompts:
            print(f"warning: {path}: line {number} repeats line {prompts.index(prompt) + 1} ({shorten(prompt)}); "
                  "both are kept", file=sys.stderr)
        prompts.append(prompt)
        metadata.append(meta)
    if len(prompts) < 2:
        raise HarnessError(f"{path}: {len(prompts)} prompt(s); a prompt set needs at least two (ICG draws another "
                           f"prompt of the set)")
    return PromptSet(str(path), tuple(prompts), tuple(metadata), 1)
