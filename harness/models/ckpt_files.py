"""Read a checkpoint as training code saved it, without running code from it, and find the network's tensors in it.

The format is chosen by the bytes, not the name: safetensors, PyTorch (zip or legacy), or a diffusers folder
(`config.json` + `diffusion_pytorch_model.safetensors`). PyTorch files are read with `torch.load(weights_only=True)`,
which builds tensors and plain containers only; the one class a published file needs beside them (MaskDiT's and
REPA's `args`, an argparse.Namespace) is allowed explicitly, and any other class is refused by name.

Where the network's tensors are, by what the file holds:
| saved by | layout | weights |
| --- | --- | --- |
| CompVis/tread `train.py` | `{model_state_dict, ema_state_dict, optimizer_state_dict, step}` | ema_state_dict |
| REPA / MaskDiT / fast-DiT `train.py` | `{model, ema, opt, args[, steps]}` | ema |
| sail-sg/MDT `TrainLoop.save`, DiT's released files | the state dict itself | unlabelled |
| Lightning `Trainer.save_checkpoint` (`dump_checkpoint`, read at 0301490) | `{state_dict: {model.…[, ema.…]}, loops, callbacks, optimizer_states, global_step, …}` | ema.… |
| Lightning `WeightAveraging` callback | `state_dict` (the average) + `current_model_state` (the live weights) | state_dict |
| timm `ModelEmaV2` scripts | `{state_dict, state_dict_ema}` | state_dict_ema |
EMA weights are taken when the file has them, unless `weights = "model"` asks for the trained ones.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.errors import HarnessError

# Plain classes published checkpoints pickle beside their tensors, allowed in the weights-only unpickler (no code
# runs): MaskDiT's and REPA's training scripts save their argparse.Namespace under `args`.
SAFE_GLOBALS = [argparse.Namespace]
# Wrapper keys holding a network's weights, by kind, in the order they are preferred.
EMA_KEYS = ("ema_state_dict", "ema", "state_dict_ema", "ema_model", "model_ema")
MODEL_KEYS = ("model_state_dict", "model", "state_dict", "module", "net")
STEP_KEYS = ("step", "steps", "global_step", "train_steps")
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"


@dataclass
class Checkpoint:
    """A checkpoint's network tensors and what was found around them (for loading, the manifest and inspect)."""

    path: Path
    format: str  # "safetensors" | "pytorch" | "pytorch (legacy)" | "diffusers folder"
    wrapper: str  # where the tensors were, e.g. "ema_state_dict" or "the file is the state dict"
    weights: str  # "ema" | "model" | "unlabelled" (a bare state dict does not say which)
    state: dict[str, torch.Tensor]
    step: int | None = None
    others: tuple[str, ...] = ()  # the other weight sets in the file ("model" when the EMA was taken)
    ignored: tuple[str, ...] = ()  # top-level entries and sibling modules that are not this network
    top_keys: tuple[str, ...] = ()
    config: dict[str, Any] | None = None  # a diffusers folder's config.json

    def summary(self) -> dict[str, Any]:
        """What a run's manifest records about the file it loaded."""
        return {"format": self.format, "wrapper": self.wrapper, "weights": self.weights, "step": self.step}


def read_checkpoint(path: Path | str, weights: str | None = None, strict: bool = True) -> Checkpoint:
    """The network tensors of a checkpoint file or diffusers folder; `weights` "ema" / "model" picks a set (default:
    the EMA where the file has one). Every refusal is a HarnessError in one sentence naming the file; with
    `strict=False` a dict with no known wrapper gives all its nested tensors instead (for `harness inspect`)."""
    path = Path(path)
    if path.is_dir():
        return _read_diffusers(path)
    if not path.is_file():
        raise HarnessError(f"{path}: checkpoint file not found")
    obj, fmt = _load_object(path)
    top = tuple(map(str, obj)) if isinstance(obj, dict) and not _is_state_dict(obj) else ()
    if _is_state_dict(obj) and obj:
        state, wrapper, kind, others, ignored = _split_modules(path, dict(obj), "the file is the state dict", weights)
    elif isinstance(obj, dict) and not strict and not _has_wrapper(obj):
        state, wrapper, kind, others, ignored = _nested_tensors(obj), "no known wrapper", "unlabelled", (), ()
    elif isinstance(obj, dict):
        state, wrapper, kind, others, ignored = _unwrap(path, obj, weights)
    else:
        raise HarnessError(f"{path}: holds a {type(obj).__name__}, not a state dict or a checkpoint dict of state "
                           f"dicts; save `model.state_dict()` instead")
    return Checkpoint(path, fmt, wrapper, kind, state, step=_step(obj), others=others, ignored=ignored, top_keys=top)


def _load_object(path: Path) -> tuple[Any, str]:
    """The deserialised file and its format name, refusing anything that is not plainly tensors and containers."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(16)
    if size == 0:
        raise HarnessError(f"{path}: is empty (0 bytes), not a checkpoint; the copy or download did not finish")
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            raise HarnessError(f"{path}: is a truncated or damaged PyTorch file ({size} bytes, its zip index is "
                               f"missing); copy or download it again") from None
        if not any(n.endswith("data.pkl") for n in names):
            raise HarnessError(f"{path}: is a zip archive but not a PyTorch file (no data.pkl; it holds "
                               f"{', '.join(names[:5])})")
        return _torch_load(path, mmap=True), "pytorch"
    if head[:3] == b"\x80\x02\x8a":  # torch's legacy format opens with a pickled magic number
        return _torch_load(path, mmap=False), "pytorch (legacy)"
    if head[:1] == b"\x80":
        raise HarnessError(f"{path}: is a plain Python pickle, not a PyTorch or safetensors file; the harness does not "
                           f"unpickle it (that can run any code); save the state dict with torch.save or safetensors")
    header_len = int.from_bytes(head[:8], "little")
    if head[8:9] == b"{" and 0 < header_len:
        return _read_safetensors(path, header_len, size), "safetensors"
    raise HarnessError(f"{path}: is not a PyTorch or safetensors file ({_what_it_starts_with(head)}); a checkpoint "
                       f"is written by torch.save or safetensors")


def _what_it_starts_with(head: bytes) -> str:
    """A few words on unknown leading bytes: text, or their hex."""
    try:
        text = head.decode("utf-8")
        if text.isprintable() or text.strip().isprintable():
            return f"it is text, starting {text[:12]!r}"
    except UnicodeDecodeError:
        pass
    return f"it starts with bytes {head[:8].hex(' ')}"


def _torch_load(path: Path, mmap: bool) -> Any:
    """torch.load with weights_only=True and SAFE_GLOBALS; a class the file needs is named in the refusal."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        needed = re.findall(r"GLOBAL ([\w.]+)", str(exc))
        if mmap:  # a zip file: list every global its pickle names (a scan of the opcodes; nothing runs)
            allowed = {f"{c.__module__}.{c.__qualname__}" for c in SAFE_GLOBALS}
            needed = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in allowed]
        if needed:
            raise HarnessError(
                f"{path}: needs pickled code ({', '.join(dict.fromkeys(needed))}) to load, which the harness "
                f"refuses (unpickling a class can run any code from the file); in the training environment save the "
                f"weights alone (torch.save(ckpt['ema'], 'weights.pt'), or as safetensors) and use that file"
            ) from None
        raise HarnessError(f"{path}: is a damaged PyTorch file (its pickle cannot be read: {exc}); copy or download "
                           f"it again") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise HarnessError(f"{path}: is a truncated or damaged PyTorch file ({str(exc).splitlines()[0][:120]}); copy "
                           f"or download it again") from None


def _read_safetensors(path: Path, header_len: int, size: int) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, after checking that the file holds every byte its header lists."""
    from safetensors.torch import load_file

    if 8 + header_len > size:
        raise HarnessError(f"{path}: is a truncated safetensors file (its header alone needs {header_len} bytes, the "
                           f"file has {size}); copy or download it again")
    with path.open("rb") as f:
        f.seek(8)
        try:
            header = json.loads(f.read(header_len))
        except ValueError:
            raise HarnessError(f"{path}: is not a safetensors file (its header is not JSON)") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        raise HarnessError(f"{path}: is a truncated safetensors file ({size} bytes of {8 + header_len + end}); copy "
                           f"or download it again")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError for a damaged header
        raise HarnessError(f"{path}: is a damaged safetensors file ({exc})") from None


def _read_diffusers(folder: Path) -> Checkpoint:
    """A diffusers model folder: config.json and diffusion_pytorch_model.safetensors (one file, or shards)."""
    config_file = folder / "config.json"
    single = folder / DIFFUSERS_WEIGHTS
    index = folder / f"{DIFFUSERS_WEIGHTS}.index.json"
    if not config_file.is_file() or not (single.is_file() or index.is_file()):
        found = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
        raise HarnessError(f"{folder}: is a folder but not a diffusers model (needs config.json and "
                           f"{DIFFUSERS_WEIGHTS}; it holds {found})")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as exc:
        raise HarnessError(f"{config_file}: is not valid JSON ({exc})") from None
    files = [single] if single.is_file() else sorted({folder / f for f in json.loads(index.read_text())["weight_map"]
                                                       .values()})
    state: dict[str, torch.Tensor] = {}
    for file in files:
        obj, _ = _load_object(file)
        state.update(obj)
    return Checkpoint(folder, "diffusers folder", f"{', '.join(f.name for f in files)} ({config.get('_class_name')})",
                      "unlabelled", state, top_keys=tuple(p.name for p in sorted(folder.iterdir())), config=config)


def _is_state_dict(obj: Any) -> bool:
    """Whether `obj` is a mapping of names to tensors."""
    return isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _has_wrapper(obj: dict) -> bool:
    """Whether a checkpoint dict has a weights entry under a known key."""
    return any(isinstance(obj.get(k), dict) for k in (*EMA_KEYS, *MODEL_KEYS, "current_model_state"))


def _nested_tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in nested dicts and lists, named by its path ("encoder.layers.0.w")."""
    if isinstance(obj, torch.Tensor):
        return {prefix.rstrip("."): obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return {k: v for key, value in items for k, v in _nested_tensors(value, f"{prefix}{key}.").items()}


def _unwrap(path: Path, obj: dict, weights: str | None):
    """(state, wrapper, weights kind, other sets, ignored entries) of a training checkpoint dict."""
    if "current_model_state" in obj and _is_state_dict(obj.get("state_dict")):  # Lightning's WeightAveraging
        sets = {"ema": ("state_dict", obj["state_dict"]), "model": ("current_model_state", obj["current_model_state"])}
    else:
        sets = {}
        for kind, keys in (("ema", EMA_KEYS), ("model", MODEL_KEYS)):
            for key in keys:
                if key in obj and isinstance(obj[key], dict) and kind not in sets:
                    inner = obj[key]
                    while not _is_state_dict(inner) and len(inner) == 1 and isinstance(next(iter(inner.values())),
                                                                                        dict):
                        inner = next(iter(inner.values()))  # e.g. {"ema": {"state_dict": {...}}}
                    if _is_state_dict(inner) and inner:
                        sets[kind] = (key, inner)
    if not sets:
        shown = ", ".join(f"{k} ({type(v).__name__})" for k, v in list(obj.items())[:10])
        raise HarnessError(f"{path}: holds no state dict of tensors under any known key ({', '.join(MODEL_KEYS + EMA_KEYS)}"
                           f"); its top-level entries: {shown}")
    used = {key for key, _ in sets.values()}
    extra = sorted(str(k) for k in obj if k not in used)
    if len(sets) == 1:  # one set: maybe a Lightning state dict holding the network and its EMA as sibling modules
        (kind, (key, state)), = sets.items()
        state, wrapper, found, others, siblings = _split_modules(path, dict(state), key, weights, default=kind)
        if found != "unlabelled" and not others:
            _choose(path, {found: None}, weights)  # the one set the file has must be the one asked for
        return state, wrapper, found, others, tuple(extra) + siblings
    kind = _choose(path, sets, weights)
    key, state = sets[kind]
    return dict(state), key, kind, tuple(k for k in sets if k != kind), tuple(extra)


def _choose(path: Path, sets: dict, weights: str | None) -> str:
    """The weight set to load: `weights` when given (it must be in the file), else the EMA where there is one."""
    if weights is None:
        return "ema" if "ema" in sets else "model"
    if weights not in sets:
        raise HarnessError(f"{path}: has no {weights} weights (it holds {', '.join(sets)}); set weights = "
                           f"\"{next(iter(sets))}\" in the model table")
    return weights


def _split_modules(path: Path, state: dict[str, torch.Tensor], wrapper: str, weights: str | None,
                   default: str = "unlabelled"):
    """A state dict whose first name component holds sibling modules (a LightningModule's `model.` and `ema.`):
    the network's tensors, the set chosen, and the siblings left out. Other state dicts come back unchanged."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        groups.setdefault(head, {})[rest] = value
    if len(groups) < 2 or any(not k or "." not in k for k in state):
        return state, wrapper, default, (), ()
    ema = [g for g in groups if "ema" in g.lower()]
    pairs = [(m, e) for e in ema for m in groups if m != e and set(groups[m]) == set(groups[e])]
    if not pairs:
        return state, wrapper, default, (), ()
    model, ema_name = pairs[0]
    sets = {"ema": (f"{wrapper}: {ema_name}.*", groups[ema_name]), "model": (f"{wrapper}: {model}.*", groups[model])}
    kind = _choose(path, sets, weights)
    siblings = tuple(f"{g}.* ({len(groups[g])} tensors)" for g in groups if g not in (model, ema_name))
    return sets[kind][1], sets[kind][0], kind, tuple(k for k in sets if k != kind), siblings


def _step(obj: Any) -> int | None:
    """The training step a checkpoint dict records, if any."""
    if not isinstance(obj, dict) or _is_state_dict(obj):
        return None
    for key in STEP_KEYS:
        value = obj.get(key)
        if isinstance(value, int) or (isinstance(value, torch.Tensor) and value.numel() == 1):
            return int(value)
    return None


__all__ = ["EMA_KEYS", "MODEL_KEYS", "SAFE_GLOBALS", "Checkpoint", "read_checkpoint"]
