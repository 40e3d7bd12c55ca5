"""File helpers every stage shares: atomic writes (a reader sees no file or the whole file) and sha256 digests."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

_DIGESTS: dict[tuple[str, int, int], str] = {}


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Write through a hidden temporary file in the same folder, fsync it, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | os.PathLike, obj: Any, sort_keys: bool = False) -> Path:
    """A JSON file (indented, newline-terminated), atomically."""
    return atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n").encode()))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """A UTF-8 text file, atomically."""
    return atomic_write(path, lambda f: f.write(text.encode()))


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so that a process hashes each large file once."""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def text_sha256(text: str) -> str:
    """sha256 of a string's UTF-8 bytes."""
    return hashlib.sha256(text.encode()).hexdigest()
