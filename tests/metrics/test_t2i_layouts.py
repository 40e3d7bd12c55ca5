"""Official folder layouts (GenEval, HPSv3) written and read back, `harness export`, and the text-to-image metric
wiring (geneval / hpsv3 / clip_score) on runs and on folders, with scripted detectors and scorers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cli import main
from harness.errors import HarnessError
from harness.metrics import METRICS
from harness.metrics.geneval.detectors.base import Detector
from harness.metrics.geneval.image import GenEvalScorer
from harness.metrics.geneval.layout import read_geneval, write_geneval
from harness.metrics.hpsv3.layout import read_hpsv3, write_hpsv3
from harness.metrics.layouts import Sample, detect_layout
from harness.metrics.t2i import evaluate_folder, score
from harness.prompts import load_prompts
from harness.prompts.sets import PromptSet

GENEVAL = load_prompts("geneval")
# prompt 0: single_object (a bench); 80: the first two_object prompt; 179: the first counting prompt
CHOSEN = [0, 80, 179]


def coded_images(labels: np.ndarray, size: int = 24) -> np.ndarray:
    """Images whose first pixel stores (image number, prompt index // 256, prompt index % 256)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (len(labels), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(labels.tolist()):
        images[i, 0, 0] = (i, p // 256, p % 256)
    return images


class OracleDetector(Detector):
    """Finds exactly what single_object prompts ask for (score 0.95) and nothing in any other image."""

    name = "oracle"

    def detect(self, image):
        prompt = int(image[0, 0, 1]) * 256 + int(image[0, 0, 2])
        meta = GENEVAL.metadata[prompt]
        if meta["tag"] != "single_object":
            return {}
        mask = np.ones(image.shape[:2], dtype=bool)
        return {meta["include"][0]["class"]: [{"box": [0.0, 0.0, 10.0, 10.0], "score": 0.95, "mask": mask}]}


def never_called(*args):
    raise AssertionError("no colour was requested")


def test_geneval_layout_round_trip_matches_the_official_writer(tmp_path):
    labels = np.repeat(np.array(CHOSEN), 2)
    images = coded_images(labels)
    write_geneval(images, labels, GENEVAL, tmp_path)
    assert (tmp_path / "00080" / "metadata.jsonl").read_text() == json.dumps(GENEVAL.metadata[80])
    assert sorted(p.name for p in (tmp_path / "00179" / "samples").iterdir()) == ["00000.png", "00001.png"]
    prompts, samples = read_geneval(tmp_path)
    assert detect_layout(tmp_path) == "geneval"
    assert [prompts.metadata[s.prompt] for s in samples] == [GENEVAL.metadata[p] for p in labels]
    assert np.array_equal(np.stack([s.load() for s in samples]), images)


def test_hpsv3_layout_round_trip(tmp_path):
    prompts = PromptSet("x", ("a cat", "a car", "a tree"),
                        ({"category": "Animals"}, {"category": "Transportation"}, {"category": "Natural Scenery"}))
    labels = np.array([0, 1, 2, 0])
    images = coded_images(labels)
    write_hpsv3(images, labels, prompts, tmp_path)
    assert (tmp_path / "Animals" / "000003.txt").read_text() == "a cat"
    assert detect_layout(tmp_path) == "hpsv3"
    got, samples = read_hpsv3(tmp_path)
    assert sorted((got.metadata[s.prompt]["category"], got.prompts[s.prompt]) for s in samples) == sorted(
        (prompts.metadata[p]["category"], prompts.prompts[p]) for p in labels)


def test_geneval_scoring_writes_official_results_and_task_columns(tmp_path):
    labels = np.repeat(np.array(CHOSEN), 2)
    images = coded_images(labels)
    samples = [Sample(f"{p:05}/samples/{k:05}.png", p, lambda im=im: im)
               for im, p, k in zip(images, labels.tolist(), [0, 1] * 3)]
    options = {"geneval": {"scorer": GenEvalScorer(OracleDetector(), never_called)}}
    result = score(["geneval"], samples, GENEVAL, tmp_path, options=options)
    assert result["geneval_single_object"] == 1.0 and result["geneval_two_object"] == 0.0
    assert result["geneval_counting"] == 0.0 and result["geneval"] == pytest.approx(1 / 3)
    assert result["geneval_detector"] == "oracle"
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [line["filename"] for line in lines[:2]] == ["00000/samples/00000.png", "00000/samples/00001.png"]
    assert set(lines[0]) >= {"filename", "tag", "prompt", "correct", "reason", "metadata", "details"}
    assert json.loads(lines[0]["metadata"]) == GENEVAL.metadata[0] and lines[0]["correct"] is True
    assert json.loads((tmp_path / "metrics.json").read_text())["geneval"] == pytest.approx(1 / 3)


def test_geneval_refuses_prompts_without_metadata(tmp_path):
    prompts = PromptSet("x", ("a", "b"), ({"prompt": "a"}, {"prompt": "b"}))
    sample = Sample("0.png", 0, lambda: np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(HarnessError, match="GenEval metadata"):
        score(["geneval"], [sample], prompts, tmp_path,
              options={"geneval": {"scorer": GenEvalScorer(OracleDetector(), never_called)}})


def test_hpsv3_per_category_and_macro_mean(tmp_path):
    prompts = PromptSet("x", ("p0", "p1", "p2"), ({"category": "Animals"}, {"category": "Animals"},
                                                  {"category": "Natural Scenery"}))
    labels = np.array([0, 1, 2])
    samples = [Sample(f"{i}.png", p, lambda im=im: im) for i, (im, p) in enumerate(zip(coded_images(labels), labels))]
    seen = {}

    def scorer(image_paths, prompts):
        seen.update(paths=image_paths, prompts=prompts)
        return [1.0, 3.0, 10.0]

    result = score(["hpsv3"], samples, prompts, tmp_path, options={"hpsv3": {"scorer": scorer}})
    assert result == {"hpsv3_animals": 2.0, "hpsv3_natural_scenery": 10.0, "hpsv3": 6.0}  # macro, not 14/3
    assert seen["prompts"] == ["p0", "p1", "p2"]
    assert all(Path(p).is_file() and Path(p).with_suffix(".txt").is_file() for p in seen["paths"])


def test_clip_score_with_a_tiny_random_clip_is_deterministic_and_non_negative(tmp_path):
    from harness.metrics.clip_score import build_clip_scorer

    labels = np.array([0, 80, 179])
    samples = [Sample(f"{i}.png", p, lambda im=im: im) for i, (im, p) in enumerate(zip(coded_images(labels), labels))]
    torch.manual_seed(0)
    scorer = build_clip_scorer(random_weights=True)
    one = score(["clip_score"], samples, GENEVAL, tmp_path, options={"clip_score": {"scorer": scorer}})
    torch.manual_seed(0)
    again = build_clip_scorer(random_weights=True)
    two = score(["clip_score"], samples, GENEVAL, tmp_path, options={"clip_score": {"scorer": again}})
    per_image = scorer([s.load() for s in samples], [GENEVAL.prompts[s.prompt] for s in samples])
    assert one["clip_score"] == two["clip_score"] == pytest.approx(per_image.mean())
    assert (per_image > 0).any() and (per_image == 0).any()  # clipped and unclipped images: not a trivial 0 == 0


def test_evaluate_a_folder_made_by_another_generator(tmp_path):
    labels = np.repeat(np.array(CHOSEN), 2)
    write_geneval(coded_images(labels), labels, GENEVAL, tmp_path / "theirs")
    result = evaluate_folder(tmp_path / "theirs", ["geneval"], tmp_path / "scores",
                             options={"geneval": {"scorer": GenEvalScorer(OracleDetector(), never_called)}})
    assert result["geneval"] == pytest.approx(1 / 3)
    assert (tmp_path / "scores" / "results.jsonl").is_file()
    with pytest.raises(HarnessError, match="neither GenEval's layout"):
        evaluate_folder(tmp_path / "scores", ["geneval"])


def test_t2i_metrics_are_registered_without_a_reference():
    assert {"geneval", "hpsv3", "clip_score"} <= set(METRICS)
    assert all(METRICS[m].kind == "prompt" and METRICS[m].higher_is_better for m in ("geneval", "hpsv3", "clip_score"))


@pytest.mark.parametrize("suite", ["imagenet256", "imagenet256_ablation", "sit_xl2_reference", "testbed", "geneval",
                                   "hpsv3"])
def test_paper_tables_before_any_run(tmp_path, suite, monkeypatch):
    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)
    assert main(["report", f"suites/{suite}.toml", "--paper", "--runs-dir", str(tmp_path / "runs"),
                 "--reports-dir", str(tmp_path / "reports")]) == 0
    tables = (tmp_path / "reports" / suite / "tables.md").read_text()
    report = (tmp_path / "reports" / suite / "report.md").read_text()
    assert "No run of this suite has been generated yet" in report and "rep." in tables
    if suite == "geneval":
        row = next(line for line in tables.splitlines() if line.startswith("| TR-DiT-2.5B + SG"))
        assert "| sg | 0.62 | — | — | 0.99 |" in row  # reported filled, measured missing


def test_a_scored_run_is_not_scored_again_until_its_shards_change(tmp_path):
    from harness.metrics.t2i import evaluate_prompt_run
    from harness.rundir import write_shard

    labels = np.repeat(np.array(CHOSEN), 2)
    write_shard(tmp_path / "samples-000000.npz", coded_images(labels), labels, np.arange(len(labels)))
    calls = []

    class Counting(OracleDetector):
        def detect(self, image):
            calls.append(1)
            return super().detect(image)

    options = {"geneval": {"scorer": GenEvalScorer(Counting(), never_called)}}
    first = evaluate_prompt_run(tmp_path, ["geneval"], GENEVAL, options=options)
    assert first["geneval"] == pytest.approx(1 / 3) and len(calls) == 6
    assert evaluate_prompt_run(tmp_path, ["geneval"], GENEVAL, options=options) == {} and len(calls) == 6
    write_shard(tmp_path / "samples-000000.npz", coded_images(labels)[::-1].copy(), labels, np.arange(len(labels)))
    evaluate_prompt_run(tmp_path, ["geneval"], GENEVAL, options=options)
    assert len(calls) == 12


def odd_geneval_folder(folder: Path) -> None:
    """A GenEval folder of 2 prompts plus what `harness evaluate FOLDER` must not pass over in silence."""
    from PIL import Image

    prompts = PromptSet("p", ("a red cube", "two blue balls", "a cat"), tuple({"prompt": p, "tag": "single_object",
                                                                              "include": []} for p in
                                                                             ("a red cube", "two blue balls", "a cat")),
                        1)
    write_geneval(np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1]), prompts, folder)
    (folder / "00002").mkdir()  # a prompt folder without samples/
    (folder / "00002" / "metadata.jsonl").write_text(json.dumps(prompts.metadata[2]))
    Image.new("RGBA", (16, 16)).save(folder / "00001" / "samples" / "0001.png")  # another size and mode
    (folder / "all").mkdir()  # the HPSv3 layout beside it
    Image.new("RGB", (8, 8)).save(folder / "all" / "000000.png")
    (folder / "all" / "000000.txt").write_text("a dog")


def test_evaluate_folder_names_what_it_skips_and_strict_refuses(tmp_path, capsys):
    folder, out = tmp_path / "gen", tmp_path / "scores"
    odd_geneval_folder(folder)
    args = ["evaluate", str(folder), "--dry-run", "--metrics", "clip_score", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr()
    warnings = json.loads((out / "metrics.json").read_text())["folder_warnings"]
    for text in (printed.err, "\n".join(warnings)):
        assert "1 prompt folder(s) without samples/, skipped: 00002" in text
        assert "HPSv3's layout too" in text and "all" in text
        assert "2 image sizes: 8x8 (2), 16x16 (1)" in text and "1 image(s) not RGB (RGBA), converted" in text
    assert main([*args, "--strict"]) == 2
    err = capsys.readouterr().err
    assert "--strict" in err and "00002" in err and str(folder) in err
