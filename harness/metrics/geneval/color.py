"""GenEval's colour step: CLIP zero-shot over 10 colours on each object, masked onto #999 and cropped to its box.

As evaluate_images.py does it with clip_benchmark 1.4.0: the templates "a photo of a {c} {classname}", "a photo of a
{c}-colored {classname}" and "a photo of a {c} object" are embedded, L2-normalised, averaged per colour and
renormalised (one classifier per class name); each crop goes through the model's val transform, and the colour is
the argmax of 100 * normalize(encode_image(crop)) @ classifier. Both run under CUDA autocast (fp16) on a GPU, as
clip_benchmark's amp=True does; on a CPU they run in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from harness.metrics.geneval.rules import COLORS, DEFAULTS, Options, color_requests

CLIP_ARCH = "ViT-L-14"
CLIP_PRETRAINED = "openai"
BACKGROUND = "#999"
TEMPLATES = ("a photo of a {{c}} {classname}", "a photo of a {{c}}-colored {classname}", "a photo of a {{c}} object")
BATCH = 16


def object_crop(image: Image.Image, box: Sequence[float], mask: np.ndarray | None,
                background: str = BACKGROUND) -> Image.Image:
    """The object's pixels pasted on a flat background (or the whole image without a mask), cropped to its box."""
    image = image.convert("RGB")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (image.height, image.width):
            raise ValueError(f"mask of shape {mask.shape} for an image of {image.width}x{image.height}")
        blank = image.copy() if background == "original" else Image.new("RGB", image.size, color=background)
        image = Image.composite(image, blank, Image.fromarray(mask))
    return image.crop(tuple(float(np.float32(v)) for v in box[:4]))


class ColorClassifier:
    """The colour of detected objects, by CLIP zero-shot classification over GenEval's COLORS."""

    def __init__(self, model: torch.nn.Module, transform: Callable[[Image.Image], torch.Tensor],
                 tokenizer: Callable[[list[str]], torch.Tensor], device: str | torch.device = "cpu",
                 background: str = BACKGROUND):
        self.model = model.eval().to(device)
        self.transform = transform
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.background = background
        self._classifiers: dict[str, torch.Tensor] = {}

    def _autocast(self):
        """clip_benchmark's amp=True: torch.cuda.amp.autocast, which does nothing off CUDA."""
        return torch.autocast("cuda") if self.device.type == "cuda" else nullcontext()

    @torch.no_grad()
    def classifier(self, classname: str) -> torch.Tensor:
        """(D, 10) text weights for one object class (clip_benchmark's zero_shot_classifier), cached."""
        if classname not in self._classifiers:
            templates = [t.format(classname=classname) for t in TEMPLATES]
            weights = []
            with self._autocast():
                for color in COLORS:
                    texts = self.tokenizer([t.format(c=color) for t in templates]).to(self.device)
                    embedding = F.normalize(self.model.encode_text(texts), dim=-1).mean(dim=0)
                    weights.append(embedding / embedding.norm())
            self._classifiers[classname] = torch.stack(weights, dim=1)
        return self._classifiers[classname]

    @torch.no_grad()
    def logits(self, image: Image.Image | np.ndarray, classname: str,
               objects: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        """(len(objects), 10) colour logits of the objects ({"box", "mask"}) of one class in one image."""
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        weights = self.classifier(classname)
        crops = [self.transform(object_crop(image, obj["box"], obj.get("mask"), self.background)) for obj in objects]
        out = []
        for start in range(0, len(crops), BATCH):
            batch = torch.stack(crops[start:start + BATCH]).to(self.device)
            with self._autocast():
                features = F.normalize(self.model.encode_image(batch), dim=-1)
                out.append((100.0 * features @ weights).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, len(COLORS))

    def __call__(self, image: Image.Image | np.ndarray, classname: str,
                 objects: Sequence[Mapping[str, Any]]) -> list[str]:
        """The colour name of each object."""
        return [COLORS[i] for i in self.logits(image, classname, objects).argmax(1).tolist()]


def add_colors(image: Image.Image | np.ndarray, metadata: Mapping[str, Any], detections: Mapping[str, list[dict]],
               classify: Callable[..., list[str]], options: Options = DEFAULTS) -> Mapping[str, list[dict]]:
    """Set "color" on the objects GenEval's rules will read (see geneval.color_requests), in place; returns
    detections."""
    for classname, objects in color_requests(metadata, detections, options).items():
        for obj, color in zip(objects, classify(image, classname, objects)):
            obj["color"] = color
    return detections


def build_color_classifier(device: str | torch.device = "cpu", weights: str | None = None, arch: str = CLIP_ARCH,
                           pretrained: str | None = CLIP_PRETRAINED) -> ColorClassifier:
    """GenEval's colour classifier: CLIP ViT-L-14 with OpenAI's weights (pretrained=None: random, for dry runs)."""
    from harness.metrics.open_clip_models import load_open_clip

    model, transform, tokenizer = load_open_clip(arch, pretrained, device, weights, asset="clip-vit-l-14-openai")
    return ColorClassifier(model, transform, tokenizer, device)
