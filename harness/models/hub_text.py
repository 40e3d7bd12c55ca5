"""The text encoders of the public text-to-image models, registered in TEXT_ENCODERS.

- `openclip-dfn5b` (MicroDiT): open-clip `hf-hub:apple/DFN5B-CLIP-ViT-H-14-378`'s text tower, the full 77-token
  sequence after `ln_final` (no pooling, no projection), as micro_diffusion's `openclip_text_encoder` computes it.
  Written against current open-clip, whose text transformer is batch-first (upstream's wrapper permutes to LND and
  breaks from open-clip 2.26). MicroDiT attends to all 77 positions, so the mask is all True; the null caption is
  all zeros, as MicroDiT was trained (captions dropped by multiplying their embedding by 0).
- `t5-pixart-sigma` (PixArt-Sigma): T5 v1.1 XXL from PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers, as
  PixArtSigmaPipeline.encode_prompt does it: lowercased, stripped prompt (clean_caption off), padded to 300 tokens,
  last hidden state and the attention mask; the null caption is the encoded empty prompt "" (its negative prompt).

Weights come from `assets/<name>/` (as `harness assets --fetch <name>` writes it) or the Hugging Face cache; nothing
is downloaded here. open-clip-torch, transformers and sentencepiece are optional extras (`pip install -e '.[t2i]'`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.errors import HarnessError
from harness.models.text_encoders import TEXT_ENCODERS

INSTALL_HINT = "pip install -e '.[t2i]' (or pip install open-clip-torch transformers sentencepiece)"
# Harness asset name -> (Hugging Face hub id, a file of it that must be there)
HUB_TEXT = {
    "openclip-dfn5b": ("apple/DFN5B-CLIP-ViT-H-14-378", "open_clip_config.json"),
    "t5-pixart-sigma": ("PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers", "text_encoder/config.json"),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def weights_folder(name: str, root: Path | None, folder: str | None = None) -> Path:
    """Where encoder `name`'s files are: `folder` if given, else assets/<name>, else its hub id's cached snapshot."""
    from harness.assets import assets_dir  # late import: assets imports the model registry

    hub_id, marker = HUB_TEXT[name]
    candidates = [Path(folder).expanduser()] if folder else [assets_dir(root) / name]
    if folder and not candidates[0].is_absolute():
        candidates = [Path(root or Path.cwd()) / candidates[0]]
    for candidate in candidates:
        if (candidate / marker).is_file():
            return candidate
    if not folder:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            pass
        else:
            found = try_to_load_from_cache(hub_id, marker)
            if isinstance(found, str):
                return Path(found).parents[len(Path(marker).parts) - 1]
    raise HarnessError(f"text encoder {name!r}: no {marker} in {candidates[0]} nor in the Hugging Face cache of "
                       f"{hub_id}; run `harness assets --fetch {name}` (writes {candidates[0]}) or pass "
                       f"text_encoder_options = {{folder = \"...\"}}")


def text_encoder_need(name: str, options: dict[str, Any], assets: dict, root: Path) -> Any:
    """What encoding prompts with encoder `name` lacks (a harness.assets.Need), or None; other encoders: None."""
    from harness.assets import Need

    if name not in HUB_TEXT:
        return None
    try:
        weights_folder(name, root, options.get("folder"))
    except HarnessError as err:
        asset = assets.get(name)
        hint = asset.how_to_get() if asset is not None and asset.fetchable else str(err)
        return Need(f"text encoder {name!r} weights", asset.location(root) if asset else None, asset, hint)
    return None


def _dtype(options: dict[str, Any]) -> torch.dtype:
    name = options.pop("dtype", "float32")
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r}; known: {', '.join(DTYPES)}")
    return DTYPES[name]


class OpenClipTokenStates:
    """An open-clip CLIP's text tower as a token-state encoder: (P, 77, width) after ln_final, mask all True."""

    def __init__(self, model: nn.Module, tokenizer: Any, device: torch.device | str = "cpu"):
        self.model, self.tokenizer, self.device = model.to(device).eval(), tokenizer, torch.device(device)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        ids = self.tokenizer(list(prompts)).to(self.device)  # (P, 77), zero-padded after the end token
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(ids).to(cast) + m.positional_embedding.to(cast)
        x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask))  # batch-first in open-clip >= 2.26
        return x.float(), torch.ones(ids.shape, dtype=torch.bool, device=self.device)

    def null(self) -> tuple[torch.Tensor, torch.Tensor]:
        """MicroDiT's null caption: zeros (its training dropped captions by zeroing their states)."""
        states, mask = self.encode([""])
        return torch.zeros_like(states[0]), mask[0]


def _openclip_factory(options: dict[str, Any], device: torch.device, root: Path | None) -> OpenClipTokenStates:
    options = dict(options)
    folder = options.pop("folder", None)
    if options:
        raise ValueError(f"unknown options {sorted(options)}; known: folder")
    folder = weights_folder("openclip-dfn5b", root, folder)
    try:
        import open_clip
    except ImportError as err:
        raise HarnessError(f"text encoder 'openclip-dfn5b' needs open-clip-torch ({err}); {INSTALL_HINT}") from err
    name = f"local-dir:{folder}"
    model = open_clip.create_model(name, device="cpu")
    model.visual = None  # only the text tower is used
    return OpenClipTokenStates(model, open_clip.get_tokenizer(name), device)


class T5TokenStates:
    """A T5 encoder as PixArtSigmaPipeline uses it: 300 padded tokens, last hidden state, attention mask."""

    def __init__(self, model: nn.Module, tokenizer: Any, max_length: int = 300, device: torch.device | str = "cpu"):
        self.model, self.tokenizer = model.to(device).eval(), tokenizer
        self.max_length, self.device = max_length, torch.device(device)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer([p.lower().strip() for p in prompts], padding="max_length",
                                max_length=self.max_length, truncation=True, add_special_tokens=True,
                                return_tensors="pt")
        ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
        states = self.model(ids, attention_mask=mask)[0]
        return states.float(), mask.bool()

    def null(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The empty prompt "", PixArtSigmaPipeline's default negative prompt."""
        states, mask = self.encode([""])
        return states[0], mask[0]


def _t5_factory(options: dict[str, Any], device: torch.device, root: Path | None) -> T5TokenStates:
    options = dict(options)
    folder = options.pop("folder", None)
    dtype = _dtype(options)
    max_length = int(options.pop("max_length", 300))
    if options:
        raise ValueError(f"unknown options {sorted(options)}; known: folder, dtype, max_length")
    folder = weights_folder("t5-pixart-sigma", root, folder)
    try:
        from transformers import AutoTokenizer, T5EncoderModel
    except ImportError as err:
        raise HarnessError(f"text encoder 't5-pixart-sigma' needs transformers ({err}); {INSTALL_HINT}") from err
    model = T5EncoderModel.from_pretrained(folder / "text_encoder", dtype=dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    return T5TokenStates(model, tokenizer, max_length, device)


TEXT_ENCODERS.update({"openclip-dfn5b": _openclip_factory, "t5-pixart-sigma": _t5_factory})

__all__ = ["HUB_TEXT", "OpenClipTokenStates", "T5TokenStates", "text_encoder_need", "weights_folder"]
