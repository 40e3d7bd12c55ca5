"""Text encoders by name: what turns a suite's prompts into the token states a text-conditioned network attends to.

A suite's model table names one with `text_encoder = "<name>"` (options in `text_encoder_options`). Each entry of
TEXT_ENCODERS is a factory `(options: dict, device, root: Path | None) -> TextEncoder`; the encoder gives
`encode(prompts) -> (states (P, L, C) float, mask (P, L) bool)` and `null() -> (states (L, C), mask (L,))`, the null
caption as the model was trained (empty prompt or zeros). The runner encodes a prompt set once per (encoder, prompt
set) and caches the result under the run root (harness.prompts.encode.encode_prompts), so encoders need no cache of their
own. Real encoders (open-clip for MicroDiT, T5 for PixArt, the text testbed's word encoder) register here from their
own modules.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from harness import registry
from harness.errors import HarnessError


class TextEncoder(Protocol):
    """What a text-conditioned model's suite entry names: prompts in, token states and their mask out."""

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(states (P, L, C) float, mask (P, L) bool, True = a real token) for P prompts."""
        ...

    def null(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The null caption as the model was trained: (states (L, C), mask (L,))."""
        ...


TextEncoderFactory = Callable[[dict[str, Any], torch.device, "Path | None"], TextEncoder]

_WORD = re.compile(r"[a-z0-9]+")


class RandomTextEncoder:
    """A tiny deterministic stand-in for tests and dry runs: hashed words looked up in a seeded random table.

    Each lowercase word becomes a token id by sha256 (no vocabulary file), a start token is always first (so even
    the empty prompt has one real token), and a token's state is its embedding plus a position embedding, both
    drawn from `seed`. The same prompt gives the same states on every machine and in every process.
    """

    def __init__(self, dim: int = 32, length: int = 16, vocab: int = 1024, seed: int = 0,
                 device: torch.device | str = "cpu"):
        if dim < 1 or length < 2 or vocab < 2:
            raise ValueError(f"random text encoder: need dim >= 1, length >= 2, vocab >= 2 (got {dim}, {length}, "
                             f"{vocab})")
        generator = torch.Generator().manual_seed(seed)
        self.table = torch.randn(vocab, dim, generator=generator)
        self.positions = 0.1 * torch.randn(length, dim, generator=generator)
        self.length, self.vocab, self.device = length, vocab, torch.device(device)

    def token_ids(self, prompt: str) -> list[int]:
        """Start token 0, then each word's hashed id in 1..vocab-1, cut to `length` tokens."""
        words = _WORD.findall(prompt.lower())
        ids = [1 + int.from_bytes(hashlib.sha256(w.encode()).digest()[:8], "little") % (self.vocab - 1)
               for w in words]
        return [0, *ids][: self.length]

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        states = torch.zeros(len(prompts), self.length, self.table.shape[1])
        mask = torch.zeros(len(prompts), self.length, dtype=torch.bool)
        for p, prompt in enumerate(prompts):
            ids = torch.tensor(self.token_ids(prompt))
            states[p, : len(ids)] = self.table[ids] + self.positions[: len(ids)]
            mask[p, : len(ids)] = True
        return states.to(self.device), mask.to(self.device)

    def null(self) -> tuple[torch.Tensor, torch.Tensor]:
        states, mask = self.encode([""])
        return states[0], mask[0]


def _random_factory(options: dict[str, Any], device: torch.device, root: Path | None) -> RandomTextEncoder:
    return RandomTextEncoder(**options, device=device)


# Text encoders by the name a suite's `text_encoder` gives (a factory, or its "module:attribute", harness.registry).
TEXT_ENCODERS: dict[str, TextEncoderFactory | str] = {"random": _random_factory}


TEXT_ENCODERS["testbed_words"] = "harness.testbed.words:load_word_encoder"  # the text testbed's own (a plug-in)


def build_text_encoder(name: str, options: dict[str, Any] | None = None, device: torch.device | str = "cpu",
                       root: Path | None = None) -> TextEncoder:
    """The encoder registered as `name`, built with `options`; HarnessError for an unknown name or bad options."""
    factory = registry.lookup(TEXT_ENCODERS, name, "text encoder")
    try:
        return factory(dict(options or {}), torch.device(device), root)
    except (TypeError, ValueError) as err:
        raise HarnessError(f"text encoder {name!r}: bad options {options!r} ({err})") from err


__all__ = ["TEXT_ENCODERS", "RandomTextEncoder", "TextEncoder", "TextEncoderFactory", "build_text_encoder"]
