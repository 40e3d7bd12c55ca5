"""The text-to-image testbed's own text encoder: the grammar's words, a small transformer, a sequence out.

Every caption starts with a `<s>` token, so the null caption (the empty prompt, used for CFG's prompt dropout) is
one real token and never an empty sequence. Trained jointly with the testbed's TextDiT (harness/testbed/train.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from harness.errors import HarnessError, shorten
from harness.testbed import scenes

VOCAB = ("<pad>", "<s>", "a", "photo", "of", "and", "left", "right", "above", "below",
         *scenes.NUMBERS.values(), *scenes.SHAPES, *scenes.PLURALS.values(), *scenes.COLORS)
CHECKPOINT = "checkpoints/t2i_testbed_text.safetensors"  # relative to the suite's root
MAX_LEN = 12  # <s> + the longest prompt ("a photo of a red triangle and a blue square": 10 words) + 1 spare
WIDTH = 64


def tokenize(prompts: Sequence[str], max_len: int = MAX_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (P, max_len) long and mask (P, max_len) bool; a word outside the grammar is an error."""
    index = {w: i for i, w in enumerate(VOCAB)}
    ids = torch.zeros(len(prompts), max_len, dtype=torch.long)
    for p, prompt in enumerate(prompts):
        words = ["<s>", *prompt.lower().split()]
        if len(words) > max_len:
            raise HarnessError(f"prompt {shorten(prompt)} has {len(words) - 1} words; the testbed encoder takes at most "
                               f"{max_len - 1}")
        unknown = [w for w in words if w not in index]
        if unknown:
            raise HarnessError(f"prompt {shorten(prompt)}: word(s) {shorten(unknown)} are not in the testbed's vocabulary "
                               f"({', '.join(VOCAB[2:])})")
        ids[p, : len(words)] = torch.tensor([index[w] for w in words])
    return ids, ids != 0


class WordEncoder(nn.Module):
    """Word and position embeddings, two pre-norm transformer layers, a final LayerNorm: (P, L) ids -> (P, L, 64)."""

    def __init__(self, width: int = WIDTH, depth: int = 2, heads: int = 4, max_len: int = MAX_LEN):
        super().__init__()
        self.max_len = max_len
        self.embed = nn.Embedding(len(VOCAB), width)
        self.pos = nn.Parameter(torch.randn(1, max_len, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos[:, : ids.shape[1]]
        return self.norm(self.layers(x, src_key_padding_mask=~mask))

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(states (P, L, C) float, mask (P, L) bool) of the prompts, on this module's device."""
        ids, mask = tokenize(prompts, self.max_len)
        device = self.embed.weight.device
        ids, mask = ids.to(device), mask.to(device)
        return self(ids, mask), mask

    @torch.no_grad()
    def null(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The null caption as trained: the empty prompt, (states (L, C), mask (L,))."""
        states, mask = self.encode([""])
        return states[0], mask[0]


def load_word_encoder(options: dict[str, Any], device: torch.device, root: Path | None) -> WordEncoder:
    """TEXT_ENCODERS["testbed_words"]: the trained encoder of `options["checkpoint"]` (default CHECKPOINT; the
    early AutoGuidance model has its own), in eval mode on `device`."""
    unknown = set(options) - {"checkpoint"}
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; testbed_words takes 'checkpoint'")
    path = Path(options.get("checkpoint", CHECKPOINT))
    if root is not None and not path.is_absolute():
        path = Path(root) / path
    if not path.is_file():
        raise HarnessError(f"testbed word encoder {path} not found: it ships in checkpoints/; "
                           "`python -m harness.testbed.train --only t2i` retrains it with its TextDiT")
    encoder = WordEncoder()
    try:
        encoder.load_state_dict(load_file(str(path)))
    except Exception as err:  # noqa: BLE001 - wrong shapes, missing keys or a corrupted file
        raise HarnessError(f"testbed word encoder {path} does not load: {err}") from err
    return encoder.to(device).eval()
