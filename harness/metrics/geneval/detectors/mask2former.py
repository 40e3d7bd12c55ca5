"""GenEval's detector without mmcv: mmdet 2.x's Mask2Former Swin-S (COCO instance) run as transformers'
Mask2FormerForUniversalSegmentation, loaded from the official mmdet checkpoint through a key conversion.

Test time follows mmdet 2.x, not transformers' image processor: resize keep-ratio into (1333, 800), normalise with
ImageNet mean/std, pad bottom/right to a multiple of 32; the last decoder layer's mask logits are upsampled
(bilinear) to the padded size, cropped to the resized image, upsampled to the original size; then
MaskFormerFusionHead.instance_postprocess (softmax without the no-object class, top 100 (query, class) pairs,
masks = logits > 0, score = class score x mean sigmoid inside the mask, box = mask2bbox) and bbox2result per class.
The architecture is the same as mmdet's (both follow the Mask2Former paper's code); no parity run against mmdet was
possible where this was written, so GenEval numbers from this backend are not guaranteed to equal the official ones.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.metrics.geneval.detectors.base import Detections, Detector, check_image

CHECKPOINT = "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth"
ASSET = "mask2former-swin-s-coco"
IMG_SCALE = (1333, 800)
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
SIZE_DIVISOR = 32
MAX_PER_IMAGE = 100

# mmdet's config of this checkpoint (mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py and the configs it inherits)
SWIN_S = dict(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24], window_size=7, mlp_ratio=4.0,
              qkv_bias=True, drop_path_rate=0.0, out_features=["stage1", "stage2", "stage3", "stage4"])
HEAD = dict(hidden_dim=256, feature_size=256, mask_feature_size=256, num_queries=100, encoder_layers=6,
            encoder_feedforward_dim=1024, decoder_layers=10, dim_feedforward=2048, num_attention_heads=8,
            common_stride=4, feature_strides=[4, 8, 16, 32])  # decoder_layers - 1 = 9 layers


def build_model(num_labels: int = 80, swin: dict | None = None, **head: object):
    """transformers' Mask2Former with mmdet's Swin-S instance configuration (smaller sizes for tests)."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    backbone = SwinConfig(**{**SWIN_S, **(swin or {})})
    config = Mask2FormerConfig(backbone_config=backbone, num_labels=num_labels, **{**HEAD, **head})
    return Mask2FormerForUniversalSegmentation(config).eval()


#################################################################################
#                        mmdet 2.x keys -> transformers keys                    #
#################################################################################

SWIN = "model.pixel_level_module.encoder."
PIXEL = "model.pixel_level_module.decoder."
TRANSFORMER = "model.transformer_module."
_BLOCK = r"backbone\.stages\.(\d+)\.blocks\.(\d+)\."
_LAYER = SWIN + r"swin.encoder.layers.\1.blocks.\2."
_ENC = r"panoptic_head\.pixel_decoder\.encoder\.layers\.(\d+)\."
_DEC = r"panoptic_head\.transformer_decoder\.layers\.(\d+)\."
# (mmdet pattern, transformers name); keys that hold a fused q/k/v or an unfold-ordered merge are handled apart
RENAMES = [
    (r"backbone\.patch_embed\.projection\.", SWIN + "swin.embeddings.patch_embeddings.projection."),
    (r"backbone\.patch_embed\.norm\.", SWIN + "swin.embeddings.norm."),
    (_BLOCK + r"norm1\.", _LAYER + "layernorm_before."),
    (_BLOCK + r"norm2\.", _LAYER + "layernorm_after."),
    (_BLOCK + r"attn\.w_msa\.relative_position_bias_table$",
     _LAYER + "attention.relative_position_bias.relative_position_bias_table"),
    (_BLOCK + r"attn\.w_msa\.proj\.", _LAYER + "attention.o_proj."),
    (_BLOCK + r"ffn\.layers\.0\.0\.", _LAYER + "mlp.fc1."),
    (_BLOCK + r"ffn\.layers\.1\.", _LAYER + "mlp.fc2."),
    (r"backbone\.stages\.(\d+)\.downsample\.", SWIN + r"swin.encoder.layers.\1.downsample."),
    (r"panoptic_head\.pixel_decoder\.input_convs\.(\d+)\.conv\.", PIXEL + r"input_projections.\1.0."),
    (r"panoptic_head\.pixel_decoder\.input_convs\.(\d+)\.gn\.", PIXEL + r"input_projections.\1.1."),
    (_ENC + r"attentions\.0\.", PIXEL + r"encoder.layers.\1.self_attn."),
    (_ENC + r"ffns\.0\.layers\.0\.0\.", PIXEL + r"encoder.layers.\1.fc1."),
    (_ENC + r"ffns\.0\.layers\.1\.", PIXEL + r"encoder.layers.\1.fc2."),
    (_ENC + r"norms\.0\.", PIXEL + r"encoder.layers.\1.self_attn_layer_norm."),
    (_ENC + r"norms\.1\.", PIXEL + r"encoder.layers.\1.final_layer_norm."),
    (r"panoptic_head\.pixel_decoder\.level_encoding\.weight$", PIXEL + "level_embed"),
    (r"panoptic_head\.pixel_decoder\.mask_feature\.", PIXEL + "mask_projection."),
    (_DEC + r"attentions\.0\.attn\.", TRANSFORMER + r"decoder.layers.\1.cross_attn."),
    (_DEC + r"attentions\.1\.attn\.out_proj\.", TRANSFORMER + r"decoder.layers.\1.self_attn.out_proj."),
    (_DEC + r"norms\.0\.", TRANSFORMER + r"decoder.layers.\1.cross_attn_layer_norm."),
    (_DEC + r"norms\.1\.", TRANSFORMER + r"decoder.layers.\1.self_attn_layer_norm."),
    (_DEC + r"norms\.2\.", TRANSFORMER + r"decoder.layers.\1.final_layer_norm."),
    (_DEC + r"ffns\.0\.layers\.0\.0\.", TRANSFORMER + r"decoder.layers.\1.fc1."),
    (_DEC + r"ffns\.0\.layers\.1\.", TRANSFORMER + r"decoder.layers.\1.fc2."),
    (r"panoptic_head\.transformer_decoder\.post_norm\.", TRANSFORMER + "decoder.layernorm."),
    (r"panoptic_head\.query_embed\.", TRANSFORMER + "queries_embedder."),
    (r"panoptic_head\.query_feat\.", TRANSFORMER + "queries_features."),
    (r"panoptic_head\.level_embed\.", TRANSFORMER + "level_embed."),
    (r"panoptic_head\.cls_embed\.", "class_predictor."),
]
# Buffers mmdet saves that transformers recomputes, and transformers parameters this model never uses.
DROPPED = re.compile(r"backbone\.stages\.\d+\.blocks\.\d+\.attn\.w_msa\.relative_position_index$")
UNUSED = re.compile(r"^(model\.pixel_level_module\.encoder\.swin\.layernorm\.|criterion\.)")


def unfold_to_swin_reduction(weight: torch.Tensor) -> torch.Tensor:
    """PatchMerging's reduction weight from mmdet's nn.Unfold channel order (c-major; (0,0),(0,1),(1,0),(1,1))
    to Swin's concatenation order (x0, x1, x2, x3 = (0,0),(1,0),(0,1),(1,1)); inverts mmdet's
    ckpt_convert.correct_unfold_reduction_order."""
    out_channels, in_channels = weight.shape
    weight = weight.reshape(out_channels, in_channels // 4, 4)[:, :, [0, 2, 1, 3]]
    return weight.transpose(1, 2).reshape(out_channels, in_channels)


def unfold_to_swin_norm(weight: torch.Tensor) -> torch.Tensor:
    """The same reordering for PatchMerging's norm (inverts correct_unfold_norm_order)."""
    (channels,) = weight.shape
    return weight.reshape(channels // 4, 4)[:, [0, 2, 1, 3]].transpose(0, 1).reshape(channels)


def _rename(key: str) -> str | None:
    for pattern, target in RENAMES:
        new, count = re.subn("^" + pattern, target, key)
        if count:
            return new
    return None


def convert_mmdet_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmdet 2.x Mask2Former (Swin) state dict -> Mask2FormerForUniversalSegmentation's (transformers >= 5 names).
    Unknown keys raise: a checkpoint of another layout must not load half-way."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if DROPPED.match(key):
            continue
        qkv = re.match(_BLOCK + r"attn\.w_msa\.qkv\.(weight|bias)$", key)
        self_attn = re.match(_DEC + r"attentions\.1\.attn\.in_proj_(weight|bias)$", key)
        if qkv:  # Swin's fused qkv -> q_proj, k_proj, v_proj
            stage, block, param = qkv.groups()
            prefix = f"{SWIN}swin.encoder.layers.{stage}.blocks.{block}.attention."
        elif self_attn:  # nn.MultiheadAttention's in_proj -> q_proj, k_proj, v_proj
            layer, param = self_attn.groups()
            prefix = f"{TRANSFORMER}decoder.layers.{layer}.self_attn."
        if qkv or self_attn:
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{prefix}{name}.{param}"] = part.clone()
            continue
        mask_embed = re.match(r"panoptic_head\.mask_embed\.(\d)\.(weight|bias)$", key)
        if mask_embed and mask_embed.group(1) in "024":
            layer = int(mask_embed.group(1)) // 2
            out[f"{TRANSFORMER}decoder.mask_predictor.mask_embedder.{layer}.0.{mask_embed.group(2)}"] = value
            continue
        stage_norm = re.match(r"backbone\.norm(\d)\.(weight|bias)$", key)
        if stage_norm:  # the norm of backbone output i
            out[f"{SWIN}hidden_states_norms.stage{int(stage_norm.group(1)) + 1}.{stage_norm.group(2)}"] = value
            continue
        lateral = re.match(r"panoptic_head\.pixel_decoder\.(lateral|output)_convs\.(\d+)\.(conv|gn)\.(\w+)$", key)
        if lateral:  # lateral_convs[i] / output_convs[i] act on backbone level i, as adapter_{i+1} / layer_{i+1}
            kind, level, module, param = lateral.groups()
            name = "adapter" if kind == "lateral" else "layer"
            out[f"{PIXEL}{name}_{int(level) + 1}.{0 if module == 'conv' else 1}.{param}"] = value
            continue
        new = _rename(key)
        if new is None:
            unknown.append(key)
            continue
        if ".downsample.reduction." in new:
            value = unfold_to_swin_reduction(value)
        elif ".downsample.norm." in new:
            value = unfold_to_swin_norm(value)
        out[new] = value
    if unknown:
        raise HarnessError(f"Mask2Former checkpoint: {len(unknown)} keys of an unknown layout, e.g. {unknown[:3]}; "
                           "expected mmdet 2.x mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco (the v2.0 file)")
    return out


def load_checkpoint(model: torch.nn.Module, path: str | Path) -> None:
    """Load the official mmdet checkpoint file into a transformers Mask2Former, strictly up to unused parts."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"GenEval detector checkpoint missing: {path}; fetch it with "
                           f"`harness assets --fetch {ASSET}`")
    try:  # mmcv's `meta` may hold numpy scalars (e.g. hook messages): allowed, nothing else is
        numpy_core = np._core if hasattr(np, "_core") else np.core
        with torch.serialization.safe_globals([np.dtype, numpy_core.multiarray.scalar, type(np.dtype(np.float64)),
                                               type(np.dtype(np.int64))]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure is the same user-facing problem
        raise HarnessError(f"{path}: not a loadable mmdet checkpoint ({type(error).__name__}: {error})") from error
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise HarnessError(f"{path}: no state_dict in the checkpoint")
    converted = convert_mmdet_state_dict(state)
    expected = model.state_dict()
    missing = [k for k in expected if k not in converted and not UNUSED.match(k)]
    unexpected = [k for k in converted if k not in expected]
    wrong = [k for k in converted if k in expected and converted[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise HarnessError(f"{path}: does not fit the Swin-S Mask2Former (missing {missing[:3]}, unexpected "
                           f"{unexpected[:3]}, wrong shape {wrong[:3]}; {len(missing)}/{len(unexpected)}/{len(wrong)})")
    model.load_state_dict(converted, strict=False)


#################################################################################
#                           mmdet's test-time pipeline                          #
#################################################################################


def rescale_size(width: int, height: int, scale: tuple[int, int] = IMG_SCALE) -> tuple[int, int]:
    """mmcv.imrescale's output size: the largest keep-ratio size within (long 1333, short 800), rounded half up."""
    factor = min(max(scale) / max(width, height), min(scale) / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a uint8 image as mmcv does it (cv2.INTER_LINEAR when OpenCV is installed, else torch's
    bilinear without antialiasing, which can differ from cv2 by one grey level)."""
    if (image.shape[1], image.shape[0]) == size:
        return image
    try:
        import cv2

        return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    except ImportError:
        pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        out = F.interpolate(pixels, size=(size[1], size[0]), mode="bilinear", align_corners=False)
        return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def preprocess(image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
    """(1, 3, H_pad, W_pad) normalised, padded input and the resized image's (height, width)."""
    image = check_image(image)
    width, height = rescale_size(image.shape[1], image.shape[0])
    resized = torch.from_numpy(resize(image, (width, height))).float()
    normalised = (resized - torch.tensor(MEAN)) / torch.tensor(STD)
    pad_h = -height % SIZE_DIVISOR
    pad_w = -width % SIZE_DIVISOR
    padded = F.pad(normalised.permute(2, 0, 1), (0, pad_w, 0, pad_h), value=0.0)
    return padded[None], (height, width)


def mask_logits_to_image(mask_logits: torch.Tensor, padded_shape: tuple[int, int], img_shape: tuple[int, int],
                         ori_shape: tuple[int, int]) -> torch.Tensor:
    """(Q, h, w) mask logits -> (Q, H_ori, W_ori): up to the padded input, crop the padding, up to the original."""
    logits = F.interpolate(mask_logits[None], size=padded_shape, mode="bilinear", align_corners=False)[0]
    logits = logits[:, : img_shape[0], : img_shape[1]]
    return F.interpolate(logits[:, None], size=ori_shape, mode="bilinear", align_corners=False)[:, 0]


def mask2bbox(masks: torch.Tensor) -> torch.Tensor:
    """mmdet's mask2bbox: [x_min, y_min, x_max + 1, y_max + 1] of each bool mask, zeros for an empty one."""
    boxes = masks.new_zeros((masks.shape[0], 4), dtype=torch.float32)
    x_any = masks.any(dim=1)
    y_any = masks.any(dim=2)
    for i in range(masks.shape[0]):
        x = torch.where(x_any[i])[0]
        y = torch.where(y_any[i])[0]
        if len(x) and len(y):
            boxes[i] = boxes.new_tensor([x[0], y[0], x[-1] + 1, y[-1] + 1])
    return boxes


def instance_postprocess(cls_logits: torch.Tensor, mask_logits: torch.Tensor, num_things: int,
                         max_per_image: int = MAX_PER_IMAGE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MaskFormerFusionHead.instance_postprocess: (labels (N,), bboxes (N, 5) with the score last, masks (N, H, W))
    from one image's (Q, K + 1) class logits and (Q, H, W) mask logits at the original size."""
    num_queries, num_classes = cls_logits.shape[0], cls_logits.shape[1] - 1
    scores = F.softmax(cls_logits, dim=-1)[:, :-1]
    labels = torch.arange(num_classes, device=cls_logits.device).unsqueeze(0).repeat(num_queries, 1).flatten(0, 1)
    scores, top = scores.flatten(0, 1).topk(min(max_per_image, scores.numel()), sorted=False)
    labels = labels[top]
    masks = mask_logits[top // num_classes]
    things = labels < num_things
    scores, labels, masks = scores[things], labels[things], masks[things]
    binary = (masks > 0).float()
    mask_scores = (masks.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    binary = binary.bool()
    boxes = torch.cat([mask2bbox(binary), (scores * mask_scores)[:, None]], dim=-1)
    return labels, boxes, binary


def per_class(labels: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor,
              classnames: Sequence[str]) -> Detections:
    """bbox2result + the segm lists of MaskFormer.simple_test, keyed by GenEval's class names (label i <-> line i)."""
    labels = labels.cpu().numpy()
    boxes = boxes.detach().float().cpu().numpy()
    masks = masks.cpu().numpy()
    out: Detections = {}
    for j, label in enumerate(labels):
        x1, y1, x2, y2, score = (float(v) for v in boxes[j])
        out.setdefault(classnames[label], []).append({"box": [x1, y1, x2, y2], "score": score, "mask": masks[j]})
    return out


class Mask2FormerDetector(Detector):
    """mmdet's Mask2Former Swin-S weights in transformers' architecture, with mmdet's test-time steps."""

    name = "mask2former-swin-s-transformers"

    def __init__(self, model: torch.nn.Module, classnames: Sequence[str], device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        if len(classnames) != model.config.num_labels:
            raise HarnessError(f"{len(classnames)} class names for a detector of {model.config.num_labels} classes")
        self.model = model.eval().to(device=device, dtype=dtype)
        self.classnames = list(classnames)
        self.device = torch.device(device)
        self.dtype = dtype

    @torch.no_grad()
    def raw(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(labels, bboxes with scores, masks) of one image, as mmdet's instance results."""
        pixels, img_shape = preprocess(image)
        out = self.model(pixel_values=pixels.to(self.device, self.dtype))
        masks = mask_logits_to_image(out.masks_queries_logits[0].float(), tuple(pixels.shape[-2:]), img_shape,
                                     tuple(image.shape[:2]))
        return instance_postprocess(out.class_queries_logits[0].float(), masks, len(self.classnames))

    def detect(self, image: np.ndarray) -> Detections:
        return per_class(*self.raw(image), self.classnames)


def build(classnames: Sequence[str], checkpoint: str | Path | None = None, device: str | torch.device = "cpu",
          root: str | Path | None = None) -> Mask2FormerDetector:
    """The Swin-S detector from the official mmdet checkpoint file (default: the manifest's mask2former-swin-s-coco
    location under the assets folder)."""
    if checkpoint is None:
        from harness.assets import load_manifest

        checkpoint = load_manifest()[ASSET].location(root)
    model = build_model(len(classnames))
    load_checkpoint(model, checkpoint)
    return Mask2FormerDetector(model, classnames, device)
