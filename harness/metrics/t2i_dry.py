"""Random-weight stand-ins for the text-to-image scorers, so a dry run goes through GenEval, HPSv3 and CLIP score
in seconds on a CPU with nothing downloaded: a seeded random detector, a tiny random open-clip CLIP (colour step and
CLIP score), and an HPSv3 stand-in that rates image-prompt pairs with a second tiny random CLIP."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from harness.metrics.detectors.base import Detections, Detector, check_image


class RandomDetector(Detector):
    """Detections drawn from a generator seeded by the image's bytes: the same image always gets the same ones."""

    name = "random"

    def __init__(self, classes: Sequence[str] | None = None, per_image: int = 4):
        from harness.prompts.geneval import object_names

        self.classes = tuple(classes or object_names())
        self.per_image = per_image

    def detect(self, image: np.ndarray) -> Detections:
        image = check_image(image)
        h, w, _ = image.shape
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(image.tobytes()).digest()[:8], "little"))
        out: Detections = {}
        for _ in range(self.per_image):
            x1, x2 = sorted(rng.integers(0, w, 2).tolist())
            y1, y2 = sorted(rng.integers(0, h, 2).tolist())
            mask = np.zeros((h, w), dtype=bool)
            mask[y1:y2 + 1, x1:x2 + 1] = True
            obj = {"box": [float(x1), float(y1), float(x2 + 1), float(y2 + 1)], "score": float(rng.random()),
                   "mask": mask}
            out.setdefault(self.classes[int(rng.integers(len(self.classes)))], []).append(obj)
        return out


# A one-layer, narrow open-clip ViT-B-32 with random weights: builds and runs in well under a second on a CPU.
TINY_CLIP = dict(embed_dim=32, vision_cfg=dict(image_size=64, layers=1, width=64, head_width=32, patch_size=32),
                 text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=1))


def tiny_random_clip(device: torch.device | str = "cpu", seed: int = 0):
    """(model, val transform, tokenizer) of TINY_CLIP, its weights drawn from `seed`."""
    from harness.metrics.open_clip_models import load_open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return load_open_clip("ViT-B-32", None, device, **TINY_CLIP)


class RandomRewardModel:
    """HPSv3's call shape (`image_paths=`, `prompts=` -> one reward per pair): 10 x the cosine of image and prompt
    embeddings of a second tiny random CLIP (not clipped, so rewards differ between images), for dry runs."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model, self.transform, self.tokenizer = tiny_random_clip(device, seed=1)

    @torch.no_grad()
    def __call__(self, image_paths: Sequence[str], prompts: Sequence[str]) -> list[float]:
        pixels = torch.stack([self.transform(Image.open(p).convert("RGB")) for p in image_paths]).to(self.device)
        image = torch.nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1)
        text = torch.nn.functional.normalize(self.model.encode_text(self.tokenizer(list(prompts)).to(self.device))
                                             .float(), dim=-1)
        return (10 * (image * text).sum(-1)).cpu().tolist()


def dry_options(device: torch.device | str = "cpu") -> dict[str, dict[str, Any]]:
    """Scorer options of a dry run: every model random, nothing read from disk."""
    from harness.metrics.clip_score import ClipScorer
    from harness.metrics.geneval_color import ColorClassifier

    clip = tiny_random_clip(device)
    return {"geneval": {"detector_object": RandomDetector(), "classify": ColorClassifier(*clip, device=device)},
            "clip_score": {"scorer": ClipScorer(*clip, device=device), "name": "random tiny CLIP (dry run)"},
            "hpsv3": {"scorer": RandomRewardModel(device)}}
