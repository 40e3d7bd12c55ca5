"""FLOP accounting (harness.cost, harness.suite.plan): the papers' numbers, independent counts, schedules and intervals."""

from __future__ import annotations

import argparse
import json
import resource
import statistics
from pathlib import Path

import pytest
import torch
from fvcore.nn import FlopCountAnalysis
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from harness.cost.flops import count_forward, run_cost
from harness.cost.throughput import achieved_rate, matmul_calibration, measure_throughput, throughput_stats
from harness.errors import HarnessError
from harness.guidance import GuidanceSpec, Schedule
from harness.models import ModelSpec, build_model
from harness.models.batching import FORWARD_ROWS
from harness.models.dit import DiTConfig, SparseDiT
from harness.models.tokens import num_sparse
from harness.suite.plan import TOTAL_ROW, add_plan_parser, format_plan, plan_table
from harness.sampling import GuidedDenoiser, SamplerSpec, draw_labels, draw_noise, make_generators, sample
from harness.suite import load_suite
from tests.helpers import suite_text

ROOT = Path(__file__).resolve().parents[2]
XL_ROUTING = ModelSpec("SiT-XL/2", sparsity="routing", route=(2, 24))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small CPU models run far faster on one thread than on two contended ones; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _close(value: float, target: float, rel: float) -> bool:
    return abs(value - target) <= rel * target


#################################################################################
#                      The papers' numbers, through `harness plan`              #
#################################################################################


def test_imagenet256_plan_reproduces_sg_table2():
    table = plan_table(load_suite(ROOT / "suites" / "imagenet256.toml", root=ROOT)).set_index("run")
    for run, reported in {"unguided": 114.42, "cfg": 228.84, "ag": 228.84, "icg": 228.84, "sg_flops": 97.67}.items():
        assert _close(table.loc[run, "gflops"], reported, 1e-3), (run, table.loc[run, "gflops"])
    # SG_FID: the paper's 173.16 is both branches counted at the schedules' mean gamma 0.3 (int(256 * 0.3) = 76
    # routed tokens each); the harness averages the count of each of the 40 steps, where the two cosine schedules
    # route 152.7 tokens per step on average (0.7 more), so it is 0.7 x 23 blocks x 15.925 M MACs lower (README, FLOPs)
    config = XL_ROUTING.config()[0]
    assert _close(2 * count_forward(config, 0.3)[0], 173.16, 1e-3)
    per_token_block = 1152 * 3456 + 1152 * 1152 + 2 * 1152 * 4608
    assert table.loc["sg_fid", "gflops"] == pytest.approx(2 * count_forward(config, 0.3)[0]
                                                          - 0.7 * 23 * per_token_block / 1e9, rel=1e-9)
    assert table.loc["cfg", "nfe"] == 80 and table.loc["unguided", "nfe"] == 40
    runs = table.drop(index=TOTAL_ROW)  # per image over the 40 steps, then over each run's samples
    assert (runs["tflops_image"] * 1e3).to_list() == pytest.approx((runs["gflops"] * 40).to_list())
    assert table.loc[TOTAL_ROW, "tflops_total"] == pytest.approx((runs["tflops_image"] * runs["samples"]).sum())
    assert table.loc["sg_fid", "gamma_strong"] == "cos(0->0.6)" and table.loc["sg_flops", "gamma_weak"] == 0.9


def test_dense_dit_xl2_full_count_is_dits_118_6():
    gflops, gflops_full = count_forward(ModelSpec("DiT-XL/2").config()[0], 0.0)
    assert _close(gflops_full, 118.6, 1e-3), gflops_full
    assert _close(gflops_full - gflops, 4.228, 1e-3)  # the attention matmuls: 28 blocks x 0.151 G (evaluation.md 5.3)


def test_plan_cli_formats(tmp_path, capsys):
    suite = tmp_path / "small.toml"
    suite.write_text(suite_text(
        suite={"name": "small", "samples": 10, "batch_size": 2, "seed": None, "metrics": None}, sampler={"steps": 4},
        main={"arch": "SiT-S/4", "checkpoint": "nowhere/no_such_checkpoint.pt", "route": [2, 8]},
        runs=[{"name": "sg", "method": "sg", "gamma_strong": 0.25, "gamma_weak": 0.75, "omega": [1.5, 2.0]}]))
    parser = argparse.ArgumentParser()
    add_plan_parser(parser.add_subparsers())
    args = parser.parse_args(["plan", str(suite), "--format", "json"])
    assert args.func(args) == 0  # the checkpoint does not exist: planning reads no weights
    rows = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in rows] == ["sg-omega1.5", "sg-omega2", TOTAL_ROW]
    assert rows[-1]["samples"] == 20 and rows[-1]["tflops_total"] == pytest.approx(20 * rows[0]["tflops_image"])
    table = plan_table(load_suite(suite))
    assert format_plan(table, "csv").splitlines()[0].startswith("run,model,method,gamma_strong,gamma_weak,omega")
    assert "sg-omega2" in format_plan(table, "table")


#################################################################################
#            Configurations the papers do not list, against other counters      #
#################################################################################

# Real CPU models (random weights) counted by fvcore itself and by stock FlopCounterMode with the math SDPA backend.
REAL_CONFIGS = [
    (ModelSpec("SiT-S/2", sparsity="routing", route=(1, 9)), 0.3),
    (ModelSpec("DiT-B/4", sparsity="routing", route=(0, 11)), 0.7),
    (ModelSpec("SiT-S/2", sparsity="masking"), 0.25),  # MaskDiT's 512-d, 8-block decoder on a 384-d encoder
    (ModelSpec("Testbed-S/4", sparsity="masking"), 0.5),
]


class _Forward(torch.nn.Module):
    """net(x, t, y, gamma) as a module of (x, t, y), for fvcore's tracer."""

    def __init__(self, net: SparseDiT, gamma: float):
        super().__init__()
        self.net, self.gamma = net, gamma

    def forward(self, x, t, y):
        return self.net(x, t, y, self.gamma)


@pytest.mark.parametrize("spec,gamma", REAL_CONFIGS, ids=lambda v: getattr(v, "arch", v))
def test_counts_match_fvcore_and_flop_counter_on_real_models(spec, gamma):
    config = spec.config()[0]
    torch.manual_seed(0)
    net = SparseDiT(config).eval()
    b = FORWARD_ROWS  # one network chunk
    x = torch.randn(b, config.in_channels, config.input_size, config.input_size)
    t, y = torch.rand(b), torch.zeros(b, dtype=torch.long)
    gflops, gflops_full = count_forward(config, gamma)

    analysis = FlopCountAnalysis(_Forward(net, gamma), (x, t, y))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    by_op = analysis.by_operator()
    assert by_op["linear"] + by_op["conv"] == b * round(gflops * 1e9)  # fvcore's linear and conv handles, exactly
    assert analysis.unsupported_ops()["aten::scaled_dot_product_attention"] > 0  # fused attention: 0 in fvcore
    assert set(by_op) <= {"linear", "conv", "layer_norm", "einsum"}  # the rest: LayerNorm and unpatchify, not MACs

    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        net(x, t, y, gamma)
    assert counter.get_total_flops() == b * round(gflops_full * 2e9)


def _block_macs(dim: int, tokens: int, mlp_ratio: float = 4.0) -> tuple[int, int]:
    """Oracle for one transformer block: token-proportional linear MACs (qkv, proj, MLP) and attention MACs."""
    hidden = int(dim * mlp_ratio)
    return tokens * (3 * dim * dim + dim * dim + 2 * dim * hidden), 2 * tokens * tokens * dim


@pytest.mark.parametrize("spec,gamma,sparse_blocks", [
    (ModelSpec("SiT-XL/2", sparsity="routing", route=(4, 20)), 0.61, 17),
    (ModelSpec("DiT-L/2", sparsity="routing", route=(3, 19)), 0.37, 17),
    (ModelSpec("SiT-XL/2", sparsity="masking"), 0.3, 28),  # the whole encoder; the decoder sees all tokens
])
def test_large_unlisted_configs_against_a_hand_oracle(spec, gamma, sparse_blocks):
    config = spec.config()[0]
    n, k, d = config.num_tokens, num_sparse(config.num_tokens, gamma), config.hidden_size
    dense, dense_full = count_forward(config, 0.0)
    sparse, sparse_full = count_forward(config, gamma)
    linear_n, attn_n = _block_macs(d, n)
    linear_kept, attn_kept = _block_macs(d, n - k)
    saved = sparse_blocks * (linear_n - linear_kept)
    if config.sparsity == "masking":  # decoder_embed projects only the kept tokens; mask tokens fill the rest
        saved += k * d * config.decoder_hidden_size
    assert round((dense - sparse) * 1e9) == saved
    assert round((dense_full - sparse_full) * 1e9) == saved + sparse_blocks * (attn_n - attn_kept)


def test_masking_decoder_is_counted():
    masking = ModelSpec("SiT-XL/2", sparsity="masking").config()[0]
    plain = ModelSpec("SiT-XL/2").config()[0]
    decoder_gap = count_forward(masking, 0.0)[0] - count_forward(plain, 0.0)[0]
    # 8 blocks of 512-d at 256 tokens with 1152-conditioned adaLN, the 1152->512 decoder_embed, and a final layer
    # on 512-d tokens (its linear to 2*2*8 outputs, its adaLN to 2 * 512 instead of 2 * 1152).
    linear, _ = _block_macs(512, 256)
    expected = 8 * (linear + 1152 * 6 * 512) + 256 * 1152 * 512 + (512 - 1152) * (256 * 2 * 2 * 8 + 1152 * 2)
    assert round(decoder_gap * 1e9) == expected


#################################################################################
#               Schedules, intervals, branches: the accounting of a run         #
#################################################################################

SMALL = ModelSpec("SiT-S/4", sparsity="routing", route=(2, 8))


def test_intervals_and_omega_one_skip_the_weak_branch():
    sampler = SamplerSpec("euler", 8)  # t = 0, 1/8, ..., 7/8
    dense = count_forward(SMALL.config()[0], 0.0)[0]
    unguided = run_cost({"main": SMALL}, GuidanceSpec(), sampler)
    assert unguided["nfe"] == 8 and unguided["gflops"] == pytest.approx(dense)
    assert run_cost({"main": SMALL}, GuidanceSpec("cfg", omega=1.0), sampler) == unguided
    cfg = run_cost({"main": SMALL}, GuidanceSpec("cfg", 1.5), sampler)
    assert cfg["nfe"] == 16 and cfg["gflops"] == pytest.approx(2 * dense)
    inside = run_cost({"main": SMALL}, GuidanceSpec("cfg", 1.5, interval=(0.25, 0.75)), sampler)
    assert inside["nfe"] == 8 + 5 and inside["gflops"] == pytest.approx(dense * 13 / 8)  # 0.25 .. 0.75: 5 steps
    assert inside["tflops_image"] == pytest.approx(dense * 13 / 1e3)


def test_schedules_are_averaged_over_the_actual_steps():
    sampler = SamplerSpec("euler", 12)
    config = SMALL.config()[0]
    constant = {g: run_cost({"main": SMALL}, GuidanceSpec("none", gamma_strong=Schedule.constant(g)), sampler)
                for g in (0.0, 0.6)}
    rising = run_cost({"main": SMALL}, GuidanceSpec("none", gamma_strong=Schedule("linear", 0.0, 0.6)), sampler)
    falling = run_cost({"main": SMALL}, GuidanceSpec("none", gamma_strong=Schedule("linear", 0.6, 0.0)), sampler)
    cosine = run_cost({"main": SMALL}, GuidanceSpec("none", gamma_strong=Schedule("cosine", 0.0, 0.6)), sampler)
    assert constant[0.6]["gflops"] < rising["gflops"] < constant[0.0]["gflops"]
    assert constant[0.6]["gflops"] < cosine["gflops"] < constant[0.0]["gflops"]
    assert rising["gflops"] == pytest.approx(falling["gflops"])  # the same gammas, in the other order
    mean = sum(count_forward(config, 0.6 * k / 11)[0] for k in range(12)) / 12
    assert rising["gflops"] == pytest.approx(mean)
    heun = run_cost({"main": SMALL}, GuidanceSpec(), SamplerSpec("heun", 12))
    assert heun["nfe"] == 24 and heun["gflops"] == pytest.approx(2 * constant[0.0]["gflops"])


def test_ag_weak_model_of_another_size_and_missing_models():
    weak = ModelSpec("SiT-B/4", sparsity="routing", route=(2, 8))
    ag = run_cost({"main": SMALL, "weak": weak}, GuidanceSpec("ag", 1.5), SamplerSpec("euler", 4))
    expected = count_forward(SMALL.config()[0], 0.0)[0] + count_forward(weak.config()[0], 0.0)[0]
    assert ag["gflops"] == pytest.approx(expected)
    with pytest.raises(HarnessError, match="weak"):
        run_cost({"main": SMALL}, GuidanceSpec("ag", 1.5), SamplerSpec("euler", 4))
    with pytest.raises(HarnessError, match="sparsity 'none'"):
        run_cost({"main": ModelSpec("SiT-S/4")}, GuidanceSpec("none", gamma_strong=Schedule.constant(0.5)),
                 SamplerSpec("euler", 4))


TB_MAIN = ModelSpec("Testbed-S/4", sparsity="routing", route=(1, 4))
TB_WEAK = ModelSpec("Testbed-XS/4", sparsity="routing", route=(1, 2))
TB_MASK = ModelSpec("Testbed-S/4", sparsity="masking")
LOOP_CASES = [  # (models, guidance, sampler): CFG batched with an interval; AG+SG across sizes; masking SG; ICG
    ({"main": TB_MAIN}, GuidanceSpec("cfg", 1.5, interval=(0.3, 0.8)), SamplerSpec("euler", 6)),
    ({"main": TB_MAIN, "weak": TB_WEAK},
     GuidanceSpec("ag+sg", 1.5, Schedule("cosine", 0.0, 0.6), Schedule("cosine", 0.6, 0.0)), SamplerSpec("heun", 3)),
    ({"main": TB_MASK}, GuidanceSpec("sg", 1.5, Schedule("linear", 0.1, 0.4), Schedule.constant(0.6)),
     SamplerSpec("euler", 4)),
    ({"main": TB_MAIN}, GuidanceSpec("icg", 2.0, Schedule.constant(0.25)), SamplerSpec("euler", 3)),
]


@pytest.mark.parametrize("specs,guidance,sampler", LOOP_CASES, ids=["cfg-interval", "ag+sg-heun", "mask-sg", "icg"])
def test_run_cost_matches_the_real_sampling_loop(specs, guidance, sampler):
    """Count the real sample() loop with stock FlopCounterMode, per image, against run_cost's fake-tensor count."""
    torch.manual_seed(0)
    models = {role: build_model(spec) for role, spec in specs.items()}
    batch = 8  # a multiple of FlowModel's padding, so every row counted is an image
    cfg = models["main"].config
    totals = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):  # fused attention uncounted / attention as bmm
        generators = make_generators(range(batch))
        labels = draw_labels(generators, cfg.num_classes)
        noise = draw_noise(generators, (cfg.in_channels, cfg.input_size, cfg.input_size))
        with sdpa_kernel([backend]), FlopCounterMode(display=False) as counter:
            sample(GuidedDenoiser(models, guidance), noise, labels, generators, sampler)
        totals[backend] = counter.get_total_flops() / 2 / batch
    cost = run_cost(specs, guidance, sampler)
    assert totals[SDPBackend.FLASH_ATTENTION] == pytest.approx(cost["tflops_image"] * 1e12, rel=1e-12)
    assert totals[SDPBackend.MATH] == pytest.approx(cost["gflops_full"] * sampler.steps * 1e9, rel=1e-12)
    assert totals[SDPBackend.MATH] > totals[SDPBackend.FLASH_ATTENTION]


#################################################################################
#                          No weights; throughput                               #
#################################################################################


def test_counting_sit_xl2_allocates_no_weights():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    config = DiTConfig(depth=28, hidden_size=1152, num_heads=16, sparsity="routing", route=(3, 23))
    gflops, _ = count_forward(config, 0.43)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert 50 < gflops < 114 and grown_mib < 1000  # real SiT-XL/2 weights alone are 2,700 MiB


def test_measure_throughput_times_the_loop_and_is_json_ready():
    models = {"main": build_model(ModelSpec("Testbed-XS/4", sparsity="routing", route=(1, 2)))}
    guidance = GuidanceSpec("sg", 1.5, Schedule.constant(0.25), Schedule.constant(0.5))
    decoded = []
    result = measure_throughput(models, guidance, SamplerSpec("euler", 2), batch_size=3, device="cpu",
                                decode=lambda x: decoded.append(x.shape) or x, warmup=1, repeats=2)
    assert json.loads(json.dumps(result)) == result
    assert len(decoded) == 3 and decoded[0][0] == 3  # warm-up and both timed batches, the real batch size
    assert len(result["batch_seconds"]) == 2 and result["img_per_s"] >= result["img_per_s_e2e"]
    rates = [3 / s for s in result["batch_seconds"]]
    assert result["img_per_s"] == pytest.approx(statistics.median(rates))
    assert result["img_per_s_iqr"] == pytest.approx(abs(rates[0] - rates[1]) / 2)  # inclusive quartiles of two
    assert result["sec_per_step"] == pytest.approx(3 / result["img_per_s"] / 2) and result["timed_batches"] == 2
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB: a CPU's peak is the process's max RSS
    assert 0.5 * after <= result["peak_mem_mb"] <= after and result["device"].startswith("cpu")


def test_throughput_stats_are_robust_to_a_slow_batch_and_report_the_spread():
    steady = [{"images": 10, "denoise": 1.0, "total": 1.25}] * 6
    stats = throughput_stats(steady + [{"images": 10, "denoise": 5.0, "total": 5.0}], batch_size=10, steps=4)
    assert stats["img_per_s"] == pytest.approx(10.0) and stats["img_per_s_e2e"] == pytest.approx(8.0)
    assert stats["img_per_s_spread"] == 0.0 and stats["sec_per_step"] == pytest.approx(0.25)
    noisy = throughput_stats([{"images": 10, "denoise": d, "total": d} for d in (1.0, 2.0, 1.0, 2.0)], 10, 1)
    assert noisy["img_per_s"] == pytest.approx(7.5) and noisy["img_per_s_spread"] == pytest.approx(5 / 7.5)


def test_matmul_calibration_and_achieved_rate():
    calibration = matmul_calibration("cpu", "fp32", seconds=0.05)
    assert 0.1 < calibration < 1e5  # GMAC/s of any CPU
    rate = achieved_rate({"gflops": 2.0, "steps": 10}, img_per_s=3.0, calibration=120.0)
    assert rate == {"gflops_per_s": 60.0, "calibration_gflops_per_s": 120.0, "utilization": 0.5}
