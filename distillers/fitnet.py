"""FitNet (Romero et al., 2015), heterogeneous: per-stage aligners + MSE (algorithms.md §2.3)."""

from dataclasses import dataclass
from typing import Tuple

from torch import nn
import torch.nn.functional as F

from kdbench.registry import register_distiller
from kdbench.validators import positive

from .adapters import StageAligner, to_map
from .base import Distiller, DistillOutput, TaskConfig, check_stages
from .losses import kd_loss


@dataclass
class FitNetConfig(TaskConfig):
    """Classic FitNet by default (`kd_weight=0`). The PAT repository's heterogeneous FitNet,
    which the papers' FitNet rows most likely used, adds KD: `--set distiller.kd_weight=1`."""

    feat_weight: float = 1.0
    kd_weight: float = 0.0
    temperature: float = 1.0
    stages: Tuple[int, ...] = (1, 2, 3, 4)

    def __post_init__(self):
        check_stages(self.stages)
        positive("distiller.temperature", self.temperature)


@register_distiller("fitnet")
class FitNet(Distiller):
    """Each student stage is mapped onto the teacher stage's grid and channels by one linear
    layer (1x1 conv, patchify or unpatchify, chosen from the stage specs); prefix tokens are
    left out on both sides. Loss: sum over stages of the MSE to the teacher's stage feature."""

    Config = FitNetConfig

    def __init__(self, student, teacher, cfg, **kw):
        super().__init__(student, teacher, cfg, **kw)
        s_specs, t_specs = student.stage_specs, teacher.stage_specs
        self.aligners = nn.ModuleDict({str(i): StageAligner(s_specs[i - 1], t_specs[i - 1]) for i in cfg.stages})

    def forward(self, images, labels):
        logits, feats = self.student(images)
        t_logits, t_feats = self.teacher_features(images)
        t_specs = self.teacher.stage_specs
        feat = sum(F.mse_loss(self.aligners[str(i)](feats[i - 1]).float(), to_map(t_feats[i - 1], t_specs[i - 1]).float())
                   for i in self.cfg.stages)
        losses = {"gt": self.gt_loss(logits, labels), "fitnet": self.cfg.feat_weight * feat}
        if self.cfg.kd_weight:
            losses["kd"] = self.cfg.kd_weight * kd_loss(logits, t_logits, self.cfg.temperature)
        return DistillOutput(logits, losses)
