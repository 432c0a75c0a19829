"""The detection task: Faster R-CNN + FPN on a timm backbone, scored by COCO mAP@[.5:.95].

Data (`data.dataset`):
- `fmnist-det` (Fashion-MNIST items) and `synthetic-det` (procedural glyphs): generated once and
  cached (`fmnist_det.ensure_detection_set`; `data.train_limit`/`test_limit` images on canvases of
  `data.img_size` px), held in memory.
- `coco`: `<data root>/annotations/instances_{train,val}2017.json` with `<root>/{train,val}2017/`,
  streamed by `data.workers` processes; images resized to `data.resize_short` px on the shorter
  side (the longer at most `data.img_size`) and letterboxed on an `img_size` square canvas
  (`stream.py`); `train_limit` takes the first N training images (0: all).
Teachers: trained by kdbench, or released checkpoints (`load_released`: kdbench's or detectron2's layout).
"""

from pathlib import Path
from typing import Dict

import torch

from ..data.augment import Normalizer
from ..data.config import DETECTION_DATASETS, DatasetInfo
from ..data.sources import _cache_dir, resolve_root
from ..errors import UsageError
from .coco import CocoDetection, evaluate_coco, to_coco_predictions
from .fmnist_det import ensure_detection_set, split_paths
from .loaders import DetectionEvalLoader, DetectionTrainLoader, load_in_memory
from .model import build_detector
from .released import load_released_detector
from .stream import Letterboxed, StreamEvalLoader, StreamTrainLoader

GENERATED = {"fmnist-det": "fashion-mnist", "synthetic-det": "synthetic"}
# per-channel mean and std in [0, 1] units for COCO: ImageNet's (the backbones' usual statistics). A
# generated set is normalised by its own training split's mean and std, computed when it is loaded.
STATS = {"coco": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


def pixel_stats(images: torch.Tensor):
    """((mean,), (std,)) in [0, 1] units of uint8 images (N, C, H, W), over every pixel and channel
    (the generated sets are grayscale repeated to 3 channels), in float64: the same bits every time."""
    x = images.to(torch.float64) / 255
    return (x.mean().item(),), (x.std().item(),)
COCO_SPLITS = {"train": "train2017", "val": "val2017"}


def _generated_dir(data) -> Path:
    """The generated set of `data`, written into the download cache on first use (`data.root` is where
    its Fashion-MNIST source is, not where the set goes: that may be a read-only system folder)."""
    return ensure_detection_set(_cache_dir(), source=GENERATED[data.dataset], canvas=data.img_size,
                                train_images=data.train_limit or 2000, val_images=data.test_limit or 500,
                                data_root=data.root)


def coco_split(root, split: str, data) -> CocoDetection:
    """One split of a COCO 2017 folder, resized as `data` says."""
    root, name = resolve_root("coco", root), COCO_SPLITS[split]
    short = data.resize_short or None
    return CocoDetection(root / name, root / "annotations" / f"instances_{name}.json", min_size=short,
                         max_size=data.img_size)


class Detection:
    """COCO-format detection (see the module docstring)."""

    name, metric = "detection", "map"

    def loaders(self, run, *, batch_size: int, device, rank: int = 0, world_size: int = 1):
        data, r = run.data, run.recipe
        if data.dataset not in DETECTION_DATASETS:
            raise UsageError(f"detection dataset '{data.dataset}': valid choices: {', '.join(DETECTION_DATASETS)}")
        if data.dataset == "coco":
            return self._stream(run, batch_size=batch_size, device=device, rank=rank, world_size=world_size)
        folder = _generated_dir(data)
        train, val = CocoDetection(*split_paths(folder, "train")), CocoDetection(*split_paths(folder, "val"))
        images, targets = load_in_memory(train)
        stats = pixel_stats(images)
        norm = Normalizer(*stats, data.img_size, device)
        train_loader = DetectionTrainLoader(images, targets, batch_size=batch_size, seed=run.seed, normalizer=norm,
                                            flip=data.flip, device=device, rank=rank, world_size=world_size)
        val_images, val_targets = load_in_memory(val)
        eval_loader = DetectionEvalLoader(val_images, val_targets, batch_size=r.eval_batch_size, normalizer=norm,
                                          device=device)
        eval_loader.gt_json, eval_loader.label_to_cat = split_paths(folder, "val")[1], val.label_to_cat
        eval_loader.pixel_stats = stats
        info = DatasetInfo(data.dataset, train.num_classes, images.shape[1], data.img_size, len(train), len(val),
                           str(folder))
        return train_loader, eval_loader, info

    def _stream(self, run, *, batch_size, device, rank, world_size):
        data, r = run.data, run.recipe
        mean, std = STATS[data.dataset]
        train, val = coco_split(data.root, "train", data), coco_split(data.root, "val", data)
        if data.train_limit:
            train.records = train.records[:data.train_limit]
        if data.test_limit:
            raise UsageError("data.test_limit: COCO is evaluated on all of val2017 (its json lists every image)")
        box = lambda ds: Letterboxed(ds, data.img_size, mean, std)      # noqa: E731
        train_loader = StreamTrainLoader(box(train), batch_size=batch_size, seed=run.seed, flip=data.flip,
                                         device=device, workers=data.workers, rank=rank, world_size=world_size)
        eval_loader = StreamEvalLoader(box(val), batch_size=r.eval_batch_size, device=device, workers=data.workers)
        eval_loader.gt_json, eval_loader.label_to_cat = val.annotations, val.label_to_cat
        eval_loader.pixel_stats = (mean, std)
        info = DatasetInfo(data.dataset, train.num_classes, 3, data.img_size, len(train), len(val), str(data.root))
        return train_loader, eval_loader, info

    def model(self, name: str, info, run=None):
        """A Faster R-CNN on the timm model `name`, sized by `run.detector` (torchvision's defaults without a run)."""
        sizes = run.detector.kwargs() if run is not None else {}
        return build_detector(name, num_classes=info.num_classes, img_size=info.img_size, in_chans=info.in_chans,
                              **sizes)

    def load_released(self, name: str, info, run, state: dict, path, eval_loader):
        """A teacher detector holding a released checkpoint, kdbench's layout or detectron2's, given the
        inputs it was trained on (`released.py`; `eval_loader.pixel_stats`: the students' normalisation)."""
        sizes = run.detector.kwargs()

        def build(backbone: str, **extra):
            return build_detector(backbone, num_classes=info.num_classes, img_size=info.img_size,
                                  in_chans=info.in_chans, **{**sizes, **extra})
        return load_released_detector(build, name, state, path, student_stats=eval_loader.pixel_stats,
                                      tcfg=run.teacher_config)

    def fixed_batch(self, batch_size: int, info, device, seed: int = 0, boxes_per_image: int = 4):
        """A seeded random batch for timing steps: normal images and `boxes_per_image` boxes each (sides
        10-40 % of the canvas, anywhere on it), labels uniform over the classes."""
        g = torch.Generator(device="cpu").manual_seed(seed)
        s = info.img_size
        images = torch.randn(batch_size, info.in_chans, s, s, generator=g)
        targets = []
        for _ in range(batch_size):
            wh = (0.1 + 0.3 * torch.rand(boxes_per_image, 2, generator=g)) * s
            xy = torch.rand(boxes_per_image, 2, generator=g) * (s - wh)
            labels = torch.randint(1, info.num_classes + 1, (boxes_per_image,), generator=g)
            targets.append({"boxes": torch.cat([xy, xy + wh], 1).to(device), "labels": labels.to(device)})
        return images.to(device), targets

    def predict(self, detector, images):
        """The evaluation forward: detections (boxes, labels, scores) per image."""
        return detector(images)

    @torch.inference_mode()
    def evaluate(self, detector, loader, device, autocast) -> Dict[str, float]:
        predictions = []
        for images, targets in loader.epoch(0):
            with autocast():
                outputs = detector(images)
            predictions += to_coco_predictions([{k: v.float().cpu() for k, v in o.items()} for o in outputs],
                                               targets, loader.label_to_cat)
        return evaluate_coco(loader.gt_json, predictions)


DETECTION = Detection()
