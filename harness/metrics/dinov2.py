"""DINOv2 ViT-L/14 features as EDM2's `calculate_metrics.py` takes them, for `fd_dinov2` (and precision/recall).

EDM2's DINOv2Detector (NVlabs/edm2, resize_mode='torch', its default): uint8 NCHW images -> float32 ->
`F.interpolate(size=(224, 224), mode='bicubic', antialias=True)` (no rounding, no clamping) -> `/ 255` ->
minus ImageNet mean (0.485, 0.456, 0.406), divided by std (0.229, 0.224, 0.225) -> `dinov2_vitl14` from torch.hub,
whose output is the final-LayerNorm CLS token (1024 dims). dgm-eval (layer6ai-labs, models/dinov2.py) instead
resizes the PIL image with torchvision `Resize((224, 224), BICUBIC)` (PIL's bicubic on uint8, so the result is
rounded and clamped to 0..255) before ToTensor and the same normalisation; EDM2's resize_mode='pil' reproduces that
and calls its 'torch' mode "almost the same".

The network is transformers' Dinov2Model with the weights of `facebook/dinov2-large` (the hub conversion of
dinov2_vitl14_pretrain.pth); its pooler output is the same LayerNorm CLS token. Its position embeddings are resized
here as the dinov2 repository does (bicubic with scale factor (16 + 0.1) / 37, no antialias), not as transformers
does (to an output size), so the 224-pixel input sees the torch.hub model's embeddings.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from harness.errors import HarnessError
from harness.files import file_sha256
from harness.metrics.extractor import FeatureExtractor

ASSET = "dinov2-vitl14"
INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATE_OFFSET = 0.1  # dinov2's vision_transformer.py interpolate_offset
# ViT-L/14 as facebook/dinov2-large's config.json (pretrained at 518 px: 37 x 37 position embeddings).
VITL14 = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4, patch_size=14,
              image_size=518, layer_norm_eps=1e-6, layerscale_value=1.0, use_swiglu_ffn=False)
# Dry runs and tests: random weights in a small ViT with the same patch size and preprocessing.
TINY = dict(VITL14, hidden_size=64, num_hidden_layers=2, num_attention_heads=2)


def edm2_preprocess(images: torch.Tensor) -> torch.Tensor:
    """EDM2's DINOv2 input from uint8 NHWC images: bicubic antialiased resize to 224 in float32, ImageNet norm."""
    x = images.permute(0, 3, 1, 2).to(torch.float32)
    x = torch.nn.functional.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bicubic", antialias=True)
    x = x / 255
    x = x - torch.tensor(IMAGENET_MEAN, device=x.device).reshape(1, -1, 1, 1)
    return x / torch.tensor(IMAGENET_STD, device=x.device).reshape(1, -1, 1, 1)


def _hub_interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Position embeddings resized as facebookresearch/dinov2's interpolate_pos_encoding does (scale factor
    (n + 0.1) / M, bicubic, no antialias), bound to a transformers Dinov2Embeddings."""
    pos = self.position_embeddings.float()
    n_pos = pos.shape[1] - 1
    w0, h0 = width // self.patch_size, height // self.patch_size
    if embeddings.shape[1] - 1 == n_pos and width == height:
        return self.position_embeddings
    side = int(math.sqrt(n_pos))
    patch = torch.nn.functional.interpolate(
        pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2), mode="bicubic", antialias=False,
        scale_factor=((w0 + INTERPOLATE_OFFSET) / side, (h0 + INTERPOLATE_OFFSET) / side))
    patch = patch.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])
    return torch.cat((pos[:, :1], patch), dim=1).to(embeddings.dtype)


def build_dinov2(config: dict, weights: Path | None) -> torch.nn.Module:
    """transformers' Dinov2Model with the dinov2 repository's position-embedding resize; random when no weights."""
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(**config)
    model = Dinov2Model(cfg)
    if weights is not None:
        from safetensors.torch import load_file

        try:
            model.load_state_dict(load_file(str(weights)))
        except (RuntimeError, OSError) as error:
            raise HarnessError(f"DINOv2 weights {weights} do not fit transformers' ViT-L/14: {error}") from error
    model.embeddings.patch_size = cfg.patch_size
    model.embeddings.interpolate_pos_encoding = _hub_interpolate_pos_encoding.__get__(model.embeddings)
    return model.eval().requires_grad_(False)


def _weights_file(weights_path: str | os.PathLike | None) -> Path:
    """model.safetensors of facebook/dinov2-large: `weights_path`, else the manifest asset, else the hub cache."""
    if weights_path:
        path = Path(weights_path)
    else:
        from harness.assets import hub_cached, load_manifest

        asset = load_manifest().get(ASSET)
        files = asset.downloads() if asset is not None else []
        path = next((d.dest for d in files if d.dest.name.endswith(".safetensors")), Path(ASSET))
        if not path.is_file() and asset is not None and hub_cached(asset.hub, asset.files):
            from huggingface_hub import try_to_load_from_cache

            path = Path(try_to_load_from_cache(asset.hub, "model.safetensors"))
    if not path.is_file():
        raise HarnessError(f"DINOv2 ViT-L/14 weights are missing: expected {path}; `harness assets --fetch {ASSET}`")
    return path


class Dinov2Extractor(FeatureExtractor):
    """DINOv2 ViT-L/14 CLS features (`pool`, 1024 dims) with EDM2's preprocessing; the network loads on first use,
    so a run whose features are cached never reads the weights."""

    provides = ("pool",)

    def __init__(self, device: str | torch.device = "cpu", weights_path: str | os.PathLike | None = None,
                 random_weights: bool = False, seed: int = 0) -> None:
        super().__init__(device)
        self.random_weights, self.seed = random_weights, seed
        self.weights = None if random_weights else _weights_file(weights_path)
        self._net: torch.nn.Module | None = None

    @property
    def cache_key(self) -> str:
        """dinov2-vitl14 and the weights file's sha256 (random weights: their config and seed)."""
        if self.weights is None:
            return f"dinov2-random-tiny-seed{self.seed}"
        return f"dinov2-vitl14-{file_sha256(self.weights)[:16]}"

    @property
    def net(self) -> torch.nn.Module:
        """The network, built on first use (random tiny weights in dry runs)."""
        if self._net is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                net = build_dinov2(TINY if self.weights is None else VITL14, self.weights)
            self._net = net.to(self.device)
        return self._net

    def forward_batch(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The final-LayerNorm CLS token of each image."""
        return {"pool": self.net(pixel_values=edm2_preprocess(images)).pooler_output}
