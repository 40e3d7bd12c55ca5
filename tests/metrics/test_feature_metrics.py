"""fd_dinov2, kid and cmmd; features extracted once per run; the torch Frechet path; bootstrap interval sizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from harness import preflight
from harness.assets import raise_missing
from harness.errors import HarnessError
from harness.metrics import FEATURE_EXTRACTORS, METRICS, FeatureExtractor, register_feature_extractor
from harness.metrics import scores
from harness.metrics.cmmd import SCALE, SIGMA, _cmmd_resampled, cmmd, weighted_kernel_sums
from harness.metrics.dinov2 import IMAGENET_MEAN, IMAGENET_STD, TINY, Dinov2Extractor, build_dinov2
from harness.metrics.evaluate import Evaluator, compute_metrics
from harness.metrics.features import random_smooth_images
from harness.metrics.frechet import (
    GaussianStats,
    bootstrap_fd,
    frechet_distance,
    gaussian_stats,
    psd_sqrt,
    trace_sqrt_product_torch,
)
from harness.suite import load_suite

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- fd_dinov2: EDM2's preprocessing


def test_dinov2_features_follow_edm2_preprocessing() -> None:
    """EDM2 calculate_metrics.py DINOv2Detector (resize_mode='torch'), written out here on the same random net."""
    extractor = Dinov2Extractor(random_weights=True)
    images = random_smooth_images(3, 40, np.random.default_rng(0))
    ours = extractor.extract([images], batch_size=2, progress=False)["pool"]
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    x = torch.nn.functional.interpolate(x.to(torch.float32), size=(224, 224), mode="bicubic", antialias=True)
    x = x.to(torch.float32) / 255
    x = (x - torch.tensor(IMAGENET_MEAN).reshape(1, -1, 1, 1)) / torch.tensor(IMAGENET_STD).reshape(1, -1, 1, 1)
    with torch.no_grad():
        theirs = extractor.net(pixel_values=x).pooler_output.numpy()
    assert ours.shape == (3, TINY["hidden_size"]) and ours.std() > 0.1
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_dinov2_position_embeddings_are_resized_as_the_dinov2_repository_does() -> None:
    """facebookresearch/dinov2 interpolate_pos_encoding: bicubic, scale factor (16 + 0.1) / 37, no antialias."""
    torch.manual_seed(0)
    net = build_dinov2(TINY, None)
    pos = net.embeddings.position_embeddings.detach()
    got = net.embeddings.interpolate_pos_encoding(torch.zeros(1, 257, TINY["hidden_size"]), 224, 224)
    patch = torch.nn.functional.interpolate(pos[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2), mode="bicubic",
                                            antialias=False, scale_factor=(16.1 / 37, 16.1 / 37))
    want = torch.cat((pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, 256, -1)), dim=1)
    assert torch.equal(got.detach(), want)
    size_based = torch.nn.functional.interpolate(pos[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2),
                                                 size=(16, 16), mode="bicubic")
    assert not torch.allclose(patch, size_based, atol=1e-4)  # transformers' own resize would differ


# ---------------------------------------------------------------- cmmd: google-research/cmmd distance.py


def reference_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """cmmd/distance.py's mmd, in numpy float64."""
    x_sq, y_sq = np.diag(x @ x.T), np.diag(y @ y.T)
    gamma = 1 / (2 * 10**2)
    k_xx = np.mean(np.exp(-gamma * (-2 * x @ x.T + x_sq[:, None] + x_sq[None, :])))
    k_xy = np.mean(np.exp(-gamma * (-2 * x @ y.T + x_sq[:, None] + y_sq[None, :])))
    k_yy = np.mean(np.exp(-gamma * (-2 * y @ y.T + y_sq[:, None] + y_sq[None, :])))
    return 1000 * (k_xx + k_yy - 2 * k_xy)


def unit_rows(n: int, d: int, shift: float, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)) + shift
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_cmmd_is_the_reference_formula_and_resamples_are_exact() -> None:
    x, y = unit_rows(30, 8, 0.0, 1), unit_rows(25, 8, 0.7, 2)
    assert SIGMA == 10 and SCALE == 1000
    value = cmmd(x, y)
    assert value > 1.0 and value == pytest.approx(reference_mmd(x, y), rel=1e-12)
    counts = np.bincount(np.random.default_rng(3).integers(0, 30, size=30), minlength=30)
    resampled = _cmmd_resampled(x, y, counts[None], "cpu")[0]
    assert resampled == pytest.approx(reference_mmd(np.repeat(x, counts, axis=0), y), rel=1e-12)
    a, b = torch.as_tensor(x), torch.as_tensor(y)
    w = torch.as_tensor(np.stack([np.ones(30), counts]), dtype=torch.float64)
    blocked = weighted_kernel_sums(a, b, w, torch.ones(2, 25, dtype=torch.float64), block=7)
    np.testing.assert_allclose(blocked, weighted_kernel_sums(a, b, w, torch.ones(2, 25, dtype=torch.float64)),
                               rtol=1e-13)


# ---------------------------------------------------------------- Frechet: torch path, bootstrap


def test_torch_frechet_path_equals_scipy() -> None:
    rng = np.random.default_rng(4)
    a = gaussian_stats(rng.normal(size=(400, 48)) @ rng.normal(size=(48, 48)))
    b = gaussian_stats(rng.normal(size=(500, 48)) * 1.3 + 0.2)
    scipy_fd = frechet_distance(a, b, method="sqrtm")
    tr = trace_sqrt_product_torch(a.sigma, b.sigma, "cpu")
    torch_fd = float((a.mu - b.mu) @ (a.mu - b.mu) + np.trace(a.sigma) + np.trace(b.sigma) - 2 * tr)
    assert scipy_fd > 10 and abs(torch_fd - scipy_fd) / scipy_fd < 1e-6
    assert frechet_distance(a, b, method="eigen") == pytest.approx(torch_fd, rel=1e-12)
    if torch.cuda.is_available():
        assert abs(frechet_distance(a, b, device="cuda", method="eigen") - scipy_fd) / scipy_fd < 1e-6


def covariance_bootstrap(x: np.ndarray, ref: GaussianStats, n_boot: int) -> tuple[float, float]:
    """Each resample's FD from its own covariance and scipy's sqrtm, directly (same draws as bootstrap_fd)."""
    rng, n, values = np.random.default_rng(0), len(x), []
    for _ in range(n_boot):
        rows = x[rng.integers(0, n, size=n)]
        stats = gaussian_stats(rows)
        covmean = scipy.linalg.sqrtm(psd_sqrt(ref.sigma) @ stats.sigma @ psd_sqrt(ref.sigma))
        diff = stats.mu - ref.mu
        values.append(diff @ diff + np.trace(stats.sigma) + np.trace(ref.sigma) - 2 * np.trace(covmean).real)
    lo, hi = np.quantile(values, [0.025, 0.975])
    return float(lo), float(hi)


@pytest.mark.parametrize("n", [12, 60])  # fewer samples than dims (the Gram path) and more
def test_bootstrap_fd_equals_resampling_directly(n: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 20)) @ rng.normal(size=(20, 20)) * 0.5
    ref = gaussian_stats(rng.normal(size=(300, 20)) + 0.3)
    got = bootstrap_fd(x, ref.mu, ref.sigma, n_boot=40)
    np.testing.assert_allclose(got, covariance_bootstrap(x, ref, 40), rtol=1e-7)


@pytest.mark.parametrize("n", [12, 60])
def test_bootstrap_fd_does_not_depend_on_how_resamples_are_batched(n: int) -> None:
    """One resample at a time (the smallest memory budget) gives the interval that batches of all resamples give."""
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 20)) @ rng.normal(size=(20, 20)) * 0.5
    ref = gaussian_stats(rng.normal(size=(300, 20)) + 0.3)
    batched = bootstrap_fd(x, ref.mu, ref.sigma, n_boot=50)
    one_by_one = bootstrap_fd(x, ref.mu, ref.sigma, n_boot=50, chunk_elements=1)
    np.testing.assert_allclose(one_by_one, batched, rtol=1e-10)
    assert bootstrap_fd(x, ref.mu, ref.sigma, n_boot=50, seed=1) != batched  # the seed picks the draws


def test_inception_sized_fd_intervals_use_enough_resamples_for_95_percent(monkeypatch) -> None:
    """A 95% percentile interval from 20 resamples reads the 0.5th-largest draw: at least 5 draws per tail."""
    seen = []
    monkeypatch.setattr(scores, "bootstrap_fd", lambda *a, **k: seen.append(k["n_boot"]) or (1.0, 2.0))
    monkeypatch.setattr(scores, "frechet_distance", lambda *a, **k: 1.5)  # skip a 2048-d sqrtm
    features = {"pool": np.random.default_rng(0).normal(size=(8, 2048)).astype(np.float32)}
    stats = {"pool": GaussianStats(np.zeros(2048), np.eye(2048))}
    result = compute_metrics(["fid"], lambda name: features, lambda name: features, stats)
    assert result["fid_ci"] == [1.0, 2.0] and seen and seen[0] * 0.025 >= 5
    with pytest.raises(ValueError, match="too few"):
        scores.check_resamples(20)


# ---------------------------------------------------------------- features extracted once


class CountingExtractor(FeatureExtractor):
    """Pixel means as features; counts extract() calls per extractor name."""

    provides = ("pool",)
    calls: dict[str, int] = {}

    def __init__(self, name: str, device: str = "cpu", version: int = 1) -> None:
        super().__init__(device)
        self.name, self.version = name, version

    @property
    def cache_key(self) -> str:
        return f"{self.name}-v{self.version}"

    def extract(self, *args, **kwargs):
        CountingExtractor.calls[self.name] = CountingExtractor.calls.get(self.name, 0) + 1
        return super().extract(*args, **kwargs)

    def forward_batch(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.float() / 255
        scale = 1.0 + self.version
        return {"pool": torch.cat([x[:, i::4, j::4].mean((1, 2)) * scale for i in range(2) for j in range(2)], 1)}


@pytest.fixture
def counting_registry():
    saved_extractors, saved_metrics = dict(FEATURE_EXTRACTORS), dict(METRICS)
    for name in ("cnta", "cntb"):
        register_feature_extractor(name, lambda device="cpu", n=name, version=1: CountingExtractor(n, device, version),
                                   ("pool",))
    CountingExtractor.calls = {}
    yield
    FEATURE_EXTRACTORS.clear()
    FEATURE_EXTRACTORS.update(saved_extractors)
    METRICS.clear()
    METRICS.update(saved_metrics)


def write_run(run_dir: Path, images: np.ndarray) -> None:
    run_dir.mkdir(parents=True)
    n = len(images)
    np.savez(run_dir / "samples-000000.npz", arr_0=images, labels=np.zeros(n, np.int64), indices=np.arange(n))


def test_a_second_evaluation_extracts_nothing_and_a_new_metric_only_its_features(tmp_path, counting_registry):
    rng = np.random.default_rng(7)
    run, reference = tmp_path / "suite" / "run", random_smooth_images(16, 16, rng)
    write_run(run, random_smooth_images(12, 16, rng))
    options = dict(reference_cache_dir=tmp_path / "suite", progress=False, bootstrap=0)
    first = Evaluator(reference, **options).evaluate(run, ["fd_cnta"])
    assert CountingExtractor.calls == {"cnta": 2}  # samples and reference
    CountingExtractor.calls = {}
    again = Evaluator(reference, **options).evaluate(run, ["fd_cnta", "precision_cnta"])  # a fresh process
    assert CountingExtractor.calls == {} and again["fd_cnta"] == first["fd_cnta"]
    Evaluator(reference, **options).evaluate(run, ["fd_cnta", "fd_cntb"])
    assert CountingExtractor.calls == {"cntb": 2}  # only the new feature space
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"fd_cnta", "precision_cnta", "fd_cntb"} <= set(metrics)
    CountingExtractor.calls = {}
    other_weights = dict(options, extractor_options={"cnta": {"version": 2}})
    changed = Evaluator(reference, **other_weights).evaluate(run, ["fd_cnta"])
    assert CountingExtractor.calls == {"cnta": 2} and changed["fd_cnta"] != first["fd_cnta"]
    assert len(list(run.glob("features-cnta-*.npz"))) == 2  # each network's features kept beside the other's
    assert len(list((tmp_path / "suite").glob("reference-stats-cnta-*.npz"))) == 2


def test_reference_features_are_keyed_by_the_reference_files_content(tmp_path, counting_registry):
    from harness.metrics.reference import write_reference_batch

    rng = np.random.default_rng(8)
    run, ref = tmp_path / "suite" / "run", tmp_path / "ref.npz"
    write_run(run, random_smooth_images(10, 16, rng))
    images = random_smooth_images(10, 16, rng)
    write_reference_batch(ref, images)
    options = dict(reference_cache_dir=tmp_path / "suite", progress=False, bootstrap=0)
    Evaluator(ref, **options).evaluate(run, ["fd_cnta"])
    moved = tmp_path / "moved.npz"
    ref.rename(moved)  # the same content elsewhere: its cached features still serve
    CountingExtractor.calls = {}
    Evaluator(moved, **options).evaluate(run, ["fd_cnta"])
    assert CountingExtractor.calls == {}
    write_reference_batch(moved, images[::-1].copy() + 1)
    Evaluator(moved, **options).evaluate(run, ["fd_cnta"])
    assert CountingExtractor.calls == {"cnta": 1}  # new content: the reference is extracted again


# ---------------------------------------------------------------- preflight


def test_suite_asking_for_dinov2_and_cmmd_without_weights_names_the_assets(tmp_path, monkeypatch) -> None:
    import harness.assets as assets

    monkeypatch.setattr(assets, "hub_cached", lambda hub, files: False)
    monkeypatch.delenv(assets.ASSETS_ENV, raising=False)
    text = (REPO / "suites" / "imagenet256.toml").read_text()
    metrics = 'metrics = ["fid", "sfid", "is", "precision", "recall"]'
    suite_path = tmp_path / "s.toml"
    suite_path.write_text(text.replace(metrics, 'metrics = ["fid", "kid", "fd_dinov2", "cmmd"]'))
    suite = load_suite(suite_path, root=tmp_path)
    needs = preflight.missing_assets(suite.runs, tmp_path, generate=False, evaluate=True)
    names = [n.asset.name for n in needs if n.asset is not None]
    assert "dinov2-vitl14" in names and "clip-vit-l-14-336-openai" in names
    with pytest.raises(HarnessError) as error:
        raise_missing(needs)
    assert "harness assets --fetch" in str(error.value) and "dinov2-vitl14 clip-vit-l-14-336-openai" in str(error.value)


def test_extractors_without_weights_name_the_fetch_command(tmp_path, monkeypatch) -> None:
    import harness.assets as assets
    from harness.metrics import open_clip_models
    from harness.metrics.cmmd import ClipExtractor

    monkeypatch.setenv(assets.ASSETS_ENV, str(tmp_path))
    monkeypatch.setattr(assets, "hub_cached", lambda hub, files: False)
    monkeypatch.setattr(open_clip_models, "_cached_weights", lambda cfg: None)
    with pytest.raises(HarnessError, match="harness assets --fetch dinov2-vitl14"):
        Dinov2Extractor()
    with pytest.raises(HarnessError, match="harness assets --fetch clip-vit-l-14-336-openai"):
        ClipExtractor()
    clip = ClipExtractor(random_weights=True)  # dry runs: a tiny random CLIP at 336 px
    features = clip.extract([random_smooth_images(2, 24, np.random.default_rng(0))], progress=False)["pool"]
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
