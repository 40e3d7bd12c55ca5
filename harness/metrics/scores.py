"""Scorers of the reference metrics: each takes its MetricSpec and the run's FeatureInputs and returns metrics.json
values. FD (with a bootstrap interval), IS, precision/recall and class accuracy are here; KID and CMMD have their
own modules. A scorer asks for features only through FeatureInputs, which extracts (or reads from the caches) each
extractor's features at most once per evaluation."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from harness.errors import HarnessError
from harness.metrics.frechet import GaussianStats, bootstrap_fd, frechet_distance, gaussian_stats
from harness.metrics.inception_score import inception_score
from harness.metrics.precision_recall import ADM_TILE, precision_recall

# Resamples of each bootstrap interval (FD, CMMD). A 95% percentile interval reads the 2.5% and 97.5% quantiles of
# the resampled values, so each tail needs several draws to be more than an extreme value: 1000 gives 25 draws per
# tail (Efron & Tibshirani's advice for percentile intervals is 1000 or more).
BOOTSTRAP_RESAMPLES = 1000
# Above 512 dims (Inception: 2048) a resample costs a d x d covariance and eigenproblem when samples outnumber
# the dims: 200 resamples still leave 5 draws per tail of a 95% interval (perf/frechet_paths.py measures its cost).
BOOTSTRAP_RESAMPLES_LARGE = 200
BOOTSTRAP_LEVEL = 0.95
MIN_TAIL_DRAWS = 5  # fewer resampled values than this beyond each end: the interval is an extreme value, refused


@dataclass
class FeatureInputs:
    """What a reference metric is computed from: sample and reference features by extractor (fetched lazily),
    precomputed Gaussian statistics (ADM's reference npz, by feature key), the samples' labels, and settings."""

    samples: Callable[[str], Mapping[str, np.ndarray]]
    reference: Callable[[str], Mapping[str, np.ndarray]]
    reference_stats: Mapping[str, GaussianStats] = field(default_factory=dict)
    labels: Callable[[], np.ndarray] | None = None
    device: str | torch.device = "cpu"
    tile: int = ADM_TILE
    sample_stats: Mapping[str, GaussianStats] = field(default_factory=dict)
    bootstrap: int = BOOTSTRAP_RESAMPLES
    memo: dict[Any, Any] = field(default_factory=dict)  # results scorers share (precision and recall: one pass)
    reference_statistics: Callable[[str, str], GaussianStats] | None = None  # cached by the Evaluator

    def reference_gaussian(self, extractor: str, feature: str) -> GaussianStats:
        """Mean and covariance of the reference's features (from the evaluator's cache when it has one)."""
        if self.reference_statistics is not None:
            return self.reference_statistics(extractor, feature)
        return gaussian_stats(self.reference(extractor)[feature])


def resamples_for(dims: int, bootstrap: int) -> int:
    """How many bootstrap resamples an interval in `dims` dimensions gets (fewer above 512 dims; 0 turns it off)."""
    return bootstrap if dims <= 512 else min(bootstrap, BOOTSTRAP_RESAMPLES_LARGE)


def check_resamples(n_boot: int, level: float = BOOTSTRAP_LEVEL) -> None:
    """ValueError when n_boot resamples leave fewer than MIN_TAIL_DRAWS values beyond each end of the interval."""
    if n_boot * (1.0 - level) / 2.0 < MIN_TAIL_DRAWS:
        need = int(np.ceil(2 * MIN_TAIL_DRAWS / (1.0 - level)))
        raise ValueError(f"{n_boot} resamples are too few for a {level:.0%} percentile interval: "
                         f"need at least {need} ({MIN_TAIL_DRAWS} per tail)")


def score_fd(spec: Any, inputs: FeatureInputs) -> dict[str, Any]:
    """Frechet distance of the samples to the reference (ADM's order: samples first) and `<name>_ci`, a 95%
    percentile bootstrap interval over resampled samples against the fixed reference statistics.

    Inception statistics stored with the reference (ADM's npz) are preferred over its images, as ADM does."""
    precomputed = spec.extractor == "inception"
    ref_stats = inputs.reference_stats.get(spec.feature) if precomputed else None
    sam_stats = inputs.sample_stats.get(spec.feature) if precomputed else None
    ref_stats = ref_stats or inputs.reference_gaussian(spec.extractor, spec.feature)
    features, resamples = None, 0
    if sam_stats is None:
        features = inputs.samples(spec.extractor)[spec.feature]
        sam_stats = gaussian_stats(features)
        resamples = resamples_for(features.shape[1], inputs.bootstrap)
    value = frechet_distance(sam_stats, ref_stats, device=inputs.device)
    results: dict[str, Any] = {spec.name: value}
    if resamples >= 2 and len(features) >= 2:
        check_resamples(resamples)
        lo, hi = bootstrap_fd(features, ref_stats.mu, ref_stats.sigma, n_boot=resamples, level=BOOTSTRAP_LEVEL,
                              device=inputs.device)
        # resampled FDs are biased upwards: with few images all may exceed the point, which the interval must hold
        results[f"{spec.name}_ci"] = [min(lo, value), max(hi, value)]
    return results


def score_is(spec: Any, inputs: FeatureInputs) -> dict[str, Any]:
    """ADM's Inception score of the samples' logits."""
    return {spec.name: inception_score(inputs.samples(spec.extractor)[spec.feature])}


def score_precision_recall(spec: Any, inputs: FeatureInputs) -> dict[str, Any]:
    """ADM's precision or recall (one k-NN pass per extractor serves both)."""
    key = ("precision_recall", spec.extractor, spec.feature)
    if key not in inputs.memo:
        ref, sam = inputs.reference(spec.extractor)[spec.feature], inputs.samples(spec.extractor)[spec.feature]
        inputs.memo[key] = precision_recall(ref, sam, tile=inputs.tile, device=inputs.device)
    return {spec.name: inputs.memo[key][0 if spec.kind == "precision" else 1]}


def score_class_acc(spec: Any, inputs: FeatureInputs) -> dict[str, Any]:
    """Fraction of samples whose predicted class (argmax of the logits) is the class they were generated for."""
    if inputs.labels is None:
        raise HarnessError(f"{spec.name} needs the samples' class labels")
    predicted, truth = np.asarray(inputs.samples(spec.extractor)[spec.feature]).argmax(axis=1), inputs.labels()
    if len(truth) != len(predicted):
        raise HarnessError(f"{spec.name}: {len(truth)} labels for {len(predicted)} samples")
    return {spec.name: float(np.mean(predicted == truth))}
