"""Real assets (checkpoints, VAEs, ADM batches, Inception weights): listed, located, fetched, and checked per suite.

assets/manifest.toml names every asset with where it comes from (a URL or a Hugging Face hub id), its size and,
where one is published, its sha256. `harness assets` says which are present and where each goes; `--fetch`
downloads the missing ones: resumable (HTTP Range on a `.part` file beside the target), verified against the
sha256 when the manifest has one, and moved into place only when complete.

This module knows the manifest and nothing of the components that read assets: each component says what it needs
as a `Need` (harness.models.vae.vae_need, harness.metrics.features.inception_need, file_need for plain files), and
harness.preflight gathers a suite's needs before it runs and stops with one message (raise_missing).

Locations: an asset's `path` is relative to the assets folder (<root>/assets, or $HARNESS_ASSETS); the Inception
weights go where torch-fidelity looks for them ($TORCH_HOME/hub/checkpoints, or $HARNESS_INCEPTION_WEIGHTS).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import re
import sys
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

ASSET_MANIFEST = Path(__file__).resolve().parents[1] / "assets" / "manifest.toml"
ASSETS_ENV = "HARNESS_ASSETS"
KINDS = ("checkpoint", "vae", "reference", "samples", "inception", "metric", "prompts", "text_encoder")
TORCH_HUB = "{torch_hub}"  # a path starting with this lies in torch.hub's cache folder
CHUNK = 1 << 20
HF_RESOLVE = "https://huggingface.co/{hub}/resolve/{revision}/{file}"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def assets_dir(root: str | Path | None = None) -> Path:
    """The assets folder: $HARNESS_ASSETS if set, else <root>/assets (root defaults to the current directory)."""
    if os.environ.get(ASSETS_ENV):
        return Path(os.environ[ASSETS_ENV]).expanduser()
    return Path(root or Path.cwd()) / "assets"


#################################################################################
#                                  The manifest                                 #
#################################################################################


@dataclass(frozen=True)
class Download:
    """One file to fetch: from `url` to `dest`, checked against `sha256` when known."""

    url: str
    dest: Path
    sha256: str | None = None


@dataclass(frozen=True)
class Asset:
    """One entry of assets/manifest.toml."""

    name: str
    kind: str
    description: str
    path: str
    url: str | None = None
    hub: str | None = None
    revision: str = "main"
    files: tuple[str, ...] = ()
    size: str | None = None
    sha256: str | None = None
    env: str | None = None
    source: str | None = None
    note: str | None = None
    sha256_files: dict[str, str] = field(default_factory=dict)
    verified: str | None = None  # what confirmed the URL / file names against the publisher's list, and where

    @property
    def fetchable(self) -> bool:
        return bool(self.url or self.hub)

    @property
    def verification(self) -> str:
        """`harness assets`' verified column: yes, UNVERIFIED (a fetch may 404), or - (nothing to fetch)."""
        if not self.fetchable:
            return "-"
        return "yes" if self.verified else "UNVERIFIED"

    def location(self, root: str | Path | None = None) -> Path:
        """Where the asset goes: $<env> if set, torch.hub's cache for `{torch_hub}/...`, else the assets folder."""
        if self.env and os.environ.get(self.env):
            return Path(os.environ[self.env]).expanduser()
        if self.path.startswith(TORCH_HUB + "/"):
            import torch

            return Path(torch.hub.get_dir()) / self.path.removeprefix(TORCH_HUB + "/")
        return assets_dir(root) / self.path

    def downloads(self, root: str | Path | None = None) -> list[Download]:
        """The files --fetch writes: one for a URL, one per listed file for a hub id (into its folder)."""
        dest = self.location(root)
        if self.hub:
            return [Download(HF_RESOLVE.format(hub=self.hub, revision=self.revision, file=urllib.parse.quote(f)),
                             dest / f, self.sha256_files.get(f)) for f in self.files]  # quoted: names may hold spaces
        if self.url:
            return [Download(self.url, dest, self.sha256)]
        return []

    def present(self, root: str | Path | None = None) -> bool:
        """Whether every file of the asset is in place (a hub asset also counts when the Hugging Face cache has it)."""
        if self.hub:
            return all(d.dest.is_file() for d in self.downloads(root)) or hub_cached(self.hub, self.files)
        return self.location(root).is_file()

    def partial(self, root: str | Path | None = None) -> int:
        """Bytes already in .part files (an interrupted --fetch resumes from there)."""
        return sum(_part(d.dest).stat().st_size for d in self.downloads(root) if _part(d.dest).is_file())

    def how_to_get(self) -> str:
        """The instruction for a missing asset: the fetch command, or why there is none."""
        if self.fetchable:
            return f"`harness assets --fetch {self.name}`"
        return self.note or "not downloadable: no URL in the manifest"


def hub_cached(hub: str, files: Sequence[str]) -> bool:
    """Whether the Hugging Face cache holds every one of a hub repository's `files` (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    repo_type = "dataset" if hub.startswith("datasets/") else None  # the manifest spells datasets as URLs do
    repo = hub.removeprefix("datasets/")
    return bool(files) and all(isinstance(try_to_load_from_cache(repo, f, repo_type=repo_type), str) for f in files)


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


_FIELDS = {"kind", "description", "path", "url", "hub", "revision", "files", "size", "sha256", "sha256_files", "env",
           "source", "note", "verified"}


def load_manifest(path: str | Path = ASSET_MANIFEST) -> dict[str, Asset]:
    """The assets of a manifest file by name, checked: known kinds and fields, a path, sha256 as 64 hex digits."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"{path}: asset manifest not found")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise HarnessError(f"{path}: TOML syntax error: {err}") from err
    assets = {}
    for name, entry in data.get("assets", {}).items():
        where = f"{path}: [assets.{name}]"
        unknown = sorted(set(entry) - _FIELDS)
        if unknown:
            raise HarnessError(f"{where}: unknown field(s) {', '.join(unknown)}")
        if entry.get("kind") not in KINDS or not entry.get("path") or not entry.get("description"):
            raise HarnessError(f"{where}: needs kind (one of {', '.join(KINDS)}), path and description")
        sums = [entry.get("sha256"), *entry.get("sha256_files", {}).values()]
        if any(s is not None and not _SHA256.match(s) for s in sums):
            raise HarnessError(f"{where}: field 'sha256' must be 64 lowercase hex digits")
        if entry.get("hub") and not entry.get("files"):
            raise HarnessError(f"{where}: a hub asset needs 'files' (the files to fetch into its folder)")
        assets[name] = Asset(name=name, **{**entry, "files": tuple(entry.get("files", ()))})
    return assets


#################################################################################
#                                  Downloading                                  #
#################################################################################


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _total_size(response: Any, offset: int) -> int | None:
    """The full file size a response implies: from Content-Range on a 206, from Content-Length on a 200."""
    content_range = response.headers.get("Content-Range", "")
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", content_range)
    if response.status == 206:
        if match is None or int(match.group(1)) != offset:
            raise HarnessError(f"server answered the range request from byte {offset} with {content_range!r}")
        return int(match.group(2)) if match.group(2) != "*" else None
    length = response.headers.get("Content-Length")
    return int(length) if length is not None else None


def download(url: str, dest: str | Path, sha256: str | None = None, timeout: float = 60.0,
             progress: Callable[[int, int | None], None] | None = None) -> Path:
    """Fetch `url` to `dest` through `dest.part`, resuming a partial .part with an HTTP Range request.

    The .part file becomes `dest` only when the server's whole length arrived and, if `sha256` is given, the
    digest matches; a mismatch deletes the .part and raises. An interrupted transfer keeps the .part and raises
    a HarnessError saying to run the fetch again, which then continues from where it stopped.
    """
    dest = Path(dest)
    part = _part(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "guidance-harness"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    received = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if response.status == 200 and offset:
                offset = 0  # the server ignored the range: start over
            total = _total_size(response, offset)
            with open(part, "ab" if offset else "wb") as f:
                while block := response.read(CHUNK):
                    f.write(block)
                    received += len(block)
                    if progress:
                        progress(offset + received, total)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left after `offset`: the .part holds the whole file, or more
            announced = re.match(r"bytes \*/(\d+)", err.headers.get("Content-Range", "") if err.headers else "")
            total = int(announced.group(1)) if announced else offset
            if offset > total:
                part.unlink()
                raise HarnessError(f"{url}: {part} is longer than the file ({offset} > {total} bytes); deleted it, "
                                   f"fetch again") from err
        else:
            raise HarnessError(f"{url}: HTTP {err.code} {err.reason}") from err
    except (OSError, http.client.HTTPException) as err:
        have = part.stat().st_size if part.is_file() else 0
        raise HarnessError(f"{url}: download interrupted after {have} bytes ({type(err).__name__}: {err}); "
                           f"{part} is kept, fetch again to resume") from err
    have = part.stat().st_size
    if total is not None and have != total:
        raise HarnessError(f"{url}: download interrupted: {have} of {total} bytes in {part}; fetch again to resume")
    if sha256 is not None:
        got = _sha256_of(part)
        if got != sha256:
            part.unlink()
            raise HarnessError(f"{url}: sha256 mismatch for {dest.name} (expected {sha256}, got {got}); "
                               f"the download was deleted")
    os.replace(part, dest)
    return dest


def fetch(asset: Asset, root: str | Path | None = None, log: Callable[[str], None] = print) -> list[Path]:
    """Download every missing file of an asset; files already in place are kept (and not re-verified)."""
    if not asset.fetchable:
        raise HarnessError(f"asset {asset.name!r} cannot be fetched: {asset.note or 'no URL in the manifest'}")
    if asset.verification == "UNVERIFIED":
        log(f"{asset.name}: UNVERIFIED: its URL / file names were not checked against the publisher's file list "
            f"(assets/manifest.toml, note: {asset.note or '-'}); a 404 means the manifest is wrong, not the network")
    written = []
    for item in asset.downloads(root):
        if item.dest.is_file():
            continue
        log(f"{asset.name}: {item.url} -> {item.dest}" + (" (resuming)" if _part(item.dest).is_file() else ""))
        written.append(download(item.url, item.dest, item.sha256, progress=_progress_printer(item.dest.name)))
    if asset.sha256 is None and not asset.sha256_files:
        log(f"{asset.name}: no sha256 is published for it; only its length was checked")
    return written


def _progress_printer(label: str) -> Callable[[int, int | None], None]:
    """A progress callback that prints at most once per 5% (or per 256 MiB when the size is unknown)."""
    last = [-1]

    def show(done: int, total: int | None) -> None:
        step = done * 20 // total if total else done >> 28
        if step != last[0]:
            last[0] = step
            of = f" of {total / 2**20:,.0f} MiB" if total else ""
            print(f"  {label}: {done / 2**20:,.0f} MiB{of}", file=sys.stderr)

    return show


#################################################################################
#                              What a suite needs                               #
#################################################################################


@dataclass(frozen=True)
class Need:
    """One thing a suite needs before it runs: what it is for, where it should be, and the asset providing it."""

    what: str
    location: Path | None
    asset: Asset | None
    hint: str

    def line(self) -> str:
        where = f": {self.location}" if self.location is not None else ""
        return f"  - {self.what}{where} -- {self.hint}"


def _match(path: Path, assets: Iterable[Asset], kinds: Sequence[str], root: Path) -> Asset | None:
    """The manifest asset of a file path: the same location, else the same file name."""
    candidates = [a for a in assets if a.kind in kinds]
    for asset in candidates:
        if asset.location(root).resolve() == path.resolve():
            return asset
    return next((a for a in candidates if Path(a.path).name == path.name), None)


def file_need(what: str, path: Path, assets: dict[str, Asset], kinds: Sequence[str], root: Path) -> Need | None:
    """The Need of one file a component reads (None when it is there), pointing at the asset that provides it."""
    if path.is_file():
        return None
    asset = _match(path, assets.values(), kinds, root)
    if asset is None:
        return Need(what, path, None, "no such file, and no asset of assets/manifest.toml goes there: create it "
                                      "or fix the path in the suite")
    if asset.location(root).resolve() != path.resolve() and asset.fetchable:
        return Need(what, path, asset, f"{asset.how_to_get()} writes {asset.location(root)}; point the suite there")
    return Need(what, path, asset, asset.how_to_get())


def raise_missing(needs: Sequence[Need]) -> None:
    """Stop with one HarnessError listing every missing need and the fetch command for those that have one."""
    if not needs:
        return
    fetchable = [n.asset.name for n in needs if n.asset is not None and n.asset.fetchable]
    lines = [f"{len(needs)} required file(s) or asset(s) missing; nothing was run or written:",
             *(n.line() for n in needs)]
    if fetchable:
        lines.append(f"On a machine with network access: `harness assets --fetch {' '.join(dict.fromkeys(fetchable))}`"
                     f" (`harness assets` lists every asset and where it goes).")
    raise HarnessError("\n".join(lines))


#################################################################################
#                                The subcommand                                 #
#################################################################################


def status_rows(assets: dict[str, Asset], root: str | Path | None = None) -> list[dict[str, str]]:
    """One row per asset for `harness assets`: name, kind, status, verified (URL / file names checked), size,
    location."""
    rows = []
    for asset in assets.values():
        if asset.present(root):
            status = "present"
        elif asset.partial(root):
            status = f"partial ({asset.partial(root) / 2**20:,.0f} MiB; --fetch resumes)"
        else:
            status = "missing" if asset.fetchable else "missing, not public"
        rows.append({"name": asset.name, "kind": asset.kind, "status": status, "verified": asset.verification,
                     "size": asset.size or "?", "location": str(asset.location(root))})
    return rows


def format_rows(rows: list[dict[str, str]]) -> str:
    """An aligned text table of status rows."""
    if not rows:
        return "(no assets in the manifest)"
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def add_assets_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `assets` on the harness CLI; the parsed args carry func=main_assets."""
    parser = subparsers.add_parser("assets", help="list the real assets (present, missing, where each goes); "
                                                  "--fetch downloads them")
    parser.add_argument("names", nargs="*", metavar="NAME", help="assets to show or fetch (default: all)")
    parser.add_argument("--fetch", action="store_true",
                        help="download the missing ones (resumable; sha256-checked where the manifest has one)")
    parser.add_argument("--root", metavar="DIR", help="repository root holding assets/ (default: the current "
                                                      f"directory; ${ASSETS_ENV} overrides the assets folder)")
    parser.add_argument("--manifest", default=str(ASSET_MANIFEST), help="asset manifest (default: assets/manifest.toml)")
    parser.set_defaults(func=main_assets)
    return parser


def main_assets(args: argparse.Namespace) -> int:
    """Run `harness assets`: print the status table; with --fetch, download the missing (or the named) assets."""
    assets = load_manifest(args.manifest)
    unknown = [n for n in args.names if n not in assets]
    if unknown:
        raise HarnessError(f"unknown asset(s) {', '.join(unknown)}; known: {', '.join(assets)}")
    chosen = {n: assets[n] for n in (args.names or assets)}
    if args.fetch:
        for asset in chosen.values():
            if asset.present(args.root):
                continue
            if not asset.fetchable:
                if args.names:
                    raise HarnessError(f"asset {asset.name!r} cannot be fetched: {asset.note}")
                print(f"{asset.name}: skipped, {asset.note}", file=sys.stderr)
                continue
            fetch(asset, args.root, log=lambda text: print(text, file=sys.stderr))
    print(format_rows(status_rows(chosen, args.root)))
    unverified = [a.name for a in chosen.values() if a.verification == "UNVERIFIED"]
    if unverified:
        print(f"UNVERIFIED: the URL or file names of {', '.join(unverified)} were not checked against the publisher's "
              f"file list (see their notes in the manifest); --fetch may fail with 404 for them")
    return 0


__all__ = ["ASSETS_ENV", "Asset", "Download", "ASSET_MANIFEST", "Need", "add_assets_parser", "assets_dir", "download",
           "fetch", "file_need", "hub_cached", "load_manifest", "main_assets", "raise_missing", "status_rows"]
