"""The evaluate stage of text-to-image suites: each run's images scored with its prompt set (harness.metrics.t2i)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harness.errors import HarnessError

# Dry runs score with tiny random-weight models: a Mask2Former and a CLIP for GenEval, a CLIP for clip_score, and
# the HPSv3 worker's tiny Qwen2-VL backend in this environment. Nothing is read from disk or downloaded.
DRY_OPTIONS = {"geneval": {"random_weights": True}, "clip_score": {"random_weights": True},
               "hpsv3": {"random_weights": True}}


def evaluate_prompt_runs(suite, runs: Sequence, runs_root: Path, device: str | None, dry=None) -> None:
    """metrics.json (and GenEval's results.jsonl) of every run for the suite's text-to-image metrics.

    A dry run (`dry` given) scores with random models (harness.metrics.t2i_dry); a real one first checks that the
    prompt files are present."""
    from harness import distributed
    from harness.metrics.t2i import evaluate_prompt_run, is_prompt_metric
    from harness.prompts import load_prompts
    from harness.runner import MANIFEST, run_dir_of

    names = [m for m in suite.metrics if is_prompt_metric(m)]
    if suite.prompts is None:
        raise HarnessError(f"{suite.path}: [suite] metrics {names} score images against their prompts; the suite "
                           "needs [suite] prompts")
    missing = [r.run_id for r in runs if not (run_dir_of(runs_root, r) / MANIFEST).is_file()]
    if missing:
        raise HarnessError(f"run(s) {', '.join(missing)} have no samples under {runs_root / suite.name}; "
                           "run `harness generate` first")
    dev = distributed.resolve_device(device)
    options = DRY_OPTIONS if dry is not None else {"hpsv3": {"root": suite.root}}  # its assets and .venv-hpsv3
    if dry is None:
        from harness.preflight import require_assets

        require_assets(runs, suite.root, generate=False, evaluate=True)
    prompts = load_prompts(suite.prompts, suite.root)
    for run in runs:
        evaluate_prompt_run(run_dir_of(runs_root, run), names, prompts, dev, options)


def evaluate_sample_folder(folder: Path, metrics: str | None, out: str | None, device: str | None,
                           dry_run: bool = False, strict: bool = False, root: str | None = None) -> int:
    """`harness evaluate FOLDER`: score samples another generator wrote in GenEval's or HPSv3's layout."""
    from harness import distributed
    from harness.metrics.t2i import evaluate_folder
    from harness.prompts.layouts import detect_layout

    names = metrics.split(",") if metrics else [detect_layout(folder)]
    dev = distributed.resolve_device(device)
    options = DRY_OPTIONS if dry_run else {"hpsv3": {"root": Path(root) if root else None}}
    results = evaluate_folder(folder, names, Path(out) if out else None, dev, options, strict)
    for key, value in results.items():
        print(f"{key}: {value:.5f}" if isinstance(value, float) else f"{key}: {value}")
    return 0
