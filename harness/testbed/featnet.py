"""The testbed's feature network: a small CNN classifier of the procedural shapes.

Its 128-d pooled features give `fd_testbed` and precision/recall in its space; its logits give `class_acc`.
It is trained on augmented images (blur, colour shift, pixel noise) so that distances measure shapes, sizes and
colours rather than the small imperfections every generated image has.
"""

from __future__ import annotations

import torch
from torch import nn


def _stage(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class ShapeNet(nn.Module):
    """Three conv stages (32-64-128), global average pool, linear head."""

    feature_dim = 128

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stages = nn.Sequential(_stage(3, 32), nn.MaxPool2d(2), _stage(32, 64), nn.MaxPool2d(2), _stage(64, 128))
        self.head = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 128) pooled features."""
        return self.stages(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @torch.no_grad()
    def features_and_logits(self, images_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, 3, H, W) -> (features, logits), in eval mode."""
        x = (images_uint8.float() - 127.5) / 127.5
        f = self.features(x)
        return f, self.head(f)
