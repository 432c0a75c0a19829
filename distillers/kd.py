"""KD (Hinton et al., 2015): cross-entropy plus the temperature-scaled KL to the teacher."""

from dataclasses import dataclass

from kdbench.registry import register_distiller
from kdbench.validators import positive

from .base import Distiller, DistillOutput, TaskConfig
from .losses import kd_loss


@dataclass
class KDConfig(TaskConfig):
    """Defaults are the OFA/PAT code's (T=1, weights 1; algorithms.md §2.2); the classic
    Hinton setting is `--set distiller.temperature=4`."""

    kd_weight: float = 1.0
    temperature: float = 1.0

    def __post_init__(self):
        positive("distiller.temperature", self.temperature)


@register_distiller("kd")
class KD(Distiller):
    Config = KDConfig

    def forward(self, images, labels):
        logits = self.student.logits(images)
        teacher_logits = self.teacher_logits(images)
        return DistillOutput(logits, {
            "gt": self.gt_loss(logits, labels),
            "kd": self.cfg.kd_weight * kd_loss(logits, teacher_logits, self.cfg.temperature),
        })
