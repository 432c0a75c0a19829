"""The COCO detection format: a reader of `instances_*.json` + an image folder, a collate function,
and the standard COCO bbox evaluation (pycocotools) with its conversion from torchvision outputs.

Labels are contiguous: 0 is the background, 1..K are the COCO category ids in sorted order.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from kdbench.errors import UsageError

_STATS = ("map", "map50", "map75", "map_small", "map_medium", "map_large")  # COCOeval.stats[0:6]


def load_coco_json(path: Union[str, Path]) -> dict:
    """The parsed annotation file `path`, checked to have images, annotations and categories."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"COCO annotation file {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read COCO annotation file {path}: {e}") from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise UsageError(f"{path} is not a COCO instances file: no list '{missing[0]}'")
    return data


class CocoDetection(torch.utils.data.Dataset):
    """Images of a COCO instances file, in image-id order, as (image, target).

    The image is a float tensor [3, H, W] in [0, 1] (grayscale repeated to 3 channels), resized
    so that its shorter side is `min_size` and its longer at most `max_size` (either may be None;
    both None leaves it untouched). The target is {"boxes": float [N, 4] x1y1x2y2 in the resized
    image's pixels, "labels": int64 [N] in 1..K, "image_id": int, "orig_size": (h, w), "scale":
    float}, boxes being the COCO boxes times `scale`. Crowd boxes, and boxes under 1 px wide or
    high once clipped to the image, are left out of the targets (evaluation reads the json itself
    and treats crowd boxes as COCO does). Images without boxes are kept, with empty targets.
    """

    def __init__(self, images: Union[str, Path], annotations: Union[str, Path], *,
                 min_size: Optional[int] = None, max_size: Optional[int] = None):
        self.images, self.annotations = Path(images), Path(annotations)
        self.min_size, self.max_size = min_size, max_size
        data = load_coco_json(self.annotations)
        if not self.images.is_dir():
            raise UsageError(f"COCO image folder {self.images} does not exist "
                             f"(annotations: {self.annotations})")
        self.cat_ids = sorted(int(c["id"]) for c in data["categories"])
        names = {int(c["id"]): c.get("name", str(c["id"])) for c in data["categories"]}
        self.class_names = [names[c] for c in self.cat_ids]
        self.label_to_cat = {i + 1: c for i, c in enumerate(self.cat_ids)}
        self.cat_to_label = {c: i for i, c in self.label_to_cat.items()}
        self.records = sorted(data["images"], key=lambda im: int(im["id"]))
        self._boxes = {int(im["id"]): [] for im in self.records}
        for a in data["annotations"]:
            image_id, cat = int(a["image_id"]), int(a["category_id"])
            if image_id not in self._boxes or cat not in self.cat_to_label:
                raise UsageError(f"{self.annotations}: annotation {a.get('id')} names an unknown "
                                 f"{'image' if image_id not in self._boxes else 'category'}")
            if not a.get("iscrowd", 0):
                self._boxes[image_id].append((*map(float, a["bbox"]), self.cat_to_label[cat]))

    @property
    def num_classes(self) -> int:
        """K, the number of object categories (the background excluded)."""
        return len(self.cat_ids)

    def __len__(self) -> int:
        return len(self.records)

    def scale_for(self, h: int, w: int) -> float:
        """The resize factor of an h x w image under this dataset's min_size/max_size."""
        scale = 1.0 if self.min_size is None else self.min_size / min(h, w)
        if self.max_size is not None and max(h, w) * scale > self.max_size:
            scale = self.max_size / max(h, w)
        return scale

    def __getitem__(self, index: int):
        record = self.records[index]
        path = self.images / record["file_name"]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read image {path}: {e}") from None
        w, h = im.size
        scale = self.scale_for(h, w)
        if scale != 1.0:
            im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
        image = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float().div_(255)
        rows = torch.tensor(self._boxes[int(record["id"])], dtype=torch.float64).reshape(-1, 5)
        x1y1 = rows[:, :2]
        boxes = torch.cat([x1y1, x1y1 + rows[:, 2:4]], 1)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        keep = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
        target = {"boxes": (boxes[keep] * scale).float(), "labels": rows[keep, 4].long(),
                  "image_id": int(record["id"]), "orig_size": (h, w), "scale": scale}
        return image, target


def collate(batch):
    """(images, targets) of a batch of (image, target): images stacked when all have one size,
    else a list of tensors (what torchvision's detection models accept), targets a list."""
    images, targets = zip(*batch)
    same = all(im.shape == images[0].shape for im in images)
    return (torch.stack(images) if same else list(images)), list(targets)


def to_coco_predictions(outputs: Sequence[dict], targets: Sequence[dict],
                        label_to_cat: Mapping[int, int]) -> list:
    """COCO result rows of torchvision detection outputs ({"boxes" x1y1x2y2 in the network's input
    pixels, "scores", "labels"}), boxes mapped back to the original image by each target's
    "scale" and labels to COCO category ids through `label_to_cat` (label -> category id)."""
    rows = []
    for out, target in zip(outputs, targets, strict=True):
        boxes = out["boxes"].detach().to("cpu", torch.float64) / target["scale"]
        boxes[:, 2:] -= boxes[:, :2]
        for box, score, label in zip(boxes.tolist(), out["scores"].tolist(), out["labels"].tolist()):
            rows.append({"image_id": int(target["image_id"]), "category_id": int(label_to_cat[int(label)]),
                         "bbox": box, "score": float(score)})
    return rows


def _complete(gt: dict) -> dict:
    """`gt` completed with what COCOeval reads but minimal files may lack: ids, iscrowd, area."""
    gt.setdefault("info", {})
    for i, a in enumerate(gt["annotations"]):
        a.setdefault("id", i + 1)
        a.setdefault("iscrowd", 0)
        a.setdefault("area", float(a["bbox"][2] * a["bbox"][3]))
    return gt


def evaluate_coco(gt: Union[str, Path, dict], predictions: Sequence[dict]) -> dict:
    """The standard COCO bbox evaluation (pycocotools COCOeval) of `predictions` (rows of
    {"image_id", "category_id", "bbox" [x, y, w, h] in original pixels, "score"}) against the
    instances json `gt` (a path or its parsed dict), over all of its images.

    Returns {"map", "map50", "map75", "map_small", "map_medium", "map_large"} in percent; no
    predictions give 0.0 everywhere, and an area range without ground truth gives NaN (COCO's -1).
    """

    data = _complete(load_coco_json(gt) if isinstance(gt, (str, Path)) else copy.deepcopy(gt))
    if not predictions:
        return {k: 0.0 for k in _STATS}
    known = {int(im["id"]) for im in data["images"]}
    strays = {int(p["image_id"]) for p in predictions} - known
    if strays:
        raise ValueError(f"predictions for image ids not in the ground truth: {sorted(strays)[:5]}")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and the summary
        coco_gt = COCO()
        coco_gt.dataset = data
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([dict(p, bbox=[float(v) for v in p["bbox"]]) for p in predictions])
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: (100.0 * float(v) if v >= 0 else math.nan) for k, v in zip(_STATS, ev.stats)}
