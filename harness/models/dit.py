"""The token-sparse DiT/SiT backbone: one plain-PyTorch transformer with TREAD routing and MaskDiT masking.

Module names follow the official DiT/SiT code (facebookresearch/DiT, willisma/SiT models.py) so their state dicts
load unchanged: `x_embedder.proj`, `t_embedder.mlp`, `y_embedder.embedding_table`, `blocks.{i}.attn.qkv`, ...
Token sparsity (SG paper, Eqs. 4-5): `gamma` is the fraction of tokens routed around blocks route[0]..route[1]
(routing) or dropped before the encoder and replaced by a learned mask token before the decoder (masking).
Which tokens are dropped is drawn per image from that image's own generator, so a batch never mixes streams.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.models.family import Family, FamilyConfig
from harness.models.perturb import SkippedBlock, blur_token_grid
from harness.models.tokens import gather_tokens, num_sparse, select_tokens, unpatchify

#################################################################################
#                     Embeddings for positions, timesteps, labels               #
#################################################################################


def sincos_pos_embed_2d(dim: int, grid_size: int) -> np.ndarray:
    """Fixed 2-D sin-cos position table (grid_size**2, dim), as DiT/MAE build it (w coordinate first)."""
    grid_h, grid_w = np.meshgrid(np.arange(grid_size, dtype=np.float64), np.arange(grid_size, dtype=np.float64))

    def one_axis(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_axis(dim // 2, grid_h), one_axis(dim // 2, grid_w)], axis=1)


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens with one strided conv (timm's PatchEmbed, key `proj`)."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


class TimestepEmbedder(nn.Module):
    """Scalar time -> vector: 256-d sinusoid (cos half first), then a 2-layer MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))


class LabelEmbedder(nn.Module):
    """Class label -> vector; index `num_classes` is the null class used by CFG (no dropout in here)."""

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)
        self.num_classes = num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)


#################################################################################
#                                 Core blocks                                   #
#################################################################################


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm's Attention, qkv_bias=True).

    `perturbation` (set by SparseDiT while a guidance branch perturbs this block; harness.models.perturb): identity
    attention returns V (PAG), blurred queries (SEG) blur Q over the token grid before the attention."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.perturbation = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        kind = None if self.perturbation is None else self.perturbation.kind
        if kind == "identity_attention":
            x = v  # softmax(QK^T / sqrt(d)) := I
        else:
            if kind == "blur_queries":
                q = blur_token_grid(q, self.perturbation.blur_sigma)
            x = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, C/heads)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block; `cond_size` differs from `hidden_size` only in the MaskDiT decoder."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, cond_size: int | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_size or hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        modulation = self.adaLN_modulation(c)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, cond_size: int | None = None):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_size or hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


#################################################################################
#                                 The model                                     #
#################################################################################


@dataclass(frozen=True)
class DiTConfig(FamilyConfig):
    """Everything that fixes the parameter shapes and the sparsity mechanics of one backbone."""

    NAME = "DiT/SiT"

    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    learn_sigma: bool = True
    sparsity: str = "none"  # "none" | "routing" | "masking"
    route: tuple[int, int] | None = None  # (first, last) block inside the route, 0-based, inclusive
    decoder_hidden_size: int = 512  # masking only: MaskDiT's decoder
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    class_in_tokens: bool = False  # also add the label embedding to every token (testbed models)

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels


class SparseDiT(nn.Module):
    """DiT/SiT with optional TREAD routing or MaskDiT masking at any rate gamma, in training and eval mode.

    While `perturbation` is set (harness.models.perturb.perturbed) the forward is a guidance method's perturbed
    branch: identity attention or blurred queries in the chosen blocks, chosen blocks skipped, or the route dropped.
    """

    PERTURBATIONS = frozenset({"identity_attention", "blur_queries", "skip_blocks", "drop_route"})

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.perturbation = None
        self.config = cfg = config
        grid = cfg.input_size // cfg.patch_size
        self.x_embedder = PatchEmbed(cfg.patch_size, cfg.in_channels, cfg.hidden_size)
        self.t_embedder = TimestepEmbedder(cfg.hidden_size)
        self.y_embedder = LabelEmbedder(cfg.num_classes, cfg.hidden_size)
        # Fixed table, kept as a frozen Parameter so the official checkpoints' `pos_embed` key loads.
        pos = torch.tensor(sincos_pos_embed_2d(cfg.hidden_size, grid), dtype=torch.float32).unsqueeze(0)
        self.pos_embed = nn.Parameter(pos, requires_grad=False)  # torch.tensor follows a device context (meta)
        self.blocks = nn.ModuleList(
            [DiTBlock(cfg.hidden_size, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)]
        )
        width = cfg.hidden_size
        if cfg.sparsity == "masking":
            width = cfg.decoder_hidden_size
            self.decoder_embed = nn.Linear(cfg.hidden_size, width)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
            dec_pos = torch.tensor(sincos_pos_embed_2d(width, grid), dtype=torch.float32).unsqueeze(0)
            self.decoder_pos_embed = nn.Parameter(dec_pos, requires_grad=False)
            self.decoder_blocks = nn.ModuleList(
                [
                    DiTBlock(width, cfg.decoder_num_heads, cfg.mlp_ratio, cond_size=cfg.hidden_size)
                    for _ in range(cfg.decoder_depth)
                ]
            )
        self.final_layer = FinalLayer(width, cfg.patch_size, cfg.out_channels, cond_size=cfg.hidden_size)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation: xavier linears, N(0, 0.02) embeddings, zeroed adaLN and output layers."""

        def basic(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

        self.apply(basic)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in [*self.blocks, *getattr(self, "decoder_blocks", [])]:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        if self.config.sparsity == "masking":
            nn.init.normal_(self.mask_token, std=0.02)

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
        """Raw network output (B, out_channels, H, W) at token sparsity `gamma` (0 = the dense forward).

        x: (B, C, H, W) input; t: (B,) time in the checkpoint's own convention; y: (B,) labels (null = num_classes).
        `ids` (B, N_keep), when given, fixes the kept tokens instead of drawing them (training losses need them).
        """
        cfg = self.config
        if gamma > 0 and cfg.sparsity == "none":
            raise ValueError("this model was built without token sparsity; gamma must be 0")
        p = self.perturbation
        if p is not None and p.kind in ("identity_attention", "blur_queries"):
            for i in p.layers:
                self.blocks[i].attn.perturbation = p
            try:
                return self._forward(x, t, y, gamma, generators, ids, self.blocks)
            finally:
                for i in p.layers:
                    self.blocks[i].attn.perturbation = None
        blocks = self.blocks
        if p is not None and p.kind in ("skip_blocks", "drop_route"):
            if p.kind == "drop_route" and cfg.sparsity == "none":
                raise ValueError("drop_route needs a routing or masking model; this one has sparsity 'none'")
            skipped = set(p.layers) if p.kind == "skip_blocks" else \
                set(range(cfg.route[0], cfg.route[1] + 1)) if cfg.sparsity == "routing" else set()
            blocks = [SkippedBlock() if i in skipped else b for i, b in enumerate(self.blocks)]
            if p.kind == "drop_route":
                gamma, ids = 0.0, None  # nothing is routed: the route is not run at all
        return self._forward(x, t, y, gamma, generators, ids, blocks)

    def _forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, gamma: float,
                 generators: Sequence[torch.Generator] | None, ids: torch.Tensor | None,
                 blocks: Sequence[nn.Module]) -> torch.Tensor:
        """The forward over `blocks` (self.blocks, or with some replaced by SkippedBlock)."""
        cfg = self.config
        x = self.x_embedder(x) + self.pos_embed  # (B, N, D)
        y_emb = self.y_embedder(y)
        c = self.t_embedder(t) + y_emb  # (B, D)
        if cfg.class_in_tokens:
            x = x + y_emb.unsqueeze(1)
        B, N, _ = x.shape
        sparse = num_sparse(N, gamma) > 0
        if sparse and ids is None:
            ids = select_tokens(B, N, gamma, generators, x.device)

        drop_all = self.perturbation is not None and self.perturbation.kind == "drop_route"
        if cfg.sparsity == "masking" and drop_all:  # every token masked: the decoder sees only mask tokens
            x = self.mask_token.to(x.dtype).expand(B, N, self.mask_token.shape[-1]) + self.decoder_pos_embed
            for block in self.decoder_blocks:
                x = block(x, c)
        elif cfg.sparsity == "masking":
            if sparse:
                x = gather_tokens(x, ids)  # (B, N_keep, D): the encoder sees only kept tokens
            for block in blocks:
                x = block(x, c)
            x = self.decoder_embed(x)
            if sparse:  # mask tokens fill the dropped positions, then the sequence is put back in order
                full = self.mask_token.to(x.dtype).expand(B, N, x.shape[-1]).clone()
                x = full.scatter(1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x)
            x = x + self.decoder_pos_embed
            for block in self.decoder_blocks:
                x = block(x, c)
        else:
            first, last = cfg.route if cfg.route is not None else (-1, -1)
            saved = None
            for i, block in enumerate(blocks):
                if sparse and i == first:
                    saved, x = x, gather_tokens(x, ids)  # (B, N_keep, D) inside the route
                x = block(x, c)
                if sparse and i == last:  # routed tokens re-enter unchanged from before block `first`
                    x = saved.scatter(1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x)
        return unpatchify(self.final_layer(x, c), self.config.out_channels, self.config.patch_size)  # (B, C_out, H, W)


#################################################################################
#                                  Presets                                      #
#################################################################################

DIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}  # depth, width, heads


def _official(name: str, size: str, patch: int) -> dict:
    depth, hidden, heads = DIT_SIZES[size]
    return dict(depth=depth, hidden_size=hidden, num_heads=heads, patch_size=patch, input_size=32, in_channels=4,
                num_classes=1000, learn_sigma=True, convention="dit" if name == "DiT" else "sit")


# Official DiT/SiT sizes (DiT Table 1) on 256 px SD-VAE latents, plus the embedded testbed's pixel-space models.
PRESETS: dict[str, dict] = {f"{name}-{size}/{patch}": _official(name, size, patch)
                            for name in ("DiT", "SiT") for size in DIT_SIZES for patch in (2, 4, 8)}
PRESETS["Testbed-S/4"] = dict(depth=6, hidden_size=128, num_heads=4, patch_size=4, input_size=32, in_channels=3,
                              num_classes=10, learn_sigma=False, class_in_tokens=True, convention="sit",
                              decoder_hidden_size=96, decoder_depth=2, decoder_num_heads=4)
PRESETS["Testbed-XS/4"] = dict(PRESETS["Testbed-S/4"], depth=4, hidden_size=96, num_heads=4)

FAMILY = Family(DiTConfig, SparseDiT, PRESETS)
