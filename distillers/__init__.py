"""Built-in distillers; each module registers itself with `@register_distiller`."""

from . import kd, vanilla  # noqa: F401
from .base import Distiller, DistillOutput, NoConfig, TaskConfig

__all__ = ["Distiller", "DistillOutput", "NoConfig", "TaskConfig"]
