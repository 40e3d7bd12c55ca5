"""TextDiT: routing of image tokens at any gamma, text never routed, kept tokens as SparseDiT draws them."""

import torch

from harness.cost.flops import count_forward
from harness.models import FAMILIES, ModelSpec, randomize_weights
from harness.models.adapters import TextCondition
from harness.models.tokens import select_tokens
from harness.models.textdit import TextDiT, TextDiTConfig


def tiny(sparsity="routing") -> TextDiT:
    config, convention = ModelSpec("TextDiT-Tiny", sparsity=sparsity,
                                   route=(0, 1) if sparsity == "routing" else None).config()
    assert convention == "sit" and isinstance(config, TextDiTConfig)
    return randomize_weights(TextDiT(config).eval(), std=0.1)


def inputs(b=3, length=5):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 3, 16, 16, generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, 3:] = False
    return x, torch.rand(b, generator=g), TextCondition(torch.randn(b, length, 16, generator=g), mask)


def test_family_and_presets_are_registered():
    assert FAMILIES["textdit"].network is TextDiT
    assert ModelSpec("TextTestbed-S/4", sparsity="routing", route=(1, 4)).config()[0].num_tokens == 64


def test_gamma_zero_is_the_dense_forward_and_routing_changes_it():
    net = tiny()
    x, t, text = inputs()
    dense = TextDiT(TextDiTConfig(**{**net.config.__dict__, "sparsity": "none", "route": None})).eval()
    dense.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.allclose(net(x, t, text, 0.0), dense(x, t, text), atol=1e-6)
        assert not torch.allclose(net(x, t, text, 0.5), dense(x, t, text), atol=1e-3)


def test_explicit_ids_match_the_per_image_draw_and_are_batch_independent():
    net = tiny()
    x, t, text = inputs()
    gens = lambda: [torch.Generator().manual_seed(10 + i) for i in range(3)]  # noqa: E731
    ids = select_tokens(3, net.config.num_tokens, 0.5, gens(), x.device)
    with torch.no_grad():
        drawn = net(x, t, text, 0.5, gens())
        given = net(x, t, text, 0.5, ids=ids)
        alone = net(x[1:2], t[1:2], TextCondition(text.states[1:2], text.mask[1:2]), 0.5, gens()[1:2])
    assert torch.equal(drawn, given)
    assert torch.allclose(drawn[1:2], alone, atol=1e-5)


def test_text_and_its_mask_matter():
    net = tiny()
    x, t, text = inputs()
    with torch.no_grad():
        out = net(x, t, text)
        other = net(x, t, TextCondition(text.states.flip(0), text.mask.flip(0)))
        padded = text.states.clone()
        padded[0, 3:] += 5.0  # masked-out positions of caption 0 must not matter
        same = net(x, t, TextCondition(padded, text.mask))
        empty = net(x, t, TextCondition(text.states, torch.zeros_like(text.mask)))
    assert not torch.allclose(out, other, atol=1e-3)
    assert torch.allclose(out[0], same[0], atol=1e-5)
    assert torch.isfinite(empty).all()


def test_flops_drop_with_routing():
    config = ModelSpec("TextDiT-Tiny", sparsity="routing", route=(0, 1)).config()[0]
    dense, sparse = count_forward(config, 0.0)[1], count_forward(config, 0.5)[1]
    assert 0 < sparse < dense
