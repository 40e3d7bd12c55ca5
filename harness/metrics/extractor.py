"""The feature-extractor interface: uint8 NHWC images in, named float32 feature arrays out."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

# Feature names an extractor may provide: global features (FD, precision/recall), spatial features (sFID),
# class logits (IS, classifier accuracy).
FEATURE_KEYS = ("pool", "spatial", "logits")


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Turn TF32 off for matmuls and convolutions and restore the previous flags, so features are full fp32."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def rebatch(arrays: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Regroup image arrays of any sizes into batches of exactly batch_size (the last may be short).

    Batches then never depend on how the images were sharded, so GPU features do not either.
    """
    pending: list[np.ndarray] = []
    count = 0
    for array in arrays:
        pending.append(array)
        count += len(array)
        while count >= batch_size:
            joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
            yield joined[:batch_size]
            rest = joined[batch_size:]
            pending, count = ([rest] if len(rest) else []), len(rest)
    if count:
        yield np.concatenate(pending) if len(pending) > 1 else pending[0]


class FeatureExtractor(ABC):
    """A network that maps uint8 [B, H, W, 3] images to features named in FEATURE_KEYS (a subclass per network)."""

    provides: tuple[str, ...] = ()

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)

    @property
    @abstractmethod
    def cache_key(self) -> str:
        """Names the network and its weights, so cached features are reused only for the same ones."""

    @abstractmethod
    def forward_batch(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of one batch: images is uint8 [B, H, W, 3] on self.device; returns {key: [B, D]}."""

    def extract(
        self,
        arrays: Iterable[np.ndarray],
        total: int | None = None,
        batch_size: int = 64,
        desc: str = "features",
        progress: bool = True,
    ) -> dict[str, np.ndarray]:
        """Features of all images in arrays (uint8 NHWC chunks of any size), as float32 [N, D] per key."""
        out: dict[str, list[np.ndarray]] = {}
        with tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False) as bar:
            with torch.inference_mode(), no_tf32():
                for batch in rebatch(arrays, batch_size):
                    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
                        raise ValueError(f"images must be uint8 [N, H, W, 3], got {batch.dtype} {batch.shape}")
                    images = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
                    for key, value in self.forward_batch(images).items():
                        out.setdefault(key, []).append(value.float().cpu().numpy())
                    bar.update(len(batch))
        if not out:
            raise ValueError("no images to extract features from")
        return {key: np.concatenate(values) for key, values in out.items()}
