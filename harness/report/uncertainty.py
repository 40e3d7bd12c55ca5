"""Bootstrap intervals for Frechet distances, and comparisons of runs that respect those intervals."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pandas as pd

from harness.errors import HarnessError
from harness.report.results import metric_higher_is_better

Verdict = Literal["better", "worse", "not called better"]


def psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance matrix (negative eigenvalues from round-off clipped to 0)."""
    w, v = np.linalg.eigh(np.asarray(sigma, dtype=np.float64))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _fd_given_root(mu: np.ndarray, sigma: np.ndarray, ref_mu: np.ndarray, ref_trace: float,
                   ref_root: np.ndarray) -> float:
    """Frechet distance with tr sqrt(S1 S2) = sum sqrt(eig(R S1 R)), R = sqrt(S2), a symmetric eigenproblem."""
    inner = ref_root @ sigma @ ref_root
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    diff = mu - ref_mu
    return float(diff @ diff + np.trace(sigma) + ref_trace - 2.0 * np.sqrt(np.clip(eig, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between the Gaussians (mu1, sigma1) and (mu2, sigma2)."""
    sigma2 = np.asarray(sigma2, dtype=np.float64)
    return _fd_given_root(np.asarray(mu1, np.float64), np.asarray(sigma1, np.float64),
                          np.asarray(mu2, np.float64), float(np.trace(sigma2)), psd_sqrt(sigma2))


def bootstrap_fd(sample_features: np.ndarray, ref_mu: np.ndarray, ref_sigma: np.ndarray,
                 n_boot: int = 200, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the FD when the samples are resampled with replacement (reference held fixed).

    Each resample draws n rows of `sample_features` [n, d] with replacement, recomputes their mean and
    covariance, and its Frechet distance to (ref_mu, ref_sigma). Returns the (1-level)/2 and (1+level)/2
    quantiles of the n_boot distances. Cost per resample: one d x d covariance from n rows plus one d x d
    symmetric eigendecomposition.
    """
    x = np.asarray(sample_features, dtype=np.float64)
    ref_mu = np.asarray(ref_mu, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] != ref_mu.shape[0]:
        raise ValueError(f"sample_features must be [n >= 2, {ref_mu.shape[0]}], got {list(x.shape)}")
    if n_boot < 2 or not 0.0 < level < 1.0:
        raise ValueError(f"need n_boot >= 2 and 0 < level < 1, got n_boot={n_boot}, level={level}")
    ref_sigma = np.asarray(ref_sigma, dtype=np.float64)
    ref_root, ref_trace = psd_sqrt(ref_sigma), float(np.trace(ref_sigma))
    n = x.shape[0]
    centred = x - x.mean(axis=0)
    rng = np.random.default_rng(seed)
    distances = np.empty(n_boot)
    for b in range(n_boot):
        weights = np.bincount(rng.integers(0, n, size=n), minlength=n).astype(np.float64)
        mean_c = weights @ centred / n
        sigma = (centred.T * weights) @ centred / (n - 1) - np.outer(mean_c, mean_c) * n / (n - 1)
        distances[b] = _fd_given_root(mean_c + x.mean(axis=0), sigma, ref_mu, ref_trace, ref_root)
    lo, hi = np.quantile(distances, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


def interval(row: pd.Series, metric: str) -> tuple[float, float]:
    """A row's interval for `metric`: <metric>_lo/<metric>_hi where present, else the point value."""
    lo, hi = row.get(f"{metric}_lo", math.nan), row.get(f"{metric}_hi", math.nan)
    if pd.notna(lo) and pd.notna(hi):
        return float(lo), float(hi)
    value = float(row.get(metric, math.nan))
    return value, value


def half_width(row: pd.Series, metric: str) -> float:
    """Half the width of a row's interval for `metric` (0 where it has none, NaN where unmeasured)."""
    lo, hi = interval(row, metric)
    return (hi - lo) / 2.0


def compare_rows(a: pd.Series, b: pd.Series, metric: str, higher_is_better: bool | None = None) -> Verdict:
    """Whether run `a` is better or worse than run `b` on `metric`, called only when their intervals are disjoint."""
    higher = metric_higher_is_better(metric) if higher_is_better is None else higher_is_better
    if higher is None:
        raise HarnessError(f"metric {metric!r}: unknown whether higher or lower is better")
    a_lo, a_hi = interval(a, metric)
    b_lo, b_hi = interval(b, metric)
    if a_hi < b_lo:
        return "worse" if higher else "better"
    if b_hi < a_lo:
        return "better" if higher else "worse"
    return "not called better"


def tied_with_best(df: pd.DataFrame, metric: str) -> pd.Series:
    """Rows that are the best on `metric` or that the best is not called better than."""
    higher = metric_higher_is_better(metric)
    values = pd.to_numeric(df[metric], errors="coerce")
    if higher is None or values.isna().all():
        return pd.Series(False, index=df.index)
    best = df.loc[values.idxmax() if higher else values.idxmin()]
    return pd.Series([pd.notna(values[i]) and compare_rows(df.loc[i], best, metric, higher) != "worse"
                      for i in df.index], index=df.index)
