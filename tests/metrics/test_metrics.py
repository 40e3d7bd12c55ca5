"""Evaluators: Inception path vs torch-fidelity, brute-force precision/recall, Frechet, npz batches, runs, golden."""

from __future__ import annotations

import json
import os
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.errors import HarnessError
from harness.metrics import FEATURE_EXTRACTORS, METRICS, FeatureExtractor, get_metric, register_feature_extractor
from harness.metrics import adm_eval, features, frechet
from harness.metrics.evaluate import Evaluator, Reference, evaluate_run
from harness.rundir import list_shards
from harness.metrics.features import (
    InceptionExtractor,
    TorchFidelityImages,
    random_smooth_images,
    write_random_inception_weights,
)
from harness.metrics.frechet import GaussianStats, frechet_distance, gaussian_stats
from harness.metrics.inception_score import inception_score
from harness.metrics.kid import kid
from harness.metrics.precision_recall import manifold_radii, precision_recall
from harness.metrics.reference import (
    NpzArrayReader,
    build_reference_batch,
    read_reference_stats,
    write_reference_batch,
)

N_IMAGES = 12  # per side; Inception at 299 px costs about 0.15 s per image on an idle CPU core
BATCH = 6
SPLIT = 4  # IS split size here (ADM: 5000), so torch-fidelity gets isc_splits = N_IMAGES // SPLIT


def relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# ---------------------------------------------------------------- Inception vs torch-fidelity


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_inception_weights(tmp_path_factory.mktemp("inception") / "random-inception.pth", seed=0)


@pytest.fixture(scope="module")
def image_sets() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    samples = random_smooth_images(N_IMAGES, 32, rng)
    # a shifted distribution: brighter and with a different coarse pattern
    reference = np.clip(random_smooth_images(N_IMAGES, 32, rng).astype(np.int16) + 40, 0, 255).astype(np.uint8)
    return {"samples": samples, "reference": reference}


@pytest.fixture(scope="module")
def inception(random_weights: Path) -> InceptionExtractor:
    return InceptionExtractor("cpu", weights_path=random_weights)


@pytest.fixture(scope="module")
def harness_features(inception: InceptionExtractor, image_sets: dict) -> dict[str, dict[str, np.ndarray]]:
    """Features of both image sets, plus "mixed_6d": the full NCHW Mixed_6d.branch1x1 output for the samples."""
    captured = []
    hook = inception.net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, out: captured.append(out.clone()))
    try:
        sets = {name: inception.extract([imgs], batch_size=BATCH, progress=False) for name, imgs in image_sets.items()}
    finally:
        hook.remove()
    sets["mixed_6d"] = torch.cat(captured[: N_IMAGES // BATCH]).numpy()
    return sets



def test_fid_is_and_kid_match_torch_fidelity(random_weights: Path, image_sets: dict, harness_features: dict) -> None:
    import torch_fidelity

    theirs = torch_fidelity.calculate_metrics(
        input1=TorchFidelityImages(image_sets["samples"]),
        input2=TorchFidelityImages(image_sets["reference"]),
        isc=True,
        fid=True,
        kid=True,
        kid_subset_size=N_IMAGES,  # ours caps the subset size at the image count; torch-fidelity must be told
        cuda=False,
        batch_size=BATCH,
        feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(random_weights),
        isc_splits=N_IMAGES // SPLIT,
        samples_shuffle=False,
        save_cpu_ram=True,
        cache=False,
        verbose=False,
    )
    sam, ref = harness_features["samples"], harness_features["reference"]
    assert sam["pool"].shape == (N_IMAGES, 2048) and sam["logits"].shape == (N_IMAGES, 1008)
    ours_is = inception_score(sam["logits"], split_size=SPLIT)
    ours_fid = frechet_distance(gaussian_stats(sam["pool"]), gaussian_stats(ref["pool"]))
    assert ours_is > 1.5 and ours_fid > 1.0  # the random network separates images and the two sets
    assert relative(ours_is, theirs["inception_score_mean"]) < 1e-6
    assert relative(ours_fid, theirs["frechet_inception_distance"]) < 1e-6
    kid_mean, kid_std = kid(sam["pool"], ref["pool"])
    assert kid_mean > 0 and kid_std >= 0
    assert relative(kid_mean, theirs["kernel_inception_distance_mean"]) < 1e-6
    assert relative(kid_std, theirs["kernel_inception_distance_std"]) < 1e-6


def test_spatial_features_are_mixed_6d_first_channels_in_nhwc_order(harness_features: dict) -> None:
    spatial, nchw = harness_features["samples"]["spatial"], harness_features["mixed_6d"]
    assert nchw.shape == (N_IMAGES, 192, 17, 17) and spatial.shape == (N_IMAGES, 17 * 17 * 7)
    for n, h, w, c in [(0, 0, 0, 6), (1, 5, 11, 3), (N_IMAGES - 1, 16, 16, 0), (3, 16, 2, 5)]:
        assert spatial[n, (h * 17 + w) * 7 + c] == nchw[n, c, h, w]


def test_inception_score_uses_contiguous_splits() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, size=(12, 7))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)

    def split_score(part: np.ndarray) -> float:
        return float(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(part.mean(0))), axis=1))))

    expected = np.mean([split_score(p[0:5]), split_score(p[5:10]), split_score(p[10:12])])
    assert inception_score(logits, split_size=5) == pytest.approx(expected, rel=1e-12)
    assert inception_score(logits[::-1], split_size=5) != pytest.approx(expected, rel=1e-6)  # order matters


# ---------------------------------------------------------------- precision / recall


def brute_force_precision_recall(ref: np.ndarray, sam: np.ndarray, k: int = 3) -> tuple[float, float, np.ndarray]:
    """ADM's ManifoldEstimator on full float64 matrices: np.partition radii, <= membership."""

    def dist(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return ((u[:, None, :].astype(np.float64) - v[None, :, :]) ** 2).sum(-1)

    ref_radii = np.partition(dist(ref, ref), k, axis=1)[:, k]
    sam_radii = np.partition(dist(sam, sam), k, axis=1)[:, k]
    cross = dist(ref, sam)
    precision = np.mean((cross <= ref_radii[:, None]).any(axis=0))
    recall = np.mean((cross <= sam_radii[None, :]).any(axis=1))
    return float(precision), float(recall), ref_radii


@pytest.mark.parametrize("tile", [1000, 7, 2])
@pytest.mark.parametrize("integer", [True, False])
def test_precision_recall_match_brute_force(tile: int, integer: bool) -> None:
    rng = np.random.default_rng(0)
    if integer:  # exact in float32, with many tied distances that exercise <=
        ref = rng.integers(-3, 4, size=(40, 6)).astype(np.float32)
        sam = (rng.integers(-3, 4, size=(33, 6)) + 2 * rng.integers(0, 2, size=(33, 6))).astype(np.float32)
    else:
        ref = rng.normal(size=(40, 6)).astype(np.float32)
        sam = rng.normal(0.5, 1.3, size=(33, 6)).astype(np.float32)
    precision, recall, ref_radii = brute_force_precision_recall(ref, sam)
    assert 0 < precision < 1 and 0 < recall < 1
    assert precision_recall(ref, sam, tile=tile) == (precision, recall)
    if integer:
        np.testing.assert_array_equal(manifold_radii(ref, tile=tile).numpy(), ref_radii)


# ---------------------------------------------------------------- Frechet distance


def direct_frechet(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), through symmetric eigendecompositions."""
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root @ s2 @ root)
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def test_frechet_matches_direct_formula() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(500, 24)), rng.normal(0.3, 1.5, size=(400, 24)) @ rng.normal(size=(24, 24))
    s1, s2 = gaussian_stats(a), gaussian_stats(b)
    np.testing.assert_allclose(s1.mu, a.mean(0))
    np.testing.assert_allclose(s1.sigma, np.cov(a, rowvar=False))
    assert frechet_distance(s1, s2) == pytest.approx(direct_frechet(s1.mu, s1.sigma, s2.mu, s2.sigma), rel=1e-9)
    assert frechet_distance(s1, s1) == pytest.approx(0, abs=1e-9)


@pytest.mark.filterwarnings("ignore:fid calculation produces singular product")
def test_frechet_survives_singular_covariances(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    u, mu1, mu2 = rng.normal(size=16), rng.normal(size=16), rng.normal(size=16)
    rank_one = GaussianStats(mu1, np.outer(u, u))
    # S1 = S2 = u u^T: the trace terms cancel exactly, leaving |mu1 - mu2|^2
    assert frechet_distance(rank_one, GaussianStats(mu2, np.outer(u, u))) == pytest.approx(
        (mu1 - mu2) @ (mu1 - mu2), rel=1e-6
    )
    zero = np.zeros((16, 16))
    zero_fd = frechet_distance(GaussianStats(mu1, zero), GaussianStats(mu2, zero))
    assert zero_fd == pytest.approx((mu1 - mu2) @ (mu1 - mu2))
    # ADM's path: where sqrtm fails even after the 1e-6 diagonal retry, the eigenvalue fallback gives the same distance
    few = rng.normal(size=(6, 16)), rng.normal(size=(9, 16))
    s1, s2 = gaussian_stats(few[0]), gaussian_stats(few[1])
    monkeypatch.setattr(frechet, "_sqrtm", lambda m: np.full_like(m, np.nan))
    with pytest.warns(UserWarning, match="eigenvalues"):
        value = frechet_distance(s1, s2, method="sqrtm")
    assert value == pytest.approx(direct_frechet(s1.mu, s1.sigma, s2.mu, s2.sigma), rel=1e-5)


# ---------------------------------------------------------------- reference batches


def test_reference_npz_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(11, 8, 6, 3), dtype=np.uint8)
    stats = {"pool": gaussian_stats(rng.normal(size=(30, 5))), "spatial": gaussian_stats(rng.normal(size=(30, 7)))}
    out = write_reference_batch(tmp_path / "ref.npz", images, stats=stats)
    with np.load(out) as data:
        assert sorted(data.files) == ["arr_0", "mu", "mu_s", "sigma", "sigma_s"]
        np.testing.assert_array_equal(data["arr_0"], images)
        np.testing.assert_array_equal(data["sigma_s"], stats["spatial"].sigma)
    with NpzArrayReader(out) as reader:
        assert reader.shape == images.shape and len(reader) == 11
        batches = list(reader.batches(4))
    assert [len(b) for b in batches] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate(batches), images)
    read = read_reference_stats(out)
    np.testing.assert_array_equal(read["pool"].mu, stats["pool"].mu)
    np.testing.assert_array_equal(read["spatial"].sigma, stats["spatial"].sigma)
    # chunked writing and compressed npz files (np.savez_compressed) stream the same
    chunks = (images[i : i + 5] for i in range(0, 11, 5))
    chunked = write_reference_batch(tmp_path / "chunked.npz", chunks, images.shape)
    np.savez_compressed(tmp_path / "compressed.npz", arr_0=images)
    for path in (chunked, tmp_path / "compressed.npz"):
        with NpzArrayReader(path) as reader:
            np.testing.assert_array_equal(np.concatenate(list(reader.batches(3))), images)
        assert read_reference_stats(path) == {}
    with pytest.raises(HarnessError, match="expected 12"):
        write_reference_batch(tmp_path / "short.npz", [images], (12, 8, 6, 3))
    assert not list(tmp_path.glob("*short*"))  # nothing half-written is left


# ---------------------------------------------------------------- a cheap extractor for plumbing tests


class PixelExtractor(FeatureExtractor):
    """Coarse pixel statistics as features; counts images so tests can see the caches work."""

    provides = ("pool", "spatial", "logits")
    images_seen = 0

    @property
    def cache_key(self) -> str:
        return "pixels-v1"

    def forward_batch(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        PixelExtractor.images_seen += len(images)
        x = images.double() / 255
        quads = [x[:, i::2, j::2].mean((1, 2)) for i in range(2) for j in range(2)]
        pool = torch.cat(quads + [x.std((1, 2))], dim=1)  # [B, 15]
        spatial = x[:, ::4, ::4].reshape(len(x), -1)
        logits = pool[:, :3] - pool[:, 3:6]
        return {"pool": pool.float(), "spatial": spatial.float(), "logits": logits.float()}


@pytest.fixture
def pixel_registry():
    saved_extractors, saved_metrics = dict(FEATURE_EXTRACTORS), dict(METRICS)
    for name in [n for n in METRICS if n.endswith("_testbed")]:
        del METRICS[name]
    FEATURE_EXTRACTORS.pop("testbed", None)
    for name in ("pixels", "testbed"):  # "testbed" too, so class_acc runs without the real testbed network
        register_feature_extractor(name, lambda device="cpu": PixelExtractor(device), PixelExtractor.provides)
    yield
    FEATURE_EXTRACTORS.clear()
    FEATURE_EXTRACTORS.update(saved_extractors)
    METRICS.clear()
    METRICS.update(saved_metrics)


def pixel_features(images: np.ndarray) -> dict[str, np.ndarray]:
    return PixelExtractor().extract([images], batch_size=7, progress=False)


def write_run(run_dir: Path, images: np.ndarray, labels: np.ndarray, shard: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    for first in range(0, len(images), shard):
        part = slice(first, first + shard)
        indices = np.arange(len(images))[part]
        np.savez(run_dir / f"samples-{first:06d}.npz", arr_0=images[part], labels=labels[part], indices=indices)


def test_metric_registry_names_directions_and_errors(pixel_registry: None) -> None:
    assert get_metric("fid").higher_is_better is False and get_metric("is").higher_is_better is True
    assert get_metric("fd_pixels").extractor == "pixels" and get_metric("recall_pixels").kind == "recall"
    assert get_metric("sfid").feature == "spatial" and get_metric("class_acc").extractor == "testbed"
    with pytest.raises(HarnessError, match="did you mean"):
        get_metric("fd_pixel")
    with pytest.raises(ValueError, match="already registered"):
        register_feature_extractor("pixels", PixelExtractor, ("pool",))


def test_evaluate_run_computes_caches_and_merges(tmp_path: Path, pixel_registry: None) -> None:
    rng = np.random.default_rng(5)
    samples = random_smooth_images(14, 16, rng)
    reference = random_smooth_images(12, 16, rng)
    labels = pixel_features(samples)["logits"].argmax(1)
    labels[:4] = (labels[:4] + 1) % 3  # 10 of 14 right
    run = tmp_path / "suite" / "run-a"
    write_run(run, samples, labels, shard=5)
    (run / "metrics.json").write_text(json.dumps({"kept": 1.0}))
    metrics = ["fd_pixels", "precision_pixels", "recall_pixels", "class_acc"]

    sam, ref = pixel_features(samples), pixel_features(reference)

    PixelExtractor.images_seen = 0
    results = evaluate_run(run, metrics, reference, tile=4, progress=False)
    expected_fd = frechet_distance(gaussian_stats(sam["pool"]), gaussian_stats(ref["pool"]))
    assert results["fd_pixels"] == pytest.approx(expected_fd)
    assert (results["precision_pixels"], results["recall_pixels"]) == precision_recall(ref["pool"], sam["pool"])
    assert results["class_acc"] == pytest.approx(10 / 14)
    assert json.loads((run / "metrics.json").read_text()) == {**results, "kept": 1.0}
    assert len(list(run.glob("features-pixels-*.npz"))) == 1 and len(list(run.glob("features-testbed-*.npz"))) == 1
    assert PixelExtractor.images_seen == 2 * 14 + 12  # samples for two extractors, reference once

    PixelExtractor.images_seen = 0
    assert evaluate_run(run, metrics, reference, tile=4, progress=False) == results
    assert PixelExtractor.images_seen == 0  # sample and reference features both came from the caches

    (run / "samples-000005.npz").unlink()
    with pytest.raises(HarnessError, match="expected 5"):
        list_shards(run)


def test_evaluator_uses_precomputed_reference_stats(tmp_path: Path, pixel_registry: None) -> None:
    """An ADM batch's mu/sigma stand in for the reference images' statistics (here for an Inception-space metric)."""
    rng = np.random.default_rng(6)
    samples, reference = random_smooth_images(9, 8, rng), random_smooth_images(8, 8, rng)
    stored = gaussian_stats(rng.normal(size=(40, 15)))
    ref_path = write_reference_batch(tmp_path / "ref.npz", reference, stats={"pool": stored})
    run = tmp_path / "run"
    write_run(run, samples, np.zeros(9, np.int64), shard=9)
    FEATURE_EXTRACTORS["inception"] = FEATURE_EXTRACTORS["pixels"]  # restored by the fixture
    results = Evaluator(Reference.from_npz(ref_path), progress=False).evaluate(run, ["fid"])
    expected = frechet_distance(gaussian_stats(pixel_features(samples)["pool"]), stored)
    assert results["fid"] == pytest.approx(expected)


# ---------------------------------------------------------------- adm-eval and reference CLIs


def test_adm_eval_prints_adm_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    rng = np.random.default_rng(7)
    samples, reference = random_smooth_images(16, 16, rng), random_smooth_images(12, 16, rng)
    ref_path = build_reference_batch(reference, tmp_path / "ref.npz", PixelExtractor(), progress=False)
    np.savez(tmp_path / "samples.npz", arr_0=samples)
    results = adm_eval.adm_evaluate(ref_path, tmp_path / "samples.npz", PixelExtractor(), progress=False, tile=5)
    sam, ref = pixel_features(samples), pixel_features(reference)
    assert results["is"] == pytest.approx(inception_score(sam["logits"]))
    assert results["sfid"] == pytest.approx(
        frechet_distance(gaussian_stats(sam["spatial"]), gaussian_stats(ref["spatial"]))
    )
    assert (results["precision"], results["recall"]) == precision_recall(ref["pool"], sam["pool"])

    monkeypatch.setattr(features, "InceptionExtractor", lambda device, weights_path: PixelExtractor(device))
    assert adm_eval.main_adm_eval([str(ref_path), str(tmp_path / "samples.npz"), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["Inception Score", "FID", "sFID", "Precision", "Recall"]
    assert float(lines[1].split(": ")[1]) == pytest.approx(results["fid"], rel=1e-12)
    assert adm_eval.main_adm_eval([str(ref_path), str(tmp_path / "samples.npz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(results)


def test_reference_from_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(8)
    images = random_smooth_images(5, 8, rng)
    (tmp_path / "imgs").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "imgs" / f"{i:03d}.png")
    out = build_reference_batch(tmp_path / "imgs", tmp_path / "ref.npz", PixelExtractor(), progress=False)
    with np.load(out) as data:
        np.testing.assert_array_equal(data["arr_0"], images)
        np.testing.assert_allclose(data["mu"], pixel_features(images)["pool"].mean(0), rtol=1e-6)
        assert data["sigma_s"].shape == (12, 12)  # 2 x 2 x 3 spatial features
    # arr_0 may keep fewer images than the statistics cover (ADM: 10k images, statistics over the dataset)
    kept = build_reference_batch(tmp_path / "imgs", tmp_path / "kept.npz", PixelExtractor(), keep=2, progress=False)
    with np.load(kept) as data:
        np.testing.assert_array_equal(data["arr_0"], images[:2])
        np.testing.assert_allclose(data["mu"], pixel_features(images)["pool"].mean(0), rtol=1e-6)
    Image.fromarray(images[0][:4]).save(tmp_path / "imgs" / "999.png")
    with pytest.raises(HarnessError, match="999.png"):
        build_reference_batch(tmp_path / "imgs", tmp_path / "bad.npz", None)


# ---------------------------------------------------------------- weights


def test_missing_weights_offline_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(features.WEIGHTS_ENV, raising=False)

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    with pytest.raises(HarnessError) as error:
        InceptionExtractor("cpu")
    assert str(expected) in str(error.value) and features.URL_INCEPTION_V3 in str(error.value)
    monkeypatch.setenv(features.WEIGHTS_ENV, str(tmp_path / "nowhere.pth"))
    with pytest.raises(HarnessError, match="nowhere.pth"):
        InceptionExtractor("cpu")
    batch = tmp_path / "batch.npz"  # the inputs exist: the missing weights are what is reported
    np.savez(batch, arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    assert adm_eval.main_adm_eval([str(batch), str(batch), "--device", "cpu"]) == 2
    assert "nowhere.pth" in capsys.readouterr().err


# ---------------------------------------------------------------- golden: ADM's published ImageNet 256 result


def test_golden_adm_imagenet256() -> None:
    assets = Path(os.environ.get("HARNESS_ASSETS", Path(__file__).resolve().parents[2] / "assets"))
    ref, sample = assets / "VIRTUAL_imagenet256_labeled.npz", assets / "admnet_guided_upsampled_imagenet256.npz"
    missing = [str(p) for p in (ref, sample) if not p.is_file()]
    if missing:
        pytest.skip(f"golden assets missing: {', '.join(missing)} (see README: golden test)")
    weights = Path(os.environ.get(features.WEIGHTS_ENV) or features.default_weights_path())
    if not weights.is_file():
        pytest.skip(f"Inception weights missing: {weights} (get {features.URL_INCEPTION_V3})")
    device = os.environ.get("HARNESS_GOLDEN_DEVICE") or ("cuda" if torch.cuda.is_available() else None)
    if device is None:
        pytest.skip("golden test runs 60k Inception forwards: needs CUDA or HARNESS_GOLDEN_DEVICE=cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = adm_eval.adm_evaluate(ref, sample, InceptionExtractor(device, weights), progress=False)
    assert results["is"] == pytest.approx(215.84, rel=1e-3)
    assert results["fid"] == pytest.approx(3.9426, rel=1e-3)
    assert results["sfid"] == pytest.approx(6.1404, rel=1e-3)
    assert results["precision"] == pytest.approx(0.8265, abs=0.003)
    assert results["recall"] == pytest.approx(0.5309, abs=0.003)
