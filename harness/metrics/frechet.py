"""Gaussian feature statistics and the Frechet distance between them, computed as ADM's evaluator does."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

# ADM raises when the diagonal of sqrtm's result has an imaginary part above this; we fall back instead.
IMAGINARY_ATOL = 1e-3
# Relative Frobenius residual of covmean @ covmean above which scipy's sqrtm result is not trusted.
RESIDUAL_RTOL = 1e-3
# About how many float64 numbers the bootstrap's batched resamples hold at once (2^24: 128 MB).
BOOTSTRAP_CHUNK_ELEMENTS = 2**24


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


def trace_sqrt_product_torch(sigma1: np.ndarray, sigma2: np.ndarray, device: str | torch.device) -> float:
    """tr(sqrt(sigma1 @ sigma2)) in float64 with torch on `device`: the sum of square roots of the eigenvalues of
    R sigma1 R, R = sqrt(sigma2) (two symmetric eigenproblems, which GPUs solve fast; scipy's sqrtm has no GPU
    form). The same trace as sqrtm's for covariance matrices, whose product has real non-negative eigenvalues."""
    s1 = torch.as_tensor(np.asarray(sigma1, np.float64), device=device)
    s2 = torch.as_tensor(np.asarray(sigma2, np.float64), device=device)
    w, v = torch.linalg.eigh(s2)
    root = (v * w.clamp_min(0).sqrt()) @ v.T
    inner = root @ s1 @ root
    eig = torch.linalg.eigvalsh((inner + inner.T) / 2)
    return float(eig.clamp_min(0).sqrt().sum())


# How tr sqrt(S1 S2) is computed: "eigen" (trace_sqrt_product_torch, float64, on the evaluation's device) or
# "sqrtm" (ADM's scipy path, trace_sqrt_product). The two agree within 1e-6 relative (tests/metrics/test_feature_metrics.py);
# perf/frechet_paths.py measured the eigen path faster on a CPU too (2048 dims: 50.7 s vs 81.3 s for sqrtm on the
# loaded 2-core machine of 2026-12-05), and scipy's sqrtm has no GPU form.
FRECHET_METHOD = "eigen"


def frechet_distance(stats1: GaussianStats, stats2: GaussianStats, eps: float = 1e-6,
                     device: str | torch.device | None = None, method: str | None = None) -> float:
    """Frechet distance between two Gaussians: |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2)).

    method (default FRECHET_METHOD): "eigen" computes the trace term in float64 with torch on `device` (CPU when
    None); "sqrtm" with ADM's scipy sqrtm, its eps retry and checks (CPU)."""
    if stats1.mu.shape != stats2.mu.shape:
        raise ValueError(f"statistics have different dimensions: {stats1.mu.shape} vs {stats2.mu.shape}")
    mu1, mu2 = np.asarray(stats1.mu, np.float64), np.asarray(stats2.mu, np.float64)
    sigma1, sigma2 = np.asarray(stats1.sigma, np.float64), np.asarray(stats2.sigma, np.float64)
    diff = mu1 - mu2
    method = method or FRECHET_METHOD
    if method == "eigen":
        tr_covmean = trace_sqrt_product_torch(sigma1, sigma2, device or "cpu")
    elif method == "sqrtm":
        tr_covmean = trace_sqrt_product(sigma1, sigma2, eps)
    else:
        raise ValueError(f"unknown Frechet method {method!r}: 'eigen' or 'sqrtm'")
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance matrix (negative eigenvalues from round-off clipped to 0)."""
    w, v = np.linalg.eigh(np.asarray(sigma, dtype=np.float64))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def bootstrap_fd(sample_features: np.ndarray, ref_mu: np.ndarray, ref_sigma: np.ndarray,
                 n_boot: int = 200, seed: int = 0, level: float = 0.95,
                 device: str | torch.device = "cpu",
                 chunk_elements: int = BOOTSTRAP_CHUNK_ELEMENTS) -> tuple[float, float]:
    """Percentile interval of the FD when the samples are resampled with replacement (reference held fixed).

    Each resample draws n rows of `sample_features` [n, d] with replacement (multinomial counts w), and its FD to
    (ref_mu, ref_sigma) is |m_w - mu_r|^2 + tr(S_w) + tr(S_r) - 2 sum sqrt(eig(R S_w R)), R = sqrt(S_r). With
    B = C R (C the centred rows, computed once), R S_w R = B' (W - w w'/n) B / (n - 1), whose non-zero eigenvalues
    are those of the k x k matrix P D G D P over the k rows drawn (G = B B', D = diag(sqrt w), P = I - s s'/n,
    s = sqrt w): so each resample costs an eigenproblem of size min(k, d), k ~ 0.63 n. Resamples are batched (about
    `chunk_elements` float64 numbers at a time; those with the same k share one batched eigenproblem), so a small
    feature space pays no per-resample overhead. Float64 in torch on `device`. Returns the (1-level)/2 and
    (1+level)/2 quantiles of the n_boot distances.
    """
    x = np.asarray(sample_features, dtype=np.float64)
    ref_mu = np.asarray(ref_mu, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] != ref_mu.shape[0]:
        raise ValueError(f"sample_features must be [n >= 2, {ref_mu.shape[0]}], got {list(x.shape)}")
    if n_boot < 2 or not 0.0 < level < 1.0:
        raise ValueError(f"need n_boot >= 2 and 0 < level < 1, got n_boot={n_boot}, level={level}")
    n, d = x.shape
    ref_root = torch.as_tensor(psd_sqrt(np.asarray(ref_sigma, dtype=np.float64)), device=device)
    ref_trace = float(np.trace(np.asarray(ref_sigma, dtype=np.float64)))
    mean = x.mean(axis=0)
    centred = torch.as_tensor(x - mean, device=device)
    rooted = centred @ ref_root  # B = C R, [n, d]
    gram = rooted @ rooted.T if n <= d else None  # G = B B', [n, n]; every resample's k <= n <= d
    offset = torch.as_tensor(mean - ref_mu, device=device)
    norms = (centred * centred).sum(dim=1)  # |c_i|^2: tr(S_w) = (sum w_i |c_i|^2 - n |m_c|^2) / (n - 1)
    rng = np.random.default_rng(seed)
    per_resample = n + (n * n if gram is not None else n * d + d * d)  # float64 numbers one resample holds
    chunk = max(1, min(n_boot, chunk_elements // per_resample))
    distances = []
    for start in range(0, n_boot, chunk):
        counts = np.stack([np.bincount(rng.integers(0, n, size=n), minlength=n)
                           for _ in range(min(chunk, n_boot - start))])
        w = torch.as_tensor(counts.astype(np.float64), device=device)  # [m, n]
        mean_c = w @ centred / n  # resampled means minus the full mean, [m, d]
        trace = (w @ norms - n * (mean_c * mean_c).sum(dim=1)) / (n - 1)
        diff = mean_c + offset
        roots = (_gram_roots(gram, counts, n, device) if gram is not None else _covariance_roots(rooted, w, n))
        distances.append((diff * diff).sum(dim=1) + trace + ref_trace - 2.0 * roots)
    distances = torch.cat(distances).cpu().numpy()
    lo, hi = np.quantile(distances, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


def _gram_roots(gram: torch.Tensor, counts: np.ndarray, n: int, device: str | torch.device) -> torch.Tensor:
    """sum sqrt(eig(R S_w R)) of each resample (rows of `counts`) from the k x k matrix P D G D P over its drawn
    rows; resamples with the same k are one batched eigenproblem."""
    drawn = (counts > 0).sum(axis=1)
    roots = torch.empty(len(counts), dtype=torch.float64, device=device)
    for k in np.unique(drawn):
        group = np.flatnonzero(drawn == k)
        rows, cols = np.nonzero(counts[group])
        idx = torch.as_tensor(cols.reshape(len(group), k), device=device)  # [m, k]: the drawn rows
        s = torch.as_tensor(np.sqrt(counts[group][rows, cols].reshape(len(group), k).astype(np.float64)), device=device)
        core = gram[idx[:, :, None], idx[:, None, :]] * s[:, :, None] * s[:, None, :]
        proj = core - (core @ s[:, :, None]) * s[:, None, :] / n
        inner = proj - s[:, :, None] * (s[:, None, :] @ proj) / n  # P D G D P
        eig = torch.linalg.eigvalsh((inner + inner.transpose(1, 2)) / 2) / (n - 1)
        roots[torch.as_tensor(group, device=device)] = eig.clamp_min(0).sqrt().sum(dim=1)
    return roots


def _covariance_roots(rooted: torch.Tensor, w: torch.Tensor, n: int) -> torch.Tensor:
    """sum sqrt(eig(R S_w R)) of each resample (rows of `w`) from the d x d matrix B' W B - u u'/n, u = w B."""
    u = w @ rooted  # [m, d]
    inner = (w[:, :, None] * rooted).transpose(1, 2) @ rooted - u[:, :, None] * u[:, None, :] / n  # [m, n, d] held
    eig = torch.linalg.eigvalsh((inner + inner.transpose(1, 2)) / 2) / (n - 1)
    return eig.clamp_min(0).sqrt().sum(dim=1)
