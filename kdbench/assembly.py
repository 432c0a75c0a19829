"""What a run is assembled from: its training criterion and its distiller (a fresh student, the
frozen teacher, the method). Below the loop (engine) and the cost counters (flops, plan, bench), which
all build distillers the same way."""

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .config import RunConfig
from .data import DatasetInfo, dataset_sizes
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
        to_training_layout(fm, run)
    return distiller


def bind_synthetic_training_set(distiller, run: RunConfig, info: DatasetInfo, at_most: Optional[int] = None):
    """For steps on synthetic batches (timing, FLOP counts): a method that indexes samples is bound to
    a training set of the run's real size (or `at_most` samples: FLOPs do not depend on it), labels
    cycling through the classes, so its state (CRD's memory bank) has its real size."""
    if distiller.needs_sample_index:
        n = info.num_train or dataset_sizes(run.data)[0]
        n = min(n, at_most) if at_most else n
        distiller.bind_training_set(torch.arange(n, device=_device_of(distiller)) % info.num_classes)


def sample_inputs(distiller, batch_size: int, device, step: int = 0) -> dict:
    """The forward's keyword inputs beyond the batch on a synthetic batch: each sample's dataset index
    (consecutive, from `step` x `batch_size`) for methods with `needs_sample_index`, else none."""
    if not distiller.needs_sample_index:
        return {}
    return {"index": (torch.arange(batch_size, device=device) + step * batch_size) % distiller.training_set_size}


def _device_of(module) -> torch.device:
    return next(module.parameters()).device


def to_training_layout(model, run: RunConfig):
    """channels_last where the recipe and the model's family want it: the layout a run trains and
    scores in (a re-verified teacher is scored in it again)."""
    if isinstance(model, FeatureModel) and run.recipe.channels_last and model.family.channels_last:
        model.to(memory_format=torch.channels_last)
