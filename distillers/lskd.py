"""KD with logit standardisation (LSKD: Sun et al., "Logit Standardization in Knowledge
Distillation", CVPR 2024, arXiv 2403.01427) as its own leaderboard column, `kd+ls`.

The same loss as `kd --set distiller.logit_standardization=true`, at the paper's settings: base
temperature 2 and KD weight 9 (its CIFAR-100 configs; the cross-entropy weight stays 1). The
switch also exists on `dkd` and `ofa` (their logit terms) and on `pat` (its KD term).
"""

from dataclasses import dataclass

from kdbench.registry import register_distiller

from .kd import KD, KDConfig


@dataclass
class LSKDConfig(KDConfig):
    """KDConfig at LSKD's defaults."""

    kd_weight: float = 9.0
    temperature: float = 2.0
    logit_standardization: bool = True


@register_distiller("kd+ls")
class LSKD(KD):
    display_name = "KD+LS"
    Config = LSKDConfig
