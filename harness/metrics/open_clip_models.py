"""open-clip models for the colour step and CLIP score: a named architecture with its weights found locally.

Weights are an asset, never downloaded here: `weights` names a checkpoint file (an open-clip state dict, e.g. the
hub's open_clip_model.safetensors), else the manifest asset's file when in place, else the tag is looked up in the
Hugging Face cache where open-clip keeps its downloads. The tag's settings are kept when loading from a file: its
preprocessing and QuickGELU. open-clip >= 3 no longer builds "openai" models with QuickGELU by itself (2.x did,
through load_openai_model), so it is forced here; without it ViT-L-14/openai would run with plain GELU and give
other features than GenEval's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from harness.errors import HarnessError

# A tiny random-weight open-clip model (dry runs, tests): ViT-B-32's tokenizer and transforms, 1-layer towers.
TINY_ARCH = "ViT-B-32"
TINY = dict(embed_dim=32, vision_cfg=dict(image_size=224, layers=1, width=64, head_width=32, patch_size=32),
            text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=1))

def _cached_weights(pretrained_cfg: dict) -> str | None:
    """The tag's weights file in the Hugging Face cache, if open-clip (or `harness assets`) put it there."""
    hub = pretrained_cfg.get("hf_hub", "")
    if not hub:
        return None
    from huggingface_hub import try_to_load_from_cache

    repo, filename = hub.rstrip("/"), None
    if not hub.endswith("/"):
        repo, filename = hub.rsplit("/", 1)
    for name in ([filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]):
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str):
            return found
    return None


def _asset_file(name: str) -> Path | None:
    """The first file of a manifest asset when it is in place (`harness assets --fetch NAME` puts it there)."""
    from harness.assets import load_manifest

    asset = load_manifest().get(name)
    files = asset.downloads() if asset is not None else []
    return files[0].dest if files and files[0].dest.is_file() else None


def asset_weights(arch: str, pretrained: str, weights: str | Path | None = None, asset: str | None = None) -> Path:
    """The weights file of arch/pretrained: `weights`, else the manifest asset's file, else the Hugging Face cache;
    HarnessError naming the asset's fetch command when none is there."""
    import open_clip

    found = Path(weights) if weights else (_asset_file(asset) if asset else None)
    if found is None or not found.is_file():
        cached = _cached_weights(open_clip.get_pretrained_cfg(arch, pretrained))
        found = Path(cached) if cached and not weights else found
    if found is None or not found.is_file():
        fetch = f"`harness assets --fetch {asset}`" if asset else "download it with open-clip once"
        raise HarnessError(f"CLIP {arch}/{pretrained} weights are missing{f' at {weights}' if weights else ''}; {fetch}")
    return found


def load_open_clip(arch: str, pretrained: str | None = None, device: str | torch.device = "cpu",
                   weights: str | Path | None = None, asset: str | None = None, **overrides: object):
    """(model, val transform, tokenizer). pretrained=None and no weights: random weights (dry runs, tests);
    overrides go to open_clip.create_model (e.g. a smaller vision_cfg for tests)."""
    try:
        import open_clip
    except ImportError as error:
        raise HarnessError("CLIP needs open-clip-torch: pip install -e '.[t2i]'") from error
    if arch not in open_clip.list_models():
        raise HarnessError(f"unknown open-clip architecture {arch!r}; see open_clip.list_models()")
    tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained) if pretrained else {}
    if pretrained and not tag_cfg and weights is None:
        raise HarnessError(f"open-clip has no weights tagged {pretrained!r} for {arch}; "
                           f"known: {', '.join(open_clip.list_pretrained_tags_by_model(arch))}")
    if weights is None and asset and pretrained:
        weights = _asset_file(asset)
    checkpoint = str(weights) if weights is not None else (_cached_weights(tag_cfg) if pretrained else None)
    if weights is not None and not Path(weights).is_file():
        checkpoint = None
    if pretrained and checkpoint is None:
        where = f"{weights}" if weights is not None else f"the Hugging Face cache ({tag_cfg.get('hf_hub', '?')})"
        fetch = f"`harness assets --fetch {asset}`" if asset else "download it with open-clip once"
        raise HarnessError(f"CLIP {arch}/{pretrained} weights are missing: expected in {where}; {fetch}")
    model, _, transform = open_clip.create_model_and_transforms(
        arch, pretrained=checkpoint, device=device, force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
        image_mean=tag_cfg.get("mean"), image_std=tag_cfg.get("std"), image_interpolation=tag_cfg.get("interpolation"),
        image_resize_mode=tag_cfg.get("resize_mode"), **overrides)
    return model.eval(), transform, open_clip.get_tokenizer(arch)
