"""The testbed's feature network as the `testbed` extractor (fd_testbed, precision/recall_testbed, class_acc) and
the testbed's reference images, a held-out draw of the procedural data (`reference = "testbed:10000"`)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from harness.errors import HarnessError
from harness.metrics import FeatureExtractor, register_feature_extractor
from harness.testbed import data
from harness.testbed.featnet import ShapeNet

CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "testbed_features.safetensors"


class TestbedExtractor(FeatureExtractor):
    """ShapeNet's pooled 128-d features ("pool") and its class logits ("logits")."""

    provides = ("pool", "logits")

    def __init__(self, device: str | torch.device = "cpu", weights_path: str | os.PathLike | None = None) -> None:
        super().__init__(device)
        path = Path(weights_path or os.environ.get("HARNESS_TESTBED_FEATURES", CHECKPOINT))
        if not path.is_file():
            raise HarnessError(f"testbed feature network {path} not found: it ships in checkpoints/; "
                               "`make testbed` retrains it")
        net = ShapeNet(len(data.CLASSES))
        net.load_state_dict(load_file(str(path)))
        self.net = net.to(self.device).eval()
        self._key = f"testbed-shapenet-{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"

    @property
    def cache_key(self) -> str:
        return self._key

    def forward_batch(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features, logits = self.net.features_and_logits(images.permute(0, 3, 1, 2))
        return {"pool": features, "logits": logits}


def reference_images(count: int) -> np.ndarray:
    """`count` held-out testbed images (uint8 NHWC), disjoint from the training draw."""
    return data.draw(count, data.HELDOUT_SEED)[0]


register_feature_extractor("testbed", TestbedExtractor, ("pool", "logits"), "the testbed's ShapeNet classifier")
