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


def tiny_random_clip(device: torch.device | str = "cpu", seed: int = 0, image_size: int = 32):
    """(model, val transform, tokenizer): an open-clip CLIP of width 32 and one layer per tower, random weights."""
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(embed_dim=16, vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8,
                                                            image_size=image_size),
                     text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
    transform = open_clip.image_transform(image_size, is_train=False)
    return model.eval().to(device), transform, open_clip.get_tokenizer("ViT-B-32")


class RandomRewardModel:
    """HPSv3's call shape (`image_paths=`, `prompts=` -> one reward per pair) on a tiny random CLIP."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model, self.transform, self.tokenizer = tiny_random_clip(self.device, seed=1)

    def __call__(self, image_paths: Sequence[str], prompts: Sequence[str]) -> list[float]:
        from harness.metrics.t2i import clip_scores

        images = [np.asarray(Image.open(p).convert("RGB")) for p in image_paths]
        return (clip_scores(self.model, self.transform, self.tokenizer, images, prompts, self.device) / 10).tolist()


def dry_options(device: torch.device | str = "cpu") -> dict[str, dict[str, Any]]:
    """Scorer options of a dry run: every model random, nothing read from disk."""
    from harness.metrics.geneval_color import ColorClassifier

    clip = tiny_random_clip(device)
    return {"geneval": {"detector_object": RandomDetector(), "classify": ColorClassifier(*clip, device=device)},
            "clip_score": {"clip": clip, "name": "random tiny CLIP"},
            "hpsv3": {"scorer": RandomRewardModel(device)}}
