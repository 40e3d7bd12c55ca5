"""User-facing errors: the CLI prints them without a traceback and exits with status 2."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


class HarnessError(Exception):
    """A problem with the user's input (a suite, a checkpoint, an asset); the message names the file and field."""


def shorten(value: object, limit: int = 60) -> str:
    """repr(value) for a message, cut after `limit` characters (a 10,000-character prompt is not echoed whole)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - 2} characters)"


def check_inputs(files: Mapping[str, str | os.PathLike | None] | None = None,
                 paths: Mapping[str, str | os.PathLike | None] | None = None) -> None:
    """Stop with one HarnessError naming every input a command was given that does not exist.

    `files` must be files, `paths` files or folders; keys are the argument names the user typed (e.g. SAMPLE_BATCH,
    --inception-weights), None values are skipped. Commands call this first, so that a mistyped path is reported
    before any missing asset (Inception weights, a VAE) is asked for.
    """
    problems = [f"{name} {value}: no such file" for name, value in (files or {}).items()
                if value is not None and not Path(value).is_file()]
    problems += [f"{name} {value}: no such file or folder" for name, value in (paths or {}).items()
                 if value is not None and not Path(value).exists()]
    if problems:
        raise HarnessError("; ".join(problems))
