"""Text-to-image metrics of a run or of a folder in an official layout: `geneval`, `hpsv3`, `clip_score`.

Each scorer takes the samples (harness.prompts.layouts.Sample: filename in the official layout, prompt index,
image loader), their PromptSet, an output folder and its options, and returns metrics.json columns:
- geneval: per image, a detector backend (harness.metrics.detectors) gives raw detections, the colour step
  (harness.metrics.geneval_color) colours the objects the rules read, and `judge`'s rules decide; writes the
  official results.jsonl and returns `geneval` (mean of the six task scores), `geneval_<task>`, and
  `geneval_detector` (the backend that made them).
- hpsv3: the images in HPSv3's layout (written under the output folder when they come from a run), scored by the
  HPSv3 worker; `hpsv3` = mean of the category means as benchmark.py reports it, `hpsv3_<category>` each.
- clip_score: harness.metrics.clip_score (open-clip, 100 x cosine clipped at 0), averaged over images.
Options by metric name (`options["geneval"]`, ...) choose models; a dry run passes random ones.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.errors import HarnessError
from harness.prompts.layouts import (
    READERS, Sample, detect_layout, geneval_name, hpsv3_name, per_prompt_positions, write_hpsv3,
)
from harness.prompts.sets import PromptSet

RESULTS_FILE = "results.jsonl"  # GenEval's per-image results, official format
METRICS_FILE = "metrics.json"
CLIP_MODEL = ("ViT-L-14", "openai")
HPSV3_FOLDER = "hpsv3"  # a run's images in HPSv3's layout, for the worker


#################################################################################
#                             Samples of a run                                  #
#################################################################################


class _ShardCache:
    """Reads one shard at a time: samples are visited in index order, so each shard is read once."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.images: np.ndarray | None = None

    def image(self, path: Path, row: int) -> np.ndarray:
        if path != self.path:
            with np.load(path, allow_pickle=False) as data:
                self.images, self.path = data["arr_0"], path
        return self.images[row]


def run_samples(run_dir: Path, prompts: PromptSet, layout: str = "geneval") -> list[Sample]:
    """The samples of a run, prompt = the label its shard stores, named as in GenEval's or HPSv3's layout."""
    from harness.metrics.evaluate import list_shards

    cache = _ShardCache()
    rows: list[tuple[Path, int, int]] = []
    for shard in list_shards(run_dir):
        with np.load(shard, allow_pickle=False) as data:
            rows += [(shard, r, int(label)) for r, label in enumerate(data["labels"].tolist())]
    labels = np.array([label for _, _, label in rows], dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(prompts)):
        raise HarnessError(f"{run_dir}: labels outside the {len(prompts)} prompts of {prompts.name!r}; was it "
                           "generated from another prompt set?")
    positions = per_prompt_positions(labels)
    samples = []
    for i, ((shard, row, label), k) in enumerate(zip(rows, positions.tolist())):
        name = geneval_name(label, k) if layout == "geneval" else hpsv3_name(prompts, label, i)
        samples.append(Sample(name, label, lambda s=shard, r=row: cache.image(s, r)))
    return samples


#################################################################################
#                                   Scorers                                     #
#################################################################################


def _needs_geneval_metadata(prompts: PromptSet) -> None:
    bad = next((i for i, m in enumerate(prompts.metadata) if "tag" not in m or "include" not in m), None)
    if bad is not None:
        raise HarnessError(f"geneval needs GenEval metadata (tag, include) for every prompt; prompt {bad} of "
                           f"{prompts.name!r} ({prompts.prompts[bad]!r}) has none")


DETECTOR_ASSET = "mask2former-swin-s-coco"
DETECTOR_FILE = "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth"  # GenEval's download_models.sh name


def default_detector(device: torch.device, name: str | None = None, checkpoint: str | None = None):
    """GenEval's detector: the official mmdet stack where it is installed, else the same checkpoint in transformers'
    Mask2Former; the checkpoint is the `mask2former-swin-s-coco` asset unless given."""
    import importlib.util

    from harness.assets import assets_dir, load_manifest
    from harness.metrics.detectors import build_detector
    from harness.prompts.geneval import object_names

    name = name or ("mmdet" if importlib.util.find_spec("mmdet") else "mask2former")
    if checkpoint is None:
        asset = load_manifest().get(DETECTOR_ASSET)
        checkpoint = asset.location() if asset is not None else assets_dir() / DETECTOR_FILE
    return build_detector(name, checkpoint=checkpoint, classnames=object_names(), device=device)


def _geneval_models(options: Mapping[str, Any], device: torch.device) -> tuple[Any, Callable]:
    """(detector backend, colour classifier) from options: given objects, or built from names."""
    detector = options.get("detector_object")
    if detector is None:
        detector = default_detector(device, options.get("detector"), options.get("checkpoint"))
    classify = options.get("classify")
    if classify is None:
        from harness.metrics.geneval_color import build_color_classifier

        classify = build_color_classifier(device, **dict(options.get("color_options", {})))
    return detector, classify


def score_geneval(samples: Sequence[Sample], prompts: PromptSet, out_dir: Path, device: torch.device,
                  options: Mapping[str, Any]) -> dict[str, Any]:
    """GenEval: results.jsonl in out_dir (official format plus the detector name) and the summary columns."""
    from harness.metrics.geneval import result_record, summarize, write_results
    from harness.metrics.geneval_color import add_colors

    _needs_geneval_metadata(prompts)
    detector, classify = _geneval_models(options, device)
    records = []
    for sample in samples:
        image = sample.load()
        metadata = prompts.metadata[sample.prompt]
        detections = add_colors(image, metadata, detector.detect(image), classify)
        records.append(result_record(sample.filename, metadata, detections, detector=detector.name))
    write_results(records, Path(out_dir) / RESULTS_FILE)
    return {**summarize(records), "geneval_detector": detector.name}


def category_column(category: str) -> str:
    """`hpsv3_<category>`: lowercase, non-alphanumerics as underscores (Natural Scenery -> natural_scenery)."""
    return "hpsv3_" + re.sub(r"[^a-z0-9]+", "_", category.lower()).strip("_")


def score_hpsv3(samples: Sequence[Sample], prompts: PromptSet, out_dir: Path, device: torch.device,
                options: Mapping[str, Any], folder: Path | None = None) -> dict[str, Any]:
    """HPSv3: mu per image from the worker; per-category means and their unweighted mean (benchmark.py's OVERALL).

    The worker reads files: images of a run are written in HPSv3's layout under out_dir/hpsv3 first (`folder`
    is given when the samples already lie in that layout)."""
    if folder is None:
        folder = Path(out_dir) / HPSV3_FOLDER
        labels = np.array([s.prompt for s in samples], dtype=np.int64)
        write_hpsv3((s.load() for s in samples), labels, prompts, folder)
        paths = [folder / hpsv3_name(prompts, s.prompt, i) for i, s in enumerate(samples)]
    else:
        paths = [Path(folder) / s.filename for s in samples]
    texts = [prompts.prompts[s.prompt] for s in samples]
    scorer = options.get("scorer")
    if scorer is None:  # the official model in its own environment (harness.metrics.hpsv3)
        from harness.metrics.hpsv3 import HPSv3Worker

        with HPSv3Worker(**dict(options.get("worker_options", {}))) as worker:
            rewards = worker.score(image_paths=[str(p) for p in paths], prompts=texts)
    else:
        rewards = np.asarray(scorer(image_paths=[str(p) for p in paths], prompts=texts), dtype=np.float64)
    by_category: dict[str, list[float]] = {}
    for sample, reward in zip(samples, rewards.tolist()):
        category = prompts.metadata[sample.prompt].get("category", "all")
        by_category.setdefault(str(category), []).append(reward)
    out = {category_column(c): float(np.mean(v)) for c, v in by_category.items()}
    out["hpsv3"] = float(np.mean([np.mean(v) for v in by_category.values()]))
    records = [{"filename": s.filename, "prompt": t, "reward": r} for s, t, r in zip(samples, texts, rewards.tolist())]
    _write_jsonl(Path(out_dir) / "hpsv3_scores.jsonl", records)
    return out


def score_clip(samples: Sequence[Sample], prompts: PromptSet, out_dir: Path, device: torch.device,
               options: Mapping[str, Any]) -> dict[str, Any]:
    """Mean CLIP score (harness.metrics.clip_score) of the samples with their prompts: `scorer` given, or built
    from `arch` / `pretrained` / `weights` (ViT-L-14/openai by default)."""
    scorer = options.get("scorer")
    if scorer is None:
        from harness.metrics.clip_score import build_clip_scorer

        scorer = build_clip_scorer(device=device, **{k: v for k, v in options.items() if k != "name"})
    values = []
    for start in range(0, len(samples), 256):
        chunk = samples[start:start + 256]
        values.append(scorer([s.load() for s in chunk], [prompts.prompts[s.prompt] for s in chunk]))
    model = options.get("name") or f"{options.get('arch', 'ViT-L-14')}/{options.get('pretrained', 'openai')}"
    return {"clip_score": float(np.concatenate(values).mean()), "clip_score_model": model}


# Metrics computed from images and their prompts (no reference batch), by name.
SCORERS: dict[str, Callable[..., dict[str, Any]]] = {"geneval": score_geneval, "hpsv3": score_hpsv3,
                                                      "clip_score": score_clip}


#################################################################################
#                          Runs and external folders                            #
#################################################################################


def _write_jsonl(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _merge_metrics(path: Path, values: Mapping[str, Any]) -> None:
    merged = json.loads(path.read_text()) if path.is_file() else {}
    merged.update(values)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def score(names: Sequence[str], samples: Sequence[Sample], prompts: PromptSet, out_dir: Path,
          device: torch.device | str = "cpu", options: Mapping[str, Mapping[str, Any]] | None = None,
          hpsv3_folder: Path | None = None) -> dict[str, Any]:
    """Every named text-to-image metric of `samples`, written into out_dir/metrics.json (merged)."""
    device = torch.device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for name in names:
        opts = dict((options or {}).get(name, {}))
        if name == "hpsv3":
            results.update(score_hpsv3(samples, prompts, out_dir, device, opts, folder=hpsv3_folder))
        else:
            results.update(SCORERS[name](samples, prompts, out_dir, device, opts))
    _merge_metrics(out_dir / METRICS_FILE, results)
    return results


def evaluate_prompt_run(run_dir: Path, names: Sequence[str], prompts: PromptSet, device: torch.device | str = "cpu",
                        options: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The text-to-image metrics of one generated run (its shards' labels are prompt indices)."""
    layout = "geneval" if "geneval" in names else "hpsv3"
    return score(names, run_samples(Path(run_dir), prompts, layout), prompts, Path(run_dir), device, options)


def evaluate_folder(folder: Path, names: Sequence[str], out_dir: Path | None = None,
                    device: torch.device | str = "cpu",
                    options: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The metrics of a folder in GenEval's or HPSv3's layout written by any generator (results go to `out_dir`,
    default the folder itself)."""
    folder = Path(folder)
    layout = detect_layout(folder)
    unknown = [n for n in names if n not in SCORERS]
    if unknown:
        raise HarnessError(f"{folder}: a sample folder is scored with {', '.join(SCORERS)}; not {', '.join(unknown)}")
    if "geneval" in names and layout != "geneval":
        raise HarnessError(f"{folder}: geneval needs GenEval's layout (<index:05>/metadata.jsonl), found {layout}'s")
    prompts, samples = READERS[layout](folder)
    return score(names, samples, prompts, out_dir or folder, device, options,
                 hpsv3_folder=folder if layout == "hpsv3" else None)


def is_prompt_metric(name: str) -> bool:
    return name in SCORERS
