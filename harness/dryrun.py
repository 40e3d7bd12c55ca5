"""Dry runs: a suite's whole pipeline (plan, generation, cost, evaluation, report) with random weights, anywhere.

`harness bench SUITE --dry-run` checks that a suite runs end to end before GPU time is spent on it: the models
are built from their architectures without checkpoints, the VAE from SD-VAE's config, the Inception network from
random weights (harness.metrics.features.write_random_inception_weights), and the reference batch is the first
images of the real one when it is present, else random images written in ADM's format. Nothing is downloaded.
Every number is marked as a dry run (manifest "dry_run": true, a banner in report.md) and lands apart from real
runs: the suite is renamed <name>-dryrun, so its runs and report go to runs/<name>-dryrun and
reports/<name>-dryrun, which also hold its reference batch and Inception weights.

A randomly initialised DiT/SiT predicts exactly zero (adaLN-Zero gates and the zeroed final layer), which would
make every guidance method return the initial noise; the dry run redraws those zero-initialised tensors from
N(0, 0.02) so that methods, gammas and weights give different samples. Real runs never do this.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.errors import HarnessError
from harness.models import ARCHS, REDRAW_STD, ModelSpec, family_of
from harness.suite import Suite, load_suite, read_suite_data

DRY_SUFFIX = "-dryrun"
DRY_SAMPLES = 4  # per run: the fewest that precision/recall (k = 3 nearest neighbours) accept
DRY_STEPS = 2
SMALL = "small"  # --dry-run-arch default without a GPU: each model as the smallest architecture of its family
FULL = "full"  # --dry-run-arch default on a GPU: the suite's own architectures
REFERENCE_FILE = "reference-dryrun.npz"
INCEPTION_FILE = "inception-random.pth"
# What a substituted architecture keeps from the suite's model (its data space: the VAE and classes it expects),
# and the shape fields of the suite's model it drops (they belong to the architecture that is replaced).
_KEEP = ("input_size", "in_channels", "num_classes", "learn_sigma", "class_in_tokens", "convention")
_SHAPE = ("patch_size", "hidden_size", "depth", "num_heads", "mlp_ratio", "decoder_hidden_size", "decoder_depth",
          "decoder_num_heads")


@dataclass(frozen=True)
class DryRun:
    """What a dry run sets: images per run, sampling steps, and the architecture: the suite's own (None or FULL),
    SMALL (each model as the smallest of its family: small_arch), or one given for every model; any smaller
    architecture also gets a narrow VAE of the same latent layout."""

    samples: int = DRY_SAMPLES
    steps: int = DRY_STEPS
    arch: str | None = None

    def __post_init__(self) -> None:
        if self.samples < DRY_SAMPLES:
            raise HarnessError(f"--samples {self.samples}: a dry run needs at least {DRY_SAMPLES} images per run "
                               f"(precision and recall use 3 nearest neighbours)")
        if self.steps < 1:
            raise HarnessError(f"--steps {self.steps}: must be >= 1")
        if self.arch not in (None, SMALL, FULL, *ARCHS):
            raise HarnessError(f"--dry-run-arch {self.arch!r}: unknown architecture; known: {SMALL}, {FULL}, "
                               f"{', '.join(ARCHS)}")


def small_arch(arch: str) -> str:
    """The architecture of `arch`'s model family and patch size with the fewest weights: what a CPU dry run builds
    instead (SiT-XL/2 -> SiT-S/2, MaskDiT-XL/2 -> MaskDiT-S/2); `arch` itself when nothing smaller exists."""
    config = ModelSpec(arch).config()[0]
    patch = getattr(config, "patch_size", None)
    same = [a for a in ARCHS if type(_preset_config(a)) is type(config)
            and getattr(_preset_config(a), "patch_size", None) == patch]
    prefix = arch.split("-")[0]  # SiT stays SiT (same network as DiT-S/2, but its own name and convention)
    return min(same, key=lambda a: (a.split("-")[0] != prefix, _parameters(a), a != arch))


@functools.lru_cache(maxsize=None)
def _preset_config(name: str) -> Any:
    return ModelSpec(name).config()[0]


@functools.lru_cache(maxsize=None)
def _parameters(name: str) -> int:
    """Parameter count of a registered architecture (built on the meta device: no memory)."""
    config = _preset_config(name)
    with torch.device("meta"):
        return sum(p.numel() for p in family_of(config).network(config).parameters())


@dataclass(frozen=True)
class DrySuite:
    """A suite prepared for a dry run, with the files its evaluation uses (written by prepare_evaluation)."""

    suite: Suite
    options: DryRun
    folder: Path  # <runs root>/<name>-dryrun
    reference: Path | None  # the dry reference batch (None when the suite has no file reference)
    source_reference: Path | None  # the real reference batch its images are taken from, when present
    vae_config: dict[str, Any] | None  # the random VAE's architecture (None: SD-VAE's)
    meta: dict[str, Any]  # the settings report.md prints
    substituted: dict[str, tuple[str, str]]  # model key -> (suite's architecture, the one built instead)

    @property
    def inception_weights(self) -> Path:
        return self.folder / INCEPTION_FILE

    @property
    def extractor_options(self) -> dict[str, dict[str, object]]:
        """Evaluator options: the Inception extractor on the random weights, the others their registered dry-run
        options (random weights: DINOv2, CLIP)."""
        from harness.metrics import FEATURE_EXTRACTORS

        options = {name: dict(spec.dry_options) for name, spec in FEATURE_EXTRACTORS.items() if spec.dry_options}
        return {**options, "inception": {"weights_path": str(self.inception_weights)}}

    def prepare_evaluation(self, reference_images: int | None = None) -> None:
        """Write the random Inception weights and the dry reference batch (`reference_images` images, default as
        many as each run has), unless an earlier dry run did."""
        from harness.metrics import get_metric
        from harness.metrics.features import random_smooth_images, write_random_inception_weights
        from harness.metrics.reference import build_reference_batch, write_reference_batch

        self.folder.mkdir(parents=True, exist_ok=True)
        inception = any(get_metric(m).extractor == "inception" for m in self.suite.metrics)
        if inception and not self.inception_weights.is_file():
            write_random_inception_weights(self.inception_weights, calibration_images=2)
        if self.reference is None or self.reference.is_file():
            return
        count = reference_images or self.options.samples
        if self.source_reference is not None:
            build_reference_batch(self.source_reference, self.reference, None, limit=count, progress=False)
        else:
            size = image_size(self.suite)
            write_reference_batch(self.reference, random_smooth_images(count, size, np.random.default_rng(0)))


def image_size(suite: Suite) -> int:
    """Side of the suite's images: the main model's input size, times 8 for SD-VAE latents."""
    spec = suite.runs[0].models["main"]
    config, _ = spec.config()
    return config.input_size * (8 if spec.vae else 1)


def hpsv3_standin(folder: Path, root: Path) -> Path | str:
    """HPSv3's prompt files when present, else a made-up prompt per category written to <folder> (dry runs only)."""
    import json

    from harness.prompts.hpsv3 import CATEGORIES, benchmark_folder, category_file

    if all((benchmark_folder(root) / category_file(c)).is_file() for c in CATEGORIES):
        return "hpsv3"
    path = folder / "hpsv3-standin.jsonl"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": f"a picture of {c.lower()}", "category": c}) + "\n"
                            for c in CATEGORIES))
    return path


def _substitute_arch(table: dict[str, Any], key: str, arch: str, original: Suite) -> None:
    """Give [models.<key>] another architecture, keeping its data space and clamping its route to the new depth."""
    config, convention = original.models[key].config()
    preset, preset_convention = ModelSpec(arch).config()
    if type(preset) is not type(config):
        raise HarnessError(f"--dry-run-arch {arch}: [models.{key}] is a {original.models[key].arch} "
                           f"({type(config).__name__}); choose an architecture of the same family, e.g. "
                           f"{_same_family_example(config)}")
    for fld in _SHAPE:
        table.pop(fld, None)
    table["arch"] = arch
    shared = {f.name for f in fields(config)}  # settable fields only (PixArt's input_size is a property)
    table.update({f: getattr(config, f) for f in _KEEP if f != "convention" and f in shared
                  and getattr(preset, f) != getattr(config, f)})
    if convention != preset_convention:
        table["convention"] = convention
    if table.get("route"):
        depth = preset.depth
        first, last = table["route"]
        last = min(last, depth - 1)
        table["route"] = [min(first, last), last]


def _scale_layers(dry: dict[str, Any], original: Suite, substituted: dict[str, tuple[str, str]]) -> None:
    """A run's perturbed blocks (`params.layers`: PAG / SEG / SLG) moved to the same relative depth of the
    architecture its model is built as (block i of 28 -> round(i * 12 / 28) of 12), so a smaller model has them."""
    for run in dry.get("runs", []):
        layers = (run.get("params") or {}).get("layers")
        key = run.get("model", "main")
        if not isinstance(layers, list) or key not in substituted:
            continue
        old = getattr(original.models[key].config()[0], "depth", None)
        new = getattr(ModelSpec(substituted[key][1]).config()[0], "depth", None)
        if old is None or new is None:
            continue
        run["params"]["layers"] = sorted({min(new - 1, round(i * new / old)) for i in layers})


def random_text_options(config: Any) -> dict[str, int]:
    """Options of the `random` text encoder giving the token states `config`'s network takes (width, length)."""
    for width, length in (("caption_channels", "caption_length"), ("text_dim", "text_len")):
        if getattr(config, width, None):
            return {"dim": getattr(config, width), "length": getattr(config, length)}
    return {}


def _same_family_example(config) -> str:
    """The smallest registered architecture (fewest parameters) whose config class is that of `config`."""
    return min((name for name in ARCHS if type(_preset_config(name)) is type(config)), key=_parameters)


def load_dry_suite(path: str | Path, root: str | Path | None, runs_root: str | Path | None,
                   options: DryRun) -> DrySuite:
    """The dry-run version of a suite: validated as written first, then renamed, without checkpoints, with
    options.samples images and options.steps steps per run, optionally options.arch, and a dry reference batch."""
    path = Path(path)
    root = Path(root) if root is not None else Path.cwd()
    data = read_suite_data(path)
    original = load_suite(path, root, data=data)  # a mistake in the suite is reported against the file as written
    dry = copy.deepcopy(data)
    name = original.name + DRY_SUFFIX
    folder = Path(runs_root) / name if runs_root is not None else root / "runs" / name
    dry["suite"].update(name=name, samples=options.samples, batch_size=min(original.batch_size, options.samples))
    dry.setdefault("sampler", {})["steps"] = options.steps  # load_suite's overrides below also reach every run
    substituted = {}
    for key, table in dry["models"].items():
        table.pop("checkpoint", None)
        arch = small_arch(table["arch"]) if options.arch == SMALL else options.arch
        if arch not in (None, FULL, table["arch"]):
            substituted[key] = (table["arch"], arch)
            _substitute_arch(table, key, arch, original)
    _scale_layers(dry, original, substituted)
    reference = source = None
    if isinstance(original.reference, Path) and original.metrics:
        reference = folder / REFERENCE_FILE
        dry["suite"]["reference"] = str(reference)
        source = original.reference if original.reference.is_file() else None
    if dry["suite"].get("prompts") == "hpsv3":
        dry["suite"]["prompts"] = str(hpsv3_standin(folder, root))
    suite = load_suite(path, root, samples=options.samples, steps=options.steps, data=dry)
    encoders = {key: spec for key, spec in suite.models.items() if spec.text_encoder}
    if encoders:  # real text encoders read weights: the dry run encodes with random ones of the same shape
        for key, spec in encoders.items():
            dry["models"][key].update(text_encoder="random",
                                      text_encoder_options=random_text_options(spec.config()[0]))
        suite = load_suite(path, root, samples=options.samples, steps=options.steps, data=dry)
    from harness.models.vae import SMALL_VAE_CONFIG
    from harness.report.command import suite_meta

    vae_config = dict(SMALL_VAE_CONFIG) if substituted else None
    origin = (f"the first images of {source}" if source else "random images") if reference else "as in the suite"
    archs = {new for _, new in substituted.values()}
    if len(archs) == 1 and len(substituted) == len(dry["models"]):
        built = f"; every model as {archs.pop()}"
    else:
        built = "".join(f"; [models.{k}] {old} built as {new}" for k, (old, new) in substituted.items())
    meta = {"dry run": f"random weights (zero-initialised layers redrawn from N(0, {REDRAW_STD})), a random "
                       f"{'narrow ' if vae_config else ''}VAE, random Inception weights; reference: {origin}; "
                       f"per run {options.samples} samples, {options.steps} sampling step(s){built}"
                       + ("; random text encoders" if encoders else ""),
            **suite_meta(dry)}
    return DrySuite(suite, options, folder, reference, source, vae_config, meta, substituted)


__all__ = ["DRY_SAMPLES", "DRY_STEPS", "DRY_SUFFIX", "FULL", "SMALL", "DryRun", "DrySuite", "image_size",
           "load_dry_suite", "small_arch"]
