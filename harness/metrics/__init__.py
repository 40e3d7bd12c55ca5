"""Registries of feature extractors and metrics: every extractor gets fd_<name>, precision_<name>, recall_<name>."""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from harness.errors import HarnessError
from harness.metrics.extractor import FEATURE_KEYS, FeatureExtractor

__all__ = [
    "FEATURE_EXTRACTORS",
    "FEATURE_KEYS",
    "METRICS",
    "ExtractorSpec",
    "FeatureExtractor",
    "MetricSpec",
    "build_extractor",
    "builtin_reference",
    "builtin_reference_images",
    "get_extractor_spec",
    "get_metric",
    "register_feature_extractor",
    "register_metric",
]


@dataclass(frozen=True)
class ExtractorSpec:
    """A registered feature extractor: factory(device, **options) builds it; provides lists its FEATURE_KEYS."""

    name: str
    factory: Callable[..., FeatureExtractor]
    provides: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class MetricSpec:
    """A metric: its direction for tables, and which extractor and feature key it is computed from."""

    name: str
    higher_is_better: bool
    extractor: str
    feature: str
    kind: str  # "fd" | "is" | "precision" | "recall" | "class_acc" | "prompt" (images + prompts, harness.metrics.t2i)
    description: str = ""


FEATURE_EXTRACTORS: dict[str, ExtractorSpec] = {}
METRICS: dict[str, MetricSpec] = {}

METRIC_KINDS = ("fd", "is", "precision", "recall", "class_acc", "prompt")
# Extractors registered by modules that this package must not import eagerly: imported on first use.
_PLUGINS = {"testbed": "harness.testbed.features"}
# Built-in reference images, `<name>:<count>` in a suite: "module:function" returning uint8 NHWC for a count.
REFERENCE_SOURCES = {"testbed": "harness.testbed.features:reference_images",
                     "scenes": "harness.testbed.scenes:reference_images"}  # the text testbed's scenes
_BUILTIN_REFERENCE = re.compile(r"^([a-z]+):(\d+)$")
_NAME = re.compile(r"^[a-z][a-z0-9]*$")


def register_metric(spec: MetricSpec) -> MetricSpec:
    """Add a metric; names are unique and kinds must be ones evaluate_run knows how to compute."""
    if spec.name in METRICS:
        raise ValueError(f"metric {spec.name!r} is already registered")
    if spec.kind not in METRIC_KINDS or (spec.feature not in FEATURE_KEYS and spec.kind != "prompt"):
        raise ValueError(f"metric {spec.name!r}: kind must be one of {METRIC_KINDS}, feature one of {FEATURE_KEYS}")
    METRICS[spec.name] = spec
    return spec


def register_feature_extractor(
    name: str, factory: Callable[..., FeatureExtractor], provides: tuple[str, ...], description: str = ""
) -> ExtractorSpec:
    """Add an extractor and its fd_/precision_/recall_ metrics; it must provide "pool" features."""
    if not _NAME.match(name):
        raise ValueError(f"extractor name {name!r} must be lowercase letters and digits")
    if name in FEATURE_EXTRACTORS:
        raise ValueError(f"feature extractor {name!r} is already registered")
    if "pool" not in provides or not set(provides) <= set(FEATURE_KEYS):
        raise ValueError(f"extractor {name!r} must provide 'pool' and only keys from {FEATURE_KEYS}, got {provides}")
    spec = ExtractorSpec(name, factory, tuple(provides), description)
    FEATURE_EXTRACTORS[name] = spec
    register_metric(MetricSpec(f"fd_{name}", False, name, "pool", "fd", f"Frechet distance in {name} space"))
    register_metric(MetricSpec(f"precision_{name}", True, name, "pool", "precision", f"precision in {name} space"))
    register_metric(MetricSpec(f"recall_{name}", True, name, "pool", "recall", f"recall in {name} space"))
    return spec


def _load_plugin(extractor: str) -> None:
    """Import the module that registers extractor, if it is a known plug-in not imported yet."""
    if extractor not in FEATURE_EXTRACTORS and extractor in _PLUGINS:
        try:
            importlib.import_module(_PLUGINS[extractor])
        except ModuleNotFoundError as error:
            if error.name != _PLUGINS[extractor]:
                raise  # the plug-in exists but one of its imports is missing


def builtin_reference(source: str) -> tuple[str, int] | None:
    """(name, count) when `source` names built-in reference images such as "testbed:10000", else None."""
    match = _BUILTIN_REFERENCE.match(source)
    if match is None or match.group(1) not in REFERENCE_SOURCES:
        return None
    return match.group(1), int(match.group(2))


def builtin_reference_images(source: str):
    """The uint8 NHWC images of a built-in reference (see REFERENCE_SOURCES)."""
    name, count = builtin_reference(source)
    module, _, function = REFERENCE_SOURCES[name].partition(":")
    return getattr(importlib.import_module(module), function)(count)


def _unknown(kind: str, name: str, known: list[str]) -> HarnessError:
    """A HarnessError for an unknown name, with the closest known names."""
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(known))}"
    return HarnessError(f"unknown {kind} {name!r}{hint}")


def get_metric(name: str) -> MetricSpec:
    """The spec of a metric name (importing plug-in extractors such as the testbed's on demand)."""
    if name not in METRICS:
        prefix, _, extractor = name.partition("_")
        if prefix in ("fd", "precision", "recall") and extractor:
            _load_plugin(extractor)
    spec = METRICS.get(name)
    if spec is None:
        raise _unknown("metric", name, list(METRICS))
    _load_plugin(spec.extractor)
    return spec


def get_extractor_spec(name: str) -> ExtractorSpec:
    """The spec of a registered feature extractor (importing plug-ins on demand)."""
    _load_plugin(name)
    if name not in FEATURE_EXTRACTORS:
        raise _unknown("feature extractor", name, list(FEATURE_EXTRACTORS))
    return FEATURE_EXTRACTORS[name]


def build_extractor(name: str, device: str | torch.device = "cpu", **options: object) -> FeatureExtractor:
    """Instantiate a registered extractor on device; options go to its factory (e.g. weights_path)."""
    return get_extractor_spec(name).factory(device=device, **options)


def _inception_factory(device: str | torch.device = "cpu", weights_path: str | None = None) -> FeatureExtractor:
    """Build the torch-fidelity Inception extractor (imported lazily: torch-fidelity is heavy)."""
    from harness.metrics.features import InceptionExtractor

    return InceptionExtractor(device=device, weights_path=weights_path)


register_feature_extractor(
    "inception", _inception_factory, ("pool", "spatial", "logits"), "torch-fidelity's TF-compatible InceptionV3"
)
register_metric(MetricSpec("fid", False, "inception", "pool", "fd", "Frechet Inception distance (ADM)"))
register_metric(MetricSpec("sfid", False, "inception", "spatial", "fd", "spatial FID on Mixed_6d features (ADM)"))
register_metric(MetricSpec("is", True, "inception", "logits", "is", "Inception score, 5000-image splits (ADM)"))
register_metric(MetricSpec("precision", True, "inception", "pool", "precision", "ADM precision, k=3"))
register_metric(MetricSpec("recall", True, "inception", "pool", "recall", "ADM recall, k=3"))
register_metric(MetricSpec("class_acc", True, "testbed", "logits", "class_acc", "testbed classifier accuracy"))
# Text-to-image metrics: computed from the images and their prompts (harness.metrics.t2i), no reference batch.
register_metric(MetricSpec("geneval", True, "", "", "prompt", "GenEval overall: mean of its six task scores"))
register_metric(MetricSpec("geneval_testbed", True, "", "", "prompt",
                           "GenEval's rules on the text testbed (world detector, palette colours)"))
register_metric(MetricSpec("hpsv3", True, "", "", "prompt", "HPSv3 reward: mean of the category means"))
register_metric(MetricSpec("clip_score", True, "", "", "prompt", "CLIP score: 100 x cosine, clipped at 0"))
