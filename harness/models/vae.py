"""SD-VAE decoding through diffusers' AutoencoderKL: model latents to pixels in [-1, 1], in batches.

DiT and SiT train on SD-VAE latents multiplied by 0.18215 and decode samples with `vae.decode(z / 0.18215).sample`;
the pixels then become uint8 by harness.sampling.to_uint8, `clamp(127.5 * x + 128, 0, 255)` cast to uint8 (the
cast truncates, so this rounds), exactly as their sample_ddp.py does. That is the one pixel conversion of the
harness.

Weights come from a local folder (`assets/<name>/` with config.json and the weights, as `harness assets --fetch
<name>` writes it, or any folder given as the name) or else from the Hugging Face cache of the hub id; nothing is
downloaded here. diffusers is an optional extra (`pip install -e '.[vae]'`). Dry runs construct the VAE from
SD-VAE's config with random weights instead (nothing read, nothing downloaded).

The latent scale is per VAE (LATENT_SCALES, the `scaling_factor` of its config): 0.18215 for SD-VAE, 0.13025 for
the SDXL VAE that MicroDiT and PixArt-Sigma use (no shift); decoding reads it from the loaded VAE's config, and a
random-weight VAE built for a known name carries that name's scale.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from harness.assets import Asset, Need, assets_dir, hub_cached
from harness.errors import HarnessError
from harness.models.batching import in_fixed_chunks

LATENT_SCALE = 0.18215  # SD-VAE's scaling_factor: latents the models see = VAE latents * 0.18215
DECODE_BATCH = 16  # latents decoded per VAE call: bounds the decoder's activation memory at 256 px
# Harness VAE names -> Hugging Face hub ids (the names DiT/SiT's `--vae ema|mse` select).
VAES = {"sd-vae-ft-ema": "stabilityai/sd-vae-ft-ema", "sd-vae-ft-mse": "stabilityai/sd-vae-ft-mse",
        "sdxl-vae": "stabilityai/stable-diffusion-xl-base-1.0",  # MicroDiT's (subfolder vae)
        "pixart-sigma-vae": "PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers"}  # PixArt-Sigma's SDXL VAE copy
VAE_SUBFOLDERS = {"sdxl-vae": "vae", "pixart-sigma-vae": "vae"}  # where a hub id keeps its VAE
# Latents the models see = VAE latents * scale (each VAE config's scaling_factor).
LATENT_SCALES = {"sd-vae-ft-ema": LATENT_SCALE, "sd-vae-ft-mse": LATENT_SCALE, "sdxl-vae": 0.13025,
                 "pixart-sigma-vae": 0.13025}
# The architecture of stabilityai/sd-vae-ft-ema and -mse (their config.json; kl-f8: 4 latent channels, 8x).
SD_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "act_fn": "silu", "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512), "norm_num_groups": 32, "sample_size": 256,
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "scaling_factor": LATENT_SCALE,
}
# The same latent layout (4 channels, 8x upsampling) at a fraction of the width: quick dry runs and tests.
SMALL_VAE_CONFIG: dict[str, Any] = {**SD_VAE_CONFIG, "block_out_channels": (32, 32, 32, 32), "layers_per_block": 1,
                                    "norm_num_groups": 8}
INSTALL_HINT = "pip install -e '.[vae]' (or pip install diffusers)"
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def require_diffusers() -> Any:
    """diffusers' AutoencoderKL class; one HarnessError saying what to install when diffusers is missing."""
    try:
        from diffusers import AutoencoderKL
    except ImportError as err:
        raise HarnessError(f"decoding SD-VAE latents needs diffusers, which is not installed ({err}); "
                           f"{INSTALL_HINT}") from err
    return AutoencoderKL


def local_folder(name: str, root: str | Path | None = None) -> Path:
    """Where a VAE's weights live on disk: <assets>/<name> for a known name, else `name` as a folder path."""
    if name in VAES:
        return assets_dir(root) / name / VAE_SUBFOLDERS.get(name, "")  # a hub asset keeps the repo's subfolder
    path = Path(name).expanduser()
    return path if path.is_absolute() else Path(root or Path.cwd()) / path


def _is_weights_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any((folder / f).is_file() for f in WEIGHT_FILES)


def _hub_cached(name: str) -> bool:
    """Whether the Hugging Face cache holds VAE `name`'s config and weights (no network)."""
    sub = VAE_SUBFOLDERS.get(name)
    files = [f"{sub}/{f}" if sub else f for f in ("config.json", *WEIGHT_FILES)]
    return any(hub_cached(VAES[name], (files[0], weights)) for weights in files[1:])


def find_vae(name: str, root: str | Path | None = None) -> str | None:
    """What AutoencoderKL.from_pretrained should load for `name` (a local folder or a cached hub id), or None."""
    folder = local_folder(name, root)
    if _is_weights_folder(folder):
        return str(folder)
    if name in VAES and _hub_cached(name):
        return VAES[name]
    return None


def missing_vae_message(name: str, root: str | Path | None = None) -> str:
    """The sentence that says where a VAE's weights were looked for and how to get them."""
    folder = local_folder(name, root)
    if name in VAES:
        return (f"VAE {name!r}: no weights in {folder} nor in the Hugging Face cache of {VAES[name]}; "
                f"run `harness assets --fetch {name}` (writes {folder})")
    return (f"VAE {name!r}: {folder} is not a diffusers AutoencoderKL folder (config.json and "
            f"{' or '.join(WEIGHT_FILES)}); known names: {', '.join(VAES)}")


def vae_need(name: str, assets: dict[str, Asset], root: Path) -> Need | None:
    """What decoding with VAE `name` needs and lacks (diffusers, then the weights); None when nothing is missing."""
    try:
        require_diffusers()
    except HarnessError:
        return Need(f"VAE {name!r}: the diffusers package", None, None, INSTALL_HINT)
    if find_vae(name, root) is not None:
        return None
    asset = assets.get(name)
    hint = asset.how_to_get() if asset is not None and asset.kind == "vae" else missing_vae_message(name, root)
    return Need(f"VAE {name!r} weights", local_folder(name, root), asset, hint)


def build_vae(name: str, device: torch.device | str = "cpu", random_init: bool = False,
              config: Mapping[str, Any] | None = None, root: str | Path | None = None) -> torch.nn.Module:
    """The AutoencoderKL of `name` in eval mode on `device`, or with random_init one built from `config`.

    `config` (default SD_VAE_CONFIG) is used only with random_init, with the scale of `name` when it is a known
    VAE; its weights are PyTorch's default initialisation drawn from a fixed seed, so every process builds the
    same VAE.
    """
    autoencoder = require_diffusers()
    if random_init:
        config = dict(config or SD_VAE_CONFIG)
        if name in LATENT_SCALES:
            config["scaling_factor"] = LATENT_SCALES[name]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            vae = autoencoder(**config)
    else:
        source = find_vae(name, root)
        if source is None:
            raise HarnessError(missing_vae_message(name, root))
        try:
            subfolder = VAE_SUBFOLDERS.get(name) if source == VAES.get(name) else None
            vae = autoencoder.from_pretrained(source, subfolder=subfolder, local_files_only=True)
        except (OSError, ValueError) as err:
            raise HarnessError(f"VAE {name!r}: cannot load {source} ({err}); fetch it again with "
                               f"`harness assets --fetch {name}`") from err
    return vae.to(device).eval().requires_grad_(False)


def make_decoder(vae: torch.nn.Module, batch_size: int = DECODE_BATCH) -> Callable[[torch.Tensor], torch.Tensor]:
    """latents (B, 4, h, w) as the models see them -> float32 pixels (B, 3, 8h, 8w) in about [-1, 1].

    Decoded in chunks of exactly `batch_size` latents (the last padded), so a latent's pixels do not depend on the
    generation batch it came in (harness.models.batching)."""
    scale = float(getattr(vae.config, "scaling_factor", LATENT_SCALE))
    dtype = next(vae.parameters()).dtype

    @torch.no_grad()
    def decode(latents: torch.Tensor) -> torch.Tensor:
        return in_fixed_chunks(lambda chunk: vae.decode((chunk / scale).to(dtype)).sample.float(), latents, batch_size)

    return decode


def load_vae(name: str, device: torch.device | str = "cpu", random_init: bool = False,
             config: Mapping[str, Any] | None = None, root: str | Path | None = None,
             batch_size: int = DECODE_BATCH) -> Callable[[torch.Tensor], torch.Tensor]:
    """The decode function of VAE `name` (latents -> pixels in [-1, 1]); see build_vae for the arguments."""
    return make_decoder(build_vae(name, device, random_init, config, root), batch_size)


__all__ = ["DECODE_BATCH", "LATENT_SCALE", "LATENT_SCALES", "SD_VAE_CONFIG", "SMALL_VAE_CONFIG", "VAES",
           "VAE_SUBFOLDERS", "build_vae", "find_vae", "load_vae", "make_decoder", "missing_vae_message",
           "require_diffusers", "vae_need"]
