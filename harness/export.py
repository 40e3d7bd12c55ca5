"""`harness export RUN_OR_SUITE --format geneval|hpsv3 --out DIR`: a run's images in an official folder layout, so
GenEval's evaluate_images.py or HPSv3's benchmark.py reads them unchanged."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.errors import HarnessError
from harness.prompts.layouts import LAYOUTS, WRITERS


def export_run(run_dir: Path, layout: str, out: Path, root: Path | None = None) -> list[Path]:
    """Write one generated prompt run's images in `layout` under `out`; returns the image paths."""
    from harness.prompts import load_prompts
    from harness.rundir import RUN_MANIFEST, read_samples

    manifest_path = Path(run_dir) / RUN_MANIFEST
    if not manifest_path.is_file():
        raise HarnessError(f"{run_dir}: no {RUN_MANIFEST}; not a generated run (run `harness generate` first)")
    suite = json.loads(manifest_path.read_text())["config"]["suite"]
    if not suite.get("prompts"):
        raise HarnessError(f"{run_dir}: a class-conditional run; only prompt runs export to {layout}'s layout")
    prompts = load_prompts(suite["prompts"], root)
    images, labels = read_samples(Path(run_dir))
    return WRITERS[layout](images, labels, prompts, Path(out))


def export(target: Path, layout: str, out: Path, root: Path | None = None, only: str | None = None,
           runs_dir: Path | None = None) -> list[Path]:
    """A run folder is exported into `out`; a suite's generated runs (under `runs_dir`, default <root>/runs) each
    into out/<run-id>."""
    target = Path(target)
    if target.is_dir():
        return [Path(out)] if export_run(target, layout, Path(out), root) else []
    from harness.rundir import run_dir_of
    from harness.suite import load_suite

    suite = load_suite(target, root=root)
    runs_root = Path(runs_dir) if runs_dir else (Path(root) if root else Path.cwd()) / "runs"
    folders = []
    for run in suite.select(only):
        export_run(run_dir_of(runs_root, run), layout, Path(out) / run.run_id, root)
        folders.append(Path(out) / run.run_id)
    return folders


def add_export_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("export", help="write a prompt run's images in GenEval's or HPSv3's layout")
    parser.add_argument("target", help="a run folder (runs/<suite>/<run-id>) or a suite TOML (every generated run)")
    parser.add_argument("--format", required=True, choices=LAYOUTS, help="the official layout to write")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write (a suite: DIR/<run-id>)")
    parser.add_argument("--only", metavar="REGEX", help="with a suite: only the runs whose id matches")
    parser.add_argument("--runs-dir", metavar="DIR", help="with a suite: its runs folder (default: ROOT/runs)")
    parser.add_argument("--root", metavar="DIR", help="repository root (default: the current directory)")
    parser.set_defaults(func=main_export)
    return parser


def main_export(args: argparse.Namespace) -> int:
    root = Path(args.root) if args.root else None
    for folder in export(Path(args.target), args.format, Path(args.out), root, args.only,
                         Path(args.runs_dir) if args.runs_dir else None):
        print(f"wrote {folder} ({args.format} layout)")
    return 0
