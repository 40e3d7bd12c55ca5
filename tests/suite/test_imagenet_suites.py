"""The ImageNet-256 suites as issue 8 specifies them, the per-run sampler and --steps overrides they rely on, and
their `paper` keys against baselines/*.csv."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from harness.cli import main
from harness.report.baselines import load_baseline_table
from harness.suite import load_suite

SUITES = Path(__file__).resolve().parents[2] / "suites"
NAMES = ("imagenet256", "imagenet256_ablation", "sit_xl2_reference")


@pytest.fixture(scope="module")
def suites():
    return {name: load_suite(SUITES / f"{name}.toml") for name in NAMES}


def test_imagenet256_is_table_2(suites):
    suite = suites["imagenet256"]
    methods = {r.run_id: r.method for r in suite.runs}
    assert {"unguided": "none", "cfg": "cfg", "ag": "ag", "icg": "icg", "sg_flops": "sg",
            "sg_fid": "ag+sg"}.items() <= methods.items()
    assert suite.samples == 50000 and suite.metrics == ("fid", "sfid", "is", "precision", "recall")
    assert all(r.sampler.kind == "euler" and r.sampler.steps == 40 for r in suite.runs)


def test_ablation_grids_cover_figures_6_and_8(suites):
    suite = suites["imagenet256_ablation"]
    assert suite.metrics == ("fid",) and all(r.samples == 5000 for r in suite.runs)
    assert Counter(r.name for r in suite.runs) == {"fig6_agsg": 9 * 9 * 4, "fig8_routing": 45 * 2, "fig8_masking": 29}
    fig6 = {(r.guidance.gamma_strong.start, r.guidance.gamma_weak.start, r.guidance.omega)
            for r in suite.runs if r.name == "fig6_agsg"}
    assert (0.5, 0.2, 1.9) in fig6  # AG + SG: the early checkpoint is the weak one, gamma_weak may be lower
    for run in suite.runs:
        if run.method == "sg":
            assert run.guidance.gamma_strong.start < run.guidance.gamma_weak.start
    assert {r.models["main"].sparsity for r in suite.runs if r.name == "fig8_masking"} == {"masking"}


def test_sit_reference_runs(suites):
    runs = {r.run_id: r for r in suites["sit_xl2_reference"].runs}
    sde = runs["cfg_sde"]
    assert (sde.sampler.kind, sde.sampler.steps, sde.guidance.omega, sde.guidance.cfg_channels) == \
        ("euler_maruyama", 250, 1.5, 3)
    assert sde.models["main"].checkpoint.endswith("assets/SiT-XL-2-256x256.pt")
    assert (runs["cfg_ode"].sampler.kind, runs["cfg_ode"].sampler.steps) == ("heun", 125)
    assert runs["cfg_ode"].config["sampler"]["kind"] == "heun" and runs["cfg_ode"].config_hash != sde.config_hash
    routed = runs["sg_routed"]
    assert (routed.method, routed.guidance.gamma_strong.start, routed.guidance.gamma_weak.start,
            routed.guidance.cfg_channels) == ("sg", 0.3, 0.7, None)


def test_paper_keys_name_baseline_rows(suites):
    tables = {}
    keys = [key for suite in suites.values() for run in suite.runs for key in run.paper]
    assert "peers:SiT-XL2_cfg1.5" in keys and "sg_table2:SG_FID" in keys
    for key in keys:
        table, row = key.split(":")
        tables.setdefault(table, load_baseline_table(table))
        assert row in set(tables[table]["id"]), key


def test_steps_override_reaches_run_samplers_and_bad_run_sampler_is_named(tmp_path, capsys):
    suite = load_suite(SUITES / "sit_xl2_reference.toml", steps=3)
    assert {r.run_id: (r.sampler.kind, r.sampler.steps) for r in suite.runs}["cfg_ode"] == ("heun", 3)
    assert all(r.sampler.steps == 3 for r in suite.runs)
    bad = tmp_path / "bad.toml"
    bad.write_text((SUITES / "sit_xl2_reference.toml").read_text().replace('kind = "heun"', 'kind = "rk4"'))
    assert main(["plan", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "run 'cfg_ode'" in err and "'sampler.kind'" in err
    assert main(["generate", str(SUITES / "imagenet256.toml"), "--steps", "0"]) == 2
    assert "--steps 0" in capsys.readouterr().err
