"""ADM reference batches (.npz with arr_0 images and mu, sigma, mu_s, sigma_s): stream-read them and write them."""

from __future__ import annotations

import argparse
import os
import sys
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

import numpy as np

from harness.errors import HarnessError, check_inputs
from harness.metrics.extractor import FeatureExtractor
from harness.metrics.frechet import GaussianStats, gaussian_stats

# npz keys of precomputed statistics, per feature key, as ADM's evaluator names them
STAT_KEYS = {"pool": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _read_into(f: IO[bytes], out: np.ndarray) -> int:
    """Fill out's memory from f (zip streams may return less per call); returns the bytes read."""
    view = memoryview(out).cast("B")
    done = 0
    while done < len(view):
        got = f.readinto(view[done:])
        if not got:
            break
        done += got
    return done


class NpzArrayReader:
    """One array of an .npz file, read in row batches straight from the zip, never loaded whole."""

    def __init__(self, path: str | os.PathLike, key: str = "arr_0") -> None:
        self.path = Path(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (OSError, zipfile.BadZipFile) as error:
            raise HarnessError(f"cannot read {self.path} as an .npz file: {error}") from error
        if f"{key}.npy" not in self._zip.namelist():
            self._zip.close()
            raise HarnessError(f"{self.path} has no array {key!r} (keys: {npz_keys(self.path)})")
        self._file = self._zip.open(f"{key}.npy")
        version = np.lib.format.read_magic(self._file)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        self.shape, fortran_order, self.dtype = read_header(self._file)
        if fortran_order or self.dtype.hasobject or not self.shape:
            self.close()
            raise HarnessError(f"{self.path}: {key!r} must be a C-ordered numeric array with a leading axis")

    def __len__(self) -> int:
        return self.shape[0]

    def batches(self, batch_size: int = 1024) -> Iterator[np.ndarray]:
        """The array in consecutive [<= batch_size, ...] slices; the stream can be read once."""
        for start in range(0, len(self), batch_size):
            batch = np.empty((min(batch_size, len(self) - start), *self.shape[1:]), dtype=self.dtype)
            if _read_into(self._file, batch) != batch.nbytes:
                raise HarnessError(f"{self.path}: array data ends early (truncated file?)")
            yield batch

    def close(self) -> None:
        """Close the zip member and the file."""
        self._file.close()
        self._zip.close()

    def __enter__(self) -> NpzArrayReader:
        return self

    def __exit__(self, kind: type | None, value: BaseException | None, trace: TracebackType | None) -> None:
        self.close()


def npz_keys(path: str | os.PathLike) -> list[str]:
    """The array names stored in an .npz file."""
    with zipfile.ZipFile(path) as archive:
        return [name[: -len(".npy")] for name in archive.namelist() if name.endswith(".npy")]


def iter_npz_images(path: str | os.PathLike, batch_size: int = 1024) -> Iterator[np.ndarray]:
    """uint8 [N, H, W, 3] image batches from an .npz file's arr_0, checked as ADM's evaluator expects."""
    with NpzArrayReader(path, "arr_0") as reader:
        if reader.dtype != np.uint8 or len(reader.shape) != 4 or reader.shape[-1] != 3:
            raise HarnessError(f"{path}: arr_0 must be uint8 [N, H, W, 3], got {reader.dtype} {reader.shape}")
        yield from reader.batches(batch_size)


def npz_image_count(path: str | os.PathLike) -> int:
    """The number of images in an .npz file's arr_0, read from its header."""
    with NpzArrayReader(path, "arr_0") as reader:
        return len(reader)


def read_reference_stats(path: str | os.PathLike) -> dict[str, GaussianStats]:
    """Precomputed statistics in a reference batch, by feature key ("pool" from mu/sigma, "spatial" from mu_s/
    sigma_s); empty when the file has none, in which case ADM computes them from arr_0."""
    keys = set(npz_keys(path))
    stats = {}
    with np.load(path, allow_pickle=False) as data:
        for feature, (mu, sigma) in STAT_KEYS.items():
            if mu in keys and sigma in keys:
                try:
                    stats[feature] = GaussianStats(data[mu].astype(np.float64), data[sigma].astype(np.float64))
                except (ValueError, TypeError) as err:
                    raise HarnessError(f"{path}: {mu} / {sigma} are not Gaussian statistics ({err})") from err
    return stats


class _NpzWriter:
    """Writes an .npz file member by member (large arrays streamed), then moves it into place atomically."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.temp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._zip = zipfile.ZipFile(self.temp, "w", compression=zipfile.ZIP_STORED, allowZip64=True)

    def add(self, key: str, array: np.ndarray) -> None:
        """Store one in-memory array as key.npy."""
        with self._zip.open(f"{key}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.asarray(array), allow_pickle=False)

    def stream(self, key: str, shape: tuple[int, ...], dtype: np.dtype) -> _StreamedMember:
        """Open key.npy of the given shape for writing row chunks one at a time."""
        return _StreamedMember(self, key, tuple(shape), np.dtype(dtype))

    def commit(self) -> Path:
        """Close the archive and replace the destination with it."""
        self._zip.close()
        os.replace(self.temp, self.path)
        return self.path

    def abort(self) -> None:
        """Close and delete the partial archive."""
        self._zip.close()
        self.temp.unlink(missing_ok=True)


class _StreamedMember:
    """An .npy member being written chunk by chunk; checks chunk shapes and the final row count."""

    def __init__(self, writer: _NpzWriter, key: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.writer, self.key, self.shape, self.dtype, self.rows = writer, key, shape, dtype, 0
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
        self._file = writer._zip.open(f"{key}.npy", "w", force_zip64=True)
        np.lib.format.write_array_header_1_0(self._file, header)

    def write(self, chunk: np.ndarray) -> np.ndarray:
        """Append chunk's rows and return the chunk (so writing can sit inside a generator)."""
        if chunk.shape[1:] != self.shape[1:] or chunk.dtype != self.dtype:
            raise HarnessError(f"{self.writer.path}: {chunk.dtype} {chunk.shape} does not fit {self.key} {self.shape}")
        self._file.write(np.ascontiguousarray(chunk).tobytes())
        self.rows += len(chunk)
        return chunk

    def __enter__(self) -> _StreamedMember:
        return self

    def __exit__(self, kind: type | None, value: BaseException | None, trace: TracebackType | None) -> None:
        self._file.close()
        if kind is None and self.rows != self.shape[0]:
            raise HarnessError(f"{self.writer.path}: wrote {self.rows} rows of {self.key}, expected {self.shape[0]}")


def write_reference_batch(
    out: str | os.PathLike,
    images: np.ndarray | Iterable[np.ndarray],
    shape: tuple[int, int, int, int] | None = None,
    stats: dict[str, GaussianStats] | None = None,
) -> Path:
    """Write an ADM-format reference batch: arr_0 = uint8 NHWC images (an array, or chunks with their total shape),
    plus mu/sigma and mu_s/sigma_s for the "pool"/"spatial" entries of stats."""
    if isinstance(images, np.ndarray):
        shape, images = images.shape, [images]
    if shape is None:
        raise ValueError("shape is required when images are given as chunks")
    writer = _NpzWriter(out)
    try:
        with writer.stream("arr_0", tuple(shape), np.uint8) as member:
            for chunk in images:
                member.write(chunk)
        _add_stats(writer, stats or {})
    except BaseException:
        writer.abort()
        raise
    return writer.commit()


def _add_stats(writer: _NpzWriter, stats: dict[str, GaussianStats]) -> None:
    """Store statistics under ADM's key names."""
    for feature, stat in stats.items():
        mu_key, sigma_key = STAT_KEYS[feature]
        writer.add(mu_key, stat.mu)
        writer.add(sigma_key, stat.sigma)


def _folder_images(folder: Path) -> tuple[list[Path], tuple[int, int, int]]:
    """Sorted image files in folder and their common [H, W, 3] shape."""
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise HarnessError(f"{folder} contains no images ({', '.join(IMAGE_SUFFIXES)})")
    with Image.open(files[0]) as first:
        width, height = first.size
    return files, (height, width, 3)


def _iter_folder(files: list[Path], shape: tuple[int, int, int], chunk: int) -> Iterator[np.ndarray]:
    """RGB uint8 chunks of the image files, each checked against the common shape."""
    from PIL import Image

    for start in range(0, len(files), chunk):
        batch = []
        for file in files[start : start + chunk]:
            with Image.open(file) as image:
                array = np.asarray(image.convert("RGB"))
            if array.shape != shape:
                raise HarnessError(f"{file}: image is {array.shape}, expected {shape} like {files[0].name}")
            batch.append(array)
        yield np.stack(batch)


def open_image_source(
    source: str | os.PathLike | np.ndarray, limit: int | None = None, chunk: int = 256
) -> tuple[tuple[int, int, int, int], Iterator[np.ndarray]]:
    """Total shape and uint8 NHWC chunks of an image folder, an .npz (arr_0) or an array, first `limit` only."""
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim != 4 or source.shape[-1] != 3:
            raise HarnessError(f"reference images must be uint8 [N, H, W, 3], got {source.dtype} {source.shape}")
        count = len(source) if limit is None else min(limit, len(source))
        return (count, *source.shape[1:]), (source[i : i + chunk] for i in range(0, count, chunk))
    path = Path(source)
    if path.is_dir():
        files, image_shape = _folder_images(path)
        files = files[:limit]
        return (len(files), *image_shape), _iter_folder(files, image_shape, chunk)
    if path.is_file():
        with NpzArrayReader(path, "arr_0") as reader:
            total = reader.shape
        count = total[0] if limit is None else min(limit, total[0])
        return (count, *total[1:]), _take(iter_npz_images(path, chunk), count)
    raise HarnessError(f"reference source {path} is neither an image folder nor an .npz file")


def _take(chunks: Iterable[np.ndarray], count: int) -> Iterator[np.ndarray]:
    """The first count rows of a stream of chunks."""
    for chunk in chunks:
        if count <= 0:
            return
        yield chunk[:count]
        count -= len(chunk)


def build_reference_batch(
    source: str | os.PathLike | np.ndarray,
    out: str | os.PathLike,
    extractor: FeatureExtractor | None,
    limit: int | None = None,
    keep: int | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> Path:
    """Write an ADM reference batch from the first `limit` source images in one pass: the first `keep` of them in
    arr_0 (ADM keeps 10k) and, when an extractor is given, mu/sigma (and mu_s/sigma_s if it provides spatial
    features) over all of them, like ADM's statistics over the whole dataset."""
    shape, chunks = open_image_source(source, limit)
    stored = (shape[0] if keep is None else min(keep, shape[0]), *shape[1:])
    writer = _NpzWriter(out)
    try:
        with writer.stream("arr_0", stored, np.uint8) as member:

            def written() -> Iterator[np.ndarray]:
                for chunk in chunks:
                    member.write(chunk[: stored[0] - member.rows])
                    yield chunk

            if extractor is None:
                features = {}
                for _ in _take(written(), stored[0]):
                    pass
            else:
                features = extractor.extract(written(), shape[0], batch_size, "reference", progress)
        _add_stats(writer, {key: gaussian_stats(features[key]) for key in STAT_KEYS if key in features})
    except BaseException:
        writer.abort()
        raise
    return writer.commit()


def main_reference(argv: list[str] | None = None) -> int:
    """Stand-alone `harness reference SOURCE OUT.npz`; a HarnessError becomes exit status 2."""
    parser = configure_reference_parser(argparse.ArgumentParser(prog="harness reference", description=__doc__))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def configure_reference_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `harness reference`."""
    parser.add_argument("source", help="folder of images (sorted by name) or .npz whose arr_0 holds uint8 NHWC")
    parser.add_argument("out", help="reference batch to write (.npz: arr_0, mu, sigma, mu_s, sigma_s)")
    parser.add_argument("--limit", type=int, default=None, help="read only the first N source images")
    parser.add_argument("--keep", type=int, default=None, help="store only the first N in arr_0 (ADM: 10000); "
                        "statistics still cover every image read")
    parser.add_argument("--no-stats", action="store_true", help="write arr_0 only (no Inception needed)")
    from harness.metrics.features import add_inception_arguments

    add_inception_arguments(parser)
    parser.set_defaults(func=run_reference)
    return parser


def add_reference_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `reference` on a CLI's subparsers; the parsed args' func(args) runs it and returns 0."""
    parser = subparsers.add_parser("reference", help="write an ADM-format reference batch from images")
    return configure_reference_parser(parser)


def run_reference(args: argparse.Namespace) -> int:
    """Run `harness reference` from parsed arguments."""
    import torch

    from harness.metrics.features import InceptionExtractor

    check_inputs({"--inception-weights": None if args.no_stats else args.inception_weights},
                 {"SOURCE": args.source, "the folder of OUT": Path(args.out).parent})
    extractor = None
    if not args.no_stats:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        extractor = InceptionExtractor(device=device, weights_path=args.inception_weights)
    out = build_reference_batch(args.source, args.out, extractor, args.limit, args.keep, args.batch_size)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main_reference())
