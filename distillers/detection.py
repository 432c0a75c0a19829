"""Distillers on detection (issue 17; WIP): the student is a `kdbench.detection.model.Detector`, the
batch's targets are lists of {"boxes", "labels"} and the detector's own losses are the task loss.

- `vanilla`: the detector trained alone (also how detection teachers are trained).
- `kd`: KD on the ROI head's class logits of the proposals the student sampled; the teacher's
  ROI head runs on the teacher's pyramid for the same proposals, as the official PAT detection code
  (`detection/model/rcnn.py`) does. Background is class 0 in both (torchvision's order).
"""

import torch

from kdbench.registry import register_distiller

from .base import Distiller, DistillOutput, TaskConfig
from .kd import KDConfig
from .losses import kd_loss, standardize_logits


class DetectionDistiller(Distiller):
    """Base of the detection methods: `forward(images, targets)` returns no logits (the curves then
    carry no training top-1) and the detector's losses under their torchvision names."""

    def detector_losses(self, step):
        return {k: self.cfg.gt_weight * v for k, v in step.losses.items()}


@register_distiller("vanilla", task="detection")
class DetectionVanilla(DetectionDistiller):
    display_name = "From scratch"
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
        z_s = step.class_logits
        with torch.no_grad():
            _, pyramid, sizes = self.teacher.forward_features(images)
            z_t = self.teacher.roi_class_logits(pyramid, step.proposals, sizes)
        if self.cfg.logit_standardization:
            z_s, z_t = standardize_logits(z_s), standardize_logits(z_t)
        losses = self.detector_losses(step)
        losses["kd"] = self.cfg.kd_weight * kd_loss(z_s, z_t, self.cfg.temperature)
        return DistillOutput(None, losses)
