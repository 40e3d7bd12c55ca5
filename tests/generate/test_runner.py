"""Generation: per-image seeds across batch sizes and processes, resume after SIGKILL, corrupted shards, config
changes, NaN detection, balanced labels and the ADM npz. Uses the tiny Testbed-XS/4 model with random weights."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cli import main
from harness.errors import HarnessError
from harness.models import ARCHS, build_model
from harness.generate import generate_suite
from harness.generate.claims import MAX_UNITS, plan_units
from harness.generate.runner import balanced_labels, plan_shards
from harness.rundir import ADM_NPZ, RUN_MANIFEST, read_samples, shard_is_valid, shard_path
from harness.suite import load_suite
from tests.helpers import (RUN, generation_suite, images_by_index, random_checkpoint, run_dir, shards,
                           write_generation_suite)

def assert_same_samples(out: Path, ref: Path, n: int) -> None:
    indices, images, labels = images_by_index(out)
    ref_indices, ref_images, ref_labels = images_by_index(ref)
    assert np.array_equal(indices, np.arange(n)) and np.array_equal(ref_indices, np.arange(n))
    assert np.array_equal(labels, ref_labels)
    assert np.array_equal(images, ref_images)


def test_forward_rows_sets_the_call_shape_is_hashed_and_keeps_images_batch_invariant(weights, tmp_path):
    """[models.x] forward_rows: the network sees that many images per call whatever the batch; images do not depend
    on the batch size at any row count; the hash changes only when it is not the default."""
    def suite(folder: Path, batch: int = 4, **main):
        folder.mkdir()
        return load_suite(write_generation_suite(folder, weights, batch_size=batch, main=main), root=folder)

    sixteen = suite(tmp_path / "a", forward_rows=16)
    assert sixteen.runs[0].models["main"].forward_rows == 16
    model, seen = build_model(sixteen.runs[0].models["main"]), []
    model.net.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[0]))
    c, side = model.config.in_channels, model.config.input_size
    model.velocity(torch.randn(5, c, side, side), torch.full((5,), 0.5), torch.zeros(5, dtype=torch.long))
    assert seen == [16]
    hashes = {rows: suite(tmp_path / f"h{rows}", forward_rows=rows).runs[0].config_hash for rows in (8, 16)}
    assert hashes[8] == load_suite(write_generation_suite(tmp_path, weights), root=tmp_path).runs[0].config_hash
    assert hashes[16] != hashes[8]
    for name, batch in (("b4", 4), ("b9", 9)):
        generate_suite(suite(tmp_path / name, forward_rows=16, batch=batch), runs_root=tmp_path / name / "runs",
                       device="cpu")
    assert_same_samples(tmp_path / "b9" / "runs", tmp_path / "b4" / "runs", 12)
    with pytest.raises(HarnessError, match=r"\[models.main\].*forward_rows"):
        suite(tmp_path / "bad", forward_rows=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("weights") / "testbed_xs.safetensors")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, weights) -> Path:
    """An uninterrupted single-process run: 12 images, batch size 4 (3 shards), with the ADM npz."""
    folder = tmp_path_factory.mktemp("reference")
    suite = load_suite(write_generation_suite(folder, weights), root=folder)
    results = generate_suite(suite, runs_root=folder / "runs", device="cpu", adm_npz=True)
    assert [(r.generated, r.kept) for r in results] == [(12, 0)]
    return folder / "runs"


def test_reference_run_layout_and_manifest(reference):
    files = shards(reference)
    assert list(files) == ["samples-000000.npz", "samples-000004.npz", "samples-000008.npz"]
    first = files["samples-000008.npz"]
    assert first["arr_0"].dtype == np.uint8 and first["arr_0"].shape == (4, 32, 32, 3)
    assert first["labels"].dtype == np.int64 and list(first["indices"]) == [8, 9, 10, 11]
    assert not list(run_dir(reference).glob(".*.tmp"))
    manifest = json.loads((run_dir(reference) / RUN_MANIFEST).read_text())
    suite = load_suite(run_dir(reference).parents[2] / "suite.toml", root=run_dir(reference).parents[2])
    assert manifest["run"] == RUN and manifest["suite"] == "rt" and manifest["complete"] is True
    assert manifest["config"] == suite.runs[0].config and manifest["config_hash"] == suite.runs[0].config_hash
    assert manifest["device"].startswith("cpu") and manifest["world_size"] == 1 and manifest["dry_run"] is False
    assert set(manifest["versions"]) >= {"torch", "numpy", "harness"}
    with np.load(run_dir(reference) / ADM_NPZ) as adm:
        assert adm.files == ["arr_0"]
        assert np.array_equal(adm["arr_0"], images_by_index(reference)[1])
    # images differ from one another: the per-image seeds are really used
    images = images_by_index(reference)[1]
    assert len({im.tobytes() for im in images}) == len(images)


def test_shard_plan_and_claim_units():
    plan = plan_shards(10, 4)
    assert plan == [range(0, 4), range(4, 8), range(8, 10)]
    assert plan_units(plan) == [[s] for s in plan]  # few shards: a unit each
    big = plan_shards(50_000, 64)
    units = plan_units(big)
    assert len(units) <= MAX_UNITS and [s for u in units for s in u] == big  # disjoint, complete, in order


def test_batch_size_4_vs_9_same_samples(reference, weights, tmp_path):
    suite = load_suite(write_generation_suite(tmp_path, weights, batch_size=9), root=tmp_path)
    generate_suite(suite, runs_root=tmp_path / "runs", device="cpu")
    assert list(shards(tmp_path / "runs")) == ["samples-000000.npz", "samples-000009.npz"]
    assert_same_samples(tmp_path / "runs", reference, 12)


def test_sigkill_then_rerun_gives_the_uninterrupted_samples(reference, weights, tmp_path):
    path = write_generation_suite(tmp_path, weights)
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "harness", "generate", str(path), "--out", str(out), "--device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(run_dir(out).glob("samples-*.npz")):
        assert proc.poll() is None and time.monotonic() < deadline, "no shard appeared"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert 1 <= len(shards(out)) < 3, "the kill did not interrupt the run"
    rerun = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert shards(out).keys() == shards(reference).keys()
    assert_same_samples(out, reference, 12)


def test_torchrun_two_processes_same_shards_as_one(reference, weights, tmp_path):
    path = write_generation_suite(tmp_path, weights)
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "harness", "generate", str(path), "--out", str(out), "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, want = shards(out), shards(reference)
    assert list(got) == list(want)
    for name in want:
        for key in ("arr_0", "labels", "indices"):
            assert np.array_equal(got[name][key], want[name][key]), (name, key)
    manifest = json.loads((run_dir(out) / RUN_MANIFEST).read_text())
    assert manifest["world_size"] == 2 and manifest["complete"] is True


def copy_reference(reference: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the reference suite and runs to damage; returns (suite path, runs folder)."""
    shutil.copytree(reference, tmp_path / "runs")
    path = tmp_path / "suite.toml"
    shutil.copy(reference.parent / "suite.toml", path)
    return path, tmp_path / "runs"


def test_corrupted_and_truncated_shards_are_regenerated_alone(reference, tmp_path):
    path, out = copy_reference(reference, tmp_path)
    d = run_dir(out)
    truncated, flipped, intact = (shard_path(d, i) for i in (0, 4, 8))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2: len(data) // 2 + 16] = bytes(16)  # inside arr_0: only the zip CRC notices
    flipped.write_bytes(bytes(data))
    (d / ".samples-000004.npz.999.tmp").write_bytes(b"left by a killed writer")
    assert not shard_is_valid(truncated, range(0, 4)) and not shard_is_valid(flipped, range(4, 8))
    before = intact.stat().st_mtime_ns
    (result,) = generate_suite(load_suite(path, root=tmp_path), runs_root=out, device="cpu")
    assert (result.generated, result.kept) == (8, 4)
    assert intact.stat().st_mtime_ns == before
    assert not list(d.glob(".*.tmp"))
    assert_same_samples(out, reference, 12)


def test_changed_config_stops_with_message_then_fresh_starts_over(reference, tmp_path, capsys):
    path, out = copy_reference(reference, tmp_path)
    path.write_text(path.read_text().replace("steps = 2", "steps = 3"))
    status = main(["generate", str(path), "--out", str(out), "--root", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2
    assert f"run '{RUN}'" in err and "sampler.steps: 2 -> 3" in err and "--fresh" in err
    assert shards(out).keys() == shards(reference).keys()  # nothing touched
    old_images = images_by_index(out)[1]
    assert main(["generate", str(path), "--out", str(out), "--root", str(tmp_path), "--fresh", "--samples", "4"]) == 0
    manifest = json.loads((run_dir(out) / RUN_MANIFEST).read_text())
    assert manifest["config"]["sampler"]["steps"] == 3 and not (run_dir(out) / ADM_NPZ).exists()
    indices, images, _ = images_by_index(out)
    assert list(shards(out)) == ["samples-000000.npz"] and np.array_equal(indices, np.arange(4))
    assert not np.array_equal(images, old_images[:4])


def test_retrained_checkpoint_at_the_same_path_stops_with_message(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    ckpt = random_checkpoint(tmp_path / "w.safetensors")
    path, out = write_generation_suite(tmp_path, ckpt, samples=4), tmp_path / "runs"
    assert main(["generate", str(path), "--out", str(out)]) == 0
    assert main(["generate", str(path), "--out", str(out)]) == 0  # unchanged weights resume
    before = shards(out)
    save_file({k: v * 1.01 for k, v in load_file(str(ckpt)).items()}, str(ckpt))  # "retrained" in place
    assert main(["generate", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "checkpoint changed" in err and "[models.main]" in err and "--fresh" in err
    assert all(np.array_equal(before[k]["arr_0"], v["arr_0"]) for k, v in shards(out).items())  # nothing touched
    assert main(["generate", str(path), "--out", str(out), "--fresh"]) == 0


def test_a_failed_load_does_not_pin_the_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "w.safetensors"
    ckpt.write_bytes(b"not weights")
    path, out = write_generation_suite(tmp_path, ckpt, samples=4), tmp_path / "runs"
    assert main(["generate", str(path), "--out", str(out)]) == 2  # unreadable: no image made
    assert json.loads((run_dir(out) / "manifest.json").read_text())["weights_sha256"] == {}
    random_checkpoint(ckpt)  # the user fixes the file
    capsys.readouterr()
    assert main(["generate", str(path), "--out", str(out)]) == 0, capsys.readouterr().err
    pinned = json.loads((run_dir(out) / "manifest.json").read_text())["weights_sha256"]
    assert list(pinned) == ["main"] and len(pinned["main"]) == 64


def test_more_samples_extends_fewer_stops(reference, tmp_path, capsys):
    path, out = copy_reference(reference, tmp_path)
    (result,) = generate_suite(load_suite(path, root=tmp_path, samples=14), runs_root=out, device="cpu")
    assert (result.generated, result.kept) == (2, 12)
    indices, images, _ = images_by_index(out)
    assert np.array_equal(indices, np.arange(14))
    assert np.array_equal(images[:12], images_by_index(reference)[1])
    assert not (run_dir(out) / ADM_NPZ).exists()  # stale: it held 12 images
    assert main(["generate", str(path), "--out", str(out), "--root", str(tmp_path), "--samples", "8"]) == 2
    assert "run.samples: 14 -> 8" in capsys.readouterr().err


def test_nan_sample_stops_run_naming_run_and_indices(tmp_path):
    nan = random_checkpoint(tmp_path / "nan.safetensors", nan=True)
    suite = load_suite(write_generation_suite(tmp_path, nan, samples=6, batch_size=4, steps=2), root=tmp_path)
    with pytest.raises(HarnessError, match=rf"run '{RUN}': NaN or Inf .* image indices \[0, 1, 2, 3\]"):
        generate_suite(suite, runs_root=tmp_path / "runs", device="cpu")
    assert not list(run_dir(tmp_path / "runs").glob("samples-*.npz"))


def test_balanced_labels(weights, tmp_path):
    labels = balanced_labels(20, 8, seed=7)
    assert sorted(np.bincount(labels, minlength=8)) == [2] * 4 + [3] * 4  # equal up to the remainder
    assert np.array_equal(labels, balanced_labels(20, 8, seed=7))
    assert not np.array_equal(labels, balanced_labels(20, 8, seed=8))
    suite = load_suite(write_generation_suite(tmp_path, weights, samples=16, steps=2, labels="balanced"), root=tmp_path)
    generate_suite(suite, runs_root=tmp_path / "runs", device="cpu")
    _, got = read_samples(run_dir(tmp_path / "runs"))
    classes = ARCHS["Testbed-XS/4"]["num_classes"]
    assert np.array_equal(got, balanced_labels(16, classes, seed=7))
    base, extra = divmod(16, classes)  # equal counts up to the remainder
    assert sorted(np.bincount(got, minlength=classes)) == [base] * (classes - extra) + [base + 1] * extra


#################################################################################
#            Throughput from the generation; precision and compile             #
#################################################################################


def test_cost_json_takes_throughput_from_the_generation_and_times_only_resumed_runs(weights, tmp_path, monkeypatch):
    import harness.cost.throughput
    from harness.cost import measure_costs
    from harness.generate import ModelCache
    from harness.rundir import COST_FILE as COST
    from harness.rundir import TIMING_FILE as TIMING

    suite = load_suite(write_generation_suite(tmp_path, weights, samples=14, batch_size=4), root=tmp_path)
    out = tmp_path / "runs"
    generate_suite(suite, runs_root=out, device="cpu")
    timing = json.loads((run_dir(out) / TIMING).read_text())
    assert [(b["images"], b["warmup"]) for b in timing["batches"]] == [(4, True), (4, False), (4, False), (2, False)]
    passes = []
    monkeypatch.setattr(harness.cost.throughput, "measure_throughput", lambda *a, **k: passes.append(a) or {})
    measure_costs(suite.runs, out, ModelCache(torch.device("cpu")), progress=False)
    cost = json.loads((run_dir(out) / COST).read_text())
    assert not passes and cost["throughput_source"] == "generation" and cost["timed_batches"] == 2  # full batches
    rates = sorted(4 / b["denoise"] for b in timing["batches"][1:3])
    assert cost["img_per_s"] == pytest.approx(sum(rates) / 2) and cost["img_per_s_iqr"] == pytest.approx(
        (rates[1] - rates[0]) / 2)
    assert cost["gflops_per_s"] == pytest.approx(cost["gflops"] * 2 * cost["img_per_s"])
    assert cost["utilization"] == pytest.approx(cost["gflops_per_s"] / cost["calibration_gflops_per_s"])
    assert cost["precision"] == "fp32" and cost["compile"] is False and cost["compile_seconds"] is None
    # every shard resumed in a later process: no timing of this config on record, so a short timing pass
    (run_dir(out) / TIMING).unlink()
    (run_dir(out) / COST).unlink()
    monkeypatch.undo()
    generate_suite(suite, runs_root=out, device="cpu")
    assert not (run_dir(out) / TIMING).exists()
    measure_costs(suite.runs, out, ModelCache(torch.device("cpu")), warmup=0, repeats=1, progress=False)
    cost = json.loads((run_dir(out) / COST).read_text())
    assert cost["throughput_source"] == "timing pass" and cost["timed_batches"] == len(cost["batch_seconds"]) == 1
    assert cost["img_per_s"] == pytest.approx(cost["batch_size"] / cost["batch_seconds"][0])


def test_precision_is_recorded_and_hashed_and_bf16_samples_differ_slightly(weights, tmp_path):
    fp32 = load_suite(write_generation_suite(tmp_path, weights, samples=4), root=tmp_path).runs[0]
    text = generation_suite(weights, samples=4, run={"precision": "bf16"})
    (tmp_path / "bf16.toml").write_text(text)
    bf16 = load_suite(tmp_path / "bf16.toml", root=tmp_path).runs[0]
    (tmp_path / "explicit.toml").write_text(generation_suite(weights, samples=4, suite={"precision": "fp32"}))
    explicit = load_suite(tmp_path / "explicit.toml", root=tmp_path).runs[0]
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16") and bf16.config["run"]["precision"] == "bf16"
    assert bf16.config_hash != fp32.config_hash == explicit.config_hash
    # runs made before the option existed (no precision in their config) keep their hash
    from harness.suite import config_hash

    legacy = json.loads(json.dumps(fp32.config))
    del legacy["run"]["precision"], legacy["run"]["compile"]
    assert config_hash(legacy) == fp32.config_hash
    for run, out in ((fp32, tmp_path / "fp32"), (bf16, tmp_path / "bf16")):
        generate_suite(load_suite(tmp_path / ("bf16.toml" if run is bf16 else "suite.toml"), root=tmp_path),
                       runs_root=out, device="cpu")
    assert json.loads((run_dir(tmp_path / "bf16") / RUN_MANIFEST).read_text())["config"]["run"]["precision"] == "bf16"
    a, b = images_by_index(tmp_path / "fp32")[1], images_by_index(tmp_path / "bf16")[1]
    diff = np.abs(a.astype(int) - b.astype(int))
    assert 0 < diff.mean() < 8  # bf16 autocast ran (not bit-identical) on the same samples (close)
    with pytest.raises(HarnessError, match="precision"):
        (tmp_path / "bad.toml").write_text(generation_suite(weights, samples=4, run={"precision": "fp16"}))
        load_suite(tmp_path / "bad.toml", root=tmp_path)


def test_compile_is_applied_and_its_time_reported_apart(weights, tmp_path, monkeypatch):
    import harness.numerics
    from harness.cost import measure_costs
    from harness.generate import ModelCache
    from harness.rundir import COST_FILE as COST
    from harness.rundir import TIMING_FILE as TIMING

    monkeypatch.setattr(harness.numerics, "COMPILE_BACKEND", "eager")  # inductor's C++ build takes minutes here
    text = generation_suite(weights, samples=12, suite={"compile": True})
    (tmp_path / "suite.toml").write_text(text)
    suite = load_suite(tmp_path / "suite.toml", root=tmp_path)
    assert suite.runs[0].compile and suite.runs[0].config["run"]["compile"] is True
    cache = ModelCache(torch.device("cpu"))
    generate_suite(suite, runs_root=tmp_path / "runs", device="cpu", cache=cache)
    assert all(type(m.net).__name__ == "OptimizedModule" for m in cache.models.values())
    measure_costs(suite.runs, tmp_path / "runs", ModelCache(torch.device("cpu")), progress=False)
    cost = json.loads((run_dir(tmp_path / "runs") / COST).read_text())
    timing = json.loads((run_dir(tmp_path / "runs") / TIMING).read_text())
    warmup, timed = timing["batches"][0], timing["batches"][1:]
    assert warmup["warmup"] and not any(b["warmup"] for b in timed) and cost["timed_batches"] == len(timed) == 2
    assert cost["compile"] is True and cost["batch_seconds"] == [b["denoise"] for b in timed]  # warm-up left out
    typical = statistics.median(b["total"] / b["images"] for b in timed)
    assert cost["compile_seconds"] == pytest.approx(max(0.0, warmup["total"] - typical * warmup["images"]))


def test_a_single_process_interleaves_runs_batch_by_batch_with_the_same_images(weights, tmp_path, monkeypatch):
    import harness.generate.runner

    plain = {"name": "plain", "method": "cfg", "omega": 1.5}
    text = generation_suite(weights, samples=8, batch_size=4, more_runs=[plain])
    (tmp_path / "two.toml").write_text(text)
    suite = load_suite(tmp_path / "two.toml", root=tmp_path)
    order = []
    original = harness.generate.runner.write_shard
    monkeypatch.setattr(harness.generate.runner, "write_shard",
                        lambda path, *a: order.append(path.parent.name) or original(path, *a))
    results = generate_suite(suite, runs_root=tmp_path / "mixed", device="cpu")
    assert order == [RUN, "plain", RUN, "plain"]  # round robin: both runs' batches sample the whole generation
    assert [r.generated for r in results] == [8, 8]
    order.clear()
    generate_suite(suite, runs_root=tmp_path / "sequential", device="cpu", interleave=False)
    assert order == [RUN, RUN, "plain", "plain"]
    for run in (RUN, "plain"):
        for shard in sorted((tmp_path / "mixed" / "rt" / run).glob("samples-*.npz")):
            with np.load(shard) as a, np.load(tmp_path / "sequential" / "rt" / run / shard.name) as b:
                assert all(np.array_equal(a[k], b[k]) for k in a.files)
        timing = json.loads((tmp_path / "mixed" / "rt" / run / "timing.json").read_text())
        assert [b["warmup"] for b in timing["batches"]] == [True, False]
