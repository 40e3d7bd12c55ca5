"""The report of a `harness search`: the front it found with the points it pruned greyed, and what it saved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from harness.errors import HarnessError
from harness.report.formatting import display_name, markdown_table
from harness.report.pareto import cost_axis_label, method_colours, save_figure
from harness.report.results import COST_HIGHER_IS_BETTER

SEARCH_FILE = "search.json"  # in runs/<suite>/, written by harness.search.loop


def read_search(runs_dir: str | Path, suite_name: str) -> dict[str, Any] | None:
    """runs/<suite>/search.json, or None when the suite was not searched."""
    path = Path(runs_dir) / suite_name / SEARCH_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        for key in ("rungs", "front", "samples", "samples_spent", "samples_full_grid", "metric", "cost"):
            record[key]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise HarnessError(f"{path}: not a readable search record ({type(err).__name__}: {err})") from err
    return record


def last_scores(df: pd.DataFrame, record: dict[str, Any]) -> pd.DataFrame:
    """Every searched point's metric (with interval) from the last rung it was evaluated at, as search.json
    records it, beside its run columns and costs from the results table."""
    metric, cost = record["metric"], record["cost"]
    last = {}
    for rung in record["rungs"]:
        for evaluation in rung["evaluations"]:
            last[evaluation["run"]] = (rung["samples"], evaluation["metrics"])
    rows = []
    for run, (samples, metrics) in last.items():
        lo, hi = metrics.get(f"{metric}_ci", [metrics[metric]] * 2)
        rows.append({"run": run, "samples": samples, metric: metrics[metric], f"{metric}_lo": lo,
                     f"{metric}_hi": hi})
    scores = pd.DataFrame(rows, columns=["run", "samples", metric, f"{metric}_lo", f"{metric}_hi"])
    columns = [c for c in ("run", "method", cost, "device") if c in df.columns]
    return scores.merge(df[columns], on="run", how="left").dropna(subset=[metric, cost])


def plot_search(df: pd.DataFrame, record: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Every searched point at the samples it got: front points coloured by method with their intervals and the
    front's step line, pruned points grey (sized by how far they got); search-<metric>-<cost>.png and .pdf."""
    metric, cost = record["metric"], record["cost"]
    data = last_scores(df, record)
    on_front = data["run"].isin(record["front"])
    fig = Figure(figsize=(7.0, 5.0))
    ax = fig.add_subplot()
    top = max(record["rung_samples"])
    pruned = data[~on_front]
    for samples, group in pruned.groupby("samples"):
        what = f"pruned at {samples} samples" if samples < top else f"dominated at {top} samples"
        ax.scatter(group[cost], group[metric], color="0.6", s=12 + 40 * samples / top, alpha=0.7, label=what,
                   zorder=2)
    front = data[on_front].sort_values(cost)
    colours = method_colours(data["method"].astype(str))
    for method, group in front.groupby(front["method"].astype(str)):
        ax.scatter(group[cost], group[metric], color=colours[method], s=52, label=f"front: {method}", zorder=4)
        if f"{metric}_lo" in group:
            ax.vlines(group[cost], group[f"{metric}_lo"], group[f"{metric}_hi"], color=colours[method], lw=1)
    ax.step(front[cost], front[metric], where="pre" if COST_HIGHER_IS_BETTER[cost] else "post", color="black",
            lw=1, zorder=3, label=f"front at {top} samples")
    for _, row in front.iterrows():
        ax.annotate(row["run"], (row[cost], row[metric]), textcoords="offset points", xytext=(4, 4), fontsize=6)
    ax.set_xlabel(cost_axis_label(cost, data))
    ax.set_ylabel(f"{display_name(metric)} (grey: at the samples the point got)")
    ax.set_title(f"{record['suite']}: search spent {100 * record['samples_spent'] / record['samples_full_grid']:.1f}%"
                 f" of the full grid's samples", fontsize=10)
    return save_figure(ax, out_dir, f"search-{metric}-{cost}")


def search_section(df: pd.DataFrame, record: dict[str, Any], out_dir: Path) -> str:
    """report.md's search section: the saving, the rungs, the front, and the figure."""
    spent, full = record["samples_spent"], record["samples_full_grid"]
    png, pdf = (p.relative_to(out_dir).as_posix() for p in plot_search(df, record, out_dir / "figures"))
    rungs = pd.DataFrame([{"rung": i + 1, "samples per point": r["samples"], "points": len(r["scores"]),
                           "go on": len(r["promoted"]) if i + 1 < len(record["rungs"]) else "(top)"}
                          for i, r in enumerate(record["rungs"])])
    state = "" if record.get("complete") else " **(not finished: rungs so far)**"
    lines = ["## Search", "",
             f"`harness search` ({display_name(record['metric'])} against {record['cost']}, budget "
             f"{record['budget']['text']}){state}: spent **{spent:,} of the {full:,} samples** the full grid needs "
             f"({100 * spent / full:.1f}%, a saving of {100 * (1 - spent / full):.1f}%). A point went on to the next "
             "rung only while no cheaper-or-equal point's bootstrap interval lay wholly below its own, the current "
             "front first, as far as the budget allowed; the samples column of the results table is what each "
             "point got.", "", markdown_table(rungs), "",
             f"Front ({len(record['front'])} points at {max(record['rung_samples'])} samples): "
             + ", ".join(f"`{r}`" for r in record["front"]), "",
             f"![search front]({png}) ([PDF]({pdf}))", "", "`search.json` holds every rung's scores and decisions."]
    return "\n".join(lines)
