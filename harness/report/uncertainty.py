"""Comparisons of runs that respect their bootstrap intervals (computed by harness.metrics.frechet.bootstrap_fd)."""

from __future__ import annotations

import math
from typing import Literal

import pandas as pd

from harness.errors import HarnessError
from harness.report.results import metric_higher_is_better

Verdict = Literal["better", "worse", "not called better"]


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
