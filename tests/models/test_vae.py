"""SD-VAE decoding: SD-VAE's architecture, the latent scale, batched decoding, local weights, and clear errors."""

from __future__ import annotations

import sys

import pytest
import torch

from harness.errors import HarnessError
from harness.models import vae

pytest.importorskip("diffusers")


def test_sd_vae_config_is_the_published_architecture():
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        model = AutoencoderKL(**vae.SD_VAE_CONFIG)
    # stabilityai/sd-vae-ft-ema and -mse: 83,653,863 parameters, scaling factor 0.18215
    assert sum(p.numel() for p in model.parameters()) == 83_653_863
    assert model.config.scaling_factor == vae.LATENT_SCALE == 0.18215


def test_decode_scales_latents_and_batches_without_changing_results():
    model = vae.build_vae("sd-vae-ft-ema", random_init=True, config=vae.SMALL_VAE_CONFIG)
    latents = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    pixels = vae.make_decoder(model, batch_size=2)(latents)
    assert pixels.shape == (3, 3, 32, 32) and pixels.dtype == torch.float32 and pixels.std() > 0
    with torch.no_grad():
        direct = model.decode(latents / 0.18215).sample
    torch.testing.assert_close(pixels, direct, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(vae.make_decoder(model, batch_size=1)(latents), pixels, rtol=1e-4, atol=1e-5)
    again = vae.load_vae("sd-vae-ft-ema", random_init=True, config=vae.SMALL_VAE_CONFIG)(latents)
    torch.testing.assert_close(again, pixels)  # the random VAE is the same in every process


def test_decoded_pixels_do_not_depend_on_the_generation_batch():
    """12 latents decoded at once equal the same latents decoded as 5 + 5 + 2, bit for bit (fixed-shape chunks)."""
    model = vae.build_vae("sd-vae-ft-ema", random_init=True, config=vae.SMALL_VAE_CONFIG)
    decode = vae.make_decoder(model, batch_size=4)
    latents = torch.randn(12, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    whole = decode(latents)
    assert torch.equal(torch.cat([decode(latents[:5]), decode(latents[5:10]), decode(latents[10:])]), whole)
    assert torch.equal(decode(latents[3:4]), whole[3:4])


def test_local_folder_weights_load_and_missing_weights_say_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.delenv("HARNESS_ASSETS", raising=False)
    monkeypatch.setattr(vae, "_hub_cached", lambda hub_id: False)
    with pytest.raises(HarnessError) as err:
        vae.load_vae("sd-vae-ft-mse", root=tmp_path)
    assert "harness assets --fetch sd-vae-ft-mse" in str(err.value) and str(tmp_path / "assets") in str(err.value)
    with pytest.raises(HarnessError, match="not a diffusers AutoencoderKL folder"):
        vae.load_vae("my-vae", root=tmp_path)
    model = vae.build_vae("sd-vae-ft-mse", random_init=True, config=vae.SMALL_VAE_CONFIG)
    model.save_pretrained(tmp_path / "assets" / "sd-vae-ft-mse")
    assert vae.find_vae("sd-vae-ft-mse", tmp_path) == str(tmp_path / "assets" / "sd-vae-ft-mse")
    latents = torch.randn(1, 4, 4, 4)
    loaded = vae.load_vae("sd-vae-ft-mse", root=tmp_path)(latents)
    torch.testing.assert_close(loaded, vae.make_decoder(model)(latents))


def test_missing_diffusers_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` raise ImportError
    with pytest.raises(HarnessError, match=r"needs diffusers.*pip install -e '\.\[vae\]'"):
        vae.load_vae("sd-vae-ft-ema", random_init=True)
