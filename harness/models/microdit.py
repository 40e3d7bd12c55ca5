"""MicroDiT (SonyResearch/micro_diffusion, "Stretching Each Dollar"): a masking-trained text-to-image DiT.

A port of micro_diffusion/models/dit.py (Apache-2.0) in plain PyTorch, module names kept so the released state dicts
(HF VSehwag24/MicroDiT `ckpts/*.pt`, a flat `DiT.state_dict()`) load unchanged. The network:

    patch embed + sin-cos table -> patch-mixer (all tokens, narrower width) -> [drop tokens] -> backbone blocks
    with layer-wise scaled attention / FFN widths and expert-choice MoE FFNs -> final layer -> [fill dropped]

Every block is adaLN-modulated self-attention, un-gated cross-attention to the 77 processed caption tokens, and an
adaLN-modulated FFN; attention uses non-affine QK LayerNorm. The caption (open-clip token states after ln_final, no
attention mask) also gives a pooled vector added to the time embedding. The network output F is EDM's raw output
(sigma_data 0.9, c_noise = ln(sigma) / 4): the harness's `edm` convention does the preconditioning.

Masking (gamma = mask ratio) drops tokens after the patch-mixer, as in training. Which tokens are kept is drawn by
the harness per image (`select_tokens`) or given as `ids`; upstream draws them itself from the global RNG. Dropped
positions are filled with the `mask_token` buffer (zeros in the release), so F = 0 there: not a prediction, which
is why a masked branch's dropped positions should take the strong branch's prediction (the maskdit option).
The expert-choice MoE lets each expert pick its top tokens, so a token's output depends on which tokens are present.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.models.adapters import TextCondition
from harness.models.dit import PatchEmbed, modulate
from harness.models.family import ConfigError, Family, FamilyConfig
from harness.models.tokens import gather_tokens, num_sparse, select_tokens, unpatchify

#################################################################################
#                           Embeddings and layers                               #
#################################################################################


def sincos_pos_embed(dim: int, grid: int, interp_scale: float, base_size: int) -> np.ndarray:
    """Fixed 2-D sin-cos table (grid**2, dim) on positions scaled by base_size / grid / interp_scale (PixArt's)."""
    coords = np.arange(grid, dtype=np.float32) / (grid / base_size) / interp_scale
    grid_w, grid_h = np.meshgrid(coords, coords)

    def one_axis(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_axis(dim // 2, grid_w), one_axis(dim // 2, grid_h)], axis=1)


def layer_norm(dim: int, eps: float, affine: bool = True) -> nn.LayerNorm:
    """MicroDiT's norms: LayerNorm without bias (affine: a weight only)."""
    return nn.LayerNorm(dim, eps=eps, elementwise_affine=affine, bias=False)


def round_up(value: int, multiple: int) -> int:
    return multiple * ((value + multiple - 1) // multiple)


class Mlp(nn.Module):
    """timm's Mlp with a norm between the activation and the second linear (keys fc1, norm, fc2)."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, norm_eps: float):
        super().__init__()
        self.fc1 = nn.Linear(dim_in, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.norm = layer_norm(hidden, norm_eps)
        self.fc2 = nn.Linear(hidden, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(self.act(self.fc1(x))))


class CaptionProjection(nn.Module):
    def __init__(self, caption_channels: int, dim: int, norm_eps: float):
        super().__init__()
        self.y_proj = Mlp(caption_channels, dim, dim, norm_eps)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.y_proj(y)


class TimestepEmbedder(nn.Module):
    """c_noise -> vector: 512-d sinusoid (cos half first), then Linear, tanh-GELU, Linear."""

    def __init__(self, dim: int, frequency_embedding_size: int = 512):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(dim, dim))
        self.frequency_embedding_size = frequency_embedding_size

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequency_embedding_size // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(embedding.to(self.mlp[0].weight.dtype))


class SelfAttention(nn.Module):
    """Self-attention of width `hidden` (layer-wise scaled) with non-affine LayerNorm on q and k over all heads."""

    def __init__(self, dim: int, num_heads: int, hidden: int, bias: bool, norm_eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, hidden * 3, bias=bias)
        self.proj = nn.Linear(hidden, dim, bias=bias)
        self.ln_q = layer_norm(hidden, norm_eps, affine=False)
        self.ln_k = layer_norm(hidden, norm_eps, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # (B, N, hidden) each
        q, k = self.ln_q(q), self.ln_k(k)
        q, k, v = (z.view(B, N, self.num_heads, -1).transpose(1, 2) for z in (q, k, v))
        x = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, head_dim)
        return self.proj(x.transpose(1, 2).reshape(B, N, -1))


class CrossAttention(nn.Module):
    """Image tokens (queries) attend to the caption tokens (keys, values), QK LayerNorm as in self-attention."""

    def __init__(self, dim: int, num_heads: int, hidden: int, bias: bool, norm_eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q_linear = nn.Linear(dim, hidden, bias=bias)
        self.kv_linear = nn.Linear(dim, hidden * 2, bias=bias)
        self.proj = nn.Linear(hidden, dim, bias=bias)
        self.ln_q = layer_norm(hidden, norm_eps, affine=False)
        self.ln_k = layer_norm(hidden, norm_eps, affine=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q = self.ln_q(self.q_linear(x))
        k, v = self.kv_linear(y).view(B, y.shape[1], 2, -1).unbind(2)
        k = self.ln_k(k)
        q, k, v = (z.view(B, z.shape[1], self.num_heads, -1).transpose(1, 2) for z in (q, k, v))
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, -1))


class FeedForward(nn.Module):
    """SwiGLU FFN: w3(silu(w1 x) * w2 x), hidden = 2/3 of the nominal width rounded up to `multiple_of`."""

    def __init__(self, dim: int, hidden: int, multiple_of: int, bias: bool):
        super().__init__()
        hidden = round_up(int(2 * hidden / 3), multiple_of)
        self.w1 = nn.Linear(dim, hidden, bias=bias)
        self.w2 = nn.Linear(dim, hidden, bias=bias)
        self.w3 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class ExpertChoiceMoE(nn.Module):
    """Expert-choice MoE FFN (GELU): each expert takes its int(capacity * T / E) highest-scoring tokens of an image.

    Upstream dispatches and combines with one-hot einsums; gathering and scatter-adding the chosen tokens gives the
    same sums without counting the one-hot matmuls as FLOPs (they are data movement).
    """

    def __init__(self, num_experts: int, expert_capacity: float, dim: int, hidden: int, multiple_of: int):
        super().__init__()
        hidden = round_up(hidden, multiple_of)
        self.num_experts = num_experts
        self.expert_capacity = expert_capacity
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.gate = nn.Linear(dim, num_experts, bias=False)
        self.gelu = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        E = self.num_experts
        k = int(self.expert_capacity * T / E)
        probs = F.softmax(self.gate(x), dim=-1)  # (B, T, E)
        weight, chosen = torch.topk(probs.transpose(1, 2), k, dim=-1)  # (B, E, k): each expert's tokens
        index = chosen.reshape(B, E * k, 1).expand(-1, -1, D)
        h = torch.gather(x, 1, index).view(B, E, k, D)
        h = self.gelu(torch.einsum("bekd,edf->bekf", h, self.w1))
        h = torch.einsum("bekf,efd->bekd", h, self.w2) * weight.unsqueeze(-1)  # (B, E, k, D)
        return torch.zeros_like(x).scatter_add(1, index, h.reshape(B, E * k, D))


class MicroDiTBlock(nn.Module):
    """x + gate * attn(modulate(norm1 x)); x + cross_attn(norm2 x, y) (no gate); x + gate * ffn(modulate(norm3 x))."""

    def __init__(self, dim: int, head_dim: int, mlp_ratio: float, qkv_ratio: float, multiple_of: int,
                 cond_dim: int, norm_eps: float, bias: bool, moe: bool, num_experts: int, expert_capacity: float):
        super().__init__()
        # Layer-wise scaling: the attention width is dim * qkv_ratio rounded up to a multiple of two heads.
        qkv_hidden = round_up(int(dim * qkv_ratio), 2 * head_dim) if qkv_ratio != 1 else dim
        self.norm1 = layer_norm(dim, norm_eps)
        self.attn = SelfAttention(dim, qkv_hidden // head_dim, qkv_hidden, bias, norm_eps)
        self.cross_attn = CrossAttention(dim, dim // head_dim, dim, bias, norm_eps)
        self.norm2 = layer_norm(dim, norm_eps)
        self.norm3 = layer_norm(dim, norm_eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = (ExpertChoiceMoE(num_experts, expert_capacity, dim, hidden, multiple_of) if moe
                    else FeedForward(dim, hidden, multiple_of, bias))
        self.adaLN_modulation = nn.Sequential(nn.GELU(approximate="tanh"), nn.Linear(cond_dim, 6 * dim))

    def forward(self, x: torch.Tensor, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + self.cross_attn(self.norm2(x), y)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm3(x), shift_mlp, scale_mlp))


class PromptBlock(nn.Module):
    """One pre-norm self-attention + SwiGLU block over the caption tokens (upstream AttentionBlockPromptEmbedding)."""

    def __init__(self, dim: int, head_dim: int, multiple_of: int, norm_eps: float, bias: bool):
        super().__init__()
        self.norm1 = layer_norm(dim, norm_eps)
        self.attn = SelfAttention(dim, dim // head_dim, dim, bias, norm_eps)
        self.norm2 = layer_norm(dim, norm_eps)
        self.mlp = FeedForward(dim, int(dim * 4.0), multiple_of, bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        y = y + self.attn(self.norm1(y))
        return y + self.mlp(self.norm2(y))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch_size: int, out_channels: int, norm_eps: float):
        super().__init__()
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.GELU(approximate="tanh"), nn.Linear(dim, 2 * dim))
        self.norm_final = layer_norm(dim, norm_eps)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


#################################################################################
#                                 The model                                     #
#################################################################################


@dataclass(frozen=True)
class MicroDiTConfig(FamilyConfig):
    """Upstream `DiT(...)`'s constructor arguments (same names), plus the harness's sparsity fields.

    `qkv_multipliers` / `ffn_multipliers` hold one ratio per block or one per equal split of the blocks.
    `depth_init` only chooses upstream's initialisation and is not kept; weights come from checkpoints.
    """

    NAME, SPARSITIES = "MicroDiT", ("none", "masking")

    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    dim: int = 1152
    depth: int = 28
    head_dim: int = 64
    multiple_of: int = 256
    caption_channels: int = 1024
    pos_interp_scale: float = 1.0
    norm_eps: float = 1e-6
    qkv_multipliers: tuple[float, ...] = (1.0,)
    ffn_multipliers: tuple[float, ...] = (4.0,)
    use_patch_mixer: bool = True
    patch_mixer_depth: int = 4
    patch_mixer_dim: int = 512
    patch_mixer_qkv_ratio: float = 1.0
    patch_mixer_mlp_ratio: float = 1.0
    use_bias: bool = True
    num_experts: int = 8
    expert_capacity: float = 1.0
    experts_every_n: int = 2
    caption_length: int = 77  # open-clip's context: the token states the text encoder gives (FLOP counting)
    sigma_data: float = 0.9  # EDM preconditioning (the `edm` convention)
    sparsity: str = "masking"  # "masking" | "none"
    route: tuple[int, int] | None = None

    def check(self) -> None:
        object.__setattr__(self, "qkv_multipliers", tuple(float(m) for m in self.qkv_multipliers))
        object.__setattr__(self, "ffn_multipliers", tuple(float(m) for m in self.ffn_multipliers))
        if len(self.qkv_multipliers) != len(self.ffn_multipliers):
            raise ConfigError("ffn_multipliers", "qkv_multipliers and ffn_multipliers need the same length")
        if self.depth % len(self.ffn_multipliers):
            raise ConfigError("depth", f"depth {self.depth} is not a multiple of the {len(self.ffn_multipliers)} "
                                       "multipliers")

    @property
    def out_channels(self) -> int:
        return self.in_channels

    def block_ratios(self) -> list[tuple[float, float]]:
        """(qkv ratio, ffn ratio) of every backbone block: one per block, or each ratio repeated over a split."""
        repeat = self.depth // len(self.ffn_multipliers)
        return [(q, f) for q, f in zip(self.qkv_multipliers, self.ffn_multipliers) for _ in range(repeat)]


class MicroDiT(nn.Module):
    """MicroDiT as a harness network: forward(x, c_noise, TextCondition, gamma, generators, ids) -> raw EDM output."""

    def __init__(self, config: MicroDiTConfig):
        super().__init__()
        self.config = cfg = config
        eps, bias, dim = cfg.norm_eps, cfg.use_bias, cfg.dim
        grid = cfg.input_size // cfg.patch_size
        self.x_embedder = PatchEmbed(cfg.patch_size, cfg.in_channels, dim)
        self.t_embedder = TimestepEmbedder(dim)
        pos = sincos_pos_embed(dim, grid, cfg.pos_interp_scale, base_size=grid)
        self.register_buffer("pos_embed", torch.tensor(pos, dtype=torch.float32).unsqueeze(0))
        self.y_embedder = CaptionProjection(cfg.caption_channels, dim, eps)
        self.y_emb_preprocess = PromptBlock(dim, cfg.head_dim, cfg.multiple_of, eps, bias)
        self.pooled_y_emb_process = Mlp(dim, dim, dim, eps)

        def block(width, mlp_ratio, qkv_ratio, moe):
            return MicroDiTBlock(width, cfg.head_dim, mlp_ratio, qkv_ratio, cfg.multiple_of, dim, eps, bias, moe,
                                 cfg.num_experts, cfg.expert_capacity)

        every = cfg.experts_every_n
        if cfg.use_patch_mixer:
            width = cfg.patch_mixer_dim
            self.patch_mixer = nn.ModuleList([
                block(width, cfg.patch_mixer_mlp_ratio, cfg.patch_mixer_qkv_ratio, i >= 1 and (i + 1) % every == 0)
                for i in range(cfg.patch_mixer_depth)])
            if width != dim:
                self.patch_mixer_map_xin = nn.Sequential(layer_norm(dim, eps), nn.Linear(dim, width, bias=bias))
                self.patch_mixer_map_xout = nn.Sequential(layer_norm(width, eps), nn.Linear(width, dim, bias=bias))
                self.patch_mixer_map_y = nn.Sequential(layer_norm(dim, eps), nn.Linear(dim, width, bias=bias))
            else:
                self.patch_mixer_map_xin = self.patch_mixer_map_xout = self.patch_mixer_map_y = nn.Identity()
        self.blocks = nn.ModuleList([  # no MoE in the last block
            block(dim, ffn, qkv, i < cfg.depth - 1 and (i + 1) % every == 0)
            for i, (qkv, ffn) in enumerate(cfg.block_ratios())])
        self.register_buffer("mask_token", torch.zeros(1, 1, cfg.patch_size**2 * cfg.out_channels))
        self.final_layer = FinalLayer(dim, cfg.patch_size, cfg.out_channels, eps)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """xavier linears, N(0, 0.02) experts and embedding MLPs, zeroed adaLN and output layers (as upstream's
        shapes of init; released weights replace all of it)."""

        def basic(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, ExpertChoiceMoE):
                nn.init.normal_(module.w1, std=0.02)
                nn.init.normal_(module.w2, std=0.02)

        self.apply(basic)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for layer in (*self.t_embedder.mlp[::2], self.pooled_y_emb_process.fc1, self.pooled_y_emb_process.fc2,
                      self.y_embedder.y_proj.fc1, self.y_embedder.y_proj.fc2):
            nn.init.normal_(layer.weight, std=0.02)
        for blk in [*self.blocks, *getattr(self, "patch_mixer", [])]:
            nn.init.zeros_(blk.adaLN_modulation[-1].weight)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)

    def dummy_inputs(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, TextCondition]:
        """(x, c_noise, caption states) of the right shapes, for FLOP counting on fake tensors."""
        cfg = self.config
        x = torch.empty(batch, cfg.in_channels, cfg.input_size, cfg.input_size)
        states = torch.empty(batch, cfg.caption_length, cfg.caption_channels)
        return x, torch.empty(batch), TextCondition(states, torch.ones(batch, cfg.caption_length, dtype=torch.bool))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: TextCondition,
        gamma: float = 0.0,
        generators: Sequence[torch.Generator] | None = None,
        ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw output F (B, C, H, W) at mask ratio `gamma`; x is c_in * x_sigma, t is c_noise = ln(sigma) / 4.

        `cond.states` (B, L, caption_channels) are the caption's token states (zeros = the null caption, as
        trained); `cond.mask` is not used (MicroDiT attends to all 77 positions). `ids` (B, N_keep) fixes the kept
        tokens instead of drawing them.
        """
        cfg = self.config
        if gamma > 0 and cfg.sparsity == "none":
            raise ValueError("this model was built without token sparsity; gamma must be 0")
        x = self.x_embedder(x) + self.pos_embed  # (B, N, D)
        B, N, _ = x.shape
        c = self.t_embedder(t.expand(B))  # (B, D)
        y = self.y_emb_preprocess(self.y_embedder(cond.states.to(x.dtype)))  # (B, L, D)
        c = c + self.pooled_y_emb_process(y.mean(dim=1))
        if cfg.use_patch_mixer:
            x = self.patch_mixer_map_xin(x)
            y_mixer = self.patch_mixer_map_y(y)
            for block in self.patch_mixer:
                x = block(x, y_mixer, c)  # (B, N, D_mixer): the mixer always sees every token
        sparse = ids is not None or num_sparse(N, gamma) > 0
        if sparse:
            if ids is None:
                ids = select_tokens(B, N, gamma, generators, x.device)
            x = gather_tokens(x, ids)  # (B, N_keep, D_mixer)
        if cfg.use_patch_mixer:
            x = self.patch_mixer_map_xout(x)
        for block in self.blocks:
            x = block(x, y, c)
        x = self.final_layer(x, c)  # (B, N or N_keep, p*p*C)
        if sparse:  # the mask token fills the dropped positions
            full = self.mask_token.to(x.dtype).expand(B, N, x.shape[-1]).clone()
            x = full.scatter(1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x)
        return unpatchify(x, self.config.out_channels, self.config.patch_size)  # (B, C, H, W)


def _linspace(start: float, end: float, num: int) -> tuple[float, ...]:
    return tuple(np.linspace(start, end, num=num, dtype=float).tolist())


# Upstream's MicroDiT_XL_2 at 512 px (64x64 latents, pos_interp_scale 2, as the released checkpoints) and
# MicroDiT_Tiny_2; MicroDiT-Test is a 0.2M-parameter config of the same classes for tests and dry runs.
_XL = dict(convention="edm", input_size=64, patch_size=2, in_channels=4, dim=1024, depth=28,
           head_dim=64, multiple_of=256, caption_channels=1024, pos_interp_scale=2.0, norm_eps=1e-6,
           qkv_multipliers=_linspace(0.5, 1.0, 28), ffn_multipliers=_linspace(0.5, 4.0, 28), use_patch_mixer=True,
           patch_mixer_depth=6, patch_mixer_dim=768, patch_mixer_qkv_ratio=1.0, patch_mixer_mlp_ratio=4.0,
           use_bias=False, num_experts=8, expert_capacity=2.0, experts_every_n=2)
PRESETS: dict[str, dict] = {
    "MicroDiT-XL/2": _XL,
    "MicroDiT-Tiny/2": dict(_XL, dim=512, depth=16, head_dim=32, qkv_multipliers=_linspace(0.5, 1.0, 16),
                            ffn_multipliers=_linspace(0.5, 4.0, 16), patch_mixer_depth=4, patch_mixer_dim=512),
    "MicroDiT-Test": dict(_XL, input_size=8, dim=48, depth=4, head_dim=16, multiple_of=16, caption_channels=32,
                          qkv_multipliers=_linspace(0.5, 1.0, 4), ffn_multipliers=_linspace(0.5, 4.0, 4),
                          patch_mixer_depth=2, patch_mixer_dim=32, num_experts=2),
}

FAMILY = Family(MicroDiTConfig, MicroDiT, PRESETS)

__all__ = ["FAMILY", "ExpertChoiceMoE", "MicroDiT", "MicroDiTConfig", "sincos_pos_embed"]
