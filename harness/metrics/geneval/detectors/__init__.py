"""GenEval detector backends, by name: each maps an image to raw per-class detections (see base.Detector).

Backends with heavy dependencies are imported on first use ("module:factory").
"""

from __future__ import annotations

from typing import Any

from harness import registry
from harness.metrics.geneval.detectors.base import Detections, Detector, check_image

__all__ = ["DETECTORS", "Detections", "Detector", "build_detector", "check_image"]

DETECTORS: dict[str, str] = {
    "mask2former": "harness.metrics.geneval.detectors.mask2former:build",  # mmdet's checkpoint in transformers, no mmcv
    "mmdet": "harness.metrics.geneval.detectors.mmdet:build",  # the official stack, where installed
}
DETECTORS["testbed"] = "harness.testbed.detector:WorldDetector"  # the text-to-image testbed's world detector


def build_detector(name: str, **options: Any) -> Detector:
    """Build a registered detector backend with its options (checkpoint path, device, ...)."""
    return registry.lookup(DETECTORS, name, "GenEval detector")(**options)
