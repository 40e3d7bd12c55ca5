"""The HTML report's plotly figures: quality against every cost with its Pareto front, search overlays, batch rates."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from harness.report.formatting import column_direction, display_name, fmt_context, fmt_value
from harness.report.pareto import pareto_front
from harness.report.results import metric_columns
from harness.report.uncertainty import half_width

# Cost axes of the interactive front; sec_per_image is derived as 1 / img_per_s.
COSTS = {"gflops": False, "tflops_image": False, "img_per_s": True, "sec_per_image": False}
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


def with_derived_costs(df: pd.DataFrame) -> pd.DataFrame:
    """The results with seconds per image (measured) added from img/s."""
    out = df.copy()
    rate = pd.to_numeric(out.get("img_per_s", pd.Series(math.nan, index=out.index)), errors="coerce")
    out["sec_per_image"] = 1.0 / rate.where(rate > 0)
    return out


def hover_text(row: pd.Series, metric: str) -> str:
    """A point's hover label: run, method, gammas, omega, the metric with its interval, img/s and GFLOPs."""
    return "<br>".join([
        f"<b>{row['run']}</b>", f"method: {row['method']}",
        f"γ_strong {fmt_context(row.get('gamma_strong'))}, γ_weak {fmt_context(row.get('gamma_weak'))}, "
        f"ω {fmt_context(row.get('omega'))}",
        f"{display_name(metric)}: {fmt_value(row[metric], half_width(row, metric))}",
        f"img/s: {fmt_value(row.get('img_per_s', math.nan))}", f"GFLOPs: {fmt_value(row.get('gflops', math.nan))}"])


def front_figure(df: pd.DataFrame, metric: str, cost: str, colours: dict[str, str]) -> dict[str, Any]:
    """One method per trace (legend toggles it) with interval bars, and the Pareto front as a step line."""
    data = df[pd.to_numeric(df[metric], errors="coerce").notna() & pd.to_numeric(df[cost], errors="coerce").notna()]
    fig = go.Figure()
    for method, group in data.groupby(data["method"].astype(str), sort=True):
        lo, hi = group.get(f"{metric}_lo"), group.get(f"{metric}_hi")
        error = None
        if lo is not None and hi is not None and (lo.notna() & hi.notna()).any():
            error = dict(type="data", array=list((hi - group[metric]).fillna(0)),
                         arrayminus=list((group[metric] - lo).fillna(0)), thickness=1)
        fig.add_trace(go.Scatter(x=list(group[cost]), y=list(group[metric]), mode="markers", name=method,
                                 marker=dict(color=colours[method], size=9), error_y=error,
                                 customdata=list(group["run"]), text=[hover_text(r, metric) for _, r in group.iterrows()],
                                 hovertemplate="%{text}<extra></extra>"))
    front = pareto_front(data, metric, cost, bool(column_direction(metric)), COSTS[cost])
    fig.add_trace(go.Scatter(x=list(front[cost]), y=list(front[metric]), mode="lines", name="Pareto front",
                             line=dict(color="black", width=1, shape="vh" if COSTS[cost] else "hv"),
                             hoverinfo="skip"))
    better = "higher" if column_direction(metric) else "lower"
    fig.update_layout(xaxis_title=display_name(cost) if cost != "sec_per_image" else "seconds per image (measured)",
                      yaxis_title=f"{display_name(metric)} ({better} is better)", margin=dict(l=60, r=10, t=30, b=50),
                      height=460, hovermode="closest", template="none")
    return fig.to_plotly_json()


def search_traces(df: pd.DataFrame, record: dict[str, Any]) -> list[dict[str, Any]]:
    """Grey points a search pruned, at the last rung each reached, to overlay on its metric-cost figure."""
    from harness.report.search_front import last_scores

    metric, cost = record["metric"], record["cost"]
    data = last_scores(df, record)
    pruned = data[~data["run"].isin(record["front"])]
    traces = []
    for samples, group in pruned.groupby("samples"):
        traces.append(go.Scatter(x=list(group[cost]), y=list(group[metric]), mode="markers",
                                 name=f"pruned at {samples} samples", customdata=list(group["run"]),
                                 marker=dict(color="#999", size=6 + 6 * samples / max(record["rung_samples"])),
                                 text=[f"<b>{r['run']}</b><br>pruned at rung of {samples} samples<br>"
                                       f"{display_name(metric)}: {fmt_value(r[metric], half_width(r, metric))}"
                                       for _, r in group.iterrows()],
                                 hovertemplate="%{text}<extra></extra>").to_plotly_json())
    return traces


def front_figures(df: pd.DataFrame, search: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Every metric of known direction against every cost that has values: "metric|cost" -> figure."""
    data = with_derived_costs(df)
    colours = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(sorted(set(data["method"].astype(str))))}
    figures = {}
    for metric in metric_columns(df):
        if column_direction(metric) is None or metric.endswith(("_images", "_prompts")):  # counts, not scores
            continue
        for cost in COSTS:
            if cost in data and (pd.to_numeric(data[metric], errors="coerce").notna()
                                 & pd.to_numeric(data[cost], errors="coerce").notna()).any():
                figure = front_figure(data, metric, cost, colours)
                if search and search.get("metric") == metric and search.get("cost") == cost:
                    figure["data"] = search_traces(df, search) + list(figure["data"])
                figures[f"{metric}|{cost}"] = figure
    return figures


def batch_figure(batches: list[dict[str, Any]]) -> dict[str, Any] | None:
    """img/s of every timed batch of a run (warm-up batches hollow), or None without timings."""
    rates = [(i, b["images"] / b["total"], bool(b.get("warmup"))) for i, b in enumerate(batches)
             if b.get("total") and b.get("images")]
    if not rates:
        return None
    fig = go.Figure(go.Scatter(x=[r[0] for r in rates], y=[r[1] for r in rates], mode="lines+markers",
                               marker=dict(symbol=["circle-open" if r[2] else "circle" for r in rates], size=8),
                               hovertemplate="batch %{x}: %{y:.2f} img/s<extra></extra>", name="img/s"))
    fig.update_layout(height=200, width=420, margin=dict(l=50, r=10, t=10, b=40), xaxis_title="batch (hollow: warm-up)",
                      yaxis_title="img/s", template="none", showlegend=False)
    return fig.to_plotly_json()
