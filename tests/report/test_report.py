"""Tests for the report stage: Pareto fronts, bootstrap intervals, results table, paper tables, report.md."""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from harness.errors import HarnessError
from harness.report import (
    add_report_parser, collect_results, compare_rows, load_baseline_table, load_results, pareto_front,
    write_paper_tables, write_report,
)
from harness.metrics.frechet import GaussianStats, bootstrap_fd, frechet_distance, gaussian_stats
from harness.report.baselines import list_baseline_tables
from harness.report.results import RUN_COLUMNS
from tests.helpers import suite_text

SUITE = "toy"


def make_run(runs_dir: Path, run: str, config: dict, cost: dict | None = None, metrics: dict | None = None,
             dry_run: bool = False, n_images: int = 5, seed: int = 0) -> Path:
    """A finished (or partly finished) fake run directory as the runner and metrics stages leave it."""
    run_dir = runs_dir / SUITE / run
    run_dir.mkdir(parents=True)
    manifest = {"run": run, "suite": SUITE, "config": config, "config_hash": "abc123",
                "versions": {"harness": "0.1.0", "torch": "2.x"}, "device": "cpu", "dry_run": dry_run}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    if cost is not None:
        (run_dir / "cost.json").write_text(json.dumps(cost))
    if metrics is not None:
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n_images, 8, 8, 3), dtype=np.uint8)
    np.savez(run_dir / "samples-000000.npz", arr_0=images, labels=np.arange(n_images, dtype=np.int64),
             indices=np.arange(n_images, dtype=np.int64))
    return run_dir


def cost_of(gflops: float, img_per_s: float) -> dict:
    """A cost.json body."""
    return {"gflops": gflops, "gflops_full": gflops * 1.04, "tflops_image": gflops * 40 / 1000, "nfe": 80,
            "img_per_s": img_per_s, "img_per_s_e2e": img_per_s * 0.9, "sec_per_step": 0.01,
            "peak_mem_mb": 100.0, "device": "cpu"}


def toy_suite(runs_dir: Path, dry_run: bool = False) -> None:
    """Three runs: unguided, CFG and SG (with a cosine schedule), all evaluated."""
    make_run(runs_dir, "none", {"method": "none", "model": "main", "omega": 1.0, "steps": 40, "samples": 5},
             cost_of(10.0, 50.0), {"fid": 9.0, "fid_ci": [8.5, 9.5], "is": 20.0}, dry_run=dry_run, seed=1)
    make_run(runs_dir, "cfg-omega1.5", {"method": "cfg", "model": "main", "omega": 1.5, "steps": 40,
                                        "samples": 5}, cost_of(20.0, 25.0),
             {"fid": 4.0, "fid_ci": [3.8, 4.2], "is": 30.0}, dry_run=dry_run, seed=2)
    # The runner's nested layout of a resolved config (harness.suite), with the run mapped to a paper row.
    sg_config = {"suite": {"name": SUITE, "seed": 0}, "sampler": {"kind": "euler", "steps": 40},
                 "models": {"main": {"arch": "SiT-S/2", "sparsity": "routing"}},
                 "run": {"id": "sg", "name": "sg", "method": "sg", "model": "main", "omega": 1.5, "samples": 5,
                         "gamma_strong": {"schedule": "cosine", "start": 0.0, "end": 0.6}, "gamma_weak": 0.9,
                         "paper": ["sg_table2:SG_FLOPS"]}}
    make_run(runs_dir, "sg", sg_config, cost_of(8.0, 60.0), {"fid": 4.1, "fid_ci": [3.9, 4.3], "is": 25.0},
             dry_run=dry_run, seed=3)


def row_cells(tables_md: str, first_cell: str) -> list[dict[str, str]]:
    """The markdown table lines of tables.md whose first cell is `first_cell`, as header -> cell dicts."""
    rows, header = [], None
    for line in tables_md.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        if header is None:
            header = cells
        elif cells[0] == first_cell:
            rows.append(dict(zip(header, cells)))
    return rows


# ---------------------------------------------------------------- Pareto fronts

def test_pareto_front_lower_is_better_with_ties() -> None:
    df = pd.DataFrame({"run": list("abcdefgh"),
                       "gflops": [1, 2, 2, 3, 4, 4, 5, np.nan],
                       "fid": [5, 3, 4, 3, 1, 1, 2, 0.1]})
    front = pareto_front(df, "fid", "gflops", higher_is_better=False)
    # c: same cost as b, worse FID; d: same FID as b, more cost; g: worse and dearer than e; h: no cost.
    # e and f are the same point: neither dominates the other.
    assert list(front["run"]) == ["a", "b", "e", "f"]


def test_pareto_front_higher_is_better_and_throughput() -> None:
    df = pd.DataFrame({"run": list("abcde"), "img_per_s": [1.0, 2.0, 2.0, 0.5, 3.0],
                       "is": [300.0, 250.0, 200.0, 290.0, 100.0]})
    front = pareto_front(df, "is", "img_per_s", higher_is_better=True)
    assert list(front["run"]) == ["a", "b", "e"]
    # Read as lower-is-better quality, the low-IS fast run e dominates everything slower and lower.
    low = pareto_front(df, "is", "img_per_s", higher_is_better=False)
    assert list(low["run"]) == ["e"]
    with pytest.raises(HarnessError, match="unknown"):
        pareto_front(df.rename(columns={"img_per_s": "speed"}), "is", "speed", higher_is_better=True)


# ---------------------------------------------------------------- Bootstrap intervals

def test_bootstrap_interval_shrinks_with_more_samples() -> None:
    rng = np.random.default_rng(0)
    d = 8
    ref = rng.normal(size=(20000, d))
    ref_mu, ref_sigma = ref.mean(axis=0), np.cov(ref, rowvar=False)
    features = rng.normal(loc=0.3, size=(3200, d))
    small = bootstrap_fd(features[:200], ref_mu, ref_sigma, n_boot=200, seed=1)
    large = bootstrap_fd(features, ref_mu, ref_sigma, n_boot=200, seed=1)
    assert small[0] < small[1] and large[0] < large[1]
    # The width scales like 1/sqrt(n): 16x more samples should give about a quarter of the width.
    assert (large[1] - large[0]) < (small[1] - small[0]) / 2.5
    assert bootstrap_fd(features[:200], ref_mu, ref_sigma, n_boot=200, seed=1) == small
    fd = frechet_distance(gaussian_stats(features), GaussianStats(ref_mu, ref_sigma))
    assert large[0] - 0.05 < fd < large[1] + 0.05


def test_compare_rows_calls_only_disjoint_intervals() -> None:
    a = pd.Series({"fid": 2.0, "fid_lo": 1.9, "fid_hi": 2.1, "is": 250.0})
    b = pd.Series({"fid": 2.05, "fid_lo": 1.95, "fid_hi": 2.15, "is": 240.0})
    c = pd.Series({"fid": 2.5, "fid_lo": 2.4, "fid_hi": 2.6, "is": 250.0})
    assert compare_rows(a, b, "fid") == "not called better"
    assert compare_rows(b, a, "fid") == "not called better"
    assert compare_rows(a, c, "fid") == "better"
    assert compare_rows(c, a, "fid") == "worse"
    # Without intervals, points compare as they are; IS is higher-is-better.
    assert compare_rows(a, b, "is") == "better"
    assert compare_rows(a, c, "is") == "not called better"


# ---------------------------------------------------------------- Results table

def test_collect_results_reads_run_directories(tmp_path: Path) -> None:
    toy_suite(tmp_path / "runs")
    make_run(tmp_path / "runs", "pending", {"method": "cfg", "omega": 2.0, "steps": 40, "samples": 9})
    df = collect_results(tmp_path / "runs", SUITE, tmp_path / "reports")
    assert list(df.columns[:len(RUN_COLUMNS)]) == RUN_COLUMNS
    assert sorted(df["run"]) == ["cfg-omega1.5", "none", "pending", "sg"]
    sg = df.set_index("run").loc["sg"]
    assert sg["gamma_strong"] == "cos(0->0.6)" and sg["gamma_weak"] == 0.9
    assert (sg["model"], sg["method"], sg["steps"], sg["omega"]) == ("SiT-S/2", "sg", 40, 1.5)
    assert (sg["fid"], sg["fid_lo"], sg["fid_hi"], sg["gflops"], sg["samples"]) == (4.1, 3.9, 4.3, 8.0, 5)
    pending = df.set_index("run").loc["pending"]
    assert np.isnan(pending["fid"]) and np.isnan(pending["gflops"]) and pending["samples"] == 5
    loaded = load_results(SUITE, tmp_path / "reports")
    pd.testing.assert_frame_equal(loaded.drop(columns=["gamma_strong", "gamma_weak"]),
                                  df.drop(columns=["gamma_strong", "gamma_weak"]), check_dtype=False)
    assert list(loaded["gamma_weak"].fillna(-1)) == list(df["gamma_weak"].fillna(-1))
    with pytest.raises(HarnessError, match="no results"):
        load_results("other", tmp_path / "reports")


# ---------------------------------------------------------------- report.md

def test_report_contains_every_run_and_every_figure(tmp_path: Path) -> None:
    toy_suite(tmp_path / "runs", dry_run=True)
    report = write_report(SUITE, tmp_path / "runs", tmp_path / "reports", {"sampler.steps": 40},
                          paper_map={"sg": "sg_table2:SG_FLOPS", "cfg-omega1.5": "sg_table2:CFG"})
    text = report.read_text()
    out = report.parent
    assert "**Every number in this report is from a dry run with random weights" in text.split("## What")[0]
    for run in ("none", "cfg-omega1.5", "sg"):
        assert f"| {run} |" in text and f"samples/{run}.png" in text
        grid = imread(out / "samples" / f"{run}.png")
        assert grid.shape[:2] == (2 * 8 + 2, 3 * 8 + 2 * 2)  # 5 images of 8x8: 2 rows of 3, 2-pixel gaps
    figures = sorted(p.name for p in (out / "figures").iterdir())
    expected = {f"pareto-{q}-{c}.{e}" for q in ("fid", "is") for c in ("gflops", "tflops_image", "img_per_s")
                for e in ("png", "pdf")}
    assert set(figures) == expected
    for name in figures:
        assert f"figures/{name}" in text
    assert "FID↓" in text and "IS↑" in text and "4.00 ± 0.2" in text
    assert (out / "tables.md").is_file() and (out / "tables.tex").is_file() and "Table 2" in text


def test_no_dry_run_banner_for_real_runs(tmp_path: Path) -> None:
    toy_suite(tmp_path / "runs")
    text = write_report(SUITE, tmp_path / "runs", tmp_path / "reports", paper_map={}).read_text()
    assert "dry run" not in text and "tables.md" not in text


def test_paper_map_defaults_to_the_manifests(tmp_path: Path) -> None:
    toy_suite(tmp_path / "runs")
    text = write_report(SUITE, tmp_path / "runs", tmp_path / "reports").read_text()
    (sg,) = row_cells(text, "+ SG_FLOPS")
    assert sg["run"] == "sg" and sg["FID↓ meas."] == "4.10 ± 0.2" and sg["FID↓ rep."] == "2.14"
    assert row_cells(text, "+ CFG")[0]["run"] == "—"


# ---------------------------------------------------------------- Paper tables

def test_reported_numbers_never_appear_as_measured(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    make_run(runs, "unguided", {"method": "none", "omega": 1.0}, cost_of(10.0, 5.0), {"fid": 6.0})
    make_run(runs, "cfg", {"method": "cfg", "omega": 1.5}, cost_of(20.0, 2.5), {"fid": 3.1, "fid_ci": [3.0, 3.2]})
    make_run(runs, "sg_flops", {"method": "sg", "omega": 1.5, "gamma_strong": 0.5, "gamma_weak": 0.9})
    df = collect_results(runs, SUITE, tmp_path / "reports")
    paper_map = {"unguided": "sg_table2:unguided", "cfg": ["sg_table2:CFG"], "sg_flops": "sg_table2:SG_FLOPS"}
    md_path, tex_path = write_paper_tables(df, paper_map, tmp_path / "reports" / SUITE)
    md = md_path.read_text()
    (sg,) = row_cells(md, "+ SG_FLOPS")
    assert sg["run"] == "sg_flops" and sg["FID↓ rep."] == "2.14" and sg["GFLOPs↓ rep."] == "97.67"
    assert sg["FID↓ meas."] == "—" and sg["FID↓ Δ"] == "—" and sg["GFLOPs↓ meas."] == "—"
    (cfg,) = row_cells(md, "+ CFG")
    assert cfg["FID↓ meas."] == "3.10 ± 0.1" and cfg["FID↓ Δ"] == "+0.53"
    assert cfg["ΔGFLOPs↓ meas."] == "10.00" and cfg["ΔGFLOPs↓ rep."] == "114.42"
    (ag,) = row_cells(md, "+ AG")
    assert ag["run"] == "—" and ag["FID↓ meas."] == "—"
    # Only tables that the suite maps runs to; peer tables are not dragged in.
    assert "Table 2" in md and "Table 3" not in md
    tex = tex_path.read_text()
    assert r"\toprule" in tex and r"\multicolumn{3}{c}{FID$\downarrow$}" in tex and "97.67" in tex
    csv_text = (tmp_path / "reports" / SUITE / "results.csv").read_text()
    for reported in ("2.14", "97.67", "2.57", "228.84", "4.89", "114.42"):
        assert reported not in csv_text


def test_paper_map_errors_name_the_run(tmp_path: Path) -> None:
    df = pd.DataFrame({"run": ["a"], "method": ["cfg"], "fid": [2.0]})
    with pytest.raises(HarnessError, match="run 'a'.*no row 'NOPE'"):
        write_paper_tables(df, {"a": "sg_table2:NOPE"}, tmp_path)
    with pytest.raises(HarnessError, match="run 'a'.*must look like"):
        write_paper_tables(df, {"a": "SG_FLOPS"}, tmp_path)
    with pytest.raises(HarnessError, match="no such baseline table"):
        write_paper_tables(df, {"a": "nope:x"}, tmp_path)


def test_every_baseline_table_is_sourced_and_reported() -> None:
    names = list_baseline_tables()
    assert names[:8] == ["sg_table1", "sg_table2", "sg_table3", "sg_table4", "sg_table5", "sg_tableA1",
                         "sg_tableA2", "peers"]
    for name in names:
        table = load_baseline_table(name)
        assert len(table) > 0 and (table["kind"] == "reported").all()
    peers = load_baseline_table("peers").set_index("id")
    assert peers.loc["DiT-XL2_cfg1.5", "fid"] == 2.27 and peers.loc["REPA_SiT-XL2", "fid"] == 1.42
    assert load_baseline_table("sg_table2").set_index("id").loc["SG_FID", "gflops"] == 173.16


def test_unmapped_paper_report_shows_all_tables_unmeasured(tmp_path: Path) -> None:
    df = pd.DataFrame({"run": ["a"], "method": ["cfg"], "fid": [2.27]})
    md = write_paper_tables(df, {}, tmp_path)[0].read_text()
    assert all(t in md for t in ("Table 1", "Table 5", "Table A2", "Peer results"))
    assert not re.search(r"\| a \|", md)  # no run is mapped, so none is shown as measured


# ---------------------------------------------------------------- CLI hook

def test_report_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    toy_suite(tmp_path / "runs")
    suite_file = tmp_path / "toy.toml"
    table = {"name": SUITE, "samples": 5, "batch_size": None, "seed": None, "metrics": None}
    suite_file.write_text(suite_text(suite=table, sampler={"steps": 40}, models={}, runs=[]))  # report reads these two
    parser = argparse.ArgumentParser(prog="harness")
    add_report_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(suite_file), "--runs-dir", str(tmp_path / "runs"),
                              "--reports-dir", str(tmp_path / "reports"), "--paper"])
    assert args.func(args) == 0
    text = (tmp_path / "reports" / SUITE / "report.md").read_text()
    assert "sampler.steps: 40" in text and "Paper tables" in text
    assert "report.md" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text("[suite\n")
    with pytest.raises(HarnessError, match="bad.toml: TOML syntax error"):
        args.func(parser.parse_args(["report", str(bad)]))


def test_throughput_cell_shows_the_spread_and_marks_a_noisy_measurement():
    from harness.report.page import throughput_cell

    steady = pd.Series({"img_per_s": 10.0, "img_per_s_iqr": 0.4, "img_per_s_spread": 0.04})
    assert throughput_cell(steady) == "10.00 ± 0.2"
    noisy = pd.Series({"img_per_s": 10.0, "img_per_s_iqr": 3.0, "img_per_s_spread": 0.3})
    assert throughput_cell(noisy) == "10.00 ± 1.5 *noisy*"
    assert throughput_cell(pd.Series({"img_per_s": math.nan, "img_per_s_iqr": math.nan})) == "—"


def test_every_listed_metric_reaches_the_table_the_report_and_a_figure(tmp_path: Path) -> None:
    # ADM's `precision` metric beside a run's numeric setting (bf16): both kept, under their own columns
    metrics = {"fid": 4.0, "sfid": 5.0, "is": 30.0, "precision": 0.7, "recall": 0.6, "fd_testbed": 2.0,
               "precision_testbed": 0.5, "recall_testbed": 0.4, "class_acc": 0.9}
    config = {"run": {"method": "cfg", "model": "main", "omega": 1.5, "samples": 5, "precision": "bf16"}}
    for i, run in enumerate(("a", "b")):
        make_run(tmp_path / "runs", run, config, {**cost_of(10.0 + i, 50.0), "precision": "bf16"},
                 {k: v + i for k, v in metrics.items()}, seed=i)
    report = write_report(SUITE, tmp_path / "runs", tmp_path / "reports")
    results = pd.read_csv(report.parent / "results.csv")
    assert list(results["numerics"]) == ["bf16", "bf16"]
    text = report.read_text()
    for metric, value in metrics.items():
        assert list(results[metric]) == [value, value + 1], metric
        assert (report.parent / "figures" / f"pareto-{metric}-gflops.png").is_file(), metric
        assert f"figures/pareto-{metric}-gflops.png" in text, metric
    header = next(line for line in text.splitlines() if line.startswith("| run"))
    for label in ("FID", "sFID", "IS", "Prec.", "Rec."):
        assert f" {label}" in header, label
