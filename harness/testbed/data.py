"""Procedural class-conditional shapes: the embedded testbed's dataset, deterministic from a seed and unlimited.

Ten classes with silhouettes that stay distinct under rotation. Within a class the size, position, rotation,
foreground colour and background shade vary, so a sampler that collapses onto one look loses recall.
Shapes are drawn at 2x resolution and 2x2 average-pooled, which anti-aliases their edges.
"""

from __future__ import annotations

import numpy as np

CLASSES = ("disc", "ring", "square", "frame", "triangle", "cross", "stripes", "half-disc", "checker", "crescent")
PALETTE = np.array(  # foreground colours, RGB in [0, 1]
    [[0.95, 0.25, 0.2], [0.2, 0.75, 0.3], [0.25, 0.45, 0.95], [0.95, 0.85, 0.2], [0.9, 0.4, 0.9], [0.3, 0.9, 0.9]]
)
BACKGROUNDS = np.array([0.08, 0.2, 0.32])  # grey levels
IMAGE_SIZE = 32
TRAIN_SEED, HELDOUT_SEED = 0, 1_000_003  # reference statistics come from a draw disjoint from training
SCALE = (0.55, 0.85)  # shape radius as a fraction of the half-image
MAX_OFFSET = 0.12  # centre jitter, as a fraction of the half-image
MAX_ROTATION = 0.4  # radians either way


def _inside(kind: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of shape `kind` in its own normalised frame (unit radius)."""
    r = np.sqrt(u * u + v * v)
    box = np.maximum(np.abs(u), np.abs(v))
    if kind == 0:
        return r <= 1.0
    if kind == 1:
        return (r <= 1.0) & (r >= 0.55)
    if kind == 2:
        return box <= 0.8
    if kind == 3:
        return (box <= 0.85) & (box >= 0.5)
    if kind == 4:
        return (v >= -0.5) & (np.sqrt(3.0) * np.abs(u) + v <= 1.0)
    if kind == 5:
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95))
    if kind == 6:
        return (np.abs(u) <= 0.9) & (np.abs(v) <= 0.9) & (np.floor((v + 0.9) / 0.36) % 2 == 0)
    if kind == 7:
        return (r <= 1.0) & (v >= -0.1)
    if kind == 8:  # 2x2 checkerboard: two diagonal squares
        return (box <= 0.8) & (u * v >= 0)
    if kind == 9:  # the disc minus a disc shifted right
        return (r <= 1.0) & ((u - 0.55) ** 2 + v * v >= 0.75**2)
    raise ValueError(f"unknown class {kind}")


def render(labels: np.ndarray, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 images (B, size, size, 3) of the given classes, every nuisance drawn from `rng`."""
    n = len(labels)
    hi = 2 * size
    scale = rng.uniform(*SCALE, n)
    centre = rng.uniform(-MAX_OFFSET, MAX_OFFSET, (n, 2))
    angle = rng.uniform(-MAX_ROTATION, MAX_ROTATION, n)
    colour = PALETTE[rng.integers(len(PALETTE), size=n)]
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS), size=n)]
    axis = (np.arange(hi) + 0.5) / hi * 2.0 - 1.0
    gy, gx = np.meshgrid(axis, axis, indexing="ij")  # (hi, hi), y pointing down
    dx = gx[None] - centre[:, 0, None, None]
    dy = gy[None] - centre[:, 1, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u = (cos * dx + sin * dy) / scale[:, None, None]
    v = (-sin * dx + cos * dy) / scale[:, None, None]
    mask = np.zeros((n, hi, hi), dtype=np.float64)
    for kind in np.unique(labels):
        sel = labels == kind
        mask[sel] = _inside(int(kind), u[sel], v[sel])
    mask = mask.reshape(n, size, 2, size, 2).mean(axis=(2, 4))[..., None]  # anti-aliased coverage
    image = mask * colour[:, None, None, :] + (1.0 - mask) * background[:, None, None, None]
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def draw(n: int, seed: int, num_classes: int = len(CLASSES)) -> tuple[np.ndarray, np.ndarray]:
    """n images with uniform labels, deterministic from `seed`: (uint8 NHWC, int64 labels)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(num_classes, size=n)
    chunks = [render(labels[i : i + 2048], rng) for i in range(0, n, 2048)]  # bounded memory
    return np.concatenate(chunks) if chunks else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8), labels


def to_model_space(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW in [-1, 1], the inverse of harness.sampling.to_uint8 up to rounding."""
    return (images.astype(np.float32).transpose(0, 3, 1, 2) - 127.5) / 127.5
