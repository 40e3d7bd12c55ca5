"""Does a retrained testbed reproduce the committed one? Each run's metrics side by side, the difference measured
in units of the seed-to-seed spread that the suite itself measures (runs repeated over seeds, `<name>-seed<N>`).

    python -m harness.testbed.compare reports/testbed/results.csv runs/retrain/reports/testbed/results.csv

A difference counts as within the spread when |retrained - committed| <= 2 * sqrt(2) * sd: two independent draws
of one quantity with seed sd `sd` differ by more than that about 5% of the time. sd pools both tables' seed groups.
The Spearman correlation of the runs' values says whether the retrained models rank the methods the same way.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import pandas as pd

from harness.errors import HarnessError
from harness.report.results import metric_columns

SEED_RUN = re.compile(r"^(?P<group>.+)-seed\d+$")
TOLERANCE = 2.0 * math.sqrt(2.0)  # in seed standard deviations


def seed_spread(tables: list[pd.DataFrame], metric: str) -> float:
    """Pooled standard deviation of `metric` within every group of seed-repeated runs of the tables."""
    sum_sq, dof = 0.0, 0
    for df in tables:
        groups = df["run"].str.extract(SEED_RUN)["group"]
        for _, values in df[metric].groupby(groups):
            values = values.dropna()
            if len(values) >= 2:
                sum_sq += float(((values - values.mean()) ** 2).sum())
                dof += len(values) - 1
    return math.sqrt(sum_sq / dof) if dof else math.nan


def compare(committed: pd.DataFrame, retrained: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, metric) present in both tables: both values, the difference, the seed sd, the verdict."""
    metrics = [m for m in metric_columns(committed) if m in retrained.columns]
    if not metrics:
        raise HarnessError("the two results tables share no metric column")
    both = committed.merge(retrained, on="run", suffixes=("_committed", "_retrained"))
    if both.empty:
        raise HarnessError("the two results tables share no run")
    rows = []
    for metric in metrics:
        sd = seed_spread([committed, retrained], metric)
        for _, row in both.iterrows():
            a, b = row[f"{metric}_committed"], row[f"{metric}_retrained"]
            if pd.isna(a) or pd.isna(b):
                continue
            delta = float(b - a)
            rows.append({"run": row["run"], "metric": metric, "committed": float(a), "retrained": float(b),
                         "delta": delta, "seed_sd": sd, "delta_in_sd": delta / sd if sd > 0 else math.nan,
                         "within_spread": None if math.isnan(sd) else abs(delta) <= TOLERANCE * sd})
    return pd.DataFrame(rows)


def rank_agreement(part: pd.DataFrame) -> float:
    """Spearman correlation between the committed and retrained values of one metric over the runs."""
    return float(part["committed"].corr(part["retrained"], method="spearman"))


def _read(path: str) -> pd.DataFrame:
    if not Path(path).is_file():
        raise HarnessError(f"{path}: results table not found (run `harness bench` for it first)")
    return pd.read_csv(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("committed", help="results.csv of the committed checkpoints")
    parser.add_argument("retrained", help="results.csv of the retrained checkpoints (same suite)")
    parser.add_argument("--csv", help="also write the comparison here")
    args = parser.parse_args(argv)
    try:
        table = compare(_read(args.committed), _read(args.retrained))
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.csv:
        table.to_csv(args.csv, index=False)
    with pd.option_context("display.max_rows", None, "display.width", 160):
        print(table.round(4).to_string(index=False))
    for metric, part in table.groupby("metric", sort=False):
        print(f"{metric}: {int(part['within_spread'].sum())}/{len(part)} runs within {TOLERANCE:.2f} seed sd "
              f"(sd {part['seed_sd'].iloc[0]:.4f}); mean difference {part['delta'].mean():+.4f}; rank agreement "
              f"(Spearman) {rank_agreement(part):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
