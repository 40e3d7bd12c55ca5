"""Shared fixtures: small routing models with non-zero random weights (a fresh DiT predicts exactly zero)."""

import pytest

from harness.models import ModelSpec, build_model, randomize_weights


@pytest.fixture(scope="module")
def models():
    """{"main", "weak"}: two different Testbed-XS/4 routing models, route [1, 2]."""
    spec = ModelSpec("Testbed-XS/4", sparsity="routing", route=(1, 2))
    return {role: randomize_weights(build_model(spec), seed=i) for i, role in enumerate(("main", "weak"))}
