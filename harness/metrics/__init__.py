"""The metric registry: a metric is one `MetricSpec` in METRICS carrying everything the stages need (its scorer,
direction, result columns, the assets it reads, its dry-run options); every feature extractor in FEATURE_EXTRACTORS
gets fd_<name>, precision_<name>, recall_<name>. Adding a metric: a module with its scorer, one register_metric."""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import re
import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from harness import registry
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
    "is_prompt_metric",
    "metric_direction",
    "register_feature_extractor",
    "register_metric",
]


@dataclass(frozen=True)
class ExtractorSpec:
    """A registered feature extractor: factory(device, **options) builds it; provides lists its FEATURE_KEYS.

    `assets` are the manifest entries its weights come from (checked before a suite starts), or `need` a
    "module:function"(assets, root) -> harness.assets.Need | None for weights found another way (Inception);
    `dry_options` go to its factory in dry runs (random weights)."""

    name: str
    factory: Callable[..., FeatureExtractor]
    provides: tuple[str, ...]
    description: str = ""
    assets: tuple[str, ...] = ()
    need: str | None = None
    dry_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricSpec:
    """A metric, the one place that knows it: direction, scorer, result columns, assets, dry-run options.

    Reference metrics (kind other than "prompt") are computed from features: `extractor` and `feature` say which,
    and scorer(spec, inputs: harness.metrics.scores.FeatureInputs) returns its metrics.json values. Prompt metrics
    are scored from the images and their prompts: scorer(samples, prompts, out_dir, device, options) (run by
    harness.metrics.t2i). A scorer may be a "module:function" string, imported on first use. `columns` are the
    metrics.json keys it writes ("prefix_*" for a family; default its name), which the report reads the
    direction of; `assets` are manifest entries it reads beyond its extractor's; `dry_options` replace the
    scorer's options in dry runs."""

    name: str
    higher_is_better: bool
    extractor: str
    feature: str
    kind: str  # "prompt" (images + prompts), or a reference metric's family: "fd", "is", "precision", ...
    description: str = ""
    scorer: Callable[..., dict[str, Any]] | str | None = None
    columns: tuple[str, ...] = ()
    assets: tuple[str, ...] = ()
    dry_options: Mapping[str, Any] = field(default_factory=dict)

    def writes(self, column: str) -> bool:
        """Whether `column` of metrics.json is one this metric writes."""
        return column == self.name or any(fnmatch.fnmatchcase(column, c) for c in self.columns)


FEATURE_EXTRACTORS: dict[str, ExtractorSpec] = {}
METRICS: dict[str, MetricSpec] = {}

# Scorers of the built-in reference metrics, by kind (harness.metrics.scores); a metric may name its own.
_KIND_SCORERS = {"fd": "harness.metrics.scores:score_fd", "is": "harness.metrics.scores:score_is",
                 "precision": "harness.metrics.scores:score_precision_recall",
                 "recall": "harness.metrics.scores:score_precision_recall",
                 "class_acc": "harness.metrics.scores:score_class_acc"}
# Extractors registered by modules that this package must not import eagerly: imported on first use.
_PLUGINS = {"testbed": "harness.testbed.features"}
# Built-in reference images, `<name>:<count>` in a suite: "module:function" returning uint8 NHWC for a count.
REFERENCE_SOURCES = {"testbed": "harness.testbed.features:reference_images",
                     "scenes": "harness.testbed.scenes:reference_images"}  # the text testbed's scenes
_BUILTIN_REFERENCE = re.compile(r"^([a-z]+):(\d+)$")
_NAME = re.compile(r"^[a-z][a-z0-9]*$")


def register_metric(spec: MetricSpec) -> MetricSpec:
    """Add a metric; names are unique, and every metric has a scorer (a built-in kind's when it names none)."""
    if spec.name in METRICS:
        raise ValueError(f"metric {spec.name!r} is already registered")
    if spec.kind != "prompt" and spec.feature not in FEATURE_KEYS:
        raise ValueError(f"metric {spec.name!r}: feature must be one of {FEATURE_KEYS}, got {spec.feature!r}")
    if spec.scorer is None and spec.kind not in _KIND_SCORERS:
        raise ValueError(f"metric {spec.name!r} names no scorer and its kind {spec.kind!r} has none built in "
                         f"({', '.join(_KIND_SCORERS)})")
    if spec.scorer is None:
        spec = dataclasses.replace(spec, scorer=_KIND_SCORERS[spec.kind])
    if spec.kind == "fd" and not spec.columns:
        spec = dataclasses.replace(spec, columns=(f"{spec.name}_ci",))  # its bootstrap interval
    METRICS[spec.name] = spec
    return spec


def register_feature_extractor(
    name: str, factory: Callable[..., FeatureExtractor], provides: tuple[str, ...], description: str = "",
    assets: tuple[str, ...] = (), need: str | None = None, dry_options: Mapping[str, Any] | None = None,
) -> ExtractorSpec:
    """Add an extractor and its fd_/precision_/recall_ metrics; it must provide "pool" features."""
    if not _NAME.match(name):
        raise ValueError(f"extractor name {name!r} must be lowercase letters and digits")
    if name in FEATURE_EXTRACTORS:
        raise ValueError(f"feature extractor {name!r} is already registered")
    if "pool" not in provides or not set(provides) <= set(FEATURE_KEYS):
        raise ValueError(f"extractor {name!r} must provide 'pool' and only keys from {FEATURE_KEYS}, got {provides}")
    spec = ExtractorSpec(name, factory, tuple(provides), description, tuple(assets), need, dict(dry_options or {}))
    FEATURE_EXTRACTORS[name] = spec
    register_metric(MetricSpec(f"fd_{name}", False, name, "pool", "fd", f"Frechet distance in {name} space"))
    register_metric(MetricSpec(f"precision_{name}", True, name, "pool", "precision", f"precision in {name} space"))
    register_metric(MetricSpec(f"recall_{name}", True, name, "pool", "recall", f"recall in {name} space"))
    return spec


def is_prompt_metric(name: str) -> bool:
    """Whether `name` is a metric scored from images and their prompts (no reference batch)."""
    return name in METRICS and METRICS[name].kind == "prompt"


def metric_direction(column: str) -> bool | None:
    """Whether a larger value of a metrics.json column is better, from the metric that writes it; None if none."""
    try:
        return get_metric(column).higher_is_better
    except HarnessError:
        pass
    owner = next((spec for spec in METRICS.values() if spec.writes(column)), None)
    return None if owner is None else owner.higher_is_better


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


def _deferred(entry: str) -> Callable[..., FeatureExtractor]:
    """A factory that imports its extractor class ("module:Class") on first use (heavy imports stay lazy)."""

    def factory(device: str | torch.device = "cpu", **options: object) -> FeatureExtractor:
        return registry.load(entry)(device=device, **options)

    return factory


register_feature_extractor(
    "inception", _inception_factory, ("pool", "spatial", "logits"), "torch-fidelity's TF-compatible InceptionV3",
    need="harness.metrics.features:inception_need")
register_metric(MetricSpec("fid", False, "inception", "pool", "fd", "Frechet Inception distance (ADM)"))
register_metric(MetricSpec("sfid", False, "inception", "spatial", "fd", "spatial FID on Mixed_6d features (ADM)"))
register_metric(MetricSpec("is", True, "inception", "logits", "is", "Inception score, 5000-image splits (ADM)"))
register_metric(MetricSpec("precision", True, "inception", "pool", "precision", "ADM precision, k=3"))
register_metric(MetricSpec("recall", True, "inception", "pool", "recall", "ADM recall, k=3"))
register_metric(MetricSpec("class_acc", True, "testbed", "logits", "class_acc", "testbed classifier accuracy"))
register_metric(MetricSpec("kid", False, "inception", "pool", "kid", "kernel Inception distance (torch-fidelity)",
                           scorer="harness.metrics.kid:score_kid", columns=("kid_std",)))
register_feature_extractor(
    "dinov2", _deferred("harness.metrics.dinov2:Dinov2Extractor"), ("pool",),
    "DINOv2 ViT-L/14 CLS token, EDM2's preprocessing", assets=("dinov2-vitl14",), dry_options={"random_weights": True})
register_feature_extractor(
    "clip", _deferred("harness.metrics.cmmd:ClipExtractor"), ("pool",),
    "CLIP ViT-L/14-336 image embeddings, cmmd's preprocessing", assets=("clip-vit-l-14-336-openai",),
    dry_options={"random_weights": True})
register_metric(MetricSpec("cmmd", False, "clip", "pool", "cmmd", "CMMD: CLIP-space MMD, RBF sigma 10, x1000",
                           scorer="harness.metrics.cmmd:score_cmmd", columns=("cmmd_ci",)))
# Text-to-image metrics: computed from the images and their prompts (harness.metrics.t2i), no reference batch.
# Their weights are manifest assets (an entry not in the manifest is not checked; a hub asset also counts as
# present when the Hugging Face cache holds its files, where their loaders look). Dry runs score with tiny
# random-weight models: nothing is read from disk or downloaded.
_RANDOM = {"random_weights": True}
register_metric(MetricSpec("geneval", True, "", "", "prompt", "GenEval overall: mean of its six task scores",
                           scorer="harness.metrics.geneval.score:score_geneval", columns=("geneval_*",),
                           assets=("mask2former-swin-s-coco", "clip-vit-l-14-openai"), dry_options=_RANDOM))
register_metric(MetricSpec("geneval_testbed", True, "", "", "prompt",
                           "GenEval's rules on the text testbed (world detector, palette colours)",
                           scorer="harness.testbed.geneval_testbed:score_geneval_testbed",
                           columns=("geneval_testbed_*",)))
register_metric(MetricSpec("hpsv3", True, "", "", "prompt", "HPSv3 reward: mean of the category means",
                           scorer="harness.metrics.hpsv3.score:score_hpsv3", columns=("hpsv3_*",),
                           assets=("hpsv3", "qwen2-vl-7b-instruct"), dry_options=_RANDOM))
register_metric(MetricSpec("clip_score", True, "", "", "prompt", "CLIP score: 100 x cosine, clipped at 0",
                           scorer="harness.metrics.t2i:score_clip", columns=("clip_score_model",),
                           assets=("clip-vit-l-14-openai",), dry_options=_RANDOM))
