"""Samplers: batch-size invariance for every method, time grids, SDE, and integration accuracy."""

import numpy as np
import pytest
import torch

from harness.guidance import GuidanceSpec, Schedule
from harness.models import ModelSpec, build_model, randomize_weights
from harness.sampling import SamplerSpec, generate, sample, to_uint8

RUNS = {
    "none": GuidanceSpec("none"),
    "cfg": GuidanceSpec("cfg", 2.0),
    "ag": GuidanceSpec("ag", 2.0),
    "icg": GuidanceSpec("icg", 2.0),
    "sg": GuidanceSpec("sg", 1.5, Schedule.constant(0.25), Schedule.constant(0.75)),
    "cfg+sg": GuidanceSpec("cfg+sg", 1.5, Schedule.constant(0.2), Schedule.constant(0.7)),
    "ag+sg": GuidanceSpec("ag+sg", 1.5, Schedule("cosine", 0.0, 0.6), Schedule("cosine", 0.6, 0.0)),
}



@pytest.mark.parametrize("kind", ["euler", "euler_maruyama"])
@pytest.mark.parametrize("method", list(RUNS))
def test_batch_size_does_not_change_images(models, method, kind):
    sampler = SamplerSpec(kind, steps=3)
    full, labels = generate(models, RUNS[method], sampler, list(range(9)))
    parts = [generate(models, RUNS[method], sampler, list(range(i, min(i + 4, 9)))) for i in range(0, 9, 4)]
    assert np.array_equal(full, np.concatenate([p[0] for p in parts]))
    assert np.array_equal(labels, np.concatenate([p[1] for p in parts]))
    assert len({im.tobytes() for im in full}) == 9  # every image differs


def test_heun_batch_invariance_and_masking(models):
    masked = randomize_weights(build_model(ModelSpec("Testbed-XS/4", sparsity="masking")))
    spec = GuidanceSpec("sg", 1.5, Schedule.constant(0.1), Schedule.constant(0.3))
    sampler = SamplerSpec("heun", steps=2)
    full, _ = generate({"main": masked}, spec, sampler, list(range(6)))
    a, _ = generate({"main": masked}, spec, sampler, [0, 1, 2])
    b, _ = generate({"main": masked}, spec, sampler, [3, 4, 5])
    assert np.array_equal(full, np.concatenate([a, b]))


def test_seed_changes_image_and_same_seed_repeats(models):
    a, _ = generate(models, RUNS["sg"], SamplerSpec(steps=2), [5, 6])
    b, _ = generate(models, RUNS["sg"], SamplerSpec(steps=2), [5, 7])
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[1], b[1])


def test_given_labels_are_used(models):
    _, labels = generate(models, RUNS["cfg"], SamplerSpec(steps=1), [0, 1, 2], labels=torch.tensor([4, 4, 4]))
    assert labels.tolist() == [4, 4, 4]


def test_time_grids_and_nfe():
    euler = SamplerSpec("euler", steps=40)
    grid = euler.time_grid()
    assert grid[0] == 0 and grid[-1] == 1 and len(grid) == 41 and torch.allclose(grid.diff(), grid.diff()[0])
    shifted = SamplerSpec("euler", steps=40, shift=3.0).time_grid()
    assert shifted[0] == 0 and shifted[-1] == 1 and shifted[20] < 0.5  # more steps spent near noise
    assert euler.nfe == 40 and SamplerSpec("heun", steps=40).nfe == 80
    sde = SamplerSpec("euler_maruyama", steps=250)
    assert sde.nfe == 250 and sde.time_grid()[-1] == pytest.approx(0.96)
    with pytest.raises(ValueError, match="unknown sampler"):
        SamplerSpec("dpm")


def _gaussian_velocity(mu, s):
    """Exact flow velocity for data ~ N(mu, s^2) under x_t = t x + (1 - t) z."""

    def denoise(x, t, progress, cond, gens):
        var = t * t * s * s + (1 - t) ** 2
        x1 = mu + t * s * s * (x - t * mu) / var  # E[x | x_t]
        z = (x - t * x1) / max(1 - t, 1e-12)
        return x1 - z

    return denoise


@pytest.mark.parametrize("kind,steps,tol", [("euler", 200, 0.05), ("heun", 50, 0.02)])
def test_ode_transports_noise_to_the_data_distribution(kind, steps, tol):
    gens = [torch.Generator().manual_seed(i) for i in range(4000)]
    noise = torch.randn(4000, 1, 1, 1, generator=torch.Generator().manual_seed(0)).double()
    out = sample(_gaussian_velocity(2.0, 0.5), noise, None, gens, SamplerSpec(kind, steps=steps))
    assert out.mean().item() == pytest.approx(2.0, abs=tol)
    assert out.std().item() == pytest.approx(0.5, abs=tol)


def test_sde_transports_noise_to_the_data_distribution():
    n = 3000
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    noise = torch.randn(n, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    out = sample(_gaussian_velocity(2.0, 0.5), noise, None, gens, SamplerSpec("euler_maruyama", steps=100))
    assert out.mean().item() == pytest.approx(2.0, abs=0.05)
    assert out.std().item() == pytest.approx(0.5, abs=0.06)


def test_to_uint8_matches_dit_conversion():
    x = torch.tensor([-1.0, -0.999, 0.0, 0.5, 1.0, 2.0]).view(1, 3, 1, 2)
    out = to_uint8(x)
    expected = torch.clamp(127.5 * x + 128.0, 0, 255).permute(0, 2, 3, 1).to(torch.uint8).numpy()
    assert out.dtype == np.uint8 and np.array_equal(out, expected) and out.shape == (1, 1, 2, 3)
