"""ReviewKD (Chen et al., CVPR 2021), heterogeneous: attention-based fusion (ABF) of the student's
stages from deep to shallow, each output aligned to its teacher stage, trained with the
hierarchical context loss (algorithms.md §2.4). Levels and widths as mdistiller's ReviewKD
(`mdistiller/distillers/ReviewKD.py`): the pooled last stage is a fifth level, and the ABF width is
min(512, student's last-stage width)."""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.models import StageSpec
from kdbench.registry import register_distiller
from kdbench.validators import at_least, in_range, positive

from .adapters import MapAligner, to_map
from .base import Distiller, DistillOutput, TaskConfig, check_stages
from .losses import hcl_loss, kd_loss


@dataclass
class ReviewKDConfig(TaskConfig):
    """`feat_weight` is ReviewKD's per-pair `kd_loss_weight` (0.6-8 in its scripts; 1 as in PAT).
    `mid_channels` None (null) takes mdistiller's min(512, C), C the student's last-stage width.
    `pooled_level` adds mdistiller's fifth level: the spatial mean of the last stage, which the
    deepest stage's ABF then fuses with. The loss ramps up linearly over the first
    `warmup_fraction` of the epochs (ReviewKD: 20 of 240). `kd_weight > 0` adds the optional KL
    term (ReviewKD's `--use-kl`, T=4)."""

    feat_weight: float = 1.0
    mid_channels: Optional[int] = None
    pooled_level: bool = True
    warmup_fraction: float = 20 / 240
    kd_weight: float = 0.0
    temperature: float = 4.0
    stages: Tuple[int, ...] = (1, 2, 3, 4)

    def __post_init__(self):
        super().__post_init__()
        check_stages(self.stages)
        if self.mid_channels is not None:
            at_least("distiller.mid_channels", self.mid_channels, 1)
        in_range("distiller.warmup_fraction", self.warmup_fraction, 0, 1)
        positive("distiller.temperature", self.temperature)


POOL = "pool"       # the key of the pooled level


def pooled(feat: torch.Tensor, spec: StageSpec) -> torch.Tensor:
    """The spatial mean of a stage feature (prefix tokens left out) as an (N, C, 1, 1) map."""
    return to_map(feat, spec).mean(dim=(2, 3), keepdim=True)


def pooled_spec(spec: StageSpec) -> StageSpec:
    return StageSpec("map", spec.channels, (1, 1))


class ABF(nn.Module):
    """1x1 conv + BN to `mid` channels; when a deeper residual is given, a 2-channel sigmoid
    attention mixes it (nearest-resized) with this level; then the shape aligner to the teacher
    level (ReviewKD's 3x3 conv on equal grids; patchify/unpatchify otherwise) + BN. Reads an NCHW
    map; returns (output, fused map for the next level)."""

    def __init__(self, s_spec, t_spec, mid: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(s_spec.channels, mid, 1, bias=False), nn.BatchNorm2d(mid))
        self.att = nn.Sequential(nn.Conv2d(2 * mid, 2, 1), nn.Sigmoid()) if fuse else None
        self.out = nn.Sequential(MapAligner(mid, s_spec.grid, t_spec.channels, t_spec.grid, same_grid_kernel=3,
                                            bias=False), nn.BatchNorm2d(t_spec.channels))
        for conv in (self.reduce[0], self.out[0].proj):
            nn.init.kaiming_uniform_(conv.weight, a=1)

    def forward(self, feat, residual=None):
        x = self.reduce(feat)
        if self.att is not None:
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            a = self.att(torch.cat([x, residual], dim=1))
            x = x * a[:, :1] + residual * a[:, 1:]
        return self.out(x), x


@register_distiller("reviewkd")
class ReviewKD(Distiller):
    """Loss: gt + warm-up * feat_weight * sum over levels of HCL(ABF output, teacher level)
    (+ optional KD). Levels, deepest first: the pooled last stage (mdistiller's fifth level,
    `pooled_level`), then the stages; each ABF after the first fuses the previous one's output."""
    display_name = "ReviewKD"
    level = "features"

    Config = ReviewKDConfig

    def __init__(self, student, teacher, cfg, **kw):
        super().__init__(student, teacher, cfg, **kw)
        s_specs, t_specs = student.stage_specs, teacher.stage_specs
        mid = cfg.mid_channels if cfg.mid_channels is not None else min(512, s_specs[-1].channels)
        # deepest first: the review path
        self.order = ([POOL] if cfg.pooled_level else []) + [str(s) for s in sorted(cfg.stages, reverse=True)]
        specs = {str(s): (s_specs[s - 1], t_specs[s - 1]) for s in cfg.stages}
        specs[POOL] = (pooled_spec(s_specs[-1]), pooled_spec(t_specs[-1]))
        self.abfs = nn.ModuleDict({key: ABF(*specs[key], mid, fuse=k > 0) for k, key in enumerate(self.order)})

    def levels(self, feats, specs):
        """{level key: NCHW map} of one model's stage features, the pooled level included."""
        out = {str(s): to_map(feats[s - 1], specs[s - 1]) for s in self.cfg.stages}
        if self.cfg.pooled_level:
            out[POOL] = pooled(feats[-1], specs[-1])
        return out

    def forward(self, images, labels):
        cfg = self.cfg
        logits, feats = self.student(images)
        t_logits, t_feats = self.teacher_features(images)
        s_maps = self.levels(feats, self.student.stage_specs)
        t_maps = self.levels(t_feats, self.teacher.stage_specs)
        residual, feat = None, 0.0
        for key in self.order:
            out, residual = self.abfs[key](s_maps[key], residual)
            feat = feat + hcl_loss(out, t_maps[key])
        ramp = self.warmup(cfg.warmup_fraction * self.epochs, cfg.feat_weight)
        losses = {"gt": self.gt_loss(logits, labels), "hcl": ramp * feat}
        if cfg.kd_weight:
            losses["kd"] = cfg.kd_weight * kd_loss(logits, t_logits, cfg.temperature)
        return DistillOutput(logits, losses)
