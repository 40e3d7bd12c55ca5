"""Inception Score as ADM's evaluator computes it: contiguous splits of 5000, no shuffling, mean over splits."""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax, logsumexp

ADM_SPLIT_SIZE = 5000


def inception_score(logits: np.ndarray, split_size: int = ADM_SPLIT_SIZE) -> float:
    """Mean over contiguous splits of exp(E[KL(p(y|x) || p(y))]), from [N, C] logits, in float64.

    ADM takes splits [0:5000], [5000:10000], ... in sample order (the last may be short) and reports the mean.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or len(logits) == 0:
        raise ValueError(f"need [N, C] logits, got shape {logits.shape}")
    log_p = log_softmax(logits, axis=1)
    scores = []
    for start in range(0, len(log_p), split_size):
        part_log = log_p[start : start + split_size]
        # log of the split's marginal p(y), via logsumexp so classes whose probabilities underflow stay finite
        log_marginal = logsumexp(part_log, axis=0, keepdims=True) - np.log(len(part_log))
        kl = np.exp(part_log) * (part_log - log_marginal)
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores))
