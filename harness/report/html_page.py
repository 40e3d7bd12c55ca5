"""reports/<suite>/index.html: the interactive report (plotly front, side-by-side samples, tables, run panels)."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from harness.report.formatting import arrow, display_name, fmt_context, fmt_number, fmt_value
from harness.report.html_data import run_record, seed_groups
from harness.report.html_figures import COSTS, batch_figure, front_figures
from harness.report.labelled_grids import write_labelled_grids
from harness.report.results import metric_columns
from harness.report.uncertainty import half_width

PLOTLY_FILE = "plotly.min.js"
RUN_COLUMNS = ["run", "method", "model", "gamma_strong", "gamma_weak", "omega", "samples", "gflops", "gflops_full",
               "tflops_image", "img_per_s", "peak_mem_mb"]
FAMILIES = ("geneval_testbed", "geneval", "hpsv3")  # metrics with per-task / per-category columns
COUNT_SUFFIXES = ("_images", "_prompts")  # how many images / prompts a score covers, not a task


def sort_key(value: Any) -> str:
    """A cell's sort value for the page's table sorter: numbers as numbers, text as text, missing last."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "" if math.isnan(float(value)) else repr(float(value))
    return "" if value is None else str(value)


def html_table(header: list[str], rows: list[list[tuple[str, str]]], table_id: str = "") -> str:
    """A sortable HTML table from (shown text, sort value) cells."""
    ident = f' id="{table_id}"' if table_id else ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td data-v="{html.escape(v)}">{html.escape(t)}</td>' for t, v in row) + "</tr>"
                   for row in rows)
    return f'<table class="sortable"{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def results_table(df: pd.DataFrame) -> str:
    """Every run with its settings, costs and every metric with ± half its interval; run ids open their panel."""
    columns = [c for c in RUN_COLUMNS if c in df.columns]
    metrics = metric_columns(df)
    header = [f"{display_name(c)}{arrow(c)}" for c in columns + metrics]
    rows = []
    for _, row in df.iterrows():
        cells = [(fmt_context(row[c]) if c in ("run", "method", "model", "samples") else fmt_number(row[c]),
                  sort_key(row[c])) for c in columns]
        cells += [(fmt_value(row[m], half_width(row, m)), sort_key(row[m])) for m in metrics]
        rows.append(cells)
    return html_table(header, rows, "results")


def family_tables(df: pd.DataFrame) -> str:
    """GenEval per task and HPSv3 per category (each with its interval), where the results have them."""
    parts = []
    for family in FAMILIES:
        longer = [f for f in FAMILIES if f != family and f.startswith(f"{family}_")]
        subs = [c for c in metric_columns(df) if c.startswith(f"{family}_") and c not in FAMILIES
                and not c.endswith(COUNT_SUFFIXES) and not any(c.startswith(f"{f}_") for f in longer)]
        if not subs:
            continue
        heads = [family] if family in df.columns else []
        rows = [[(str(r["run"]), str(r["run"]))] + [(fmt_value(r[c], half_width(r, c)), sort_key(r[c]))
                                                   for c in heads + subs] for _, r in df.iterrows()]
        parts.append(f"<h3>{html.escape(display_name(family))} per "
                     f"{'category' if family == 'hpsv3' else 'task'}</h3>"
                     + html_table(["run"] + [display_name(c) for c in heads + subs], rows))
    return "".join(parts)


def spread_table(df: pd.DataFrame, groups: dict[str, list[str]]) -> str:
    """Seed-to-seed spread: per group of runs differing only in seed, each metric's mean, sd, min and max."""
    if not groups:
        return ""
    rows = []
    for name, runs in sorted(groups.items()):
        part = df[df["run"].isin(runs)]
        for metric in metric_columns(df):
            values = pd.to_numeric(part[metric], errors="coerce").dropna()
            if len(values) > 1:
                rows.append([(name, name), (str(len(values)), str(len(values))), (display_name(metric), metric)]
                            + [(fmt_number(v), sort_key(float(v))) for v in
                               (values.mean(), values.std(ddof=1), values.min(), values.max())])
    return "<h3>Seed-to-seed spread</h3>" + html_table(["runs", "seeds", "metric", "mean", "sd", "min", "max"], rows)


def paper_tables(df: pd.DataFrame, paper_map: Any) -> str:
    """The paper tables, measured beside reported, as the report's tables.md builds them."""
    from harness.report.baselines import list_baseline_tables, load_baseline_table, normalise_paper_map
    from harness.report.paper_tables import paper_table_frame

    mapping = normalise_paper_map(paper_map)
    referenced = {name for refs in mapping.values() for name, _ in refs}
    parts = []
    for name in [n for n in list_baseline_tables() if n in referenced or not referenced]:
        frame = paper_table_frame(load_baseline_table(name), name, df, mapping)
        header = [f"{top} {sub}".strip() for top, sub in frame.columns]
        rows = [[(str(v), str(v)) for v in row] for row in frame.itertuples(index=False)]
        parts.append(f"<h3>{html.escape(name)}: measured vs reported</h3>" + html_table(header, rows))
    return "".join(parts)


def asset(name: str) -> str:
    """A file shipped in harness/report/assets (the page's script, style and template)."""
    return resources.files("harness.report").joinpath("assets", name).read_text()


def write_plotly(out: Path) -> None:
    """plotly.min.js of the installed plotly package, written once into the report folder (no CDN)."""
    from plotly.offline import get_plotlyjs

    path = out / PLOTLY_FILE
    code = get_plotlyjs()
    if not path.is_file() or path.read_text() != code:
        path.write_text(code)


def json_script(data: Any) -> str:
    """JSON safe to embed in a <script> element."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def clean(value: Any) -> Any:
    """NaN and infinities as None so the page's JSON is valid."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def write_html_report(suite_name: str, df: pd.DataFrame, manifests: Mapping[str, tuple[Path, Mapping[str, Any]]],
                      out: Path, search: dict[str, Any] | None = None, paper_map: Any = None) -> Path:
    """Write out/index.html (with plotly.min.js, images/ and labelled sample grids beside it); returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    records = [run_record(run, run_dir, out) for run, (run_dir, _) in sorted(manifests.items())]
    figures = front_figures(df, search)
    metrics = [m for m in metric_columns(df) if any(k.startswith(f"{m}|") for k in figures)]
    data = {"suite": suite_name, "runs": [str(r) for r in df["run"]], "figures": figures, "metrics": metrics,
            "costs": [c for c in COSTS if any(k.endswith(f"|{c}") for k in figures)],
            "labels": {str(r["run"]): f"{r['method']}, γs {fmt_context(r['gamma_strong'])}, "
                                      f"γw {fmt_context(r['gamma_weak'])}, ω {fmt_context(r['omega'])}"
                       for _, r in df.iterrows()},
            "names": {c: display_name(c) for c in list(metrics) + list(COSTS)} | {"sec_per_image": "s/image"},
            "records": {r["run"]: r | {"batch_figure": batch_figure(r.pop("batches"))} for r in records}}
    rungs = ""
    if search:
        rungs = "<h3>Search rungs</h3>" + html_table(
            ["rung", "samples per point", "points", "promoted"],
            [[(str(i + 1), str(i + 1)), (str(r["samples"]), str(r["samples"])), (str(len(r["scores"])),) * 2,
              (str(len(r["promoted"])),) * 2] for i, r in enumerate(search["rungs"])])
    missing = "".join(f"<li><b>{html.escape(r['run'])}</b>: {html.escape('; '.join(r['missing']))}</li>"
                      for r in records if r["missing"])
    tables = ((f'<div class="missing">Missing from run folders:<ul>{missing}</ul></div>' if missing else "")
              + results_table(df) + family_tables(df) + spread_table(df, seed_groups(records)) + rungs
              + (paper_tables(df, paper_map) if paper_map is not None else ""))
    page = (asset("page.html").replace("{{suite}}", html.escape(suite_name)).replace("{{style}}", asset("report.css"))
            .replace("{{tables}}", tables).replace("{{data}}", json_script(clean(data)))
            .replace("{{script}}", asset("report.js")))
    write_plotly(out)
    write_labelled_grids(df, {run: run_dir for run, (run_dir, _) in manifests.items()}, out / "samples")
    path = out / "index.html"
    path.write_text(page)
    return path
