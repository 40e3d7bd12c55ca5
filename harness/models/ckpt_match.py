"""Which architecture a state dict is: its layout read from tensor shapes, the registered presets it matches, and in
one line how it differs from another (what `harness inspect` and a load that does not fit report)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

import torch

# Where a family keeps its patch embedding (DiT/SiT/MaskDiT/MDT/MicroDiT, diffusers' PixArt).
_PATCH_KEYS = ("x_embedder.proj.weight", "pos_embed.proj.weight")
_LIST = re.compile(r"^([A-Za-z_]\w*)\.(\d+)\.")


@dataclass(frozen=True)
class Layout:
    """The shape facts of a state dict that tell architectures apart."""

    signature: frozenset[str]  # key names with list indices as '#'
    lists: tuple[tuple[str, int], ...]  # top-level module lists and their lengths, e.g. (("blocks", 28),)
    width: int | None = None
    patch: int | None = None
    in_channels: int | None = None
    tokens: int | None = None  # learned or stored pos_embed length
    class_table: tuple[int, ...] | None = None
    out_channels: int | None = None

    @property
    def structure(self) -> tuple:
        """What no model-table option can change: the family's keys, depth(s), width, patch, input channels."""
        return self.signature, self.lists, self.width, self.patch, self.in_channels


def layout_of(shapes: dict[str, torch.Tensor | torch.Size | tuple[int, ...]]) -> Layout:
    """The Layout of a state dict (values may be tensors or shapes)."""
    dims = {k: tuple(v.shape if isinstance(v, torch.Tensor) else v) for k, v in shapes.items()}
    lists: dict[str, set[int]] = {}
    for key in dims:
        if m := _LIST.match(key):
            lists.setdefault(m.group(1), set()).add(int(m.group(2)))
    signature = frozenset(re.sub(r"\.\d+\.", ".#.", k) for k in dims)
    patch_key = next((k for k in _PATCH_KEYS if len(dims.get(k, ())) == 4), None)
    width = patch = in_ch = out = None
    if patch_key:
        width, in_ch, patch, _ = dims[patch_key]
        final = dims.get("final_layer.linear.weight")
        out = final[0] // (patch * patch) if final else None
    pos = dims.get("pos_embed")
    return Layout(signature, tuple(sorted((k, len(v)) for k, v in lists.items())), width, patch, in_ch,
                  pos[1] if pos and len(pos) == 3 else None, dims.get("y_embedder.embedding_table.weight"), out)


Variant = tuple[str, str, tuple[tuple[str, object], ...]]  # (preset name, sparsity, structural overrides)


@lru_cache(maxsize=1)
def variant_layouts() -> dict[Variant, Layout]:
    """The Layout of every registered preset, with sparsity "masking" where that builds more (a masking-capable DiT's
    decoder) and with the family's checkpoint_variants, built on the meta device (no memory, no weights)."""
    from harness.models import ARCHS, FAMILIES, ModelSpec, family_of

    out: dict[Variant, Layout] = {}
    for name, preset in ARCHS.items():
        for extra in [{}, *FAMILIES[preset["family"]].checkpoint_variants]:
            for sparsity in ("none", "masking"):
                try:
                    config, _ = ModelSpec(name, sparsity=sparsity, overrides=extra).config()
                    with torch.device("meta"):
                        net = family_of(config).network(config)
                except (ImportError, ValueError, TypeError):  # not a masking family, or a package is missing
                    continue
                layout = layout_of(getattr(net, "weights_module", net).state_dict())
                key = tuple(sorted(extra.items()))
                if sparsity == "none" or layout != out.get((name, "none", key)):
                    out[name, sparsity, key] = layout
    return out


def preset_layouts() -> dict[str, Layout]:
    """The Layout of every registered preset as built without sparsity or overrides."""
    return {name: layout for (name, sparsity, extra), layout in variant_layouts().items()
            if sparsity == "none" and not extra}


def matching(layout: Layout) -> list[Variant]:
    """The registered presets (and variants) with the same structure (input size or classes may still differ)."""
    return [key for key, preset in variant_layouts().items() if preset.structure == layout.structure]


def nearest(layout: Layout) -> str | None:
    """The registered architecture sharing most of the layout's keys and sizes, when none matches."""
    def score(preset: Layout) -> tuple:
        same = len(preset.signature & layout.signature) / max(1, len(preset.signature | layout.signature))
        return same, sum(a == b for a, b in zip(preset.structure[1:], layout.structure[1:]))

    presets = preset_layouts()
    return max(presets, key=lambda n: score(presets[n])) if presets else None


def differences(file: Layout, model: Layout, name: str) -> list[str]:
    """How the file's layout differs from the model `name`'s, in short phrases ("28 blocks in the file, X has 12")."""
    diffs = []
    file_lists, model_lists = dict(file.lists), dict(model.lists)
    for key in sorted(set(file_lists) | set(model_lists)):
        a, b = file_lists.get(key, 0), model_lists.get(key, 0)
        if a != b:
            diffs.append(f"{a} {key} in the file, {name} has {b}")
    for label, a, b in (("width", file.width, model.width), ("patch size", file.patch, model.patch),
                        ("input channels", file.in_channels, model.in_channels),
                        ("positions (pos_embed)", file.tokens, model.tokens),
                        ("class table", file.class_table, model.class_table),
                        ("output channels", file.out_channels, model.out_channels)):
        if a != b and a is not None and b is not None:
            diffs.append(f"{label} {_fmt(a)} in the file, {_fmt(b)} in {name}")
    listed = set(file_lists) | set(model_lists)  # module lists are counted above
    only_file = _modules(file.signature - model.signature, listed)
    only_model = _modules(model.signature - file.signature, listed)
    if only_file:
        diffs.append(f"modules only in the file: {only_file}")
    if only_model:
        diffs.append(f"modules only in {name}: {only_model}")
    return diffs


def options_for(layout: Layout, variant: Variant) -> dict[str, object]:
    """Model-table options that make a matching variant take the file: its overrides, input size, classes, sigma."""
    from harness.models import ARCHS

    arch = variant[0]
    preset, base = ARCHS[arch], variant_layouts()[variant]
    options: dict[str, object] = dict(variant[2])
    if layout.tokens and layout.tokens != base.tokens and layout.patch:
        options["input_size"] = math.isqrt(layout.tokens) * layout.patch
    if layout.class_table and layout.class_table != base.class_table:
        one_hot = preset.get("family") == "maskdit"  # a bias-free Linear over one-hot labels, no null row
        options["num_classes"] = layout.class_table[1] if one_hot else layout.class_table[0] - 1
    if layout.out_channels and layout.out_channels != base.out_channels:
        options["learn_sigma"] = layout.out_channels == 2 * (layout.in_channels or 0)
    return options


def _fmt(value: object) -> str:
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _modules(keys: frozenset[str], skip: set[str]) -> str:
    """Key names grouped by their first component, e.g. 'decoder_layer, mask_token', leaving out `skip`."""
    heads = sorted({k.split(".")[0] for k in keys} - skip)
    return ", ".join(heads[:6]) + (f", ... ({len(heads)} in all)" if len(heads) > 6 else "")


__all__ = ["Layout", "Variant", "differences", "layout_of", "matching", "nearest", "options_for",
           "preset_layouts", "variant_layouts"]
