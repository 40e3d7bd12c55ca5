"""The generate stage: a suite's runs sampled into run folders (runner.py), the claims that let processes share a
runs folder (claims.py), their manifests (manifest.py), and the models, decoders and prompt conditions shared by the
runs (model_cache.py, conditions.py)."""

from harness.generate.model_cache import ModelCache
from harness.generate.runner import RunResult, generate_run, generate_suite

__all__ = ["ModelCache", "RunResult", "generate_run", "generate_suite"]
