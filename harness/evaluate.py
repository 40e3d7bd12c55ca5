"""The evaluate stage: metrics.json of each run of a suite, for class and prompt runs alike.

Reference metrics (FID, sFID, IS, precision/recall, FD in any feature space, class accuracy) go through
harness.metrics.evaluate.Evaluator against the suite's reference; prompt metrics (GenEval, HPSv3, CLIP score) are
scored from each run's images and its prompt set (harness.metrics.t2i). Missing assets stop it before any work; a
dry run instead uses random weights everywhere (its own reference batch, random Inception, tiny random scorers).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from harness import distributed
from harness.errors import HarnessError
from harness.metrics import METRICS, is_prompt_metric
from harness.metrics.evaluate import Evaluator
from harness.metrics.layouts import detect_layout
from harness.metrics.t2i import evaluate_folder, evaluate_prompt_run
from harness.preflight import require_assets
from harness.prompts import load_prompts
from harness.rundir import RUN_MANIFEST, run_dir_of



def dry_options() -> dict[str, dict[str, Any]]:
    """Each prompt metric's options in dry runs (MetricSpec.dry_options): tiny random-weight scorers."""
    return {name: dict(spec.dry_options) for name, spec in METRICS.items() if spec.dry_options}


def evaluate_runs(suite: Any, runs: Sequence[Any], runs_root: Path, device: str | None, dry: Any = None) -> None:
    """metrics.json of each run for the suite's metrics: prompt metrics first, then those against the reference.

    `dry` (a harness.dryrun.DrySuite) scores on random weights with its own reference batch and Inception.
    """
    if not suite.metrics:
        print(f"{suite.path}: [suite] metrics is empty; nothing to evaluate", file=sys.stderr)
        return
    prompt_metrics = [m for m in suite.metrics if is_prompt_metric(m)]
    reference_metrics = [m for m in suite.metrics if not is_prompt_metric(m)]
    if prompt_metrics and suite.prompts is None:
        raise HarnessError(f"{suite.path}: [suite] metrics {prompt_metrics} score images against their prompts; "
                           "the suite needs [suite] prompts")
    if reference_metrics and suite.reference is None:
        raise HarnessError(f"{suite.path}: [suite] field 'reference' is needed to evaluate {reference_metrics}")
    missing = [r.run_id for r in runs if not (run_dir_of(runs_root, r) / RUN_MANIFEST).is_file()]
    if missing:
        raise HarnessError(f"run(s) {', '.join(missing)} have no samples under {runs_root / suite.name}; "
                           "run `harness generate` first")
    if dry is None:
        require_assets(runs, suite.root, generate=False, evaluate=True)
    start = time.perf_counter()
    if prompt_metrics:
        _score_prompt_runs(suite, runs, runs_root, prompt_metrics, device, dry)
    if reference_metrics:
        _score_against_reference(suite, runs, runs_root, device, dry)
    print(f"metrics: {', '.join(suite.metrics)} for {len(runs)} run(s) in {time.perf_counter() - start:.1f} s")


def _score_prompt_runs(suite: Any, runs: Sequence[Any], runs_root: Path, names: list[str], device: str | None,
                       dry: Any) -> None:
    """GenEval / HPSv3 / CLIP score of each run's images against its prompt set (and GenEval's results.jsonl)."""
    dev = distributed.resolve_device(device)
    prompts = load_prompts(suite.prompts, suite.root)
    options = dry_options() if dry is not None else {"hpsv3": {"root": suite.root}}  # its assets and .venv-hpsv3
    for run in runs:
        evaluate_prompt_run(run_dir_of(runs_root, run), names, prompts, dev, options)


def _score_against_reference(suite: Any, runs: Sequence[Any], runs_root: Path, device: str | None,
                             dry: Any) -> None:
    """The reference metrics of each run; the reference's features are extracted once for the suite."""
    if dry is not None:
        dry.prepare_evaluation()
    evaluator = Evaluator(str(suite.reference), distributed.resolve_device(device),
                          reference_cache_dir=runs_root / suite.name,
                          extractor_options=dry.extractor_options if dry is not None else None,
                          **({"bootstrap": 0} if dry is not None else {}))  # a few random images: no intervals
    for run in tqdm(runs, desc="metrics", unit="run", dynamic_ncols=True, leave=False):
        evaluator.evaluate(run_dir_of(runs_root, run), [m for m in run.metrics if not is_prompt_metric(m)])


def evaluate_sample_folder(folder: Path, metrics: str | None, out: str | None, device: str | None,
                           dry_run: bool = False, strict: bool = False, root: str | None = None) -> int:
    """`harness evaluate FOLDER`: score samples another generator wrote in GenEval's or HPSv3's layout."""
    names = metrics.split(",") if metrics else [detect_layout(folder)]
    dev = distributed.resolve_device(device)
    options = dry_options() if dry_run else {"hpsv3": {"root": Path(root) if root else None}}
    results = evaluate_folder(folder, names, Path(out) if out else None, dev, options, strict)
    for key, value in results.items():
        print(f"{key}: {value:.5f}" if isinstance(value, float) else f"{key}: {value}")
    return 0
