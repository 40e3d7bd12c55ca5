"""Dry runs: suites/imagenet256.toml through plan, generation, cost, evaluation and report on random weights, with
the smallest settings: every model sized as Testbed-XS/4 (4 blocks, width 96) in SiT-XL/2's latent space, a narrow
VAE of SD-VAE's latent layout, 4 images and 1 step per run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from harness.cli import main
from harness.dryrun import FULL, SMALL, DryRun, load_dry_suite, small_arch
from harness.models import redraw_zero_init
from harness.errors import HarnessError
from harness.models import ModelSpec, build_model
from harness.report import normalise_paper_map
from harness.suite import load_suite

REPO = Path(__file__).resolve().parents[1]
SUITES = REPO / "suites"

pytest.importorskip("diffusers")


def test_random_sit_predicts_zero_until_redrawn():
    torch.manual_seed(0)
    model = build_model(ModelSpec("SiT-S/8", sparsity="routing", route=(2, 11)))
    x, t = torch.randn(2, 4, 32, 32), torch.full((2,), 0.5)
    cond, null = torch.tensor([1, 2]), torch.tensor([1000, 1000])
    assert not model.velocity(x, t, cond).any()  # adaLN-Zero and the zeroed final layer
    assert redraw_zero_init(model) > 0
    v_cond, v_null = model.velocity(x, t, cond), model.velocity(x, t, null)
    assert v_cond.abs().mean() > 1e-3 and not torch.allclose(v_cond, v_null)
    assert not torch.allclose(v_cond, model.velocity(x, t, cond, gamma=0.5, generators=[torch.Generator()] * 2))


def test_dry_suites_drop_checkpoints_rename_and_shrink(tmp_path):
    for name in ("imagenet256", "imagenet256_ablation", "sit_xl2_reference"):
        dry = load_dry_suite(SUITES / f"{name}.toml", tmp_path, tmp_path / "runs", DryRun(arch="SiT-S/8"))
        suite = dry.suite
        assert suite.name == f"{name}-dryrun" and dry.folder == tmp_path / "runs" / f"{name}-dryrun"
        assert dry.reference == dry.folder / "reference-dryrun.npz" and dry.source_reference is None
        for run in suite.runs:
            assert run.samples == 4 and run.sampler.steps == 2 and run.config["suite"]["name"] == suite.name
            for spec in run.models.values():
                assert spec.checkpoint is None and spec.arch == "SiT-S/8"
                assert spec.route is None or spec.route[1] <= 11
    heun = [r for r in load_dry_suite(SUITES / "sit_xl2_reference.toml", tmp_path, None, DryRun()).suite.runs
            if r.name == "cfg_ode"]
    assert heun[0].sampler.kind == "heun" and heun[0].sampler.steps == 2 and heun[0].models["main"].arch == "SiT-XL/2"
    # with the real reference batch present, the dry one holds its first images (and none of its statistics)
    from harness.metrics.reference import npz_keys, write_reference_batch

    real = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    (tmp_path / "assets").mkdir()
    write_reference_batch(tmp_path / "assets" / "VIRTUAL_imagenet256_labeled.npz", real)
    dry = load_dry_suite(SUITES / "imagenet256.toml", tmp_path, None, DryRun(samples=5))
    assert dry.source_reference == tmp_path / "assets" / "VIRTUAL_imagenet256_labeled.npz"
    dry.folder.mkdir(parents=True)
    dry.inception_weights.write_bytes(b"")  # present: prepare_evaluation keeps it
    dry.prepare_evaluation()
    with np.load(dry.reference) as batch:
        assert np.array_equal(batch["arr_0"], real[:5])
    assert npz_keys(dry.reference) == ["arr_0"]
    with pytest.raises(HarnessError, match="--dry-run-arch"):
        DryRun(arch="SiT-XS/2")


def test_small_dry_run_substitutes_the_smallest_of_each_family(tmp_path):
    assert small_arch("SiT-XL/2") == "SiT-S/2" and small_arch("DiT-L/4") == "DiT-S/4"
    assert small_arch("SiT-S/2") == "SiT-S/2" and small_arch("Testbed-S/4") == "Testbed-XS/4"
    dry = load_dry_suite(SUITES / "imagenet256.toml", tmp_path, None, DryRun(arch=SMALL))
    assert dry.substituted == {"main": ("SiT-XL/2", "SiT-S/2"), "early": ("SiT-XL/2", "SiT-S/2")}
    assert max(dry.vae_config["block_out_channels"]) < 512  # narrower than SD-VAE's 128..512
    assert "every model as SiT-S/2" in dry.meta["dry run"] and "narrow VAE" in dry.meta["dry run"]
    for run in dry.suite.runs:
        assert all(spec.arch == "SiT-S/2" and spec.route == (2, 11) for spec in run.models.values())
    full = load_dry_suite(SUITES / "imagenet256.toml", tmp_path, None, DryRun(arch=FULL))
    assert full.substituted == {} and full.vae_config is None
    assert all(spec.arch == "SiT-XL/2" for run in full.suite.runs for spec in run.models.values())
    with pytest.raises(HarnessError, match="at least 4"):
        DryRun(samples=2)


def test_dry_bench_runs_every_stage_and_marks_it(tmp_path, capsys):
    # The real suite file, minus its Frechet metrics: each costs a 2048 x 2048 matrix square root (minutes on a
    # loaded 2-core CPU) and is tested in test_metrics.py.
    text = (SUITES / "imagenet256.toml").read_text()
    metrics = 'metrics = ["fid", "sfid", "is", "precision", "recall"]'
    assert metrics in text
    suite = tmp_path / "imagenet256.toml"
    suite.write_text(text.replace(metrics, 'metrics = ["is", "precision", "recall"]'))
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    code = main(["bench", str(suite), "--root", str(tmp_path), "--dry-run", "--dry-run-arch", "Testbed-XS/4",
                 "--samples", "4", "--steps", "1", "--only", "^(cfg|sg_fid)$", "--device", "cpu",
                 "--out", str(runs), "--reports", str(reports)])
    out = capsys.readouterr().out
    assert code == 0
    assert "sg_fid" in out and "cos(0->0.6)" in out  # the plan stage
    assert not (runs / "imagenet256").exists() and not (reports / "imagenet256").exists()
    folder = runs / "imagenet256-dryrun"
    images = {}
    for run in ("cfg", "sg_fid"):
        manifest = json.loads((folder / run / "manifest.json").read_text())
        assert manifest["dry_run"] is True and manifest["complete"] is True
        assert manifest["config"]["models"]["main"]["checkpoint"] is None
        with np.load(folder / run / "samples-000000.npz") as shard:
            images[run] = shard["arr_0"]
        assert images[run].shape == (4, 256, 256, 3) and images[run].std() > 10
        metrics = json.loads((folder / run / "metrics.json").read_text())
        assert set(metrics) == {"is", "precision", "recall"} and all(np.isfinite(list(metrics.values())))
        cost = json.loads((folder / run / "cost.json").read_text())
        assert cost["nfe"] == 2 and cost["batch_seconds"]  # the cost stage timed the dry run's generation
    assert not np.array_equal(images["cfg"], images["sg_fid"])  # guidance methods differ on redrawn weights
    plan = pd.read_csv(reports / "imagenet256-dryrun" / "plan.csv")
    assert list(plan["run"]) == ["cfg", "sg_fid", "(total)"]
    results = pd.read_csv(reports / "imagenet256-dryrun" / "results.csv")
    assert results["dry_run"].all() and set(results["run"]) == {"cfg", "sg_fid"}
    assert results[["is", "precision", "recall"]].notna().all().all() and set(results["numerics"]) == {"fp32"}
    report = (reports / "imagenet256-dryrun" / "report.md").read_text()
    for metric in ("is", "precision", "recall"):  # each metric in the table and in a figure
        assert f"figures/pareto-{metric}-gflops.png" in report, metric
    assert "Prec." in report and "Rec." in report
    assert "**Every number in this report is from a dry run with random weights" in report
    assert "- dry run: random weights" in report and "every model as Testbed-XS/4" in report
    assert (reports / "imagenet256-dryrun" / "samples" / "cfg.png").is_file()


def test_dry_run_computes_kid_fd_dinov2_and_cmmd(tmp_path, capsys):
    # suites/imagenet256.toml with the three feature metrics (FID/sFID left out as above: a 2048-d sqrtm each);
    # `harness bench suites/imagenet256.toml --dry-run` with them added to [suite] metrics computes all of them.
    text = (SUITES / "imagenet256.toml").read_text()
    metrics = 'metrics = ["fid", "sfid", "is", "precision", "recall"]'
    suite = tmp_path / "imagenet256.toml"
    suite.write_text(text.replace(metrics, 'metrics = ["is", "kid", "fd_dinov2", "cmmd"]'))
    runs = tmp_path / "runs"
    code = main(["bench", str(suite), "--root", str(tmp_path), "--dry-run", "--dry-run-arch", "Testbed-XS/4",
                 "--samples", "4", "--steps", "1", "--only", "^cfg$", "--device", "cpu",
                 "--out", str(runs), "--reports", str(tmp_path / "reports")])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((runs / "imagenet256-dryrun" / "cfg" / "metrics.json").read_text())
    assert {"kid", "kid_std", "fd_dinov2", "cmmd"} <= set(metrics)
    assert all(np.isfinite(metrics[m]) for m in ("kid", "fd_dinov2", "cmmd")) and metrics["fd_dinov2"] > 0


def test_maskdit_suite_dry_runs_end_to_end(tmp_path, capsys):
    # suites/maskdit256.toml as written, minus its Frechet metrics (see above), on MaskDiT-S/2 with 1 EDM step
    text = (SUITES / "maskdit256.toml").read_text()
    metrics = 'metrics = ["fid", "sfid", "is", "precision", "recall"]'
    assert metrics in text
    suite = tmp_path / "maskdit256.toml"
    suite.write_text(text.replace(metrics, 'metrics = ["is", "precision", "recall"]'))
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    code = main(["bench", str(suite), "--root", str(tmp_path), "--dry-run", "--dry-run-arch", "MaskDiT-S/2",
                 "--samples", "4", "--steps", "1", "--only", "^sg-gs0.05-gw0.3-omega2$",
                 "--device", "cpu", "--out", str(runs), "--reports", str(reports)])
    assert code == 0, capsys.readouterr().err
    run = runs / "maskdit256-dryrun" / "sg-gs0.05-gw0.3-omega2"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["complete"] and manifest["config"]["sampler"]["kind"] == "edm_heun"
    assert manifest["config"]["models"]["trained"]["arch"] == "MaskDiT-S/2"
    assert manifest["config"]["models"]["trained"]["dropped"] == "decoder"
    assert json.loads((run / "cost.json").read_text())["nfe"] == 2  # 1 EDM step (Euler to sigma 0), two branches
    with np.load(run / "samples-000000.npz") as shard:
        assert shard["arr_0"].shape == (4, 256, 256, 3) and shard["arr_0"].std() > 10
    results = pd.read_csv(reports / "maskdit256-dryrun" / "results.csv")
    assert list(results["run"]) == ["sg-gs0.05-gw0.3-omega2"] and results["dry_run"].all()
    paper = {r.run_id: r.paper for r in load_suite(SUITES / "maskdit256.toml").runs if r.paper}
    assert normalise_paper_map(paper) == {"release_cfg": [("maskdit", "MaskDiT-XL2_cfg1.5")],
                                          "release_unguided": [("maskdit", "MaskDiT-XL2_unguided")]}
    with pytest.raises(HarnessError, match="same family"):
        load_dry_suite(SUITES / "maskdit256.toml", tmp_path, None, DryRun(arch="SiT-S/8"))
