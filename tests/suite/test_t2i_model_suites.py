"""The MicroDiT and PixArt-Sigma GenEval suites: planned without weights, and run end to end as dry runs."""

import json
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.cost.flops import run_cost
from harness.suite import load_suite

pytest.importorskip("diffusers")
SUITES = Path(__file__).resolve().parents[2] / "suites"


def costs(name, *run_ids):
    suite = load_suite(SUITES / f"{name}.toml")
    runs = {r.run_id: r for r in suite.runs}
    return [run_cost(runs[i].models, runs[i].guidance, runs[i].sampler)["tflops_image"] for i in run_ids]


def test_microdit_plan_sg_runs_match_cfg_flops():
    """Counted on fake tensors (no weights): SG at CFG's 30 steps is cheaper; the matched runs spend CFG's FLOPs."""
    cfg, sg30, matched = costs("geneval_microdit", "cfg-seed0", "sg_30-gw0.75-omega2",
                                 "sg_matched_g75-omega2")
    assert 51 < cfg < 52.5  # 59 EDM Heun evaluations x 2 dense MicroDiT-XL/2 forwards of 437 GMACs
    assert sg30 < 0.7 * cfg and abs(matched / cfg - 1) < 0.02


def test_pixart_plan_sg_runs_match_cfg_flops():
    cfg, matched = costs("geneval_pixart", "cfg", "sg_untrained_matched-omega2")
    assert abs(matched / cfg - 1) < 0.02


def bench(tmp_path, suite, arch, only):
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    code = main(["bench", str(suite), "--root", str(tmp_path), "--dry-run", "--dry-run-arch", arch, "--samples", "4",
                 "--steps", "1", "--only", only, "--device", "cpu", "--out", str(runs), "--reports", str(reports)])
    assert code == 0
    return runs, reports


def check_runs(folder, run_ids, side):
    images = {}
    for run in run_ids:
        manifest = json.loads((folder / run / "manifest.json").read_text())
        assert manifest["dry_run"] is True and manifest["complete"] is True
        assert manifest["config"]["models"]["main"]["text_encoder"] == "random"  # no weights read
        with np.load(folder / run / "samples-000000.npz") as shard:
            images[run] = shard["arr_0"]
        assert images[run].shape == (4, side, side, 3) and images[run].std() > 1
        assert "geneval" in json.loads((folder / run / "metrics.json").read_text())
    first, second = run_ids
    assert not np.array_equal(images[first], images[second])


def test_microdit_suite_dry_runs_end_to_end(tmp_path):
    # The suite file with 8x8 latents instead of 64x64: decoding 512 px images costs ~20 s per run on a loaded CPU.
    text = (SUITES / "geneval_microdit.toml").read_text()
    arch = 'arch = "MicroDiT-XL/2"'
    assert arch in text
    suite = tmp_path / "geneval_microdit.toml"
    suite.write_text(text.replace(arch, arch + "\ninput_size = 8"))
    runs, reports = bench(tmp_path, suite, "MicroDiT-Test", "^(cfg-seed0|cfg_sg_30-omega4)$")
    check_runs(runs / "geneval_microdit-dryrun", ["cfg-seed0", "cfg_sg_30-omega4"], 64)
    report = (reports / "geneval_microdit-dryrun" / "report.md").read_text()
    assert "every model as MicroDiT-Test" in report and "random text encoders" in report


def test_pixart_suite_dry_runs_end_to_end(tmp_path):
    runs, _ = bench(tmp_path, SUITES / "geneval_pixart.toml", "PixArt-Test", "^(cfg|sg_untrained-gw0.5-omega2)$")
    check_runs(runs / "geneval_pixart-dryrun", ["cfg", "sg_untrained-gw0.5-omega2"], 64)


def test_text_encoder_and_vae_flops_are_counted_apart():
    """Per prompt: linear layers plus attention matmuls, L tokens (open-clip text tower; T5 v1.1 XXL)."""
    from harness.cost.t2i_flops import outside_denoiser, text_encoder_gmacs

    clip = 77 * 24 * (12 * 1024**2) + 77**2 * 1024 * 2 * 24  # 4 d^2 attention + 8 d^2 MLP; QK^T and AV
    t5 = 300 * 24 * (4 * 4096**2 + 3 * 4096 * 10240) + 300**2 * 4096 * 2 * 24  # gated-GELU FFN: 3 matrices
    assert text_encoder_gmacs("openclip-dfn5b") == pytest.approx(clip / 1e9, rel=1e-3)
    assert text_encoder_gmacs("t5-pixart-sigma") == pytest.approx(t5 / 1e9, rel=1e-3)
    lines = outside_denoiser(load_suite(SUITES / "geneval_microdit.toml"))
    assert lines[0].startswith("text encoder openclip-dfn5b: 23.5 GMACs per prompt")
    assert lines[1].startswith("VAE sdxl-vae decode:") and "per image" in lines[1]
