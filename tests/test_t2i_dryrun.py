"""`harness bench --dry-run` on the text-to-image suites: prompts -> generation -> GenEval / HPSv3 / CLIP score ->
report, with random weights everywhere (model, text encoder, detector, CLIP, reward model) and nothing downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("suite, columns", [
    ("geneval", {"geneval", "geneval_single_object", "clip_score"}),
    ("hpsv3", {"hpsv3", "hpsv3_characters", "hpsv3_design", "clip_score"}),
])
def test_t2i_suite_dry_run_end_to_end(tmp_path, suite, columns, monkeypatch):
    monkeypatch.setenv("HARNESS_ASSETS", str(tmp_path / "no-assets"))  # HPSv3's prompt files are absent
    args = ["bench", str(ROOT / "suites" / f"{suite}.toml"), "--dry-run", "--only", "^sg$", "--root", str(ROOT),
            "--out", str(tmp_path / "runs"), "--reports", str(tmp_path / "reports"), "--device", "cpu"]
    assert main(args) == 0
    run = tmp_path / "runs" / f"{suite}-dryrun" / "sg"
    metrics = json.loads((run / "metrics.json").read_text())
    assert columns <= set(metrics)
    assert json.loads((run / "manifest.json").read_text())["dry_run"] is True
    if suite == "geneval":
        lines = (run / "results.jsonl").read_text().splitlines()
        assert len(lines) == 4 and json.loads(lines[0])["detector"] == "random-mask2former"
    else:
        assert len(list((run / "hpsv3").rglob("*.txt"))) == 4
    report = (tmp_path / "reports" / f"{suite}-dryrun" / "report.md").read_text()
    assert "dry run" in report.lower() and ("GenEval" in report or "HPSv3" in report)
