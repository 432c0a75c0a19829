"""detectron2 Faster R-CNN + FPN checkpoints (Swin-T, as PAT's detection teacher) <-> `Detector` keys.

PAT's detection code trains with detectron2; its configs (`detection/configs/SwinT/
faster_rcnn_swint_T_FPN_3x.yaml`) take a Swin-T + FPN Faster R-CNN teacher. A `Detector` that loads
one: `build_detector("swin_tiny_patch4_window7_224", num_classes=80, img_size=..., stage_norms=True,
fpn_channels=256, representation_size=1024)`.

Key names, and where they were confirmed:
- meta architecture `backbone` / `proposal_generator` / `roi_heads`: PAT `detection/model/rcnn.py`
  (RCNNKD) and detectron2 `modeling/meta_arch/rcnn.py`.
- `backbone.bottom_up.<swin>`: PAT `detection/convert_to_d2.py` (prefixes every Swin key with
  "backbone.bottom_up.") and `detection/model/backbone/swin_transformer.py` (FPN(bottom_up=...)).
  Its Swin is the official layout: `patch_embed.{proj,norm}`, `layers.{i}.blocks.{j}.{norm1,
  attn.relative_position_bias_table, attn.relative_position_index, attn.qkv, attn.proj, norm2,
  mlp.fc1, mlp.fc2}`, `layers.{i}.downsample.{norm,reduction}` at the END of stage i (timm 1.x: at
  the start of stage i+1), and one LayerNorm per output stage, `norm{i}` (-> `backbone.norms.{i}`).
- `backbone.fpn_lateral{s}` / `backbone.fpn_output{s}`, s = log2(stride) = 2..5: detectron2
  `modeling/backbone/fpn.py` (plain Conv2d with bias when FPN.NORM is ""; LastLevelMaxPool has no
  weights and pools like torchvision's, kernel 1 stride 2).
- `proposal_generator.rpn_head.{conv, objectness_logits, anchor_deltas}`: detectron2
  `modeling/proposal_generator/rpn.py` StandardRPNHead (a single `conv` when RPN.CONV_DIMS has one
  entry, the default; several give `conv.conv{k}`, not mapped). Anchor order per location is size
  then aspect ratio in both (one size per level), deltas laid out (A, 4) in both.
- `roi_heads.box_head.fc{1,2}`: detectron2 `modeling/roi_heads/box_head.py` FastRCNNConvFCHead,
  NUM_FC 2 and POOLER_RESOLUTION 7 in `configs/Base-RCNN-FPN.yaml`.
- `roi_heads.box_predictor.{cls_score, bbox_pred}`: detectron2 `modeling/roi_heads/fast_rcnn.py`
  FastRCNNOutputLayers: cls_score has K+1 rows with the background LAST (gt class K); bbox_pred is
  class-specific with K*4 rows and none for the background. torchvision puts the background first
  and has (K+1)*4 rows: the mapping moves the background row to the front and gives it 4 zero
  regression rows (torchvision never reads them). Foreground order is kept: detectron2's contiguous
  COCO ids and kdbench's reader both sort category ids.
Dropped on the way in: `relative_position_index` / `attn_mask` buffers (timm rebuilds them),
`proposal_generator.anchor_generator.*` (cell-anchor buffers of older detectron2), `pixel_mean` /
`pixel_std`. Not confirmed from the sources: whether the released `faster_rcnn_swint_T.pth` holds
any of these, or `absolute_pos_embed` (only with SWINT.APE; such a key is reported as unknown).

Differences no key mapping can remove (numbers will differ slightly from detectron2's):
- ROI pooling: detectron2 ROIAlignV2 (aligned=True, sampling_ratio 0) vs torchvision
  MultiScaleRoIAlign (aligned=False, sampling_ratio 2); level assignment agrees up to its epsilon.
- Anchors: torchvision rounds cell anchors to integers, detectron2 does not (both offset 0). Sizes
  equal detectron2's 32..512 only on canvases >= 512 px (see `default_anchor_sizes`).
- Losses: detectron2 uses L1 (smooth-L1 beta 0) in RPN and ROI head, torchvision beta 1/9;
  Base-RCNN-FPN keeps 1000 proposals per image in training (pass rpn_post_nms_top_n_train=1000).
- Input: PAT's Swin-T config reads BGR 0-255 images minus PIXEL_MEAN (std 1). For RGB [0, 1]
  inputs use `bgr_to_rgb=True` and `PAT_SWINT_PIXEL_STATS` as image_mean/image_std: then the
  backbone sees exactly what it saw in detectron2.
- Geometry: detectron2's Swin pads any input to window multiples; timm's is built for one img_size.
"""

import re
from typing import Dict, Mapping, Optional

import torch

from kdbench.errors import UsageError

# image_mean / image_std for RGB inputs in [0, 1] equal to PAT's Swin-T detectron2 preprocessing.
PAT_SWINT_PIXEL_STATS = dict(image_mean=(123.675 / 255, 116.28 / 255, 103.53 / 255), image_std=(1 / 255,) * 3)

FIRST_LEVEL = 2   # detectron2 names FPN levels by log2(stride): strides 4..32 -> 2..5

# (detectron2 key format, kdbench key format, index offset: detectron2 index = kdbench index + offset).
# Tried in order; "{}" is a number. The generic backbone rule comes after the specific ones.
_RULES = (
    ("backbone.fpn_lateral{}.", "backbone.fpn.inner_blocks.{}.0.", FIRST_LEVEL),
    ("backbone.fpn_output{}.", "backbone.fpn.layer_blocks.{}.0.", FIRST_LEVEL),
    ("backbone.bottom_up.norm{}.", "backbone.norms.{}.", 0),
    ("backbone.bottom_up.layers.{}.downsample.", "backbone.body.model.layers.{}.downsample.", -1),
    ("backbone.bottom_up.", "backbone.body.model.", None),
    ("proposal_generator.rpn_head.conv.", "rpn.head.conv.0.0.", None),
    ("proposal_generator.rpn_head.objectness_logits.", "rpn.head.cls_logits.", None),
    ("proposal_generator.rpn_head.anchor_deltas.", "rpn.head.bbox_pred.", None),
    ("roi_heads.box_head.fc1.", "roi_heads.box_head.fc6.", None),
    ("roi_heads.box_head.fc2.", "roi_heads.box_head.fc7.", None),
    ("roi_heads.box_predictor.cls_score.", "roi_heads.box_predictor.cls_score.", None),
    ("roi_heads.box_predictor.bbox_pred.", "roi_heads.box_predictor.bbox_pred.", None),
)
_DROPPED = re.compile(r"(relative_position_index|attn_mask)$|^proposal_generator\.anchor_generator\.|"
                      r"^pixel_(mean|std)$")
# timm keys with no detectron2 counterpart, unused by the detector: the classifier's final norm/head.
_TIMM_ONLY = re.compile(r"^backbone\.body\.model\.(norm|head)\.")
_PATCH_EMBED = "backbone.body.model.patch_embed.proj.weight"


def _compile(fmt: str) -> re.Pattern:
    return re.compile("^" + re.escape(fmt).replace(r"\{\}", r"(\d+)"))


def _rename(key: str, source: int) -> Optional[str]:
    """key renamed by the first rule whose side `source` (0: detectron2, 1: kdbench) matches it."""
    for rule in _RULES:
        m = _compile(rule[source]).match(key)
        if m is None:
            continue
        target, offset = rule[1 - source], rule[2]
        if offset is not None:
            n = int(m.group(1)) + (-offset if source == 0 else offset)
            target = target.format(n)
        return target + key[m.end():]
    return None


def map_detectron2_state_dict(sd: Mapping, *, bgr_to_rgb: bool = False, fill_from: Optional[Mapping] = None,
                              strict: bool = True) -> Dict[str, torch.Tensor]:
    """A detectron2 Faster R-CNN + FPN (Swin backbone) state dict in `Detector` key names.

    `sd` may be the checkpoint itself ({"model": state dict, ...}); numpy arrays (detectron2 .pkl
    files) become tensors. `bgr_to_rgb` reverses the input channels of the patch embedding, for a
    model trained on BGR images that will see RGB. `fill_from` (e.g. the target detector's own
    state dict) supplies the timm keys detectron2 has no counterpart for, which the detector does
    not use (the backbone's final classifier norm/head), so that the result loads strictly. Keys
    no rule maps raise a UsageError when `strict` (default), else are left out.
    """
    sd = sd.get("model", sd) if isinstance(sd.get("model"), Mapping) else sd
    out, unknown = {}, []
    for key, value in sd.items():
        if _DROPPED.search(key):
            continue
        new = _rename(key, 0)
        if new is None:
            unknown.append(key)
            continue
        value = torch.as_tensor(value)
        if new.startswith("roi_heads.box_predictor.cls_score."):
            value = torch.cat([value[-1:], value[:-1]])          # background: last -> first
        elif new.startswith("roi_heads.box_predictor.bbox_pred."):
            if value.shape[0] == 4:
                raise UsageError("class-agnostic box regression (CLS_AGNOSTIC_BBOX_REG) has no "
                                 "torchvision counterpart")
            value = torch.cat([value.new_zeros((4,) + value.shape[1:]), value])
        out[new] = value
    if unknown and strict:
        raise UsageError(f"{len(unknown)} detectron2 keys have no kdbench counterpart (only Swin "
                         f"backbones + FPN + StandardRPNHead + 2-fc box head are mapped): "
                         f"{', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}")
    if bgr_to_rgb:
        out[_PATCH_EMBED] = out[_PATCH_EMBED].flip(1)
    for key, value in (fill_from or {}).items():
        if key not in out and _TIMM_ONLY.search(key):
            out[key] = value.detach().clone()
    return out


def to_detectron2_state_dict(sd: Mapping) -> Dict[str, torch.Tensor]:
    """The inverse of `map_detectron2_state_dict` (without channel flips): a `Detector` state dict
    (Swin backbone built with `stage_norms=True`) in detectron2 key names, background row last,
    background regression rows dropped. timm-only keys (final classifier norm/head) are left out;
    other keys without a detectron2 counterpart (e.g. a ViT's resampling layers) raise a UsageError."""
    out, unknown = {}, []
    for key, value in sd.items():
        if _TIMM_ONLY.search(key):
            continue
        new = _rename(key, 1)
        if new is None:
            unknown.append(key)
            continue
        if new.startswith("roi_heads.box_predictor.cls_score."):
            value = torch.cat([value[1:], value[:1]])
        elif new.startswith("roi_heads.box_predictor.bbox_pred."):
            value = value[4:]
        out[new] = value
    if unknown:
        raise UsageError(f"{len(unknown)} keys have no detectron2 counterpart: {', '.join(unknown[:8])}")
    return out
