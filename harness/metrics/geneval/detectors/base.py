"""The detector-backend interface of GenEval: an image in, raw per-class detections out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

# {class_name: [{"box": [x1, y1, x2, y2], "score": s, "mask": bool (H, W)}, ...]}, in the detector's own order,
# before any threshold; classes without detections may be left out.
Detections = dict[str, list[dict[str, Any]]]


class Detector(ABC):
    """A GenEval detector backend. `name` is recorded with every result it makes."""

    name: str = "detector"

    @abstractmethod
    def detect(self, image: np.ndarray) -> Detections:
        """Raw detections of one uint8 (H, W, 3) RGB image: boxes in pixels, masks at the image's size."""


def check_image(image: np.ndarray) -> np.ndarray:
    """The image as a uint8 (H, W, 3) array, or a ValueError saying what it is instead."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"a detector takes a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")
    return image
