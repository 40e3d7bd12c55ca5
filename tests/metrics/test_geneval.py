"""GenEval's rules, one by one, on hand-made detections (the official evaluate_images.py / summary_scores.py)."""

import json

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.metrics.geneval.rules import (
    Options, color_requests, judge, kept_objects, read_results, relative_position, result_record, summarize,
    write_results,
)


def det(score, box=(0, 0, 10, 10), color=None):
    obj = {"box": list(box), "score": score}
    if color is not None:
        obj["color"] = color
    return obj


def meta(tag, include, exclude=None, prompt="a prompt"):
    out = {"tag": tag, "include": include, "prompt": prompt}
    if exclude is not None:
        out["exclude"] = exclude
    return out


SINGLE = meta("single_object", [{"class": "cat", "count": 1}])


def test_threshold_is_strict_and_compared_in_float32():
    assert not judge(SINGLE, {"cat": [det(0.3)]})
    assert not judge(SINGLE, {"cat": [det(float(np.float32(0.3)))]})  # 0.30000001 as float64, 0.3 as float32
    assert judge(SINGLE, {"cat": [det(float(np.nextafter(np.float32(0.3), np.float32(1))))]})
    assert not judge(SINGLE, {"cat": [det(0.1)], "dog": [det(0.99)]})


def test_missing_class_and_empty_lists():
    assert not judge(SINGLE, {})
    assert not judge(SINGLE, {"cat": []})
    two = meta("two_object", [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}])
    assert judge(two, {"cat": [det(0.5)], "dog": [det(0.4)]})
    assert not judge(two, {"cat": [det(0.5)]})
    assert not judge(two, {"cat": [det(0.5)], "dog": [det(0.3)]})


def test_counting_uses_the_090_threshold_and_the_exclude_clause():
    three = meta("counting", [{"class": "cup", "count": 3}], [{"class": "cup", "count": 4}])
    assert judge(three, {"cup": [det(0.95), det(0.91), det(0.92)]})
    assert not judge(three, {"cup": [det(0.95), det(0.91), det(0.9)]})  # 0.9 is not above 0.9
    assert judge(three, {"cup": [det(0.95), det(0.91), det(0.92), det(0.89)]})  # 4th below threshold: not counted
    assert not judge(three, {"cup": [det(0.95), det(0.91), det(0.92), det(0.93)]})  # 4 > 3: excluded
    # outside counting the 0.3 threshold applies even to a count clause
    two_cups = meta("two_object", [{"class": "cup", "count": 2}])
    assert judge(two_cups, {"cup": [det(0.5), det(0.4)]})


def test_sixteen_objects_per_class_cap_applies_to_exclude():
    many = meta("counting", [{"class": "cup", "count": 2}], [{"class": "cup", "count": 17}])
    assert not judge(meta("counting", [{"class": "cup", "count": 2}], [{"class": "cup", "count": 16}]),
                     {"cup": [det(0.95)] * 20})
    assert judge(many, {"cup": [det(0.95)] * 20})  # capped at 16 < 17
    kept = kept_objects(many, {"cup": [det(0.91 + i / 1000) for i in range(20)]})
    assert len(kept["cup"]) == 16
    assert [o["score"] for o in kept["cup"]] == sorted((0.91 + i / 1000 for i in range(4, 20)), reverse=True)
    assert len(kept_objects(many, {"cup": [det(0.95)] * 20}, Options(max_objects=5))["cup"]) == 5


def test_no_nms_by_default_and_nms_when_asked():
    overlapping = {"cup": [det(0.95, (0, 0, 10, 10)), det(0.94, (0, 0, 10, 10)), det(0.93, (50, 50, 60, 60))]}
    two = meta("counting", [{"class": "cup", "count": 3}])
    assert judge(two, overlapping)
    assert not judge(two, overlapping, Options(max_overlap=0.5))
    assert len(kept_objects(two, overlapping, Options(max_overlap=0.5))["cup"]) == 2


COLOR = meta("colors", [{"class": "car", "count": 1, "color": "red"}])


def test_colour_is_read_from_the_top_scoring_objects_only():
    assert judge(COLOR, {"car": [det(0.8, color="red"), det(0.9, color="red")]})
    assert not judge(COLOR, {"car": [det(0.8, color="red"), det(0.9, color="blue")]})  # best one is blue
    assert judge(COLOR, {"car": [det(0.8, color="blue"), det(0.9, color="red")]})
    assert judge(COLOR, {"car": [det(0.2, color="blue"), det(0.9, color="red")]})
    # all of the top-count objects must have the colour
    two_red = meta("colors", [{"class": "car", "count": 2, "color": "red"}])
    assert not judge(two_red, {"car": [det(0.9, color="red"), det(0.8, color="blue"), det(0.7, color="red")]})
    assert judge(two_red, {"car": [det(0.9, color="red"), det(0.8, color="red"), det(0.7, color="blue")]})


def test_colour_step_is_asked_for_exactly_the_objects_read():
    objects = [det(0.8), det(0.9), det(0.2)]
    wanted = color_requests(COLOR, {"car": objects, "dog": [det(0.9)]})
    assert list(wanted) == ["car"] and len(wanted["car"]) == 1 and wanted["car"][0] is objects[1]
    assert color_requests(COLOR, {"car": [det(0.2)]}) == {}  # too few objects: no colour is read
    with pytest.raises(HarnessError, match="color"):
        judge(COLOR, {"car": [det(0.9)]})


def test_color_attr_prompt():
    attr = meta("color_attr", [{"class": "car", "count": 1, "color": "red"},
                               {"class": "dog", "count": 1, "color": "green"}])
    assert judge(attr, {"car": [det(0.9, color="red")], "dog": [det(0.5, color="green")]})
    assert not judge(attr, {"car": [det(0.9, color="red")], "dog": [det(0.5, color="red")]})


def test_relative_position_threshold():
    # A and B of width 10: centres must be further apart than 0.1 * (10 + 10) = 2 along an axis
    b = [0, 0, 10, 10]
    assert relative_position([20, 0, 30, 10], b) == {"right of"}
    assert relative_position([-20, 0, -10, 10], b) == {"left of"}
    assert relative_position([0, 20, 10, 30], b) == {"below"}  # y grows downwards
    assert relative_position([0, -20, 10, -10], b) == {"above"}
    assert relative_position([2, 0, 12, 10], b) == set()  # offset 2 == 0.1 * 20: shrinks to nothing
    assert relative_position([2.1, 0, 12.1, 10], b) == set()  # shrunk 0.1 / 2.1: not a relation either
    assert relative_position([4, 0, 14, 10], b) == set()  # shrunk 2 / 4 = 0.5 exactly: not above 0.5
    assert relative_position([5, 0, 15, 10], b) == {"right of"}  # 3 / 5 = 0.6
    assert relative_position([20, 20, 30, 30], b) == {"right of", "below"}  # diagonal: 0.707 on both axes
    # the shrunk offset is divided by the unshrunk norm: 45 degrees with a small box shrink fails both axes
    assert relative_position([6, 6, 16, 16], b) == set()  # offset (6, 6), shrunk (4, 4) / 8.49 = 0.47
    assert relative_position([20, 6, 30, 16], b) == {"right of"}  # shrunk (18, 4) / 21.26 -> dx 0.85, dy 0.19


def test_position_rule():
    pos = meta("position", [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["left of", 0]}])
    dog = det(0.9, (100, 0, 150, 50))
    assert judge(pos, {"dog": [dog], "cat": [det(0.9, (0, 0, 50, 50))]})
    assert not judge(pos, {"dog": [dog], "cat": [det(0.9, (200, 0, 250, 50))]})
    assert not judge(pos, {"dog": [dog], "cat": [det(0.9, (95, 0, 145, 50))]})  # overlapping: no relation
    assert not judge(pos, {"cat": [det(0.9, (0, 0, 50, 50))]})  # no target
    # only the best cat is checked, against the top-count dogs
    assert judge(pos, {"dog": [dog], "cat": [det(0.9, (0, 0, 50, 50)), det(0.5, (300, 0, 350, 50))]})
    assert not judge(pos, {"dog": [dog], "cat": [det(0.5, (0, 0, 50, 50)), det(0.9, (300, 0, 350, 50))]})
    # the target group is the top-`count` dogs only: a second, lower dog to the left does not matter
    assert judge(pos, {"dog": [dog, det(0.4, (-200, 0, -150, 50))], "cat": [det(0.9, (0, 0, 50, 50))]})
    # position threshold option
    near = {"dog": [dog], "cat": [det(0.9, (40, 0, 90, 50))]}  # centres 60 apart, widths 50 + 50
    assert judge(pos, near) and not judge(pos, near, Options(position_threshold=0.6))
    bad = meta("position", [{"class": "cat", "count": 1, "position": ["left of", 1]}, {"class": "dog", "count": 1}])
    with pytest.raises(HarnessError, match="position target"):
        judge(bad, {"dog": [dog], "cat": [det(0.9)]})


def test_exclude_counts_only_kept_objects():
    excl = meta("single_object", [{"class": "cat", "count": 1}], [{"class": "dog", "count": 1}])
    assert judge(excl, {"cat": [det(0.9)], "dog": [det(0.3)]})
    assert not judge(excl, {"cat": [det(0.9)], "dog": [det(0.31)]})
    assert judge(meta("single_object", [], []), {})


def test_result_record_and_summary_match_the_official_formats(tmp_path):
    pos = meta("position", [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["left of", 0]}],
               prompt="a photo of a cat left of a dog")
    record = result_record("00000/samples/0000.png", pos,
                           {"dog": [det(0.9, (100, 0, 150, 50))], "cat": [det(0.8, (300, 0, 350, 50)), det(0.1)]},
                           backend="test")
    assert record["correct"] is False and record["reason"].startswith("expected cat left of target")
    assert json.loads(record["metadata"]) == pos and record["backend"] == "test"
    details = json.loads(record["details"])
    assert details == {"dog": [[100, 0, 150, 50, float(np.float32(0.9))]],
                       "cat": [[300, 0, 350, 50, float(np.float32(0.8))]]}
    records = [
        {"tag": "single_object", "correct": True, "metadata": "a"},
        {"tag": "single_object", "correct": False, "metadata": "a"},
        {"tag": "single_object", "correct": False, "metadata": "b"},
        {"tag": "single_object", "correct": False, "metadata": "b"},
        {"tag": "counting", "correct": True, "metadata": "c"},
    ]
    summary = summarize(records)
    assert summary["geneval_single_object"] == 0.25 and summary["geneval_counting"] == 1.0
    assert summary["geneval"] == pytest.approx(0.625)  # unweighted over tasks, not 2/5 over images
    assert summary["geneval_images"] == pytest.approx(0.4) and summary["geneval_prompts"] == pytest.approx(2 / 3)
    path = tmp_path / "results.jsonl"
    write_results([record, record], path)
    back = read_results(path)
    assert len(back) == 2 and back[0]["details"] == record["details"] and back[0]["correct"] is False
    assert summarize(back)["geneval_position"] == 0.0
    with pytest.raises(HarnessError, match="no results"):
        summarize([])


def test_agrees_with_the_official_evaluate_image_on_random_cases():
    """tests/fixtures/geneval_official_cases.json: random detections run through the official evaluate_image
    (djghosh13/geneval af4902f, mmdet and CLIP stubbed out, colours given), with its verdicts, reasons and details."""
    from pathlib import Path

    cases = json.loads((Path(__file__).parents[1] / "fixtures" / "geneval_official_cases.json").read_text())["cases"]
    assert len(cases) >= 100 and 0 < sum(c["correct"] for c in cases) < len(cases)
    for case in cases:
        record = result_record("x.png", case["metadata"], case["detections"])
        assert (record["correct"], record["reason"], record["details"]) == (case["correct"], case["reason"],
                                                                            case["details"]), case["metadata"]


def test_scorer_runs_detector_colour_step_and_rules_end_to_end(tmp_path):
    from PIL import Image

    from harness.metrics.geneval.image import build_geneval_scorer, load_image

    classes = ["cat", "dog", "car"]
    scorer = build_geneval_scorer(classes, random_weights=True)
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(image).convert("RGBA").save(tmp_path / "0000.png")
    assert np.array_equal(load_image(tmp_path / "0000.png"), image)  # RGB again, as the official script reads it
    metadata = meta("colors", [{"class": "car", "count": 1, "color": "red"}])
    loose = type(scorer)(scorer.detector, scorer.classify_colors, Options(threshold=0.0))
    record = loose(image, metadata, "00000/samples/0000.png")
    assert record["detector"] == "random-mask2former" and record["tag"] == "colors"
    details = json.loads(record["details"])
    assert set(details) <= set(classes) and "car" in details  # threshold 0: every class has detections
    # with a random detector and a random CLIP the verdict is whatever the rules say about the colour found
    assert record["correct"] == (record["reason"] == "")
