"""PixArt-Sigma routed by hooks on diffusers' blocks: exact at gamma 0, equal to a hand-written routed forward."""

import pytest
import torch

pytest.importorskip("diffusers")

from harness.cost.flops import count_forward  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from harness.models import ModelSpec, build_model, family_of, randomize_weights  # noqa: E402
from harness.models.adapters import FlowModel, PromptConditions, TextCondition  # noqa: E402
from harness.models.tokens import gather_tokens, select_tokens  # noqa: E402
from harness.models.route_hooks import TokenRouter  # noqa: E402

ROUTE = (1, 2)


@pytest.fixture(scope="module")
def net():
    config, _ = ModelSpec("PixArt-Test", sparsity="routing", route=ROUTE).config()
    return randomize_weights(family_of(config).network(config), std=0.2, seed=3).eval()


def inputs(b=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, 4, 8, 8, generator=g)
    t = torch.tensor([10.0, 500.5, 990.0])[:b]
    states = torch.randn(b, 8, 12, generator=g)
    mask = torch.ones(b, 8, dtype=torch.bool)
    mask[0, 5:] = False  # a short prompt: padding tokens masked out of cross-attention
    return x, t, TextCondition(states, mask)


def call(transformer, x, t, cond):
    return transformer(x, encoder_hidden_states=cond.states, timestep=t, encoder_attention_mask=cond.mask,
                       added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]


def routed_by_hand(transformer, x, t, cond, ids, first, last):
    """PixArtTransformer2DModel.forward written out, with the route in the block loop (what the hooks must do)."""
    B, _, H, W = x.shape
    p = transformer.config.patch_size
    bias = ((1 - cond.mask.to(x.dtype)) * -10000.0).unsqueeze(1)
    h = transformer.pos_embed(x)
    temb, embedded = transformer.adaln_single(t, {"resolution": None, "aspect_ratio": None}, batch_size=B,
                                              hidden_dtype=h.dtype)
    text = transformer.caption_projection(cond.states).view(B, -1, h.shape[-1])
    for i, block in enumerate(transformer.transformer_blocks):
        if i == first:
            saved, h = h, gather_tokens(h, ids)
        h = block(h, attention_mask=None, encoder_hidden_states=text, encoder_attention_mask=bias, timestep=temb)
        if i == last:
            h = saved.scatter(1, ids.unsqueeze(-1).expand(-1, -1, h.shape[-1]), h)
    shift, scale = (transformer.scale_shift_table[None] + embedded[:, None]).chunk(2, dim=1)
    h = transformer.proj_out(transformer.norm_out(h) * (1 + scale) + shift)
    c = transformer.out_channels
    h = h.reshape(B, H // p, W // p, p, p, c)
    return torch.einsum("nhwpqc->nchpwq", h).reshape(B, c, H, W)


@torch.no_grad()
def test_gamma_zero_is_exactly_the_unhooked_forward(net):
    x, t, cond = inputs()
    hooked = net(x, t, cond, 0.0)
    assert len(net.transformer.transformer_blocks[ROUTE[0]]._forward_pre_hooks) == 1  # hooks are in place
    net.router.remove()
    try:
        assert torch.equal(hooked, call(net.transformer, x, t, cond))
    finally:
        net.router = TokenRouter(net.transformer.transformer_blocks, *ROUTE)


@torch.no_grad()
def test_routed_forward_equals_the_hand_written_route(net):
    x, t, cond = inputs()
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    ids = select_tokens(3, 16, 0.5, gens, torch.device("cpu"))
    routed = net(x, t, cond, ids=ids)
    torch.testing.assert_close(routed, routed_by_hand(net.transformer, x, t, cond, ids, *ROUTE),
                               rtol=1e-5, atol=1e-6)
    assert not torch.allclose(routed, net(x, t, cond, 0.0), atol=1e-3)
    drawn = net(x, t, cond, 0.5, [torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    assert torch.equal(drawn, routed)  # gamma draws the same ids from the images' generators


@torch.no_grad()
def test_routing_changes_only_what_passes_through_the_route(net):
    """With the route on the last block, the routed tokens skip it and the kept tokens see only each other."""
    config, _ = ModelSpec("PixArt-Test", sparsity="routing", route=(3, 3)).config()
    last = family_of(config).network(config).eval()
    last.load_state_dict(net.state_dict())
    x, t, cond = inputs()
    ids = torch.arange(16).repeat(3, 1)[:, :12]
    assert torch.allclose(last(x, t, cond, ids=torch.arange(16).repeat(3, 1)), net(x, t, cond), atol=1e-6)
    assert not torch.allclose(last(x, t, cond, ids=ids), net(x, t, cond), atol=1e-4)


@torch.no_grad()
def test_velocity_uses_the_dit_convention_with_learned_sigma(net):
    """The adapter drops the variance channels: perturbing them in the weights changes nothing."""
    x, t, cond = inputs(2)
    conditions = PromptConditions(cond.states, cond.mask, torch.zeros(8, 12), torch.ones(8, dtype=torch.bool))
    model = FlowModel(net, "dit", conditions)
    tt = torch.tensor([0.3, 0.8])
    v = model.velocity(x[:, :, :, :], tt, torch.tensor([0, 1]))
    proj = net.transformer.proj_out
    saved = proj.weight.clone()
    variance_rows = (torch.arange(proj.out_features) % 8) >= 4  # rows are (p, q, channel) with 8 channels
    proj.weight[variance_rows] += 1.0
    try:
        assert torch.equal(model.velocity(x, tt, torch.tensor([0, 1])), v)
    finally:
        proj.weight.copy_(saved)
    assert v.shape == (2, 4, 8, 8) and torch.isfinite(v).all()


def test_flops_counted_without_weights_and_routing_saves():
    config, _ = ModelSpec("PixArt-Sigma-XL/2-512", sparsity="routing", route=(2, 24)).config()
    dense, routed = count_forward(config, 0.0)[0], count_forward(config, 0.5)[0]
    assert 500 < dense < 600  # 610.9M parameters over 1024 image tokens and 300 text tokens
    assert routed < 0.65 * dense
    with torch.device("meta"):
        assert sum(p.numel() for p in family_of(config).network(config).parameters()) == 610_856_096


def test_checkpoint_loads_into_the_diffusers_model(tmp_path, net):
    from safetensors.torch import save_file

    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in net.transformer.state_dict().items()}, str(path))
    spec = ModelSpec("PixArt-Test", checkpoint=str(path), sparsity="routing", route=ROUTE)
    loaded = build_model(spec)
    assert all(torch.equal(a, b) for a, b in zip(loaded.net.state_dict().values(), net.state_dict().values()))
    bad = ModelSpec("PixArt-Test", checkpoint=str(path), sparsity="none", overrides={"num_layers": 3})
    with pytest.raises(HarnessError, match="4 transformer_blocks in the file, PixArt-Test has 3"):
        build_model(bad)
