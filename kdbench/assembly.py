"""What a run is assembled from: its training criterion and its distiller (a fresh student, the
frozen teacher, the method). Below the loop (engine) and the cost counters (flops, plan, bench), which
all build distillers the same way."""

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .config import RunConfig
from .data import DatasetInfo
from .errors import UsageError
from .models import FeatureModel
from .registry import DISTILLERS
from .student_init import load_student_init, student_file
from .tasks import task_of


def make_criterion(label_smoothing: float) -> Callable:
    """CE with label smoothing for hard labels; soft-target CE for mixup/cutmix targets."""
    def criterion(logits, target):
        logits = logits.float()
        if target.dtype.is_floating_point:
            return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
        return F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    return criterion


def build_distiller(run: RunConfig, *, num_classes: int, in_chans: int, img_size: int,
                    teacher: Optional[FeatureModel], device: torch.device):
    """The run's distiller on `device`: a fresh student seeded by the run seed (so seeds pair across
    distillers; its backbone loaded from a checkpoint where `run.student_init` says), the given frozen teacher, channels_last where the recipe and family want it."""
    cls = DISTILLERS.get(run.distiller, run.task)
    if cls.requires_teacher and teacher is None:
        raise UsageError(f"distiller '{run.distiller}' needs a teacher")
    torch.manual_seed(run.seed)
    student = task_of(run.task).model(run.student, DatasetInfo("", num_classes, in_chans, img_size, 0, 0, ""), run)
    if run.student_init.source == "checkpoint":      # e.g. ImageNet weights for a detector's backbone
        load_student_init(getattr(student, "feature_model", student).model, student_file(run.student_init, run.student))
    distiller = cls(student, teacher if cls.requires_teacher else None, run.distiller_config,
                    num_classes=num_classes, criterion=make_criterion(run.recipe.label_smoothing))
    distiller.to(device)
    for fm in (student, distiller.teacher):
        if isinstance(fm, FeatureModel) and run.recipe.channels_last and fm.family.channels_last:
            fm.to(memory_format=torch.channels_last)
    return distiller
