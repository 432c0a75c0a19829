"""DKD (Zhao et al., CVPR 2022): KD decoupled into target-class and non-target-class terms."""

from dataclasses import dataclass

from kdbench.registry import register_distiller
from kdbench.validators import non_negative, positive

from .base import Distiller, DistillOutput, TaskConfig
from .losses import dkd_loss


@dataclass
class DKDConfig(TaskConfig):
    """Defaults are the OFA/PAT code's (alpha 1, beta 2, T 1; algorithms.md §2.7); the DKD paper's
    CIFAR setting is beta 8, T 4 with a 20-epoch warm-up (`warmup_epochs=20`)."""

    kd_weight: float = 1.0
    alpha: float = 1.0
    beta: float = 2.0
    temperature: float = 1.0
    warmup_epochs: float = 0.0     # the loss weight ramps linearly over these epochs (0: off)

    def __post_init__(self):
        positive("distiller.temperature", self.temperature)
        non_negative("distiller.warmup_epochs", self.warmup_epochs)


@register_distiller("dkd")
class DKD(Distiller):
    Config = DKDConfig

    def forward(self, images, labels):
        cfg = self.cfg
        logits = self.student.logits(images)
        t_logits = self.teacher_logits(images)
        dkd = dkd_loss(logits, t_logits, labels, cfg.alpha, cfg.beta, cfg.temperature)
        return DistillOutput(logits, {"gt": self.gt_loss(logits, labels),
                                      "dkd": self.warmup(cfg.warmup_epochs, cfg.kd_weight) * dkd})
