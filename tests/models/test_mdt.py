"""MDTv2 port against the official code's outputs (tests/fixtures/mdt, made by its make_fixture.py).

The fixture holds the official state dict's key names, shapes and dtypes, the inputs, and the official outputs
(dense, `forward_with_cfg` with the power-cosine schedule on eps channels 0-2, masked with given kept ids). The float
weights are not stored: both sides fill them from the same formula (make_fixture.recipe_value, realistic magnitudes).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.errors import HarnessError
from harness.guidance import GuidanceSpec, Schedule, power_cosine_scale
from harness.models import ARCHS, ModelSpec, build_model
from harness.sampling import GuidedDenoiser, make_generators
from tests.helpers import suite_text

FIXTURE = Path(__file__).parents[1] / "fixtures" / "mdt"
sys.path.insert(0, str(FIXTURE))
from make_fixture import CONFIG, fill  # the fixture's own recipe, shared with the test

GAMMA = 0.3125  # 5 of 16 tokens dropped: the fixture's 11 kept ids


@pytest.fixture(scope="module")
def layout() -> dict:
    return json.loads((FIXTURE / "layout.json").read_text())


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "reference.safetensors"))


@pytest.fixture(scope="module")
def official_file(layout, reference, tmp_path_factory) -> Path:
    """A raw state dict, as MDT's TrainLoop.save writes `ema_0.9999_%06d.pt` (th.save(state_dict))."""
    index = reference["relative_position_index"]
    state = fill({k: torch.zeros(shape, dtype=torch.int64) if dtype == "torch.int64" else torch.zeros(shape)
                  for k, shape, dtype in layout["state_dict"]})
    state.update({k: index.clone() for k in state if k.endswith("relative_position_index")})
    path = tmp_path_factory.mktemp("mdt") / "ema_0.9999_000000.pt"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def net(official_file):
    return build_model(ModelSpec("MDTv2-S/2", str(official_file), sparsity="masking", overrides=CONFIG)).net


def test_state_dict_has_the_official_names_shapes_and_int64_index(layout, reference):
    port = build_model(ModelSpec("MDTv2-S/2", overrides=CONFIG)).net.state_dict()
    assert {k: (list(v.shape), str(v.dtype)) for k, v in port.items()} == {
        k: (shape, dtype) for k, shape, dtype in layout["state_dict"]}
    assert torch.equal(port["de_blocks.1.attn.rel_pos_bias.relative_position_index"],
                       reference["relative_position_index"])
    assert "en_inblocks.0.skip_linear.weight" not in port and "en_outblocks.0.skip_linear.weight" in port


def test_dense_forward_matches_the_official(net, reference):
    with torch.no_grad():
        out = net(reference["x"], reference["t"], reference["y"])
    torch.testing.assert_close(out, reference["dense"], rtol=0, atol=1e-5)


def test_masked_forward_with_given_ids_matches_the_official(net, reference):
    with torch.no_grad():
        out = net(reference["x"], reference["t"], reference["y"], gamma=GAMMA, ids=reference["ids_keep"])
    torch.testing.assert_close(out, reference["masked"], rtol=0, atol=1e-5)
    assert (out - reference["dense"]).abs().max() > 1e-3  # masking changes the output: the check has teeth


def test_cfg_with_the_power_cosine_schedule_on_three_channels_matches_the_official(net, reference, layout):
    x, t, y = reference["x"][:2], reference["t"][:2], reference["y"][:2]
    with torch.no_grad():
        cond, uncond = net(x, t, y), net(x, t, torch.full_like(y, CONFIG["num_classes"]))
    scale = power_cosine_scale(t, layout["cfg_scale"], layout["scale_pow"]).view(-1, 1, 1, 1)
    guided = torch.cat([uncond[:, :3] + scale * (cond[:, :3] - uncond[:, :3]), cond[:, 3:]], dim=1)
    torch.testing.assert_close(guided, reference["cfg"], rtol=0, atol=1e-5)


def test_power_cosine_scale_rises_from_one_at_noise_to_the_scale_at_data():
    scale = power_cosine_scale(torch.tensor([999.0, 500.0, 0.0]), 3.8, 4.0)
    assert scale[0] == pytest.approx(1.0, abs=1e-6) and scale[2] == pytest.approx(3.8)
    assert float(scale[1]) == pytest.approx(1 + 2.8 * (1 - math.cos(0.5**4 * math.pi)) / 2, abs=1e-6)


def test_sg_weak_branch_masks_through_the_side_interpolater(official_file, reference):
    flow = build_model(ModelSpec("MDTv2-S/2", str(official_file), sparsity="masking", overrides=CONFIG))
    assert flow.convention == "dit" and flow.num_classes == 10
    guidance = GuidanceSpec("sg", omega=2.0, gamma_strong=Schedule.constant(0.0), gamma_weak=Schedule.constant(GAMMA))
    denoiser = GuidedDenoiser({"main": flow}, guidance)
    x, labels = reference["x"], reference["y"].clamp(max=9)
    sg = denoiser(x, 0.5, 0.5, labels, make_generators(range(3)))
    dense = flow.velocity(x, torch.full((3,), 0.5), labels)
    assert torch.isfinite(sg).all() and (sg - dense).abs().max() > 1e-4


def test_presets_and_a_wrong_size_said_in_a_line(official_file):
    assert {n for n in ARCHS if n.startswith("MDTv2-")} == {"MDTv2-S/2", "MDTv2-B/2", "MDTv2-L/2", "MDTv2-XL/2"}
    xl = build_model(ModelSpec("MDTv2-XL/2"), meta=True).net
    assert (len(xl.en_inblocks), len(xl.en_outblocks), len(xl.de_blocks), len(xl.sideblocks)) == (12, 12, 4, 1)
    with pytest.raises(HarnessError, match=r"does not fit MDTv2-S/2: 1 de_blocks in the file|"
                                           r"does not fit MDTv2-S/2: 2 de_blocks in the file, MDTv2-S/2 has 4"):
        build_model(ModelSpec("MDTv2-S/2", str(official_file)))


def test_power_cosine_guidance_weight_schedule_follows_the_ddpm_step():
    from harness.guidance import ddpm_step
    from harness.models.adapters import _dit_alphas_cumprod

    abar = _dit_alphas_cumprod()
    for k in (10, 500, 990):
        a = float(abar[k]) ** 0.5
        assert ddpm_step(a / (a + (1 - float(abar[k])) ** 0.5)) == pytest.approx(k, abs=1e-3)
    spec = GuidanceSpec("cfg", omega=3.8, omega_power=4.0)
    assert spec.omega_at(0.001) == pytest.approx(1.0, abs=1e-3) and spec.omega_at(0.999) == pytest.approx(3.8, 1e-3)
    a = float(abar[500]) ** 0.5
    expected = float(power_cosine_scale(torch.tensor(500.0), 3.8, 4.0))
    assert spec.omega_at(a / (a + (1 - float(abar[500])) ** 0.5)) == pytest.approx(expected, abs=1e-4)
    assert GuidanceSpec("cfg", omega=3.8).omega_at(0.001) == 3.8


def test_mdt_suite_plans_its_official_cfg_and_sparse_runs():
    from harness.suite import load_suite

    suite = load_suite(Path(__file__).parents[2] / "suites" / "mdt256.toml")
    runs = {r.run_id: r for r in suite.runs}
    cfg = next(r for r in runs.values() if r.method == "cfg" and r.guidance.omega_power is not None)
    assert cfg.guidance.omega == 3.8 and cfg.guidance.omega_power == 4.0 and cfg.guidance.cfg_channels == 3
    assert cfg.config["run"]["omega_power_cosine"] == 4.0
    assert {r.method for r in runs.values()} >= {"none", "cfg", "sg", "cfg+sg"}
    assert all(r.models["main"].arch == "MDTv2-XL/2" for r in runs.values())


def test_inspect_finds_mdt_trained_with_another_decode_layer(tmp_path, capsys):
    from harness.cli import main
    from harness.suite import load_suite

    # sail-sg/MDT README trains MDTv2-S/2 with --decode_layer 6; TrainLoop.save writes the bare state dict
    spec = ModelSpec("MDTv2-S/2", overrides={"decode_layer": 6, "input_size": 8, "num_classes": 10})
    torch.save(build_model(spec).net.state_dict(), tmp_path / "ema_0.9999_050000.pt")
    assert main(["inspect", str(tmp_path / "ema_0.9999_050000.pt")]) == 0
    out = capsys.readouterr().out
    assert "architecture  MDTv2-S/2: family mdt" in out and "6 de_blocks" in out and "3 en_inblocks" in out
    table = out[out.index("[models.main]"):]
    assert "decode_layer = 6" in table and "input_size = 8" in table and "num_classes = 10" in table
    (tmp_path / "s.toml").write_text(suite_text(suite={"name": "m", "samples": 2, "batch_size": 2, "seed": None,
                                                       "metrics": ["fid"]}, sampler={"steps": 1}, models={},
                                                runs=[{"name": "u", "method": "none"}]) + table)  # table as printed
    build_model(load_suite(tmp_path / "s.toml", root=tmp_path).runs[0].models["main"])


def test_mdt_suite_dry_runs_its_scheduled_cfg_and_masked_sg(tmp_path):
    from harness.cli import main

    suite = Path(__file__).parents[2] / "suites" / "mdt256.toml"
    assert main(["generate", str(suite), "--dry-run", "--dry-run-arch", "MDTv2-S/2", "--only",
                 "release_cfg|sg-gs0.1-gw0.5-omega2", "--samples", "4", "--steps", "2", "--out", str(tmp_path)]) == 0
    runs = tmp_path / "mdt256-dryrun"
    assert {p.name for p in runs.iterdir() if p.is_dir()} >= {"release_cfg", "sg-gs0.1-gw0.5-omega2"}
