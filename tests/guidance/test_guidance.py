"""Guidance: each method reduces to the right thing; schedules and intervals behave."""

import math

import pytest
import torch

from harness.guidance import METHODS, GuidanceSpec, Schedule, combine
from harness.sampling import GuidedDenoiser, make_generators



def call(models, spec, t=0.5, progress=0.5, seeds=(0, 1, 2)):
    g = torch.Generator().manual_seed(99)
    x = torch.randn(len(seeds), 3, 32, 32, generator=g)
    cond = torch.tensor([1, 2, 3])[: len(seeds)]
    den = GuidedDenoiser(models, spec)
    return den(x, t, progress, cond, make_generators(seeds)), den, x, cond


def test_combine_is_the_lerp_and_omega_one_is_strong_exactly():
    s, w = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    assert torch.allclose(combine(s, w, 1.7), w + 1.7 * (s - w))
    assert combine(s, w, 1.0) is s
    assert combine(s, None, 3.0) is s


def test_cfg_channels_three_leaves_channel_three_unguided():
    s, w = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    out = combine(s, w, 2.0, cfg_channels=3)
    assert torch.equal(out[:, 3], s[:, 3])
    assert torch.allclose(out[:, :3], w[:, :3] + 2.0 * (s[:, :3] - w[:, :3]))


@pytest.mark.parametrize("method", list(METHODS))
def test_omega_one_returns_the_strong_branch_exactly(models, method):
    gw = Schedule.constant(0.75) if "sg" in method else None
    params = (("omega_pag", 1.0),) if "omega_pag" in METHODS[method].params else ()  # cfg+pag's second weight
    spec = GuidanceSpec(method, 1.0, Schedule.constant(0.25), gw, params=params)
    out, den, x, cond = call(models, spec)
    strong = models["main"].velocity(x, torch.full((3,), 0.5), cond, 0.25, make_generators([0, 1, 2]))
    assert torch.equal(out, strong)
    assert den.calls == [[("main", 0.25)]]  # the weak branch is not computed at all


def _branch(models, model, cond, gamma, x, seeds, skip_first=0):
    """One branch evaluated by hand, after burning the generator draws that come before it."""
    gens = make_generators(seeds)
    n = models["main"].config.num_tokens
    for _ in range(skip_first):
        for g in gens:
            torch.rand(n, generator=g)
    return models[model].velocity(x, torch.full((len(seeds),), 0.5), cond, gamma, gens)


@pytest.mark.parametrize(
    "method,weak_model,weak_cond",
    [("cfg", "main", "null"), ("ag", "weak", "c"), ("sg", "main", "c"), ("cfg+sg", "main", "null"),
     ("ag+sg", "weak", "c")],
)
def test_each_method_uses_its_branches(models, method, weak_model, weak_cond):
    sparse = "sg" in method
    gs, gw = (0.25, 0.75) if sparse else (0.0, 0.0)
    spec = GuidanceSpec(method, 1.5, Schedule.constant(gs), Schedule.constant(gw) if sparse else None)
    out, den, x, cond = call(models, spec)
    seeds = (0, 1, 2)
    strong = _branch(models, "main", cond, gs, x, seeds)
    wcond = cond if weak_cond == "c" else torch.full_like(cond, models["main"].num_classes)
    weak = _branch(models, weak_model, wcond, gw, x, seeds, skip_first=1 if gs > 0 else 0)
    assert torch.allclose(out, weak + 1.5 * (strong - weak), atol=1e-5)
    assert den.calls == [[("main", gs), (weak_model, gw)]]


def test_icg_condition_is_a_real_class_from_the_image_generator(models):
    spec = GuidanceSpec("icg", 2.0)
    out, den, x, cond = call(models, spec)
    gens = make_generators([0, 1, 2])
    random_cond = torch.cat([torch.randint(models["main"].num_classes, (1,), generator=g) for g in gens])
    assert (random_cond < models["main"].num_classes).all()
    strong = models["main"].velocity(x, torch.full((3,), 0.5), cond, 0.0, gens)
    weak = models["main"].velocity(x, torch.full((3,), 0.5), random_cond, 0.0, gens)
    assert torch.allclose(out, weak + 2.0 * (strong - weak), atol=1e-5)


def test_interval_skips_the_weak_forward_outside(models):
    spec = GuidanceSpec("cfg", 2.0, interval=(0.3, 0.7))
    out, den, x, cond = call(models, spec, t=0.9)
    strong = models["main"].velocity(x, torch.full((3,), 0.9), cond, 0.0, make_generators([0, 1, 2]))
    assert torch.equal(out, strong)
    assert den.calls == [[("main", 0.0)]]
    _, den, *_ = call(models, spec, t=0.5)
    assert len(den.calls[0]) == 2


def test_schedules():
    cos = Schedule("cosine", 0.0, 0.6)
    assert cos.at(0.0) == 0.0 and math.isclose(cos.at(1.0), 0.6) and math.isclose(cos.at(0.5), 0.3)
    assert cos.at(0.25) < 0.3  # a half-cosine starts slowly
    lin = Schedule("linear", 0.6, 0.0)
    assert math.isclose(lin.at(0.25), 0.45)
    assert Schedule.constant(0.4).at(0.9) == 0.4
    assert cos.label() == "cos(0->0.6)" and Schedule.constant(0.5).label() == "0.5"


def test_scheduled_gammas_reach_the_model(models):
    spec = GuidanceSpec("ag+sg", 1.5, Schedule("cosine", 0.0, 0.6), Schedule("cosine", 0.6, 0.0))
    _, den, *_ = call(models, spec, progress=0.0)
    assert den.calls == [[("main", 0.0), ("weak", 0.6)]]
    _, den, *_ = call(models, spec, progress=1.0)
    assert den.calls[0][0][1] == pytest.approx(0.6) and den.calls[0][1][1] == pytest.approx(0.0)


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="unknown method 'fdg'"):
        GuidanceSpec("fdg")
