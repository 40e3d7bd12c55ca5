"""The route hooks on SD3's MMDiT (JointTransformerBlock): only image tokens routed, the text stream untouched."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from harness.models import randomize_weights  # noqa: E402
from harness.models.tokens import gather_tokens, select_tokens  # noqa: E402
from harness.models.route_hooks import TokenRouter  # noqa: E402

FIRST, LAST = 1, 3  # LAST is the final block: context_pre_only, it returns (None, image tokens)


@pytest.fixture(scope="module")
def sd3():
    torch.manual_seed(0)
    model = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=4, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=12, caption_projection_dim=16, pooled_projection_dim=10, out_channels=4,
        pos_embed_max_size=16)
    return randomize_weights(model, std=0.2, seed=1).eval()


def inputs():
    g = torch.Generator().manual_seed(0)
    return dict(hidden_states=torch.randn(3, 4, 8, 8, generator=g),
                encoder_hidden_states=torch.randn(3, 6, 12, generator=g),
                pooled_projections=torch.randn(3, 10, generator=g), timestep=torch.tensor([5.0, 400.0, 900.0]))


def routed_by_hand(model, ids, hidden_states, encoder_hidden_states, pooled_projections, timestep):
    """SD3Transformer2DModel.forward written out with the route in the block loop."""
    B, _, H, W = hidden_states.shape
    h = model.pos_embed(hidden_states)
    temb = model.time_text_embed(timestep, pooled_projections)
    text = model.context_embedder(encoder_hidden_states)
    for i, block in enumerate(model.transformer_blocks):
        if i == FIRST:
            saved, h = h, gather_tokens(h, ids)
        text, h = block(hidden_states=h, encoder_hidden_states=text, temb=temb)
        if i == LAST:
            h = saved.scatter(1, ids.unsqueeze(-1).expand(-1, -1, h.shape[-1]), h)
    h = model.proj_out(model.norm_out(h, temb))
    p = model.config.patch_size
    h = h.reshape(B, H // p, W // p, p, p, model.out_channels)
    return torch.einsum("nhwpqc->nchpwq", h).reshape(B, model.out_channels, H, W)


@torch.no_grad()
def test_sd3_blocks_route_through_the_same_hooks(sd3):
    x = inputs()
    plain = sd3(**x, return_dict=False)[0]
    router = TokenRouter(sd3.transformer_blocks, FIRST, LAST)
    try:
        assert torch.equal(sd3(**x, return_dict=False)[0], plain)  # hooks inactive: exactly the plain forward
        ids = select_tokens(3, 16, 0.5, [torch.Generator().manual_seed(s) for s in range(3)], torch.device("cpu"))
        with router.routing(ids):
            routed = sd3(**x, return_dict=False)[0]
        torch.testing.assert_close(routed, routed_by_hand(sd3, ids, **x), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(routed, plain, atol=1e-3)
    finally:
        router.remove()
