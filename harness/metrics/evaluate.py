"""The evaluate stage: features of a run's sample shards (cached in the run), metrics against a reference."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from harness import registry
from harness.errors import HarnessError
from harness.files import atomic_write, file_sha256, text_sha256, write_json
from harness.metrics import (
    FeatureExtractor,
    build_extractor,
    builtin_reference,
    builtin_reference_images,
    get_extractor_spec,
    get_metric,
)
from harness.metrics.frechet import GaussianStats, gaussian_stats
from harness.metrics.precision_recall import ADM_TILE
from harness.metrics.reference import (
    NpzArrayReader,
    npz_image_count,
    open_image_source,
    read_reference_stats,
)
from harness.metrics.scores import BOOTSTRAP_RESAMPLES, FeatureInputs
from harness.rundir import METRICS_FILE, list_shards



def _save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Atomically save arrays as an uncompressed .npz."""
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _load_cached(path: Path, signature: str) -> dict[str, np.ndarray] | None:
    """Features cached at path if the file exists and was made from the same inputs, else None."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        if "signature" not in data.files or str(data["signature"]) != signature:
            return None
        return {key: data[key] for key in data.files if key != "signature"}


class Reference:
    """Reference images that samples are compared with, plus ADM's precomputed Inception statistics if any."""

    def __init__(
        self,
        name: str,
        identity: str | Callable[[], str],
        num_images: int,
        chunks: Callable[[], Iterator[np.ndarray]],
        stats: Mapping[str, GaussianStats] | None = None,
    ) -> None:
        self.name, self.num_images = name, num_images
        self._identity = identity  # what the reference's cached features are keyed by (computed when first needed)
        self.chunks = chunks  # a fresh iterator of uint8 NHWC chunks per call
        self.stats = dict(stats or {})  # Inception statistics by feature key ("pool", "spatial")

    @property
    def identity(self) -> str:
        """Names the reference's content: the sha256 of its file or images (a folder: its path and shape)."""
        if callable(self._identity):
            self._identity = self._identity()
        return self._identity

    @classmethod
    def from_npz(cls, path: str | os.PathLike) -> Reference:
        """An ADM reference batch: images streamed from arr_0; mu/sigma, mu_s/sigma_s used for FID/sFID."""
        path = Path(path)
        if not path.is_file():
            raise HarnessError(f"reference batch {path} does not exist")
        return cls(str(path), lambda: f"sha256:{file_sha256(path)}", npz_image_count(path), lambda: open_image_source(path)[1],
                   read_reference_stats(path))

    @classmethod
    def from_array(cls, images: np.ndarray, name: str = "array") -> Reference:
        """Reference images held in memory (uint8 [N, H, W, 3]); statistics are computed from them."""
        shape, _ = open_image_source(images)
        identity = hashlib.sha256(np.ascontiguousarray(images).data).hexdigest()
        return cls(name, identity, shape[0], lambda: open_image_source(images)[1])

    @classmethod
    def from_source(cls, source: Reference | str | os.PathLike | np.ndarray) -> Reference:
        """A Reference from an ADM .npz path, an image folder or an array (a Reference is returned as is)."""
        if isinstance(source, Reference):
            return source
        if isinstance(source, np.ndarray):
            return cls.from_array(source)
        if isinstance(source, str) and builtin_reference(source):
            return cls.from_array(builtin_reference_images(source), name=source)
        path = Path(source)
        if path.is_dir():
            shape, _ = open_image_source(path)
            identity = f"{path.resolve()}:{shape}"
            return cls(str(path), identity, shape[0], lambda: open_image_source(path)[1])
        return cls.from_npz(path)


def first_shards(run_dir: str | os.PathLike, samples: int) -> list[Path]:
    """The shards holding exactly a run's first `samples` images; HarnessError when they do not end there."""
    chosen, count = [], 0
    for path in list_shards(run_dir):
        if count >= samples:
            break
        chosen.append(path)
        count += npz_image_count(path)
    if count != samples:
        raise HarnessError(f"{run_dir}: its shards hold {count} images where the first {samples} end, not "
                           f"{samples} (fewer images, or a shard boundary elsewhere)")
    return chosen


def _shard_images(shards: Sequence[Path]) -> Iterator[np.ndarray]:
    """arr_0 of each shard in order (uint8 NHWC), one shard in memory at a time."""
    for shard in shards:
        with NpzArrayReader(shard, "arr_0") as reader:
            if reader.dtype != np.uint8 or len(reader.shape) != 4 or reader.shape[-1] != 3:
                raise HarnessError(f"{shard}: arr_0 must be uint8 [N, H, W, 3], got {reader.dtype} {reader.shape}")
            yield from reader.batches(len(reader))


def shard_labels(shards: Sequence[Path]) -> np.ndarray:
    """The class labels of all samples, concatenated in index order."""
    labels = []
    for shard in shards:
        with np.load(shard, allow_pickle=False) as data:
            if "labels" not in data.files:
                raise HarnessError(f"{shard}: no 'labels' array (needed for class_acc)")
            labels.append(data["labels"])
    return np.concatenate(labels)


def compute_metrics(
    names: Sequence[str],
    samples: Callable[[str], Mapping[str, np.ndarray]],
    reference: Callable[[str], Mapping[str, np.ndarray]],
    reference_stats: Mapping[str, GaussianStats] | None = None,
    labels: Callable[[], np.ndarray] | None = None,
    device: str | torch.device = "cpu",
    tile: int = ADM_TILE,
    sample_stats: Mapping[str, GaussianStats] | None = None,
    bootstrap: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, float | list[float]]:
    """Metric values from features, each by its registered scorer (harness.metrics.scores): samples(extractor) and
    reference(extractor) give {key: [N, D]} and are called only when needed; precomputed Inception statistics (by
    feature key) are preferred, as ADM does. `bootstrap`: resamples of each interval (0 turns intervals off)."""
    inputs = FeatureInputs(samples, reference, reference_stats or {}, labels, device, tile, sample_stats or {},
                           bootstrap)
    return compute_scores(names, inputs)


def compute_scores(names: Sequence[str], inputs: FeatureInputs) -> dict[str, float | list[float]]:
    """Each named metric's values by its registered scorer."""
    results: dict[str, float | list[float]] = {}
    for name in names:
        spec = get_metric(name)
        results.update(registry.load(spec.scorer)(spec, inputs))
    return results


class Evaluator:
    """Computes metrics of runs against one reference, reusing extractors and reference features across runs."""

    def __init__(
        self,
        reference: Reference | str | os.PathLike | np.ndarray,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        extractor_options: Mapping[str, Mapping[str, object]] | None = None,
        reference_cache_dir: str | os.PathLike | None = None,
        progress: bool = True,
        tile: int = ADM_TILE,
        bootstrap: int = BOOTSTRAP_RESAMPLES,
    ) -> None:
        self.reference = Reference.from_source(reference)
        self.bootstrap = bootstrap  # resamples of each Frechet distance's interval (0: none, as dry runs do)
        self.device = torch.device(device)
        self.batch_size, self.progress, self.tile = batch_size, progress, tile
        self.extractor_options = {name: dict(opts) for name, opts in (extractor_options or {}).items()}
        self.reference_cache_dir = Path(reference_cache_dir) if reference_cache_dir else None
        self._extractors: dict[str, FeatureExtractor] = {}
        self._reference_features: dict[str, dict[str, np.ndarray]] = {}
        self._reference_stats: dict[tuple[str, str], GaussianStats] = {}

    def extractor(self, name: str) -> FeatureExtractor:
        """The named extractor, built once on this evaluator's device."""
        if name not in self._extractors:
            self._extractors[name] = build_extractor(name, self.device, **self.extractor_options.get(name, {}))
        return self._extractors[name]

    def _reference_cache(self, kind: str, name: str) -> tuple[Path | None, str]:
        """(cache file or None, signature) of the reference's `kind` ("features", "stats") for an extractor:
        keyed by the extractor's network and weights and by the reference's content hash."""
        signature = f"{self.extractor(name).cache_key}|{self.reference.identity}"
        if self.reference_cache_dir is None:
            return None, signature
        return self.reference_cache_dir / f"reference-{kind}-{name}-{text_sha256(signature)[:16]}.npz", signature

    def reference_statistics(self, name: str, key: str) -> GaussianStats:
        """Mean and covariance of the reference's `key` features of extractor `name`, cached like the features."""
        if (name, key) not in self._reference_stats:
            path, signature = self._reference_cache("stats", name)
            cached = (_load_cached(path, signature) or {}) if path else {}
            if f"mu_{key}" not in cached:
                stats = gaussian_stats(self.reference_features(name)[key])
                cached.update({f"mu_{key}": stats.mu, f"sigma_{key}": stats.sigma})
                if path:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    _save_npz(path, {**cached, "signature": np.array(signature)})
            self._reference_stats[(name, key)] = GaussianStats(cached[f"mu_{key}"], cached[f"sigma_{key}"])
        return self._reference_stats[(name, key)]

    def reference_features(self, name: str) -> dict[str, np.ndarray]:
        """Features of the reference images, kept in memory and (with a cache dir) on disk."""
        if name in self._reference_features:
            return self._reference_features[name]
        extractor = self.extractor(name)
        path, signature = self._reference_cache("features", name)
        features = _load_cached(path, signature) if path else None
        if features is None:
            features = extractor.extract(
                self.reference.chunks(), self.reference.num_images, self.batch_size, f"{name} reference", self.progress
            )
            if path:
                path.parent.mkdir(parents=True, exist_ok=True)
                _save_npz(path, {**features, "signature": np.array(signature)})
        self._reference_features[name] = features
        return features

    def run_features(self, run_dir: str | os.PathLike, name: str, shards: Sequence[Path]) -> dict[str, np.ndarray]:
        """Features of the run's samples, cached in the run folder as features-<name>-<hash of the extractor's
        network and weights>.npz for the same shards (another network's features live beside them)."""
        extractor = self.extractor(name)
        stamp = ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in shards)
        signature = f"{extractor.cache_key}|{stamp}"
        path = Path(run_dir) / f"features-{name}-{text_sha256(extractor.cache_key)[:12]}.npz"
        features = _load_cached(path, signature)
        if features is None:
            total = sum(npz_image_count(p) for p in shards)
            images = _shard_images(shards)
            features = extractor.extract(images, total, self.batch_size, f"{name} samples", self.progress)
            _save_npz(path, {**features, "signature": np.array(signature)})
        return features

    def evaluate(self, run_dir: str | os.PathLike, metrics: Sequence[str],
                 samples: int | None = None) -> dict[str, float | list[float]]:
        """Compute metrics for one run and merge them into its metrics.json; returns the new values.

        `samples` evaluates only the run's first images (whole shards; harness search), all of them by default.
        """
        run_dir = Path(run_dir)
        for name in metrics:
            spec = get_metric(name)
            provided = get_extractor_spec(spec.extractor).provides
            if spec.feature not in provided:
                raise HarnessError(f"metric {name} needs '{spec.feature}' features, which {spec.extractor} lacks")
        shards = list_shards(run_dir) if samples is None else first_shards(run_dir, samples)
        sample_features: dict[str, dict[str, np.ndarray]] = {}

        def samples(name: str) -> dict[str, np.ndarray]:
            if name not in sample_features:
                sample_features[name] = self.run_features(run_dir, name, shards)
            return sample_features[name]

        inputs = FeatureInputs(samples, self.reference_features, self.reference.stats, lambda: shard_labels(shards),
                               self.device, self.tile, bootstrap=self.bootstrap,
                               reference_statistics=self.reference_statistics)
        results = compute_scores(metrics, inputs)
        path = run_dir / METRICS_FILE
        merged = json.loads(path.read_text()) if path.is_file() else {}
        merged.update(results)
        write_json(path, merged, sort_keys=True)
        return results


def evaluate_run(
    run_dir: str | os.PathLike,
    metrics: Sequence[str],
    reference: Reference | str | os.PathLike | np.ndarray,
    device: str | torch.device = "cpu",
    **options: object,
) -> dict[str, float | list[float]]:
    """Compute metrics for one run (features cached in the run dir) and merge them into its metrics.json.

    options go to Evaluator (batch_size, extractor_options, progress, tile, reference_cache_dir: default the run's
    parent, where reference features are cached between calls); to evaluate many
    runs against one reference, build one Evaluator and call its evaluate, which reuses reference features.
    """
    options.setdefault("reference_cache_dir", Path(run_dir).parent)
    return Evaluator(reference, device, **options).evaluate(run_dir, metrics)
