"""The detection task: Faster R-CNN + FPN on a timm backbone, scored by COCO mAP@[.5:.95].

Data (`data.dataset`): `fmnist-det` and `synthetic-det` are generated once and cached
(`fmnist_det.ensure_detection_set`, canvases of `data.img_size` px); `coco` reads
`<root>/annotations/instances_{train,val}2017.json` and `<root>/{train,val}2017/`.

WIP (issue 17): not yet called by the engine; see docs/detection-plan.md.
"""

from pathlib import Path
from typing import Dict

import torch

from ..data.augment import Normalizer
from ..data.config import DatasetInfo
from ..errors import UsageError
from .coco import CocoDetection, evaluate_coco, to_coco_predictions
from .fmnist_det import ensure_detection_set, split_paths
from .loaders import DetectionEvalLoader, DetectionTrainLoader, load_in_memory

GENERATED = {"fmnist-det": "fashion-mnist", "synthetic-det": "synthetic"}
STATS = {"fmnist-det": ((0.10,), (0.22,)), "synthetic-det": ((0.10,), (0.22,))}   # TODO: measure on the sets


def _set_dir(data) -> Path:
    if data.dataset in GENERATED:
        root = Path(data.root or Path.home() / ".cache" / "kdbench" / "data")
        return ensure_detection_set(root, source=GENERATED[data.dataset], canvas=data.img_size,
                                    train_images=data.train_limit or 2000, val_images=data.test_limit or 500,
                                    data_root=data.root)
    raise UsageError(f"detection dataset '{data.dataset}': valid choices: {', '.join(GENERATED)}, coco")


class Detection:
    """COCO-format detection (see the module docstring)."""

    name, metric = "detection", "map"

    def loaders(self, run, *, batch_size: int, device, rank: int = 0, world_size: int = 1):
        data, r = run.data, run.recipe
        folder = _set_dir(data)
        train = CocoDetection(*split_paths(folder, "train"))
        val = CocoDetection(*split_paths(folder, "val"))
        mean, std = STATS[data.dataset]
        norm = Normalizer(mean, std, data.img_size, device)
        images, targets = load_in_memory(train)
        train_loader = DetectionTrainLoader(images, targets, batch_size=batch_size, seed=run.seed, normalizer=norm,
                                            flip=data.flip, device=device, rank=rank, world_size=world_size)
        images, targets = load_in_memory(val)
        eval_loader = DetectionEvalLoader(images, targets, batch_size=r.eval_batch_size, normalizer=norm,
                                          device=device)
        eval_loader.gt_json, eval_loader.label_to_cat = split_paths(folder, "val")[1], val.label_to_cat
        info = DatasetInfo(data.dataset, train.num_classes, images.shape[1], data.img_size, len(train), len(val),
                           str(folder))
        return train_loader, eval_loader, info

    def model(self, name: str, info):
        from .model import build_detector
        return build_detector(name, num_classes=info.num_classes, img_size=info.img_size, in_chans=info.in_chans)

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
