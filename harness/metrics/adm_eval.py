"""`harness adm-eval REF_BATCH SAMPLE_BATCH`: ADM's evaluator.py in PyTorch, with the same inputs and output."""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from harness.errors import HarnessError, check_inputs
from harness.metrics.evaluate import Reference, compute_metrics
from harness.metrics.features import add_inception_arguments
from harness.metrics.extractor import FeatureExtractor
from harness.metrics.precision_recall import ADM_TILE
from harness.metrics.reference import read_reference_stats

# Metric names here -> the labels ADM's evaluator prints, in its order.
ADM_LABELS = {"is": "Inception Score", "fid": "FID", "sfid": "sFID", "precision": "Precision", "recall": "Recall"}


def adm_evaluate(
    ref_batch: str | os.PathLike,
    sample_batch: str | os.PathLike,
    extractor: FeatureExtractor,
    batch_size: int = 64,
    progress: bool = True,
    tile: int = ADM_TILE,
) -> dict[str, float]:
    """IS, FID, sFID, precision and recall of a sample batch against a reference batch, as ADM computes them.

    Precomputed mu/sigma/mu_s/sigma_s in either file are used for FID/sFID (ADM's read_statistics); precision and
    recall always use the pool features of both files' arr_0.
    """
    reference, samples = Reference.from_npz(ref_batch), Reference.from_npz(sample_batch)
    features: dict[str, dict] = {}

    def extract(which: Reference, label: str) -> dict:
        if label not in features:
            features[label] = extractor.extract(which.chunks(), which.num_images, batch_size, label, progress)
        return features[label]

    return compute_metrics(
        list(ADM_LABELS),
        samples=lambda _: extract(samples, "samples"),
        reference=lambda _: extract(reference, "reference"),
        reference_stats=reference.stats,
        sample_stats=read_reference_stats(sample_batch),
        device=extractor.device,
        tile=tile,
        bootstrap=0,  # a drop-in for ADM's evaluator: its five numbers only
    )


def format_adm(results: dict[str, float]) -> str:
    """The five lines ADM's evaluator prints, e.g. "FID: 3.94..."."""
    return "\n".join(f"{label}: {results[name]}" for name, label in ADM_LABELS.items())


def configure_adm_eval_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `harness adm-eval`."""
    parser.add_argument("ref_batch", help="ADM reference batch .npz (arr_0, optional mu/sigma/mu_s/sigma_s)")
    parser.add_argument("sample_batch", help="sample batch .npz (arr_0 = uint8 [N, H, W, 3])")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of ADM's lines")
    add_inception_arguments(parser)
    parser.set_defaults(func=run_adm_eval)
    return parser


def add_adm_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `adm-eval` on a CLI's subparsers; the parsed args' func(args) runs it and returns 0."""
    parser = subparsers.add_parser("adm-eval", help="ADM evaluator: IS, FID, sFID, precision, recall")
    return configure_adm_eval_parser(parser)


def run_adm_eval(args: argparse.Namespace) -> int:
    """Run `harness adm-eval` from parsed arguments; prints results to stdout, progress to stderr."""
    from harness.metrics.features import InceptionExtractor

    check_inputs({"REF_BATCH": args.ref_batch, "SAMPLE_BATCH": args.sample_batch,
                  "--inception-weights": args.inception_weights})
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    extractor = InceptionExtractor(device=device, weights_path=args.inception_weights)
    results = adm_evaluate(args.ref_batch, args.sample_batch, extractor, args.batch_size)
    print(json.dumps(results) if args.json else format_adm(results))
    return 0


def main_adm_eval(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: parse argv, run, and turn a HarnessError into exit status 2."""
    parser = configure_adm_eval_parser(argparse.ArgumentParser(prog="harness adm-eval", description=__doc__))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main_adm_eval())
