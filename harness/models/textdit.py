"""A text-conditioned SiT-style backbone: DiT blocks with cross-attention to text tokens and TREAD routing.

Each block is adaLN-Zero self-attention, cross-attention from the image tokens to the text tokens (PixArt-alpha's
layout: no modulation, output projection zero-initialised) and an adaLN-Zero MLP. The text also enters the adaLN
vector through its masked mean, so a caption cannot be ignored at the start of training. Token sparsity is TREAD
routing of image tokens around blocks route[0]..route[1] at rate gamma; text tokens are keys and values only and are
never routed. Kept tokens are drawn with `harness.models.dit.select_tokens` (the same per-image draw as SparseDiT).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.adapters import TextCondition
from harness.models.dit import Attention, FinalLayer, Mlp, PatchEmbed, TimestepEmbedder, modulate, sincos_pos_embed_2d
from harness.models.family import Family, FamilyConfig
from harness.models.tokens import gather_tokens, num_sparse, select_tokens, unpatchify


@dataclass(frozen=True)
class TextDiTConfig(FamilyConfig):
    """Parameter shapes and sparsity mechanics of one text-conditioned backbone."""

    NAME, SPARSITIES = "TextDiT", ("none", "routing")

    input_size: int = 32
    patch_size: int = 4
    in_channels: int = 3
    hidden_size: int = 128
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0
    text_dim: int = 64  # channels C of the text encoder's states (B, L, C)
    text_len: int = 16  # token count L of dummy_inputs (FLOP counting); any L works in forward
    learn_sigma: bool = False
    sparsity: str = "none"  # "none" | "routing"
    route: tuple[int, int] | None = None  # (first, last) block inside the route, 0-based, inclusive

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels


class CrossAttention(nn.Module):
    """Image tokens (queries) attend to text tokens (keys, values); `mask` (B, L) True = a real text token."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        L, h = text.shape[1], self.num_heads
        q = self.q(x).reshape(B, N, h, C // h).transpose(1, 2)  # (B, h, N, C/h)
        k, v = self.kv(text).reshape(B, L, 2, h, C // h).permute(2, 0, 3, 1, 4)  # (B, h, L, C/h) each
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class TextDiTBlock(nn.Module):
    """adaLN-Zero self-attention, plain cross-attention to the text, adaLN-Zero MLP."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm_cross = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.cross_attn = CrossAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + self.cross_attn(self.norm_cross(x), text, mask)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class TextDiT(nn.Module):
    """SiT-style text-to-image network with TREAD routing of image tokens at any rate gamma."""

    def __init__(self, config: TextDiTConfig):
        super().__init__()
        self.config = cfg = config
        grid = cfg.input_size // cfg.patch_size
        self.x_embedder = PatchEmbed(cfg.patch_size, cfg.in_channels, cfg.hidden_size)
        self.t_embedder = TimestepEmbedder(cfg.hidden_size)
        self.text_embedder = nn.Sequential(nn.LayerNorm(cfg.text_dim), nn.Linear(cfg.text_dim, cfg.hidden_size))
        self.pooled_embedder = nn.Linear(cfg.hidden_size, cfg.hidden_size)  # masked mean of the text -> adaLN
        pos = torch.tensor(sincos_pos_embed_2d(cfg.hidden_size, grid), dtype=torch.float32).unsqueeze(0)
        self.pos_embed = nn.Parameter(pos, requires_grad=False)
        self.blocks = nn.ModuleList([TextDiTBlock(cfg.hidden_size, cfg.num_heads, cfg.mlp_ratio)
                                     for _ in range(cfg.depth)])
        self.final_layer = FinalLayer(cfg.hidden_size, cfg.patch_size, cfg.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation (xavier linears, zeroed adaLN and output layers) plus zeroed cross-attention output."""

        def basic(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

        self.apply(basic)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            for layer in (block.adaLN_modulation[-1], block.cross_attn.proj):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def dummy_inputs(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, TextCondition]:
        """(x, t, TextCondition) of the right shapes, for FLOP counting on fake tensors."""
        cfg = self.config
        x = torch.empty(batch, cfg.in_channels, cfg.input_size, cfg.input_size)
        text = TextCondition(torch.empty(batch, cfg.text_len, cfg.text_dim),
                             torch.ones(batch, cfg.text_len, dtype=torch.bool))
        return x, torch.empty(batch), text

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: TextCondition,
        gamma: float = 0.0,
        generators: Sequence[torch.Generator] | None = None,
        ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw network output (B, out_channels, H, W) at routing rate `gamma` (0 = the dense forward).

        x: (B, C, H, W); t: (B,) SiT time (0 = noise); text: TextCondition(states (B, L, text_dim), mask (B, L)).
        A caption with no real token attends to all its positions. `ids` (B, N_keep) fixes the kept tokens.
        """
        cfg = self.config
        if gamma > 0 and cfg.sparsity == "none":
            raise ValueError("this model was built without token sparsity; gamma must be 0")
        mask = text.mask.bool()
        mask = mask | ~mask.any(dim=1, keepdim=True)  # (B, L): an empty mask would make attention undefined
        states = self.text_embedder(text.states.to(x.dtype))  # (B, L, D)
        weights = mask.to(states.dtype).unsqueeze(-1)
        pooled = (states * weights).sum(1) / weights.sum(1)  # (B, D)
        c = self.t_embedder(t) + self.pooled_embedder(pooled)  # (B, D)
        x = self.x_embedder(x) + self.pos_embed  # (B, N, D)
        B, N, _ = x.shape
        sparse = num_sparse(N, gamma) > 0
        if sparse and ids is None:
            ids = select_tokens(B, N, gamma, generators, x.device)
        first, last = cfg.route if cfg.route is not None else (-1, -1)
        saved = None
        for i, block in enumerate(self.blocks):
            if sparse and i == first:
                saved, x = x, gather_tokens(x, ids)  # (B, N_keep, D) inside the route; text is never routed
            x = block(x, c, states, mask)
            if sparse and i == last:  # routed tokens re-enter unchanged from before block `first`
                x = saved.scatter(1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x)
        return unpatchify(self.final_layer(x, c), self.config.out_channels, self.config.patch_size)  # (B, C_out, H, W)


# The text-to-image testbed (harness/testbed/scenes.py) and a tiny text-conditioned net for tests.
PRESETS = {
    "TextTestbed-S/4": dict(depth=6, hidden_size=128, num_heads=4, patch_size=4, input_size=32, in_channels=3,
                            text_dim=64, text_len=12, convention="sit"),
    "TextDiT-Tiny": dict(depth=2, hidden_size=32, num_heads=2, patch_size=4, input_size=16, in_channels=3, text_dim=16,
                         text_len=8, convention="sit"),
}
FAMILY = Family(TextDiTConfig, TextDiT, PRESETS)
