"""Text formatting shared by the report's tables: names, arrows, numbers with intervals, markdown, LaTeX."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from harness.report.results import COST_HIGHER_IS_BETTER, metric_higher_is_better

MISSING = "—"
_DISPLAY_NAMES = {
    "fid": "FID", "sfid": "sFID", "is": "IS", "precision": "Prec.", "recall": "Rec.", "class_acc": "class acc.",
    "geneval": "GenEval", "geneval_testbed": "GenEval (testbed)", "hpsv3": "HPSv3", "gflops": "GFLOPs", "gflops_full": "GFLOPs (attn.)",
    "tflops_image": "TFLOPs/img", "img_per_s": "img/s", "delta_gflops": "ΔGFLOPs", "nfe": "NFE",
    "gamma_strong": "γ_strong", "gamma_weak": "γ_weak", "omega": "ω", "utilization": "util.",
    "gflops_per_s": "GFLOP/s",
}
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "—": "---",
    "Δ": r"$\Delta$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "Σ": r"$\Sigma$", "γ": r"$\gamma$",
    "ω": r"$\omega$", "→": r"$\rightarrow$",
}


def display_name(column: str) -> str:
    """How a results or baseline column is titled in tables and on axes."""
    if column in _DISPLAY_NAMES:
        return _DISPLAY_NAMES[column]
    if column.startswith("fd_"):
        return f"FD ({column[3:]})"
    for prefix in ("hpsv3_", "geneval_testbed_", "geneval_"):  # per-category scores, titled by category as in the paper
        if column.startswith(prefix):
            return column[len(prefix):].replace("_", " ").capitalize()
    return column.replace("_", " ")


def column_direction(column: str) -> bool | None:
    """Direction of a metric or cost column (ΔGFLOPs like GFLOPs); None where a column has none."""
    if column.startswith("delta_"):
        column = column[len("delta_"):]
    if column in COST_HIGHER_IS_BETTER:
        return COST_HIGHER_IS_BETTER[column]
    return metric_higher_is_better(column)


def arrow(column: str) -> str:
    """↑ for higher-is-better columns, ↓ for lower-is-better ones, nothing otherwise."""
    direction = column_direction(column)
    return "" if direction is None else ("↑" if direction else "↓")


def fmt_number(value: Any) -> str:
    """A number with two decimals (three significant digits below 0.1); text as it is; NaN as missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, str):
        return value
    value = float(value)
    if value == 0 or abs(value) >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def fmt_context(value: Any) -> str:
    """A descriptive or count cell (method, epochs, NFE, learning rate) in its shortest exact form."""
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:g}"


def fmt_value(value: Any, half: float = math.nan) -> str:
    """A measured value with ± half its interval where it has one."""
    text = fmt_number(value)
    if text == MISSING or not (isinstance(half, float) and half > 0):
        return text
    return f"{text} ± {half:.2g}"


def fmt_interval(value: Any, lo: float, hi: float) -> str:
    """A measured value with its interval: ± half its width when it is symmetric about the value (within a tenth of
    its width), else [lo, hi]."""
    if fmt_number(value) == MISSING or not hi > lo:
        return fmt_number(value)
    if abs((value - lo) - (hi - value)) <= 0.1 * (hi - lo):
        return fmt_value(value, (hi - lo) / 2.0)
    return f"{fmt_number(value)} [{lo:.3g}, {hi:.3g}]"


def fmt_delta(value: Any) -> str:
    """A signed difference (measured minus reported); missing when either side is."""
    text = fmt_number(value)
    return text if text == MISSING or text.startswith("-") else f"+{text}"


def _cell(value: Any) -> str:
    """A markdown table cell: pipes escaped, newlines flattened."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub markdown table of a frame of strings (no index)."""
    lines = ["| " + " | ".join(_cell(c) for c in frame.columns) + " |",
             "|" + "|".join("---" for _ in frame.columns) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def latex_escape(text: Any) -> str:
    """Text made safe for LaTeX, with the report's symbols (±, —, Δ, arrows, Greek) as math."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
