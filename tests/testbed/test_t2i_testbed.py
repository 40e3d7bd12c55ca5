"""The text-to-image testbed: GenEval-style world, word encoder, world detector with GenEval's rules, training, suite."""

import json

import numpy as np
import pytest
import torch

from harness.errors import HarnessError
from harness.guidance import GuidanceSpec, Schedule
from harness.metrics.geneval.detectors import build_detector
from harness.metrics.geneval.rules import summarize
from harness.models import build_model
from harness.models.text_encoders import build_text_encoder
from harness.prompts import load_prompts
from harness.prompts.encode import prompt_conditions
from harness.sampling import SamplerSpec, generate
from harness.suite import load_suite
from harness.testbed import scenes, train, words
from harness.testbed.detector import WorldDetector
from harness.testbed.geneval_testbed import bootstrap_intervals, judge_images


def test_evaluation_set_is_committed_in_genevals_format_and_held_out_where_feasible():
    lines = scenes.EVAL_FILE.read_text().splitlines()
    assert [json.loads(line) for line in lines] == scenes.evaluation_prompts()  # the file is what the grammar says
    metas = scenes.evaluation_prompts()
    assert [m["tag"] for m in metas] == [t for t in scenes.TASKS for _ in range(scenes.EVAL_COUNTS[t])]
    counting = next(m for m in metas if m["tag"] == "counting")
    assert counting["exclude"] == [{"class": counting["include"][0]["class"],
                                    "count": counting["include"][0]["count"] + 1}]
    position = next(m for m in metas if m["tag"] == "position")
    assert position["include"][1]["position"][1] == 0 and len(position["include"]) == 2
    training = {m["prompt"] for task in scenes.training_prompts().values() for m in task}
    for m in metas:
        assert (m["prompt"] in training) == (m["tag"] not in scenes.HELD_OUT_TASKS)
    assert len(load_prompts(str(scenes.EVAL_FILE))) == len(metas)  # the prompt plumbing reads it


def test_scenes_put_one_object_per_grid_cell_and_position_pairs_side_by_side():
    rng = np.random.default_rng(0)
    for meta in scenes.evaluation_prompts():
        objects = scenes.scene_objects(meta, rng)
        cells = {(int(o["x"] // scenes.CELL), int(o["y"] // scenes.CELL)) for o in objects}
        assert len(cells) == len(objects) == sum(r["count"] for r in meta["include"])  # distinct cells
        if meta["tag"] == "position":
            anchor, other = (np.array([o["x"], o["y"]]) for o in objects)
            dx, dy = scenes.RELATIONS[meta["include"][1]["position"][0]]
            offset = other - anchor  # include[1] is `relation` of include[0]
            assert np.sign(offset[0 if dx else 1]) == (dx or dy) and abs(offset[1 if dx else 0]) <= 2 * scenes.JITTER
        for o in objects:  # inside its cell, so objects never touch
            assert abs(o["x"] % scenes.CELL - scenes.CELL / 2) <= scenes.JITTER
            assert o["radius"] + scenes.JITTER < scenes.CELL / 2


def test_world_detector_scores_rendered_scenes_by_genevals_rules():
    metas = [m for m in scenes.evaluation_prompts() if m["tag"] != "counting"][::6]
    detector = build_detector("testbed")
    assert isinstance(detector, WorldDetector)
    right = summarize(judge_images(scenes.draw(metas, 11), metas, detector))
    shuffled = metas[1:] + metas[:1]  # every scene judged against another prompt
    wrong = summarize(judge_images(scenes.draw(shuffled, 11), metas, detector))
    assert right["geneval_images"] >= 0.9
    assert wrong["geneval_images"] <= 0.3
    found = detector.detect(scenes.draw([metas[0]], 3)[0])
    top = max(found.items(), key=lambda kv: max(d["score"] for d in kv[1]))[0]
    assert top == metas[0]["include"][0]["class"]


def test_bootstrap_intervals_bracket_task_scores():
    records = [{"tag": t, "correct": i % k == 0} for t, k in (("a", 2), ("b", 4)) for i in range(40)]
    ci = bootstrap_intervals(records, prefix="g")
    assert ci["g_a_ci"][0] < 0.5 < ci["g_a_ci"][1] and ci["g_b_ci"][0] < 0.25 < ci["g_b_ci"][1]
    assert ci["g_ci"][0] < 0.375 < ci["g_ci"][1]


def test_word_encoder_vocabulary_null_caption_and_loading(tmp_path):
    ids, mask = words.tokenize(["a photo of two crosses", ""])
    assert mask.sum(1).tolist() == [6, 1]
    with pytest.raises(HarnessError, match="vocabulary"):
        words.tokenize(["a photo of a dog"])
    with pytest.raises(HarnessError, match="not found"):
        build_text_encoder("testbed_words", {"checkpoint": str(tmp_path / "missing.safetensors")})
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(HarnessError, match="does not load"):
        build_text_encoder("testbed_words", {"checkpoint": str(bad)})
    with pytest.raises(HarnessError, match="bad options"):
        build_text_encoder("testbed_words", {"checkpoints": "x"})


def test_t2i_training_part_writes_loadable_checkpoints_and_a_record(tmp_path):
    train.main(["--only", "t2i", "--steps", "4", "--batch", "4", "--pool", "16", "--early-step", "2",
                "--out", str(tmp_path)])
    record = json.loads((tmp_path / "testbed_record.json").read_text())["t2i"]
    assert record["steps"] == 4 and record["early_step"] == 2 and np.isfinite(record["log"][-1]["loss"])
    spec = train.t2i_spec()
    for name in ("t2i_testbed", "t2i_testbed_early"):
        spec.checkpoint = str(tmp_path / f"{name}.safetensors")
        build_model(spec)  # strict load into the suite's architecture
        encoder = build_text_encoder("testbed_words", {"checkpoint": str(tmp_path / f"{name}_text.safetensors")})
        states, mask = encoder.encode(["a photo of a red disc"])
        assert states.shape == (1, words.MAX_LEN, words.WIDTH) and mask.sum() == 7
    # a second stage continues from the first one's EMA weights and keeps its early checkpoint and record
    early = (tmp_path / "t2i_testbed_early.safetensors").read_bytes()
    second = tmp_path / "second"
    train.main(["--only", "t2i", "--steps", "2", "--batch", "4", "--pool", "16", "--init", str(tmp_path),
                "--seed", "1", "--out", str(second)])
    record = json.loads((second / "testbed_record.json").read_text())["t2i"]
    assert record["steps"] == 2 and record["early_step"] is None and record["init_from"]["steps"] == 4
    assert not (second / "t2i_testbed_early.safetensors").exists()
    assert (tmp_path / "t2i_testbed_early.safetensors").read_bytes() == early


def _cfg_run_and_models(suite):
    """The suite's first CFG run and its committed models, with the evaluation prompts as their conditions."""
    run = next(r for r in suite.runs if r.guidance.method == "cfg")
    prompts = load_prompts(suite.prompts, suite.root)
    models = {}
    for role, spec in run.models.items():
        models[role] = build_model(spec)
        models[role].conditions = prompt_conditions(spec, prompts)
    return run, models


def test_suite_runs_the_t2i_path_and_prompts_matter_on_committed_models():
    suite = load_suite("suites/t2i_testbed.toml")
    assert {"geneval_testbed", "fd_testbed"} <= set(suite.metrics)
    run, models = _cfg_run_and_models(suite)
    conds = torch.tensor([0, 0, 40, 40])  # "a photo of a disc" twice, then a colour prompt twice
    sampler = SamplerSpec("euler", 6)
    cfg, labels = generate(models, run.guidance, sampler, [0, 1, 2, 3], conds)
    sg, _ = generate(models, GuidanceSpec("sg", 2.0, Schedule(start=0.5), Schedule(start=0.9)), sampler, [0, 1, 2, 3],
                     conds)
    assert cfg.shape == (4, 32, 32, 3) and cfg.dtype == np.uint8 and labels.tolist() == conds.tolist()
    assert not np.array_equal(cfg, sg)
    other, _ = generate(models, run.guidance, sampler, [0, 1, 2, 3], torch.tensor([1, 1, 41, 41]))
    assert np.abs(cfg.astype(int) - other.astype(int)).mean() > 0.5  # another prompt, another image


def test_committed_t2i_model_draws_the_colour_and_shape_its_prompt_names():
    """The committed model passes a small gate of its own: under CFG it draws the 25 colour prompts' objects far
    more often than the same images match the neighbouring prompt (another colour of the same shape)."""
    _, models = _cfg_run_and_models(load_suite("suites/t2i_testbed.toml"))
    metas = scenes.evaluation_prompts()
    colors = [i for i, m in enumerate(metas) if m["tag"] == "colors"]
    images, _ = generate(models, GuidanceSpec("cfg", 3.0), SamplerSpec("euler", 12), colors, torch.tensor(colors))
    detector = WorldDetector()
    right = summarize(judge_images(images, [metas[i] for i in colors], detector))["geneval_colors"]
    wrong = summarize(judge_images(images, [metas[i] for i in colors[1:] + colors[:1]], detector))["geneval_colors"]
    assert right >= 0.5 and wrong <= 0.2, (right, wrong)


def test_bench_of_the_t2i_suite_scores_prompt_metrics_from_the_command_line(tmp_path):
    """The non-dry path end to end (generation, the prompt metrics' asset check, scoring, report) on 4 images."""
    import subprocess
    import sys

    out, reports = tmp_path / "runs", tmp_path / "reports"
    proc = subprocess.run([sys.executable, "-m", "harness", "bench", "suites/t2i_testbed.toml", "--samples", "4",
                           "--steps", "2", "--only", "^unguided-seed0$", "--out", str(out), "--reports", str(reports)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (reports / "t2i_testbed" / "results.csv").read_text().splitlines()
    header, row = table[0].split(","), table[1].split(",")
    assert "geneval_testbed" in header and row[header.index("geneval_testbed")] != ""


def _records(correct: list[bool], tags: list[str]) -> list[dict]:
    return [{"filename": f"{i:05}.png", "tag": tag, "metadata": f'{{"tag": "{tag}", "i": {i // 2}}}',
             "correct": ok} for i, (ok, tag) in enumerate(zip(correct, tags))]


def test_paired_differences_match_the_score_gap_and_pairing_narrows_the_interval():
    from harness.metrics.geneval.rules import paired_differences, summarize

    rng = np.random.default_rng(0)
    tags = ["counting"] * 200 + ["colors"] * 200
    base = rng.random(400) < 0.5
    better = base | (rng.random(400) < 0.2)  # the same images, some more of them correct
    a, b = _records(list(better), tags), _records(list(base), tags)
    diffs = paired_differences(a, b)
    sa, sb = summarize(a), summarize(b)
    for key in ("geneval_counting", "geneval_colors", "geneval"):
        d, lo, hi = diffs[key]
        assert d == pytest.approx(sa[key] - sb[key]) and lo <= d <= hi
    assert diffs["geneval"][1] > 0  # a consistent gain is resolved although each run's own interval is wide
    with pytest.raises(HarnessError, match="same images"):
        paired_differences(a[:-1], b)
    with pytest.raises(HarnessError, match="different prompts"):
        paired_differences([{**a[0], "metadata": "x"}, *a[1:]], b)


def test_gate_and_versus_table_from_a_results_table(tmp_path):
    import pandas as pd

    from harness.metrics.geneval.rules import write_results
    from harness.testbed.t2i_gate import gate, versus

    tags = ["counting", "colors"] * 50
    rows = []
    for run, method, p, gflops in (("unguided", "none", 0.3, 1.0), ("cfg-omega2", "cfg", 0.5, 2.0),
                                   ("cfg-omega4", "cfg", 0.4, 2.0), ("sg", "sg", 0.6, 1.5)):
        correct = list(np.random.default_rng(int(p * 10)).random(100) < p)
        (tmp_path / run).mkdir()
        write_results(_records(correct, tags), tmp_path / run / "results.jsonl")
        score = float(np.mean(correct))
        rows.append({"run": run, "method": method, "gamma_strong": 0.0, "gflops": gflops, "img_per_s": 10 / gflops,
                     "geneval_testbed": score, "geneval_testbed_lo": score - 0.05, "geneval_testbed_hi": score + 0.05})
    results = pd.DataFrame(rows)
    verdict = gate(results, {"geneval_testbed": 0.1, "lo": 0.05, "hi": 0.15})
    assert verdict["unguided_above_random"] and "sg" in verdict["guided_runs_disjoint_from_unguided"]
    assert verdict["go"]
    assert not gate(results, {"geneval_testbed": 0.3, "lo": 0.25, "hi": 0.4})["go"]  # unguided not above the floor
    close = gate(results, {"geneval_testbed": 0.2, "lo": 0.14, "hi": 0.28})  # intervals overlap, clear difference
    assert close["go"] and not close["unguided_intervals_disjoint_from_random"]
    assert close["unguided_minus_random"]["unguided"][1] > 0
    table = versus(results, tmp_path, "cfg")
    best_cfg = max(("cfg-omega2", "cfg-omega4"), key=lambda r: results.set_index("run").loc[r, "geneval_testbed"])
    assert f"minus {best_cfg}" in table and "| sg | 0.75 | 1.33 |" in table and "| unguided |" not in table
    assert "counting" in table.splitlines()[2] and "colors" in table.splitlines()[2]
