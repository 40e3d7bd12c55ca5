"""CLIP score: 100 x the cosine between an image's and its prompt's CLIP embeddings, clipped at 0 (Hessel et al.
2021, as torchmetrics' CLIPScore), with any open-clip model; the cheap everyday text-image alignment check."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

DEFAULT_ARCH = "ViT-L-14"
DEFAULT_PRETRAINED = "openai"


class ClipScorer:
    """Per-image CLIP scores of images against their prompts."""

    def __init__(self, model: torch.nn.Module, transform, tokenizer, device: str | torch.device = "cpu",
                 batch_size: int = 32):
        self.model = model.eval().to(device)
        self.transform = transform
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: np.ndarray | Sequence[np.ndarray], prompts: Sequence[str]) -> np.ndarray:
        """(N,) float64 scores of uint8 (H, W, 3) images against their prompts."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        scores = []
        for start in range(0, len(prompts), self.batch_size):
            stop = start + self.batch_size
            pixels = torch.stack([self.transform(Image.fromarray(np.asarray(im))) for im in images[start:stop]])
            image = F.normalize(self.model.encode_image(pixels.to(self.device)).float(), dim=-1)
            text = F.normalize(self.model.encode_text(self.tokenizer(list(prompts[start:stop])).to(self.device))
                               .float(), dim=-1)
            scores.append((100 * (image * text).sum(-1)).clamp(min=0).double().cpu())
        return torch.cat(scores).numpy() if scores else np.zeros(0)


def build_clip_scorer(arch: str = DEFAULT_ARCH, pretrained: str | None = DEFAULT_PRETRAINED,
                      device: str | torch.device = "cpu", weights: str | Path | None = None,
                      asset: str | None = "clip-vit-l-14-openai", batch_size: int = 32,
                      random_weights: bool = False, **overrides: object) -> ClipScorer:
    """A ClipScorer for an open-clip model name and weights tag (pretrained=None: random weights of that model;
    random_weights=True: a tiny random-weight model, for dry runs)."""
    from harness.metrics.open_clip_models import TINY, TINY_ARCH, load_open_clip

    if random_weights:
        arch, pretrained, weights, overrides = TINY_ARCH, None, None, {**TINY, **overrides}
    model, transform, tokenizer = load_open_clip(arch, pretrained, device, weights, asset, **overrides)
    return ClipScorer(model, transform, tokenizer, device, batch_size)
