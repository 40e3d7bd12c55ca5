"""`harness plan SUITE`: every run's method, gammas, NFE and FLOPs, and the suite's total, before anything runs.

`forwards` is network forwards per sampling step (2 for CFG, 3 for cfg+pag inside its window, fewer with a guidance
interval); `gflops_branches` splits `gflops` over the branches (`cond 0.5 + pag 0.49`: the strong branch is cond).

Needs no weights and no GPU: the FLOPs are counted on fake tensors (harness.cost.flops.run_cost).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from harness.cost.flops import run_cost
from harness.guidance import Schedule
from harness.suite import Suite, load_suite

PLAN_COLUMNS = ["run", "model", "method", "gamma_strong", "gamma_weak", "omega", "steps", "nfe", "forwards", "gflops",
                "gflops_full", "tflops_image", "samples", "tflops_total", "gflops_branches"]
TOTAL_ROW = "(total)"  # cannot clash with a run id: run names start with a letter or digit


def _gamma(schedule: Schedule | None) -> float | str:
    """A constant gamma as a number, a schedule as its label (`cos(0->0.6)`), no branch as NaN."""
    if schedule is None:
        return math.nan
    return schedule.start if schedule.kind == "constant" else schedule.label()


def _branches(gflops: dict[str, float]) -> str:
    """GFLOPs per step of each branch as `cond 114.4 + uncond 114.4`."""
    return " + ".join(f"{label} {value:.5g}" for label, value in gflops.items())


def plan_table(suite: Suite) -> pd.DataFrame:
    """One row per run (columns as the results table), then a total row; tflops_total = tflops_image * samples."""
    rows = []
    for run in suite.runs:
        cost = run_cost(run.models, run.guidance, run.sampler)
        weak = run.guidance.weak
        rows.append({
            "run": run.run_id, "model": run.models["main"].arch, "method": run.method,
            "gamma_strong": _gamma(run.guidance.gamma_strong), "gamma_weak": _gamma(weak.gamma if weak else None),
            "omega": run.guidance.omega, "steps": cost["steps"], "nfe": cost["nfe"], "forwards": cost["forwards"],
            "gflops": cost["gflops"], "gflops_branches": _branches(cost["gflops_branches"]),
            "gflops_full": cost["gflops_full"], "tflops_image": cost["tflops_image"], "samples": run.samples,
            "tflops_total": cost["tflops_image"] * run.samples,
        })
    table = pd.DataFrame(rows, columns=PLAN_COLUMNS)
    total = {"run": TOTAL_ROW, "samples": int(table["samples"].sum()),
             "tflops_total": float(table["tflops_total"].sum())}
    table = pd.concat([table, pd.DataFrame([total], columns=PLAN_COLUMNS)], ignore_index=True)
    return table.astype({"steps": "Int64", "nfe": "Int64", "samples": "Int64"})  # integers beside the blank total


def format_plan(table: pd.DataFrame, fmt: str) -> str:
    """The plan as an aligned text table, CSV, or JSON records (one per row, the total row last)."""
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "json":
        return table.to_json(orient="records", indent=2)
    if fmt != "table":
        raise ValueError(f"unknown plan format {fmt!r}; known: table, csv, json")
    decimals = {"omega": "{:g}", "forwards": "{:.3g}", "gflops": "{:.5g}", "gflops_full": "{:.5g}", "tflops_image": "{:.4g}",
                "tflops_total": "{:,.6g}"}
    shown = table.astype(object).where(table.notna(), "")
    for column, spec in decimals.items():
        shown[column] = [spec.format(v) if v != "" else "" for v in shown[column]]
    for column in ("steps", "nfe", "samples"):
        shown[column] = [f"{int(v):,}" if v != "" else "" for v in shown[column]]
    return shown.to_string(index=False)


def add_plan_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `plan` on the harness CLI; the parsed args carry func=main_plan."""
    parser = subparsers.add_parser("plan", help="runs, NFE and FLOPs of a suite (no weights, no GPU)")
    parser.add_argument("suite", type=Path, help="suite TOML file, e.g. suites/imagenet256.toml")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    parser.set_defaults(func=main_plan)
    return parser


def main_plan(args: argparse.Namespace) -> int:
    """Run `harness plan`: print the plan of args.suite in args.format; returns the exit status."""
    suite = load_suite(args.suite)
    print(format_plan(plan_table(suite), args.format))
    if args.format == "table":  # text-to-image: what the text encoder and the VAE cost, outside the per-step FLOPs
        from harness.cost.t2i_flops import outside_denoiser

        for line in outside_denoiser(suite):
            print(line)
    return 0
