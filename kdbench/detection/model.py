"""Faster R-CNN + FPN (torchvision) over any kdbench `FeatureModel` backbone.

`StagePyramid` turns the four stage features of a `FeatureModel` into FPN levels "0".."3" plus
"pool"; `Detector` is torchvision's `FasterRCNN` on it, with one extra training entry point,
`forward_train`, that also returns what distillers read (stages, pyramid, sampled proposals, ROI
logits), and `roi_class_logits`, which runs this detector's ROI head on given proposals (a teacher's
head on the student's proposals, as PAT's `detection/model/rcnn.py` does for KD/DKD).

Choices (each a constructor argument):
- Pyramid of non-hierarchical backbones (ViT/DeiT/Mixer/ResMLP: four stages on one grid): stage i is
  resampled by 4, 2, 1 and 1/2 (two 2x2 deconvolutions with LayerNorm+GELU between, one deconvolution,
  identity, 2x2 max-pool), the multi-level pyramid of Li et al. 2021 ("Benchmarking detection transfer
  learning with vision transformers") and BEiT/MAE, rather than ViTDet's pyramid from the last map
  only: every kdbench stage then feeds one level, so stage-level distillers (FitNet, PAT) act on
  features the detector uses. At paper scale (ViT/16) the levels land on strides 4-32 as with a
  CNN. Hierarchical backbones (stage grids halving) are used as they are, whatever their strides.
- Normalisation: `image_mean`/`image_std` default to 0/1, an identity, because kdbench normalises
  images itself (the loader, with the dataset's statistics). Pass statistics to normalise in the model.
- Geometry: every image is resized to the fixed square canvas `img_size` (a no-op when it already is
  one) and never padded, because Swin/ViT/Mixer position grids are built for exactly that size.
- Anchors: torchvision's sizes (32, 64, 128, 256, 512) per level, aspect ratios (0.5, 1, 2), scaled
  by min(1, img_size / 512) so that on small canvases the largest anchor is the canvas (64 px: 4..64).
  They depend on the canvas only, not on the backbone, so detectors of one preset share anchors.
"""

from collections import OrderedDict
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from timm.layers import LayerNorm2d, freeze_batch_norm_2d
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from distillers.adapters import to_map
from kdbench.errors import UsageError
from kdbench.models import FeatureModel, StageSpec, create_feature_model

Pyramid = Dict[str, torch.Tensor]   # an OrderedDict: "0".."3", "pool"
LEVELS = ("0", "1", "2", "3")


def _resampler(channels: int, log2_factor: int) -> nn.Module:
    """Power-of-two resampling of a map: 2x2 deconvolutions up (LayerNorm + GELU between), max-pool down."""
    if log2_factor == 0:
        return nn.Identity()
    if log2_factor < 0:
        return nn.MaxPool2d(2 ** -log2_factor)
    layers = []
    for k in range(log2_factor):
        if k:
            layers += [LayerNorm2d(channels), nn.GELU()]
        layers.append(nn.ConvTranspose2d(channels, channels, 2, 2))
    return nn.Sequential(*layers)


class StagePyramid(nn.Module):
    """A `FeatureModel`'s four stage features -> FPN levels "0".."3" and "pool" (torchvision FPN with
    `LastLevelMaxPool`), `out_channels` wide.

    Token stages become maps by their `StageSpec` (prefix tokens dropped). Hierarchical backbones
    feed the FPN directly; backbones whose stages share one grid are resampled by 4, 2, 1, 1/2 first
    (see the module docstring). `stage_norms` adds a channel LayerNorm to each stage map before that,
    as detectron2's Swin backbone does (`norm0`..`norm3`; needed to load its checkpoints).
    `level_specs` are the FPN levels' shapes ("0".."3", "pool"; NCHW maps) and `strides` their
    strides in input pixels.
    """

    def __init__(self, feature_model: FeatureModel, out_channels: int = 256, stage_norms: bool = False):
        super().__init__()
        self._to_map = to_map
        self.body = feature_model
        self.specs = list(feature_model.stage_specs)
        grids = [tuple(s.grid) for s in self.specs]
        if len(set(grids)) == 1:
            shifts = (2, 1, 0, -1)
        elif all(tuple((g + 1) // 2 for g in a) == b for a, b in zip(grids, grids[1:])):
            shifts = (0, 0, 0, 0)
        else:
            raise UsageError(f"stage grids {grids} are neither a pyramid (each half the previous) nor "
                             "one grid; no detection pyramid can be built from them")
        channels = [s.channels for s in self.specs]
        self.norms = nn.ModuleList(LayerNorm2d(c) for c in channels) if stage_norms else None
        self.resample = nn.ModuleList(_resampler(c, k) for c, k in zip(channels, shifts))
        self.fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels
        level_grids = [tuple(d * 2 ** k if k >= 0 else d // 2 ** -k for d in g) for g, k in zip(grids, shifts)]
        level_grids.append(tuple((d + 1) // 2 for d in level_grids[-1]))      # "pool": a stride-2 subsample
        self.level_specs = [StageSpec("map", out_channels, g) for g in level_grids]
        self.strides = tuple(round(feature_model.img_size / g[0]) for g in level_grids)

    @property
    def feature_model(self) -> FeatureModel:
        return self.body

    def forward_with_stages(self, images: torch.Tensor) -> Tuple[List[torch.Tensor], Pyramid]:
        """(the four stage features in `FeatureModel` layout, the FPN levels) of normalised images."""
        _, stages = self.body(images)
        maps = [self._to_map(f, spec) for f, spec in zip(stages, self.specs)]
        if self.norms is not None:
            maps = [norm(m) for norm, m in zip(self.norms, maps)]
        levels = OrderedDict((name, up(m)) for name, up, m in zip(LEVELS, self.resample, maps))
        return stages, self.fpn(levels)

    def forward(self, images: torch.Tensor) -> Pyramid:
        return self.forward_with_stages(images)[1]


def default_anchor_sizes(img_size: int) -> Tuple[int, ...]:
    """Anchor size per level ("0".."3", "pool"): torchvision's, scaled down on canvases under 512 px."""
    scale = min(1.0, img_size / 512)
    return tuple(max(1, round(s * scale)) for s in (32, 64, 128, 256, 512))


class DetectionStep(NamedTuple):
    """One training pass of a `Detector`, with what distillers read.

    losses: torchvision's names (loss_classifier, loss_box_reg, loss_objectness, loss_rpn_box_reg).
    stages: the four backbone stage features (`FeatureModel` layout). pyramid: FPN levels.
    proposals: per image, the proposals the ROI head trained on (after sampling, ground truth added),
    in input pixels. image_sizes: per image (h, w) after the transform. class_logits: [R, K+1] for
    those proposals (column 0 = background), box_regression: [R, (K+1)*4], roi_labels: per image,
    the matched labels of the proposals (0 = background).
    """

    losses: Dict[str, torch.Tensor]
    stages: List[torch.Tensor]
    pyramid: Pyramid
    proposals: List[torch.Tensor]
    image_sizes: List[Tuple[int, int]]
    class_logits: torch.Tensor
    box_regression: torch.Tensor
    roi_labels: List[torch.Tensor]


class RoiOutputs(NamedTuple):
    class_logits: torch.Tensor     # [R, K+1]
    box_regression: torch.Tensor   # [R, (K+1)*4]
    box_features: torch.Tensor     # [R, representation_size], the box head's output


class Detector(FasterRCNN):
    """torchvision Faster R-CNN + FPN on a `FeatureModel`.

    `num_classes` counts foreground classes (K); the ROI head predicts K+1 with background at 0,
    as in torchvision and kdbench's COCO reader. `forward(images, targets=None)` keeps torchvision's
    semantics: losses in training, detections (boxes in input pixels, labels 1..K, scores) in eval.
    Images: a list of [C, H, W] tensors or a [B, C, H, W] batch, already normalised unless
    `image_mean`/`image_std` are given. `rcnn_kwargs` go to `FasterRCNN` unchanged (RPN/ROI
    sampling and NMS parameters, `box_roi_pool`, ...), with torchvision's defaults.
    """

    def __init__(self, feature_model: FeatureModel, num_classes: int, *, fpn_channels: int = 256,
                 stage_norms: bool = False, anchor_sizes: Optional[Sequence[int]] = None,
                 aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), representation_size: int = 1024,
                 image_mean: Optional[Sequence[float]] = None, image_std: Optional[Sequence[float]] = None,
                 **rcnn_kwargs):
        size, chans = feature_model.img_size, feature_model.in_chans
        backbone = StagePyramid(feature_model, fpn_channels, stage_norms)
        sizes = tuple(anchor_sizes) if anchor_sizes is not None else default_anchor_sizes(size)
        if len(sizes) != len(LEVELS) + 1:
            raise UsageError(f"anchor_sizes needs one size per level (5: '0'..'3', 'pool'), got {sizes}")
        anchors = AnchorGenerator(tuple((s,) for s in sizes), (tuple(aspect_ratios),) * len(sizes))
        pool = rcnn_kwargs.get("box_roi_pool")
        resolution = pool.output_size[0] if pool is not None else 7
        super().__init__(
            backbone, num_classes=None, min_size=size, max_size=size,
            image_mean=list(image_mean) if image_mean is not None else [0.0] * chans,
            image_std=list(image_std) if image_std is not None else [1.0] * chans,
            rpn_anchor_generator=anchors,
            box_head=TwoMLPHead(fpn_channels * resolution ** 2, representation_size),
            box_predictor=FastRCNNPredictor(representation_size, num_classes + 1),
            fixed_size=(size, size), size_divisible=1, **rcnn_kwargs)
        self.num_classes = num_classes
        # Box math in float32 under bf16 autocast: torchvision decodes boxes in the dtype of the predicted
        # offsets (anchors and proposals cast to it), and bf16 keeps 8 significant bits (517.3 -> 516 px).
        # The heads' outputs are cast back to float32, as detectron2 does; hooks keep the state-dict keys.
        self.rpn.head.register_forward_hook(_float32_outputs)
        self.roi_heads.box_predictor.register_forward_hook(_float32_outputs)

    @property
    def feature_model(self) -> FeatureModel:
        """The wrapped `FeatureModel` (its `stage_inputs` pre-hooks reach the backbone stages)."""
        return self.backbone.body

    # -- training ----------------------------------------------------------------------------
    def deployable_state(self) -> Dict[str, torch.Tensor]:
        """The whole detector's weights (backbone, FPN, RPN, ROI heads)."""
        return self.state_dict()

    def load_deployable_state(self, state: Dict[str, torch.Tensor]):
        self.load_state_dict(state)

    def forward_train(self, images, targets: List[Dict[str, torch.Tensor]]) -> DetectionStep:
        """One training pass: torchvision's losses (equal to `forward`'s under the same RNG state)
        plus the intermediate results distillers need. Training mode only."""
        if not self.training:
            raise RuntimeError("Detector.forward_train needs training mode (the RPN samples anchors "
                               "and computes losses only then); use forward_features/roi_class_logits in eval")
        _check_targets(targets)
        batch, targets = self.transform(images, targets)
        stages, pyramid = self.backbone.forward_with_stages(batch.tensors)
        proposals, rpn_losses = self.rpn(batch, pyramid, targets)
        proposals, _, labels, regression_targets = self.roi_heads.select_training_samples(proposals, targets)
        out = self.roi_head_outputs(pyramid, proposals, batch.image_sizes)
        loss_classifier, loss_box_reg = fastrcnn_loss(out.class_logits, out.box_regression, labels,
                                                      regression_targets)
        losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg, **rpn_losses}
        return DetectionStep(losses, stages, pyramid, proposals, batch.image_sizes, out.class_logits,
                             out.box_regression, labels)

    # -- pieces for distillers ---------------------------------------------------------------
    def forward_features(self, images) -> Tuple[List[torch.Tensor], Pyramid, List[Tuple[int, int]]]:
        """(stage features, FPN levels, image sizes) of raw images, through this detector's own
        transform; for a teacher whose ROI head then runs on a student's proposals."""
        batch, _ = self.transform(images)
        stages, pyramid = self.backbone.forward_with_stages(batch.tensors)
        return stages, pyramid, batch.image_sizes

    def roi_head_outputs(self, pyramid: Pyramid, proposals: List[torch.Tensor],
                         image_sizes: List[Tuple[int, int]]) -> RoiOutputs:
        """This detector's box pooling, box head and predictor on the given proposals (per image,
        [Ri, 4] x1y1x2y2 in this detector's input pixels)."""
        heads = self.roi_heads
        features = heads.box_head(heads.box_roi_pool(pyramid, proposals, image_sizes))
        class_logits, box_regression = heads.box_predictor(features)
        return RoiOutputs(class_logits, box_regression, features)

    def roi_class_logits(self, pyramid: Pyramid, proposals: List[torch.Tensor],
                         image_sizes: List[Tuple[int, int]]) -> torch.Tensor:
        """[sum Ri, K+1] class logits of this detector's ROI head on the given proposals."""
        return self.roi_head_outputs(pyramid, proposals, image_sizes).class_logits


def _float32_outputs(module, inputs, output):
    """A forward hook: the module's tensors (in lists and tuples too) as float32."""
    if isinstance(output, torch.Tensor):
        return output.float()
    return type(output)(_float32_outputs(module, inputs, o) for o in output)


def _check_targets(targets):
    """Shapes and dtypes only. Unlike torchvision's forward, boxes without area are not looked for:
    that costs a host sync per step, and kdbench's COCO reader already leaves them out (they would
    make the step's losses non-finite, which the engine catches)."""
    if targets is None:
        raise ValueError("training needs targets")
    for i, t in enumerate(targets):
        boxes = t["boxes"]
        if boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"target {i}: boxes must be [N, 4], got {tuple(boxes.shape)}")
        if not boxes.is_floating_point() or t["labels"].dtype != torch.int64:
            raise TypeError(f"target {i}: boxes must be float and labels int64")


def build_detector(backbone_name: str, *, num_classes: int, img_size: int, in_chans: int = 3,
                   fpn_channels: int = 256, freeze_bn: bool = False, **rcnn_kwargs) -> Detector:
    """A `Detector` on the timm model `backbone_name` (any kdbench member or supported timm name),
    built for the square canvas `img_size`, with `num_classes` foreground classes. The backbone has
    no classifier (`num_classes=0`); `freeze_bn` turns its BatchNorm layers into frozen affine maps
    (their statistics and scales become buffers). Other keywords go to `Detector` (and `FasterRCNN`)."""
    feature_model = create_feature_model(backbone_name, num_classes=0, in_chans=in_chans, img_size=img_size)
    if freeze_bn:
        feature_model.model = freeze_batch_norm_2d(feature_model.model)
    return Detector(feature_model, num_classes, fpn_channels=fpn_channels, **rcnn_kwargs)
