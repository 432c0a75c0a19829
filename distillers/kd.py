"""KD (Hinton et al., 2015): cross-entropy plus the temperature-scaled KL to the teacher."""

from dataclasses import dataclass

from kdbench.registry import register_distiller
from kdbench.validators import opt_in, positive

from .base import Distiller, DistillOutput, TaskConfig
from .losses import kd_loss, standardize_logits


@dataclass
class KDConfig(TaskConfig):
    """Defaults are the OFA/PAT code's (T=1, weights 1; algorithms.md §2.2); the classic
    Hinton setting is `--set distiller.temperature=4`."""

    kd_weight: float = 1.0
    temperature: float = 1.0
    logit_standardization: bool = opt_in(False)   # LSKD: z-score both sides' logits first

    def __post_init__(self):
        super().__post_init__()
        positive("distiller.temperature", self.temperature)


@register_distiller("kd")
class KD(Distiller):
    display_name = "KD"
    Config = KDConfig

    def forward(self, images, labels):
        logits = self.student.logits(images)
        z_s, z_t = logits, self.teacher_logits(images)
        if self.cfg.logit_standardization:
            z_s, z_t = standardize_logits(z_s), standardize_logits(z_t)
        return DistillOutput(logits, {
            "gt": self.gt_loss(logits, labels),
            "kd": self.cfg.kd_weight * kd_loss(z_s, z_t, self.cfg.temperature),
        })
