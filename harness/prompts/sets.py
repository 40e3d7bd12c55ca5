"""A prompt set: the prompts of a text-to-image suite, each with its metadata, and how many images each gets."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PromptSet:
    """Prompts in file order with one metadata dict each (a GenEval line, an HPSv3 category, a user's extra keys).

    `images_per_prompt` is the set's default (GenEval 4, HPSv3 1, a user file 1); a suite may override it. Image i
    of a run gets prompt i // images_per_prompt.
    """

    name: str
    prompts: tuple[str, ...]
    metadata: tuple[dict[str, Any], ...]
    images_per_prompt: int = 1

    def __post_init__(self) -> None:
        if len(self.prompts) != len(self.metadata):
            raise ValueError(f"prompt set {self.name!r}: {len(self.prompts)} prompts but {len(self.metadata)} "
                             f"metadata entries")

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def digest(self) -> str:
        """sha256 of the prompt texts in order: what an encoding of the set is cached under."""
        return hashlib.sha256(json.dumps(list(self.prompts), ensure_ascii=True).encode()).hexdigest()

    def category(self, index: int) -> str | None:
        """The prompt's category (HPSv3) or GenEval tag, when it has one."""
        meta = self.metadata[index]
        return meta.get("category", meta.get("tag"))
