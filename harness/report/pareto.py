"""Pareto fronts of quality against cost, and their figures (PNG and PDF)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from harness.errors import HarnessError
from harness.report.formatting import arrow, column_direction, display_name
from harness.report.results import COST_HIGHER_IS_BETTER, metric_columns

PARETO_COSTS = ("gflops", "tflops_image", "img_per_s")
_COST_AXIS = {
    "gflops": "GFLOPs per image per step (MACs, fvcore convention, attention excluded)",
    "gflops_full": "GFLOPs per image per step (MACs, attention matmuls included)",
    "tflops_image": "TFLOPs per image (whole sampling; MACs, attention excluded)",
    "nfe": "network evaluations per image (NFE)",
    "img_per_s": "images/s on {device}",
    "img_per_s_e2e": "images/s end to end (incl. decoding) on {device}",
}
# Throughput depends on the machine: papers' numbers on other devices are not drawn on these axes.
_DEVICE_DEPENDENT = {"img_per_s", "img_per_s_e2e", "sec_per_step", "peak_mem_mb"}
_MAX_LABELLED = 12


def pareto_front(df: pd.DataFrame, quality: str, cost: str, higher_is_better: bool,
                 cost_higher_is_better: bool | None = None) -> pd.DataFrame:
    """The non-dominated rows: no other row is at least as good on both axes and strictly better on one.

    Rows missing either value are ignored; identical points do not dominate each other. The cost's
    direction defaults to the known one (compute lower is better, images/s higher is better).
    Returned sorted by cost.
    """
    if cost_higher_is_better is None:
        if cost not in COST_HIGHER_IS_BETTER:
            raise HarnessError(f"cost {cost!r}: unknown whether higher or lower is better")
        cost_higher_is_better = COST_HIGHER_IS_BETTER[cost]
    data = df[pd.to_numeric(df[quality], errors="coerce").notna() & pd.to_numeric(df[cost], errors="coerce").notna()]
    q = data[quality].to_numpy(float) * (-1.0 if higher_is_better else 1.0)
    c = data[cost].to_numpy(float) * (-1.0 if cost_higher_is_better else 1.0)
    dominated = [bool(np.any((q <= q[i]) & (c <= c[i]) & ((q < q[i]) | (c < c[i])))) for i in range(len(data))]
    return data[~np.array(dominated, dtype=bool)].sort_values(cost, kind="stable")


def cost_axis_label(cost: str, df: pd.DataFrame) -> str:
    """Axis label for a cost column naming its unit and counting convention (and the device for timings)."""
    devices = sorted({str(d) for d in df.loc[df[cost].notna(), "device"].dropna()}) if "device" in df else []
    return _COST_AXIS.get(cost, display_name(cost)).format(device=", ".join(devices) or "unknown device")


def quality_axis_label(quality: str, df: pd.DataFrame) -> str:
    """Axis label for a metric: its name, direction and the number of samples it was computed on."""
    better = "higher" if column_direction(quality) else "lower"
    counts = df.loc[df[quality].notna(), "samples"].dropna().unique() if "samples" in df else []
    samples = f", {int(counts[0])} samples" if len(counts) == 1 else ""
    return f"{display_name(quality)} {arrow(quality)} ({better} is better{samples})"


def method_colours(methods: Iterable[str]) -> dict[str, tuple]:
    """One colour per guidance method, stable across figures (sorted method names on tab10)."""
    palette = matplotlib.colormaps["tab10"]
    return {m: palette(i % 10) for i, m in enumerate(sorted({str(m) for m in methods}))}


def _draw_runs(ax, df: pd.DataFrame, quality: str, cost: str, colours: dict[str, tuple]) -> None:
    """Every run as a point coloured by method, with a vertical bar for its interval where it has one."""
    for method, group in df.groupby(df["method"].astype(str), sort=True):
        ax.scatter(group[cost], group[quality], color=colours[method], label=method, zorder=3)
        if f"{quality}_lo" in group and f"{quality}_hi" in group:
            bounded = group.dropna(subset=[f"{quality}_lo", f"{quality}_hi"])
            ax.vlines(bounded[cost], bounded[f"{quality}_lo"], bounded[f"{quality}_hi"], color=colours[method], lw=1)


def _draw_baselines(ax, baselines: pd.DataFrame, df: pd.DataFrame, quality: str, cost: str,
                    colours: dict[str, tuple]) -> None:
    """Paper-reported points, hollow, each joined to the run the suite maps to it by a dotted line."""
    if cost in _DEVICE_DEPENDENT or not {quality, cost} <= set(baselines.columns):
        return
    points = baselines.dropna(subset=[quality, cost])
    measured = df.set_index("run")
    if len(points):
        ax.scatter([], [], facecolors="none", edgecolors="black", s=70, linewidths=1.5, label="reported by paper")
    for _, point in points.iterrows():
        colour = colours.get(str(point["method"]), "grey")
        x, y = point[cost], point[quality]
        ax.scatter([x], [y], facecolors="none", edgecolors=[colour], s=70, linewidths=1.5, zorder=4)
        ax.annotate(point["baseline"], (x, y), textcoords="offset points", xytext=(4, -10), fontsize=6, color="grey")
        run = measured.loc[point["run"]]
        if pd.notna(run[quality]) and pd.notna(run[cost]):
            ax.plot([run[cost], x], [run[quality], y], ls=":", lw=0.8, color=colour)


def plot_pareto(df: pd.DataFrame, quality: str, cost: str, out_dir: str | Path,
                baselines: pd.DataFrame | None = None, labels: Iterable[str] | None = None) -> list[Path]:
    """Draw quality against cost with the Pareto front; write pareto-<quality>-<cost>.png and .pdf."""
    higher = column_direction(quality)
    if higher is None:
        raise HarnessError(f"metric {quality!r}: unknown whether higher or lower is better")
    data = df[df[quality].notna() & df[cost].notna()]
    front = pareto_front(data, quality, cost, higher)
    colours = method_colours(df["method"].astype(str))
    fig = Figure(figsize=(7.0, 5.0))
    ax = fig.add_subplot()
    _draw_runs(ax, data, quality, cost, colours)
    where = "pre" if COST_HIGHER_IS_BETTER[cost] else "post"
    ax.step(front[cost], front[quality], where=where, color="black", lw=1, label="Pareto front", zorder=2)
    named = set(data["run"] if len(data) <= _MAX_LABELLED else front["run"]) if labels is None else set(labels)
    for _, row in data[data["run"].isin(named)].iterrows():
        ax.annotate(row["run"], (row[cost], row[quality]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if baselines is not None and len(baselines):
        _draw_baselines(ax, baselines, df, quality, cost, colours)
    ax.set_xlabel(cost_axis_label(cost, data))
    ax.set_ylabel(quality_axis_label(quality, data))
    suite = ", ".join(sorted({str(s) for s in df["suite"].dropna()})) if "suite" in df else ""
    ax.set_title(f"{suite}: {display_name(quality)} vs {display_name(cost)}", fontsize=10)
    return save_figure(ax, out_dir, f"pareto-{quality}-{cost}")


def save_figure(ax, out_dir: str | Path, stem: str) -> list[Path]:
    """Finish a report figure (grid, legend, tight layout) and write it as <stem>.png and <stem>.pdf."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig = ax.figure
    fig.tight_layout()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.{ext}" for ext in ("png", "pdf")]
    for path in paths:
        fig.savefig(path, dpi=150)
    return paths


def pareto_figures(df: pd.DataFrame, out_dir: str | Path,
                   baselines: pd.DataFrame | None = None) -> list[tuple[str, str, list[Path]]]:
    """A figure for every measured metric of known direction against every measured cost."""
    figures = []
    for quality in metric_columns(df):
        if column_direction(quality) is None:
            continue
        for cost in PARETO_COSTS:
            if cost in df and (df[quality].notna() & df[cost].notna()).any():
                figures.append((quality, cost, plot_pareto(df, quality, cost, out_dir, baselines)))
    return figures
