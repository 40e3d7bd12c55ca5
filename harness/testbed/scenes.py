"""The text-to-image testbed's world: scenes of one to four shapes described by GenEval-style prompts.

Five of the testbed's shapes in five distinct colours on a plain dark background, 32x32 RGB, drawn at 2x and
2x2-pooled like harness/testbed/data.py. The prompt grammar mirrors GenEval's six tasks and writes GenEval's metadata
schema (`tag`, `include` [{class, count, color?, position?}], `exclude`, `prompt`), so the same `judge` scores both.
Objects sit one per cell of a 2x2 grid (16x16 pixels, 4x4 patches of the model), jittered, sized and turned a
little: they never touch, and the layout's uncertainty is which cells are used, not a continuum of positions.
Position scenes put the two objects side by side in one row or one column, which GenEval's relative-position rule
always accepts.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from harness.testbed.data import _inside

SHAPES = ("disc", "square", "triangle", "cross", "ring")
PLURALS = {"disc": "discs", "square": "squares", "triangle": "triangles", "cross": "crosses", "ring": "rings"}
KINDS = {"disc": 0, "ring": 1, "square": 2, "triangle": 4, "cross": 5}  # shape -> harness.testbed.data kind
COLORS = {  # GenEval colour names -> RGB in [0, 1]
    "red": (0.95, 0.2, 0.2), "yellow": (0.95, 0.85, 0.15), "green": (0.2, 0.8, 0.3), "blue": (0.2, 0.4, 0.95),
    "white": (0.95, 0.95, 0.95),
}
BACKGROUND = 0.12  # grey level of every scene's background
IMAGE_SIZE = 32
NUMBERS = {2: "two", 3: "three", 4: "four"}
RELATIONS = {"left of": (-1.0, 0.0), "right of": (1.0, 0.0), "above": (0.0, -1.0), "below": (0.0, 1.0)}  # y down
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
GRID = 2  # objects sit in the cells of a GRID x GRID layout, at most one per cell
CELL = IMAGE_SIZE // GRID
CELL_ORDER = [(col, row) for row in range(GRID) for col in range(GRID)]
RADIUS = (5.3, 6.3)  # object radius in pixels
JITTER = 1.0  # object centre offset from its cell's centre, pixels either way
MAX_ROTATION = 0.2
EVAL_SEED = 43  # GenEval's create_prompts seed
TRAIN_SEED, REFERENCE_SEED = 0, 1_000_003  # training scenes; FD reference scenes (disjoint draw)
EVAL_COUNTS = {"single_object": 5, "two_object": 10, "counting": 15, "colors": 25, "position": 24, "color_attr": 24}
EVAL_FILE = Path(__file__).with_name("t2i_evaluation_metadata.jsonl")


#################################################################################
#                                Prompt grammar                                 #
#################################################################################


def _entry(tag: str, prompt: str, include: list[dict], exclude: list[dict] | None = None) -> dict:
    meta = {"tag": tag, "include": include}
    if exclude:
        meta["exclude"] = exclude
    meta["prompt"] = prompt
    return meta


def all_prompts(tag: str) -> list[dict]:
    """Every prompt of one task, in GenEval's metadata schema, in a fixed order."""
    out = []
    if tag == "single_object":
        for s in SHAPES:
            out.append(_entry(tag, f"a photo of a {s}", [{"class": s, "count": 1}]))
    elif tag == "two_object":
        for a, b in itertools.combinations(SHAPES, 2):
            out.append(_entry(tag, f"a photo of a {a} and a {b}", [{"class": a, "count": 1}, {"class": b, "count": 1}]))
    elif tag == "counting":
        for s in SHAPES:
            for n, word in NUMBERS.items():
                out.append(_entry(tag, f"a photo of {word} {PLURALS[s]}", [{"class": s, "count": n}],
                                  [{"class": s, "count": n + 1}]))
    elif tag == "colors":
        for s in SHAPES:
            for c in COLORS:
                out.append(_entry(tag, f"a photo of a {c} {s}", [{"class": s, "count": 1, "color": c}]))
    elif tag == "position":
        for a, b in itertools.permutations(SHAPES, 2):
            for rel in RELATIONS:
                out.append(_entry(tag, f"a photo of a {a} {rel} a {b}",
                                  [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}]))
    elif tag == "color_attr":
        for a, b in itertools.permutations(SHAPES, 2):
            for ca, cb in itertools.permutations(COLORS, 2):
                out.append(_entry(tag, f"a photo of a {ca} {a} and a {cb} {b}",
                                  [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}]))
    else:
        raise ValueError(f"unknown task {tag!r}; known: {', '.join(TASKS)}")
    return out


def evaluation_prompts() -> list[dict]:
    """The held-out evaluation set: EVAL_COUNTS[tag] prompts per task drawn with EVAL_SEED (all of a small task)."""
    rng = np.random.default_rng(EVAL_SEED)
    out = []
    for tag in TASKS:
        pool = all_prompts(tag)
        pick = sorted(rng.choice(len(pool), size=EVAL_COUNTS[tag], replace=False))
        out.extend(pool[i] for i in pick)
    return out


# Tasks whose evaluation prompts are left out of training: only where the grammar has many more combinations than
# the evaluation set takes; the small tasks (5 shapes, 10 pairs, 15 counts, 25 colours) are evaluated on all of them.
HELD_OUT_TASKS = ("position", "color_attr")


def training_prompts() -> dict[str, list[dict]]:
    """The training grammar per task, minus the evaluation prompts of HELD_OUT_TASKS."""
    held = {m["prompt"] for m in evaluation_prompts() if m["tag"] in HELD_OUT_TASKS}
    return {tag: [m for m in all_prompts(tag) if m["prompt"] not in held] for tag in TASKS}


#################################################################################
#                                  Scenes                                       #
#################################################################################


def _cells(n: int, rng: np.random.Generator, relation: str | None = None) -> list[tuple[int, int]]:
    """(column, row) cells of the 2x2 grid for n objects: distinct cells at random, or, for a position prompt, object
    1 `relation` of object 0 in the same row (left of / right of) or column (above / below)."""
    if relation is None:
        return [CELL_ORDER[i] for i in rng.permutation(len(CELL_ORDER))[:n]]
    dx, dy = RELATIONS[relation]
    k = int(rng.integers(GRID))
    if dx:
        a, b = (0, 1) if dx > 0 else (1, 0)  # object 1 right of object 0: object 0 in column 0
        return [(a, k), (b, k)]
    a, b = (0, 1) if dy > 0 else (1, 0)  # y grows downwards: object 1 below object 0: object 0 in row 0
    return [(k, a), (k, b)]


def scene_objects(meta: dict, rng: np.random.Generator) -> list[dict]:
    """Objects {shape, color, x, y, radius, angle} of one scene that satisfies the prompt `meta`."""
    shapes, colors = [], []
    for req in meta["include"]:
        shapes += [req["class"]] * req["count"]
        colors += [req.get("color")] * req["count"]
    colors = [c if c is not None else list(COLORS)[rng.integers(len(COLORS))] for c in colors]
    relation = meta["include"][1]["position"][0] if meta["tag"] == "position" else None  # include[1] is `rel` of [0]
    cells = _cells(len(shapes), rng, relation)
    radii = rng.uniform(*RADIUS, len(shapes))
    centres = (np.array(cells) + 0.5) * CELL + rng.uniform(-JITTER, JITTER, (len(shapes), 2))
    angles = rng.uniform(-MAX_ROTATION, MAX_ROTATION, len(shapes))
    return [{"shape": s, "color": c, "x": float(x), "y": float(y), "radius": float(r), "angle": float(a)}
            for s, c, (x, y), r, a in zip(shapes, colors, centres, radii, angles)]


def render(scenes: Sequence[Sequence[dict]], with_masks: bool = False):
    """uint8 images (B, 32, 32, 3) of the scenes; with `with_masks`, also each object's coverage (list of (k, 32, 32))."""
    n, hi = len(scenes), 2 * IMAGE_SIZE
    axis = (np.arange(hi) + 0.5) / 2.0  # pixel coordinates of the 2x grid
    gy, gx = np.meshgrid(axis, axis, indexing="ij")
    image = np.full((n, hi, hi, 3), BACKGROUND)
    masks = [np.zeros((len(s), IMAGE_SIZE, IMAGE_SIZE)) for s in scenes]
    for b, objects in enumerate(scenes):
        for k, o in enumerate(objects):
            dx, dy = gx - o["x"], gy - o["y"]
            cos, sin = np.cos(o["angle"]), np.sin(o["angle"])
            u, v = (cos * dx + sin * dy) / o["radius"], (-sin * dx + cos * dy) / o["radius"]
            inside = _inside(KINDS[o["shape"]], u, v)
            image[b][inside] = COLORS[o["color"]]
            if with_masks:
                masks[b][k] = inside.reshape(IMAGE_SIZE, 2, IMAGE_SIZE, 2).mean(axis=(1, 3))
    image = image.reshape(n, IMAGE_SIZE, 2, IMAGE_SIZE, 2, 3).mean(axis=(2, 4))
    out = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    return (out, masks) if with_masks else out


def draw(prompts: Sequence[dict], seed: int) -> np.ndarray:
    """One scene per prompt, deterministic from `seed`: uint8 (B, 32, 32, 3)."""
    rng = np.random.default_rng(seed)
    return render([scene_objects(m, rng) for m in prompts])


def reference_images(count: int) -> np.ndarray:
    """`count` scenes of the evaluation prompts, prompt i % P for scene i, from a draw disjoint from training: the
    FD reference of suites/t2i_testbed.toml (`reference = "scenes:N"`)."""
    metas = evaluation_prompts()
    return draw([metas[i % len(metas)] for i in range(count)], REFERENCE_SEED)


def training_draw(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """n (prompt, scene) pairs: a task uniformly, then a training prompt of it uniformly."""
    rng = np.random.default_rng(seed)
    grammar = training_prompts()
    metas = []
    for tag in rng.integers(len(TASKS), size=n):
        pool = grammar[TASKS[tag]]
        metas.append(pool[rng.integers(len(pool))])
    images = render([scene_objects(m, rng) for m in metas])
    return [m["prompt"] for m in metas], images
