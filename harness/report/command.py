"""The `harness report SUITE [--paper]` subcommand: a parser hook and its entry point for harness/cli.py."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.report.page import write_report


def suite_name_and_meta(spec: str) -> tuple[str, dict[str, Any]]:
    """Suite name and settings to print from a suite TOML path, or (spec, {}) when spec is a bare suite name."""
    path = Path(spec)
    if not (spec.endswith(".toml") or path.is_file()):
        return spec, {}
    if not path.is_file():
        raise HarnessError(f"{spec}: no such suite file")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise HarnessError(f"{path}: TOML syntax error ({err})") from err
    suite = data.get("suite", {})
    if "name" not in suite:
        raise HarnessError(f"{path}: field suite.name is missing")
    return str(suite["name"]), suite_meta(data)


def suite_meta(data: dict[str, Any]) -> dict[str, Any]:
    """The settings report.md prints from a suite's parsed TOML: [suite] (but its name), [sampler], [models.*]."""
    meta = {f"suite.{k}": v for k, v in data.get("suite", {}).items() if k != "name"}
    meta.update({f"sampler.{k}": v for k, v in data.get("sampler", {}).items()})
    meta.update({f"models.{name}": ", ".join(f"{k} = {v}" for k, v in model.items())
                 for name, model in data.get("models", {}).items()})
    return meta


def add_report_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `report` on the harness CLI; the parsed args carry func=main_report."""
    parser = subparsers.add_parser("report", help="results table, Pareto plots, paper tables and report.md")
    parser.add_argument("suite", help="suite TOML file (suites/x.toml) or suite name")
    parser.add_argument("--runs-dir", default="runs", help="folder holding runs/<suite>/<run-id>/ (default: runs)")
    parser.add_argument("--reports-dir", default="reports", help="output folder (default: reports)")
    parser.add_argument("--paper", action="store_true",
                        help="also write tables.md/tables.tex: the paper's tables, measured beside reported")
    parser.set_defaults(func=main_report)
    return parser


def suite_paper_map(spec: str) -> dict[str, list[str]]:
    """Run id -> its `paper` references, from a suite TOML (empty for a bare suite name)."""
    if not spec.endswith(".toml"):
        return {}
    from harness.suite import load_suite

    return {run.run_id: list(run.paper) for run in load_suite(spec).runs if run.paper}


def has_runs(runs_dir: str | Path, name: str) -> bool:
    """Whether any run of the suite has been generated (a run folder with its manifest)."""
    folder = Path(runs_dir) / name
    return folder.is_dir() and any((p / "manifest.json").is_file() for p in folder.iterdir())


def write_paper_only(name: str, spec: str, reports_dir: str | Path, meta: dict[str, Any]) -> Path:
    """reports/<suite>/ before any run exists: the paper's tables with the reported columns and every measured one
    missing, and a report.md that says so."""
    import pandas as pd

    from harness.report.page import paper_section, what_was_run
    from harness.report.paper_tables import write_paper_tables

    out = Path(reports_dir) / name
    tables_md = write_paper_tables(pd.DataFrame({"run": []}), suite_paper_map(spec) or None, out)[0]
    note = ("No run of this suite has been generated yet, so every measured column is missing (—); "
            f"`harness bench {spec}` fills them.")
    nothing = pd.DataFrame({"run": [], "device": []})
    sections = [f"# Report: {name}", note, what_was_run(name, nothing, {}, meta), paper_section(tables_md)]
    path = out / "report.md"
    path.write_text("\n\n".join(s for s in sections if s) + "\n")
    return path


def main_report(args: argparse.Namespace) -> int:
    """Run `harness report`: write reports/<suite>/ and print the path of report.md; returns the exit status.

    With --paper and no generated run yet, only the paper's tables are written (reported values, measured ones
    missing)."""
    name, meta = suite_name_and_meta(args.suite)
    if args.paper and not has_runs(args.runs_dir, name):
        print(f"wrote {write_paper_only(name, args.suite, args.reports_dir, meta)} (no runs yet: reported values "
              "only)")
        return 0
    path = write_report(name, args.runs_dir, args.reports_dir, meta, getattr(args, "paper_map", None),
                        True if args.paper else None)
    print(f"wrote {path}")
    return 0
