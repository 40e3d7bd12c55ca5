"""The dropped-position option of masking models (GuidedDenoiser) and the EDM Heun sampler's accounting."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from harness.errors import HarnessError
from harness.guidance import GuidanceSpec, Schedule, combine
from harness.models import ModelSpec, build_model, randomize_weights
from harness.models.tokens import dropped_pixels, select_tokens
from harness.sampling import GuidedDenoiser, SamplerSpec, generate, make_generators
from harness.suite import load_suite


def _masked(dropped: str):
    return randomize_weights(build_model(ModelSpec("Testbed-XS/4", sparsity="masking", dropped=dropped)))


def _inputs(batch: int = 3):
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    return x, torch.tensor([1, 4, 7][:batch])


@pytest.mark.parametrize("guidance", [
    GuidanceSpec("sg", 2.0, Schedule.constant(0.1), Schedule.constant(0.5)),   # two forwards
    GuidanceSpec("cfg", 2.0, Schedule.constant(0.25)),                         # one batched forward
])
def test_strong_takes_the_strong_prediction_where_the_weak_branch_dropped_tokens(guidance):
    x, labels = _inputs()
    t = 0.4
    decoder, strong = _masked("decoder"), _masked("strong")
    strong.load_state_dict(decoder.state_dict())
    out_dec = GuidedDenoiser({"main": decoder}, guidance)(x, t, 0.0, labels, make_generators([0, 1, 2]))
    out_str = GuidedDenoiser({"main": strong}, guidance)(x, t, 0.0, labels, make_generators([0, 1, 2]))
    # the weak branch's tokens, drawn as the network draws them: the strong selection first, then the weak one
    gens = make_generators([0, 1, 2])
    g_s, g_w = guidance.gamma_strong.start, guidance.weak.gamma.start
    n = decoder.config.num_tokens
    tt = torch.full((3,), t)
    weak_cond = decoder.null_condition(labels) if guidance.method == "cfg" else labels
    ids_s = select_tokens(3, n, g_s, gens, "cpu")
    ids_w = select_tokens(3, n, g_w, gens, "cpu")
    v_strong = decoder.velocity(x, tt, labels, g_s, ids=ids_s)
    v_weak = decoder.velocity(x, tt, weak_cond, g_w, ids=ids_w)
    dropped = dropped_pixels(ids_w, n, decoder.config.patch_size)
    assert 0 < dropped.float().mean() < 1
    torch.testing.assert_close(out_dec, combine(v_strong, v_weak, guidance.omega), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_str, combine(v_strong, torch.where(dropped, v_strong, v_weak), guidance.omega),
                               rtol=1e-5, atol=1e-5)
    expand = dropped.expand_as(out_str)
    torch.testing.assert_close(out_str[expand], v_strong[expand], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out_str[~expand], v_strong[~expand])  # guidance still acts on kept tokens
    assert not torch.allclose(out_dec[expand], out_str[expand])


def test_strong_option_keeps_batch_invariance_and_differs_from_decoder():
    spec = GuidanceSpec("cfg+sg", 2.0, Schedule.constant(0.1), Schedule.constant(0.4))
    sampler = SamplerSpec("euler", steps=2)
    model = _masked("strong")
    full, _ = generate({"main": model}, spec, sampler, list(range(5)))
    parts = [generate({"main": model}, spec, sampler, s)[0] for s in ([0, 1], [2, 3, 4])]
    assert np.array_equal(full, np.concatenate(parts))
    model.dropped = "decoder"
    assert not np.array_equal(full, generate({"main": model}, spec, sampler, list(range(5)))[0])


def test_dropped_is_a_masking_model_option_recorded_with_the_run(write_suite):
    def suite(**main):
        return write_suite("base.toml", suite={"name": "d", "samples": 4}, main={"sparsity": "masking", "route": None,
                                                                                  **main})

    hashes = {}
    for dropped in (None, "decoder", "strong"):
        run = load_suite(suite(dropped=dropped)).runs[0]
        hashes[dropped] = run.config_hash
        assert run.config["models"]["main"]["dropped"] == run.models["main"].dropped
    assert hashes[None] == hashes["decoder"] != hashes["strong"]  # the default is "decoder"
    with pytest.raises(HarnessError, match="dropped"):
        load_suite(suite(dropped="zeros"))
    with pytest.raises(HarnessError, match="only a masking model drops tokens"):
        load_suite(suite(dropped="strong", sparsity="routing", route=[1, 2]))


def test_edm_heun_schedule_and_cost_accounting():
    sampler = SamplerSpec("edm_heun", steps=40)
    sigmas = sampler.sigmas()
    assert sigmas[0] == 80.0 and abs(sigmas[-2] - 0.002) < 1e-12 and sigmas[-1] == 0.0
    assert torch.all(sigmas[1:] < sigmas[:-1])
    assert sampler.nfe == 79  # Heun on 39 steps, plain Euler on the last (to sigma = 0)
    times = [t for t, _ in sampler.evaluations()]
    assert times[0] == pytest.approx(1 / 81) and times[-1] == pytest.approx(1 / 1.002)
    assert SamplerSpec("edm_heun", steps=1).nfe == 1
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        SamplerSpec("edm_heun", sigma_min=1.0, sigma_max=0.5)
    # a denoiser that knows the data exactly (a single point) is reached from any noise
    target = torch.full((2, 3, 4, 4), 0.3)

    def denoise(x, t, progress, cond, generators):  # velocity whose D is `target`: v = (D - x_t) / (1 - t)
        return (target - x) / (1 - t)

    from harness.sampling import sample

    out = sample(denoise, torch.randn(2, 3, 4, 4), torch.zeros(2), make_generators([0, 1]),
                 dataclasses.replace(sampler, steps=5))
    torch.testing.assert_close(out, target)


def test_suite_overrides_take_maskdit_constructor_names(write_suite):
    def write(sampler=None, **main):
        return write_suite("m.toml", suite={"name": "m", "samples": 4}, sampler={"kind": "edm_heun", "steps": 3,
                                                                                 **(sampler or {})},
                           models={"main": {"arch": "MaskDiT-S/2", **main}}, runs=[{"name": "u", "method": "none"}])

    path = write(use_decoder=False, mae_loss_coef=0.0, sigma_data=1.0, depth=2)
    suite = load_suite(path)
    config, convention = suite.models["main"].config()
    assert (config.use_decoder, config.mae_loss_coef, config.sigma_data, config.depth) == (False, 0.0, 1.0, 2)
    assert suite.runs[0].sampler.nfe == 5 and convention == "edm"
    with pytest.raises(HarnessError, match=r"\[models.main\].*class_in_tokens"):
        load_suite(write(class_in_tokens=True))
    with pytest.raises(HarnessError, match=r"\[sampler\].*sigma_min < sigma_max"):
        load_suite(write(sampler={"sigma_min": 90.0}))
