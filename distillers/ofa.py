"""OFA-KD (Hao et al., NeurIPS 2023): one exit branch per student stage, all trained to match
the teacher's logits with the target-enhanced OFA loss (algorithms.md §2.5)."""

from dataclasses import dataclass
from functools import partial
from typing import Tuple

import torch
from timm.layers import Mlp
from timm.models.vision_transformer import Block
from torch import nn

from kdbench.registry import register_distiller
from kdbench.validators import at_least, check, opt_in, positive

from .adapters import PatchMerging, init_weights, map_to_tokens, merges_to, split_prefix
from .base import Distiller, DistillOutput, TaskConfig, check_stages
from .losses import ofa_loss, standardize_logits


@dataclass
class OFAConfig(TaskConfig):
    """Defaults are the official code's. `eps` is one value for every branch and the logits, or
    one per stage plus a last one for the logits. `paper_form`: non-target weights p_t (paper)
    instead of p_t^eps (code). CIFAR MobileNetV2 students used `ofa_weight=0.1`, ImageNet
    DeiT-T->ResNet18 `eps=1.5` (§2.5)."""

    kd_weight: float = 1.0
    ofa_weight: float = 1.0
    eps: Tuple[float, ...] = (1.0,)
    temperature: float = 1.0
    stages: Tuple[int, ...] = (1, 2, 3, 4)
    paper_form: bool = False
    final_grid: int = 7          # token branches merge down to about this grid (OFA: 7)
    branch_heads: int = 4
    # The token branches' LayerNorm eps: the official code's timm 0.6.5 built its ViT blocks with
    # torch's LayerNorm (1e-5); timm 1.x's default is 1e-6. Hashed: records without it ran with 1e-6.
    branch_norm_eps: float = 1e-5
    logit_standardization: bool = opt_in(False)   # LSKD: z-score student (branch) and teacher logits

    def __post_init__(self):
        super().__post_init__()
        check_stages(self.stages)
        check(len(self.eps) in (1, len(self.stages) + 1), "distiller.eps", list(self.eps),
              f"1 or {len(self.stages) + 1} values (one per stage, then the logits)")
        positive("distiller.temperature", self.temperature)
        at_least("distiller.final_grid", self.final_grid, 1)
        positive("distiller.branch_norm_eps", self.branch_norm_eps)

    def eps_of(self, k: int) -> float:
        """eps of branch k (0-based), or of the logits for k == len(stages)."""
        return self.eps[0] if len(self.eps) == 1 else self.eps[k]


class SepConv(nn.Sequential):
    """Depthwise-separable stride-2 block of OFA's CNN branches (two dw+pw pairs, BN, ReLU)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            nn.Conv2d(c_in, c_in, 3, stride=2, padding=1, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_in, 1, bias=False), nn.BatchNorm2d(c_in), nn.ReLU(),
            nn.Conv2d(c_in, c_in, 3, stride=1, padding=1, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class MapBranch(nn.Module):
    """CNN student: (4 - stage) SepConvs (stage 4: a 1x1 conv) to max(D_s, D_t), GAP, Linear."""

    def __init__(self, spec, stage: int, width: int, num_classes: int):
        super().__init__()
        layers, c = [], spec.channels
        if stage == 4:
            layers.append(nn.Conv2d(c, width, 1))
        for i in range(4 - stage):
            last = i == 3 - stage
            layers.append(SepConv(c, width if last else 2 * c))
            c *= 2
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


def vit_block(width: int, heads: int, norm_eps: float = 1e-5) -> Block:
    """timm's ViT block with every default pinned to what the official OFA-KD code got from timm 0.6.5,
    so that a timm upgrade cannot change OFA silently: torch LayerNorm (eps 1e-5), exact GELU, MLP
    ratio 4, no qkv bias, no q/k norm, projection bias, no layer scale, no dropout or drop-path."""
    return Block(dim=width, num_heads=heads, mlp_ratio=4.0, qkv_bias=False, qk_norm=False, proj_bias=True,
                 proj_drop=0.0, attn_drop=0.0, init_values=None, drop_path=0.0,
                 act_layer=partial(nn.GELU, approximate="none"), norm_layer=partial(nn.LayerNorm, eps=norm_eps),
                 mlp_layer=Mlp)


class TokenBranch(nn.Module):
    """Token student: prefix tokens kept aside while the grid is 2x2-merged down to about
    `final_grid` (first merge to D_s), then max(4 - stage, 1) ViT blocks of width D_s; the
    feature is the first prefix (cls) token, or the token mean when there is none."""

    def __init__(self, spec, stage: int, width: int, num_classes: int, final_grid: int, heads: int,
                 norm_eps: float = 1e-5):
        super().__init__()
        self.spec = spec
        n = merges_to(min(spec.grid), final_grid)
        self.merges = nn.ModuleList(
            PatchMerging(spec.channels if i == 0 else width, width, act=(i == 0 or i < n - 1)) for i in range(n))
        # Widths differ without a merge (or on prefix tokens) only off paper scale: a linear map then.
        self.proj = nn.Linear(spec.channels, width) if n == 0 and spec.channels != width else nn.Identity()
        self.prefix_proj = (nn.Linear(spec.channels, width) if spec.prefix_tokens and spec.channels != width
                            else nn.Identity())
        self.blocks = nn.Sequential(*[vit_block(width, heads, norm_eps) for _ in range(max(4 - stage, 1))])
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        prefix, fmap = split_prefix(x, self.spec)
        tokens, grid = map_to_tokens(fmap), self.spec.grid
        for merge in self.merges:
            tokens, grid = merge(tokens, grid)
        tokens = self.proj(tokens)
        if prefix is not None:
            tokens = torch.cat([self.prefix_proj(prefix), tokens], dim=1)
        tokens = self.blocks(tokens)
        return self.head(tokens[:, 0] if prefix is not None else tokens.mean(dim=1))


@register_distiller("ofa")
class OFA(Distiller):
    """Loss: gt + kd_weight * OFA(z_s, z_t; eps_logits) + ofa_weight * sum_s OFA(branch_s(F_s), z_t; eps_s).
    The teacher is used for its logits only; the branches are training-only extras."""
    display_name = "OFA"

    Config = OFAConfig

    def __init__(self, student, teacher, cfg, *, num_classes, **kw):
        super().__init__(student, teacher, cfg, num_classes=num_classes, **kw)
        width = max(student.num_features, teacher.num_features)
        specs = student.stage_specs
        self.branches = nn.ModuleDict()
        for s in cfg.stages:
            spec = specs[s - 1]
            if spec.layout == "map":
                branch = MapBranch(spec, s, width, num_classes)
            else:
                branch = TokenBranch(spec, s, student.num_features, num_classes, cfg.final_grid,
                                     cfg.branch_heads, cfg.branch_norm_eps)
            branch.apply(init_weights)
            self.branches[str(s)] = branch

    def forward(self, images, labels):
        cfg = self.cfg
        logits, feats = self.student(images)
        t_logits = self.teacher_logits(images)
        losses = {"gt": self.gt_loss(logits, labels),
                  "kd": cfg.kd_weight * self._ofa(logits, t_logits, labels, len(cfg.stages))}
        branch = sum(self._ofa(self.branches[str(s)](feats[s - 1]), t_logits, labels, k)
                     for k, s in enumerate(cfg.stages))
        losses["ofa"] = cfg.ofa_weight * branch
        return DistillOutput(logits, losses)

    def _ofa(self, z_s, z_t, labels, k):
        if self.cfg.logit_standardization:
            z_s, z_t = standardize_logits(z_s), standardize_logits(z_t)
        return ofa_loss(z_s, z_t, labels, self.cfg.eps_of(k), self.cfg.temperature, self.cfg.paper_form)
