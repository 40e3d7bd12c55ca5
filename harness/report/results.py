"""The results table: one row per run of a suite, read from its run directories (manifest, cost, metrics)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.errors import HarnessError
from harness.metrics import metric_direction

# Fixed leading columns of reports/<suite>/results.csv (DESIGN "Results table"); metric columns follow.
RUN_COLUMNS = [
    "suite", "run", "model", "method", "gamma_strong", "gamma_weak", "omega", "steps", "nfe", "samples",
    "gflops", "gflops_full", "tflops_image", "img_per_s", "device",
]
# `numerics` is the run's precision setting (fp32 / tf32 / bf16): `precision` is ADM's metric
TEXT_COLUMNS = ["suite", "run", "model", "method", "device", "numerics", "throughput_source"]
GAMMA_COLUMNS = ["gamma_strong", "gamma_weak"]
# Cost columns and whether a larger value is better (throughput) or worse (compute, time, memory).
COST_HIGHER_IS_BETTER = {
    "nfe": False, "gflops": False, "gflops_full": False, "tflops_image": False, "img_per_s": True,
    "img_per_s_e2e": True, "sec_per_step": False, "peak_mem_mb": False,
    # the throughput's spread over the timed batches (IQR, and IQR / median), the rate reached, compile time
    "img_per_s_iqr": False, "img_per_s_spread": False, "gflops_per_s": True, "utilization": True,
    "compile_seconds": False,
}
# Throughput whose batches spread more than this (IQR / median) is marked as a noisy measurement in the report.
NOISY_SPREAD = 0.10


def metric_higher_is_better(name: str) -> bool | None:
    """Whether a larger value of metric column `name` is better, as the metric that writes it declares
    (harness.metrics.MetricSpec); None when no registered metric writes it."""
    return metric_direction(name)


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The metric columns of a results frame: everything that is not run, cost or interval bookkeeping."""
    fixed = set(RUN_COLUMNS) | set(COST_HIGHER_IS_BETTER) | set(TEXT_COLUMNS) | {"dry_run"}
    return [c for c in df.columns if c not in fixed and not c.endswith(("_lo", "_hi"))]


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object from a run directory, naming the file on error."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise HarnessError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise HarnessError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def find_run_dirs(runs_dir: str | Path, suite_name: str) -> list[Path]:
    """Every run directory of a suite (a folder holding manifest.json), sorted by run id."""
    suite_dir = Path(runs_dir) / suite_name
    if not suite_dir.is_dir():
        raise HarnessError(f"{suite_dir}: no such directory; generate the suite's runs first")
    run_dirs = sorted(p for p in suite_dir.iterdir() if (p / "manifest.json").is_file())
    if not run_dirs:
        raise HarnessError(f"{suite_dir}: no run directory with a manifest.json")
    return run_dirs


def read_manifests(runs_dir: str | Path, suite_name: str) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Run id -> (run directory, manifest) for every run of a suite."""
    manifests = {}
    for run_dir in find_run_dirs(runs_dir, suite_name):
        manifest = read_json(run_dir / "manifest.json")
        manifests[str(manifest.get("run", run_dir.name))] = (run_dir, manifest)
    return manifests


def shard_paths(run_dir: Path) -> list[Path]:
    """A run's sample shards, in order of their first image index."""
    return sorted(run_dir.glob("samples-*.npz"), key=lambda p: (len(p.name), p.name))  # zero-padded indices


def config_value(config: Mapping[str, Any], key: str) -> Any:
    """A field of a run's resolved config, looked up at top level, then in its run and sampler sections."""
    for section in (config, config.get("run", {}), config.get("sampler", {}), config.get("suite", {})):
        if isinstance(section, Mapping) and key in section:
            return section[key]
    return None


def format_gamma(gamma: Any) -> float | str:
    """A gamma as a number, or a schedule as text like "cos(0->0.6)"; NaN when the run has none."""
    if gamma is None:
        return math.nan
    if isinstance(gamma, Mapping):
        kind = str(gamma.get("schedule", "schedule"))
        return f"{kind[:3]}({float(gamma['start']):g}->{float(gamma['end']):g})"  # as Schedule.label() writes it
    if isinstance(gamma, str):
        return gamma
    return float(gamma)


def model_name(config: Mapping[str, Any]) -> str | None:
    """The architecture of the run's main model when the config resolves it, else the model's key."""
    model = config_value(config, "model")
    if isinstance(model, Mapping):
        return model.get("arch") or model.get("name")
    models = config.get("models", {})
    if isinstance(model, str) and isinstance(models, Mapping) and isinstance(models.get(model), Mapping):
        return models[model].get("arch", model)
    return model


def count_samples(run_dir: Path) -> int | None:
    """How many samples the run's shards hold (from their labels), or None without shards."""
    shards = shard_paths(run_dir)
    if not shards:
        return None
    total = 0
    for shard in shards:
        with np.load(shard) as data:
            if "labels" not in data.files:
                raise HarnessError(f"{shard}: no 'labels' array")
            total += len(data["labels"])
    return total


def metric_fields(metrics: Mapping[str, Any], path: Path) -> dict[str, float]:
    """Metric columns from metrics.json: numbers as they are, "<m>_ci": [lo, hi] as <m>_lo and <m>_hi."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key.endswith("_ci"):
            if not (isinstance(value, (list, tuple)) and len(value) == 2):
                raise HarnessError(f"{path}: field {key!r} must be a list [lo, hi]")
            out[f"{key[:-3]}_lo"], out[f"{key[:-3]}_hi"] = float(value[0]), float(value[1])
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key not in RUN_COLUMNS:
            out[key] = float(value)
    return out


def cost_fields(cost: Mapping[str, Any], path: Path) -> dict[str, float | int]:
    """The cost columns from cost.json (FLOPs, NFE, throughput, memory); its device is read separately."""
    out = {}
    for key in COST_HIGHER_IS_BETTER:
        value = cost.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HarnessError(f"{path}: field {key!r} must be a number, found {value!r}")
        out[key] = value
    return out


def read_run(run_dir: Path) -> dict[str, Any]:
    """One results row from a run directory; cost and metric fields are NaN until those stages ran."""
    manifest = read_json(run_dir / "manifest.json")
    cost = read_json(run_dir / "cost.json") if (run_dir / "cost.json").is_file() else {}
    metrics_path = run_dir / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.is_file() else {}
    config = manifest.get("config", {})
    samples = count_samples(run_dir)
    row: dict[str, Any] = {
        "suite": manifest.get("suite"),
        "run": str(manifest.get("run", run_dir.name)),
        "model": model_name(config),
        "method": config_value(config, "method"),
        "gamma_strong": format_gamma(config_value(config, "gamma_strong")),
        "gamma_weak": format_gamma(config_value(config, "gamma_weak")),
        "omega": config_value(config, "omega"),
        "steps": config_value(config, "steps"),
        "samples": samples if samples is not None else config_value(config, "samples"),
        "device": cost.get("device") or manifest.get("device"),
    }
    row.update(cost_fields(cost, run_dir / "cost.json"))
    row["numerics"] = config_value(config, "precision") or cost.get("precision") or "fp32"
    if cost.get("throughput_source"):
        row["throughput_source"] = cost["throughput_source"]
    row.update(metric_fields(metrics, metrics_path))
    row["dry_run"] = bool(manifest.get("dry_run", False))
    return row


def order_columns(df: pd.DataFrame) -> pd.DataFrame:
    """DESIGN's run columns first, then each metric with its interval, then the other cost columns."""
    for column in RUN_COLUMNS:
        if column not in df.columns:
            df[column] = math.nan
    ordered = list(RUN_COLUMNS)
    for metric in metric_columns(df):
        ordered += [c for c in (metric, f"{metric}_lo", f"{metric}_hi") if c in df.columns]
    ordered += [c for c in df.columns if c not in ordered]
    return df[ordered]


def collect_results(runs_dir: str | Path, suite_name: str, reports_dir: str | Path = "reports") -> pd.DataFrame:
    """Build the results table of a suite from its run directories and write reports/<suite>/results.csv."""
    rows = [read_run(run_dir) for run_dir in find_run_dirs(runs_dir, suite_name)]
    df = order_columns(pd.DataFrame(rows))
    df["suite"] = df["suite"].fillna(suite_name)
    out = Path(reports_dir) / suite_name / "results.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    return df


def _number_or_text(value: Any) -> float | str:
    """A CSV cell of a gamma column back as a number where it is one (schedules stay text)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def load_results(suite: str, reports_dir: str | Path = "reports") -> pd.DataFrame:
    """Read reports/<suite>/results.csv as written by collect_results."""
    path = Path(reports_dir) / suite / "results.csv"
    if not path.is_file():
        raise HarnessError(f"{path}: no results yet; run `harness report {suite}` first")
    df = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS})
    for column in GAMMA_COLUMNS:
        df[column] = df[column].map(_number_or_text).astype(object)
    return df
