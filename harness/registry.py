"""Registries are plain dicts, name -> entry, one per kind of plug-in (methods, model families, metrics, text
encoders, detectors, prompt sets, ...). An entry may be a "module:attribute" string, imported on first use: heavy or
optional code (diffusers, open-clip) and the embedded testbeds' plug-ins load only when a suite names them, and the
core never imports a plug-in module (imports run one way)."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable, Mapping
from typing import Any

from harness.errors import HarnessError


def load(entry: Any) -> Any:
    """The object an entry stands for: a "module:attribute" string is imported, anything else is itself."""
    if isinstance(entry, str) and ":" in entry:
        module, _, attribute = entry.partition(":")
        return getattr(importlib.import_module(module), attribute)
    return entry


def unknown(kind: str, name: str, known: Iterable[str]) -> HarnessError:
    """A HarnessError for an unknown name, suggesting the closest known names (or listing them all)."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known)}"
    return HarnessError(f"unknown {kind} {name!r}{hint}")


def lookup(table: Mapping[str, Any], name: str, kind: str) -> Any:
    """The loaded entry `name` of a registry; HarnessError naming the kind and the closest names when absent."""
    if name not in table:
        raise unknown(kind, name, table)
    return load(table[name])
