"""MaskDiT port against the official code's outputs (tests/fixtures/maskdit, made as its README says).

The fixture holds the official state dict's key names and shapes, the inputs, and the official outputs (EDMPrecond's
D dense, with CFG, masked with given kept tokens; DiT's raw F; edm_sampler with and without CFG). The weights are
not stored (MaskDiT's decoder is 26M parameters at any size): both sides fill every key from the same deterministic
formula, `recipe_value`.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from harness.errors import HarnessError
from harness.guidance import GuidanceSpec
from harness.models import (ARCHS, FlowModel, MaskDiT, MaskDiTConfig, ModelSpec, build_model, load_checkpoint,
                            randomize_weights)
from harness.models.tokens import dropped_pixels
from harness.sampling import GuidedDenoiser, SamplerSpec, make_generators, sample

FIXTURE = Path(__file__).parents[1] / "fixtures" / "maskdit"


def recipe_value(index: int, shape: list[int]) -> torch.Tensor:
    """The fixture's weight for the index-th key: a fixed pseudo-random pattern scaled by 1/sqrt(fan-in)."""
    n = int(np.prod(shape))
    i = np.arange(n, dtype=np.float64)
    u = np.modf(np.sin(i * 12.9898 + (index + 1) * 78.233) * 43758.5453)[0]
    scale = 1.0 / math.sqrt(shape[-1]) if len(shape) >= 2 else 0.1
    return torch.from_numpy(u * scale).float().reshape(shape)


@pytest.fixture(scope="module")
def layout() -> dict:
    return json.loads((FIXTURE / "layout.json").read_text())


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "reference.safetensors"))


@pytest.fixture(scope="module")
def official_state(layout) -> dict[str, torch.Tensor]:
    """EDMPrecond's state dict as the official code names it (`model.` prefix), filled by the recipe."""
    return {key: recipe_value(j, shape) for j, (key, shape) in enumerate(layout["state_dict"])}


@pytest.fixture(scope="module")
def flow(layout, official_state, tmp_path_factory) -> FlowModel:
    """The port, loaded from an official-format checkpoint file (ema + model + args Namespace + opt)."""
    path = tmp_path_factory.mktemp("maskdit") / "2000000.pt"
    ckpt = {"model": {k: torch.zeros_like(v) for k, v in official_state.items()}, "ema": official_state,
            "opt": {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0, 1]}]},
            "args": argparse.Namespace(config="configs/train/imagenet256-latent.yaml", global_seed=0, no_amp=False,
                                       seeds=list(range(100000, 100010)), ckpt_path=None, cfg_scale=None)}
    torch.save(ckpt, path)
    spec = ModelSpec("MaskDiT-S/2", str(path), sparsity="masking", overrides=_overrides(layout["config"]))
    return build_model(spec)


def _overrides(config: dict) -> dict:
    """The fixture's upstream constructor arguments, as suite overrides (the same keyword names)."""
    return {k: v for k, v in config.items() if k not in ("learn_sigma",)}


def _denoised(flow: FlowModel, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor, **kwargs) -> torch.Tensor:
    """EDM's D from the harness velocity: t = 1 / (1 + sigma), x_t = t x, D = x_t + (1 - t) v."""
    t = 1 / (1 + sigma.double())
    x_t = (t.view(-1, 1, 1, 1) * x.double()).float()
    v = flow.velocity(x_t, t.float(), labels, **kwargs).double()
    return (x_t.double() + (1 - t).view(-1, 1, 1, 1) * v).float()


def test_official_layout_loads_unchanged(flow, official_state):
    port = flow.net.state_dict()
    assert set(port) == {k.removeprefix("model.") for k in official_state}
    for key, value in official_state.items():
        assert torch.equal(port[key.removeprefix("model.")], value), key


def test_raw_network_matches_official_forward(flow, reference):
    out = flow.net(reference["net_x"], reference["net_t"], reference["labels"])
    torch.testing.assert_close(out, reference["dense_F"], rtol=1e-4, atol=1e-4)


def test_edm_convention_matches_edmprecond(flow, reference):
    d = _denoised(flow, reference["x"], reference["sigma"], reference["labels"])
    torch.testing.assert_close(d, reference["dense_D"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["cfg_a", "cfg_b"])
def test_cfg_on_all_channels_with_zero_label_matches_forward_with_cfg(flow, reference, name):
    x, labels = reference[f"{name}_x"], reference["labels"]
    sigma = reference[f"{name}_sigma"].expand(len(x))
    cond = _denoised(flow, x, sigma, labels)
    null = _denoised(flow, x, sigma, flow.null_condition(labels))
    torch.testing.assert_close(null + 1.5 * (cond - null), reference[f"{name}_D"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["mask12", "mask8"])
def test_masked_forward_with_given_tokens_matches_official(flow, reference, name):
    ids = reference[f"{name}_ids"]
    gamma = 1 - ids.shape[1] / flow.config.num_tokens
    d = _denoised(flow, reference["x"], reference["sigma"], reference["labels"], gamma=gamma, ids=ids)
    torch.testing.assert_close(d, reference[f"{name}_D"], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(d, reference["dense_D"], atol=1e-2)  # the mask changed the output


@pytest.mark.parametrize("method", ["none", "cfg"])
def test_edm_heun_sampler_matches_official_edm_sampler(flow, reference, layout, method):
    guidance = GuidanceSpec(method, omega=layout["cfg_scale"] if method == "cfg" else 1.0)
    sampler = SamplerSpec(kind="edm_heun", steps=layout["sampler_steps"])
    latents, labels = reference["sampler_latents"], reference["labels"]
    out = sample(GuidedDenoiser({"main": flow}, guidance), latents, labels, make_generators(range(4)), sampler)
    expected = reference["sampler_cfg" if method == "cfg" else "sampler_unguided"]
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_prefixed_and_bare_state_dicts_load(official_state, layout, tmp_path):
    spec = ModelSpec("MaskDiT-S/2", sparsity="masking", overrides=_overrides(layout["config"]))
    net = MaskDiT(spec.config()[0])
    compiled = {f"_orig_mod.{k}": v for k, v in official_state.items()}  # the 2023 torch.compile'd checkpoints
    torch.save({"ema": compiled, "args": argparse.Namespace(lr=1e-4)}, tmp_path / "compiled.pt")
    load_checkpoint(net, tmp_path / "compiled.pt")
    assert torch.equal(net.mask_token, official_state["model.mask_token"])
    torch.save({f"module.{k}": v for k, v in official_state.items()}, tmp_path / "ddp.pt")
    load_checkpoint(net, tmp_path / "ddp.pt")


def test_checkpoint_with_code_or_without_tensors_gets_one_clear_error(tmp_path):
    class Payload:  # any class outside the allow-list must not be unpickled
        def __reduce__(self):
            return (print, ("ran code",))

    torch.save({"ema": {"x": torch.zeros(1)}, "evil": Payload()}, tmp_path / "evil.pt")
    net = MaskDiT(MaskDiTConfig(input_size=8, hidden_size=32, depth=1, num_heads=2, num_classes=10,
                                decoder_depth=1, decoder_hidden_size=32, decoder_num_heads=2))
    with pytest.raises(HarnessError, match=r"evil.pt: needs pickled code \(builtins.print\)"):
        load_checkpoint(net, tmp_path / "evil.pt")
    torch.save({"args": argparse.Namespace(lr=1e-4), "step": 3}, tmp_path / "args_only.pt")
    with pytest.raises(HarnessError, match="args_only.pt: holds no state dict of tensors"):
        load_checkpoint(net, tmp_path / "args_only.pt")


def test_wrong_size_names_the_layout(official_state, tmp_path):
    torch.save({"ema": official_state}, tmp_path / "small.pt")
    spec = ModelSpec("MaskDiT-S/2", str(tmp_path / "small.pt"), sparsity="masking")
    with pytest.raises(HarnessError, match="does not fit MaskDiT-S/2: 2 blocks in the file, MaskDiT-S/2 has 12; width 64 in the file, 384 "):
        build_model(spec)


def test_presets_keep_the_hard_coded_decoder_at_every_size():
    for size in ("S", "B", "L", "XL"):
        config, convention = ModelSpec(f"MaskDiT-{size}/2").config()
        assert (config.decoder_hidden_size, config.decoder_depth, config.decoder_num_heads) == (512, 8, 16)
        assert convention == "edm" and config.sigma_data == 0.5 and config.out_channels == 4
    assert ARCHS["MaskDiT-XL/2"]["depth"] == 28
    with pytest.raises(ValueError, match="no route"):
        MaskDiTConfig(route=(1, 2))


def _expected_macs(config: MaskDiTConfig, keep: int) -> int:
    """Linear/conv MACs of one MaskDiT forward with `keep` of N tokens through the encoder, counted by hand."""
    D, Dd, N, p = config.hidden_size, config.decoder_hidden_size, config.num_tokens, config.patch_size
    per_image = 256 * D + D * D + config.num_classes * D  # timestep MLP, one-hot label linear
    per_image += config.depth * 6 * D * D + 2 * D * D + config.decoder_depth * 6 * D * Dd + 2 * D * Dd  # adaLN
    tokens = N * config.in_channels * p * p * D  # patch embedding
    tokens += keep * config.depth * 12 * D * D + keep * D * Dd  # encoder blocks, decoder_layer on kept tokens
    tokens += N * config.decoder_depth * 12 * Dd * Dd + N * Dd * p * p * config.out_channels  # decoder, final
    return per_image + tokens


def test_flop_count_of_maskdit_xl2_matches_a_hand_count():
    from harness.cost.flops import count_forward

    config, _ = ModelSpec("MaskDiT-XL/2", sparsity="masking").config()
    for gamma, keep in ((0.0, 256), (0.1, 231)):
        gmacs, gmacs_full = count_forward(config, gamma)
        assert gmacs == pytest.approx(_expected_macs(config, keep) / 1e9, rel=1e-9)
        assert gmacs_full > gmacs
    assert count_forward(config, 0.0)[0] == pytest.approx(121.0, abs=0.1)  # SiT-XL/2's 114.4 + the decoder


def test_without_decoder_dropped_positions_are_zero_as_upstream_fills_them():
    config = MaskDiTConfig(input_size=8, hidden_size=32, depth=1, num_heads=2, num_classes=10, use_decoder=False,
                           sparsity="masking")
    net = randomize_weights(MaskDiT(config))
    assert net.mask_token is None and not hasattr(net, "decoder_blocks")
    ids = torch.tensor([[0, 5, 9, 15]])
    out = net(torch.randn(1, 4, 8, 8), torch.zeros(1), torch.tensor([3]), gamma=0.75, ids=ids)
    dropped = dropped_pixels(ids, 16, 2).expand_as(out)
    assert torch.all(out[dropped] == 0) and torch.all(out[~dropped] != 0)
