"""The `geneval` metric: per image, a detector backend (harness.metrics.geneval.detectors) gives raw detections, the
colour step (color.py) colours the objects the rules read, and the rules (rules.py, `judge`) decide; writes the
official results.jsonl and returns `geneval` (mean of the six task scores), `geneval_<task>`, and
`geneval_detector` (the backend that made them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from harness.errors import HarnessError
from harness.metrics.geneval.rules import summarize, write_results
from harness.metrics.layouts import Sample
from harness.prompts.sets import PromptSet

RESULTS_FILE = "results.jsonl"  # GenEval's per-image results, official format


def _needs_geneval_metadata(prompts: PromptSet) -> None:
    bad = next((i for i, m in enumerate(prompts.metadata) if "tag" not in m or "include" not in m), None)
    if bad is not None:
        raise HarnessError(f"geneval needs GenEval metadata (tag, include) for every prompt; prompt {bad} of "
                           f"{prompts.name!r} ({prompts.prompts[bad]!r}) has none")


def geneval_scorer(device: torch.device, options: Mapping[str, Any]):
    """harness.metrics.geneval.image's scorer: `scorer` given; tiny random models (`random_weights`); else GenEval's
    setup from assets, with the official mmdet detector where mmdet is installed and transformers' Mask2Former
    (the same checkpoint) otherwise, unless `detector` names one."""
    import importlib.util

    from harness.metrics.geneval.image import build_geneval_scorer
    from harness.prompts.geneval import object_names

    if options.get("scorer") is not None:
        return options["scorer"]
    detector = options.get("detector") or ("mmdet" if importlib.util.find_spec("mmdet") else "mask2former")
    return build_geneval_scorer(object_names(), detector, device, options.get("checkpoint"),
                                options.get("clip_weights"), bool(options.get("random_weights")))


def score_geneval(samples: Sequence[Sample], prompts: PromptSet, out_dir: Path, device: torch.device,
                  options: Mapping[str, Any]) -> dict[str, Any]:
    """GenEval: results.jsonl in out_dir (official format plus the detector name) and the summary columns."""
    _needs_geneval_metadata(prompts)
    scorer = geneval_scorer(device, options)
    records = [scorer(s.load(), prompts.metadata[s.prompt], s.filename) for s in samples]
    write_results(records, Path(out_dir) / RESULTS_FILE)
    return {**summarize(records), "geneval_detector": scorer.detector.name}
