"""MDTv2 (Gao et al. 2023, sail-sg/MDT `masked_diffusion/models.py` @ 7d26c21) in its exact layout, so the official
state dicts (`TrainLoop.save`'s `model%06d.pt` / `ema_0.9999_%06d.pt`, the released `mdt_xl2_v2_ckpt.pt`) load
unchanged.

What differs from the DiT/SiT backbone of dit.py:
- blocks: `half_depth = (depth - decode_layer) // 2` encoder-in blocks (`en_inblocks`), as many encoder-out blocks
  (`en_outblocks`) that take the in-blocks' outputs as U-Net long skips, last in first out (a skip block first maps
  `cat[x, skip]` through `skip_linear`), then `decode_layer` decoder blocks (`de_blocks`) whose skip is always the
  unmasked input embedding; one side-interpolater block (`sideblocks.0`);
- attention adds a learned BEiT-style relative position bias (`rel_pos_bias.relative_position_bias_table`, indexed
  by the int64 buffer `relative_position_index`, which is in the state dict);
- learned `pos_embed` and `decoder_pos_embed` (initialised to the 2-D sin-cos table), the latter added after the
  encoder; labels `nn.Embedding(num_classes + 1, D)`, null class `num_classes`; time the integer DDPM step;
  learned sigma (eps then variance); the `dit` convention.

Masking (gamma > 0), as MDT trains: the encoder sees only the kept tokens (the bias gathered at their ids); the
side block runs on all positions, the kept tokens back in place and `mask_token` elsewhere, each plus
`decoder_pos_embed`, and its output replaces only the dropped positions; the decoder blocks then run on all tokens.
Upstream keeps `int(N * (1 - ratio))` tokens; the harness keeps `N - int(N * gamma)` (TREAD's count), one more token
when N * gamma is not an integer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.dit import (DIT_SIZES, FinalLayer, LabelEmbedder, Mlp, PatchEmbed, TimestepEmbedder, modulate,
                                sincos_pos_embed_2d)
from harness.models.family import ConfigError, Family, FamilyConfig
from harness.models.tokens import gather_tokens, num_sparse, select_tokens, unpatchify


@dataclass(frozen=True)
class MDTConfig(FamilyConfig):
    """MDTv2's constructor arguments (same names) and the harness's sparsity switch."""

    NAME, SPARSITIES, MAY_BE_ZERO = "MDT", ("none", "masking"), frozenset({"decode_layer"})

    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    learn_sigma: bool = True
    decode_layer: int = 4
    sparsity: str = "none"  # "none" | "masking": whether inference may drop tokens (gamma > 0)
    route: tuple[int, int] | None = None  # routing is not an MDT mechanism; must stay None

    def check(self) -> None:
        if self.decode_layer > self.depth:
            raise ConfigError("decode_layer", f"decode_layer {self.decode_layer} must lie in 0..depth ({self.depth})")

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels


class RelativePositionBias(nn.Module):
    """BEiT's learned relative position bias over a square token grid: (heads, N, N) from a shared table."""

    def __init__(self, grid: int, num_heads: int):
        super().__init__()
        self.grid = grid
        # (2g-1)^2 offsets, plus 3 entries BEiT reserves for a cls token (unused here, kept for the layout)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * grid - 1) ** 2 + 3, num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (grid - 1)  # (N, N, 2), offsets >= 0
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * grid - 1) + rel[..., 1])  # int64, saved

    def forward(self) -> torch.Tensor:
        n = self.grid * self.grid
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        return bias.permute(2, 0, 1)  # (heads, N, N)


class Attention(nn.Module):
    """Multi-head self-attention (fused qkv) plus the relative position bias, gathered at the kept tokens' ids."""

    def __init__(self, dim: int, num_heads: int, grid: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_bias = RelativePositionBias(grid, num_heads)

    def forward(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape
        bias = self.rel_pos_bias().unsqueeze(0)  # (1, heads, N_all, N_all)
        if ids_keep is not None:  # rows and columns of the kept tokens: (B, heads, N, N)
            heads = bias.shape[1]
            rows = ids_keep[:, None, :, None].expand(B, heads, N, bias.shape[-1])
            bias = bias.expand(B, -1, -1, -1).gather(2, rows)
            bias = bias.gather(3, ids_keep[:, None, None, :].expand(B, heads, N, N))
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=bias.to(x.dtype))
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class MDTBlock(nn.Module):
    """adaLN-Zero block with relative-position attention; a skip block first fuses `cat[x, skip]` (`skip_linear`)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, grid: int, skip: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, grid)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.skip_linear = nn.Linear(2 * hidden_size, hidden_size) if skip else None

    def forward(self, x: torch.Tensor, c: torch.Tensor, skip: torch.Tensor | None = None,
                ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), ids_keep)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class MDTv2(nn.Module):
    """Masked Diffusion Transformer v2: U-Net-skipped encoder, side-interpolater, decoder; harness-drawn masking."""

    def __init__(self, config: MDTConfig):
        super().__init__()
        self.config = cfg = config
        grid = cfg.input_size // cfg.patch_size
        D, heads, ratio = cfg.hidden_size, cfg.num_heads, cfg.mlp_ratio
        half_depth = (cfg.depth - cfg.decode_layer) // 2
        self.x_embedder = PatchEmbed(cfg.patch_size, cfg.in_channels, D)
        self.t_embedder = TimestepEmbedder(D)
        self.y_embedder = LabelEmbedder(cfg.num_classes, D)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, D))  # learned (sin-cos initialised)
        self.en_inblocks = nn.ModuleList([MDTBlock(D, heads, ratio, grid) for _ in range(half_depth)])
        self.en_outblocks = nn.ModuleList([MDTBlock(D, heads, ratio, grid, skip=True) for _ in range(half_depth)])
        self.de_blocks = nn.ModuleList([MDTBlock(D, heads, ratio, grid, skip=True) for _ in range(cfg.decode_layer)])
        self.sideblocks = nn.ModuleList([MDTBlock(D, heads, ratio, grid)])
        self.final_layer = FinalLayer(D, cfg.patch_size, cfg.out_channels)
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, grid * grid, D))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """MDT's initialisation: xavier linears, sin-cos position tables, N(0, 0.02) embeddings, zeroed adaLN and
        output; the relative-bias tables N(0, 0.02) (upstream truncates at +-2, i.e. +-100 std: never, and torch's
        trunc_normal_ cannot run on the fake tensors FLOP counting builds)."""

        def basic(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

        self.apply(basic)
        grid = self.config.input_size // self.config.patch_size
        table = torch.tensor(sincos_pos_embed_2d(self.config.hidden_size, grid), dtype=torch.float32).unsqueeze(0)
        with torch.no_grad():
            self.pos_embed.copy_(table)
            self.decoder_pos_embed.copy_(table)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        blocks = [*self.en_inblocks, *self.en_outblocks, *self.de_blocks, *self.sideblocks]
        for block in blocks:
            nn.init.normal_(block.attn.rel_pos_bias.relative_position_bias_table, std=0.02)
        for layer in [b.adaLN_modulation[-1] for b in blocks] + [self.final_layer.adaLN_modulation[-1],
                                                                 self.final_layer.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def dummy_inputs(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, t, labels) of the right shapes, for FLOP counting on fake tensors."""
        cfg = self.config
        x = torch.empty(batch, cfg.in_channels, cfg.input_size, cfg.input_size)
        return x, torch.empty(batch), torch.zeros(batch, dtype=torch.long)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        gamma: float = 0.0,
        generators: Sequence[torch.Generator] | None = None,
        ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """eps and variance (B, out_channels, H, W) with int(N * gamma) tokens dropped (0 = the official dense forward).

        x: (B, C, H, W); t: (B,) DDPM step; y: (B,) labels (null = num_classes). `ids` (B, N_keep) fixes the kept
        tokens instead of drawing them.
        """
        cfg = self.config
        if gamma > 0 and cfg.sparsity == "none":
            raise ValueError("this model was built without token sparsity; gamma must be 0")
        x = self.x_embedder(x) + self.pos_embed  # (B, N, D)
        c = self.t_embedder(t) + self.y_embedder(y)  # (B, D)
        input_skip = x
        B, N, _ = x.shape
        keep = None
        if num_sparse(N, gamma) > 0:
            keep = select_tokens(B, N, gamma, generators, x.device) if ids is None else ids
            x = gather_tokens(x, keep)  # (B, N_keep, D): the encoder sees only the kept tokens
        skips = []
        for block in self.en_inblocks:
            x = block(x, c, ids_keep=keep)
            skips.append(x)
        for block in self.en_outblocks:
            x = block(x, c, skip=skips.pop(), ids_keep=keep)
        x = self.side_interpolate(x, c, keep) if keep is not None else x + self.decoder_pos_embed
        for block in self.de_blocks:
            x = block(x, c, skip=input_skip)
        return unpatchify(self.final_layer(x, c), cfg.out_channels, cfg.patch_size)  # (B, C_out, H, W)

    def side_interpolate(self, x: torch.Tensor, c: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """All N positions: the kept tokens in place, the side block's output from the mask token at the rest."""
        B, _, D = x.shape
        N = self.decoder_pos_embed.shape[1]
        full = self.mask_token.to(x.dtype).expand(B, N, D).scatter(1, keep.unsqueeze(-1).expand(-1, -1, D), x)
        full = full + self.decoder_pos_embed
        side = full
        for block in self.sideblocks:
            side = block(side, c)
        dropped = torch.ones(B, N, 1, dtype=x.dtype, device=x.device).scatter(
            1, keep.unsqueeze(-1), torch.zeros_like(keep, dtype=x.dtype).unsqueeze(-1))
        return side * dropped + (1 - dropped) * full


PRESETS = {
    f"MDTv2-{size}/2": dict(convention="dit", depth=depth, hidden_size=hidden, num_heads=heads,
                            patch_size=2, input_size=32, in_channels=4, num_classes=1000, learn_sigma=True,
                            decode_layer=4)
    for size, (depth, hidden, heads) in DIT_SIZES.items()
}

# sail-sg/MDT's README trains MDTv2-S/2 with decode_layer 6 and XL/2 with 4: files are matched against these too.
FAMILY = Family(MDTConfig, MDTv2, PRESETS, checkpoint_variants=tuple({"decode_layer": n} for n in (2, 6, 8)))

__all__ = ["FAMILY", "MDTBlock", "MDTConfig", "MDTv2", "RelativePositionBias"]
