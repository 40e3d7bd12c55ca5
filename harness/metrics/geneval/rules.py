"""GenEval's scoring rules, apart from any detector: `judge(metadata, detections) -> bool`.

This is djghosh13/geneval's evaluation/evaluate_images.py (`evaluate_image` + `evaluate`, HEAD af4902f) and
summary_scores.py, rule for rule. `metadata` is one line of GenEval's evaluation_metadata.jsonl; `detections` maps a
class name to that class's raw detections, each `{"box": [x1, y1, x2, y2], "score": s, "color": c}` in pixels, before
any threshold. `color` is what the colour step says of that object; it is only read for the objects an include clause
with a colour looks at (`color_requests` names them). Scores and boxes are compared in float32, as the official
script compares mmdet's float32 arrays (a float32 score equal to 0.3 is not above the 0.3 threshold).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError

COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


@dataclass(frozen=True)
class Options:
    """evaluate_images.py's `--options` (threshold, counting_threshold, max_objects, max_overlap,
    position_threshold) with their official defaults; max_overlap = 1.0 disables NMS."""

    threshold: float = 0.3
    counting_threshold: float = 0.9
    max_objects: int = 16
    max_overlap: float = 1.0
    position_threshold: float = 0.1


DEFAULTS = Options()
Detection = Mapping[str, Any]


def _row(obj: Detection) -> np.ndarray:
    """The mmdet bbox row [x1, y1, x2, y2, score] of one detection, float32 as mmdet returns it."""
    return np.array([*obj["box"][:4], obj["score"]], dtype=np.float32)


def compute_iou(box_a: np.ndarray, box_b: np.ndarray) -> float:
    """The official IoU with the +1 pixel convention (only used when max_overlap < 1)."""
    area = lambda box: max(box[2] - box[0] + 1, 0) * max(box[3] - box[1] + 1, 0)  # noqa: E731
    inter = area([max(box_a[0], box_b[0]), max(box_a[1], box_b[1]), min(box_a[2], box_b[2]), min(box_a[3], box_b[3])])
    union = area(box_a) + area(box_b) - inter
    return inter / union if union else 0


def kept_objects(metadata: Mapping[str, Any], detections: Mapping[str, Sequence[Detection]],
                 options: Options = DEFAULTS) -> dict[str, list[Detection]]:
    """evaluate_image's per-class step: score > threshold (0.9 for counting prompts), best first, at most
    max_objects, optional NMS; classes left with nothing are dropped."""
    threshold = options.counting_threshold if metadata["tag"] == "counting" else options.threshold
    kept: dict[str, list[Detection]] = {}
    for name, objects in detections.items():
        if not objects:
            continue
        rows = np.stack([_row(obj) for obj in objects])
        order = np.argsort(rows[:, 4])[::-1]
        order = order[rows[order, 4] > threshold]
        order = order[: options.max_objects].tolist()
        keep = []
        while order:
            best = order.pop(0)
            keep.append(objects[best])
            order = [o for o in order
                     if options.max_overlap == 1 or compute_iou(rows[best], rows[o]) < options.max_overlap]
        if keep:
            kept[name] = keep
    return kept


def color_requests(metadata: Mapping[str, Any], detections: Mapping[str, Sequence[Detection]],
                   options: Options = DEFAULTS) -> dict[str, list[Detection]]:
    """The objects whose colour the rules will read: the top-`count` kept objects of each include clause with a
    colour, when there are enough of them. The colour step classifies these (per class name)."""
    kept = kept_objects(metadata, detections, options)
    wanted: dict[str, list[Detection]] = {}
    for req in metadata.get("include", []):
        found = kept.get(req["class"], [])[: req["count"]]
        if "color" in req and len(found) >= req["count"]:
            have = wanted.setdefault(req["class"], [])
            have.extend(obj for obj in found if not any(obj is h for h in have))
    return wanted


def relative_position(box_a: Sequence[float], box_b: Sequence[float], threshold: float = 0.1) -> set[str]:
    """Where A is relative to B, after shrinking the centre offset by threshold * (sum of the box sizes); empty when
    the shrunk offset vanishes. Computed in float32 as the official numpy code does on mmdet's arrays."""
    boxes = np.array([box_a[:4], box_b[:4]], dtype=np.float32).reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - threshold * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def _color(obj: Detection, classname: str) -> str:
    """The colour the colour step gave an object the rules look at."""
    if "color" not in obj:
        raise HarnessError(f"GenEval: a {classname!r} detection needs a 'color' (run the colour step on "
                           "color_requests(...) before judging)")
    return obj["color"]


def evaluate(kept: Mapping[str, Sequence[Detection]], metadata: Mapping[str, Any],
             options: Options = DEFAULTS) -> tuple[bool, str]:
    """The official `evaluate`: include clauses ANDed (top-`count` objects; all of them of the colour; each of them
    at the relation to every object of the target group), exclude clauses ORed. Returns (correct, reason)."""
    correct = True
    reason = []
    groups: list[list[Detection] | None] = []
    for req in metadata.get("include", []):
        classname = req["class"]
        matched = True
        found = list(kept.get(classname, []))[: req["count"]]
        if len(found) < req["count"]:
            correct = matched = False
            reason.append(f"expected {classname}>={req['count']}, found {len(found)}")
        else:
            if "color" in req:
                colors = [_color(obj, classname) for obj in found]
                if colors.count(req["color"]) < req["count"]:
                    correct = matched = False
                    reason.append(
                        f"expected {req['color']} {classname}>={req['count']}, found "
                        + f"{colors.count(req['color'])} {req['color']}; and "
                        + ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors)
                    )
            if "position" in req and matched:
                expected, target = req["position"]
                if target >= len(groups):
                    raise HarnessError(f"GenEval metadata {metadata.get('prompt')!r}: position target {target} "
                                       "names an include clause that does not come before it")
                if groups[target] is None:
                    correct = matched = False
                    reason.append(f"no target for {classname} to be {expected}")
                else:
                    for obj in found:
                        for other in groups[target]:
                            relations = relative_position(_row(obj), _row(other), options.position_threshold)
                            if expected not in relations:
                                correct = matched = False
                                reason.append(f"expected {classname} {expected} target, found "
                                              + f"{' and '.join(relations)} target")
                                break
                        if not matched:
                            break
        groups.append(found if matched else None)
    for req in metadata.get("exclude", []):
        classname = req["class"]
        if len(kept.get(classname, [])) >= req["count"]:
            correct = False
            reason.append(f"expected {classname}<{req['count']}, found {len(kept[classname])}")
    return correct, "\n".join(reason)


def judge(metadata: Mapping[str, Any], detections: Mapping[str, Sequence[Detection]],
          options: Options = DEFAULTS) -> bool:
    """Whether one image satisfies its GenEval prompt, from the detector's raw per-class detections."""
    return evaluate(kept_objects(metadata, detections, options), metadata, options)[0]


def result_record(filename: str, metadata: Mapping[str, Any], detections: Mapping[str, Sequence[Detection]],
                  options: Options = DEFAULTS, **extra: Any) -> dict[str, Any]:
    """One line of the official results.jsonl (filename, tag, prompt, correct, reason, metadata, details), plus any
    extra fields (e.g. which detector backend made the detections)."""
    kept = kept_objects(metadata, detections, options)
    correct, reason = evaluate(kept, metadata, options)
    details = {name: [_row(obj).tolist() for obj in objects] for name, objects in kept.items()}
    return {"filename": filename, "tag": metadata["tag"], "prompt": metadata["prompt"], "correct": correct,
            "reason": reason, "metadata": json.dumps(metadata), "details": json.dumps(details), **extra}


def write_results(records: Iterable[Mapping[str, Any]], path: str | Path) -> None:
    """results.jsonl as evaluate_images.py writes it (pandas, one record per line)."""
    import pandas as pd

    with open(path, "w") as file:
        pd.DataFrame(list(records)).to_json(file, orient="records", lines=True)


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """The records of a results.jsonl written by us or by the official script."""
    import pandas as pd

    try:
        return pd.read_json(path, orient="records", lines=True).to_dict("records")
    except ValueError as error:
        raise HarnessError(f"{path}: not a GenEval results.jsonl ({error})") from error


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """summary_scores.py: per-task accuracy over images (tasks in order of first appearance), `geneval` = the
    unweighted mean of the task scores, plus the fraction of correct images and of prompts with any correct image."""
    if not records:
        raise HarnessError("GenEval: no results to summarise")
    tasks: dict[str, list[bool]] = {}
    prompts: dict[str, list[bool]] = {}
    for record in records:
        tasks.setdefault(record["tag"], []).append(bool(record["correct"]))
        prompts.setdefault(record["metadata"], []).append(bool(record["correct"]))
    summary = {f"geneval_{tag}": float(np.mean(flags)) for tag, flags in tasks.items()}
    summary["geneval"] = float(np.mean([np.mean(flags) for flags in tasks.values()]))
    summary["geneval_images"] = float(np.mean([bool(r["correct"]) for r in records]))
    summary["geneval_prompts"] = float(np.mean([any(flags) for flags in prompts.values()]))
    return summary


def paired_differences(records: Sequence[Mapping[str, Any]], baseline: Sequence[Mapping[str, Any]],
                       resamples: int = 1000, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """Per task and overall: (score of `records` - score of `baseline`, 95% interval) with a paired bootstrap.

    Both runs must score the same images' prompts and seeds (matched by `filename`, which the harness derives from
    the image index): resampling pairs rather than each run alone removes the prompt-to-prompt variance the two
    share, so a small real difference is not lost in it. Images are resampled within each task; `geneval` is the
    unweighted mean of the task differences, as in summarize.
    """
    base = {r["filename"]: r for r in baseline}
    if set(base) != {r["filename"] for r in records}:
        raise HarnessError("paired GenEval comparison: the two runs did not score the same images")
    diffs: dict[str, list[float]] = {}
    for r in records:
        if base[r["filename"]]["metadata"] != r["metadata"]:
            raise HarnessError(f"paired GenEval comparison: {r['filename']} has different prompts in the two runs")
        diffs.setdefault(r["tag"], []).append(float(bool(r["correct"])) - float(bool(base[r["filename"]]["correct"])))
    rng = np.random.default_rng(seed)
    draws = {tag: np.asarray(d)[rng.integers(len(d), size=(resamples, len(d)))].mean(axis=1)
             for tag, d in diffs.items()}
    out = {f"geneval_{tag}": (float(np.mean(d)), *np.percentile(draws[tag], [2.5, 97.5]).tolist())
           for tag, d in diffs.items()}
    overall = np.mean(list(draws.values()), axis=0)
    out["geneval"] = (float(np.mean([np.mean(d) for d in diffs.values()])),
                      *np.percentile(overall, [2.5, 97.5]).tolist())
    return out
