"""Prompt runs' conditions: each prompt set encoded once per text encoder, and the shared networks handed to a run as
views conditioned on its prompt set (FlowModel.conditioned), so runs that share a network never rewrite its state."""

from __future__ import annotations

from pathlib import Path

import torch

from harness.errors import HarnessError
from harness.models import FlowModel
from harness.prompts import PromptSet, load_prompts
from harness.prompts.encode import prompt_conditions
from harness.suite import Run


class PromptEncodings:
    """Prompt sets by a suite's `prompts`, and their encodings by (model key, prompts), made on first use."""

    def __init__(self, device: torch.device, root: Path | None = None):
        self.device = device
        self.root = root
        self.sets: dict[str, PromptSet] = {}
        self.views: dict[tuple[str, str, bool], FlowModel] = {}

    def prompt_set(self, run: Run) -> PromptSet:
        """The run's prompt set, checked to hold enough prompts for its images."""
        if run.prompts not in self.sets:
            self.sets[run.prompts] = load_prompts(run.prompts, self.root)
        prompts = self.sets[run.prompts]
        if run.samples > len(prompts) * run.images_per_prompt:
            raise HarnessError(f"run {run.run_id!r}: {run.samples} images need "
                               f"{-(-run.samples // run.images_per_prompt)} prompts at {run.images_per_prompt} "
                               f"per prompt; prompt set {run.prompts!r} has {len(prompts)}")
        return prompts

    def condition(self, run: Run, models: dict[str, FlowModel], cache_dir: Path) -> dict[str, FlowModel]:
        """The run's models by role, each conditioned on the run's prompt set as its text encoder encodes it (the
        encoding cached as a file in `cache_dir`)."""
        prompts = self.prompt_set(run)
        out = {}
        for role, spec in run.models.items():
            key = (run.model_keys[role], run.prompts, run.compile)
            if key not in self.views:
                conditions = prompt_conditions(spec, prompts, self.device, cache_dir, self.root)
                width, want = conditions.states.shape[-1], getattr(models[role].config, "text_dim", None)
                if want is not None and width != want:
                    raise HarnessError(f"[models.{key[0]}]: text encoder {spec.text_encoder!r} gives {width}-channel "
                                       f"states, {spec.arch} takes {want} (field 'text_encoder_options')")
                self.views[key] = models[role].conditioned(conditions)
            out[role] = self.views[key]
        return out
