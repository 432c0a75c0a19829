"""Vanilla: the student trained alone on the labels (the from-scratch baseline)."""

from kdbench.registry import register_distiller

from .base import Distiller, DistillOutput, TaskConfig


@register_distiller("vanilla")
class Vanilla(Distiller):
    display_name = "From scratch"
    level = "none"
    Config = TaskConfig
    requires_teacher = False

    def forward(self, images, labels):
        logits = self.student.logits(images)
        return DistillOutput(logits, {"gt": self.gt_loss(logits, labels)})
