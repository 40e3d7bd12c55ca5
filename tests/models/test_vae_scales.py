"""The latent scale is per VAE: SD-VAE 0.18215, the SDXL VAE of MicroDiT and PixArt-Sigma 0.13025."""

import json

import pytest
import torch

from harness.errors import HarnessError
from harness.models import vae

pytest.importorskip("diffusers")


@torch.no_grad()
def test_random_vae_of_a_name_carries_its_scale_and_decoding_divides_by_it():
    sd = vae.build_vae("sd-vae-ft-ema", random_init=True, config=vae.SMALL_VAE_CONFIG)
    xl = vae.build_vae("sdxl-vae", random_init=True, config=vae.SMALL_VAE_CONFIG)
    assert sd.config.scaling_factor == 0.18215 and xl.config.scaling_factor == 0.13025
    assert vae.LATENT_SCALES["pixart-sigma-vae"] == 0.13025
    latents = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    # same weights (same seed and architecture), different scales: decode(z) = D(z / scale)
    torch.testing.assert_close(vae.make_decoder(xl)(latents), sd.decode(latents / 0.13025).sample)


def test_subfolder_vae_loads_from_a_local_folder_and_is_explained_when_missing(tmp_path):
    folder = tmp_path / "assets" / "sdxl-vae" / "vae"  # the hub asset keeps the repo subfolder
    with pytest.raises(HarnessError, match=r"sdxl-vae.*harness assets --fetch sdxl-vae"):
        vae.build_vae("sdxl-vae", root=tmp_path)
    model = vae.build_vae("sdxl-vae", random_init=True, config=vae.SMALL_VAE_CONFIG)
    model.save_pretrained(str(folder))
    assert json.loads((folder / "config.json").read_text())["scaling_factor"] == 0.13025
    loaded = vae.build_vae("sdxl-vae", root=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
