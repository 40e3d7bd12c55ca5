"""FLOPs a text-to-image suite spends outside the denoiser: its text encoder once per prompt, its VAE once per image.

Neither belongs in the per-step numbers (`gflops`): prompts are encoded once per prompt set and cached, and decoding
happens once per image whatever the guidance. Counted as the denoiser is (harness.cost): FlopCounterMode over the
module built under FakeTensorMode, shapes only, no weights; MACs with the attention matmuls included. The text
encoders' shapes are those of the published models (open-clip's DFN5B ViT-H-14 text tower; T5 v1.1 XXL).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from harness.cost.flops import _cpu_flash_attention_flop

aten = torch.ops.aten
# Text encoder name -> (kind, constructor arguments, tokens per prompt)
TEXT_ENCODER_SHAPES: dict[str, tuple[str, dict[str, Any], int]] = {
    "openclip-dfn5b": ("openclip", dict(context_length=77, vocab_size=49408, width=1024, heads=16, layers=24,
                                        output_dim=1024), 77),
    "t5-pixart-sigma": ("t5", dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                                   feed_forward_proj="gated-gelu"), 300),
}


def _count(build, run) -> float:
    """GMACs of run(module) for module = build(), on fake tensors."""
    mode = FakeTensorMode()
    counter = FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flop})
    with mode, torch.no_grad():
        module = build().eval()
        with counter:
            run(module)
    return sum(counter.get_flop_counts()["Global"].values()) / 2e9


@functools.lru_cache(maxsize=None)
def text_encoder_gmacs(name: str) -> float | None:
    """GMACs of encoding one prompt with text encoder `name`; None when its shape is not known here."""
    if name not in TEXT_ENCODER_SHAPES:
        return None
    kind, kwargs, tokens = TEXT_ENCODER_SHAPES[name]
    if kind == "openclip":
        from open_clip.transformer import TextTransformer

        def run(m):
            x = m.token_embedding(torch.zeros(1, tokens, dtype=torch.long)) + m.positional_embedding
            m.ln_final(m.transformer(x, attn_mask=m.attn_mask))

        return _count(lambda: TextTransformer(**kwargs), run)
    from transformers import T5Config, T5EncoderModel

    ids = lambda: torch.zeros(1, tokens, dtype=torch.long)  # noqa: E731
    return _count(lambda: T5EncoderModel(T5Config(**kwargs)), lambda m: m(ids(), attention_mask=ids() + 1))


@functools.lru_cache(maxsize=None)
def vae_decode_gmacs(name: str, latent_side: int, latent_channels: int = 4) -> float:
    """GMACs of decoding one image's latents (latent_channels x side x side) with VAE `name`'s architecture."""
    from harness.models.vae import SD_VAE_CONFIG, require_diffusers

    autoencoder = require_diffusers()
    config = {**SD_VAE_CONFIG, "latent_channels": latent_channels}
    return _count(lambda: autoencoder(**config),
                  lambda m: m.decode(torch.zeros(1, latent_channels, latent_side, latent_side)))


def outside_denoiser(suite) -> list[str]:
    """Lines for `harness plan`: each text encoder's GMACs per prompt and each VAE's per image (prompt suites)."""
    lines, seen = [], set()
    for run in suite.runs:
        if getattr(run, "prompts", None) is None:
            continue
        for spec in run.models.values():
            config = spec.config()[0]
            if spec.text_encoder and ("text", spec.text_encoder) not in seen:
                seen.add(("text", spec.text_encoder))
                try:
                    gmacs = text_encoder_gmacs(spec.text_encoder)
                except ImportError as err:  # open-clip / transformers are optional extras
                    lines.append(f"text encoder {spec.text_encoder}: not counted ({err})")
                    continue
                if gmacs is not None:
                    lines.append(f"text encoder {spec.text_encoder}: {gmacs:,.1f} GMACs per prompt, once per prompt "
                                 f"set (cached)")
            if spec.vae and ("vae", spec.vae) not in seen:
                seen.add(("vae", spec.vae))
                gmacs = vae_decode_gmacs(spec.vae, config.input_size, config.in_channels)
                lines.append(f"VAE {spec.vae} decode: {gmacs:,.1f} GMACs per image (not in gflops / tflops_image)")
    return lines


__all__ = ["TEXT_ENCODER_SHAPES", "outside_denoiser", "text_encoder_gmacs", "vae_decode_gmacs"]
