"""The HPSv3 benchmark's prompt set: 12 category files from the hub dataset MizzenAI/HPDv3 (folder `benchmark/`).

The files are an asset (`hpsv3-benchmark` in assets/manifest.toml, fetched by `harness assets --fetch
hpsv3-benchmark`). Each `benchmark_<Category>.json` is read as HPSv3's generator reads it: a JSON list whose items
carry the prompt under "caption" (a bare string or a "prompt" key is accepted too). Prompts keep their category in
their metadata; the benchmark generates one image per prompt and reports per-category means and their macro mean.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.errors import HarnessError
from harness.prompts.sets import PromptSet

ASSET = "hpsv3-benchmark"
# The README's order; the file of a category is benchmark_<name>.json, spaces kept ("benchmark_Natural Scenery.json",
# as Lakonik/LakonLab's configs read it from the hub).
CATEGORIES = ("Characters", "Arts", "Design", "Architecture", "Animals", "Natural Scenery", "Transportation",
              "Products", "Others", "Plants", "Food", "Science")
IMAGES_PER_PROMPT = 1


def category_file(category: str) -> str:
    return f"benchmark/benchmark_{category}.json"


def benchmark_folder(root: str | Path | None = None) -> Path:
    """Where the asset's files go (the assets folder, or $HARNESS_ASSETS)."""
    from harness.assets import load_manifest

    return load_manifest()[ASSET].location(root)


def missing_message(folder: Path) -> str:
    """The one message for absent prompt files: what, where, how to fetch."""
    return (f"the HPSv3 benchmark prompts ({len(CATEGORIES)} files {category_file('<Category>')}) are missing "
            f"under {folder} -- `harness assets --fetch {ASSET}` (hub dataset MizzenAI/HPDv3), or copy them there")


def _prompt(item: object, path: Path, position: int) -> str:
    text = item if isinstance(item, str) else item.get("caption", item.get("prompt")) if isinstance(item, dict) \
        else None
    if not isinstance(text, str) or not text.strip():
        raise HarnessError(f"{path}: item {position}: expected a string or an object with a \"caption\" string")
    return text


def hpsv3_prompts(root: str | Path | None = None, folder: str | Path | None = None) -> PromptSet:
    """All categories in CATEGORIES order, prompts in file order; HarnessError naming the asset when absent."""
    folder = Path(folder) if folder is not None else benchmark_folder(root)
    if not all((folder / category_file(c)).is_file() for c in CATEGORIES):
        raise HarnessError(missing_message(folder))
    prompts, metadata = [], []
    for category in CATEGORIES:
        path = folder / category_file(category)
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise HarnessError(f"{path}: not a JSON file ({err})") from err
        if not isinstance(items, list) or not items:
            raise HarnessError(f"{path}: expected a non-empty JSON list of prompts")
        for position, item in enumerate(items, start=1):
            prompts.append(_prompt(item, path, position))
            metadata.append({"category": category, "prompt": prompts[-1]})
    return PromptSet("hpsv3", tuple(prompts), tuple(metadata), IMAGES_PER_PROMPT)
