"""Model registry: architecture presets, time/prediction conventions, and `build_model` for a suite's model."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from harness.models.adapters import CONVENTIONS, DEFAULT_DROPPED, DROPPED, FlowModel
from harness.models.checkpoint import load_checkpoint
from harness.models.dit import DiTConfig, SparseDiT
from harness.models.maskdit import MaskDiT, MaskDiTConfig
from harness.models.mdt import MDT_ARCHS, MDTConfig, MDTv2
from harness.models.microdit import MICRODIT_ARCHS, MicroDiT, MicroDiTConfig
from harness.models.pixart import PIXART_ARCHS, PixArtConfig, PixArtNetwork
from harness.models.textdit import TextDiT, TextDiTConfig
from harness.models import hub_text  # noqa: F401  registers the open-clip and T5 text encoders


@dataclass(frozen=True)
class Family:
    """One kind of network: its frozen config dataclass and its module class (built as `network(config)`).

    The network's forward is `net(x, t_native, cond_native, gamma, generators, ids)`, its config has `num_tokens`,
    `sparsity`, `in_channels`, `input_size`, and `net.dummy_inputs(batch)` gives (x, t, cond) for FLOP counting.
    """

    config: type
    network: type[nn.Module]


# Network families by name; an ARCHS preset names its family under "family" (default "dit").
FAMILIES: dict[str, Family] = {"dit": Family(DiTConfig, SparseDiT), "maskdit": Family(MaskDiTConfig, MaskDiT),
                               "textdit": Family(TextDiTConfig, TextDiT), "microdit": Family(MicroDiTConfig, MicroDiT),
                               "pixart": Family(PixArtConfig, PixArtNetwork), "mdt": Family(MDTConfig, MDTv2)}


def family_of(config) -> Family:
    """The family whose config class `config` is an instance of."""
    for family in FAMILIES.values():
        if type(config) is family.config:
            return family
    raise KeyError(f"no model family has config class {type(config).__name__}")

_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}


def _preset(family: str, size: str, patch: int) -> dict:
    depth, hidden, heads = _SIZES[size]
    return dict(depth=depth, hidden_size=hidden, num_heads=heads, patch_size=patch, input_size=32, in_channels=4,
                num_classes=1000, learn_sigma=True, convention="dit" if family == "DiT" else "sit")


# Official DiT/SiT sizes (DiT Table 1) on 256 px SD-VAE latents, plus the embedded testbed's pixel-space models.
ARCHS: dict[str, dict] = {
    f"{family}-{size}/{patch}": _preset(family, size, patch)
    for family in ("DiT", "SiT") for size in _SIZES for patch in (2, 4, 8)
}
# MaskDiT (Anima-Lab/MaskDiT) with its hard-coded decoder (512 wide, 8 deep, 16 heads) at every size; its released
# ImageNet-256 checkpoints are MaskDiT-XL/2 on SD-VAE latents with EDM preconditioning.
ARCHS.update({
    f"MaskDiT-{size}/2": dict(family="maskdit", convention="edm", depth=depth, hidden_size=hidden, num_heads=heads,
                              patch_size=2, input_size=32, in_channels=4, num_classes=1000)
    for size, (depth, hidden, heads) in _SIZES.items()
})
ARCHS["Testbed-S/4"] = dict(depth=6, hidden_size=128, num_heads=4, patch_size=4, input_size=32, in_channels=3,
                            num_classes=10, learn_sigma=False, class_in_tokens=True, convention="sit",
                            decoder_hidden_size=96, decoder_depth=2, decoder_num_heads=4)
ARCHS["Testbed-XS/4"] = dict(ARCHS["Testbed-S/4"], depth=4, hidden_size=96, num_heads=4)
# The text-to-image testbed (harness/testbed/scenes.py) and a tiny text-conditioned net for tests.
ARCHS["TextTestbed-S/4"] = dict(family="textdit", depth=6, hidden_size=128, num_heads=4, patch_size=4, input_size=32,
                                in_channels=3, text_dim=64, text_len=12, convention="sit")
ARCHS["TextDiT-Tiny"] = dict(family="textdit", depth=2, hidden_size=32, num_heads=2, patch_size=4, input_size=16,
                             in_channels=3, text_dim=16, text_len=8, convention="sit")
ARCHS.update(MICRODIT_ARCHS)  # MicroDiT-XL/2 (512 px, released checkpoints), MicroDiT-Tiny/2, MicroDiT-Test
ARCHS.update(PIXART_ARCHS)  # PixArt-Sigma-XL/2-512, -1024 (diffusers' transformer, routed by hooks), PixArt-Test
ARCHS.update(MDT_ARCHS)  # MDTv2-S/2 ... MDTv2-XL/2 (sail-sg/MDT; the released checkpoint is XL/2, decode_layer 4)


@dataclass
class ModelSpec:
    """One entry of a suite's [models.*] table, resolved; any DiTConfig field may override the preset."""

    arch: str
    checkpoint: str | None = None
    sparsity: str = "none"
    route: tuple[int, int] | None = None
    vae: str | None = None
    overrides: dict = field(default_factory=dict)  # e.g. learn_sigma, num_classes, input_size, convention
    dropped: str = DEFAULT_DROPPED  # masking models: what a masked weak branch keeps at its dropped positions
    text_encoder: str | None = None  # a TEXT_ENCODERS name, for text-conditioned networks
    text_encoder_options: dict = field(default_factory=dict)
    weights: str | None = None  # "ema" | "model": which weights of a training checkpoint (default: EMA if present)

    def config(self):
        """The family's config (a frozen dataclass; DiTConfig for DiT/SiT) and the convention name."""
        if self.arch not in ARCHS:
            raise KeyError(f"unknown architecture {self.arch!r}; known: {', '.join(sorted(ARCHS))}")
        kwargs = {**ARCHS[self.arch], **self.overrides}
        convention = kwargs.pop("convention")
        family = FAMILIES[kwargs.pop("family", "dit")]
        if convention not in CONVENTIONS:
            raise KeyError(f"unknown convention {convention!r}; known: {', '.join(CONVENTIONS)}")
        route = tuple(self.route) if self.route is not None else None
        known = {f.name for f in fields(family.config)}
        unknown = set(kwargs) - known
        if unknown:
            raise KeyError(f"unknown model option(s) {sorted(unknown)}")
        return family.config(**kwargs, sparsity=self.sparsity, route=route), convention


def build_model(spec: ModelSpec, device: torch.device | str = "cpu", root: Path | None = None,
                meta: bool = False) -> FlowModel:
    """The adapter-wrapped model of `spec`, weights loaded from its checkpoint (random when it has none).

    `meta=True` builds it on the meta device (no memory, no weights) for FLOP counting.
    """
    config, convention = spec.config()
    network = family_of(config).network
    if meta:
        with torch.device("meta"):
            net = network(config)
        return FlowModel(net, convention, dropped=spec.dropped)
    net = network(config)
    if spec.checkpoint:
        path = Path(spec.checkpoint)
        if root is not None and not path.is_absolute():
            path = root / path
        # a wrapped diffusers model loads its own weights module
        loaded = load_checkpoint(getattr(net, "weights_module", net), path, spec.weights, spec.arch)
        if loaded.ignored:
            print(f"{path}: not used: {', '.join(loaded.ignored)}", file=sys.stderr)
    flow = FlowModel(net.to(device).eval(), convention, dropped=spec.dropped)
    flow.checkpoint = loaded.summary() if spec.checkpoint else None  # for the run's manifest
    return flow


def randomize_weights(model: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Re-draw every trainable weight from N(0, std): a freshly built DiT predicts exactly zero (adaLN-Zero and a
    zeroed output layer), so dry runs and tests that need methods to differ use this instead."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model


REDRAW_STD = 0.02  # dry runs: the std of redrawn zero-initialised layers


@torch.no_grad()
def redraw_zero_init(module: torch.nn.Module, std: float = REDRAW_STD) -> int:
    """Redraw every all-zero parameter from N(0, std) (adaLN-Zero, final layer, biases); returns how many.

    Uses the global RNG: callers seed it (harness.generate.ModelCache seeds per model key). Dry runs only.
    """
    redrawn = 0
    for param in module.parameters():
        if param.numel() and not param.any():
            param.normal_(0.0, std)
            redrawn += 1
    return redrawn


__all__ = ["ARCHS", "CONVENTIONS", "DEFAULT_DROPPED", "DROPPED", "FAMILIES", "DiTConfig", "Family", "FlowModel",
           "MaskDiT", "MaskDiTConfig", "ModelSpec", "SparseDiT", "TextDiT", "TextDiTConfig", "build_model",
           "REDRAW_STD", "family_of", "load_checkpoint", "randomize_weights", "redraw_zero_init"]
