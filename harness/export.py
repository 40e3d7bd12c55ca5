"""`harness export RUN_OR_SUITE --format geneval|hpsv3 --out DIR`: a run's images in an official folder layout, so
GenEval's evaluate_images.py or HPSv3's benchmark.py reads them unchanged."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from harness import registry
from harness.errors import HarnessError
from harness.metrics.layouts import LAYOUTS, WRITERS


def export_run(run_dir: Path, layout: str, out: Path, root: Path | None = None,
               overwrite: bool = False) -> list[Path]:
    """Write one generated prompt run's images in `layout` under `out`; returns the image paths.

    The images are written into a sibling folder first; a non-empty `out` is replaced only when it holds nothing
    that this export would not write (this run's own earlier export) or with `overwrite`.
    """
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
    out = Path(out)
    staging = out.with_name(f".{out.name}.export-tmp")
    shutil.rmtree(staging, ignore_errors=True)
    written = registry.load(WRITERS[layout])(images, labels, prompts, staging)
    if out.exists():
        foreign = sorted(str(p.relative_to(out)) for p in out.rglob("*") if not (staging / p.relative_to(out)).exists())
        if foreign and not overwrite:
            shutil.rmtree(staging)
            raise HarnessError(f"{out}: not empty and not this run's earlier export (it holds {', '.join(foreign[:3])}"
                               f"{', ...' if len(foreign) > 3 else ''}); choose another --out, or pass --overwrite "
                               "to empty it first")
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    staging.rename(out)
    return [out / p.relative_to(staging) for p in written]


def export(target: Path, layout: str, out: Path, root: Path | None = None, only: str | None = None,
           runs_dir: Path | None = None, overwrite: bool = False) -> tuple[list[Path], list[str]]:
    """(folders written, run ids not generated): a run folder is exported into `out`; a suite's generated runs
    (under `runs_dir`, default <root>/runs) each into out/<run-id>."""
    target = Path(target)
    if target.is_dir():
        return ([Path(out)] if export_run(target, layout, Path(out), root, overwrite) else []), []
    from harness.rundir import RUN_MANIFEST, run_dir_of
    from harness.suite import load_suite

    suite = load_suite(target, root=root)
    runs_root = Path(runs_dir) if runs_dir else (Path(root) if root else Path.cwd()) / "runs"
    runs = suite.select(only)
    missing = [run.run_id for run in runs if not (run_dir_of(runs_root, run) / RUN_MANIFEST).is_file()]
    if len(missing) == len(runs):
        raise HarnessError(f"{target}: none of its runs is generated under {runs_root}; run `harness generate` first")
    folders = []
    for run in runs:
        if run.run_id not in missing:
            export_run(run_dir_of(runs_root, run), layout, Path(out) / run.run_id, root, overwrite)
            folders.append(Path(out) / run.run_id)
    return folders, missing


def add_export_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `export` on the harness CLI; the parsed args carry func=main_export."""
    parser = subparsers.add_parser("export", help="write a prompt run's images in GenEval's or HPSv3's layout")
    parser.add_argument("target", help="a run folder (runs/<suite>/<run-id>) or a suite TOML (every generated run)")
    parser.add_argument("--format", required=True, choices=LAYOUTS, help="the official layout to write")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write (a suite: DIR/<run-id>)")
    parser.add_argument("--only", metavar="REGEX", help="with a suite: only the runs whose id matches")
    parser.add_argument("--runs-dir", metavar="DIR", help="with a suite: its runs folder (default: ROOT/runs)")
    parser.add_argument("--root", metavar="DIR", help="repository root (default: the current directory)")
    parser.add_argument("--overwrite", action="store_true",
                        help="empty a non-empty --out folder first (without it only this run's own export is replaced)")
    parser.set_defaults(func=main_export)
    return parser


def main_export(args: argparse.Namespace) -> int:
    """`harness export`: write the folders, then name the suite's runs that are not generated."""
    root = Path(args.root) if args.root else None
    folders, missing = export(Path(args.target), args.format, Path(args.out), root, args.only,
                              Path(args.runs_dir) if args.runs_dir else None, args.overwrite)
    for folder in folders:
        print(f"wrote {folder} ({args.format} layout)")
    if missing:
        print(f"not generated: {', '.join(missing)}")
    return 0
