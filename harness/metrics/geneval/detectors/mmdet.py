"""GenEval's own detector: mmdet 2.x's Mask2Former through mmdet.apis, when the user's environment has that stack
(GenEval pins mmdet 2.27.0 from source, mmcv-full 1.7.1); it cannot be installed next to this project's torch."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.metrics.geneval.detectors.base import Detections, Detector, check_image

CONFIG = "configs/mask2former/mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py"


class MMDetDetector(Detector):
    """inference_detector on one image; its (bbox, segm) per-class lists become Detections."""

    name = "mask2former-swin-s-mmdet"

    def __init__(self, model, classnames: Sequence[str]):
        self.model = model
        self.classnames = list(classnames)

    def detect(self, image: np.ndarray) -> Detections:
        from mmdet.apis import inference_detector

        bbox, segm = inference_detector(self.model, np.ascontiguousarray(check_image(image)[..., ::-1]))  # BGR
        out: Detections = {}
        for name, boxes, masks in zip(self.classnames, bbox, segm):
            if len(boxes):
                out[name] = [{"box": [float(v) for v in row[:4]], "score": float(row[4]), "mask": np.asarray(mask)}
                             for row, mask in zip(boxes, masks)]
        return out


def build(classnames: Sequence[str], checkpoint: str | Path, device: str = "cuda",
          config: str | Path | None = None) -> MMDetDetector:
    """init_detector with GenEval's config (from mmdet's source tree unless given) and the checkpoint."""
    try:
        import mmdet
        from mmdet.apis import init_detector
    except ImportError as error:
        raise HarnessError("the 'mmdet' GenEval detector needs mmdet 2.x and mmcv-full (GenEval's environment: "
                           "mmdet 2.27.0 installed from source, mmcv-full 1.7.1); use detector = 'mask2former' "
                           "(transformers) otherwise") from error
    if not mmdet.__version__.startswith("2."):
        raise HarnessError(f"the 'mmdet' GenEval detector needs mmdet 2.x, found {mmdet.__version__}")
    config = Path(config) if config else Path(os.path.dirname(mmdet.__file__)).parent / CONFIG
    if not config.is_file():
        raise HarnessError(f"mmdet config missing: {config} (install mmdet from source, or pass its config path)")
    if not Path(checkpoint).is_file():
        raise HarnessError(f"GenEval detector checkpoint missing: {checkpoint}; fetch it with "
                           "`harness assets --fetch mask2former-swin-s-coco`")
    return MMDetDetector(init_detector(str(config), str(checkpoint), device=device), classnames)
