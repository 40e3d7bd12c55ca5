"""Every number the README states as measured equals the committed result file that a committed command wrote.

A rerun that changes a result file fails here until the README quotes the new number. The files and the commands that
write them: perf/results/*.json (`python -m perf.readme_results ...`), tests/fixtures/search/ (its README), and
checkpoints/testbed_record.json (`make testbed`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = " ".join((ROOT / "README.md").read_text().split())  # one line, single spaces: sentences wrap anywhere
RESULTS = ROOT / "perf" / "results"
SEARCH = ROOT / "tests" / "fixtures" / "search"


def quoted(pattern: str) -> tuple[str, ...]:
    """The groups of the README's one match of `pattern` (a regex over the whitespace-normalised README)."""
    found = re.findall(pattern, README)
    assert len(found) == 1, f"README: expected one match of {pattern!r}, found {len(found)}: reword the test or README"
    return found[0] if isinstance(found[0], tuple) else (found[0],)


def load(path: Path) -> dict:
    """A result file, checked to say where and when it was measured."""
    data = json.loads(path.read_text())
    assert {"command", "machine", "date"} <= set(data) or {"machine", "date"} <= set(data), path
    return data


def test_result_files_record_command_machine_and_date():
    files = sorted(RESULTS.glob("*.json"))
    assert files, "perf/results/ is empty"
    for path in files:
        data = load(path)
        assert data["command"].startswith("python -m perf.") and data["machine"] and data["date"], path
        assert f"perf/results/{path.name}" in README, f"README does not cite {path.name}"


def test_search_numbers_are_the_committed_search_and_full_grid():
    run = json.loads((SEARCH / "search_run.json").read_text())
    spent, total, share, saving, *rungs = quoted(
        r"spent \*\*([\d,]+) of the ([\d,]+) samples\*\* the full grid needs \(([\d.]+)%, a saving of ([\d.]+)%: "
        r"(\d+) points at (\d+) samples, (\d+) at (\d+), (\d+) at (\d+)\)")
    assert (spent, total) == (f"{run['samples_spent']:,}", f"{run['samples_full_grid']:,}")
    assert (share, saving) == (f"{100 * run['fraction_of_full_grid']:.1f}", f"{100 - 100 * run['fraction_of_full_grid']:.1f}")
    assert [int(v) for v in rungs] == [x for r in run["rungs"] for x in (len(r["scores"]), r["samples"])]
    reference = pd.read_csv(SEARCH / "reference.csv").set_index("run")
    quotes = re.findall(r"`(cfg_sg-[\w.-]+)` \(([\d.]+) GFLOPs, (?:fd_testbed )?([\d.]+) \[([\d.]+), ([\d.]+)\]\)",
                        README)
    assert [q[0] for q in quotes] == run["front"]
    for name, gflops, value, lo, hi in quotes:
        row = reference.loc[name]
        assert gflops == f"{row.gflops:.4f}"
        assert (value, lo, hi) == tuple(f"{row[c]:.2f}" for c in ("fd_testbed", "fd_testbed_lo", "fd_testbed_hi"))


def test_launch_scaling_numbers_are_its_result_file():
    data = load(RESULTS / "launch_scaling-2026-12-05.json")
    command, samples, cycle, share, *walls = quoted(
        r"\(`(python -m perf\.launch_scaling[^`]*)`, `perf/results/launch_scaling-2026-12-05\.json`: the testbed's "
        r"`sg-omega2`, (\d+) images, this 2-core CPU\): a claim cycle \(claim, heartbeat, done, release\) takes ([\d.]+) "
        r"ms, ([\d.]+)% of the generation time; wall seconds, process start to last image, are ([\d.]+) for one "
        r"`harness generate`, ([\d.]+) for a local launch of 1 worker, ([\d.]+) for 2 workers and ([\d.]+) for 2 "
        r"torchrun processes")
    assert command == data["command"] and int(samples) == data["samples"]
    assert cycle == f"{data['claim_cycle_ms']:.2f}"
    assert share == f"{100 * data['single_process']['claim_share']:.3f}"
    assert walls == [f"{v:.1f}" for v in data["wall_s"].values()]


def test_rendered_scene_scores_are_the_detector_result_file():
    data = load(RESULTS / "t2i_detector_rendered.json")
    seeds = data["seeds"]
    s0, s1, score0, score1, count0, count1 = quoted(
        r"at drawing seeds (\d+) and (\d+) score ([\d.]+) and ([\d.]+) \(counting ([\d.]+) and ([\d.]+)")
    assert [s0, s1] == list(seeds)
    assert [score0, score1] == [f"{seeds[s]['geneval']:.3f}" for s in seeds]
    assert [count0, count1] == [f"{seeds[s]['geneval_counting']:.3f}" for s in seeds]


def test_testbed_training_numbers_are_the_training_record():
    record = json.loads((ROOT / "checkpoints" / "testbed_record.json").read_text())
    (longest,) = quoted(r"the longest (\d+) minutes, `checkpoints/testbed_record.json`")
    assert int(longest) == round(max(record[p]["seconds"] for p in ("routing", "masking")) / 60)
    t2i, first = record["t2i"], record["t2i"]["init_from"]
    steps1, batch, lr1, steps2, lr2, minutes = quoted(
        r"trained in two stages \((\d+) steps at batch (\d+) and lr ([\de.-]+), then (\d+) at ([\de.-]+) from its EMA "
        r"weights; (\d+) minutes")
    assert (int(steps1), int(batch), float(lr1)) == (first["steps"], first["batch"], first["lr"])
    assert (int(steps2), float(lr2), t2i["batch"]) == (t2i["steps"], t2i["lr"], first["batch"])
    assert int(minutes) == round((first["seconds"] + t2i["seconds"]) / 60)
    gate = t2i["gate"]
    lo, hi, random, random_lo, random_hi = quoted(
        r"unguided scores ([\d.]+)-([\d.]+) against ([\d.]+) \[([\d.]+), ([\d.]+)\] for random scenes")
    unguided = gate["unguided"].values()
    assert (lo, hi) == (f"{min(unguided):.2f}", f"{max(unguided):.2f}")
    rnd = gate["random_scenes"]
    assert (random, random_lo, random_hi) == tuple(f"{rnd[k]:.2f}" for k in ("geneval_testbed", "lo", "hi"))


def test_geneval_agreement_count_is_the_fixture():
    cases = json.loads((ROOT / "tests" / "fixtures" / "geneval_official_cases.json").read_text())["cases"]
    (count,) = quoted(r"`tests/fixtures/geneval_official_cases.json` holds (\d+) random cases")
    assert int(count) == len(cases)
    assert not re.search(r"\b20,000\b", README)


@pytest.mark.parametrize("claim", ["found the full grid's front exactly", "bit-identical weights"])
def test_claims_name_the_test_behind_them(claim):
    """The qualitative claims the issue found untested now cite the test that checks them."""
    at = README.index(claim)
    assert re.search(r"tests/(\w+/)?test_\w+\.py", README[at - 600: at + 900]), claim


def _same(text: str, value: float) -> bool:
    """A README number equals a file value rounded to the README's decimals (a tie such as 0.5375 either way)."""
    decimals = len(text.split(".")[1]) if "." in text else 0
    return abs(float(text) - value) <= 0.5 * 10.0**-decimals + 1e-9


def test_masking_twin_table_is_its_result_file():
    data = load(RESULTS / "masking_twin.json")
    runs = data["runs"]
    fd, acc = quoted(r"masking twin \(.*?unguided: fd_testbed ([\d.]+), class_acc ([\d.]+)\)")
    assert _same(fd, runs["unguided"]["fd_testbed"]) and _same(acc, runs["unguided"]["class_acc"])
    rows = re.findall(r"\| (SG|CFG\+SG), gamma_weak ([\d.]+), omega (\d) \| ([^|]+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \|",
                      README)
    assert len(rows) == 5
    for method, gw, omega, *cells in rows:
        prefix = "sg" if method == "SG" else "cfg_sg"
        suffix = f"-gw{gw}-omega{omega}" if method == "SG" else ""
        decoder, strong = runs[f"{prefix}_decoder{suffix}"], runs[f"{prefix}_strong{suffix}"]
        values = [decoder["fd_testbed"], strong["fd_testbed"], decoder["class_acc"], strong["class_acc"]]
        texts = [c.strip().strip("*") for c in cells]
        assert all(_same(t, v) for t, v in zip(texts, values)), (method, gw, omega, texts, values)
        bold = [c.strip().startswith("**") for c in cells]  # the better of each pair is bold, ties neither
        assert bold[:2] == ([values[0] < values[1], values[1] < values[0]] if bold[0] or bold[1] else [False, False])
        assert bold[2:] == ([values[2] > values[3], values[3] > values[2]] if bold[2] or bold[3] else [False, False])


def test_t2i_testbed_numbers_are_its_result_file():
    data = load(RESULTS / "t2i_testbed.json")
    runs, best = data["runs"], data["runs"][data["best_cfg"]]
    gate = json.loads((ROOT / "checkpoints" / "testbed_record.json").read_text())["t2i"]["gate"]
    unguided = [r for name, r in runs.items() if name.startswith("unguided-seed")]
    assert {round(r["geneval_testbed"], 4) for r in unguided} == set(gate["unguided"].values())  # the gate's run
    lo, random_hi = quoted(r"one seed range's own interval still touches the random one, ([\d.]+) vs ([\d.]+)\)")
    assert _same(lo, min(r["geneval_testbed_lo"] for r in unguided)) and _same(random_hi, gate["random_scenes"]["hi"])
    cfg, cfg_lo, cfg_hi = quoted(r"CFG moves it to ([\d.]+) \[([\d.]+), ([\d.]+)\]")
    assert all(_same(t, best[k]) for t, k in zip((cfg, cfg_lo, cfg_hi), ("geneval_testbed", "geneval_testbed_lo",
                                                                          "geneval_testbed_hi")))
    sg = [r for r in runs.values() if r["method"] == "sg"]
    ratio_lo, ratio_hi, below_lo, below_hi = quoted(
        r"pure SG \(([\d.]+)-([\d.]+)x CFG's FLOPs\) stays near unguided \(([\d.]+)-([\d.]+) below CFG\)")
    ratios = [r["gflops"] / best["gflops"] for r in sg]
    below = [-r["minus_best_cfg"][0] for r in sg]
    assert _same(ratio_lo, min(ratios)) and _same(ratio_hi, max(ratios))
    assert _same(below_lo, min(below)) and _same(below_hi, max(below))
    diff, diff_lo, diff_hi, flops, speed = quoted(
        r"CFG\+SG matches CFG \(([-+\d.]+) \[([-+\d.]+), ([-+\d.]+)\]\) at ([\d.]+)x its FLOPs and ([\d.]+)x its "
        r"measured img/s")
    cfg_sg = runs["cfg_sg"]
    assert all(_same(t, v) for t, v in zip((diff, diff_lo, diff_hi), cfg_sg["minus_best_cfg"]))
    assert _same(flops, cfg_sg["gflops"] / best["gflops"]) and _same(speed, cfg_sg["img_per_s"] / best["img_per_s"])
