"""Static sample grids for papers: runs as columns labelled with method, gammas and omega, images at native size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from harness.report.formatting import fmt_context
from harness.report.html_data import read_images

RUNS_PER_GRID = 8
ROWS = 8
LABEL_WIDTH = 130  # pixels a column needs for its label
LINE = 12


def column_label(row: pd.Series) -> list[str]:
    """A column's header lines: run id, method, gammas, omega (ASCII: PIL's built-in font has no Greek)."""
    return [str(row["run"]), str(row["method"]), f"g_strong {fmt_context(row['gamma_strong'])}",
            f"g_weak {fmt_context(row['gamma_weak'])}", f"omega {fmt_context(row['omega'])}"]


def labelled_grid(columns: list[tuple[list[str], np.ndarray | None]]) -> Image.Image:
    """One PNG-ready image: a header of labels above each run's first images, pixels unscaled."""
    shapes = [images.shape[1:3] for _, images in columns if images is not None]
    h, w = max((s[0] for s in shapes), default=32), max((s[1] for s in shapes), default=32)
    col_w, head = max(w, LABEL_WIDTH) + 6, 5 * LINE + 6
    canvas = Image.new("RGB", (col_w * len(columns), head + ROWS * (h + 2)), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for c, (label, images) in enumerate(columns):
        for i, line in enumerate(label):
            draw.text((c * col_w + 3, 2 + i * LINE), line[:26], fill="black", font=font)
        if images is None:
            draw.text((c * col_w + 3, head + 4), "no samples", fill="red", font=font)
            continue
        for r, image in enumerate(images[:ROWS]):
            tile = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).convert("RGB")
            canvas.paste(tile, (c * col_w + (col_w - w) // 2, head + r * (h + 2)))
    return canvas


def write_labelled_grids(df: pd.DataFrame, run_dirs: dict[str, Path], out_dir: Path) -> list[Path]:
    """samples/labelled-<k>.png: RUNS_PER_GRID runs per grid in results order, the same image indices in each row."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    rows = [row for _, row in df.iterrows() if str(row["run"]) in run_dirs]
    for k in range(0, len(rows), RUNS_PER_GRID):
        columns = [(column_label(row), read_images(run_dirs[str(row["run"])], ROWS)[0])
                   for row in rows[k:k + RUNS_PER_GRID]]
        path = out_dir / f"labelled-{k // RUNS_PER_GRID + 1}.png"
        labelled_grid(columns).save(path, optimize=False)
        paths.append(path)
    return paths
