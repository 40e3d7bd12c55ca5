"""Shared fixtures: small routing models with non-zero random weights (a fresh DiT predicts exactly zero), and
`write_suite`, which writes the suite builder's files (`suite_text` in tests/helpers.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.models import ModelSpec, build_model, randomize_weights
from tests.helpers import suite_text


@pytest.fixture
def write_suite(tmp_path: Path) -> Callable[..., Path]:
    """write_suite(name="suite.toml", folder=tmp_path, **changes) -> the path of a suite_text(**changes) file."""

    def write(name: str = "suite.toml", folder: Path | None = None, **changes: Any) -> Path:
        path = (folder or tmp_path) / name
        path.write_text(suite_text(**changes))
        return path

    return write


@pytest.fixture(scope="module")
def models():
    """{"main", "weak"}: two different Testbed-XS/4 routing models, route [1, 2]."""
    spec = ModelSpec("Testbed-XS/4", sparsity="routing", route=(1, 2))
    return {role: randomize_weights(build_model(spec), seed=i) for i, role in enumerate(("main", "weak"))}
