"""Model registry: architecture presets, time/prediction conventions, and `build_model` for a suite's model."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness.models import dit, maskdit, mdt, microdit, pixart, textdit
from harness.models.adapters import CONVENTIONS, DEFAULT_DROPPED, DROPPED, FlowModel
from harness.models.batching import FORWARD_ROWS
from harness.models.checkpoint import load_checkpoint
from harness.models.dit import DiTConfig, SparseDiT
from harness.models.family import ConfigError, Family, FamilyConfig, Network
from harness.models.maskdit import MaskDiT, MaskDiTConfig
from harness.models.textdit import TextDiT, TextDiTConfig
from harness.models import hub_text  # noqa: F401  registers the open-clip and T5 text encoders

# Network families by name (harness.models.family: each file holds its config, network, presets and entry).
# dit: DiT/SiT (facebookresearch/DiT, willisma/SiT) and the embedded testbed; maskdit: Anima-Lab/MaskDiT; mdt:
# sail-sg/MDT (MDTv2); microdit: SonyResearch/micro_diffusion; pixart: PixArt-Sigma through diffusers, routed by
# hooks; textdit: the text-to-image testbed.
FAMILIES: dict[str, Family] = {"dit": dit.FAMILY, "maskdit": maskdit.FAMILY, "textdit": textdit.FAMILY,
                               "microdit": microdit.FAMILY, "pixart": pixart.FAMILY, "mdt": mdt.FAMILY}

# Every preset by architecture name, tagged with its family.
ARCHS: dict[str, dict] = {name: {**preset, "family": key}
                          for key, family in FAMILIES.items() for name, preset in family.presets.items()}


def register_family(name: str, family: Family) -> Family:
    """Add a family and its presets (a plug-in's way in; the built-in ones are listed in FAMILIES above)."""
    clash = sorted(set(family.presets) & set(ARCHS))
    if name in FAMILIES or clash:
        raise ValueError(f"model family {name!r} or its presets {clash} are registered already")
    FAMILIES[name] = family
    ARCHS.update({arch: {**preset, "family": name} for arch, preset in family.presets.items()})
    return family


def family_of(config: FamilyConfig) -> Family:
    """The family whose config class `config` is an instance of."""
    for family in FAMILIES.values():
        if type(config) is family.config:
            return family
    raise KeyError(f"no model family has config class {type(config).__name__}")


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
    forward_rows: int = FORWARD_ROWS  # images per network call: the fixed shape that makes images batch-invariant

    def config(self):
        """The family's config (a frozen dataclass; DiTConfig for DiT/SiT) and the convention name."""
        if self.arch not in ARCHS:
            raise KeyError(f"unknown architecture {self.arch!r}; known: {', '.join(sorted(ARCHS))}")
        preset = {**ARCHS[self.arch], **self.overrides}
        convention = preset["convention"]
        if convention not in CONVENTIONS:
            raise ConfigError("convention", f"unknown convention {convention!r}; known: {', '.join(CONVENTIONS)}")
        route = tuple(self.route) if self.route is not None else None
        return FAMILIES[preset["family"]].make_config(preset, self.sparsity, route), convention


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
        return FlowModel(net, convention, dropped=spec.dropped, rows=spec.forward_rows)
    net = network(config)
    if spec.checkpoint:
        path = Path(spec.checkpoint)
        if root is not None and not path.is_absolute():
            path = root / path
        # a wrapped diffusers model loads its own weights module
        loaded = load_checkpoint(getattr(net, "weights_module", net), path, spec.weights, spec.arch)
        if loaded.ignored:
            print(f"{path}: not used: {', '.join(loaded.ignored)}", file=sys.stderr)
    flow = FlowModel(net.to(device).eval(), convention, dropped=spec.dropped, rows=spec.forward_rows)
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


__all__ = ["ARCHS", "CONVENTIONS", "DEFAULT_DROPPED", "DROPPED", "FAMILIES", "ConfigError", "DiTConfig", "Family",
           "FamilyConfig", "FlowModel", "Network",
           "MaskDiT", "MaskDiTConfig", "ModelSpec", "SparseDiT", "TextDiT", "TextDiTConfig", "build_model",
           "REDRAW_STD", "family_of", "load_checkpoint", "randomize_weights", "redraw_zero_init", "register_family"]
