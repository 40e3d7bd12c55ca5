"""`harness inspect CHECKPOINT`: what a checkpoint file holds and which registered architecture it is, with a
[models.x] table to paste into a suite. Reads the file as a suite's load would (weights only, nothing executed)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def add_inspect_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `inspect` on the harness CLI; the parsed args carry func=main_inspect."""
    parser = subparsers.add_parser("inspect", help="what a checkpoint holds (format, EMA, step, architecture) and a "
                                                   "[models.x] table for a suite")
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a .pt / .ckpt / .safetensors file or a diffusers "
                                                                 "model folder")
    parser.add_argument("--weights", choices=("ema", "model"),
                        help="which weights of a training checkpoint to describe (default: the EMA where present)")
    parser.set_defaults(func=main_inspect)
    return parser


def main_inspect(args: argparse.Namespace) -> int:
    """Print the report of `args.checkpoint`; a file that cannot be read is a HarnessError (exit 2)."""
    print(inspect_checkpoint(Path(args.checkpoint), args.weights))
    return 0


def inspect_checkpoint(path: Path, weights: str | None = None) -> str:
    """The text report: the file, where its weights were, and the architecture they match (or the nearest)."""
    from harness.models import ARCHS
    from harness.models.checkpoint import strip_prefixes
    from harness.models.ckpt_files import read_checkpoint
    from harness.models.ckpt_match import differences, layout_of, matching, nearest, options_for, preset_layouts

    ckpt = read_checkpoint(path, weights, strict=False)
    state = strip_prefixes(ckpt.state, set())
    count = sum(t.numel() for t in state.values())
    dtypes = ", ".join(sorted({str(t.dtype).removeprefix("torch.") for t in state.values()}))
    rows = [("checkpoint", str(path)), ("format", ckpt.format), ("weights from", ckpt.wrapper),
            ("EMA", {"ema": "yes", "model": "no (the trained weights)", "unlabelled": "unknown (a bare state dict)"}
             [ckpt.weights] + (f"; the file also has: {', '.join(ckpt.others)}" if ckpt.others else "")),
            ("step", "not recorded" if ckpt.step is None else str(ckpt.step)),
            ("tensors", f"{len(state)}, {count:,} numbers ({_human(count)}; {dtypes})")]
    if ckpt.ignored:
        rows.append(("not weights", ", ".join(ckpt.ignored)))
    layout = layout_of(state)
    found = matching(layout)
    names = list(dict.fromkeys(name for name, _, _ in found))
    lines = [f"{k:<13}{v}" for k, v in rows]
    if not names:
        close = nearest(layout) if layout.width else None
        if close is None:
            lines += ["architecture  unknown layout (no patch embedding found)", *_unknown(ckpt.top_keys, state)]
            return "\n".join(lines)
        diffs = differences(layout, preset_layouts()[close], close)
        lines += [f"architecture  none registered matches; nearest {close}: {'; '.join(diffs)}",
                  *_unknown(ckpt.top_keys, state)]
        return "\n".join(lines)
    arch, sparsity, _ = found[0]
    preset, options = ARCHS[arch], options_for(layout, found[0])
    settings = {**preset, **options}
    lists = ", ".join(f"{n} {k}" for k, n in layout.lists)
    facts = [f"family {preset.get('family', 'dit')}", f"patch {layout.patch}", f"depth {lists}",
             f"width {layout.width}", f"in_channels {layout.in_channels}"]
    if settings.get("num_classes") is not None:
        facts.append(f"classes {settings['num_classes']}")
    if "learn_sigma" in settings:
        facts.append(f"learn_sigma {str(settings['learn_sigma']).lower()}")
    if layout.tokens:
        facts.append(f"input_size {math.isqrt(layout.tokens) * layout.patch}")
    lines.append(f"architecture  {' / '.join(names)}: {', '.join(facts)}")
    if len(names) > 1:
        conventions = sorted({ARCHS[n]['convention'] for n in names})
        lines.append(f"{'':13}same tensors in {len(names)} presets: they differ in convention ({', '.join(conventions)})"
                     f", which the file does not record; choose the one the model was trained with")
    table = ["[models.main]", f'arch = "{arch}"' + (f"  # or {', '.join(names[1:])}" if len(names) > 1 else ""),
             f'checkpoint = "{path}"']
    if sparsity != "none":
        table.append(f'sparsity = "{sparsity}"  # the file has the decoder that masking builds')
    if ckpt.weights in ("ema", "model") and (ckpt.others or weights):
        table.append(f'weights = "{ckpt.weights}"')
    table += [f"{k} = {_toml(v)}" for k, v in options.items()]  # the family's config fields, checked by the family
    return "\n".join(lines + ["", *table])


def _unknown(top_keys: tuple[str, ...], state: dict) -> list[str]:
    """Top-level keys and a few tensor names and shapes, for a layout no preset explains."""
    shown = [f"  {k}: {tuple(v.shape)}" for k, v in list(state.items())[:8]]
    return ([f"top-level    {', '.join(top_keys[:12])}"] if top_keys else []) + ["first tensors", *shown]


def _toml(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _human(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)


__all__ = ["add_inspect_parser", "inspect_checkpoint", "main_inspect"]
