"""Before a suite does any work: gather what its runs need (checkpoints, VAEs, reference batch, Inception weights)
from the components that read them, and stop with one message listing everything missing and how to get it.

The asset registry (harness.assets) knows the manifest only; each component declares its own need (vae_need,
file_need for plain files; a metric its `assets`, its extractor `assets` or a `need` function, in
harness.metrics). This module is where a suite's runs meet those declarations.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.assets import ASSET_MANIFEST, Asset, Need, file_need, load_manifest, raise_missing
from harness import registry
from harness.metrics import get_extractor_spec, get_metric
from harness.models.hub_text import text_encoder_need
from harness.models.vae import vae_need


def missing_assets(runs: Sequence[Any], root: str | Path | None = None, generate: bool = True,
                   evaluate: bool = True, manifest: str | Path = ASSET_MANIFEST) -> list[Need]:
    """What the runs need and lack: checkpoints and VAEs to generate; the reference batch and the Inception
    weights to evaluate. `runs` are harness.suite.Run objects."""
    root = Path(root or Path.cwd())
    assets = load_manifest(manifest) if Path(manifest).is_file() else {}  # an installed package ships none
    needs: dict[str, Need | None] = {}
    if generate:
        for run in runs:
            for role, spec in run.models.items():
                key = run.model_keys[role]
                if spec.checkpoint and f"ckpt:{spec.checkpoint}" not in needs:
                    needs[f"ckpt:{spec.checkpoint}"] = file_need(
                        f"checkpoint of [models.{key}] ({spec.arch})", Path(spec.checkpoint), assets,
                        ("checkpoint",), root)
                if spec.vae and f"vae:{spec.vae}" not in needs:
                    needs[f"vae:{spec.vae}"] = vae_need(spec.vae, assets, root)
                encoder = getattr(spec, "text_encoder", None)
                if getattr(run, "prompts", None) and encoder and f"text:{encoder}" not in needs:
                    needs[f"text:{encoder}"] = text_encoder_need(encoder, spec.text_encoder_options, assets, root)
            if getattr(run, "prompts", None) in assets_of_prompts() and f"prompts:{run.prompts}" not in needs:
                needs[f"prompts:{run.prompts}"] = _prompts_need(assets_of_prompts()[run.prompts], assets, root)
    if evaluate:
        for run in runs:
            if isinstance(run.reference, Path) and run.metrics and f"ref:{run.reference}" not in needs:
                needs[f"ref:{run.reference}"] = file_need("reference batch", run.reference, assets,
                                                          ("reference", "samples"), root)
        specs = [get_metric(m) for m in dict.fromkeys(m for run in runs for m in run.metrics)]
        names: list[str] = []
        for extractor in dict.fromkeys(s.extractor for s in specs if s.extractor):
            spec = get_extractor_spec(extractor)
            if spec.need is not None:
                needs[extractor] = registry.load(spec.need)(assets, root)
            names += spec.assets
        # an entry not in the manifest is not checked; a hub asset also counts as present when the Hugging Face
        # cache holds its files (Asset.present), where the loaders look
        for name in dict.fromkeys(names + [a for s in specs for a in s.assets]):
            asset = assets.get(name)
            if asset is not None and not asset.present(root):
                needs[f"asset:{name}"] = Need(asset.description, asset.location(root), asset, asset.how_to_get())
    return [n for n in needs.values() if n is not None]


def assets_of_prompts() -> dict[str, str]:
    """Built-in prompt sets whose files are an asset: prompt set name -> asset name."""
    from harness.prompts.hpsv3 import ASSET

    return {"hpsv3": ASSET}


def _prompts_need(name: str, assets: dict[str, Asset], root: Path) -> Need | None:
    asset = assets.get(name)
    if asset is None or asset.present(root):
        return None
    return Need(f"prompt files of {asset.description.split(':')[0]}", asset.location(root), asset, asset.how_to_get())


def require_assets(runs: Sequence[Any], root: str | Path | None = None, generate: bool = True,
                   evaluate: bool = True, manifest: str | Path = ASSET_MANIFEST) -> None:
    """Stop before any work with one HarnessError listing every missing asset of `runs` and how to get it."""
    raise_missing(missing_assets(runs, root, generate, evaluate, manifest))


__all__ = ["missing_assets", "require_assets"]
