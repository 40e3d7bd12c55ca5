"""GenEval for one image: detector backend -> colour step -> rules -> one official results.jsonl record."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.metrics.geneval.color import add_colors, build_color_classifier
from harness.metrics.geneval.detectors import Detector, build_detector
from harness.metrics.geneval.rules import DEFAULTS, Options, result_record

# Small random-weight parts for dry runs: the pipeline runs end to end, the numbers mean nothing.
TINY_SWIN = dict(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=4)
TINY_HEAD = dict(hidden_dim=32, feature_size=32, mask_feature_size=32, encoder_layers=1, decoder_layers=4,
                 num_queries=20, encoder_feedforward_dim=48, dim_feedforward=48, num_attention_heads=2)


def load_image(path: str | Path) -> np.ndarray:
    """An image file as evaluate_images.py reads it: EXIF orientation applied, RGB, uint8 (H, W, 3)."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


class GenEvalScorer:
    """Scores images against GenEval metadata with a detector backend and a colour classifier."""

    def __init__(self, detector: Detector, classify_colors: Callable[..., list[str]], options: Options = DEFAULTS):
        self.detector = detector
        self.classify_colors = classify_colors
        self.options = options

    def __call__(self, image: np.ndarray, metadata: Mapping[str, Any], filename: str) -> dict[str, Any]:
        """The results.jsonl record of one uint8 (H, W, 3) image, with the detector backend's name."""
        detections = self.detector.detect(image)
        add_colors(image, metadata, detections, self.classify_colors, self.options)
        return result_record(filename, metadata, detections, self.options, detector=self.detector.name)


def build_geneval_scorer(classnames: Sequence[str], detector: str = "mask2former", device: str | torch.device = "cpu",
                         checkpoint: str | Path | None = None, clip_weights: str | None = None,
                         random_weights: bool = False, options: Options = DEFAULTS) -> GenEvalScorer:
    """The official setup (Mask2Former Swin-S + CLIP ViT-L-14/openai) from assets, or tiny random-weight stand-ins
    of both (random_weights=True: dry runs)."""
    if random_weights:
        from harness.metrics.geneval.color import ColorClassifier
        from harness.metrics.geneval.detectors.mask2former import Mask2FormerDetector, build_model
        from harness.metrics.open_clip_models import TINY, TINY_ARCH, load_open_clip

        generator_state = torch.random.get_rng_state()
        torch.manual_seed(0)
        try:
            found = Mask2FormerDetector(build_model(len(classnames), TINY_SWIN, **TINY_HEAD), classnames, device)
            found.name = "random-mask2former"
            colors = ColorClassifier(*load_open_clip(TINY_ARCH, None, device, **TINY), device)
        finally:
            torch.random.set_rng_state(generator_state)
        return GenEvalScorer(found, colors, options)
    backend = build_detector(detector, classnames=classnames, checkpoint=checkpoint, device=device)
    return GenEvalScorer(backend, build_color_classifier(device, clip_weights), options)
