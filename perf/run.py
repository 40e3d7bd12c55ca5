"""`make perf`: sampling speed of unguided, CFG, SG(0.5, 0.9) and masking on this device, next to their FLOPs.

A benchmark, not a test: it times the harness's real sampling loop (harness.cost.throughput.measure_throughput) on models with
random weights at several model sizes and batch sizes, prints seconds per step and SG's measured speedup over CFG
beside the FLOP ratio, for routing and for masking, and the harness loop beside a bare loop of the same model calls;
it writes reports/perf/perf.json. Targets (speedup at least 0.9 of the FLOP-predicted one, harness overhead under
3%) are printed as pass / fail, never asserted.

Defaults: SiT-B/2 and SiT-XL/2 (route r2->depth-4, masking with MaskDiT's decoder) at batches 32 and 64, 10 Euler
steps on a GPU; on a CPU SiT-S/4 and SiT-S/2 at batches 4 and 8, 2 steps (one SiT-XL/2 forward of 8 images takes
~40 s on 2 cores; pass --arch SiT-XL/2 to time it anyway). `--precision` and `--compile` time the speed options.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from harness.cost import measure_throughput, run_cost
from harness.device import device_name
from harness.guidance import GuidanceSpec, Schedule, combine
from harness.models import ARCHS, ModelSpec, build_model
from harness.models.adapters import FlowModel
from harness.numerics import PRECISIONS, compile_model
from harness.sampling import SamplerSpec, draw_labels, draw_noise, make_generators, synchronize

SPEEDUP_TARGET = 0.9  # measured SG-vs-CFG speedup / FLOP-predicted speedup
OVERHEAD_TARGET = 0.03  # harness loop time / bare loop time - 1
OMEGA = 1.5
SG = GuidanceSpec("sg", OMEGA, Schedule.constant(0.5), Schedule.constant(0.9))
CFG = GuidanceSpec("cfg", OMEGA)
# case -> (sparsity of the model, guidance)
CASES: dict[str, tuple[str, GuidanceSpec]] = {
    "unguided": ("routing", GuidanceSpec()),
    "cfg": ("routing", CFG),
    "sg": ("routing", SG),
    "masking_cfg": ("masking", CFG),
    "masking_sg": ("masking", SG),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m perf.run", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", nargs="+", help="architectures (default SiT-B/2 SiT-XL/2 on a GPU, SiT-S/4 "
                                                  "SiT-S/2 on a CPU)")
    parser.add_argument("--batch", type=int, nargs="+", help="images per batch (default 32 64 on a GPU, 4 8 on a CPU)")
    parser.add_argument("--steps", type=int, help="Euler steps (default 10 on a GPU, 2 on a CPU)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches before timing each case")
    parser.add_argument("--repeats", type=int, help="timed batches per case (default 5 on a GPU, 3 on a CPU)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="harness.numerics setting")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models (the warm-up compiles)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("reports/perf/perf.json"))
    parser.add_argument("--skip-metrics", action="store_true", help="leave out perf/metrics_perf.py")
    args = parser.parse_args(argv)
    gpu = torch.device(args.device).type == "cuda"
    args.arch = args.arch or (["SiT-B/2", "SiT-XL/2"] if gpu else ["SiT-S/4", "SiT-S/2"])
    args.batch = args.batch or ([32, 64] if gpu else [4, 8])
    args.steps = args.steps or (10 if gpu else 2)
    args.repeats = args.repeats or (5 if gpu else 3)
    for arch in args.arch:
        if arch not in ARCHS:
            parser.error(f"unknown --arch {arch!r}; known: {', '.join(ARCHS)}")
    return args


def model_spec(arch: str, sparsity: str) -> ModelSpec:
    """`arch` with routing over blocks 2 .. depth - 4 (TREAD's rule; r2->24 for XL/2) or MaskDiT masking."""
    depth = ARCHS[arch]["depth"]
    first = min(2, depth - 1)
    return ModelSpec(arch, sparsity=sparsity, route=(first, max(first, depth - 4)) if sparsity == "routing" else None)


@torch.no_grad()
def bare_cfg_loop(model: FlowModel, batch: int, sampler: SamplerSpec, device: torch.device) -> float:
    """Seconds for CFG Euler sampling written inline: the model calls GuidedDenoiser makes, nothing else."""
    cfg = model.config
    generators = make_generators(range(batch))
    labels = draw_labels(generators, cfg.num_classes).to(device)
    x = draw_noise(generators, (cfg.in_channels, cfg.input_size, cfg.input_size)).to(device)
    conds = torch.cat([labels, model.null_condition(labels)])
    grid = sampler.time_grid().tolist()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for k in range(sampler.steps):
        t = torch.full((2 * batch,), grid[k], dtype=x.dtype, device=device)
        v_cond, v_null = model.velocity(torch.cat([x, x]), t, conds, 0.0, [*generators, *generators]).chunk(2)
        x = x + (grid[k + 1] - grid[k]) * combine(v_cond, v_null, CFG.omega)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def time_case(name: str, model: FlowModel, args: argparse.Namespace, batch: int, sampler: SamplerSpec,
              device: torch.device) -> dict[str, Any]:
    """Timed batches of one case; for CFG each harness batch alternates with a bare-loop batch."""
    guidance = CASES[name][1]
    models = {"main": model}
    if name != "cfg":
        return measure_throughput(models, guidance, sampler, batch, device, warmup=args.warmup,
                                  repeats=args.repeats, precision=args.precision)
    rounds, bare = [], []
    for r in range(args.repeats):
        warmup = args.warmup if r == 0 else 0
        for _ in range(warmup):
            bare_cfg_loop(model, batch, sampler, device)
        rounds.append(measure_throughput(models, guidance, sampler, batch, device, warmup=warmup, repeats=1,
                                         precision=args.precision))
        bare.append(bare_cfg_loop(model, batch, sampler, device))
    harness = [r["batch_seconds"][0] for r in rounds]
    median = statistics.median(harness)
    return {**rounds[-1], "img_per_s": batch / median, "sec_per_step": median / sampler.steps,
            "img_per_s_e2e": statistics.median(r["img_per_s_e2e"] for r in rounds),
            "peak_mem_mb": max(r["peak_mem_mb"] for r in rounds), "batch_seconds": harness,
            "bare_batch_seconds": bare}


@torch.no_grad()
def padding_gain(device: torch.device, arch: str = "Testbed-S/4", batch: int = 50, repeats: int = 7) -> dict[str, Any]:
    """The testbed suite's batch of 50 in one model call against the 56 rows that padding every call to a multiple
    of 8 cost before SparseDiT padded only its conditioning rows: median seconds per call over alternating repeats."""
    model = build_model(ModelSpec(arch, sparsity="routing", route=(1, 4)), device=device)
    padded = batch + (-batch % 8)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(padded, 3, model.config.input_size, model.config.input_size, generator=generator).to(device)
    t = torch.rand(padded, generator=generator).to(device)
    y = torch.randint(model.num_classes, (padded,), generator=generator).to(device)
    seconds: dict[int, list[float]] = {batch: [], padded: []}
    for r in range(repeats + 1):  # the first round warms up
        for rows in (batch, padded):
            synchronize(device)
            start = time.perf_counter()
            model.velocity(x[:rows], t[:rows], y[:rows])
            synchronize(device)
            if r:
                seconds[rows].append(time.perf_counter() - start)
    exact, with_padding = (statistics.median(seconds[rows]) for rows in (batch, padded))
    return {"arch": arch, "batch_size": batch, "padded_rows": padded, "seconds": exact,
            "seconds_padded": with_padding, "padding_cost": with_padding / exact - 1}


def perf_metrics(device: torch.device) -> dict[str, Any] | None:
    """The metrics' benchmark (perf/metrics_perf.py, `run_benchmarks(device)`), when that file exists."""
    try:
        module = importlib.import_module("perf.metrics_perf")
    except ModuleNotFoundError as err:
        if err.name != "perf.metrics_perf":
            raise
        return None
    return module.run_benchmarks(str(device))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def measure_config(arch: str, batch: int, args: argparse.Namespace, sampler: SamplerSpec,
                   device: torch.device) -> dict[str, Any]:
    """Every case at one architecture and batch size; SG's speedup over CFG, measured and by FLOPs."""
    specs = {sparsity: model_spec(arch, sparsity) for sparsity in ("routing", "masking")}
    cases: dict[str, dict[str, Any]] = {}
    for sparsity in ("routing", "masking"):
        torch.manual_seed(0)
        model = build_model(specs[sparsity], device=device)
        if args.compile:
            model = compile_model(model)
        for name, (case_sparsity, guidance) in CASES.items():
            if case_sparsity != sparsity:
                continue
            timing = time_case(name, model, args, batch, sampler, device)
            weak = guidance.weak.gamma.label() if guidance.weak else "-"
            cases[name] = {**run_cost({"main": specs[sparsity]}, guidance, sampler), **timing,
                           "guidance": f"{guidance.method}, omega {guidance.omega:g}, gamma "
                                       f"{guidance.gamma_strong.label()} / {weak}"}
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def speedup(strong: str, weak: str) -> dict[str, float]:
        measured = cases[strong]["sec_per_step"] / cases[weak]["sec_per_step"]
        flops = cases[strong]["gflops_full"] / cases[weak]["gflops_full"]
        return {"measured": measured, "flops": flops, "flops_fvcore": cases[strong]["gflops"] / cases[weak]["gflops"],
                "measured_over_flops": measured / flops}

    bare, harness = min(cases["cfg"]["bare_batch_seconds"]), min(cases["cfg"]["batch_seconds"])
    return {"arch": arch, "batch_size": batch, "routing": speedup("cfg", "sg"),
            "masking": speedup("masking_cfg", "masking_sg"), "harness_overhead": harness / bare - 1,
            "routing_route": list(specs["routing"].route), "cases": cases}


def main(argv: list[str] | None = None) -> int:
    """Run every case at every size and batch, print the tables and the targets, write perf.json; returns 0."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sampler = SamplerSpec("euler", args.steps)
    print(f"perf on {device_name(device)}: {', '.join(args.arch)} (random weights, {args.precision}"
          f"{', compiled' if args.compile else ''}), batches {', '.join(map(str, args.batch))}, {args.steps} Euler "
          f"steps, {args.warmup} warm-up + {args.repeats} timed batches per case")
    configs = []
    for arch in args.arch:
        for batch in args.batch:
            config = measure_config(arch, batch, args, sampler, device)
            configs.append(config)
            print(f"\n{arch}, batch {batch} (routing r{config['routing_route'][0]}->{config['routing_route'][1]})")
            print(f"{'case':<12}{'GFLOPs':>9}{'full':>9}{'s/step':>10}{'img/s':>9}{'spread':>8}{'peak MB':>10}")
            for name, c in config["cases"].items():
                print(f"{name:<12}{c['gflops']:>9.2f}{c['gflops_full']:>9.2f}{c['sec_per_step']:>10.4f}"
                      f"{c['img_per_s']:>9.2f}{c.get('img_per_s_spread', 0):>8.1%}{c['peak_mem_mb']:>10.0f}")

    print(f"\nSG vs CFG speedup, measured / by FLOPs (with attention) [target >= {SPEEDUP_TARGET} of predicted]:")
    print(f"{'arch':<10}{'batch':>6}{'routing':>22}{'masking':>22}{'overhead':>10}")
    for c in configs:
        cells = [f"{c[k]['measured']:.2f}x / {c[k]['flops']:.2f}x {verdict(c[k]['measured_over_flops'] >= SPEEDUP_TARGET)}"
                 for k in ("routing", "masking")]
        print(f"{c['arch']:<10}{c['batch_size']:>6}{cells[0]:>22}{cells[1]:>22}{100 * c['harness_overhead']:>+9.2f}%")
    main_config = configs[-1]
    routing, masking, overhead = main_config["routing"], main_config["masking"], main_config["harness_overhead"]
    speedup_ok = routing["measured_over_flops"] >= SPEEDUP_TARGET
    print(f"harness overhead (harness loop vs bare loop, fastest CFG batch, {main_config['arch']} batch "
          f"{main_config['batch_size']}): {100 * overhead:+.2f}% "
          f"[target < {100 * OVERHEAD_TARGET:.0f}%: {verdict(overhead < OVERHEAD_TARGET)}]")

    padding = padding_gain(device)
    print(f"padding: {padding['arch']} batch {padding['batch_size']} takes {padding['seconds'] * 1e3:.1f} ms per call; "
          f"padded to {padding['padded_rows']} rows it took {padding['seconds_padded'] * 1e3:.1f} ms "
          f"({100 * padding['padding_cost']:+.1f}%, now saved)")

    report: dict[str, Any] = {
        "sg_speedup_measured": routing["measured"], "sg_speedup_flops": routing["flops"],
        "sg_speedup_flops_fvcore": routing["flops_fvcore"], "harness_overhead": overhead, "device": device_name(device),
        "targets": {"sg_speedup_fraction": SPEEDUP_TARGET, "sg_speedup_pass": speedup_ok,
                    "harness_overhead_max": OVERHEAD_TARGET, "harness_overhead_pass": overhead < OVERHEAD_TARGET},
        "masking_sg_speedup_measured": masking["measured"], "masking_sg_speedup_flops": masking["flops"],
        "arch": main_config["arch"], "batch_size": main_config["batch_size"], "steps": args.steps,
        "warmup": args.warmup, "repeats": args.repeats, "precision": args.precision, "compile": args.compile,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "load_average": list(os.getloadavg()),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "configs": configs, "cases": main_config["cases"], "padding": padding,
    }
    if not args.skip_metrics:
        metrics = perf_metrics(device)
        if metrics is not None:
            report["metrics"] = metrics
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
