"""DIST (Huang et al., NeurIPS 2022): the student matches the teacher's inter-class relations (each
sample's class distribution) and intra-class relations (each class's scores over the batch), by
Pearson correlation rather than KL, so that it is free to differ in scale and shift."""

from dataclasses import dataclass

from kdbench.registry import register_distiller
from kdbench.validators import non_negative

from .base import Distiller, DistillOutput, TaskConfig
from .losses import dist_loss


@dataclass
class DISTConfig(TaskConfig):
    """The OFA-KD/RSD code's defaults (`--dist-beta 1 --dist-gamma 1 --dist-tau 1`, `--kd-loss-weight 1`);
    the DIST paper's CIFAR setting is beta = gamma = 2, tau = 4."""

    kd_weight: float = 1.0
    beta: float = 1.0             # inter-class relation (rows)
    gamma: float = 1.0            # intra-class relation (columns)
    temperature: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        for name in ("beta", "gamma"):
            non_negative(f"distiller.{name}", getattr(self, name))


@register_distiller("dist")
class DIST(Distiller):
    display_name = "DIST"
    Config = DISTConfig

    def forward(self, images, labels):
        logits = self.student.logits(images)
        c = self.cfg
        return DistillOutput(logits, {
            "gt": self.gt_loss(logits, labels),
            "dist": c.kd_weight * dist_loss(logits, self.teacher_logits(images), c.beta, c.gamma, c.temperature),
        })
