"""Built-in distillers; each module registers itself with `@register_distiller`."""

from . import crd, detection, detection_pat, dist, dkd, fitnet, kd, lskd, ofa, pat, reviewkd, rsd, vanilla  # noqa: F401
from .base import Distiller, DistillOutput, NoConfig, TaskConfig

__all__ = ["Distiller", "DistillOutput", "NoConfig", "TaskConfig"]
