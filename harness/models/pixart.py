"""PixArt-Sigma as a harness network: diffusers' PixArtTransformer2DModel, unmodified, routed by forward hooks.

PixArt-Sigma was trained dense; routing its weak branch (SG) is the training-free variant, so suites must say the
model was not trained for routing. The network output is DDPM epsilon plus learned-sigma channels (out_channels 8) on
the IDDPM "linear" schedule (betas 1e-4..0.02, 1000 steps: diffusers' convert_pixart_sigma_to_diffusers.py builds
DPMSolverMultistepScheduler() with these defaults), which is the harness's `dit` convention: it takes the first
`in_channels` output channels as epsilon and converts them to the flow velocity.

Text is T5 v1.1 XXL token states (up to 300 tokens) with their attention mask; the null caption is the encoded empty
prompt "" with its mask, as PixArtSigmaPipeline's negative prompt. Weights: the diffusers `transformer` folder's
`diffusion_pytorch_model.safetensors` loads into `net.weights_module` (the PixArtTransformer2DModel) unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from harness.errors import HarnessError
from harness.models.adapters import TextCondition
from harness.models.tokens import num_sparse, select_tokens
from harness.models.family import Family, FamilyConfig
from harness.models.route_hooks import TokenRouter

INSTALL_HINT = "pip install -e '.[t2i]' (or pip install diffusers transformers sentencepiece)"


def pixart_class() -> type[nn.Module]:
    """diffusers' PixArtTransformer2DModel; one HarnessError saying what to install when diffusers is missing."""
    try:
        from diffusers import PixArtTransformer2DModel
    except ImportError as err:
        raise HarnessError(f"PixArt models need diffusers, which is not installed ({err}); {INSTALL_HINT}") from err
    return PixArtTransformer2DModel


@dataclass(frozen=True)
class PixArtConfig(FamilyConfig):
    """PixArtTransformer2DModel's constructor arguments that differ between sizes (diffusers' names; the rest are
    its defaults, which are PixArt's), plus the harness's sparsity fields. The latent side is `sample_size`."""

    NAME, SPARSITIES, DEPTH, SIDE = "PixArt", ("none", "routing"), "num_layers", "sample_size"

    sample_size: int = 64
    num_layers: int = 28
    num_attention_heads: int = 16
    attention_head_dim: int = 72
    in_channels: int = 4
    out_channels: int = 8
    patch_size: int = 2
    cross_attention_dim: int = 1152
    caption_channels: int | None = 4096
    interpolation_scale: float | None = None
    use_additional_conditions: bool = False
    caption_length: int = 300  # T5 tokens the pipeline encodes (max_sequence_length); FLOP counting
    sparsity: str = "routing"  # "routing" | "none"
    route: tuple[int, int] | None = None

    @property
    def input_size(self) -> int:
        return self.sample_size

    @property
    def depth(self) -> int:
        return self.num_layers

    def diffusers_kwargs(self) -> dict:
        names = ("sample_size", "num_layers", "num_attention_heads", "attention_head_dim", "in_channels",
                 "out_channels", "patch_size", "cross_attention_dim", "caption_channels", "interpolation_scale",
                 "use_additional_conditions")
        return {name: getattr(self, name) for name in names}


class PixArtNetwork(nn.Module):
    """forward(x, step, TextCondition, gamma, generators, ids) -> (B, 2C, H, W) epsilon and learned variance."""

    def __init__(self, config: PixArtConfig):
        super().__init__()
        self.config = config
        self.transformer = pixart_class()(**config.diffusers_kwargs())
        self.router = (TokenRouter(self.transformer.transformer_blocks, *config.route)
                       if config.sparsity == "routing" else None)

    @property
    def weights_module(self) -> nn.Module:
        """What a checkpoint (diffusers' transformer state dict) loads into."""
        return self.transformer

    def dummy_inputs(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, TextCondition]:
        """(x, t, caption) of the right shapes for FLOP counting; the mask is None (every text token real): FLOPs
        do not depend on it, and fake tensors cannot be inspected for an all-true mask."""
        cfg = self.config
        x = torch.empty(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size)
        width = cfg.caption_channels or cfg.cross_attention_dim
        return x, torch.empty(batch), TextCondition(torch.empty(batch, cfg.caption_length, width), None)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: TextCondition,
        gamma: float = 0.0,
        generators: Sequence[torch.Generator] | None = None,
        ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw transformer output at routing rate `gamma`; t is the (fractional) DDPM step, `cond` the T5 states
        and mask. `ids` (B, N_keep) fixes the image tokens kept inside the route instead of drawing them."""
        cfg = self.config
        if gamma > 0 and cfg.sparsity == "none":
            raise ValueError("this model was built without token sparsity; gamma must be 0")
        B, _, H, W = x.shape
        N = (H // cfg.patch_size) * (W // cfg.patch_size)
        if ids is None and num_sparse(N, gamma) > 0:
            ids = select_tokens(B, N, gamma, generators, x.device)
        added = {"resolution": None, "aspect_ratio": None}  # what PixArtSigmaPipeline passes
        if cfg.use_additional_conditions:  # PixArt-alpha 1024: image size and aspect ratio micro-conditions
            added = {"resolution": torch.tensor([[8.0 * H, 8.0 * W]], device=x.device).expand(B, 2),
                     "aspect_ratio": torch.tensor([[H / W]], device=x.device).expand(B, 1)}
        mask = cond.mask
        route = self.router.routing(ids) if ids is not None else nullcontext()
        with route:
            return self.transformer(x, encoder_hidden_states=cond.states.to(x.dtype), timestep=t,
                                    added_cond_kwargs=added, encoder_attention_mask=mask, return_dict=False)[0]


# PixArt-Sigma XL/2 (diffusers' conversion script: 28 blocks, 16 heads of 72, T5-XXL captions, no micro-conditions,
# interpolation_scale = image size / 512) at 512 and 1024 px; PixArt-Test is a tiny config of the same classes.
_SIGMA = dict(convention="dit", sample_size=64, num_layers=28, num_attention_heads=16,
              attention_head_dim=72, in_channels=4, out_channels=8, patch_size=2, cross_attention_dim=1152,
              caption_channels=4096, interpolation_scale=1.0, use_additional_conditions=False, caption_length=300)
PRESETS: dict[str, dict] = {
    "PixArt-Sigma-XL/2-512": _SIGMA,
    "PixArt-Sigma-XL/2-1024": dict(_SIGMA, sample_size=128, interpolation_scale=2.0),
    "PixArt-Test": dict(_SIGMA, sample_size=8, num_layers=4, num_attention_heads=2, attention_head_dim=8,
                        cross_attention_dim=16, caption_channels=12, caption_length=8),
}

FAMILY = Family(PixArtConfig, PixArtNetwork, PRESETS)

__all__ = ["FAMILY", "PixArtConfig", "PixArtNetwork", "pixart_class"]
