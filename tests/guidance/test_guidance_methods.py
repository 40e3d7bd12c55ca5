"""The 2024-25 guidance methods (APG, CFG-Zero*, PAG, SEG, SLG, PDG, cfg+pag, sg+apg) against diffusers 0.42.1's
guiders and the papers' formulas, their perturbed forwards against a direct computation, and their costs.

Conventions mapped (shared reference guidance-2025.md, sections 0 and 11): the harness's omega is diffusers'
`guidance_scale` (base `uncond`); APG runs on x0 = x_t + (1 - t) v, which diffusers gets as its input with
`use_original_formulation=True, guidance_scale=omega - 1`; diffusers' step i is the harness's 0-based step; a
perturbed branch's second scale is omega_2 - 1. All comparisons in float64.
"""

import math

import pytest
import torch
from diffusers.guiders import (AdaptiveProjectedGuidance, ClassifierFreeZeroStarGuidance,
                               PerturbedAttentionGuidance, SkipLayerGuidance, SmoothedEnergyGuidance)
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer
from diffusers.hooks.smoothed_energy_guidance_utils import _gaussian_blur_2d

from harness.cost.flops import count_forward, run_cost
from harness.guidance import METHODS, GuidanceSpec, Perturbation, Schedule
from harness.models import ModelSpec
from harness.models.dit import modulate
from harness.models.perturb import perturbed, seg_kernel_size
from harness.models.tokens import unpatchify
from harness.sampling import GuidedDenoiser, SamplerSpec, generate, make_generators
from tests.helpers import suite_text

SHAPE = (3, 4, 6, 6)


def _preds(step: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * seed + step)
    return {k: torch.randn(SHAPE, generator=g, dtype=torch.float64) for k in ("x", "cond", "uncond", "pert")}


def _state(guider, step: int, steps: int) -> None:
    guider.set_state(step=step, num_inference_steps=steps, timestep=torch.tensor(0))


#################################################################################
#                    Combination rules against diffusers' guiders               #
#################################################################################


@pytest.mark.parametrize("eta,threshold,momentum", [(0.0, 15.0, -0.5), (1.0, 2.0, None), (0.3, 0.0, 0.7)])
def test_apg_matches_diffusers_original_formulation_on_x0_over_steps(eta, threshold, momentum):
    omega, steps = 4.0, 6
    times = torch.linspace(0.05, 0.9, steps).tolist()
    spec = GuidanceSpec("apg", omega, params=(("eta", eta), ("norm_threshold", threshold),
                                              ("momentum", 0.0 if momentum is None else momentum)))
    guider = AdaptiveProjectedGuidance(guidance_scale=omega - 1, adaptive_projected_guidance_momentum=momentum,
                                       adaptive_projected_guidance_rescale=threshold, eta=eta,
                                       use_original_formulation=True)
    guider.momentum_buffer = None if momentum is None else MomentumBuffer(momentum)
    state: dict = {}
    worst, largest = 0.0, 0.0
    for i, t in enumerate(times):
        p = _preds(i)
        _state(guider, i, steps)
        ours = spec.combine({"cond": p["cond"], "uncond": p["uncond"]}, p["x"], t, state)
        d_cond, d_uncond = p["x"] + (1 - t) * p["cond"], p["x"] + (1 - t) * p["uncond"]
        theirs = (guider.forward(pred_cond=d_cond, pred_uncond=d_uncond).pred - p["x"]) / (1 - t)
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
        worst = max(worst, (ours - theirs).abs().max().item())
        largest = max(largest, (d_cond - d_uncond).flatten(1).norm(dim=1).min().item())
    if threshold == 2.0:  # the clip must have acted, or the test would not test it
        assert largest > threshold
    print(f"apg eta {eta} r {threshold} momentum {momentum}: max |diff| {worst:.2e}")


def test_apg_default_formulation_of_diffusers_is_not_the_papers():
    """diffusers' default (use_original_formulation=False) computes u + s(D_perp + eta D_par); the paper's
    Algorithm 1 is D_c + (w - 1)(D_perp + eta D_par): with eta = 0 they differ by -D_par (guidance-2025.md, 1)."""
    p = _preds(0)
    spec = GuidanceSpec("apg", 3.0, params=(("eta", 0.0), ("norm_threshold", 0.0), ("momentum", 0.0)))
    ours = spec.combine({"cond": p["cond"], "uncond": p["uncond"]}, p["x"], 0.0, {})  # t = 0: D = x + v
    guider = AdaptiveProjectedGuidance(guidance_scale=3.0, adaptive_projected_guidance_rescale=0.0, eta=0.0)
    _state(guider, 0, 1)
    d_cond, d_uncond = p["x"] + p["cond"], p["x"] + p["uncond"]
    theirs = guider.forward(pred_cond=d_cond, pred_uncond=d_uncond).pred - p["x"]
    diff = d_cond - d_uncond
    unit = d_cond / d_cond.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    parallel = (diff * unit).sum(dim=(1, 2, 3), keepdim=True) * unit
    paper = d_cond + 2.0 * (diff - parallel) - p["x"]
    torch.testing.assert_close(ours, paper)
    torch.testing.assert_close(theirs, paper - parallel)


@pytest.mark.parametrize("zero_steps", [0, 1, 2])
def test_cfg_zero_star_matches_diffusers_over_steps(zero_steps):
    """diffusers' zero_init_steps N is the harness's zero_init_steps (the official code's zero_steps = N - 1)."""
    omega, steps = 3.5, 5
    spec = GuidanceSpec("cfgzero", omega, params=(("zero_init_steps", zero_steps),))
    guider = ClassifierFreeZeroStarGuidance(guidance_scale=omega, zero_init_steps=zero_steps)
    zeroed = []
    for i in range(steps):
        p = _preds(i)
        _state(guider, i, steps)
        theirs = guider.forward(pred_cond=p["cond"], pred_uncond=p["uncond"]).pred
        if spec.zeroed(i):
            zeroed.append(i)
            ours = torch.zeros_like(p["cond"])
        else:
            ours = spec.combine({"cond": p["cond"], "uncond": p["uncond"]}, p["x"], 0.5, {})
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)  # diffusers takes s* in float32
    assert zeroed == list(range(zero_steps))


def test_cfg_plus_pag_matches_diffusers_three_branch_sum_after_step_zero():
    """diffusers' perturbed window int(start N) < i < int(stop N) never perturbs step 0; with start 0, stop 1 every
    later step is the harness's c + (omega - 1)(c - u) + (omega_pag - 1)(c - p)."""
    omega, omega_pag, steps = 2.5, 4.0, 6
    spec = GuidanceSpec("cfg+pag", omega, params=(("omega_pag", omega_pag), ("layers", (1,))))
    guider = PerturbedAttentionGuidance(guidance_scale=omega, perturbed_guidance_scale=omega_pag - 1,
                                        perturbed_guidance_start=0.0, perturbed_guidance_stop=1.0,
                                        perturbed_guidance_layers=[1])
    for i in range(steps):
        p = _preds(i)
        _state(guider, i, steps)
        theirs = guider.forward(pred_cond=p["cond"], pred_uncond=p["uncond"], pred_cond_skip=p["pert"]).pred
        preds = {"cond": p["cond"], "uncond": p["uncond"], **({"pag": p["pert"]} if i > 0 else {})}
        torch.testing.assert_close(spec.combine(preds, p["x"], 0.5, {}), theirs)


@pytest.mark.parametrize("method,guider_cls,scale_name", [
    ("pag", PerturbedAttentionGuidance, "perturbed_guidance_scale"),
    ("seg", SmoothedEnergyGuidance, "seg_guidance_scale"),
])
def test_perturbed_alone_is_the_lerp_with_omega_one_plus_the_papers_scale(method, guider_cls, scale_name):
    """The papers: c + s (c - p), i.e. omega = 1 + s. diffusers with CFG off (guidance_scale 1) computes
    p + s2 (c - p): omega = s2, one less than the paper's at the same s (guidance-2025.md, 7)."""
    s, p = 2.0, _preds(3)
    spec = GuidanceSpec(method, 1 + s, params=(("layers", (1,)),))
    ours = spec.combine({"cond": p["cond"], method: p["pert"]}, p["x"], 0.5, {})
    torch.testing.assert_close(ours, p["cond"] + s * (p["cond"] - p["pert"]))  # the paper's formula
    layers = {"pag": "perturbed_guidance_layers", "seg": "seg_guidance_layers"}[method]
    window = {"pag": {"perturbed_guidance_start": 0.0, "perturbed_guidance_stop": 1.0}, "seg": {}}[method]
    guider = guider_cls(guidance_scale=1.0, **{scale_name: 1 + s, layers: [1]}, **window)
    _state(guider, 2, 4)
    branch = {"pag": "pred_cond_skip", "seg": "pred_cond_seg"}[method]
    theirs = guider.forward(pred_cond=p["cond"], **{branch: p["pert"]}).pred
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("steps,active", [(50, list(range(1, 10))), (28, [1, 2, 3, 4, 5])])
def test_slg_window_and_rule(steps, active):
    """SD3.5's window start N < i < stop N (floats): at 50 steps diffusers' int() window agrees (steps 1-9); at 28
    SD3.5 also guides step 5, which diffusers' int(0.2 * 28) = 5 leaves out."""
    omega = 3.5
    spec = GuidanceSpec("slg", omega, params=(("layers", (1,)),))
    guider = SkipLayerGuidance(guidance_scale=1.0, skip_layer_guidance_scale=omega, skip_layer_guidance_layers=[1])
    ours_active = [i for i in range(steps) if spec.guides_at(0.5, i, steps)]
    assert ours_active == active
    for i in range(steps):
        p = _preds(i)
        _state(guider, i, steps)
        theirs = guider.forward(pred_cond=p["cond"], pred_cond_skip=p["pert"]).pred
        preds = {"cond": p["cond"], **({"slg": p["pert"]} if i in active else {})}
        ours = spec.combine(preds, p["x"], 0.5, {})
        if steps == 50 or i != 5:
            torch.testing.assert_close(ours, theirs)
        else:
            assert not torch.allclose(ours, theirs)


#################################################################################
#                Perturbed forwards against a direct computation               #
#################################################################################


def _direct(net, x, t, y, attention=None, skip=()):
    """SparseDiT's dense forward written out: block i's attention is attention(i, q_flat, k, v) when given (q_flat
    (B, N, C) before the head split), explicit softmax(QK^T / sqrt(d)) V otherwise; blocks in `skip` are left out."""
    h = net.x_embedder(x) + net.pos_embed
    y_emb = net.y_embedder(y)
    c = net.t_embedder(t) + y_emb
    h = h + y_emb.unsqueeze(1) if net.config.class_in_tokens else h
    heads = net.config.num_heads
    for i, blk in enumerate(net.blocks):
        if i in skip:
            continue
        sh, sc, gate, sh2, sc2, gate2 = blk.adaLN_modulation(c).chunk(6, dim=1)
        a = modulate(blk.norm1(h), sh, sc)
        B, N, C = a.shape
        q, k, v = blk.attn.qkv(a).reshape(B, N, 3, C).unbind(2)
        split = lambda z: z.reshape(B, N, heads, C // heads).transpose(1, 2)  # noqa: E731
        if attention is not None and attention(i, q, k, v) is not None:
            out = attention(i, q, k, v)
        else:
            out = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(C // heads), -1) @ split(v)
        h = h + gate.unsqueeze(1) * blk.attn.proj(out.transpose(1, 2).reshape(B, N, C))
        h = h + gate2.unsqueeze(1) * blk.mlp(modulate(blk.norm2(h), sh2, sc2))
    return unpatchify(net.final_layer(h, c), net.config.out_channels, net.config.patch_size)


def _inputs(net):
    g = torch.Generator().manual_seed(5)
    cfg = net.config
    return (torch.randn(2, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g), torch.tensor([0.3, 0.7]),
            torch.tensor([1, 4]))


def _attention_with(q_fn, layers, heads):
    def attention(i, q, k, v):
        if i not in layers:
            return None
        B, N, C = q.shape
        split = lambda z: z.reshape(B, N, heads, C // heads).transpose(1, 2)  # noqa: E731
        q = q_fn(q)
        if q is None:  # identity attention
            return split(v)
        return torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(C // heads), -1) @ split(v)
    return attention


def test_direct_forward_is_the_networks(models):
    net = models["main"].net
    x, t, y = _inputs(net)
    with torch.no_grad():
        torch.testing.assert_close(net(x, t, y), _direct(net, x, t, y), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layers", [(1,), (0, 3)])
def test_pag_identity_attention_returns_the_values(models, layers):
    net = models["main"].net
    x, t, y = _inputs(net)
    with torch.no_grad(), perturbed(net, Perturbation("identity_attention", layers)):
        ours = net(x, t, y)
    direct = _direct(net, x, t, y, _attention_with(lambda q: None, layers, net.config.num_heads))
    torch.testing.assert_close(ours, direct, rtol=1e-5, atol=1e-5)
    assert (ours - net(x, t, y)).abs().max() > 1e-3  # the perturbation changes the output


@pytest.mark.parametrize("sigma", [1.0, 3.0, math.inf])
def test_seg_blurred_queries_match_diffusers_blur(models, sigma):
    """Queries blurred per channel on the 8 x 8 token grid by diffusers' _gaussian_blur_2d (its branches are
    inverted: a threshold below sigma takes its Gaussian code, above it its mean code; guidance-2025.md, 5)."""
    net = models["main"].net
    x, t, y = _inputs(net)
    layers = (2,)
    size = seg_kernel_size(min(sigma, 1e7))
    threshold = math.inf if math.isinf(sigma) else -math.inf

    def blur(q):
        return _gaussian_blur_2d(q.clone(), size, min(sigma, 1e7), threshold)

    with torch.no_grad(), perturbed(net, Perturbation("blur_queries", layers, sigma)):
        ours = net(x, t, y)
    direct = _direct(net, x, t, y, _attention_with(blur, layers, net.config.num_heads))
    torch.testing.assert_close(ours, direct, rtol=1e-5, atol=1e-5)
    assert (ours - net(x, t, y)).abs().max() > 1e-4


def test_slg_and_pdg_skip_blocks(models):
    net = models["main"].net  # routing, route [1, 2] of 4 blocks
    x, t, y = _inputs(net)
    with torch.no_grad():
        with perturbed(net, Perturbation("skip_blocks", (0, 3))):
            slg = net(x, t, y, 0.5, make_generators([0, 1]))  # outside the route: routing still applies inside
        with perturbed(net, Perturbation("drop_route")):
            pdg = net(x, t, y, 0.5, make_generators([0, 1]))  # the route dropped: gamma has nothing left to route
        routed = net(x, t, y, 0.5, make_generators([0, 1]))
    torch.testing.assert_close(pdg, _direct(net, x, t, y, skip=(1, 2)), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(slg, routed)
    with torch.no_grad(), perturbed(net, Perturbation("skip_blocks", (0, 3))):
        dense_slg = net(x, t, y)
    torch.testing.assert_close(dense_slg, _direct(net, x, t, y, skip=(0, 3)), rtol=1e-5, atol=1e-5)


def test_pdg_on_a_masking_model_decodes_mask_tokens_only():
    from harness.models import build_model, randomize_weights

    flow = randomize_weights(build_model(ModelSpec("Testbed-XS/4", sparsity="masking")), seed=3)
    net = flow.net
    x, t, y = _inputs(net)
    with torch.no_grad(), perturbed(net, Perturbation("drop_route")):
        out = net(x, t, y)
        other = net(torch.randn_like(x), t, y)  # the input reaches nothing but the conditioning
    torch.testing.assert_close(out, other)


def test_unsupported_perturbation_is_refused():
    from harness.models import build_model

    flow = build_model(ModelSpec("MaskDiT-S/2"))
    with pytest.raises(ValueError, match="does not implement the 'identity_attention'"):
        with perturbed(flow.net, Perturbation("identity_attention", (1,))):
            pass


#################################################################################
#                        Denoiser, state and costs                              #
#################################################################################


def test_cfg_plus_pag_evaluates_three_branches(models):
    spec = GuidanceSpec("cfg+pag", 2.0, params=(("omega_pag", 3.0),))  # default layers: the middle block, 2 of 4
    g = torch.Generator().manual_seed(2)
    x, cond = torch.randn(3, 3, 32, 32, generator=g), torch.tensor([1, 2, 3])
    den = GuidedDenoiser(models, spec, steps=4)
    out = den(x, 0.4, 0.0, cond, make_generators([0, 1, 2]))
    main, tt = models["main"], torch.full((3,), 0.4)
    c = main.velocity(x, tt, cond)
    u = main.velocity(x, tt, main.null_condition(cond))
    with perturbed(main.net, Perturbation("identity_attention", (2,))):
        p = main.velocity(x, tt, cond)
    torch.testing.assert_close(out, c + (c - u) + 2.0 * (c - p), rtol=1e-5, atol=1e-5)
    assert den.calls == [[("main", 0.0)] * 3]


def test_cfg_zero_star_first_step_is_zero_without_forwards(models):
    den = GuidedDenoiser(models, GuidanceSpec("cfgzero", 3.0), steps=4)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(den(x, 0.0, 0.0, torch.tensor([1, 2]), make_generators([0, 1])), torch.zeros_like(x))
    den(x, 0.3, 1 / 3, torch.tensor([1, 2]), make_generators([0, 1]))
    assert den.calls == [[], [("main", 0.0), ("main", 0.0)]]


@pytest.mark.parametrize("method", ["apg", "sg+apg"])
def test_apg_state_is_per_image(models, method):
    """APG's momentum buffer is per image: image 1 alone equals image 1 in a batch of three (Heun, so the last
    evaluation at t = 1 is covered too)."""
    gw = Schedule.constant(0.75) if method == "sg+apg" else None
    spec = GuidanceSpec(method, 3.0, Schedule.constant(0.25) if gw else Schedule(), gw)
    sampler = SamplerSpec("heun", steps=3)
    batch, _ = generate(models, spec, sampler, [0, 1, 2])
    alone, _ = generate(models, spec, sampler, [1])
    assert (batch[1].astype(int) - alone[0].astype(int)).__abs__().max() <= 1
    unguided, _ = generate(models, GuidanceSpec(method, 1.0, spec.gamma_strong, gw), sampler, [1])
    assert (alone.astype(int) - unguided.astype(int)).__abs__().max() > 0


def test_costs_per_branch():
    spec = ModelSpec("Testbed-XS/4", sparsity="routing", route=(1, 2))
    config = spec.config()[0]
    dense, dense_full = count_forward(config, 0.0)
    pag, pag_full = count_forward(config, 0.0, Perturbation("identity_attention", (2,)))
    assert pag == dense and pag_full == pytest.approx(dense_full - (dense_full - dense) / config.depth)
    one = dense - count_forward(config, 0.0, Perturbation("skip_blocks", (0,)))[0]
    assert count_forward(config, 0.0, Perturbation("drop_route"))[0] == pytest.approx(dense - 2 * one)
    sampler = SamplerSpec("euler", steps=10)
    models = {"main": spec}
    three = run_cost(models, GuidanceSpec("cfg+pag", 2.0), sampler)
    assert three["forwards"] == 3 and set(three["gflops_branches"]) == {"cond", "uncond", "pag"}
    assert three["gflops"] == pytest.approx(sum(three["gflops_branches"].values()))
    slg = run_cost(models, GuidanceSpec("slg", 2.0), sampler)  # window 0.01..0.2 of 10 steps: step 1 only
    assert slg["forwards"] == pytest.approx(1.1)
    zero = run_cost(models, GuidanceSpec("cfgzero", 2.0, params=(("zero_init_steps", 2),)), sampler)
    assert zero["nfe"] == 16
    pdg = run_cost(models, GuidanceSpec("pdg", 2.0), sampler)
    assert pdg["gflops_branches"]["pdg"] == pytest.approx(dense - 2 * one)


def test_every_method_has_sourced_checked_defaults():
    for name, entry in METHODS.items():
        assert entry.source, name
        resolved = entry.resolve({}, depth=28)
        for param, value in resolved.items():
            assert entry.params[param].check(list(value) if isinstance(value, tuple) else value) == value
    assert METHODS["slg"].resolve({}, 28)["layers"] == (8, 9, 10)
    assert METHODS["pag"].resolve({}, 28)["layers"] == (14,)
    with pytest.raises(ValueError, match="eta"):
        METHODS["apg"].resolve({"eta": "high"})


#################################################################################
#                       Suite fields of the method parameters                   #
#################################################################################

# The runs are TOML text appended to SUITE: the cases below write bad parameter values as they would appear in a file.
SUITE = suite_text(
    suite={"name": "m", "samples": 4, "batch_size": 4, "seed": None, "metrics": None}, sampler={"steps": 4},
    models={"main": {"arch": "Testbed-XS/4", "sparsity": "routing", "route": [1, 2]},
            "dense": {"arch": "Testbed-XS/4"}, "maskdit": {"arch": "MaskDiT-S/2"}}, runs=[])


def _load(tmp_path, run: str):
    from harness.suite import load_suite

    path = tmp_path / "m.toml"
    path.write_text(SUITE + "[[runs]]\n" + run)
    return load_suite(path, root=tmp_path)


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("none", "ag", "ag+sg")])
def test_method_and_omega_alone_make_a_valid_run(tmp_path, method):
    sparse = "gamma_weak = 0.5\n" if METHODS[method].sparse else ""
    (run,) = _load(tmp_path, f'name = "r"\nmethod = "{method}"\nomega = 2.0\n{sparse}').runs
    params = run.config["run"].get("params", {})
    assert params.keys() == METHODS[method].params.keys()
    if "layers" in params:
        assert params["layers"] == list(run.guidance.param("layers")) and max(params["layers"]) < 4


def test_parameters_change_the_config_hash_and_old_methods_keep_theirs(tmp_path):
    base = _load(tmp_path, 'name = "r"\nmethod = "apg"\nomega = 2.0\n').runs[0]
    other = _load(tmp_path, 'name = "r"\nmethod = "apg"\nomega = 2.0\nparams = {eta = 1.0}\n').runs[0]
    assert base.config_hash != other.config_hash and other.guidance.param("eta") == 1.0
    assert "params" not in _load(tmp_path, 'name = "r"\nmethod = "cfg"\nomega = 2.0\n').runs[0].config["run"]


@pytest.mark.parametrize("run,match", [
    ('method = "apg"\nomega = 2.0\nparams = {eta = "high"}', r"field 'params.eta': must be a number"),
    ('method = "apg"\nomega = 2.0\nparams = {beta = 0.5}', r"field 'params': 'beta' is not a parameter"),
    ('method = "cfg"\nomega = 2.0\nparams = {eta = 0.5}', r"field 'params': method 'cfg' has no parameters"),
    ('method = "pag"\nomega = 2.0\nparams = {layers = [7]}', r"field 'params.layers': block 7 lies outside"),
    ('method = "pag"\nomega = 2.0\nparams = {layers = []}', r"field 'params.layers': must be a non-empty list"),
    ('method = "seg"\nomega = 2.0\nparams = {blur_sigma = -1.0}', r"field 'params.blur_sigma': must be > 0"),
    ('method = "seg"\nomega = 2.0\ngamma_weak = 0.5\nparams = {layers = [1]}', r"'params.layers': SEG blurs"),
    ('method = "slg"\nomega = 2.0\nparams = {skip_start = 0.5, skip_stop = 0.2}', r"'params.skip_start': must be <"),
    ('method = "cfgzero"\nomega = 2.0\nparams = {zero_init_steps = 1.5}', r"must be an integer"),
    ('method = "pdg"\nomega = 2.0\nmodel = "dense"', r"field 'method': method 'pdg' drops the route"),
    ('method = "pdg"\nomega = 2.0\ngamma_weak = 0.5', r"field 'gamma_weak': the guidance branch of method 'pdg' drops"),
    ('method = "pag"\nomega = 2.0\nmodel = "maskdit"', r"field 'method': .*'identity_attention'.* families that do: dit"),
])
def test_bad_method_fields_name_file_and_field(tmp_path, run, match):
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match=r"m\.toml: run 'r'.*" + match):
        _load(tmp_path, 'name = "r"\n' + run + "\n")


def test_dry_run_moves_perturbed_blocks_to_the_smaller_architecture(tmp_path):
    from harness.dryrun import DryRun, load_dry_suite

    path = tmp_path / "s.toml"
    path.write_text(SUITE.replace("Testbed-XS/4", "Testbed-S/4").replace("route = [1, 2]", "route = [1, 4]")
                    + '[[runs]]\nname = "r"\nmethod = "slg"\nomega = 2.0\nparams = {layers = [4, 5]}\n')
    dry = load_dry_suite(path, tmp_path, tmp_path / "runs", DryRun(arch="small"))
    assert dry.suite.runs[0].guidance.param("layers") == (3,)  # 4 and 5 of 6 blocks -> 3 of 4


def test_intervals_and_schedules_reach_every_new_method():
    for method in ("apg", "cfgzero", "pag", "seg", "pdg", "cfg+pag", "sg+apg"):
        gw = Schedule("linear", 0.6, 0.9) if METHODS[method].sparse else None
        spec = GuidanceSpec(method, 2.0, Schedule.constant(0.1) if gw else Schedule(), gw, interval=(0.3, 0.7))
        assert [b.label for b, _ in spec.branches_at(0.2, 0.5, 5, 11, depth=4)] == ["cond"], method
        inside = spec.branches_at(0.5, 0.5, 5, 11, depth=4)
        assert len(inside) == 1 + len(METHODS[method].branches), method
        if gw:
            assert inside[1][1] == pytest.approx(0.75)


def test_infinite_blur_is_strict_json_in_the_config(tmp_path):
    import json

    (run,) = _load(tmp_path, 'name = "r"\nmethod = "seg"\nomega = 2.0\nparams = {blur_sigma = inf}\n').runs
    assert run.guidance.param("blur_sigma") == math.inf and run.config["run"]["params"]["blur_sigma"] == "inf"
    json.dumps(run.config, allow_nan=False)
