"""Suites: the TOML schema (schema.py), resolved runs and their config hash (runs.py), loading and grid expansion
(load.py), and `harness plan` (plan.py)."""

from harness.suite.load import GRID_AXES, load_suite, read_suite_data
from harness.suite.runs import NOT_HASHED, Run, Suite, canonical_json, config_hash

__all__ = ["GRID_AXES", "NOT_HASHED", "Run", "Suite", "canonical_json", "config_hash", "load_suite",
           "read_suite_data"]
