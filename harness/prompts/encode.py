"""Encoding a prompt set once per (text encoder, prompt set), cached under the runs folder, into PromptConditions."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from harness.errors import HarnessError
from harness.models import ModelSpec
from harness.models.adapters import PromptConditions
from harness.models.text_encoders import build_text_encoder
from harness.prompts.sets import PromptSet

_KEYS = ("states", "mask", "null_states", "null_mask")


def encoding_key(spec: ModelSpec, prompts: PromptSet) -> str:
    """sha256 naming one encoding: the encoder, its options and the prompt texts."""
    text = json.dumps({"encoder": spec.text_encoder, "options": spec.text_encoder_options, "prompts": prompts.digest},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_path(cache_dir: Path, spec: ModelSpec, prompts: PromptSet) -> Path:
    return Path(cache_dir) / f"prompt-states-{spec.text_encoder}-{encoding_key(spec, prompts)[:16]}.pt"


def encode_prompts(spec: ModelSpec, prompts: PromptSet, device: torch.device | str = "cpu",
                   cache_dir: Path | None = None, root: Path | None = None) -> dict[str, torch.Tensor]:
    """{states (P, L, C), mask (P, L), null_states (L, C), null_mask (L,)} on the CPU, from the cache when there.

    The cache file holds tensors only (read with weights_only=True) and is written through a temporary name, so
    parallel processes never read half a file.
    """
    if spec.text_encoder is None:
        raise HarnessError(f"model {spec.arch!r} has no text_encoder; a prompt suite's models need one")
    path = cache_path(cache_dir, spec, prompts) if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if cached.get("key") == encoding_key(spec, prompts):
                return {k: cached[k] for k in _KEYS}
        except Exception:  # a damaged cache file is simply encoded again
            pass
    encoder = build_text_encoder(spec.text_encoder, spec.text_encoder_options, device, root)
    with torch.no_grad():
        states, mask = encoder.encode(list(prompts.prompts))
        null_states, null_mask = encoder.null()
    encoded = {"states": states.float().cpu(), "mask": mask.bool().cpu(), "null_states": null_states.float().cpu(),
               "null_mask": null_mask.bool().cpu()}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            torch.save({**encoded, "key": encoding_key(spec, prompts)}, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return encoded


def prompt_conditions(spec: ModelSpec, prompts: PromptSet, device: torch.device | str = "cpu",
                      cache_dir: Path | None = None, root: Path | None = None) -> PromptConditions:
    """The PromptConditions a text-conditioned FlowModel of `spec` takes for `prompts`, on `device`."""
    e = encode_prompts(spec, prompts, device, cache_dir, root)
    return PromptConditions(e["states"], e["mask"], e["null_states"], e["null_mask"]).to(device)
