"""GenEval detector backends: mmdet -> transformers key conversion, mmdet's test-time steps, the import guard."""

import importlib.util
import re
import sys
import types

import numpy as np
import pytest
import torch

from harness.errors import HarnessError
from harness.metrics.geneval.detectors import DETECTORS, build_detector
from harness.metrics.geneval.detectors import mask2former as m2f

CLASSES = [f"class{i}" for i in range(5)]
TINY_SWIN = dict(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=4)
TINY_HEAD = dict(hidden_dim=32, feature_size=32, mask_feature_size=32, encoder_layers=1, decoder_layers=4,
                 num_queries=6, encoder_feedforward_dim=48, dim_feedforward=48, num_attention_heads=2)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = m2f.build_model(len(CLASSES), TINY_SWIN, **TINY_HEAD)
    with torch.no_grad():  # random, non-trivial values everywhere (norms and biases too)
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


# mmdet's own reordering (mmdet/models/utils/ckpt_convert.py swin_converter): original Swin -> nn.Unfold order
def correct_unfold_reduction_order(x):
    out_channel, in_channel = x.shape
    x = x.reshape(out_channel, 4, in_channel // 4)
    return x[:, [0, 2, 1, 3], :].transpose(1, 2).reshape(out_channel, in_channel)


def correct_unfold_norm_order(x):
    in_channel = x.shape[0]
    x = x.reshape(4, in_channel // 4)
    return x[[0, 2, 1, 3], :].transpose(0, 1).reshape(in_channel)


def to_mmdet(hf: dict) -> dict:
    """The inverse of the conversion, written from mmdet 2.x's module names: SwinTransformer (patch_embed,
    stages.i.blocks.j.{norm1, attn.w_msa.{qkv, proj, relative_position_bias_table}, norm2, ffn.layers.{0.0, 1}},
    stages.i.downsample.{reduction, norm}, norm{i}), MSDeformAttnPixelDecoder (input_convs.i.{conv, gn},
    encoder.layers.i.{attentions.0.*, ffns.0.layers.{0.0, 1}, norms.{0, 1}}, level_encoding, lateral_convs.0,
    output_convs.0, mask_feature) and Mask2FormerHead (transformer_decoder.layers.i.{attentions.{0 cross, 1 self}.attn,
    ffns.0, norms.{0, 1, 2}}, post_norm, query_embed, query_feat, level_embed, cls_embed, mask_embed.{0, 2, 4})."""
    out = {}
    S, P, T = "model.pixel_level_module.encoder.", "model.pixel_level_module.decoder.", "model.transformer_module."
    qkv = {}
    for key, value in hf.items():
        if m2f.UNUSED.match(key):
            continue
        k = key
        swin = re.match(re.escape(S) + r"swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.(.*)$", k)
        if swin:
            i, j, rest = swin.groups()
            base = f"backbone.stages.{i}.blocks.{j}."
            proj = re.match(r"attention\.(q|k|v)_proj\.(weight|bias)$", rest)
            if proj:
                qkv.setdefault(base + "attn.w_msa.qkv." + proj.group(2), {})[proj.group(1)] = value
                continue
            rest = (rest.replace("layernorm_before.", "norm1.").replace("layernorm_after.", "norm2.")
                    .replace("attention.relative_position_bias.relative_position_bias_table",
                             "attn.w_msa.relative_position_bias_table")
                    .replace("attention.o_proj.", "attn.w_msa.proj.").replace("mlp.fc1.", "ffn.layers.0.0.")
                    .replace("mlp.fc2.", "ffn.layers.1."))
            out[base + rest] = value
            continue
        down = re.match(re.escape(S) + r"swin\.encoder\.layers\.(\d+)\.downsample\.(reduction|norm)\.(\w+)$", k)
        if down:
            i, part, param = down.groups()
            fix = correct_unfold_reduction_order if part == "reduction" else correct_unfold_norm_order
            out[f"backbone.stages.{i}.downsample.{part}.{param}"] = fix(value)
            continue
        simple = {
            S + "swin.embeddings.patch_embeddings.projection.": "backbone.patch_embed.projection.",
            S + "swin.embeddings.norm.": "backbone.patch_embed.norm.",
            P + "mask_projection.": "panoptic_head.pixel_decoder.mask_feature.",
            P + "adapter_1.0.": "panoptic_head.pixel_decoder.lateral_convs.0.conv.",
            P + "adapter_1.1.": "panoptic_head.pixel_decoder.lateral_convs.0.gn.",
            P + "layer_1.0.": "panoptic_head.pixel_decoder.output_convs.0.conv.",
            P + "layer_1.1.": "panoptic_head.pixel_decoder.output_convs.0.gn.",
            T + "decoder.layernorm.": "panoptic_head.transformer_decoder.post_norm.",
            T + "queries_embedder.": "panoptic_head.query_embed.",
            T + "queries_features.": "panoptic_head.query_feat.",
            T + "level_embed.": "panoptic_head.level_embed.",
            "class_predictor.": "panoptic_head.cls_embed.",
        }
        hit = next((p for p in simple if k.startswith(p)), None)
        if hit:
            out[simple[hit] + k[len(hit):]] = value
            continue
        norm = re.match(re.escape(S) + r"hidden_states_norms\.stage(\d)\.(\w+)$", k)
        if norm:
            out[f"backbone.norm{int(norm.group(1)) - 1}.{norm.group(2)}"] = value
            continue
        if k == P + "level_embed":
            out["panoptic_head.pixel_decoder.level_encoding.weight"] = value
            continue
        inp = re.match(re.escape(P) + r"input_projections\.(\d+)\.(0|1)\.(\w+)$", k)
        if inp:
            out[f"panoptic_head.pixel_decoder.input_convs.{inp.group(1)}.{'conv' if inp.group(2) == '0' else 'gn'}"
                f".{inp.group(3)}"] = value
            continue
        enc = re.match(re.escape(P) + r"encoder\.layers\.(\d+)\.(.*)$", k)
        if enc:
            i, rest = enc.groups()
            rest = (rest.replace("self_attn_layer_norm.", "norms.0.").replace("final_layer_norm.", "norms.1.")
                    .replace("self_attn.", "attentions.0.").replace("fc1.", "ffns.0.layers.0.0.")
                    .replace("fc2.", "ffns.0.layers.1."))
            out[f"panoptic_head.pixel_decoder.encoder.layers.{i}.{rest}"] = value
            continue
        mask = re.match(re.escape(T) + r"decoder\.mask_predictor\.mask_embedder\.(\d)\.0\.(\w+)$", k)
        if mask:
            out[f"panoptic_head.mask_embed.{2 * int(mask.group(1))}.{mask.group(2)}"] = value
            continue
        dec = re.match(re.escape(T) + r"decoder\.layers\.(\d+)\.(.*)$", k)
        assert dec, k
        i, rest = dec.groups()
        base = f"panoptic_head.transformer_decoder.layers.{i}."
        proj = re.match(r"self_attn\.(q|k|v)_proj\.(weight|bias)$", rest)
        if proj:
            qkv.setdefault(base + "attentions.1.attn.in_proj_" + proj.group(2), {})[proj.group(1)] = value
            continue
        rest = (rest.replace("cross_attn_layer_norm.", "norms.0.").replace("self_attn_layer_norm.", "norms.1.")
                .replace("final_layer_norm.", "norms.2.").replace("cross_attn.", "attentions.0.attn.")
                .replace("self_attn.out_proj.", "attentions.1.attn.out_proj.").replace("fc1.", "ffns.0.layers.0.0.")
                .replace("fc2.", "ffns.0.layers.1."))
        out[base + rest] = value
    for key, parts in qkv.items():
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]])
    for key in [k for k in out if k.endswith("attn.w_msa.relative_position_bias_table")]:  # mmdet's saved buffer
        out[key.replace("relative_position_bias_table", "relative_position_index")] = torch.zeros(1, dtype=torch.long)
    return out


def test_unfold_reordering_inverts_mmdets_and_merges_patches_the_same_way():
    torch.manual_seed(0)
    w, n = torch.randn(8, 16), torch.randn(16)
    torch.testing.assert_close(m2f.unfold_to_swin_reduction(correct_unfold_reduction_order(w)), w)
    torch.testing.assert_close(m2f.unfold_to_swin_norm(correct_unfold_norm_order(n)), n)
    # mmdet's PatchMerging: nn.Unfold(2, stride 2) -> norm -> reduction, on the mmdet-ordered weights
    x = torch.randn(2, 4, 6, 6)  # (B, C, H, W)
    w_mm = torch.randn(8, 16)
    norm = torch.nn.LayerNorm(16)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    unfold = torch.nn.functional.unfold(x, 2, stride=2).transpose(1, 2)  # (B, L, C*4)
    mmdet_out = torch.nn.functional.layer_norm(unfold, (16,), norm.weight, norm.bias) @ w_mm.T
    # Swin's PatchMerging (transformers): concat x0..x3 -> norm -> reduction, with the converted weights
    from transformers.models.swin.modeling_swin import SwinPatchMerging

    merge = SwinPatchMerging(dim=4)
    with torch.no_grad():
        merge.reduction.weight.copy_(m2f.unfold_to_swin_reduction(w_mm))
        merge.norm.weight.copy_(m2f.unfold_to_swin_norm(norm.weight))
        merge.norm.bias.copy_(m2f.unfold_to_swin_norm(norm.bias))
    hf_out = merge(x.permute(0, 2, 3, 1).reshape(2, 36, 4), (6, 6))
    torch.testing.assert_close(hf_out, mmdet_out, rtol=1e-5, atol=1e-5)


def test_mmdet_checkpoint_converts_and_loads_exactly(tiny, tmp_path):
    reference = {k: v.clone() for k, v in tiny.state_dict().items()}
    mmdet = to_mmdet(reference)
    assert "backbone.stages.0.blocks.0.attn.w_msa.qkv.weight" in mmdet
    assert "panoptic_head.transformer_decoder.layers.2.attentions.1.attn.in_proj_weight" in mmdet
    assert "panoptic_head.mask_embed.4.bias" in mmdet and "backbone.norm3.weight" in mmdet
    converted = m2f.convert_mmdet_state_dict(mmdet)
    used = {k for k in reference if not m2f.UNUSED.match(k)}
    assert set(converted) == used
    for key in used:
        torch.testing.assert_close(converted[key], reference[key], rtol=0, atol=0, msg=key)
    # through a file in mmdet's layout, into a fresh model: same outputs as the model the weights came from
    path = tmp_path / m2f.CHECKPOINT
    meta = {"CLASSES": tuple(CLASSES), "mmdet_version": "2.24.0", "hook_msgs": {"best_score": np.float64(0.49)}}
    torch.save({"meta": meta, "state_dict": mmdet}, path)
    torch.manual_seed(1)
    fresh = m2f.build_model(len(CLASSES), TINY_SWIN, **TINY_HEAD)
    m2f.load_checkpoint(fresh, path)
    pixels = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = tiny(pixel_values=pixels), fresh(pixel_values=pixels)
    torch.testing.assert_close(a.class_queries_logits, b.class_queries_logits)
    torch.testing.assert_close(a.masks_queries_logits, b.masks_queries_logits)


def test_bad_checkpoints_stop_with_one_message(tiny, tmp_path):
    with pytest.raises(HarnessError, match="harness assets --fetch mask2former-swin-s-coco"):
        m2f.load_checkpoint(tiny, tmp_path / "missing.pth")
    mmdet = to_mmdet(tiny.state_dict())
    with pytest.raises(HarnessError, match="unknown layout"):
        m2f.convert_mmdet_state_dict({**mmdet, "panoptic_head.something_else.weight": torch.zeros(1)})
    path = tmp_path / "short.pth"
    torch.save({"state_dict": {k: v for k, v in mmdet.items() if "cls_embed" not in k}}, path)
    with pytest.raises(HarnessError, match="does not fit"):
        m2f.load_checkpoint(tiny, path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(HarnessError, match="not a loadable"):
        m2f.load_checkpoint(tiny, path)


def test_mmdet_test_time_resize_normalise_pad():
    assert m2f.rescale_size(1024, 1024) == (800, 800)
    assert m2f.rescale_size(512, 512) == (800, 800)
    assert m2f.rescale_size(640, 480) == (1067, 800)  # 480 * 800/480, 640 * 1.6667 = 1066.7 -> 1067
    assert m2f.rescale_size(3000, 1000) == (1333, 444)  # long side bound: 1000 * 0.4443 = 444.3
    image = np.full((10, 10, 3), 200, np.uint8)
    image[..., 1] = 100
    pixels, img_shape = m2f.preprocess(image)
    assert img_shape == (800, 800) and pixels.shape == (1, 3, 800, 800)
    expected = torch.tensor([(200 - 123.675) / 58.395, (100 - 116.28) / 57.12, (200 - 103.53) / 57.375])
    torch.testing.assert_close(pixels[0, :, 400, 400], expected)
    pixels, img_shape = m2f.preprocess(np.zeros((30, 50, 3), np.uint8))
    assert img_shape == (800, 1333) and pixels.shape == (1, 3, 800, 1344)  # 1333 padded to 1344
    assert (pixels[..., 1333:] == 0).all() and (pixels[..., :1333] != 0).all()
    with pytest.raises(ValueError, match="uint8"):
        m2f.preprocess(np.zeros((4, 4), np.uint8))


def test_mask_logits_follow_mmdet_upsample_crop_upsample():
    logits = torch.full((1, 4, 8), -5.0)
    logits[0, :, :3] = 5.0  # the left 3/8 of the padded input
    out = m2f.mask_logits_to_image(logits, (16, 32), (16, 24), (8, 12))  # padding = right quarter
    assert out.shape == (1, 8, 12)
    assert (out[0, :, :3] > 0).all() and (out[0, :, 6:] < 0).all()  # 12 of 24 cropped px map to the left 3/4 half


def test_instance_postprocess_on_hand_made_logits():
    # 3 queries, 2 classes + no-object; masks 4 x 5
    cls = torch.tensor([[4.0, 0.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 9.0]])
    masks = torch.full((3, 4, 5), -3.0)
    masks[0, 1:3, 1:4] = 2.0  # query 0: rows 1-2, cols 1-3
    masks[1, 0, 4] = 0.5  # query 1: a single pixel at (y 0, x 4)
    labels, boxes, binary = m2f.instance_postprocess(cls, masks, num_things=2, max_per_image=4)
    soft = torch.softmax(cls, -1)[:, :2]
    order = torch.argsort(boxes[:, 4], descending=True)
    labels, boxes, binary = labels[order], boxes[order], binary[order]
    # the four best (query, class) pairs: (0, 0), (1, 1), (1, 0) and (0, 1) -- query 2 is all no-object
    expected_pairs = sorted([(0, 0), (1, 1), (1, 0), (0, 1)],
                            key=lambda qc: -(soft[qc] * (torch.sigmoid(masks[qc[0]])[masks[qc[0]] > 0].mean())))
    for (query, label), got_label, box, mask in zip(expected_pairs, labels, boxes, binary):
        assert got_label == label
        inside = masks[query] > 0
        assert torch.equal(mask, inside)
        mask_score = torch.sigmoid(masks[query])[inside].sum() / (inside.sum() + 1e-6)
        torch.testing.assert_close(box[4], soft[query, label] * mask_score)
    by_query = {0: [1.0, 1.0, 4.0, 3.0], 1: [4.0, 0.0, 5.0, 1.0]}
    for (query, _), box in zip(expected_pairs, boxes):
        assert box[:4].tolist() == by_query[query]  # [x_min, y_min, x_max + 1, y_max + 1]
    # an empty mask gives a zero box and a zero score; labels of stuff classes are dropped
    labels, boxes, _ = m2f.instance_postprocess(torch.tensor([[5.0, 0.0, 0.0]]), torch.full((1, 4, 5), -1.0), 1, 2)
    assert labels.tolist() == [0] and boxes.tolist() == [[0.0, 0.0, 0.0, 0.0, 0.0]]
    assert m2f.mask2bbox(torch.zeros(0, 3, 3, dtype=torch.bool)).shape == (0, 4)


def test_detector_end_to_end_on_a_tiny_model(tiny):
    detector = m2f.Mask2FormerDetector(tiny, CLASSES)
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    detections = detector.detect(image)
    assert set(detections) <= set(CLASSES)
    objects = [o for objs in detections.values() for o in objs]
    assert len(objects) == min(m2f.MAX_PER_IMAGE, TINY_HEAD["num_queries"] * len(CLASSES))
    for obj in objects:
        assert obj["mask"].shape == (40, 56) and obj["mask"].dtype == bool
        assert (obj["score"] > 0) == bool(obj["mask"].any())  # mmdet: class score x mean sigmoid in the mask
        x1, y1, x2, y2 = obj["box"]
        if obj["mask"].any():
            ys, xs = np.nonzero(obj["mask"])
            assert [x1, y1, x2, y2] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    with pytest.raises(HarnessError, match="class names"):
        m2f.Mask2FormerDetector(tiny, CLASSES[:2])


def test_registry_and_the_mmdet_import_guard(tmp_path, monkeypatch):
    assert {"mask2former", "mmdet"} <= set(DETECTORS)  # plus the text testbed's world detector
    with pytest.raises(HarnessError, match="unknown GenEval detector"):
        build_detector("yolo")
    if importlib.util.find_spec("mmdet") is None:
        with pytest.raises(HarnessError, match="mmdet 2.x"):
            build_detector("mmdet", classnames=CLASSES, checkpoint=tmp_path / "x.pth")
    # an mmdet 3.x install is refused by name, before anything loads
    fake = types.ModuleType("mmdet")
    fake.__version__, fake.__file__ = "3.3.0", str(tmp_path / "mmdet" / "__init__.py")
    monkeypatch.setitem(sys.modules, "mmdet", fake)
    monkeypatch.setitem(sys.modules, "mmdet.apis", types.SimpleNamespace(init_detector=None))
    with pytest.raises(HarnessError, match="needs mmdet 2.x, found 3.3.0"):
        build_detector("mmdet", classnames=CLASSES, checkpoint=tmp_path / "x.pth")
    fake.__version__ = "2.27.0"  # no source tree next to it: GenEval's config file is missing
    with pytest.raises(HarnessError, match="mmdet config missing: .*mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py"):
        build_detector("mmdet", classnames=CLASSES, checkpoint=tmp_path / "x.pth")
    with pytest.raises(HarnessError, match="harness assets --fetch mask2former-swin-s-coco"):
        build_detector("mask2former", checkpoint=tmp_path / "x.pth", classnames=CLASSES)
    monkeypatch.setenv("HARNESS_ASSETS", str(tmp_path))  # default checkpoint: the manifest's location
    with pytest.raises(HarnessError, match=re.escape(str(tmp_path / "geneval" / m2f.CHECKPOINT))):
        build_detector("mask2former", classnames=CLASSES)


def test_resize_is_opencvs_bilinear_and_the_fallback_is_within_one_grey_level(monkeypatch):
    cv2 = pytest.importorskip("cv2")
    image = np.random.default_rng(0).integers(0, 256, (51, 64, 3), dtype=np.uint8)
    size = m2f.rescale_size(64, 51)
    exact = m2f.resize(image, size)
    assert np.array_equal(exact, cv2.resize(image, size, interpolation=cv2.INTER_LINEAR))  # mmcv's imresize
    monkeypatch.setitem(sys.modules, "cv2", None)  # no OpenCV: torch's bilinear
    fallback = m2f.resize(image, size)
    assert fallback.shape == exact.shape and np.abs(fallback.astype(int) - exact).max() <= 1


def test_mmdet_adapter_with_a_stand_in_mmdet(tmp_path, monkeypatch):
    """The official stack's path: init_detector(config, checkpoint), inference_detector on the BGR array, per-class
    (bbox, segm) lists -> Detections."""
    seen = {}
    masks = np.zeros((2, 4, 6), bool)
    masks[0, 1, 2] = masks[1, 3, 5] = True

    def init_detector(config, checkpoint, device):
        seen.update(config=config, checkpoint=checkpoint, device=device)
        return "model"

    def inference_detector(model, image):
        seen["image"] = image
        bbox = [np.zeros((0, 5), np.float32) for _ in CLASSES]
        segm = [[] for _ in CLASSES]
        bbox[3] = np.array([[2, 1, 3, 2, 0.75], [5, 3, 6, 4, 0.25]], np.float32)
        segm[3] = [masks[0], masks[1]]
        return bbox, segm

    root = tmp_path / "mmdetection"
    (root / "configs" / "mask2former").mkdir(parents=True)
    (root / "configs" / "mask2former" / "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py").write_text("")
    fake = types.ModuleType("mmdet")
    fake.__version__, fake.__file__ = "2.27.0", str(root / "mmdet" / "__init__.py")
    monkeypatch.setitem(sys.modules, "mmdet", fake)
    monkeypatch.setitem(sys.modules, "mmdet.apis", types.SimpleNamespace(init_detector=init_detector,
                                                                         inference_detector=inference_detector))
    checkpoint = tmp_path / m2f.CHECKPOINT
    checkpoint.write_bytes(b"")
    detector = build_detector("mmdet", classnames=CLASSES, checkpoint=checkpoint)
    assert seen["config"].endswith("configs/mask2former/mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py")
    assert seen["checkpoint"] == str(checkpoint) and seen["device"] == "cuda"
    image = np.zeros((4, 6, 3), np.uint8)
    image[..., 0] = 255  # red
    out = detector.detect(image)
    assert seen["image"][0, 0].tolist() == [0, 0, 255]  # handed over as BGR, as mmdet reads files
    assert list(out) == ["class3"] and detector.name == "mask2former-swin-s-mmdet"
    assert [o["box"] for o in out["class3"]] == [[2, 1, 3, 2], [5, 3, 6, 4]]
    assert [o["score"] for o in out["class3"]] == [0.75, 0.25] and out["class3"][1]["mask"][3, 5]
