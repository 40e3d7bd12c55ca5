"""MaskDiT (Zheng et al. 2023, Anima-Lab/MaskDiT `models/maskdit.py`) in its exact layout, so its checkpoints load.

What differs from the DiT/SiT backbone of dit.py: labels are one-hot vectors through a bias-free linear
(`y_embedder.embedding_table`, (hidden, num_classes); the null label is the zero vector, which the harness's null
class index `num_classes` becomes), the encoder output goes through `decoder_layer` (adaLN-modulated LayerNorm +
linear) into a decoder that MaskDiT hard-codes at 512 wide, 8 deep, 16 heads for every encoder size, a learned
`mask_token` fills dropped positions before the decoder, and the output has the input's channels (no learned sigma).
The network is EDM's F: the `edm` convention of FlowModel wraps it with sigma_data = 0.5 (MaskDiT's EDMPrecond).

Masking at inference (gamma > 0): the encoder sees only the kept tokens, `decoder_layer` maps them to the decoder's
width, the mask token fills the dropped positions, and the decoder runs on all positions, exactly as the official
code does in training mode with a given `mask_dict`. At the dropped positions MaskDiT was trained to reconstruct the
noisy input (its MAE loss), not to denoise; what a guided branch keeps there is the model's `dropped` option
(harness.sampling.GuidedDenoiser).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from harness.models.dit import DIT_SIZES, DiTBlock, FinalLayer, PatchEmbed, TimestepEmbedder, modulate, sincos_pos_embed_2d
from harness.models.family import Family, FamilyConfig
from harness.models.tokens import gather_tokens, num_sparse, select_tokens, unpatchify


@dataclass(frozen=True)
class MaskDiTConfig(FamilyConfig):
    """MaskDiT's constructor arguments (same names), EDMPrecond's sigma_data, and the harness's sparsity switch."""

    NAME, SPARSITIES = "MaskDiT", ("none", "masking")

    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    learn_sigma: bool = False
    use_decoder: bool = True
    mae_loss_coef: float = 0.1  # only whether it is > 0 matters here: then the model has a learned mask token
    decoder_hidden_size: int = 512  # hard-coded upstream for every size
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    sigma_data: float = 0.5
    sparsity: str = "none"  # "none" | "masking": whether inference may drop tokens (gamma > 0)
    route: tuple[int, int] | None = None  # routing is not a MaskDiT mechanism; must stay None

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels


class OneHotLabelEmbedder(nn.Module):
    """Class index -> one-hot (the null index `num_classes` -> all zeros) -> bias-free linear, as MaskDiT embeds."""

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.embedding_table = nn.Linear(num_classes, hidden_size, bias=False)
        self.num_classes = num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        classes = torch.arange(self.num_classes, device=labels.device)
        onehot = (labels[:, None] == classes).to(self.embedding_table.weight.dtype)  # (B, num_classes)
        return self.embedding_table(onehot)


class DecoderLayer(nn.Module):
    """adaLN-modulated LayerNorm, then a linear from the encoder's width to the decoder's (`decoder_layer`)."""

    def __init__(self, hidden_size: int, decoder_hidden_size: int):
        super().__init__()
        self.norm_decoder = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, decoder_hidden_size)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_decoder(x), shift, scale))


class MaskDiT(nn.Module):
    """MaskDiT's DiT (encoder, decoder_layer, decoder with mask token, final layer) with harness-drawn masking."""

    def __init__(self, config: MaskDiTConfig):
        super().__init__()
        self.config = cfg = config
        grid = cfg.input_size // cfg.patch_size
        self.x_embedder = PatchEmbed(cfg.patch_size, cfg.in_channels, cfg.hidden_size)
        self.t_embedder = TimestepEmbedder(cfg.hidden_size)
        self.y_embedder = OneHotLabelEmbedder(cfg.num_classes, cfg.hidden_size)
        pos = torch.tensor(sincos_pos_embed_2d(cfg.hidden_size, grid), dtype=torch.float32).unsqueeze(0)
        self.pos_embed = nn.Parameter(pos, requires_grad=False)  # fixed table, stored in the checkpoints
        self.blocks = nn.ModuleList([DiTBlock(cfg.hidden_size, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        width = cfg.hidden_size
        self.mask_token = None
        if cfg.use_decoder:
            width = cfg.decoder_hidden_size
            dec_pos = torch.tensor(sincos_pos_embed_2d(width, grid), dtype=torch.float32).unsqueeze(0)
            self.decoder_pos_embed = nn.Parameter(dec_pos, requires_grad=False)
            self.decoder_layer = DecoderLayer(cfg.hidden_size, width)
            self.decoder_blocks = nn.ModuleList(
                [DiTBlock(width, cfg.decoder_num_heads, cfg.mlp_ratio, cond_size=cfg.hidden_size)
                 for _ in range(cfg.decoder_depth)])
            if cfg.mae_loss_coef > 0:
                self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.final_layer = FinalLayer(width, cfg.patch_size, cfg.out_channels, cond_size=cfg.hidden_size)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """MaskDiT's initialisation: xavier linears, N(0, 0.02) embeddings and mask token, zeroed adaLN and output."""

        def basic(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(basic)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        zeroed = [b.adaLN_modulation[-1] for b in [*self.blocks, *getattr(self, "decoder_blocks", [])]]
        zeroed += [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        if self.config.use_decoder:
            zeroed += [self.decoder_layer.adaLN_modulation[-1], self.decoder_layer.linear]
        for layer in zeroed:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        if self.mask_token is not None:
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
        """EDM's F (B, out_channels, H, W) with int(N * gamma) tokens dropped (0 = the official dense forward).

        x: (B, C, H, W), already scaled by c_in; t: (B,) c_noise = ln(sigma) / 4; y: (B,) labels (null =
        num_classes, the zero one-hot). `ids` (B, N_keep) fixes the kept tokens instead of drawing them.
        """
        cfg = self.config
        if gamma > 0 and cfg.sparsity == "none":
            raise ValueError("this model was built without token sparsity; gamma must be 0")
        x = self.x_embedder(x) + self.pos_embed  # (B, N, D)
        c = self.t_embedder(t) + self.y_embedder(y)  # (B, D)
        B, N, _ = x.shape
        sparse = num_sparse(N, gamma) > 0
        if sparse:
            ids = select_tokens(B, N, gamma, generators, x.device) if ids is None else ids
            x = gather_tokens(x, ids)  # (B, N_keep, D): the encoder sees only the kept tokens
        for block in self.blocks:
            x = block(x, c)
        if cfg.use_decoder:
            x = self.decoder_layer(x, c)  # (B, N_keep, D_dec)
            if sparse:
                x = self._fill_dropped(x, ids, N)
            x = x + self.decoder_pos_embed
            for block in self.decoder_blocks:
                x = block(x, c)
            return unpatchify(self.final_layer(x, c), self.config.out_channels, self.config.patch_size)  # (B, C_out, H, W)
        x = self.final_layer(x, c)
        if sparse:  # without a decoder the dropped positions are zeros, as upstream fills them
            x = self._fill_dropped(x, ids, N)
        return unpatchify(x, self.config.out_channels, self.config.patch_size)

    def _fill_dropped(self, x: torch.Tensor, ids: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """(B, N_keep, D) kept tokens back at their positions of a (B, N, D) sequence of mask tokens (or zeros)."""
        B, _, D = x.shape
        if self.mask_token is not None and self.config.use_decoder:
            full = self.mask_token.to(x.dtype).expand(B, num_tokens, D).clone()
        else:
            full = x.new_zeros(B, num_tokens, D)
        return full.scatter(1, ids.unsqueeze(-1).expand(-1, -1, D), x)


# MaskDiT (Anima-Lab/MaskDiT) with its hard-coded decoder (512 wide, 8 deep, 16 heads) at every size; its released
# ImageNet-256 checkpoints are MaskDiT-XL/2 on SD-VAE latents with EDM preconditioning.
PRESETS = {f"MaskDiT-{size}/2": dict(convention="edm", depth=depth, hidden_size=hidden, num_heads=heads, patch_size=2,
                                     input_size=32, in_channels=4, num_classes=1000)
           for size, (depth, hidden, heads) in DIT_SIZES.items()}
FAMILY = Family(MaskDiTConfig, MaskDiT, PRESETS)

__all__ = ["FAMILY", "DecoderLayer", "MaskDiT", "MaskDiTConfig", "OneHotLabelEmbedder"]
