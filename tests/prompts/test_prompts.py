"""Prompt sets and text-conditioned generation: files, GenEval's checked data, the HPSv3 asset, suite fields, the
prompt-state cache, and image i = prompt i // images_per_prompt, seed + i, for any batch size and process count."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import suite_text
from harness.cli import build_parser, cmd_bench, main
from harness.errors import HarnessError
from harness.prompts import load_prompts, read_prompt_file
from harness.prompts import geneval as geneval_module
from harness.prompts.hpsv3 import CATEGORIES, category_file, hpsv3_prompts
from harness.generate import generate_suite
from harness.suite import load_suite

PROMPTS = ["a red cube", "two blue balls", "a green ring above a cat", "a dog", "a yellow star"]


def tiny_textdit_checkpoint(path: Path) -> Path:
    """TextDiT-Tiny weights drawn at random, all non-zero (its adaLN-Zero init alone would predict zero)."""
    from safetensors.torch import save_file

    from harness.models import FAMILIES, ModelSpec

    config, _ = ModelSpec("TextDiT-Tiny", sparsity="routing", route=(0, 1)).config()
    gen = torch.Generator().manual_seed(0)
    net = FAMILIES["textdit"].network(config)
    save_file({k: torch.randn(v.shape, generator=gen) * 0.1 for k, v in net.state_dict().items()}, str(path))
    return path


def text_suite(folder: Path, checkpoint: Path | None, prompts: str = "prompts.txt", samples: int = 10,
               batch_size: int = 4, method: str = "cfg+sg") -> Path:
    """A TextDiT-Tiny suite over PROMPTS (written to prompts.txt) with one run of `method`."""
    (folder / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    run = {"name": "g", "method": method, "omega": 2.0}
    if method != "icg":
        run.update(gamma_strong=0.25, gamma_weak=0.5)
    path = folder / "suite.toml"
    path.write_text(suite_text(
        suite={"name": "t2i", "samples": samples, "batch_size": batch_size, "seed": 3, "prompts": prompts,
               "images_per_prompt": 2, "metrics": None},
        sampler={"kind": None},
        main={"arch": "TextDiT-Tiny", "checkpoint": str(checkpoint) if checkpoint else None, "route": [0, 1],
              "text_encoder": "random", "text_encoder_options": {"dim": 16, "length": 8}},
        runs=[run]))
    return path


def run_arrays(runs: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    parts = [np.load(p) for p in sorted((runs / "t2i" / "g").glob("samples-*.npz"))]
    return tuple(np.concatenate([p[k] for p in parts]) for k in ("indices", "arr_0", "labels"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_textdit_checkpoint(tmp_path_factory.mktemp("w") / "textdit_tiny.safetensors")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, checkpoint) -> Path:
    folder = tmp_path_factory.mktemp("ref")
    suite = load_suite(text_suite(folder, checkpoint), root=folder)
    generate_suite(suite, runs_root=folder / "runs", device="cpu")
    return folder / "runs"


#################################################################################
#                                 Prompt sets                                   #
#################################################################################


def test_txt_and_jsonl_files(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("a cat\na dog\n")
    assert read_prompt_file(txt).prompts == ("a cat", "a dog")
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a cat", "category": "Animals"}\n{"prompt": "a car", "category": "Transport"}\n')
    prompts = read_prompt_file(jsonl)
    assert prompts.prompts == ("a cat", "a car") and prompts.category(1) == "Transport"


@pytest.mark.parametrize("name, text, message", [
    ("p.jsonl", '{"prompt": "a cat"}\n{"prompt": 3}\n', "line 2: field 'prompt'"),
    ("p.jsonl", '{"prompt": "a cat"}\n{"prompt": "a\n', "line 2: not a JSON object"),
    ("p.jsonl", '{"prompt": "a cat"}\n["a dog"]\n', "line 2: must be a JSON object"),
    ("p.txt", "a cat\n\na dog\n", "line 2: empty line"),
    ("p.txt", "a cat\n", "1 prompt"),
    ("p.csv", "a,b\n", "must end in .txt or .jsonl"),
])
def test_bad_prompt_files_name_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(HarnessError, match=message) as err:
        read_prompt_file(path)
    assert str(path) in str(err.value)


def test_geneval_set_matches_the_published_counts():
    prompts = load_prompts("geneval")
    tags = [m["tag"] for m in prompts.metadata]
    assert len(prompts) == 553 and prompts.images_per_prompt == 4
    assert {t: tags.count(t) for t in dict.fromkeys(tags)} == {
        "single_object": 80, "two_object": 99, "counting": 80, "colors": 94, "position": 100, "color_attr": 100}
    assert len(geneval_module.object_names()) == 80 and geneval_module.object_names()[65] == "tv remote"


def test_changed_geneval_file_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "evaluation_metadata.jsonl"
    copy.write_bytes(geneval_module.METADATA.read_bytes().replace(b"bench", b"bunch", 1))
    monkeypatch.setattr(geneval_module, "METADATA", copy)
    geneval_module.geneval_prompts.cache_clear()
    try:
        with pytest.raises(HarnessError, match="is not GenEval's"):
            geneval_module.geneval_prompts()
    finally:
        geneval_module.geneval_prompts.cache_clear()


def test_hpsv3_prompts_missing_then_present(tmp_path):
    with pytest.raises(HarnessError, match="harness assets --fetch hpsv3-benchmark"):
        hpsv3_prompts(folder=tmp_path)
    for i, category in enumerate(CATEGORIES):
        path = tmp_path / category_file(category)
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps([{"caption": f"{category} {k}", "save_name": f"{k}.png"} for k in range(i % 2 + 1)]))
    prompts = hpsv3_prompts(folder=tmp_path)
    assert len(prompts) == 18 and prompts.prompts[:3] == ("Characters 0", "Arts 0", "Arts 1")
    assert prompts.category(2) == "Arts" and prompts.images_per_prompt == 1


#################################################################################
#                                Suite fields                                   #
#################################################################################


def test_prompt_suite_fields_resolve(tmp_path):
    suite = load_suite(text_suite(tmp_path, None), root=tmp_path)
    run = suite.runs[0]
    assert run.prompts == str(tmp_path / "prompts.txt") and run.images_per_prompt == 2
    assert run.models["main"].text_encoder == "random"
    assert run.config["suite"]["prompts"] == run.prompts


@pytest.mark.parametrize("edit, field, message", [
    (lambda t: t.replace('text_encoder = "random"', ""), "text_encoder", "need a text encoder"),
    (lambda t: t.replace('text_encoder = "random"', 'text_encoder = "t9"'), "text_encoder", "unknown text encoder"),
    (lambda t: t.replace("seed = 3", 'seed = 3\nlabels = "balanced"'), "labels", "prompt indices"),
    (lambda t: t.replace("samples = 10", "samples = 11"), "samples", "6 prompts at 2 per prompt"),
])
def test_prompt_suite_mistakes(tmp_path, edit, field, message):
    path = text_suite(tmp_path, None)
    path.write_text(edit(path.read_text()))
    with pytest.raises(HarnessError, match=message) as err:
        load_suite(path, root=tmp_path)
    assert f"field '{field}'" in str(err.value) and str(path) in str(err.value)


def test_bad_prompt_file_stops_the_suite_naming_the_line(tmp_path):
    path = text_suite(tmp_path, None, prompts="p.jsonl")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(HarnessError, match=r"p\.jsonl: line 2"):
        load_suite(path, root=tmp_path)


#################################################################################
#                                  Generation                                   #
#################################################################################


def test_prompt_run_labels_are_prompt_indices_and_states_are_cached(reference):
    indices, images, labels = run_arrays(reference)
    assert indices.tolist() == list(range(10)) and labels.tolist() == [i // 2 for i in range(10)]
    assert images.shape == (10, 16, 16, 3)
    assert not np.array_equal(images[0], images[1])  # same prompt, seeds differ
    assert len(list((reference / "t2i").glob("prompt-states-random-*.pt"))) == 1


def test_prompt_run_same_images_for_other_batch_size(reference, checkpoint, tmp_path):
    suite = load_suite(text_suite(tmp_path, checkpoint, batch_size=3), root=tmp_path)
    generate_suite(suite, runs_root=tmp_path / "runs", device="cpu")
    for got, want in zip(run_arrays(tmp_path / "runs"), run_arrays(reference)):
        assert np.array_equal(got, want)


def test_prompt_run_same_images_with_two_processes(reference, checkpoint, tmp_path):
    path = text_suite(tmp_path, checkpoint)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "-m", "harness", "generate", str(path), "--out", str(tmp_path / "runs"), "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}  # this checkout's harness
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for got, want in zip(run_arrays(tmp_path / "runs"), run_arrays(reference)):
        assert np.array_equal(got, want)


def test_prompts_change_the_images(reference, checkpoint, tmp_path):
    path = text_suite(tmp_path, checkpoint)
    (tmp_path / "other.txt").write_text("\n".join(reversed(PROMPTS)) + "\n")
    path.write_text(path.read_text().replace('prompts = "prompts.txt"', 'prompts = "other.txt"'))
    generate_suite(load_suite(path, root=tmp_path), runs_root=tmp_path / "runs", device="cpu")
    _, images, _ = run_arrays(tmp_path / "runs")
    _, want, _ = run_arrays(reference)
    assert np.array_equal(images[4:6], want[4:6])  # prompt 2 is the middle prompt in both orders
    assert not np.array_equal(images[:2], want[:2])


def test_export_then_evaluate_the_folders_from_the_command_line(checkpoint, tmp_path, capsys):
    path = text_suite(tmp_path, checkpoint, prompts="geneval", samples=4)
    generate_suite(load_suite(path, root=tmp_path), runs_root=tmp_path / "runs", device="cpu")
    run = tmp_path / "runs" / "t2i" / "g"
    assert main(["export", str(run), "--format", "geneval", "--out", str(tmp_path / "gen")]) == 0
    # as GenEval's evaluate_images.py reads it: numbered folders, json.load of metadata.jsonl, \d+.png samples
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == ["00000", "00001"]
    with open(tmp_path / "gen" / "00001" / "metadata.jsonl") as fp:
        assert json.load(fp) == load_prompts("geneval").metadata[1]
    assert sorted(p.name for p in (tmp_path / "gen" / "00001" / "samples").iterdir()) == ["00000.png", "00001.png"]
    assert main(["evaluate", str(tmp_path / "gen"), "--dry-run", "--metrics", "geneval,clip_score",
                 "--out", str(tmp_path / "scores")]) == 0
    assert "geneval: " in capsys.readouterr().out
    assert len((tmp_path / "scores" / "results.jsonl").read_text().splitlines()) == 4
    assert main(["export", str(run), "--format", "hpsv3", "--out", str(tmp_path / "hps")]) == 0
    assert sorted(p.name for p in (tmp_path / "hps" / "all").glob("*.txt")) == [f"{i:06}.txt" for i in range(4)]
    assert main(["evaluate", str(tmp_path / "hps"), "--dry-run"]) == 0
    assert "hpsv3: " in capsys.readouterr().out
    assert main(["export", str(path), "--format", "geneval", "--out", str(tmp_path / "all"), "--root", str(tmp_path),
                 "--runs-dir", str(tmp_path / "runs")]) == 0  # a suite: every generated run into out/<run-id>
    assert (tmp_path / "all" / "g" / "00001" / "samples" / "00001.png").is_file()


def test_export_of_a_class_run_is_refused(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "manifest.json").write_text(json.dumps({"config": {"suite": {"labels": "uniform"}}}))
    with pytest.raises(HarnessError, match="class-conditional run"):
        from harness.export import export_run

        export_run(tmp_path / "r", "geneval", tmp_path / "out")


def test_missing_hpsv3_prompts_stop_generation_with_the_asset_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_ASSETS", str(tmp_path / "assets"))
    path = text_suite(tmp_path, None, prompts="hpsv3", samples=2)
    path.write_text(path.read_text().replace("images_per_prompt = 2", "images_per_prompt = 1"))
    assert load_suite(path, root=tmp_path).runs[0].prompts == "hpsv3"  # the suite itself loads (plan, report)
    with pytest.raises(HarnessError, match=r"missing; nothing was run[\s\S]*harness assets --fetch hpsv3-benchmark"):
        generate_suite(load_suite(path, root=tmp_path), runs_root=tmp_path / "runs", device="cpu")
    assert not (tmp_path / "runs").exists()


def test_prompt_suite_without_samples_takes_every_prompt(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_ASSETS", str(tmp_path / "assets"))
    path = text_suite(tmp_path, None)
    path.write_text(path.read_text().replace("samples = 10\n", ""))
    assert load_suite(path, root=tmp_path).runs[0].samples == len(PROMPTS) * 2
    path.write_text(path.read_text().replace('prompts = "prompts.txt"', 'prompts = "hpsv3"'))
    assert load_suite(path, root=tmp_path).runs[0].samples == 0  # unknown until the prompt files are fetched


def test_text_encoder_width_must_match_the_network(checkpoint, tmp_path):
    path = text_suite(tmp_path, checkpoint)
    path.write_text(path.read_text().replace("dim = 16", "dim = 12"))
    with pytest.raises(HarnessError, match="12-channel states, TextDiT-Tiny takes 16"):
        generate_suite(load_suite(path, root=tmp_path), runs_root=tmp_path / "runs", device="cpu")


def test_an_edited_prompt_file_changes_the_config_hash(tmp_path):
    path = text_suite(tmp_path, None)
    before = load_suite(path, root=tmp_path).runs[0].config_hash
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS[::-1]) + "\n")
    assert load_suite(path, root=tmp_path).runs[0].config_hash != before


def test_missing_metric_weights_stop_bench_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_ASSETS", str(tmp_path / "assets"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    path = text_suite(tmp_path, None, prompts="geneval", samples=4)
    path.write_text(path.read_text().replace("seed = 3", 'seed = 3\nmetrics = ["geneval"]'))
    args = build_parser().parse_args(["bench", str(path), "--root", str(tmp_path), "--out", str(tmp_path / "runs"),
                                      "--device", "cpu"])
    with pytest.raises(HarnessError, match=r"(?s)mask2former-swin-s-coco.*clip-vit-l-14-openai"):
        cmd_bench(args)
    assert not (tmp_path / "runs").exists()


def fake_prompt_run(runs: Path, name: str, prompts: int, root: Path) -> Path:
    """A generated prompt run of `prompts` prompts, one 8x8 image each, as the runner leaves it."""
    (root / "p.txt").write_text("".join(f"a prompt number {i}\n" for i in range(3)))
    run = runs / "t2i" / name
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"config": {"suite": {"prompts": "p.txt"}}}))
    np.savez(run / "samples-000000.npz", arr_0=np.zeros((prompts, 8, 8, 3), np.uint8),
             labels=np.arange(prompts), indices=np.arange(prompts))
    return run


def test_export_refuses_a_folder_holding_another_export_unless_overwrite(tmp_path, capsys):
    two, one = (fake_prompt_run(tmp_path / "runs", n, k, tmp_path) for n, k in (("two", 2), ("one", 1)))
    out = tmp_path / "gen"
    common = ["--format", "geneval", "--out", str(out), "--root", str(tmp_path)]
    assert main(["export", str(two), *common]) == 0
    assert main(["export", str(two), *common]) == 0  # this run's own earlier export: rewritten
    assert main(["export", str(one), *common]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "not empty" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["00000", "00001"]  # untouched
    assert main(["export", str(one), *common, "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000"]


def test_export_of_a_suite_takes_the_generated_runs_and_lists_the_others(tmp_path, capsys):
    suite = text_suite(tmp_path, None)
    suite.write_text(suite.read_text() + '\n[[runs]]\nname = "h"\nmethod = "cfg"\nomega = 2.0\n')
    fake_prompt_run(tmp_path / "runs", "g", 2, tmp_path)
    code = main(["export", str(suite), "--format", "hpsv3", "--out", str(tmp_path / "hps"), "--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and (tmp_path / "hps" / "g" / "all").is_dir() and not (tmp_path / "hps" / "h").exists()
    assert "not generated: h" in out


def test_an_unknown_prompt_set_name_is_not_taken_for_a_path(tmp_path):
    with pytest.raises(HarnessError, match=r"unknown prompt set 'genevall'.*geneval, hpsv3.*\.txt or \.jsonl"):
        load_prompts("genevall", tmp_path)
    path = text_suite(tmp_path, None, prompts="genevall")
    with pytest.raises(HarnessError, match=rf"{path}: \[suite\]: field 'prompts': unknown prompt set 'genevall'"):
        load_suite(path, root=tmp_path)


def test_a_long_prompt_is_shortened_in_messages(tmp_path):
    from harness.testbed.words import tokenize

    long = "red " * 2500  # 10,000 characters
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps({"prompt": ["x" * 10_000]}) + "\n")
    for call in (lambda: tokenize([long]), lambda: read_prompt_file(path)):
        with pytest.raises(HarnessError) as err:
            call()
        assert len(str(err.value)) < 400 and "characters)" in str(err.value), str(err.value)[:500]


def test_duplicate_prompts_are_warned_about_with_their_lines(tmp_path, capsys):
    path = tmp_path / "p.txt"
    path.write_text("a cat\na dog\na cat\n")
    assert read_prompt_file(path).prompts == ("a cat", "a dog", "a cat")  # kept: images per prompt line
    err = capsys.readouterr().err
    assert f"{path}: line 3 repeats line 1" in err and "'a cat'" in err
