"""CMMD (Jayasumana et al. 2024, "Rethinking FID"), as google-research/cmmd defines it, with a bootstrap interval.

Embeddings (cmmd/io_util.py, embedding.py): each image centre-cropped to a square and resized to 336 x 336 with
PIL's bicubic filter (on uint8 RGB), scaled to [0, 1], normalised with CLIP's mean and std, and embedded by CLIP
ViT-L/14 at 336 px (OpenAI's weights; here through open-clip, `ViT-L-14-336`/`openai` with QuickGELU), the image
embedding L2-normalised (scenic's CLIP model normalises by default). Distance (cmmd/distance.py): the biased
(minimum-variance) MMD^2 estimate with a Gaussian RBF kernel k(x, y) = exp(-|x - y|^2 / (2 sigma^2)), sigma = 10,
times 1000: 1000 (mean K_xx + mean K_yy - 2 mean K_xy). Computed here in float64 (the reference: float32 in JAX).

`cmmd_ci`: a 95% percentile interval over samples resampled with replacement (reference fixed); the kernel sums
of every resample are accumulated in one blockwise pass over the kernel matrices, on the evaluation's device.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from PIL import Image

from harness.metrics.extractor import FeatureExtractor
from harness.metrics.scores import BOOTSTRAP_LEVEL, check_resamples, resamples_for

ASSET = "clip-vit-l-14-336-openai"
ARCH, PRETRAINED = "ViT-L-14-336", "openai"
SIZE = 336
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGMA, SCALE = 10.0, 1000.0
BLOCK = 4096  # rows per kernel block: 4096^2 float64 = 128 MB
# Dry runs and tests: random weights in a one-layer CLIP that takes the same 336-pixel input.
TINY = dict(embed_dim=32, vision_cfg=dict(image_size=SIZE, layers=1, width=64, head_width=32, patch_size=48),
            text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=1))


def cmmd_preprocess(images: np.ndarray) -> torch.Tensor:
    """cmmd's input from uint8 NHWC images: centre square crop, PIL bicubic to 336, / 255, CLIP normalisation."""
    out = []
    for image in images:
        pil = Image.fromarray(np.asarray(image), "RGB")
        w, h = pil.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        pil = pil.crop((left, top, left + side, top + side)).resize((SIZE, SIZE), resample=Image.BICUBIC)
        out.append(np.asarray(pil).astype(np.float32) / 255.0)
    x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    return (x - torch.tensor(CLIP_MEAN).reshape(1, 3, 1, 1)) / torch.tensor(CLIP_STD).reshape(1, 3, 1, 1)


class ClipExtractor(FeatureExtractor):
    """L2-normalised CLIP ViT-L/14-336 image embeddings (`pool`, 768 dims) with cmmd's preprocessing; the network
    loads on first use, so a run whose features are cached never reads the weights."""

    provides = ("pool",)

    def __init__(self, device: str | torch.device = "cpu", weights_path: str | os.PathLike | None = None,
                 random_weights: bool = False, seed: int = 0) -> None:
        super().__init__(device)
        self.random_weights, self.seed = random_weights, seed
        self.weights = None
        if not random_weights:
            from harness.metrics.open_clip_models import asset_weights

            self.weights = asset_weights(ARCH, PRETRAINED, weights_path, ASSET)
        self._net: torch.nn.Module | None = None

    @property
    def cache_key(self) -> str:
        """The architecture and the weights file's sha256 (random weights: the tiny config and seed)."""
        if self.weights is None:
            return f"clip-random-tiny-seed{self.seed}"
        from harness.files import file_sha256

        return f"clip-{ARCH}-{PRETRAINED}-{file_sha256(self.weights)[:16]}"

    @property
    def net(self) -> torch.nn.Module:
        """The open-clip model, built on first use."""
        if self._net is None:
            from harness.metrics.open_clip_models import TINY_ARCH, load_open_clip

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                if self.weights is None:
                    model, _, _ = load_open_clip(TINY_ARCH, None, self.device, **TINY)
                else:
                    model, _, _ = load_open_clip(ARCH, PRETRAINED, self.device, weights=self.weights)
            self._net = model
        return self._net

    def forward_batch(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unit-length image embeddings."""
        x = cmmd_preprocess(images.cpu().numpy()).to(self.device)
        embedding = self.net.encode_image(x).float()
        return {"pool": embedding / embedding.norm(dim=-1, keepdim=True)}


def weighted_kernel_sums(a: torch.Tensor, b: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor,
                         sigma: float = SIGMA, block: int = BLOCK) -> torch.Tensor:
    """sum_ij wa[r, i] k(a_i, b_j) wb[r, j] for each row r of the weights, k the RBF kernel, in blocks of rows."""
    gamma = 1.0 / (2.0 * sigma**2)
    na, nb = (a * a).sum(dim=1), (b * b).sum(dim=1)
    total = torch.zeros(wa.shape[0], dtype=a.dtype, device=a.device)
    for i in range(0, len(a), block):
        for j in range(0, len(b), block):
            sq = na[i:i + block, None] + nb[None, j:j + block] - 2.0 * a[i:i + block] @ b[j:j + block].T
            total += ((wa[:, i:i + block] @ torch.exp(-gamma * sq)) * wb[:, j:j + block]).sum(dim=1)
    return total


def cmmd(x: np.ndarray, y: np.ndarray, device: str | torch.device = "cpu") -> float:
    """CMMD between embedding sets x [n, d] and y [m, d] (float64)."""
    return float(_cmmd_resampled(x, y, np.ones((1, len(x))), device)[0])


def _cmmd_resampled(x: np.ndarray, y: np.ndarray, counts: np.ndarray, device: str | torch.device) -> np.ndarray:
    """CMMD of x reweighted by each row of `counts` (multinomial draws summing to n) against y."""
    xt = torch.as_tensor(np.asarray(x, np.float64), device=device)
    yt = torch.as_tensor(np.asarray(y, np.float64), device=device)
    w = torch.as_tensor(np.asarray(counts, np.float64), device=device)
    n, m = len(xt), len(yt)
    ones_y = torch.ones(1, m, dtype=torch.float64, device=device)
    k_xx = weighted_kernel_sums(xt, xt, w, w) / n**2
    k_xy = weighted_kernel_sums(xt, yt, w, ones_y.expand(len(w), m)) / (n * m)
    k_yy = weighted_kernel_sums(yt, yt, ones_y, ones_y) / m**2
    return (SCALE * (k_xx + k_yy - 2.0 * k_xy)).cpu().numpy()


def score_cmmd(spec: Any, inputs: Any, seed: int = 0) -> dict[str, Any]:
    """`cmmd` of the samples' embeddings against the reference's, and `cmmd_ci` (bootstrap over samples)."""
    x = np.asarray(inputs.samples(spec.extractor)[spec.feature])
    y = np.asarray(inputs.reference(spec.extractor)[spec.feature])
    n = len(x)
    resamples = resamples_for(x.shape[1], inputs.bootstrap) if n >= 2 else 0
    rng = np.random.default_rng(seed)
    counts = [np.ones(n)] + [np.bincount(rng.integers(0, n, size=n), minlength=n) for _ in range(resamples)]
    values = _cmmd_resampled(x, y, np.stack(counts), inputs.device)
    results: dict[str, Any] = {spec.name: float(values[0])}
    if resamples >= 2:
        check_resamples(resamples)
        lo, hi = np.quantile(values[1:], [(1.0 - BOOTSTRAP_LEVEL) / 2.0, (1.0 + BOOTSTRAP_LEVEL) / 2.0])
        results[f"{spec.name}_ci"] = [min(float(lo), results[spec.name]), max(float(hi), results[spec.name])]
    return results
