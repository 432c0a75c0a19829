"""Tasks (docs/design.md §1): what a run learns and how it is scored.

The one training loop (`engine.Trainer`) and the teacher zoo ask the run's task for its loaders, a
model by name (fresh, or holding a released checkpoint) and the evaluation of a model; steps, checkpoints, records, locks
and the leaderboard are shared. A task's `metric` is the key of its headline in the evaluation
(and so in a record: `RunRecord.metric`).
"""

from typing import Dict

import torch

from .data import build_loaders
from .data.config import DETECTION_DATASETS
from .detection.task import DETECTION
from .errors import UsageError
from .models import checkpoint_filter, create_feature_model


class Classification:
    """Top-1/top-5 of a FeatureModel's logits on an image-classification set."""

    name, metric = "classification", "top1"

    def loaders(self, run, *, batch_size: int, device, rank: int = 0, world_size: int = 1):
        r = run.recipe
        if run.data.dataset in DETECTION_DATASETS:
            raise UsageError(f"dataset '{run.data.dataset}' is a detection set: its preset needs `task: detection`")
        return build_loaders(run.data, batch_size=batch_size, device=device, seed=run.seed, mixup=r.mixup,
                             cutmix=r.cutmix, label_smoothing=r.label_smoothing,
                             eval_batch_size=r.eval_batch_size, rank=rank, world_size=world_size)

    def model(self, name: str, info, run=None):
        return create_feature_model(name, num_classes=info.num_classes, in_chans=info.in_chans,
                                    img_size=info.img_size)

    def load_released(self, name: str, info, run, state: dict, path, eval_loader=None):
        """A fresh model `name` holding a released teacher's `state`, loaded strictly after its timm
        module's key conversion (old timm and official-release layouts, e.g. FB ConvNeXt, timm 0.6 Swin)."""
        tcfg = run.teacher_config
        if tcfg.pixel_format != "RGB" or tcfg.pixel_mean:
            raise UsageError("teacher.pixel_format / pixel_mean convert detection checkpoints only; a classification "
                             "teacher sees the students' normalisation")
        fm = self.model(name, info, run)
        filter_fn = checkpoint_filter(fm.model)
        try:
            if filter_fn is not None:
                state = filter_fn(state, fm.model)
            fm.model.load_state_dict(state, strict=True)
        except (RuntimeError, KeyError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise UsageError(f"teacher checkpoint {path} does not fit {name} with {info.num_classes} classes: "
                             f"{first}") from None
        return fm

    def fixed_batch(self, batch_size: int, info, device, seed: int = 0):
        """A seeded random batch (normal images, uniform labels) for timing steps."""
        g = torch.Generator(device="cpu").manual_seed(seed)
        images = torch.randn(batch_size, info.in_chans, info.img_size, info.img_size, generator=g)
        labels = torch.randint(0, info.num_classes, (batch_size,), generator=g)
        return images.to(device), labels.to(device)

    def predict(self, model, images):
        """The evaluation forward: a FeatureModel's logits."""
        return model.logits(images)

    @torch.inference_mode()
    def evaluate(self, model, loader, device, autocast) -> Dict[str, float]:
        """Top-1/top-5 (percent) of `model` (a FeatureModel, scored by its logits, or any callable
        returning logits) over the whole loader."""
        logits_of = getattr(model, "logits", model)
        correct1 = correct5 = torch.zeros((), device=device, dtype=torch.long)
        n = 0
        for images, labels in loader.epoch(0):
            with autocast():
                logits = logits_of(images)
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hit = top == labels[:, None]
            correct1 = correct1 + hit[:, 0].sum()
            correct5 = correct5 + hit.any(dim=1).sum()
            n += labels.shape[0]
        return {"top1": 100.0 * correct1.item() / max(n, 1), "top5": 100.0 * correct5.item() / max(n, 1)}


CLASSIFICATION = Classification()


def task_of(name: str):
    """The task object of a run's `task` (detection is imported only when asked for)."""
    if name == "detection":
        return DETECTION
    return CLASSIFICATION
