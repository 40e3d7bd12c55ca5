"""`geneval_testbed`: GenEval on the text-to-image testbed, scored by GenEval's own rules
(harness.metrics.geneval.rules).

The detector backend is the world detector (harness.testbed.detector) and the colour step names the palette colour
of each object's pixels (standing in for GenEval's CLIP colour classifier). Columns: `geneval_testbed` (the mean of
the six task scores), `geneval_testbed_<task>`, each with a 95% bootstrap interval over images (`_ci`, resampled
within each task), plus the fraction of correct images and of prompts with any correct image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.errors import HarnessError
from harness.testbed.detector import WorldDetector, color_name, foreground_strength

BOOTSTRAP = 1000
BOOTSTRAP_SEED = 0


def palette_colors(image: np.ndarray, classname: str, objects: Sequence[Mapping[str, Any]]) -> list[str]:
    """The colour step: each object's palette colour from its masked pixels."""
    strength = foreground_strength(image)
    return [color_name(image, obj["mask"], strength) for obj in objects]


def bootstrap_intervals(records: Sequence[Mapping[str, Any]], prefix: str = "geneval_testbed",
                        resamples: int = BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> dict[str, list[float]]:
    """95% percentile intervals of the overall score and of each task score, images resampled within each task."""
    rng = np.random.default_rng(seed)
    tasks: dict[str, np.ndarray] = {}
    for tag in dict.fromkeys(r["tag"] for r in records):
        tasks[tag] = np.array([bool(r["correct"]) for r in records if r["tag"] == tag], dtype=np.float64)
    draws = {tag: flags[rng.integers(len(flags), size=(resamples, len(flags)))].mean(axis=1)
             for tag, flags in tasks.items()}
    out = {f"{prefix}_{tag}_ci": np.percentile(d, [2.5, 97.5]).tolist() for tag, d in draws.items()}
    out[f"{prefix}_ci"] = np.percentile(np.mean(list(draws.values()), axis=0), [2.5, 97.5]).tolist()
    return out


def scorer(device: str | torch.device = "cpu", weights: str | None = None):
    """GenEval's per-image scorer (harness.metrics.geneval.image) with the world detector and palette colours."""
    from harness.metrics.geneval.image import GenEvalScorer

    return GenEvalScorer(WorldDetector(weights, device=device), palette_colors)


def judge_images(images: np.ndarray, metadata: Sequence[Mapping[str, Any]], detector: WorldDetector) -> list[dict]:
    """GenEval result records of uint8 images (B, H, W, 3) against their prompts' metadata (one each)."""
    from harness.metrics.geneval.image import GenEvalScorer

    score = GenEvalScorer(detector, palette_colors)
    return [score(image, meta, f"{i:05}.png") for i, (image, meta) in enumerate(zip(images, metadata))]


def score_geneval_testbed(samples, prompts, out_dir: Path, device: torch.device,
                          options: Mapping[str, Any]) -> dict[str, Any]:
    """GenEval's scoring with the world detector and palette colours; columns renamed geneval -> geneval_testbed.
    Option `weights`: another shape classifier file."""
    from harness.metrics.geneval.rules import read_results
    from harness.metrics.geneval.score import RESULTS_FILE, score_geneval

    unknown = set(options) - {"weights"}
    if unknown:
        raise HarnessError(f"geneval_testbed: unknown option(s) {sorted(unknown)}; it takes 'weights'")
    result = score_geneval(samples, prompts, out_dir, device, {"scorer": scorer(device, options.get("weights"))})
    renamed = {"geneval_testbed" + key[len("geneval"):]: value for key, value in result.items()}
    renamed.update(bootstrap_intervals(read_results(Path(out_dir) / RESULTS_FILE)))
    return renamed
