"""DKD (Zhao et al., CVPR 2022): KD decoupled into target-class and non-target-class terms."""

from dataclasses import dataclass

from kdbench.registry import register_distiller
from kdbench.validators import non_negative, opt_in, positive

from .base import Distiller, DistillOutput, TaskConfig
from .losses import dkd_loss, standardize_logits


@dataclass
class DKDConfig(TaskConfig):
    """Defaults are the OFA/PAT code's (alpha 1, beta 2, T 1; algorithms.md §2.7); the DKD paper's
    CIFAR setting is beta 8, T 4 with a 20-epoch warm-up (`warmup_epochs=20`)."""

    kd_weight: float = 1.0
    alpha: float = 1.0
    beta: float = 2.0
    temperature: float = 1.0
    warmup_epochs: float = 0.0     # the loss weight ramps linearly over these epochs (0: off)
    logit_standardization: bool = opt_in(False)   # LSKD: z-score both sides' logits first

    def __post_init__(self):
        super().__post_init__()
        positive("distiller.temperature", self.temperature)
        non_negative("distiller.warmup_epochs", self.warmup_epochs)


@register_distiller("dkd")
class DKD(Distiller):
    display_name = "DKD"
    Config = DKDConfig

    def forward(self, images, labels):
        cfg = self.cfg
        logits = self.student.logits(images)
        z_s, z_t = logits, self.teacher_logits(images)
        if cfg.logit_standardization:
            z_s, z_t = standardize_logits(z_s), standardize_logits(z_t)
        dkd = dkd_loss(z_s, z_t, labels, cfg.alpha, cfg.beta, cfg.temperature)
        return DistillOutput(logits, {"gt": self.gt_loss(logits, labels),
                                      "dkd": self.warmup(cfg.warmup_epochs, cfg.kd_weight) * dkd})
