"""FitNet (Romero et al., 2015), heterogeneous: per-stage aligners + MSE (algorithms.md §2.3)."""

import math
from dataclasses import dataclass
from typing import Tuple

import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from kdbench.models import StageSpec
from kdbench.registry import register_distiller
from kdbench.validators import opt_in, positive

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
    # standardise each position of the teacher's feature over its channels (zero mean, unit variance,
    # no affine) before the MSE, so the target's scale no longer depends on the teacher's family
    target_norm: bool = opt_in(False)

    def __post_init__(self):
        super().__post_init__()
        check_stages(self.stages)
        positive("distiller.temperature", self.temperature)


@register_distiller("fitnet")
class FitNet(Distiller):
    """Each student stage is mapped onto the teacher stage's grid and channels by one linear
    layer (1x1 conv, patchify or unpatchify, chosen from the stage specs); prefix tokens are
    left out on both sides. Loss: sum over stages of the MSE to the teacher's stage feature."""
    display_name = "FitNet"
    level = "features"

    Config = FitNetConfig

    def __init__(self, student, teacher, cfg, **kw):
        super().__init__(student, teacher, cfg, **kw)
        s_specs, t_specs = student.stage_specs, teacher.stage_specs
        self.aligners = nn.ModuleDict({str(i): StageAligner(s_specs[i - 1], t_specs[i - 1]) for i in cfg.stages})
        for i in cfg.stages:
            official_init(self.aligners[str(i)], t_specs[i - 1])

    def forward(self, images, labels):
        logits, feats = self.student(images)
        t_logits, t_feats = self.teacher_features(images)
        t_specs = self.teacher.stage_specs
        feat = sum(F.mse_loss(self.aligners[str(i)](feats[i - 1]).float(), self.stage_target(t_feats[i - 1], t_specs[i - 1]))
                   for i in self.cfg.stages)
        losses = {"gt": self.gt_loss(logits, labels), "fitnet": self.cfg.feat_weight * feat}
        if self.cfg.kd_weight:
            losses["kd"] = self.cfg.kd_weight * kd_loss(logits, t_logits, self.cfg.temperature)
        return DistillOutput(logits, losses)

    def stage_target(self, feat, spec: StageSpec):
        """The teacher's stage feature as the NCHW map the aligned student feature is compared with."""
        t = to_map(feat, spec).float()
        return standardise_channels(t) if self.cfg.target_norm else t


def standardise_channels(x, eps: float = 1e-6):
    """(B, C, H, W) standardised over C at every position (a layer norm without affine)."""
    return F.layer_norm(x.movedim(1, -1), x.shape[1:2], eps=eps).movedim(-1, 1)


@dataclass
class FitNetNormConfig(FitNetConfig):
    """FitNetConfig with the standardised teacher target (`target_norm`)."""

    target_norm: bool = True


@register_distiller("fitnet+norm")
class FitNetNorm(FitNet):
    """`fitnet --set distiller.target_norm=true` as its own leaderboard column: the same aligners and
    MSE against a per-position standardised teacher feature (the budget study's test of whether
    feature losses stop collapsing on the Mixer teacher when the target's scale is normalised)."""

    display_name = "FitNet (norm. target)"
    Config = FitNetNormConfig


def official_init(aligner: StageAligner, teacher: StageSpec):
    """Initialise `aligner` as the official FitNets do: both (OFA-KD's and the PAT repository's
    heterogeneous one) apply `init_weights` to their aligners, which acts on the module that the
    official code builds for the pair's shapes, so the equivalent here depends on that module:

    - a Linear (token student, unless its tokens are merged onto a coarser map teacher):
      trunc-normal(0.02) weight, zero bias;
    - a conv (map student: 1x1, patch-embed or 1x1 before unpatchify; merged tokens: 1x1):
      kaiming-normal (ReLU gain) over that conv's fan_out; the bias keeps PyTorch's default, which
      `init_weights` leaves alone. Merged tokens go through a 1x1 conv officially, whose fan_out
      is the teacher's width, not this patchify conv's width x kernel area.
    """
    proj = aligner.align.proj
    merged = proj.stride[0] > 1
    tokens = aligner.student.layout == "tokens"
    if tokens and not (merged and teacher.layout == "map"):
        trunc_normal_(proj.weight, std=0.02)
        if proj.bias is not None:
            nn.init.zeros_(proj.bias)
        return
    fan_out = proj.out_channels * (1 if tokens else proj.kernel_size[0] * proj.kernel_size[1])
    nn.init.normal_(proj.weight, 0.0, math.sqrt(2.0 / fan_out))
