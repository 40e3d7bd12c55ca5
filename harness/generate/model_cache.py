"""Models and VAE decoders built once per suite model key and shared by a suite's runs (generate and cost)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from harness.generate.conditions import PromptEncodings
from harness.models import FlowModel, ModelSpec, build_model, redraw_zero_init
from harness.numerics import compile_model
from harness.suite import Run


class ModelCache:
    """Models built once per suite model key (and VAE decoders once per name), shared across a suite's runs.

    With `dry_run`, models without a checkpoint get their zero-initialised layers redrawn (redraw_zero_init) and VAEs
    are built with random weights from `vae_config` (default SD-VAE's architecture); nothing is read from disk.
    """

    def __init__(self, device: torch.device, dry_run: bool = False, vae_config: dict[str, Any] | None = None,
                 root: Path | None = None):
        self.device = device
        self.dry_run = dry_run
        self.vae_config = vae_config
        self.root = root
        self.models: dict[tuple[str, bool], FlowModel] = {}
        self.decoders: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        self.prompts = PromptEncodings(device, root)

    def run_models(self, run: Run, cache_dir: Path) -> dict[str, FlowModel]:
        """The models of a run by role, compiled as its `compile` option asks; a prompt run's models are views of the
        shared networks conditioned on its prompt set (harness.generate.conditions)."""
        models = {role: self.model(run.model_keys[role], spec, run.compile) for role, spec in run.models.items()}
        return models if run.prompts is None else self.prompts.condition(run, models, cache_dir)

    def model(self, key: str, spec: ModelSpec, compiled: bool = False) -> FlowModel:
        """The model of [models.<key>] (torch.compile'd when `compiled`); without a checkpoint its random weights are
        seeded from the key, so every process and every --only selection builds the same ones."""
        if (key, compiled) not in self.models:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))
                model = build_model(spec, self.device)
                if self.dry_run and not spec.checkpoint:
                    redraw_zero_init(model)
            if compiled:
                model = compile_model(model)
            self.models[key, compiled] = model
        return self.models[key, compiled]

    def decoder(self, vae: str | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The latent-to-pixel decoder of a VAE name (None for pixel-space models)."""
        if vae is None:
            return None
        if vae not in self.decoders:
            self.decoders[vae] = load_decoder(vae, self.device, self.dry_run, self.vae_config, self.root)
        return self.decoders[vae]


def load_decoder(vae: str, device: torch.device, random_init: bool = False, config: dict[str, Any] | None = None,
                 root: Path | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The decoder of VAE `vae` from harness.models.vae.load_vae (latents -> pixels in [-1, 1])."""
    from harness.models.vae import load_vae

    return load_vae(vae, device, random_init=random_init, config=config, root=root)
