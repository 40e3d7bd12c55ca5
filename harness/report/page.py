"""report.md: one page per suite with what was run, the results, the Pareto figures, paper tables and samples."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.image import imsave

from harness.errors import HarnessError
from harness.report.baselines import PaperMap, baseline_points, paper_map_from_manifests
from harness.report.formatting import (
    MISSING, arrow, display_name, fmt_context, fmt_interval, fmt_number, fmt_value, markdown_table,
)
from harness.report.html_page import write_html_report
from harness.report.paper_tables import write_paper_tables
from harness.report.pareto import pareto_figures
from harness.report.results import NOISY_SPREAD, collect_results, metric_columns, read_manifests, shard_paths
from harness.report.search_front import SEARCH_FILE, read_search, search_section
from harness.report.uncertainty import interval, tied_with_best

GRID_IMAGES = 16
RESULT_COLUMNS = ["run", "method", "model", "gamma_strong", "gamma_weak", "omega", "nfe", "samples", "gflops",
                  "tflops_image", "img_per_s", "utilization"]
COUNT_COLUMNS = {"nfe", "samples"}


def tile(images: np.ndarray, gap: int = 2) -> np.ndarray:
    """Tile uint8 NHWC images into one near-square grid image with white gaps."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"expected a non-empty [n, H, W, C] array, got shape {list(images.shape)}")
    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, c), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        top, left = (i // cols) * (h + gap), (i % cols) * (w + gap)
        canvas[top:top + h, left:left + w] = image
    return canvas


def write_sample_grid(run_dir: Path, out_path: Path, n: int = GRID_IMAGES) -> Path | None:
    """A PNG of the first n samples of a run (from its first shard); None when it has no shards."""
    shards = shard_paths(run_dir)
    if not shards:
        return None
    with np.load(shards[0]) as data:
        if "arr_0" not in data.files:
            raise HarnessError(f"{shards[0]}: no 'arr_0' array")
        images = np.asarray(data["arr_0"][:n])
    if images.dtype != np.uint8:
        raise HarnessError(f"{shards[0]}: arr_0 must be uint8, found {images.dtype}")
    grid = tile(images)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    imsave(out_path, grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray")
    return out_path


def dry_run_banner(manifests: Mapping[str, tuple[Path, Mapping[str, Any]]]) -> str | None:
    """A bold warning when any run is a dry run with random weights."""
    dry = [run for run, (_, m) in manifests.items() if m.get("dry_run")]
    if not dry:
        return None
    if len(dry) == len(manifests):
        return "**Every number in this report is from a dry run with random weights: none measures a trained model.**"
    return f"**Runs {', '.join(dry)} are dry runs with random weights: their numbers measure no trained model.**"


def _distinct(values: list[Any]) -> list[str]:
    """Distinct non-empty values as text, in first-seen order."""
    present = [v for v in values if v is not None and v != "" and not (isinstance(v, float) and math.isnan(v))]
    return list(dict.fromkeys(str(v) for v in present))


def what_was_run(suite_name: str, df: pd.DataFrame, manifests: Mapping[str, tuple[Path, Mapping[str, Any]]],
                 suite_meta: Mapping[str, Any] | None) -> str:
    """The suite, its runs, devices and software versions, and the suite settings."""
    versions = _distinct([", ".join([f"{k} {v}" for k, v in sorted(m.get("versions", {}).items())]
                                    + ([f"git {m['git_commit']}"] if m.get("git_commit") else []))
                          for _, m in manifests.values()])
    incomplete = [run for run, (_, m) in manifests.items() if m.get("complete") is False]
    devices = _distinct(list(df["device"]) + [m.get("device") for _, m in manifests.values()])
    differ = " (differ between runs)" if len(versions) > 1 else ""
    lines = ["## What was run", "", f"- suite: `{suite_name}`, {len(df)} runs: {', '.join(df['run'])}",
             f"- device: {', '.join(devices) or MISSING}", f"- versions: {' | '.join(versions) or MISSING}{differ}",
             "- results table: `results.csv` (load with `harness.report.load_results`)"]
    if incomplete:
        lines.append(f"- **not finished** (their numbers cover the samples so far): {', '.join(incomplete)}")
    lines += [f"- {key}: {value}" for key, value in (suite_meta or {}).items()]
    return "\n".join(lines)


def results_table(df: pd.DataFrame) -> str:
    """The results as markdown: metric headers with ↑/↓, values with ± their interval, best (and tied) in bold."""
    table = pd.DataFrame({"run": df["run"].astype(str), "method": df["method"].astype(str)})
    for column in [c for c in RESULT_COLUMNS[2:] if c in df.columns]:
        fmt = fmt_context if column in COUNT_COLUMNS or column == "model" else fmt_number
        cells = df[column].map(fmt)
        if column == "img_per_s" and "img_per_s_iqr" in df.columns:
            cells = [throughput_cell(row) for _, row in df.iterrows()]
        table[f"{display_name(column)}{arrow(column)}"] = cells
    for metric in metric_columns(df):
        best = tied_with_best(df, metric)
        cells = [fmt_interval(row[metric], *interval(row, metric)) for _, row in df.iterrows()]
        table[f"{display_name(metric)}{arrow(metric)}"] = [f"**{c}**" if b else c for c, b in zip(cells, best)]
    note = ("Bold: the best run on a metric, and every run whose interval overlaps the best's "
            "(not called worse). ± is half the bootstrap interval where metrics.json has one ([lo, hi] where it is "
            "not symmetric). img/s: median over "
            "the generation's timed batches (the first batch of each run warms up) ± half their interquartile "
            f"range, marked *noisy* where that range exceeds {NOISY_SPREAD:.0%} of the median; util.: GFLOP/s "
            "reached (`gflops` x steps x img/s) over a matmul calibration of the same device (`cost.json`).")
    return f"## Results\n\n{markdown_table(table)}\n\n{note}"


def throughput_cell(row: pd.Series) -> str:
    """img/s ± half the interquartile range of its batches, marked noisy when they spread widely."""
    iqr, spread = row.get("img_per_s_iqr", math.nan), row.get("img_per_s_spread", math.nan)
    text = fmt_value(row["img_per_s"], iqr / 2 if isinstance(iqr, float) else math.nan)
    return f"{text} *noisy*" if isinstance(spread, float) and spread > NOISY_SPREAD else text


def pareto_section(figures: list[tuple[str, str, list[Path]]], out_dir: Path) -> str:
    """The Pareto figures, each with a link to its PDF."""
    if not figures:
        return "## Pareto fronts\n\nNo run has both a metric and a cost yet."
    parts = ["## Pareto fronts", "", "Each point is a run, coloured by method; the black step line is the "
             "Pareto front; hollow points are the numbers that papers report for the runs mapped to them."]
    for quality, cost, paths in figures:
        png, pdf = (p.relative_to(out_dir).as_posix() for p in paths)
        parts += ["", f"![{display_name(quality)} vs {display_name(cost)}]({png}) ([PDF]({pdf}))"]
    return "\n".join(parts)


def samples_section(grids: dict[str, Path | None], out_dir: Path) -> str:
    """The first samples of every run, as a grid image each."""
    parts = ["## Samples", "", f"The first {GRID_IMAGES} images of each run (its first shard)."]
    for run, path in grids.items():
        parts += ["", f"### {run}", "", f"![{run}]({path.relative_to(out_dir).as_posix()})" if path else "no samples"]
    return "\n".join(parts)


def paper_section(tables_md: Path | None) -> str:
    """The paper tables (measured beside reported), or how to get them."""
    if tables_md is None:
        return "## Paper tables\n\nNo run is mapped to a paper's table; `harness report SUITE --paper` writes them all."
    body = tables_md.read_text().split("\n", 1)[1]
    return f"## Paper tables\n\nAlso in `tables.md` and `tables.tex` (booktabs).\n{body}"


def write_report(suite_name: str, runs_dir: str | Path = "runs", reports_dir: str | Path = "reports",
                 suite_meta: Mapping[str, Any] | None = None, paper_map: PaperMap | None = None,
                 paper: bool | None = None) -> Path:
    """Write reports/<suite>/report.md with results.csv, Pareto figures, sample grids and (optionally) paper tables.

    paper_map (run id -> "table:row" or a list of them) defaults to the `paper` fields of the runs'
    manifests. Paper tables are written when paper is True, or when paper is None and some run is mapped.
    """
    out = Path(reports_dir) / suite_name
    df = collect_results(runs_dir, suite_name, reports_dir)
    manifests = read_manifests(runs_dir, suite_name)
    paper_map = paper_map_from_manifests(manifests) if paper_map is None else paper_map
    figures = pareto_figures(df, out / "figures", baseline_points(df, paper_map))
    grids = {run: write_sample_grid(run_dir, out / "samples" / f"{run}.png")
             for run, (run_dir, _) in manifests.items()}
    tables_md = None
    if paper or (paper is None and paper_map):
        tables_md = write_paper_tables(df, paper_map, out)[0]
    search = read_search(runs_dir, suite_name)
    if search is not None:
        (out / SEARCH_FILE).write_text(json.dumps(search, indent=2) + "\n")
    sections = [f"# Report: {suite_name}", dry_run_banner(manifests),
                what_was_run(suite_name, df, manifests, suite_meta), results_table(df),
                search_section(df, search, out) if search is not None else None,
                pareto_section(figures, out), paper_section(tables_md), samples_section(grids, out)]
    path = out / "report.md"
    path.write_text("\n\n".join(s for s in sections if s) + "\n")
    write_html_report(suite_name, df, manifests, out, search, paper_map if tables_md is not None else None)
    return path
