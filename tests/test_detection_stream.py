"""COCO streamed from disk (kdbench.detection.stream, task.coco_split): a COCO 2017 folder written by
the test in the official layout, letterboxed on the canvas, batched by a seeded plan."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdbench.data.sources import locate, resolve_root
from kdbench.detection.coco import CocoDetection
from kdbench.detection.stream import Letterboxed, StreamEvalLoader, StreamTrainLoader
from kdbench.detection.task import STATS, coco_split
from kdbench.errors import UsageError

CANVAS = 96


def write_coco2017(root: Path, sizes=((60, 80), (80, 60), (40, 40), (64, 48))):
    """train2017/ and val2017/ with the same images (h, w given) and one box each, in the official
    layout: annotations/instances_{train,val}2017.json."""
    rng = np.random.default_rng(0)
    (root / "annotations").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        (root / split).mkdir()
        images, anns = [], []
        for i, (h, w) in enumerate(sizes, start=1):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / f"{i:012d}.jpg")
            images.append({"id": i, "file_name": f"{i:012d}.jpg", "height": h, "width": w})
            anns.append({"id": i, "image_id": i, "category_id": 18, "bbox": [4, 6, 20, 10], "area": 200, "iscrowd": 0})
        data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"},
                                                                       {"id": 18, "name": "dog"}]}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


class Data:
    dataset, img_size, resize_short, flip, workers = "coco", CANVAS, 64, True, 0


@pytest.fixture
def coco(tmp_path):
    write_coco2017(tmp_path)
    return tmp_path


def test_layout_is_located_and_errors_name_it(coco, tmp_path):
    assert locate("coco", coco) == coco and resolve_root("coco", str(coco)) == coco
    with pytest.raises(UsageError, match="annotations/instances_"):
        resolve_root("coco", str(tmp_path / "annotations"))


def test_letterbox_keeps_boxes_and_pads_with_the_mean(coco):
    train = coco_split(str(coco), "train", Data)
    box = Letterboxed(train, CANVAS, *STATS["coco"])
    image, target = box[(0, False)]          # 60x80 -> shorter side 64: 64x85 (longer <= 96)
    assert image.shape == (3, CANVAS, CANVAS)
    scale = target["scale"]
    assert scale == pytest.approx(64 / 60)
    h, w = round(60 * scale), round(80 * scale)
    assert (image[:, h:, :] == 0).all() and (image[:, :, w:] == 0).all() and image[:, :h, :w].abs().sum() > 0
    torch.testing.assert_close(target["boxes"], torch.tensor([[4, 6, 24, 16]]) * scale)
    assert target["labels"].tolist() == [2]          # category 18 is the second: label 2
    flipped, ft = box[(0, True)]
    torch.testing.assert_close(flipped[:, :h, :w], image[:, :h, :w].flip(2))
    torch.testing.assert_close(ft["boxes"][0, [0, 2]], w - target["boxes"][0, [2, 0]])


def test_the_longer_side_is_capped_by_the_canvas(coco):
    class Big(Data):
        resize_short = 200                    # 60x80 would be 200x267: the longer side caps it at 96
    image, target = Letterboxed(coco_split(str(coco), "val", Big), CANVAS, *STATS["coco"])[(0, False)]
    assert target["scale"] == pytest.approx(CANVAS / 80) and image[:, :72, :96].abs().sum() > 0
    unbounded = CocoDetection(coco / "val2017", coco / "annotations" / "instances_val2017.json", min_size=200)
    with pytest.raises(ValueError, match="canvas"):
        Letterboxed(unbounded, CANVAS, *STATS["coco"])[(0, False)]


def test_training_plan_is_seeded_sharded_and_worker_independent(coco):
    box = Letterboxed(coco_split(str(coco), "train", Data), CANVAS, *STATS["coco"])
    cpu = torch.device("cpu")
    a = StreamTrainLoader(box, batch_size=2, seed=3, flip=True, device=cpu, workers=0)
    assert a.plan(0) == StreamTrainLoader(box, batch_size=2, seed=3, flip=True, device=cpu, workers=0).plan(0)
    assert a.plan(0) != a.plan(1)
    ranks = [StreamTrainLoader(box, batch_size=1, seed=3, flip=True, device=cpu, workers=0, rank=r, world_size=2)
             for r in (0, 1)]
    seen = sorted(i for r in ranks for batch in r.plan(0) for i, _ in batch)
    assert seen == [0, 1, 2, 3]
    batches = list(a.epoch(0))
    with_workers = list(StreamTrainLoader(box, batch_size=2, seed=3, flip=True, device=cpu, workers=2).epoch(0))
    assert len(batches) == len(a) == 2
    for (x, t), (y, u) in zip(batches, with_workers):
        assert x.shape == (2, 3, CANVAS, CANVAS) and torch.equal(x, y)
        assert all(torch.equal(p["boxes"], q["boxes"]) for p, q in zip(t, u))


def test_eval_loader_gives_every_image_once_in_order(coco):
    val = coco_split(str(coco), "val", Data)
    loader = StreamEvalLoader(Letterboxed(val, CANVAS, *STATS["coco"]), batch_size=3, device=torch.device("cpu"),
                              workers=0)
    ids = [t["image_id"] for _, targets in loader for t in targets]
    assert ids == [1, 2, 3, 4] and len(loader) == 2
    assert isinstance(val, CocoDetection) and val.num_classes == 2


def test_generated_sets_are_normalised_by_their_own_pixel_statistics():
    from kdbench.detection.task import pixel_stats
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    images[0] = 255                                   # half the pixels white
    (mean,), (std,) = pixel_stats(images)
    n = images.numel()
    assert mean == pytest.approx(0.5) and std == pytest.approx((0.25 * n / (n - 1)) ** 0.5)
