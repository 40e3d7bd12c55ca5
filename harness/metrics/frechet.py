"""Gaussian feature statistics and the Frechet distance between them, computed as ADM's evaluator does."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg

# ADM raises when the diagonal of sqrtm's result has an imaginary part above this; we fall back instead.
IMAGINARY_ATOL = 1e-3
# Relative Frobenius residual of covmean @ covmean above which scipy's sqrtm result is not trusted.
RESIDUAL_RTOL = 1e-3


@dataclass(frozen=True)
class GaussianStats:
    """Mean and covariance of a feature set, in float64."""

    mu: np.ndarray
    sigma: np.ndarray

    def __post_init__(self) -> None:
        if self.mu.ndim != 1 or self.sigma.shape != (len(self.mu), len(self.mu)):
            raise ValueError(f"stats shapes do not match: mu {self.mu.shape}, sigma {self.sigma.shape}")


def gaussian_stats(features: np.ndarray) -> GaussianStats:
    """Mean and covariance (np.cov, rows are samples) of [N, D] features, in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need [N >= 2, D] features for statistics, got shape {features.shape}")
    return GaussianStats(features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False)))


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    """scipy's matrix square root, with its "singular matrix" warnings silenced (callers check the result)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return scipy.linalg.sqrtm(matrix)


def _sqrtm_problem(covmean: np.ndarray, product: np.ndarray) -> str | None:
    """Why a sqrtm result cannot be used (non-finite, imaginary diagonal, wrong square), or None if it can."""
    if not np.isfinite(covmean).all():
        return "non-finite result"
    if np.iscomplexobj(covmean) and not np.allclose(np.diagonal(covmean).imag, 0, atol=IMAGINARY_ATOL):
        return f"imaginary component {np.max(np.abs(covmean.imag))}"
    residual = np.linalg.norm(covmean @ covmean - product) / max(np.linalg.norm(product), np.finfo(float).tiny)
    if residual > RESIDUAL_RTOL:
        return f"relative residual {residual:.3g}"
    return None


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """tr(sqrtm(sigma1 @ sigma2)) as ADM (TTUR) computes it, with an eigenvalue fallback where sqrtm fails.

    ADM: sqrtm of the product; if not finite, retry with eps added to both diagonals; imaginary parts on the
    diagonal above 1e-3 are an error there. Here a result that is still unusable instead falls back to the sum of
    square roots of the (unregularised) product's eigenvalues: the same trace, torch-fidelity's formula.
    """
    product = sigma1 @ sigma2
    covmean, rooted = _sqrtm(product), product
    if not np.isfinite(covmean).all():
        warnings.warn(f"fid calculation produces singular product; adding {eps} to diagonal of cov estimates")
        offset = np.eye(len(sigma1)) * eps
        rooted = (sigma1 + offset) @ (sigma2 + offset)
        covmean = _sqrtm(rooted)
    problem = _sqrtm_problem(covmean, rooted)
    if problem is None:
        return float(np.trace(covmean).real)
    warnings.warn(f"scipy sqrtm failed ({problem}); using the eigenvalues of the covariance product instead")
    return float(np.sum(np.sqrt(np.linalg.eigvals(product).astype(np.complex128)).real))


def frechet_distance(stats1: GaussianStats, stats2: GaussianStats, eps: float = 1e-6) -> float:
    """Frechet distance between two Gaussians: |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2))."""
    if stats1.mu.shape != stats2.mu.shape:
        raise ValueError(f"statistics have different dimensions: {stats1.mu.shape} vs {stats2.mu.shape}")
    mu1, mu2 = np.asarray(stats1.mu, np.float64), np.asarray(stats2.mu, np.float64)
    sigma1, sigma2 = np.asarray(stats1.sigma, np.float64), np.asarray(stats2.sigma, np.float64)
    diff = mu1 - mu2
    tr_covmean = trace_sqrt_product(sigma1, sigma2, eps)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


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
