"""Load a checkpoint into a network strictly, and explain in a line a file that does not fit it.

Reading the file (formats, wrappers, EMA or not, refusals) is harness.models.ckpt_files; telling architectures apart
is harness.models.ckpt_match.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from harness.errors import HarnessError
from harness.models.ckpt_files import SAFE_GLOBALS, Checkpoint, read_checkpoint
from harness.models.ckpt_match import differences, layout_of, matching, nearest

# Key prefixes that training wrappers add: torch.compile, DistributedDataParallel, an EDMPrecond-style `model.`.
_PREFIXES = ("_orig_mod.", "module.", "model.")
# Tensors a training checkpoint holds beside the network that sampling never uses: REPA's projector heads (the MLPs
# that align hidden states with DINOv2 features; sihyun-yu/REPA models/sit.py `self.projectors`).
KNOWN_EXTRAS = {r"projectors\.": "REPA projector head"}


def read_state_dict(path: Path, weights: str | None = None) -> dict[str, torch.Tensor]:
    """The network tensors of a checkpoint (EMA preferred; see ckpt_files for the layouts understood)."""
    return read_checkpoint(path, weights).state


def strip_prefixes(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """`state` without the wrapper prefixes (_PREFIXES, in any order) that every key carries and the model's lack."""
    changed = True
    while changed and state:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in expected):
                state = {k.removeprefix(prefix): v for k, v in state.items()}
                changed = True
    return state


def describe_state_dict(state: dict[str, torch.Tensor], besides: str | None = None) -> str:
    """The registered architectures a state dict matches, or the nearest one (other than `besides`)."""
    layout = layout_of(state)
    names = list(dict.fromkeys(name + "".join(f" ({k} {v})" for k, v in extra)
                               + (f' (sparsity "{sparsity}")' if sparsity != "none" else "")
                               for name, sparsity, extra in matching(layout)))
    if names:
        return f"{' / '.join(names)} match{'es' if len(names) == 1 else ''}"
    close = nearest(layout)
    if close is None or close == besides:
        return "no registered architecture matches it"
    from harness.models.ckpt_match import preset_layouts

    diffs = differences(layout, preset_layouts()[close], close)
    return f"no registered architecture matches; nearest {close} ({'; '.join(diffs[:3])})"


def load_checkpoint(model: nn.Module, path: Path, weights: str | None = None, arch: str | None = None) -> Checkpoint:
    """Load `path` into `model` strictly; a mismatch raises one error saying what differs (`arch` names the model).

    Tensors the network does not use are ignored only when KNOWN_EXTRAS lists them; they are returned in
    `Checkpoint.ignored` for the caller to name.
    """
    ckpt = read_checkpoint(path, weights)
    expected = model.state_dict()
    state = strip_prefixes(ckpt.state, set(expected))
    extras = {label: [k for k in state if k not in expected and re.match(pattern, k)]
              for pattern, label in KNOWN_EXTRAS.items()}
    state = {k: v for k, v in state.items() if not any(k in keys for keys in extras.values())}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                 for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    if missing or unexpected or misshaped:
        raise HarnessError(_mismatch(path, state, expected, arch or type(model).__name__, missing, unexpected,
                                     misshaped))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    ckpt.ignored += tuple(f"{label} ({len(keys)} tensors)" for label, keys in extras.items() if keys)
    return ckpt


def _mismatch(path: Path, state: dict, expected: dict, name: str, missing: list[str], unexpected: list[str],
              misshaped: list[str]) -> str:
    """The error for a file that does not fit: what differs in a line, the keys only when the layouts agree."""
    file_layout, model_layout = layout_of(state), layout_of(expected)
    if file_layout.structure[1:] != model_layout.structure[1:]:  # depth, width, patch or channels differ
        diffs = differences(file_layout, model_layout, name)
        return f"{path}: does not fit {name}: {'; '.join(diffs)}; {describe_state_dict(state, name)}"
    known = ", ".join(KNOWN_EXTRAS.values())
    lines = [f"{path}: does not fit {name}: same blocks and sizes, but these tensors differ (of the tensors a network "
             f"does not use only known extras are ignored: {known})"]
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", misshaped)):
        if items:
            shown = ", ".join(items[:6]) + (f", ... ({len(items)} in all)" if len(items) > 6 else "")
            lines.append(f"  {label}: {shown}")
    return "\n".join(lines)


__all__ = ["KNOWN_EXTRAS", "SAFE_GLOBALS", "describe_state_dict", "load_checkpoint", "read_state_dict",
           "strip_prefixes"]
