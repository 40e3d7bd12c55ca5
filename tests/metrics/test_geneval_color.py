"""GenEval's colour step (masked crop on #999, CLIP zero-shot over 10 colours) on a tiny random-weight open-clip."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from harness.errors import HarnessError
from harness.metrics.geneval.rules import COLORS, judge
from harness.metrics.geneval.color import ColorClassifier, add_colors, object_crop
from harness.metrics.open_clip_models import TINY, load_open_clip



@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    return load_open_clip("ViT-B-32", None, **TINY)


def test_object_crop_pastes_the_mask_on_grey_and_crops_to_the_box():
    image = np.zeros((20, 30, 3), np.uint8)
    image[..., 0] = 200
    mask = np.zeros((20, 30), bool)
    mask[5:10, 4:8] = True
    crop = np.asarray(object_crop(Image.fromarray(image), [2.0, 3.0, 12.0, 15.0], mask))
    assert crop.shape == (12, 10, 3)
    assert (crop[2:7, 2:6] == [200, 0, 0]).all()  # the object, at its place inside the box
    assert (crop[0] == 153).all() and (crop[:, -1] == 153).all()  # "#999" elsewhere
    assert np.asarray(object_crop(Image.fromarray(image), [0, 0, 5, 5], None)).shape == (5, 5, 3)
    with pytest.raises(ValueError, match="mask of shape"):
        object_crop(Image.fromarray(image), [0, 0, 5, 5], mask[:10])


def test_classifier_is_clip_benchmarks_zero_shot_over_the_three_templates(tiny_clip):
    model, transform, tokenizer = tiny_clip
    colors = ColorClassifier(model, transform, tokenizer)
    with torch.no_grad():  # clip_benchmark 1.4.0 zero_shot_classifier, written out
        reference = []
        for c in COLORS:
            texts = [f"a photo of a {c} car", f"a photo of a {c}-colored car", f"a photo of a {c} object"]
            e = F.normalize(model.encode_text(tokenizer(texts)), dim=-1).mean(0)
            reference.append(e / e.norm())
        reference = torch.stack(reference, 1)
    torch.testing.assert_close(colors.classifier("car"), reference)
    assert not torch.equal(colors.classifier("dog"), reference)  # one classifier per class name

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    mask = np.zeros((64, 80), bool)
    mask[10:40, 20:60] = True
    objects = [{"box": [20, 10, 60, 40], "mask": mask}, {"box": [0, 0, 80, 64], "mask": None}]
    logits = colors.logits(image, "car", objects)
    with torch.no_grad():
        crops = torch.stack([transform(object_crop(Image.fromarray(image), o["box"], o["mask"])) for o in objects])
        expected = 100 * F.normalize(model.encode_image(crops), dim=-1) @ reference
    torch.testing.assert_close(logits, expected)
    assert colors(image, "car", objects) == [COLORS[i] for i in expected.argmax(1)]
    # batches of 16 give the same per-object answers
    many = colors.logits(image, "car", objects * 9)
    torch.testing.assert_close(many[16:18], expected, rtol=1e-4, atol=1e-4)


def test_add_colors_classifies_only_the_objects_the_rules_read():
    seen = []

    def classify(image, classname, objects):
        seen.append((classname, len(objects)))
        return ["red"] * len(objects)

    metadata = {"tag": "color_attr", "prompt": "p", "include": [{"class": "car", "count": 1, "color": "red"},
                                                                 {"class": "dog", "count": 1}]}
    detections = {"car": [{"box": [0, 0, 5, 5], "score": 0.4}, {"box": [0, 0, 5, 5], "score": 0.8},
                          {"box": [0, 0, 5, 5], "score": 0.1}], "dog": [{"box": [0, 0, 5, 5], "score": 0.9}]}
    add_colors(None, metadata, detections, classify)
    assert seen == [("car", 1)] and detections["car"][1]["color"] == "red" and "color" not in detections["car"][0]
    assert judge(metadata, detections)


def test_weights_are_an_asset_with_one_clear_message(tmp_path, tiny_clip):
    with pytest.raises(HarnessError, match="clip-vit-l-14-openai"):
        load_open_clip("ViT-L-14", "openai", weights=tmp_path / "missing.safetensors", asset="clip-vit-l-14-openai")
    with pytest.raises(HarnessError, match="no weights tagged"):
        load_open_clip("ViT-L-14", "nonsense")
    with pytest.raises(HarnessError, match="unknown open-clip architecture"):
        load_open_clip("ViT-Q-99")
    # a weights file with an OpenAI tag: loaded exactly, with QuickGELU as the OpenAI models need
    model, _, _ = tiny_clip
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)
    loaded, transform, _ = load_open_clip("ViT-B-32", "openai", weights=path, **TINY)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    acts = {type(m).__name__ for m in loaded.modules()}
    assert "QuickGELU" in acts and "GELU" not in acts
    assert "QuickGELU" not in {type(m).__name__ for m in model.modules()}
    assert transform.transforms[0].interpolation.value == "bicubic"
