"""Students that start from a checkpoint instead of from scratch (a preset's `student:` section).

PAT's detection students start from ImageNet weights (its configs' `MODEL.WEIGHTS`, an ImageNet
ResNet-18 / MobileNetV2 backbone); the `coco` preset does the same. The files are timm's own format
(what `timm.create_model(name, pretrained=True)` downloads, e.g. `timm/resnet18.tv_in1k`, or a
`CheckpointSaver` file), read offline from `student.checkpoint_dir` or `$KDBENCH_STUDENTS`. They load
into the student's timm backbone strictly, except the classifier: the checkpoint's is dropped when the
student has none (a detector's backbone) or one of another shape (other classes), and then stays as
initialised.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import torch

from .checkpoints import read_weights
from .errors import UsageError
from .models import checkpoint_filter
from .validators import one_of, unhashed


@dataclass(frozen=True)
class StudentInitConfig:
    """Where students start: `scratch` (seeded init) or `checkpoint` (one file per student model)."""

    source: str = "scratch"                              # scratch | checkpoint
    checkpoint_dir: Optional[str] = unhashed(None)      # $KDBENCH_STUDENTS if unset
    file_pattern: str = "{model}.pth"                    # {model}: the student's timm name in the run
    files: Dict[str, str] = field(default_factory=dict)  # model -> file, overrides the pattern

    def __post_init__(self):
        one_of("student.source", self.source, ("scratch", "checkpoint"))


def student_file(cfg: StudentInitConfig, model: str) -> Path:
    """The checkpoint file of student `model`; a UsageError when it is not there."""
    root = cfg.checkpoint_dir or os.environ.get("KDBENCH_STUDENTS")
    if not root:
        raise UsageError("students start from checkpoints (student.source=checkpoint): pass "
                         "--set student.checkpoint_dir=DIR or set $KDBENCH_STUDENTS")
    path = Path(root) / cfg.files.get(model, cfg.file_pattern.format(model=model))
    if not path.is_file():
        raise UsageError(f"student checkpoint {path} not found (expected for {model})")
    return path


def _classifier_prefixes(timm_model) -> tuple:
    names = (getattr(timm_model, "pretrained_cfg", None) or {}).get("classifier", "head")
    return tuple(n + "." for n in ((names,) if isinstance(names, str) else names))


def load_student_init(timm_model: torch.nn.Module, path: Path) -> int:
    """Load the checkpoint `path` into `timm_model` (a student's backbone) as the module docstring says;
    returns how many tensors were loaded. A file that does not fit is a UsageError naming the first key."""
    state, _ = read_weights(path, use_ema=False)
    filter_fn = checkpoint_filter(timm_model)
    if filter_fn is not None:
        state = filter_fn(state, timm_model)
    own = timm_model.state_dict()
    heads = _classifier_prefixes(timm_model)
    state = {k: v for k, v in state.items()
             if not (k.startswith(heads) and (k not in own or own[k].shape != v.shape))}
    try:
        missing, unexpected = timm_model.load_state_dict(state, strict=False)
    except RuntimeError as exc:          # shapes that differ
        first = str(exc).strip().splitlines()[-1].strip()
        raise UsageError(f"student checkpoint {path} does not fit {type(timm_model).__name__}: {first}") from None
    missing = [k for k in missing if not k.startswith(heads)]
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise UsageError(f"student checkpoint {path} does not fit {type(timm_model).__name__}: "
                         f"{len(missing)} missing, {len(unexpected)} unexpected keys (first: {first})")
    return len(state)
