"""The `hpsv3` metric: HPSv3 scores through the official hpsv3 package, run by a worker process in its own environment.

hpsv3 pins transformers 4.45.2, so it lives in .venv-hpsv3 (`make hpsv3-env`) and the harness talks to
harness/metrics/hpsv3/worker.py over JSON lines; the main environment is never downgraded. The summary is the
official evaluate/benchmark.py's: per category count / mean / std / min / max, and OVERALL with the unweighted mean
(and std) of the category means.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from harness.errors import HarnessError
from harness.metrics.hpsv3.layout import hpsv3_name, write_hpsv3
from harness.metrics.layouts import Sample
from harness.prompts.sets import PromptSet

HPSV3_FOLDER = "hpsv3"  # a run's images in HPSv3's layout, for the worker

WORKER = Path(__file__).with_name("worker.py")
VENV = ".venv-hpsv3"
PYTHON_ENV = "HARNESS_HPSV3_PYTHON"


def worker_python(root: str | Path | None = None) -> str:
    """The Python of the HPSv3 environment: $HARNESS_HPSV3_PYTHON, else <root>/.venv-hpsv3/bin/python."""
    if os.environ.get(PYTHON_ENV):
        return os.environ[PYTHON_ENV]
    python = Path(root or Path.cwd()) / VENV / "bin" / "python"
    if not python.is_file():
        raise HarnessError(f"HPSv3 runs in its own environment and {python} does not exist: create it with "
                           f"`make hpsv3-env` (or point ${PYTHON_ENV} at a Python with hpsv3 installed)")
    return str(python)


class HPSv3Worker:
    """A running worker: score(image_paths, prompts) -> mu per image. Use as a context manager."""

    def __init__(self, backend: str = "hpsv3", device: str = "auto", checkpoint: str | Path | None = None,
                 base: str | Path | None = None, force_cpu: bool = False, python: str | None = None,
                 batch_size: int = 16, root: str | Path | None = None):
        command = [python or worker_python(root), str(WORKER), "--backend", backend, "--device", device]
        if checkpoint is not None:
            command += ["--checkpoint", str(checkpoint)]
        if base is not None:
            command += ["--base", str(base)]
        if force_cpu:
            command.append("--force-cpu")
        self.batch_size = batch_size
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        ready = self._receive()
        if not ready.get("ready"):
            self.close()
            raise HarnessError(f"HPSv3 worker did not start: {ready.get('error', ready)}")
        self.info = ready

    def _receive(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            raise HarnessError(f"HPSv3 worker exited (status {code}) without an answer; its stderr says why")
        try:
            return json.loads(line)
        except json.JSONDecodeError as error:
            raise HarnessError(f"HPSv3 worker wrote a line outside the protocol: {line[:200]!r}") from error

    def score(self, image_paths: Sequence[str | Path], prompts: Sequence[str]) -> np.ndarray:
        """(N,) HPSv3 mu of image files against their prompts, in batches of batch_size."""
        if len(image_paths) != len(prompts):
            raise ValueError(f"{len(image_paths)} images but {len(prompts)} prompts")
        scores: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            request = {"images": [str(p) for p in image_paths[start:start + self.batch_size]],
                       "prompts": list(prompts[start:start + self.batch_size])}
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            answer = self._receive()
            if "error" in answer:
                raise HarnessError(f"HPSv3 worker: {answer['error']}")
            if len(answer.get("scores", [])) != len(request["images"]):
                raise HarnessError(f"HPSv3 worker answered {answer!r:.200} to {len(request['images'])} images")
            scores.extend(answer["scores"])
        return np.asarray(scores, dtype=np.float64)

    def score_images(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> np.ndarray:
        """Scores of uint8 (H, W, 3) arrays, written as PNG files for the worker (the official tool reads files)."""
        with tempfile.TemporaryDirectory() as folder:
            paths = []
            for i, image in enumerate(images):
                paths.append(Path(folder) / f"{i:06d}.png")
                Image.fromarray(np.asarray(image)).save(paths[-1])
            return self.score(paths, prompts)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> HPSv3Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _located(asset: str, file: str, hub: str, root: str | Path | None) -> str | None:
    """A file of a manifest asset when in place, else None if the Hugging Face cache holds it (the package then
    finds it itself); neither: the one message with the fetch command."""
    from huggingface_hub import try_to_load_from_cache

    from harness.assets import load_manifest

    path = load_manifest()[asset].location(root) / file
    if path.is_file():
        return str(path)
    if isinstance(try_to_load_from_cache(hub, file), str):
        return None
    raise HarnessError(f"HPSv3 needs {file} of {hub}: not at {path} nor in the Hugging Face cache; fetch it with "
                       f"`harness assets --fetch {asset}`")


def open_worker(root: str | Path | None = None, device: str = "auto", force_cpu: bool = False,
                batch_size: int = 16, random_weights: bool = False) -> HPSv3Worker:
    """The official HPSv3 worker with the manifest's weights (checked before anything starts), or, for dry runs,
    the tiny random-weight backend in this environment."""
    if random_weights:
        return HPSv3Worker("tiny", device="cpu" if device == "auto" else device, python=sys.executable,
                           batch_size=batch_size)
    checkpoint = _located("hpsv3", "HPSv3.safetensors", "MizzenAI/HPSv3", root)
    base = _located("qwen2-vl-7b-instruct", "config.json", "Qwen/Qwen2-VL-7B-Instruct", root)
    return HPSv3Worker("hpsv3", device, checkpoint, None if base is None else Path(base).parent, force_cpu,
                       batch_size=batch_size, root=root)


def read_prompt(text_file: str | Path) -> str:
    """A prompt as benchmark.py reads `<image stem>.txt`: '\\n'.join(readlines()), newlines kept."""
    with open(text_file) as file:
        return "\n".join(file.readlines())


def summarize(scores: Mapping[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    """benchmark.py's calculate_category_stats: per category count/mean/std/min/max (np.std, ddof 0; an empty
    category is all zeros) and OVERALL = the unweighted mean and std of the non-empty categories' means."""
    stats: dict[str, dict[str, float]] = {}
    for category, values in scores.items():
        values = np.asarray(values, dtype=np.float64)
        stats[category] = ({"count": 0, "mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0} if not len(values) else
                           {"count": len(values), "mean": float(np.mean(values)), "std": float(np.std(values)),
                            "min": float(np.min(values)), "max": float(np.max(values))})
    filled = [s for s in stats.values() if s["count"] > 0]
    if not filled:
        raise HarnessError("HPSv3: no scores to summarise")
    stats["OVERALL"] = {"count": sum(s["count"] for s in stats.values()),
                        "mean": float(np.mean([s["mean"] for s in filled])),
                        "std": float(np.std([s["mean"] for s in filled])),
                        "min": float(min(s["min"] for s in filled)), "max": float(max(s["max"] for s in filled))}
    return stats


def metric_columns(stats: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """`hpsv3` (OVERALL mean) plus `hpsv3_<category>` columns for the results table."""
    columns = {"hpsv3": stats["OVERALL"]["mean"]}
    for category, stat in stats.items():
        if category != "OVERALL":
            columns[f"hpsv3_{category.lower().replace(' ', '_')}"] = stat["mean"]
    return columns


def score_hpsv3(samples: Sequence[Sample], prompts: PromptSet, out_dir: Path, device: torch.device,
                options: Mapping[str, Any], folder: Path | None = None) -> dict[str, Any]:
    """HPSv3: mu per image from the worker (open_worker), summarised as benchmark.py does: `hpsv3` = the
    unweighted mean of the category means, `hpsv3_<category>` each.

    The worker reads files: images of a run are written in HPSv3's layout under out_dir/hpsv3 first (`folder`
    is given when the samples already lie in that layout). `scorer` (called with image_paths=, prompts=) replaces
    the worker; `random_weights` runs its tiny random-weight backend (dry runs)."""
    if folder is None:
        folder = Path(out_dir) / HPSV3_FOLDER
        labels = np.array([s.prompt for s in samples], dtype=np.int64)
        write_hpsv3((s.load() for s in samples), labels, prompts, folder)
        paths = [folder / hpsv3_name(prompts, s.prompt, i) for i, s in enumerate(samples)]
    else:
        paths = [Path(folder) / s.filename for s in samples]
    texts = [prompts.prompts[s.prompt] for s in samples]
    scorer = options.get("scorer")
    if scorer is None:
        kind = "cpu" if device.type == "cpu" else "auto"
        with open_worker(options.get("root"), kind, bool(options.get("force_cpu")),
                         random_weights=bool(options.get("random_weights"))) as worker:
            rewards = worker.score(image_paths=[str(p) for p in paths], prompts=texts)
    else:
        rewards = scorer(image_paths=[str(p) for p in paths], prompts=texts)
    rewards = np.asarray(rewards, dtype=np.float64)
    by_category: dict[str, list[float]] = {}
    for sample, reward in zip(samples, rewards.tolist()):
        by_category.setdefault(str(prompts.metadata[sample.prompt].get("category", "all")), []).append(reward)
    records = [{"filename": s.filename, "prompt": t, "reward": r} for s, t, r in zip(samples, texts, rewards.tolist())]
    _write_jsonl(Path(out_dir) / "hpsv3_scores.jsonl", records)
    return metric_columns(summarize(by_category))


def _write_jsonl(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
