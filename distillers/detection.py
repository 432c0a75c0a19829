"""Distillers on detection (issue 17; WIP): the student is a `kdbench.detection.model.Detector`, the
batch's targets are lists of {"boxes", "labels"} and the detector's own losses are the task loss.

- `vanilla`: the detector trained alone (also how detection teachers are trained).
- `kd`: KD on the ROI head's class logits of the proposals the student sampled; the teacher's
  ROI head runs on the teacher's pyramid for the same proposals, as the official PAT detection code
  (`detection/model/rcnn.py`) does (there without a weight: 1). Background is class 0 in both
  (torchvision's order; detectron2's is last, which KD does not see).
- `dkd`: DKD on the same ROI logits, the proposals' matched labels as targets (official: alpha 1,
  beta 0.25, T 1). Background is a class like any other, as officially.
- `fitnet`: the official detection FitNet (`detection/model/fitnet.py`): MSE between every FPN
  level of the student, through a 1x1 conv + BN + ReLU, and the teacher's, plus KD on the ROI logits.
- `reviewkd`: the official detection ReviewKD (`detection/model/reviewkd.py`): attention-based
  fusion over the five FPN levels, deepest first, HCL to the teacher's levels, weight 1, no KD.
- `ofa`: see `DetectionOFA`. `pat`: `distillers.detection_pat`.

Every method keeps the detector's four torchvision losses (times `gt_weight`) and adds its terms.
"""

from dataclasses import dataclass

from kdbench.validators import opt_in, positive

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.registry import register_distiller

from .adapters import init_weights
from .base import Distiller, DistillOutput, TaskConfig
from .kd import KDConfig
from .losses import dkd_loss, hcl_loss, kd_loss, ofa_loss, standardize_logits
from .reviewkd import ABF


class DetectionDistiller(Distiller):
    """Base of the detection methods: `forward(images, targets)` returns no logits (the curves then
    carry no training top-1) and the detector's losses under their torchvision names."""

    # the backbone's classifier norm (timm's final norm, in families whose last stage is read before
    # it) takes no part in a detector's losses: DDP must look for unused parameters
    find_unused_parameters = True

    def detector_losses(self, step):
        return {k: self.cfg.gt_weight * v for k, v in step.losses.items()}

    @torch.no_grad()
    def teacher_roi_logits(self, images, step):
        """The teacher's ROI class logits for the student's sampled proposals, on its own pyramid."""
        _, pyramid, sizes = self.teacher.forward_features(images)
        return self.teacher.roi_class_logits(pyramid, step.proposals, sizes)


@register_distiller("vanilla", task="detection")
class DetectionVanilla(DetectionDistiller):
    display_name = "From scratch"
    level = "none"
    Config = TaskConfig
    requires_teacher = False

    def forward(self, images, targets):
        step = self.student.forward_train(images, targets)
        return DistillOutput(None, self.detector_losses(step))


@register_distiller("kd", task="detection")
class DetectionKD(DetectionDistiller):
    display_name = "KD"
    Config = KDConfig

    def forward(self, images, targets):
        step = self.student.forward_train(images, targets)
        z_s, z_t = step.class_logits, self.teacher_roi_logits(images, step)
        if self.cfg.logit_standardization:
            z_s, z_t = standardize_logits(z_s), standardize_logits(z_t)
        losses = self.detector_losses(step)
        losses["kd"] = self.cfg.kd_weight * kd_loss(z_s, z_t, self.cfg.temperature)
        return DistillOutput(None, losses)


@dataclass
class DetectionDKDConfig(TaskConfig):
    """The official detection config's (model/config.py): alpha 1, beta 0.25, T 1, weight 1."""

    kd_weight: float = 1.0
    alpha: float = 1.0
    beta: float = 0.25
    temperature: float = 1.0
    logit_standardization: bool = opt_in(False)

    def __post_init__(self):
        super().__post_init__()
        positive("distiller.temperature", self.temperature)


@register_distiller("dkd", task="detection")
class DetectionDKD(DetectionDistiller):
    """DKD on the ROI class logits of the sampled proposals, their matched labels (0 = background)
    as the target classes."""

    display_name = "DKD"
    Config = DetectionDKDConfig

    def forward(self, images, targets):
        cfg, step = self.cfg, self.student.forward_train(images, targets)
        z_s, z_t = step.class_logits, self.teacher_roi_logits(images, step)
        if cfg.logit_standardization:
            z_s, z_t = standardize_logits(z_s), standardize_logits(z_t)
        losses = self.detector_losses(step)
        losses["dkd"] = cfg.kd_weight * dkd_loss(z_s, z_t, torch.cat(step.roi_labels), cfg.alpha, cfg.beta,
                                                 cfg.temperature)
        return DistillOutput(None, losses)


class LevelRegressor(nn.Module):
    """The official detection FitNet's ConvReg for two FPN levels of the same shape: a 1x1 conv, BN and
    ReLU (its other branches, for levels two-fold apart, do not occur when both detectors share the
    pyramid's strides; a level of another size is resized to the teacher's first)."""

    def __init__(self, s_channels: int, t_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(s_channels, t_channels, 1)
        self.bn = nn.BatchNorm2d(t_channels)

    def forward(self, x, size):
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return F.relu(self.bn(self.conv(x)))


@dataclass
class DetectionFitNetConfig(TaskConfig):
    """The official detection config's (configs/FitNet/*.yaml, model/config.py): every FPN level
    (0-3 and the pooled one), feature and KD weights 1, temperature 1."""

    feat_weight: float = 1.0
    kd_weight: float = 1.0
    temperature: float = 1.0


@register_distiller("fitnet", task="detection")
class DetectionFitNet(DetectionDistiller):
    """MSE between each student FPN level (regressed) and the teacher's, plus KD on the ROI logits."""

    display_name = "FitNet"
    level = "features"
    Config = DetectionFitNetConfig

    def __init__(self, student, teacher, cfg, **kw):
        super().__init__(student, teacher, cfg, **kw)
        c_s, c_t = student.backbone.out_channels, teacher.backbone.out_channels
        self.regressors = nn.ModuleList(LevelRegressor(c_s, c_t) for _ in range(5))
        self.regressors.apply(init_weights)

    def forward(self, images, targets):
        step = self.student.forward_train(images, targets)
        with torch.no_grad():
            _, t_pyramid, sizes = self.teacher.forward_features(images)
            z_t = self.teacher.roi_class_logits(t_pyramid, step.proposals, sizes)
        s_levels, t_levels = list(step.pyramid.values()), list(t_pyramid.values())
        feat = sum(F.mse_loss(reg(s, t.shape[-2:]), t) for reg, s, t in zip(self.regressors, s_levels, t_levels))
        losses = self.detector_losses(step)
        losses["feat"] = self.cfg.feat_weight * feat
        losses["kd"] = self.cfg.kd_weight * kd_loss(step.class_logits, z_t, self.cfg.temperature)
        return DistillOutput(None, losses)


@dataclass
class DetectionOFAConfig(TaskConfig):
    """The official detection config's (model/config.py, configs/OFA/*.yaml): eps 1, weight 1, T 1."""

    ofa_weight: float = 1.0
    eps: float = 1.0
    temperature: float = 1.0


@register_distiller("ofa", task="detection")
class DetectionOFA(DetectionDistiller):
    """The official detection OFA (`detection/model/ofakd.py`): one exit branch on the student's ROI
    box features (Linear, BN, Linear to K+1 classes) trained with OFA's target-enhanced loss against
    the teacher's ROI logits for the same proposals; no logit KD term (the official one is commented
    out: it gave NaN there)."""

    display_name = "OFA"
    Config = DetectionOFAConfig

    def __init__(self, student, teacher, cfg, **kw):
        super().__init__(student, teacher, cfg, **kw)
        width = student.roi_heads.box_head.fc7.out_features
        classes = student.roi_heads.box_predictor.cls_score.out_features
        self.branch = nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.Linear(width, classes))
        self.branch.apply(init_weights)

    def forward(self, images, targets):
        step = self.student.forward_train(images, targets)
        box_features = self.student.roi_head_outputs(step.pyramid, step.proposals, step.image_sizes).box_features
        z_t = self.teacher_roi_logits(images, step)
        labels = torch.cat(step.roi_labels)
        losses = self.detector_losses(step)
        losses["ofa"] = self.cfg.ofa_weight * ofa_loss(self.branch(box_features), z_t, labels, self.cfg.eps,
                                                       self.cfg.temperature)
        return DistillOutput(None, losses)


@dataclass
class DetectionReviewKDConfig(TaskConfig):
    """The official detection config's (model/config.py): weight 1; ABF width 256 (the FPN's)."""

    feat_weight: float = 1.0
    mid_channels: int = 256


@register_distiller("reviewkd", task="detection")
class DetectionReviewKD(DetectionDistiller):
    """ReviewKD over the FPN levels, deepest ("pool") first: each level's ABF fuses the previous
    one's output and is trained with HCL against the teacher's level of the same name. Unlike the
    official code, an ABF whose student and teacher levels differ in size resizes (the official
    assumes equal pyramids)."""

    display_name = "ReviewKD"
    level = "features"
    Config = DetectionReviewKDConfig

    def __init__(self, student, teacher, cfg, **kw):
        super().__init__(student, teacher, cfg, **kw)
        s_specs, t_specs = student.backbone.level_specs, teacher.backbone.level_specs
        self.abfs = nn.ModuleList(ABF(s, t, cfg.mid_channels, fuse=k > 0)
                                  for k, (s, t) in enumerate(zip(s_specs[::-1], t_specs[::-1])))

    def forward(self, images, targets):
        step = self.student.forward_train(images, targets)
        with torch.no_grad():
            _, t_pyramid, _ = self.teacher.forward_features(images)
        residual, feat = None, 0.0
        for abf, s, t in zip(self.abfs, list(step.pyramid.values())[::-1], list(t_pyramid.values())[::-1]):
            out, residual = abf(s, residual)
            feat = feat + hcl_loss(out, t)
        losses = self.detector_losses(step)
        losses["hcl"] = self.cfg.feat_weight * feat
        return DistillOutput(None, losses)
