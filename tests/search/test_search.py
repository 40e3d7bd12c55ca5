"""harness search: interval-aware promotion, budgets, the full-grid comparison on the testbed, and the real loop on a
tiny grid (images kept on promotion, resume, the same front twice)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import harness.search.loop as loop
from harness.cli import main
from harness.errors import HarnessError
from harness.search.loop import SearchOptions, replay
from harness.search.policy import (
    Score,
    check_rungs,
    choose_promotions,
    default_rungs,
    dominators,
    front,
    front_covers,
    parse_budget,
)
from harness.suite import load_suite

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "search"


#################################################################################
#                                  The policy                                   #
#################################################################################


def test_a_point_is_dropped_only_when_a_cheaper_interval_lies_wholly_below_its_own():
    scores = [Score("cheap", 1.0, 10.0, 9.0, 11.0), Score("overlaps", 2.0, 10.5, 10.0, 12.0),
              Score("beaten", 2.0, 14.0, 13.0, 15.0), Score("better_dearer", 3.0, 5.0, 4.0, 6.0),
              Score("bad_but_cheapest", 0.5, 30.0, 29.0, 31.0)]
    assert dominators(scores) == {"cheap": None, "overlaps": None, "beaten": "cheap", "better_dearer": None,
                                  "bad_but_cheapest": None}
    assert front(scores) == ["bad_but_cheapest", "cheap", "better_dearer"]


def test_promotions_stay_within_the_allowance_most_promising_first():
    scores = [Score(f"p{i}", float(i), 10.0 - i, 9.0 - i, 11.0 - i) for i in range(4)]  # all overlap their neighbour
    scores.append(Score("dominated", 3.0, 50.0, 49.0, 51.0))
    prices = {s.run: 10.0 for s in scores}
    assert choose_promotions(scores, prices, allowance=1000) == ["p0", "p1", "p2", "p3"]
    two = choose_promotions(scores, prices, allowance=25)
    assert len(two) == 2 and "dominated" not in two
    assert two == choose_promotions(list(scores), dict(prices), allowance=25)  # a function of the scores alone
    # the current front goes first: the cheapest point, though its margin to its same-cost peer is the largest
    layered = [Score("cheap_best", 1.0, 20.0, 19.0, 21.0), Score("cheap_peer", 1.0, 20.5, 18.0, 22.0),
               Score("dear", 2.0, 19.0, 16.0, 23.0), Score("dear_peer", 2.0, 19.5, 16.5, 22.5)]
    assert choose_promotions(layered, {s.run: 1.0 for s in layered}, allowance=2) == ["cheap_best", "dear"]
    assert len(choose_promotions(scores, prices, allowance=1)) == 1  # the best one still goes on when the
    assert choose_promotions(scores, prices, allowance=1, at_least_one=False) == []  # budget allows it


def test_budgets_and_rungs():
    assert parse_budget("25%", 30720).amount == 7680
    assert parse_budget("8000", 30720).amount == 8000
    hours = parse_budget("2.5h", 30720)
    assert (hours.amount, hours.unit) == (2.5, "gpu_hours")
    for bad in ("0", "-5", "150%", "lots", "0h"):
        with pytest.raises(HarnessError, match="--budget"):
            parse_budget(bad, 100)
    assert default_rungs(256, 32) == [32, 128, 256]
    assert default_rungs(5000, 64) == [640, 2496, 5000]
    assert default_rungs(16, 4) == [4, 8, 16]
    with pytest.raises(HarnessError, match="multiple of the suite's batch_size 32"):
        check_rungs([48, 256], 256, 32)
    with pytest.raises(HarnessError, match="last rung"):
        check_rungs([32, 128], 256, 32)


#################################################################################
#                   The testbed: search against the full grid                   #
#################################################################################


def _reference():
    table = pd.read_csv(FIXTURES / "reference.csv")
    prefix = json.loads((FIXTURES / "prefix_metrics.json").read_text())["points"]
    return table, prefix


def _scores(table: pd.DataFrame) -> list[Score]:
    return [Score(r.run, r.gflops, r.fd_testbed, r.fd_testbed_lo, r.fd_testbed_hi) for r in table.itertuples()]


@pytest.mark.parametrize("grid", ["full", "sg_only"])
def test_search_finds_the_full_grids_front_with_a_quarter_of_its_samples(grid):
    # The full grid of suites/testbed_search.toml, measured once at its 256 samples (tests/fixtures/search/README.md);
    # a point at n samples is its run's first n images, so the search sees the prefix measurements.
    suite = load_suite(REPO / "suites" / "testbed_search.toml", root=REPO)
    table, prefix = _reference()
    runs = [r for r in suite.runs if grid == "full" or r.method == "sg"]
    table = table[table["run"].isin([r.run_id for r in runs])]
    assert len(runs) == len(table) == (60 if grid == "full" else 36)
    costs = {r.run: {"gflops": r.gflops} for r in table.itertuples()}
    options = SearchOptions("fd_testbed", "gflops", (32, 128, 256), "25%", REPO / "runs")
    record = replay(runs, options, costs, lambda run, n: prefix[run.run_id][str(n)])
    assert record["samples_spent"] <= 0.25 * record["samples_full_grid"]
    reference = _scores(table)
    reference_front = [s for s in reference if s.run in front(reference)]
    found = [s for s in reference if s.run in record["front"]]
    assert front_covers(reference_front, found) == []
    if grid == "full":  # README: "found the full grid's front exactly"
        assert sorted(record["front"]) == sorted(s.run for s in reference_front)
    # the top rung's values are the full grid's: the same images
    top = {s["run"]: s for s in record["rungs"][-1]["scores"]}
    for s in found:
        assert top[s.run]["value"] == pytest.approx(s.value, rel=1e-12)
    again = replay(runs, options, costs, lambda run, n: prefix[run.run_id][str(n)])
    assert again == record
    if grid == "full":  # the real `harness search` (torchrun, 2 processes) measured and decided the same
        real = json.loads((FIXTURES / "search_run.json").read_text())
        for key in ("promotions", "front", "samples", "samples_spent", "samples_full_grid"):
            assert real[key] == record[key], key
        assert [r["scores"] for r in real["rungs"]] == [r["scores"] for r in record["rungs"]]


def test_reference_is_the_prefix_measurement_at_full_samples():
    table, prefix = _reference()
    for row in table.itertuples():
        full = prefix[row.run][str(row.samples)]
        assert full["fd_testbed"] == row.fd_testbed and full["fd_testbed_ci"] == [row.fd_testbed_lo,
                                                                                row.fd_testbed_hi]


#################################################################################
#                          The real loop on a tiny grid                         #
#################################################################################

@pytest.fixture
def tiny_suite(write_suite):
    """An SG grid of four runs on the committed routing testbed model, measured against 200 reference images."""
    return write_suite("tiny.toml", suite={"name": "tiny_search", "labels": "balanced", "reference": "testbed:200",
                                           "metrics": ["fd_testbed", "class_acc"]},
                       main={"arch": "Testbed-S/4", "route": [1, 4],
                             "checkpoint": str(REPO / "checkpoints" / "testbed_routing.safetensors")},
                       runs=[{"name": "sg", "method": "sg", "gamma_strong": [0.0, 0.5], "gamma_weak": 0.9,
                              "omega": [1.5, 4.0]}])


def _search(suite: Path, out: Path, *extra: str) -> int:
    return main(["search", str(suite), "--out", str(out), "--reports", str(out.parent / f"{out.name}-reports"),
                 "--device", "cpu", "--budget", "24", *extra])


def _decisions(record: dict) -> dict:
    return {k: record[k] for k in ("rungs", "promotions", "front", "samples", "samples_spent", "samples_full_grid")}


def test_search_keeps_images_resumes_and_repeats(tiny_suite, tmp_path, monkeypatch):
    generated = []
    real = loop.generate_suite

    def spy(*args, **kwargs):
        results = real(*args, **kwargs)
        generated.append({r.run_id: (r.generated, r.kept) for r in results})
        return results

    monkeypatch.setattr(loop, "generate_suite", spy)
    out = tmp_path / "runs"
    assert _search(tiny_suite, out) == 0
    record = json.loads((out / "tiny_search" / "search.json").read_text())
    # 4 points x 4 samples, then the budget of 24 takes two points on to 8; the full grid would be 32
    assert [len(r["scores"]) for r in record["rungs"]] == [4, 2]
    assert record["samples_spent"] == 24 and record["samples_full_grid"] == 32 and record["complete"]
    promoted = record["rungs"][0]["promoted"]
    assert generated[0] == {run: (4, 0) for run in record["points"]}
    assert generated[1] == {run: (4, 4) for run in promoted}  # the first 4 images kept, 4 more generated
    assert set(record["front"]) <= set(promoted)
    for run in record["points"]:
        shards = sorted(p.name for p in (out / "tiny_search" / run).glob("samples-*.npz"))
        assert shards == (["samples-000000.npz", "samples-000004.npz"] if run in promoted else ["samples-000000.npz"])
        manifest = json.loads((out / "tiny_search" / run / "manifest.json").read_text())
        assert manifest["complete"] is (run in promoted)
    results = pd.read_csv(tmp_path / "runs-reports" / "tiny_search" / "results.csv")
    assert dict(zip(results["run"], results["samples"])) == record["samples"]
    report = (tmp_path / "runs-reports" / "tiny_search" / "report.md").read_text()
    assert "spent **24 of the 32 samples**" in report and "a saving of 25.0%" in report
    assert (tmp_path / "runs-reports" / "tiny_search" / "figures" / "search-fd_testbed-gflops.png").is_file()

    # the promoted point's images are exactly the first images of the full run
    from harness.generate import generate_suite
    from harness.rundir import read_samples

    suite = load_suite(tiny_suite)
    run = next(r for r in suite.runs if r.run_id == promoted[0])
    monkeypatch.setattr(loop, "generate_suite", real)
    generate_suite(suite, [run], tmp_path / "plain", "cpu")
    searched, plain = read_samples(out / "tiny_search" / run.run_id), read_samples(tmp_path / "plain" /
                                                                                    "tiny_search" / run.run_id)
    assert np.array_equal(searched[0], plain[0]) and np.array_equal(searched[1], plain[1])

    # a rerun resumes: nothing generated, the same decisions
    generated.clear()
    monkeypatch.setattr(loop, "generate_suite", spy)
    assert _search(tiny_suite, out) == 0
    assert all(g == 0 for rung in generated for g, _ in rung.values())
    assert _decisions(json.loads((out / "tiny_search" / "search.json").read_text())) == _decisions(record)
    # a second search from scratch elsewhere: the same front, the same promotions, the same measured values
    assert _search(tiny_suite, tmp_path / "again") == 0
    assert _decisions(json.loads((tmp_path / "again" / "tiny_search" / "search.json").read_text())) == \
        _decisions(record)


def test_search_errors_name_the_option(tiny_suite, tmp_path, capsys):
    assert _search(tiny_suite, tmp_path / "r", "--rungs", "3,8") == 2
    assert "--rungs [3, 8]" in capsys.readouterr().err
    assert _search(tiny_suite, tmp_path / "r", "--metric", "fid") == 2
    assert "--metric fid: not among" in capsys.readouterr().err
    assert main(["search", str(tiny_suite), "--out", str(tmp_path / "r"), "--budget", "19"]) == 2
    assert "--budget 19" in capsys.readouterr().err  # the first rung (16) and one point to the top (4) need 20
    assert not list(tmp_path.glob("r/tiny_search/*/samples-*.npz"))  # said before anything was generated


def test_search_plans_the_imagenet_ablation(capsys):
    assert main(["search", str(REPO / "suites" / "imagenet256_ablation.toml"), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "points: 443" in out and "rungs (samples per point): 640, 2496, 5000" in out
    assert "full grid: 2,215,000 samples" in out and "budget: 553,750 samples (25.0% of the full grid)" in out


def test_dry_search_of_the_imagenet_ablation(tmp_path, capsys):
    pytest.importorskip("diffusers")
    # the real suite file, scored with IS: FID's 2048 x 2048 matrix square roots take minutes on a CPU (tested in
    # test_metrics.py); the search code does not depend on which metric it ranks by
    text = (REPO / "suites" / "imagenet256_ablation.toml").read_text()
    assert 'metrics = ["fid"]' in text
    suite = tmp_path / "imagenet256_ablation.toml"
    suite.write_text(text.replace('metrics = ["fid"]', 'metrics = ["is"]'))
    runs = tmp_path / "runs"
    code = main(["search", str(suite), "--root", str(tmp_path), "--dry-run", "--dry-run-arch", "Testbed-XS/4",
                 "--steps", "1", "--samples", "8", "--only", r"^fig8_routing-gs0-gw0\.[59]-", "--device", "cpu",
                 "--out", str(runs), "--reports", str(tmp_path / "reports"), "--budget", "75%"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((runs / "imagenet256_ablation-dryrun" / "search.json").read_text())
    assert record["dry_run"] and record["metric"] == "is" and record["rung_samples"] == [4, 8]
    assert len(record["points"]) == 4 and record["samples_full_grid"] == 32 and record["samples_spent"] <= 24
    assert math.isfinite(record["rungs"][0]["scores"][0]["value"])
    report = (tmp_path / "reports" / "imagenet256_ablation-dryrun" / "report.md").read_text()
    assert "dry run with random weights" in report and "## Search" in report


def test_search_by_throughput_under_a_gpu_hour_budget(tiny_suite, tmp_path):
    out = tmp_path / "runs"
    assert main(["search", str(tiny_suite), "--out", str(out), "--reports", str(tmp_path / "reports"),
                 "--device", "cpu", "--cost", "img_per_s", "--budget", "1h"]) == 0
    record = json.loads((out / "tiny_search" / "search.json").read_text())
    assert record["cost"] == "img_per_s" and record["budget"]["unit"] == "gpu_hours"
    rates = {run: json.loads((out / "tiny_search" / run / "cost.json").read_text())["img_per_s"]
             for run in record["points"]}
    spent = sum(n / rates[run] / 3600 for run, n in record["samples"].items())
    assert record["budget_spent"] == pytest.approx(spent) and spent < 1
    assert all(s["cost"] == -rates[s["run"]] for s in record["rungs"][0]["scores"])  # more img/s is better


def test_search_checks_metric_with_plan_and_budget_before_writing_anything(tiny_suite, tmp_path, capsys):
    assert main(["search", str(tiny_suite), "--plan", "--metric", "fid"]) == 2
    assert "--metric fid: not among" in capsys.readouterr().err
    assert main(["search", str(tiny_suite), "--out", str(tmp_path / "r"), "--budget", "19"]) == 2
    assert "--budget 19" in capsys.readouterr().err
    assert not list((tmp_path / "r").rglob("*.json"))  # no cost.json: refused before any work


def test_fd_intervals_contain_their_point_and_asymmetric_ones_print_as_ranges():
    from harness.metrics.evaluate import compute_metrics
    from harness.report.formatting import fmt_interval

    rng = np.random.default_rng(0)
    for seed in range(5):  # a few images: the bootstrap's FDs all lie above the point
        features = {"pool": rng.normal(size=(6, 4)) + seed}
        out = compute_metrics(["fd_inception"], samples=lambda _, f=features: f,
                              reference=lambda _: {"pool": rng.normal(size=(50, 4))}, bootstrap=200)
        lo, hi = out["fd_inception_ci"]
        assert lo <= out["fd_inception"] <= hi
    assert fmt_interval(4.0, 3.8, 4.2) == "4.00 ± 0.2"
    assert fmt_interval(4.0, 4.0, 6.0) == "4.00 [4, 6]"
