"""RSD (Zhang et al., ICCV 2025, "Cross-Architecture Distillation Made Simple with Redundancy
Suppression"): the student's pooled pre-logit feature goes through a small projector (Linear ->
BatchNorm -> GELU -> Linear, both linears without bias, the hidden width gamma x the student's) to
the teacher's width, and the cross-correlation of the two batch-standardised features is pulled to
the identity: invariance on the diagonal, decorrelation (weight kappa) off it. No logit term."""

from dataclasses import dataclass

import torch
from torch import nn

from kdbench.registry import register_distiller
from kdbench.validators import at_least, check

from .adapters import init_weights
from .base import Distiller, DistillOutput, TaskConfig
from .losses import rsd_loss


@dataclass
class RSDConfig(TaskConfig):
    """The official defaults (`train.py`: `--rsd-stage -1 --rsd-loss-weight 0.1 --rsd-kappa 0.01
    --rsd-gamma 2`); the official code distils only the pooled feature (stage -1), as kdbench does."""

    rsd_weight: float = 0.1
    kappa: float = 0.01           # weight of the off-diagonal (decorrelation) terms
    gamma: int = 2                # projector hidden width, in multiples of the student's feature width

    def __post_init__(self):
        super().__post_init__()
        check(0 <= self.kappa <= 1, "distiller.kappa", self.kappa, "a number in [0, 1]")
        at_least("distiller.gamma", self.gamma, 1)


def rsd_projector(width_in: int, width_out: int, gamma: int) -> nn.Sequential:
    """The official projector (its paper's Architecture-Agnostic Decoupler), OFA's `init_weights`."""
    hidden = width_in * gamma
    projector = nn.Sequential(nn.Linear(width_in, hidden, bias=False), nn.BatchNorm1d(hidden),
                              nn.GELU(approximate="none"), nn.Linear(hidden, width_out, bias=False))
    projector.apply(init_weights)
    return projector


@register_distiller("rsd")
class RSD(Distiller):
    display_name = "RSD"
    level = "features"
    Config = RSDConfig

    def __init__(self, student, teacher, cfg, **kwargs):
        super().__init__(student, teacher, cfg, **kwargs)
        self.projector = rsd_projector(student.num_features, teacher.num_features, cfg.gamma)

    def forward(self, images, labels):
        logits, feature = self.student.pooled(images)
        with torch.no_grad():
            _, target = self.teacher.pooled(images)
        return DistillOutput(logits, {
            "gt": self.gt_loss(logits, labels),
            "rsd": self.cfg.rsd_weight * rsd_loss(self.projector(feature), target, self.cfg.kappa),
        })
