"""MicroDiT: the port against upstream micro_diffusion's outputs (fixture), masking with harness ids, EDM convention."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.cost.flops import count_forward
from harness.errors import HarnessError
from harness.models import ModelSpec, family_of, load_checkpoint
from harness.models.adapters import FlowModel, PromptConditions, TextCondition
from harness.models.tokens import select_tokens

FIXTURES = Path(__file__).parents[1] / "fixtures"
STATE = FIXTURES / "microdit_test_state.safetensors"  # upstream DiT(**microdit_test.json) state dict, random weights


def network(arch="MicroDiT-Test", **overrides):
    config, _ = ModelSpec(arch, sparsity="masking", overrides=overrides).config()
    return family_of(config).network(config).eval()


@pytest.fixture(scope="module")
def ported():
    net = network()
    load_checkpoint(net, STATE)  # strict: the upstream layout, unchanged
    return net


@pytest.fixture(scope="module")
def io():
    return load_file(str(FIXTURES / "microdit_test_io.safetensors"))


def caption(io):
    return TextCondition(io["y"], torch.ones(io["y"].shape[:2], dtype=torch.bool))


@torch.no_grad()
def test_dense_forward_matches_upstream(ported, io):
    out = ported(io["x"], io["t"], caption(io))
    torch.testing.assert_close(out, io["out_dense"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tag", ["50", "75"])
@torch.no_grad()
def test_masked_forward_with_upstream_ids_matches_upstream(ported, io, tag):
    """Upstream drew its kept tokens itself (recorded in the fixture); given them as `ids`, the outputs agree,
    including the mask token at the dropped positions."""
    ids = io[f"ids_mask{tag}"]
    out = ported(io["x"], io["t"], caption(io), ids=ids)
    torch.testing.assert_close(out, io[f"out_mask{tag}"], rtol=1e-5, atol=1e-5)
    dropped = io[f"dropped_mask{tag}"].bool()  # upstream's mask: 1 = removed
    tokens = out.unfold(2, 2, 2).unfold(3, 2, 2).permute(0, 2, 3, 1, 4, 5).reshape(3, 16, -1)
    fill = ported.mask_token.flatten()
    assert torch.equal(tokens[dropped], fill.view(1, 4, 2, 2).permute(0, 2, 3, 1).reshape(1, -1)
                       .expand(int(dropped.sum()), -1))


@torch.no_grad()
def test_drawn_masks_are_per_image_and_equal_explicit_ids(ported, io):
    gens = lambda: [torch.Generator().manual_seed(s) for s in (5, 6, 7)]  # noqa: E731
    drawn = ported(io["x"], io["t"], caption(io), 0.5, gens())
    ids = select_tokens(3, 16, 0.5, gens(), torch.device("cpu"))
    assert torch.equal(drawn, ported(io["x"], io["t"], caption(io), ids=ids))
    alone = ported(io["x"][1:2], io["t"][1:2], TextCondition(io["y"][1:2], torch.ones(1, 77, dtype=torch.bool)),
                   0.5, gens()[1:2])
    torch.testing.assert_close(alone, drawn[1:2], rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_edm_convention_and_cfg_match_upstream_preconditioning(ported, io):
    """Upstream's CFG 5 on the raw output F (null caption = zeros), preconditioned as model_forward_wrapper does,
    equals the harness's velocity lerp in the `edm` convention on the same flow state."""
    sd = ported.config.sigma_data
    sigma = torch.exp(4 * io["t"].double()).view(-1, 1, 1, 1)  # the fixture's t is c_noise = ln(sigma) / 4
    x_edm = io["x"].double() * (sigma**2 + sd**2).sqrt()  # its x is c_in * x_edm
    t = 1 / (1 + sigma)
    x_t = (t * x_edm).float()
    d = sd**2 / (sigma**2 + sd**2) * x_edm + sigma * sd / (sigma**2 + sd**2).sqrt() * io["out_cfg5"].double()
    expected = (d - x_t.double()) / (1 - t)

    states = io["y"][:2]  # prompts 0 and 1 (row 2 of the fixture is the zero caption)
    mask = torch.ones(2, 77, dtype=torch.bool)
    conditions = PromptConditions(states, mask, torch.zeros(77, 32), torch.ones(77, dtype=torch.bool))
    model = FlowModel(ported, "edm", conditions)
    prompts = torch.tensor([0, 1, -1])  # the third image is unconditional in both branches
    v_c = model.velocity(x_t, t.flatten().float(), prompts)
    v_u = model.velocity(x_t, t.flatten().float(), conditions.null(prompts))
    torch.testing.assert_close((v_u + 5 * (v_c - v_u)).double(), expected, rtol=1e-4, atol=1e-4)


def test_released_layout_and_parameter_count():
    """MicroDiT-XL/2 on the meta device has the released checkpoints' keys and shapes and 1,165,442,320
    parameters (the analytic count of upstream MicroDiT_XL_2; 16-channel variant 1,165,540,672)."""
    for channels, params in ((4, 1_165_442_320), (16, 1_165_540_672)):
        with torch.device("meta"):
            net = network("MicroDiT-XL/2", in_channels=channels)
        assert sum(p.numel() for p in net.parameters()) == params
    state = net.state_dict()
    assert state["pos_embed"].shape == (1, 1024, 1024) and state["mask_token"].shape == (1, 1, 64)
    assert state["blocks.0.attn.qkv.weight"].shape == (1536, 1024)  # qkv ratio 0.5: 8 heads of 64
    assert state["blocks.27.attn.qkv.weight"].shape == (3072, 1024)
    assert state["blocks.1.mlp.w1"].shape[0] == 8 and "blocks.27.mlp.w3.weight" in state  # MoE; last block dense
    assert "patch_mixer.5.mlp.gate.weight" in state and "patch_mixer_map_xout.1.weight" in state


def test_wrong_checkpoint_is_one_clear_error(tmp_path):
    from safetensors.torch import save_file

    state = load_file(str(STATE))
    state["blocks.0.attn.qkv.weight"] = state["blocks.0.attn.qkv.weight"][:-1]
    del state["final_layer.linear.bias"]
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    with pytest.raises(HarnessError, match=r"bad.safetensors.*\n.*final_layer.linear.bias(.|\n)*blocks.0.attn.qkv"):
        load_checkpoint(network(), bad)


def test_masking_saves_flops_after_the_patch_mixer():
    config, _ = ModelSpec("MicroDiT-Test", sparsity="masking").config()
    dense, masked = count_forward(config, 0.0)[0], count_forward(config, 0.75)[0]
    assert 0.5 * dense < masked < dense  # the patch-mixer and the caption blocks always run on everything
    with pytest.raises(ValueError, match="MicroDiT supports sparsity 'none' or 'masking', got 'routing'"):
        ModelSpec("MicroDiT-Test", sparsity="routing", route=(0, 1)).config()


def test_suite_options_take_the_upstream_constructor_names(write_suite):
    from harness.suite import load_suite

    def write(**options):
        return write_suite("s.toml", suite={"name": "x", "prompts": "geneval", "images_per_prompt": 1, "samples": 4,
                                             "metrics": None},
                           sampler={"kind": "edm_heun"}, runs=[{"name": "cfg", "method": "cfg", "omega": 5.0}],
                           models={"main": {"arch": "MicroDiT-Test", "sparsity": "masking", "text_encoder": "random",
                                            "options": options}})

    config, convention = load_suite(write(expert_capacity=1.0, experts_every_n=3)).models["main"].config()
    assert (config.expert_capacity, config.experts_every_n, convention) == (1.0, 3, "edm")
    with pytest.raises(HarnessError, match=r"s.toml: \[models.main\]: field 'expert_every_n': unknown model option"):
        load_suite(write(expert_capacity=1.0, expert_every_n=3))


@torch.no_grad()
def test_edm_heun_cfg5_sampling_matches_upstream_sampler_loop(ported):
    """Upstream LatentDiffusion.edm_sampler_loop (EDM Heun on the Karras schedule, CFG 5 on the zero caption, 4 steps)
    against harness.sampling's edm_heun over GuidedDenoiser(cfg, omega 5) on the same initial noise."""
    from harness.guidance import GuidanceSpec
    from harness.sampling import GuidedDenoiser, SamplerSpec, sample

    ref = load_file(str(FIXTURES / "microdit_test_sampler.safetensors"))
    states = ref["y"][:2]
    conditions = PromptConditions(states, torch.ones(2, 77, dtype=torch.bool), torch.zeros(77, 32),
                                  torch.ones(77, dtype=torch.bool))
    model = FlowModel(ported, "edm", conditions)
    prompts = torch.tensor([0, 1, -1])  # row 2 of the fixture is the zero caption
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    out = sample(GuidedDenoiser({"main": model}, GuidanceSpec("cfg", 5.0)), ref["noise"], prompts, generators,
                 SamplerSpec("edm_heun", steps=4))
    torch.testing.assert_close(out, ref["sample_cfg5_steps4"], rtol=1e-4, atol=1e-4 * ref["noise"].abs().max())
