"""Text-to-image metrics of a run or of a folder in an official layout: `geneval`, `hpsv3`, `clip_score`.

Each scorer takes the samples (harness.metrics.layouts.Sample: filename in the official layout, prompt index,
image loader), their PromptSet, an output folder and its options, and returns metrics.json columns:
- geneval: harness.metrics.geneval.score (detector backend -> colour step -> GenEval's rules, results.jsonl).
- hpsv3: harness.metrics.hpsv3.score (the images in HPSv3's layout, scored by the HPSv3 worker).
- clip_score: harness.metrics.clip_score (open-clip, 100 x cosine clipped at 0), averaged over images; its scorer is
  here.
Options by metric name (`options["geneval"]`, ...) choose models; a dry run passes random ones.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness import registry
from harness.errors import HarnessError
from harness.files import write_json
from harness.metrics import METRICS, get_metric, is_prompt_metric
from harness.metrics.geneval.layout import geneval_name
from harness.metrics.hpsv3.layout import hpsv3_name
from harness.metrics.hpsv3.score import score_hpsv3
from harness.metrics.layouts import READERS, Sample, detect_layout, folder_problems, per_prompt_positions
from harness.prompts.sets import PromptSet
from harness.rundir import METRICS_FILE, list_shards

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


def score_clip(samples: Sequence[Sample], prompts: PromptSet, out_dir: Path, device: torch.device,
               options: Mapping[str, Any]) -> dict[str, Any]:
    """Mean CLIP score (harness.metrics.clip_score) of the samples with their prompts: `scorer` given, else built
    from `arch` / `pretrained` / `weights` (ViT-L-14/openai by default) or `random_weights`."""
    scorer = options.get("scorer")
    if scorer is None:
        from harness.metrics.clip_score import build_clip_scorer

        scorer = build_clip_scorer(device=device, **{k: v for k, v in options.items() if k != "name"})
    values = []
    for start in range(0, len(samples), 256):
        chunk = samples[start:start + 256]
        values.append(scorer([s.load() for s in chunk], [prompts.prompts[s.prompt] for s in chunk]))
    model = options.get("name") or ("random tiny CLIP" if options.get("random_weights") else
                                    f"{options.get('arch', 'ViT-L-14')}/{options.get('pretrained', 'openai')}")
    return {"clip_score": float(np.concatenate(values).mean()), "clip_score_model": model}


#################################################################################
#                          Runs and external folders                            #
#################################################################################


def _merge_metrics(path: Path, values: Mapping[str, Any]) -> None:
    merged = json.loads(path.read_text()) if path.is_file() else {}
    merged.update(values)
    write_json(path, merged, sort_keys=True)


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
            spec = get_metric(name)  # HarnessError naming the closest metrics when unknown
            if spec.kind != "prompt":
                raise HarnessError(f"metric {name} is computed against a reference batch, not from prompts")
            results.update(registry.load(spec.scorer)(samples, prompts, out_dir, device, opts))
    _merge_metrics(out_dir / METRICS_FILE, results)
    return results


STAMPS_FILE = "t2i-scored.json"  # per metric: the shards and options its value in metrics.json was computed from


def _stamp(run_dir: Path, prompts: PromptSet, options: Mapping[str, Any]) -> str:
    shards = ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in list_shards(run_dir))
    return json.dumps([shards, prompts.digest, sorted((k, repr(v)) for k, v in options.items() if k != "root")])


def evaluate_prompt_run(run_dir: Path, names: Sequence[str], prompts: PromptSet, device: torch.device | str = "cpu",
                        options: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The text-to-image metrics of one generated run (its shards' labels are prompt indices). A metric already in
    metrics.json for the same shards, prompts and options is kept, not recomputed (a rerun resumes)."""
    run_dir = Path(run_dir)
    stamps_path = run_dir / STAMPS_FILE
    stamps = json.loads(stamps_path.read_text()) if stamps_path.is_file() else {}
    current = {n: _stamp(run_dir, prompts, (options or {}).get(n, {})) for n in names}
    metrics = json.loads((run_dir / METRICS_FILE).read_text()) if (run_dir / METRICS_FILE).is_file() else {}
    todo = [n for n in names if stamps.get(n) != current[n] or n not in metrics]
    if not todo:
        return {}
    layout = "geneval" if any(n.startswith("geneval") for n in todo) else "hpsv3"
    results = score(todo, run_samples(run_dir, prompts, layout), prompts, run_dir, device, options)
    stamps.update({n: current[n] for n in todo})
    stamps_path.write_text(json.dumps(stamps, indent=1) + "\n")
    return results


def evaluate_folder(folder: Path, names: Sequence[str], out_dir: Path | None = None,
                    device: torch.device | str = "cpu",
                    options: Mapping[str, Mapping[str, Any]] | None = None, strict: bool = False) -> dict[str, Any]:
    """The metrics of a folder in GenEval's or HPSv3's layout written by any generator (results go to `out_dir`,
    default the folder itself). What it skips or finds odd is printed and kept as `folder_warnings`; with `strict`
    it stops before scoring instead."""
    folder = Path(folder)
    layout = detect_layout(folder)
    unknown = [n for n in names if not is_prompt_metric(n)]
    if unknown:
        known = ", ".join(n for n in METRICS if is_prompt_metric(n))
        raise HarnessError(f"{folder}: a sample folder is scored with {known}; not {', '.join(unknown)}")
    if "geneval" in names and layout != "geneval":
        raise HarnessError(f"{folder}: geneval needs GenEval's layout (<index:05>/metadata.jsonl), found {layout}'s")
    prompts, samples = registry.load(READERS[layout])(folder)
    problems = folder_problems(folder, layout, samples)
    if problems and strict:
        raise HarnessError(f"{folder}: {'; '.join(problems)} (--strict)")
    for problem in problems:
        print(f"warning: {folder}: {problem}", file=sys.stderr)
    results = score(names, samples, prompts, out_dir or folder, device, options,
                    hpsv3_folder=folder if layout == "hpsv3" else None)
    if problems:
        _merge_metrics(Path(out_dir or folder) / METRICS_FILE, {"folder_warnings": problems})
    return results
