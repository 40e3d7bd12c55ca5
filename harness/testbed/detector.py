"""The text-to-image testbed's world detector: a GenEval detector backend that knows the scenes.

Segmentation: pixels far from the background colour (estimated from the image's border) form connected components;
each component is one candidate object, its mask and its box (`mask2bbox`: [x_min, y_min, x_max + 1, y_max + 1]).
Classification: a small CNN (`ShapeClassifier`) reads the component's foreground strength in a square crop (colour
blind, so shape and colour are judged apart) and gives a probability for each shape and for `other` (merged or
broken objects, blobs); each component is reported under every shape with that probability as its score, as
Mask2Former reports one query under several classes. Colour: the median of the component's core pixels, named by
the nearest palette colour (the testbed's stand-in for GenEval's CLIP colour step).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from scipy import ndimage
from torch import nn

from harness.errors import HarnessError
from harness.metrics.geneval.detectors import Detections, Detector, check_image
from harness.testbed import scenes

CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "t2i_testbed_detector.safetensors"
LABELS = (*scenes.SHAPES, "other")
CROP = 16  # classifier input side
FOREGROUND = 60.0  # max-channel distance from the background (0..255) above which a pixel is foreground
MIN_PIXELS = 8  # smaller components are noise


class ShapeClassifier(nn.Module):
    """Three conv stages on a 1-channel 16x16 crop of foreground strength -> logits over LABELS."""

    def __init__(self, num_labels: int = len(LABELS)):
        super().__init__()
        def stage(c_in, c_out):
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))
        self.features = nn.Sequential(stage(1, 16), stage(16, 16), nn.MaxPool2d(2), stage(16, 32), nn.MaxPool2d(2),
                                      stage(32, 64))
        self.head = nn.Linear(64, num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def foreground_strength(image: np.ndarray) -> np.ndarray:
    """(H, W) max-channel distance of each pixel from the background colour (median of the 1-pixel border)."""
    img = image.astype(np.float32)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    return np.abs(img - np.median(border, axis=0)).max(axis=-1)


def segment(image: np.ndarray) -> tuple[list[np.ndarray], list[list[float]], np.ndarray]:
    """Component masks (bool HxW), their boxes, and the foreground strength map of one uint8 HxWx3 image."""
    strength = foreground_strength(image)
    labels, count = ndimage.label(strength > FOREGROUND)
    masks, boxes = [], []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        mask = labels == k
        if mask.sum() < MIN_PIXELS:
            continue
        masks.append(mask)
        boxes.append([float(sl[1].start), float(sl[0].start), float(sl[1].stop), float(sl[0].stop)])
    return masks, boxes, strength


def crops(strength: np.ndarray, masks: list[np.ndarray], boxes: list[list[float]]) -> torch.Tensor:
    """(K, 1, 16, 16) classifier inputs: each component's strength (others blanked) in a square box with a margin."""
    out = torch.zeros(len(masks), 1, CROP, CROP)
    h, w = strength.shape
    for i, (mask, (x1, y1, x2, y2)) in enumerate(zip(masks, boxes)):
        grown = ndimage.binary_dilation(mask, iterations=1)  # keep the anti-aliased rim
        s = np.where(grown, strength, 0.0) / 255.0
        side = max(x2 - x1, y2 - y1) + 2
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        n = int(side)
        pad = np.zeros((n, n), np.float32)
        xs, ys = max(x0, 0), max(y0, 0)
        xe, ye = min(x0 + n, w), min(y0 + n, h)
        pad[ys - y0 : ye - y0, xs - x0 : xe - x0] = s[ys:ye, xs:xe]
        t = torch.from_numpy(pad)[None, None]
        out[i] = F.interpolate(t, size=(CROP, CROP), mode="bilinear", align_corners=False)[0]
    return out


def color_name(image: np.ndarray, mask: np.ndarray, strength: np.ndarray) -> str:
    """The palette colour nearest the median of the component's core pixels (strength >= half its maximum)."""
    core = mask & (strength >= 0.5 * strength[mask].max())
    rgb = np.median(image[core].astype(np.float32) / 255.0, axis=0)
    names = list(scenes.COLORS)
    palette = np.array([scenes.COLORS[c] for c in names])
    return names[int(np.argmin(((palette - rgb) ** 2).sum(axis=1)))]


def labelled_crops(images: np.ndarray, masks: list[np.ndarray], shapes: list[list[str]]) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
    """Classifier examples from rendered (and degraded) scenes: every component `segment` finds, labelled with its
    object's shape when it is one whole object and nothing else, else `other` (merged, broken, noise)."""
    xs, ys = [], []
    for image, cover, names in zip(images, masks, shapes):
        comps, boxes, strength = segment(image)
        if not comps:
            continue
        objects = cover > 0.5  # (k, H, W)
        for comp in comps:
            inside = (objects & comp).sum(axis=(1, 2))
            whole = inside >= 0.8 * objects.sum(axis=(1, 2)).clip(min=1)
            touched = inside >= 0.2 * objects.sum(axis=(1, 2)).clip(min=1)
            one = touched.sum() == 1 and whole.any()
            ys.append(scenes.SHAPES.index(names[int(np.argmax(inside))]) if one else len(LABELS) - 1)
        xs.append(crops(strength, comps, boxes))
    return torch.cat(xs), torch.tensor(ys)


class WorldDetector(Detector):
    """GenEval detector backend for the testbed world: image -> {shape: [{"box", "score", "mask"}]}."""

    name = "testbed"

    def __init__(self, weights_path: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
        path = Path(weights_path or os.environ.get("HARNESS_T2I_DETECTOR", CHECKPOINT))
        if not path.is_file():
            raise HarnessError(f"testbed shape classifier {path} not found: it ships in checkpoints/; "
                               "`python -m harness.testbed.train --only detector` retrains it")
        self.net = ShapeClassifier()
        try:
            self.net.load_state_dict(load_file(str(path)))
        except Exception as err:  # noqa: BLE001 - wrong shapes or a corrupted file
            raise HarnessError(f"testbed shape classifier {path} does not load: {err}") from err
        self.device = torch.device(device)
        self.net = self.net.to(self.device).eval()

    @torch.no_grad()
    def detect(self, image: np.ndarray) -> Detections:
        masks, boxes, strength = segment(check_image(image))
        out: dict[str, list[dict]] = {}
        if not masks:
            return out
        probs = self.net(crops(strength, masks, boxes).to(self.device)).softmax(-1).cpu().numpy()
        for mask, box, p in zip(masks, boxes, probs):
            for k, shape in enumerate(scenes.SHAPES):
                out.setdefault(shape, []).append({"box": box, "score": float(p[k]), "mask": mask})
        return out

    def detect_with_colors(self, image: np.ndarray) -> Detections:
        """Detections with the colour step applied ("color" on every detection), ready for `judge`."""
        detections = self.detect(image)
        strength = foreground_strength(image)
        for found in detections.values():
            for d in found:
                d["color"] = color_name(image, d["mask"], strength)
        return detections
