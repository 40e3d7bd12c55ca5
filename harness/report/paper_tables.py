"""The paper's tables rebuilt with measured values beside the reported ones (tables.md, tables.tex)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from harness.report.baselines import (
    BASELINES_DIR, TABLE_TITLES, PaperMap, comparable_columns, context_columns, list_baseline_tables,
    load_baseline_table, normalise_paper_map,
)
from harness.report.formatting import (
    MISSING, arrow, display_name, fmt_context, fmt_delta, fmt_number, fmt_value, latex_escape, markdown_table,
)
from harness.report.uncertainty import half_width

LEGEND = ("rep. = reported by the paper (from `baselines/`), meas. = measured by this harness "
          "(± half its bootstrap interval), Δ = meas. − rep.; — = not measured or not reported. "
          "A reported number is never shown as a measured one.")


def runs_by_row(mapping: dict[str, list[tuple[str, str]]], table_name: str) -> dict[str, list[str]]:
    """Row id -> the runs mapped to it, for one baseline table."""
    out: dict[str, list[str]] = {}
    for run, refs in mapping.items():
        for name, row_id in refs:
            if name == table_name:
                out.setdefault(row_id, []).append(run)
    return out


def measured_value(column: str, run: str | None, table: pd.DataFrame, row_runs: dict[str, list[str]],
                   results: pd.DataFrame) -> tuple[float, float]:
    """A run's measured value and interval half-width for a reported column (NaN when not measured).

    A `delta_<cost>` column is the run's cost minus that of the run mapped to the table's reference row
    (the row whose reported delta is 0), as the paper computes it.
    """
    if run is None or run not in results.index:
        return math.nan, math.nan
    row = results.loc[run]
    if not column.startswith("delta_"):
        return float(row.get(column, math.nan)), half_width(row, column)
    base = column[len("delta_"):]
    reference_ids = table.loc[table[column] == 0, "id"]
    reference_runs = [r for i in reference_ids for r in row_runs.get(i, []) if r in results.index]
    if len(reference_runs) != 1 or base not in results.columns:
        return math.nan, math.nan
    return float(row[base]) - float(results.loc[reference_runs[0], base]), math.nan


def paper_table_frame(table: pd.DataFrame, table_name: str, results_df: pd.DataFrame,
                      mapping: dict[str, list[tuple[str, str]]]) -> pd.DataFrame:
    """One line per (reported row, mapped run): context, run, and reported / measured / Δ per metric."""
    results = results_df.set_index("run")
    row_runs = runs_by_row(mapping, table_name)
    comparable, context = comparable_columns(table), context_columns(table)
    lines = []
    for _, reported in table.iterrows():
        for run in row_runs.get(reported["id"]) or [None]:
            line: dict[tuple[str, str], str] = {(display_name(c), ""): fmt_context(reported[c]) for c in context}
            line[("run", "")] = run or MISSING
            for column in comparable:
                value, half = measured_value(column, run, table, row_runs, results)
                head = f"{display_name(column)}{arrow(column)}"
                line[(head, "rep.")] = fmt_number(reported[column])
                line[(head, "meas.")] = fmt_value(value, half)
                line[(head, "Δ")] = fmt_delta(value - float(reported[column]))
            lines.append(line)
    frame = pd.DataFrame(lines)
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    return frame


def table_notes(table: pd.DataFrame) -> list[str]:
    """Source and setting of the reported rows, and each row's note."""
    sources = table[["source_paper", "source_table", "setting"]].drop_duplicates()
    notes = [f"Reported: {s.source_paper}, {s.source_table}; {s.setting}." for s in sources.itertuples()]
    notes += [f"{r.id}: {r.notes}" for r in table.itertuples() if isinstance(r.notes, str) and r.notes]
    return notes


def table_markdown(frame: pd.DataFrame, title: str, notes: list[str]) -> str:
    """A paper table as markdown: flattened two-level headers, then its sources and notes."""
    flat = frame.copy()
    flat.columns = [f"{top} {sub}".strip() for top, sub in frame.columns]
    body = "\n".join(f"- {n}" for n in notes)
    return f"### {title}\n\n{markdown_table(flat)}\n\n{body}\n"


def table_latex(frame: pd.DataFrame, title: str, notes: list[str]) -> str:
    """A paper table as a booktabs LaTeX table with grouped rep./meas./Δ headers."""
    tops = [top for top, _ in frame.columns]
    groups, rules, start = [], [], 1
    for top in dict.fromkeys(tops):
        width = tops.count(top)
        if width > 1:
            groups.append(rf"\multicolumn{{{width}}}{{c}}{{{latex_escape(top)}}}")
            rules.append(rf"\cmidrule(lr){{{start}-{start + width - 1}}}")
        else:
            groups.append("")
        start += width
    subs = [latex_escape(sub or top) for top, sub in frame.columns]
    rows = [" & ".join(latex_escape(v) for v in row) + r" \\" for row in frame.itertuples(index=False)]
    grouped = [" & ".join(groups) + r" \\", " ".join(rules)] if rules else []
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(title)}}}",
             r"\resizebox{\linewidth}{!}{%", rf"\begin{{tabular}}{{{'l' * len(tops)}}}", r"\toprule",
             *grouped, " & ".join(subs) + r" \\", r"\midrule",
             *rows, r"\bottomrule", r"\end{tabular}}", r"\par\smallskip{\footnotesize",
             r" \\ ".join(latex_escape(n) for n in notes) + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_paper_tables(results_df: pd.DataFrame, suite_paper_map: PaperMap | None, out_dir: str | Path,
                       baselines_dir: str | Path = BASELINES_DIR) -> tuple[Path, Path]:
    """Write tables.md and tables.tex: every baseline table the suite maps runs to (all when it maps none)."""
    mapping = normalise_paper_map(suite_paper_map, baselines_dir)
    referenced = {name for refs in mapping.values() for name, _ in refs}
    names = [n for n in list_baseline_tables(baselines_dir) if n in referenced or not referenced]
    markdown, latex = ["# Paper tables: measured next to reported\n", LEGEND + "\n"], [
        "% Paper tables: measured next to reported. Needs \\usepackage{booktabs,graphicx}.\n"]
    for name in names:
        table = load_baseline_table(name, baselines_dir)
        frame = paper_table_frame(table, name, results_df, mapping)
        title = f"{TABLE_TITLES.get(name, name)} (baselines/{name}.csv)"
        markdown.append(table_markdown(frame, title, table_notes(table)))
        latex.append(table_latex(frame, title, table_notes(table)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md_path, tex_path = out / "tables.md", out / "tables.tex"
    md_path.write_text("\n".join(markdown))
    tex_path.write_text("\n".join(latex))
    return md_path, tex_path
