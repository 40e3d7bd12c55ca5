"""KID (Binkowski et al. 2018), the Kernel Inception Distance exactly as torch-fidelity 0.4.0 computes it.

torch_fidelity.metric_kid.kid_features_to_metric on the Inception pool features (2048 dims; the harness's
extractor is torch-fidelity's `inception-v3-compat`): `kid_subsets` = 100 subsets of `kid_subset_size` = 1000 rows
drawn without replacement from each side (np.random.RandomState(2020)), the unbiased MMD^2 of each with the cubic
polynomial kernel k(x, y) = (x.y / d + 1)^3; `kid` is their mean and `kid_std` their standard deviation (np.std).
With fewer than 1000 images on a side the subset size is that count (torch-fidelity would refuse).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_SEED = 2020  # torch-fidelity's rng_seed default


def kid(samples: np.ndarray, reference: np.ndarray, subsets: int = KID_SUBSETS,
        subset_size: int = KID_SUBSET_SIZE) -> tuple[float, float]:
    """(mean, std) of torch-fidelity's KID between two feature sets; the subset size is capped by either count."""
    size = min(subset_size, len(samples), len(reference))
    out = kid_features_to_metric(torch.from_numpy(np.asarray(samples)), torch.from_numpy(np.asarray(reference)),
                                 kid_subsets=subsets, kid_subset_size=size, kid_kernel="poly",
                                 kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1,
                                 rng_seed=KID_SEED, verbose=False)
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD]


def score_kid(spec: Any, inputs: Any) -> dict[str, Any]:
    """`kid` and `kid_std` of the samples' features against the reference's (generated = input 1, as torch-fidelity)."""
    mean, std = kid(inputs.samples(spec.extractor)[spec.feature], inputs.reference(spec.extractor)[spec.feature])
    return {spec.name: mean, f"{spec.name}_std": std}
