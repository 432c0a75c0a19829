"""The Distiller base class: a student, a frozen teacher, and named weighted losses."""

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Optional

import torch
from torch import nn

from kdbench.models import FeatureModel
from kdbench.validators import check, non_negative, positive


@dataclass
class NoConfig:
    """A distiller without hyperparameters."""


@dataclass
class TaskConfig:
    """Weight of the ground-truth loss; every distiller config extends this.

    Its checks hold for every method and task, so subclasses call `super().__post_init__()` first:
    numbers are finite, loss weights (fields named `*weight`) are >= 0, a `temperature` is > 0."""

    gt_weight: float = 1.0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            check(math.isfinite(value), f"distiller.{f.name}", value, "a finite number")
            if f.name.endswith("weight"):
                non_negative(f"distiller.{f.name}", value)
            elif f.name == "temperature":
                positive(f"distiller.{f.name}", value)


def check_stages(stages, name="stages"):
    """Config validation shared by the feature distillers: a non-empty set of stages 1-4."""
    ok = stages and all(s in (1, 2, 3, 4) for s in stages) and len(set(stages)) == len(stages)
    check(ok, f"distiller.{name}", list(stages), "distinct stage numbers among 1, 2, 3, 4")


class DistillOutput(NamedTuple):
    logits: torch.Tensor                 # student logits
    losses: Dict[str, torch.Tensor]      # name -> weighted scalar loss; the loop sums them


class Distiller(nn.Module):
    """Base of every method.

    Invariants: the teacher is frozen (`requires_grad=False`) and in eval mode whatever
    `train()` is called with; every parameter outside `student` and `teacher` is an extra
    (training-only) parameter; `student_state()` is the deployable student.

    Subclasses set `Config` (a dataclass of hyperparameters with defaults), implement
    `forward(images, labels) -> DistillOutput`, and build extra modules in `__init__` from
    `self.student.stage_specs` / `self.teacher.stage_specs` (never from model classes).
    """

    Config = TaskConfig
    display_name = ""                   # the paper's name, in tables people read ("" = the registry name)
    requires_teacher = True
    level = "logits"                    # what reaches the student: "logits" (outputs), "features" (spatial
                                        # intermediate features; findings compare the two), "none"
    find_unused_parameters = False      # DDP: set where some parameters skip a step (cheaper: `idle_parameters`)
    needs_sample_index = False          # forward(images, labels, index=...): each sample's dataset index, and
                                        # `bind_training_set(labels)` once before training (e.g. CRD's memory)

    def __init__(self, student: FeatureModel, teacher: Optional[FeatureModel], cfg, *,
                 num_classes: int, criterion: Callable):
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.cfg = cfg
        self.num_classes = num_classes
        self.criterion = criterion
        self.epoch, self.epochs = 0, 1
        self.training_set_size = 0          # set by `bind_training_set` (methods with `needs_sample_index`)
        # The epoch as forward reads it: torch.compile guards on a Python int read there and would
        # recompile every epoch, not on a tensor. Not persistent: the loop sets it every epoch.
        self.register_buffer("epoch_tensor", torch.zeros((), dtype=torch.long), persistent=False)
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def set_progress(self, epoch: int, epochs: int):
        """Called by the loop at the start of each epoch (0-based), for warm-ups. `forward` reads the
        epoch from `epoch_tensor` (see `warmup`), never from the int `self.epoch`."""
        self.epoch, self.epochs = epoch, epochs
        self.epoch_tensor.fill_(epoch)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> DistillOutput:
        raise NotImplementedError

    # -- helpers for subclasses ---------------------------------------------------------
    def warmup(self, epochs: float, weight: float = 1.0):
        """`weight` x the linear loss warm-up factor min(1, (epoch + 1) / epochs), per epoch as in
        ReviewKD/DKD: `weight` itself when there is no warm-up, else a 0-d fp32 tensor on the model's
        device, computed in fp64 like the Python float it replaces (the same bits times an fp32 loss)."""
        if epochs <= 0:
            return weight
        ramp = torch.clamp((self.epoch_tensor.double() + 1) / epochs, max=1.0)
        return (weight * ramp).float()

    def bind_training_set(self, labels: torch.Tensor):
        """Called once, before training or resuming, by methods with `needs_sample_index`: the label of
        every training sample by dataset index (their state may be sized by it)."""
        self.training_set_size = len(labels)

    def constant_names(self) -> List[str]:
        """Parameters and buffers (names in this module) that never change in training: the frozen
        teacher's, and a method's constant tables. DDP leaves them out of its per-step buffer broadcast."""
        if self.teacher is None:
            return []
        return [f"teacher.{n}" for n, _ in (*self.teacher.named_parameters(), *self.teacher.named_buffers())]

    def training_state_bytes(self, num_train: int) -> int:
        """Bytes of training state beyond parameters and optimizer state that grow with the training set
        (CRD's memory bank), for `num_train` samples; 0 for most methods."""
        return 0

    def idle_parameters(self, batch: int) -> List[nn.Parameter]:
        """Parameters that the next training step (on `batch` images) uses with a zero weight only, so
        that DDP sees every parameter in the graph without `find_unused_parameters`. The loop clears
        their gradients after backward: the optimizer then skips them as if they had sat out."""
        return []

    def gt_loss(self, logits, labels):
        return self.cfg.gt_weight * self.criterion(logits, labels)

    @torch.no_grad()
    def teacher_logits(self, images):
        return self.teacher.logits(images)

    @torch.no_grad()
    def teacher_features(self, images):
        """(logits, [f1..f4]) of the frozen teacher, without a graph."""
        return self.teacher(images)

    # -- parameters and state ----------------------------------------------------------
    def extra_named_parameters(self):
        return [(n, p) for n, p in self.named_parameters()
                if not n.startswith(("student.", "teacher."))]

    @property
    def num_extra_params(self) -> int:
        return sum(p.numel() for _, p in self.extra_named_parameters())

    @property
    def num_student_params(self) -> int:
        return sum(p.numel() for p in self.student.parameters())

    def trainable_state(self) -> Dict[str, torch.Tensor]:
        """Everything a checkpoint needs: student, extra modules and buffers, never the teacher."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}

    def load_trainable_state(self, state: Dict[str, torch.Tensor]):
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("teacher.")]
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match the distiller: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")

    def student_state(self) -> Dict[str, torch.Tensor]:
        return self.student.deployable_state()
