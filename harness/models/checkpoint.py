"""Load DiT/SiT/TREAD/MaskDiT-layout state dicts safely, and explain a file that does not fit the model."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from torch import nn

from harness.errors import HarnessError

_WRAPPERS = ("ema", "model", "state_dict", "module")
# Key prefixes that training wrappers add: torch.compile, DistributedDataParallel, MaskDiT's EDMPrecond (`model.`).
_PREFIXES = ("_orig_mod.", "module.", "model.")
# Plain classes published checkpoints pickle beside their tensors, allowed in the weights-only unpickler (no code
# runs): MaskDiT's training scripts save their argparse.Namespace under `args`.
SAFE_GLOBALS = [argparse.Namespace]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` or `.pt` file, unwrapped from `ema` / `model` keys (EMA preferred).

    `.pt` files are read with `weights_only=True` (allowing only SAFE_GLOBALS besides tensors): a checkpoint can
    never run code.
    """
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"{path}: checkpoint file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            with torch.serialization.safe_globals(SAFE_GLOBALS):
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt archive, pickle with code, truncated file, ...
        raise HarnessError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from exc
    for key in _WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HarnessError(f"{path}: not a state dict of tensors (top-level keys: {list(state)[:8]})")
    return dict(state)


def strip_prefixes(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """`state` without the wrapper prefixes (_PREFIXES) that every one of its keys carries and the model's lack."""
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in expected):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def describe_state_dict(state: dict[str, torch.Tensor]) -> str:
    """A guess at the architecture a state dict belongs to, from the shapes of a few keys."""
    try:
        hidden, in_ch, patch, _ = state["x_embedder.proj.weight"].shape
    except (KeyError, ValueError):
        return "not a DiT/SiT layout (no 4-d x_embedder.proj.weight)"
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    parts = [f"depth {depth}", f"hidden {hidden}", f"patch {patch}", f"{in_ch} input channels"]
    if "pos_embed" in state:
        side = int(state["pos_embed"].shape[1] ** 0.5) * patch
        parts.append(f"input {side}x{side}")
    maskdit = "decoder_layer.linear.weight" in state
    if "y_embedder.embedding_table.weight" in state:
        table = state["y_embedder.embedding_table.weight"].shape
        parts.append(f"{table[1]} classes, one-hot" if maskdit else f"{table[0] - 1} classes + null")
    if "final_layer.linear.weight" in state:
        out = state["final_layer.linear.weight"].shape[0] // (patch * patch)
        parts.append("learned sigma" if out == 2 * in_ch else "no learned sigma")
    if maskdit:
        parts.append("MaskDiT layout (decoder_layer)")
    elif any(k.startswith("decoder_blocks.") for k in state):
        parts.append("masking decoder")
    from harness.models import ARCHS  # late import: the registry imports this module

    names = [
        name for name, a in ARCHS.items()
        if (a.get("depth"), a.get("hidden_size", a.get("dim")), a.get("patch_size"), a.get("in_channels"))
        == (depth, hidden, patch, in_ch)
        and (a.get("family") == "maskdit") == maskdit
    ]
    guess = f"looks like {' / '.join(names)}" if names else "matches no registered architecture"
    return f"{guess} ({', '.join(parts)})"


def load_checkpoint(model: nn.Module, path: Path) -> None:
    """Load `path` into `model` strictly; on any mismatch raise one error naming every offending key."""
    expected = model.state_dict()
    state = strip_prefixes(read_state_dict(path), set(expected))
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or misshaped:
        lines = [f"{path}: checkpoint does not fit the model; the file {describe_state_dict(state)}"]
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("mis-shaped keys", misshaped)):
            if items:
                shown = ", ".join(items[:6]) + (f", ... ({len(items)} in all)" if len(items) > 6 else "")
                lines.append(f"  {label}: {shown}")
        raise HarnessError("\n".join(lines))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
