"""ReviewKD (Chen et al., CVPR 2021), heterogeneous: attention-based fusion (ABF) of the student's
stages from deep to shallow, each output aligned to its teacher stage, trained with the
hierarchical context loss (algorithms.md §2.4)."""

from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.registry import register_distiller
from kdbench.validators import at_least, in_range, positive

from .adapters import MapAligner, to_map
from .base import Distiller, DistillOutput, TaskConfig, check_stages
from .losses import hcl_loss, kd_loss


@dataclass
class ReviewKDConfig(TaskConfig):
    """`feat_weight` is ReviewKD's per-pair `kd_loss_weight` (0.6-8 in its scripts; 1 as in PAT).
    The loss ramps up linearly over the first `warmup_fraction` of the epochs (ReviewKD: 20 of
    240). `kd_weight > 0` adds the optional KL term (ReviewKD's `--use-kl`, T=4)."""

    feat_weight: float = 1.0
    mid_channels: int = 256
    warmup_fraction: float = 20 / 240
    kd_weight: float = 0.0
    temperature: float = 4.0
    stages: Tuple[int, ...] = (1, 2, 3, 4)

    def __post_init__(self):
        check_stages(self.stages)
        at_least("distiller.mid_channels", self.mid_channels, 1)
        in_range("distiller.warmup_fraction", self.warmup_fraction, 0, 1)
        positive("distiller.temperature", self.temperature)


class ABF(nn.Module):
    """1x1 conv + BN to `mid` channels; when a deeper residual is given, a 2-channel sigmoid
    attention mixes it (nearest-resized) with this stage; then the shape aligner to the teacher
    stage (ReviewKD's 3x3 conv on equal grids; patchify/unpatchify otherwise) + BN."""

    def __init__(self, s_spec, t_spec, mid: int, fuse: bool):
        super().__init__()
        self.s_spec = s_spec
        self.reduce = nn.Sequential(nn.Conv2d(s_spec.channels, mid, 1, bias=False), nn.BatchNorm2d(mid))
        self.att = nn.Sequential(nn.Conv2d(2 * mid, 2, 1), nn.Sigmoid()) if fuse else None
        self.out = nn.Sequential(MapAligner(mid, s_spec.grid, t_spec.channels, t_spec.grid, same_grid_kernel=3,
                                            bias=False), nn.BatchNorm2d(t_spec.channels))
        for conv in (self.reduce[0], self.out[0].proj):
            nn.init.kaiming_uniform_(conv.weight, a=1)

    def forward(self, feat, residual=None):
        x = self.reduce(to_map(feat, self.s_spec))
        if self.att is not None:
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            a = self.att(torch.cat([x, residual], dim=1))
            x = x * a[:, :1] + residual * a[:, 1:]
        return self.out(x), x


@register_distiller("reviewkd")
class ReviewKD(Distiller):
    """Loss: gt + warm-up * feat_weight * sum_stages HCL(ABF_i, teacher stage i) (+ optional KD)."""

    Config = ReviewKDConfig

    def __init__(self, student, teacher, cfg, **kw):
        super().__init__(student, teacher, cfg, **kw)
        s_specs, t_specs = student.stage_specs, teacher.stage_specs
        self.order = sorted(cfg.stages, reverse=True)          # deepest first: the review path
        self.abfs = nn.ModuleDict({str(s): ABF(s_specs[s - 1], t_specs[s - 1], cfg.mid_channels, fuse=k > 0)
                                   for k, s in enumerate(self.order)})

    def forward(self, images, labels):
        cfg = self.cfg
        logits, feats = self.student(images)
        t_logits, t_feats = self.teacher_features(images)
        t_specs, residual, feat = self.teacher.stage_specs, None, 0.0
        for s in self.order:
            out, residual = self.abfs[str(s)](feats[s - 1], residual)
            feat = feat + hcl_loss(out, to_map(t_feats[s - 1], t_specs[s - 1]))
        ramp = self.warmup(cfg.warmup_fraction * self.epochs, cfg.feat_weight)
        losses = {"gt": self.gt_loss(logits, labels), "hcl": ramp * feat}
        if cfg.kd_weight:
            losses["kd"] = cfg.kd_weight * kd_loss(logits, t_logits, cfg.temperature)
        return DistillOutput(logits, losses)
