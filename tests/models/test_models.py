"""The backbone: sparse forwards against the dense one, token bookkeeping, official layout, checkpoint loading."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.errors import HarnessError
from harness.models import ARCHS, ModelSpec, build_model, randomize_weights
from harness.models.checkpoint import load_checkpoint
from harness.models.dit import DiTConfig, SparseDiT, sincos_pos_embed_2d
from harness.models.tokens import select_tokens, unpatchify


def tiny(sparsity="routing", **kw) -> SparseDiT:
    cfg = dict(input_size=16, patch_size=2, in_channels=3, hidden_size=32, depth=4, num_heads=2, num_classes=5,
               learn_sigma=False, decoder_hidden_size=24, decoder_depth=2, decoder_num_heads=2)
    cfg.update(kw)
    route = (1, 2) if sparsity == "routing" else None
    net = SparseDiT(DiTConfig(**cfg, sparsity=sparsity, route=route)).eval()
    return randomize_weights(net, std=0.1)  # the zero-initialised adaLN would make every block the identity


def inputs(b=3, n_classes=5, side=16):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 3, side, side, generator=g)
    return x, torch.rand(b, generator=g), torch.randint(n_classes, (b,), generator=g)


def test_gamma_zero_routing_is_the_dense_forward():
    routed = tiny("routing")
    dense = SparseDiT(DiTConfig(**{**routed.config.__dict__, "sparsity": "none", "route": None})).eval()
    dense.load_state_dict(routed.state_dict())
    x, t, y = inputs()
    assert torch.equal(routed(x, t, y, 0.0), dense(x, t, y))
    assert not torch.allclose(routed(x, t, y, 0.5), dense(x, t, y))


def test_gamma_zero_masking_is_the_dense_encoder_decoder():
    net = tiny("masking")
    x, t, y = inputs()
    h = net.x_embedder(x) + net.pos_embed
    c = net.t_embedder(t) + net.y_embedder(y)
    for block in net.blocks:
        h = block(h, c)
    h = net.decoder_embed(h) + net.decoder_pos_embed
    for block in net.decoder_blocks:
        h = block(h, c)
    expected = unpatchify(net.final_layer(h, c), net.config.out_channels, net.config.patch_size)
    assert torch.allclose(net(x, t, y, 0.0), expected, atol=1e-6)


@pytest.mark.parametrize("gamma", [0.1, 0.5, 0.77, 0.9])
@pytest.mark.parametrize("sparsity", ["routing", "masking"])
def test_kept_token_count_is_n_minus_int_n_gamma(sparsity, gamma):
    net = tiny(sparsity)
    seen = []
    block = net.blocks[1]  # inside the route (routing) / in the encoder (masking)
    handle = block.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    x, t, y = inputs()
    net(x, t, y, gamma)
    handle.remove()
    n = net.config.num_tokens
    assert seen == [n - int(n * gamma)]


def test_masking_works_in_eval_mode_and_differs_from_dense():
    net = tiny("masking").eval()
    x, t, y = inputs()
    assert not net.training
    assert not torch.allclose(net(x, t, y, 0.5), net(x, t, y, 0.0))


def test_routed_tokens_reenter_unchanged():
    net = tiny("routing")
    first, last = net.config.route
    captured = {}
    h1 = net.blocks[first - 1].register_forward_hook(lambda m, a, out: captured.__setitem__("before", out))
    h2 = net.blocks[last + 1].register_forward_pre_hook(lambda m, a: captured.__setitem__("after", a[0]))
    x, t, y = inputs()
    n = net.config.num_tokens
    ids = select_tokens(3, n, 0.5, [torch.Generator().manual_seed(i) for i in range(3)], x.device)
    net(x, t, y, 0.5, ids=ids)
    h1.remove(), h2.remove()
    routed = torch.ones(3, n, dtype=torch.bool)
    routed[torch.arange(3)[:, None], ids] = False
    assert torch.equal(captured["after"][routed], captured["before"][routed])
    assert not torch.allclose(captured["after"][~routed], captured["before"][~routed])


def test_selections_are_per_image_and_batch_independent():
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]
    batch = select_tokens(4, 64, 0.5, gens([10, 11, 12, 13]), torch.device("cpu"))
    assert len({tuple(sorted(r.tolist())) for r in batch}) == 4  # different images, different selections
    alone = select_tokens(1, 64, 0.5, gens([12]), torch.device("cpu"))
    assert torch.equal(batch[2], alone[0])


def _batchings_agree(sparsity: str) -> None:
    """Image i's velocity is bit-identical whether it comes alone, first, last or in the middle of any batch."""
    spec = ModelSpec("Testbed-XS/4", sparsity=sparsity, route=(1, 2) if sparsity == "routing" else None)
    model = randomize_weights(build_model(spec), std=0.05)
    g = torch.Generator().manual_seed(0)
    x, t, y = torch.randn(20, 3, 32, 32, generator=g), torch.rand(20, generator=g), torch.randint(10, (20,))
    gens = lambda lo, hi: [torch.Generator().manual_seed(i) for i in range(lo, hi)]
    with torch.no_grad():
        for gamma in (0.0, 0.5):
            full = model.velocity(x, t, y, gamma, gens(0, 20))
            for lo, hi in ((0, 1), (0, 2), (0, 3), (3, 8), (5, 14), (7, 16), (11, 20), (19, 20), (1, 18)):
                part = model.velocity(x[lo:hi], t[lo:hi], y[lo:hi], gamma, gens(lo, hi))
                assert torch.equal(part, full[lo:hi]), (sparsity, gamma, lo, hi)


@pytest.mark.parametrize("sparsity,threads", [("routing", 1), ("routing", 2), ("masking", 2)])
def test_every_batch_size_gives_each_image_the_same_numbers(sparsity, threads):
    """Every network call sees FORWARD_ROWS images, so image i is bit-identical in any batch at any position."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _batchings_agree(sparsity)
    finally:
        torch.set_num_threads(saved)


# Kernel choices this machine can be pushed into: MKL's instruction-set cap and its conditional-numerical-
# reproducibility modes, torch's own vector width (ATEN_CPU_CAPABILITY), OpenMP thread counts. Each runs the check in a fresh process (MKL reads them at start).
KERNEL_ENVS = [
    {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "OMP_NUM_THREADS": "1"},
    {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "OMP_NUM_THREADS": "2"},
    {"MKL_CBWR": "AVX", "OMP_NUM_THREADS": "2"},
    {"MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1"},
    {"ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "2"},
    {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "OMP_NUM_THREADS": "1"},
]


@pytest.mark.parametrize("env", KERNEL_ENVS, ids=lambda e: "-".join(f"{k}={v}" for k, v in e.items()))
def test_batch_invariance_holds_under_other_blas_kernels(env):
    code = ("from tests.models.test_models import _batchings_agree; "
            "_batchings_agree('routing'); _batchings_agree('masking')")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                          cwd=Path(__file__).parents[2], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_gamma_on_a_dense_model_is_an_error():
    net = tiny("none")
    x, t, y = inputs()
    with pytest.raises(ValueError, match="gamma must be 0"):
        net(x, t, y, 0.5)


def test_pos_embed_matches_dit_construction():
    # DiT/MAE: meshgrid(w, h), the first half of the channels encodes grid[0], each half is [sin, cos].
    dim, size = 16, 4
    grid = np.stack(np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32)), 0)

    def one(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], 1)

    expected = np.concatenate([one(dim // 2, grid[0]), one(dim // 2, grid[1])], 1)
    assert np.allclose(sincos_pos_embed_2d(dim, size), expected)


# Written by hand from facebookresearch/DiT models.py and willisma/SiT models.py (DiT_XL_2 / SiT_XL_2, 256 px
# SD-VAE latents 32x32x4, learn_sigma=True, class_dropout_prob > 0 so the table has the null row).
OFFICIAL_XL2 = {
    "pos_embed": (1, 256, 1152),
    "x_embedder.proj.weight": (1152, 4, 2, 2), "x_embedder.proj.bias": (1152,),
    "t_embedder.mlp.0.weight": (1152, 256), "t_embedder.mlp.0.bias": (1152,),
    "t_embedder.mlp.2.weight": (1152, 1152), "t_embedder.mlp.2.bias": (1152,),
    "y_embedder.embedding_table.weight": (1001, 1152),
    "final_layer.linear.weight": (32, 1152), "final_layer.linear.bias": (32,),
    "final_layer.adaLN_modulation.1.weight": (2304, 1152), "final_layer.adaLN_modulation.1.bias": (2304,),
}
for _i in range(28):
    OFFICIAL_XL2.update({
        f"blocks.{_i}.attn.qkv.weight": (3456, 1152), f"blocks.{_i}.attn.qkv.bias": (3456,),
        f"blocks.{_i}.attn.proj.weight": (1152, 1152), f"blocks.{_i}.attn.proj.bias": (1152,),
        f"blocks.{_i}.mlp.fc1.weight": (4608, 1152), f"blocks.{_i}.mlp.fc1.bias": (4608,),
        f"blocks.{_i}.mlp.fc2.weight": (1152, 4608), f"blocks.{_i}.mlp.fc2.bias": (1152,),
        f"blocks.{_i}.adaLN_modulation.1.weight": (6912, 1152), f"blocks.{_i}.adaLN_modulation.1.bias": (6912,),
    })


@pytest.mark.parametrize("arch", ["SiT-XL/2", "DiT-XL/2"])
def test_state_dict_layout_matches_official_definition(arch):
    model = build_model(ModelSpec(arch, sparsity="routing", route=(2, 24)), meta=True)
    shapes = {k: tuple(v.shape) for k, v in model.net.state_dict().items()}
    assert shapes == OFFICIAL_XL2


def test_registry_has_every_official_size():
    for family in ("DiT", "SiT"):
        for size in ("S", "B", "L", "XL"):
            for patch in (2, 4, 8):
                assert f"{family}-{size}/{patch}" in ARCHS


def _save(state, path):
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)


@pytest.mark.parametrize("name,wrap", [("m.safetensors", None), ("m.pt", "ema"), ("m.pt", "model"), ("m.pt", None)])
def test_checkpoint_round_trip(tmp_path, name, wrap):
    spec = ModelSpec("Testbed-XS/4", sparsity="routing", route=(1, 2))
    source = randomize_weights(build_model(spec).net, std=1.0)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / name
    _save({wrap: state} if wrap else state, path)
    loaded = build_model(ModelSpec(spec.arch, str(path), "routing", (1, 2))).net
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_wrong_architecture_file_says_what_differs_and_what_matches(tmp_path):
    small = build_model(ModelSpec("Testbed-XS/4")).net.state_dict()
    path = tmp_path / "wrong.pt"
    torch.save(small, path)
    target = build_model(ModelSpec("Testbed-S/4")).net
    with pytest.raises(HarnessError) as info:
        load_checkpoint(target, path, arch="Testbed-S/4")
    msg = str(info.value)
    assert msg.startswith(f"{path}: does not fit Testbed-S/4: 4 blocks in the file, Testbed-S/4 has 6")
    assert msg.endswith("Testbed-XS/4 matches") and "missing keys" not in msg


def test_same_layout_with_stray_keys_lists_them(tmp_path):
    state = build_model(ModelSpec("Testbed-XS/4")).net.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["final_layer.linear.bias"]
    torch.save(state, tmp_path / "stray.pt")
    with pytest.raises(HarnessError) as info:
        load_checkpoint(build_model(ModelSpec("Testbed-XS/4")).net, tmp_path / "stray.pt")
    msg = str(info.value)
    assert "missing keys: final_layer.linear.bias" in msg and "unexpected keys: extra.weight" in msg


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "obj": ModelSpec("Testbed-XS/4")}, path)
    with pytest.raises(HarnessError, match=r"evil.pt: needs pickled code \(harness.models.ModelSpec\)"):
        load_checkpoint(build_model(ModelSpec("Testbed-XS/4")).net, path)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.safetensors"
    _save({k: v.contiguous() for k, v in build_model(ModelSpec("Testbed-XS/4")).net.state_dict().items()}, path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(HarnessError, match="cut.safetensors: is a truncated safetensors file"):
        load_checkpoint(build_model(ModelSpec("Testbed-XS/4")).net, path)


def test_meta_model_runs_a_forward_without_memory():
    model = build_model(ModelSpec("SiT-XL/2", sparsity="masking"), meta=True)
    with torch.device("meta"):
        v = model.velocity(torch.randn(2, 4, 32, 32), torch.rand(2), torch.tensor([1, 2]), 0.5)
    assert v.shape == (2, 4, 32, 32) and v.device.type == "meta"
