"""Tests of kdbench.detection's data side: the COCO reader, the COCO evaluation and the generated
Fashion-MNIST / synthetic detection sets."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdbench.detection import (CocoDetection, collate, ensure_detection_set, evaluate_coco, split_paths,
                               to_coco_predictions)
from kdbench.detection import fmnist_det
from kdbench.errors import UsageError

FMNIST_SYSTEM = Path("/usr/share/datasets/fashion-mnist")


# ----------------------------------------------------------------------------- a small COCO set

def write_coco(root: Path) -> dict:
    """Three images (ids out of order, one grayscale), categories 90, 3, 7 (not contiguous, not
    sorted), a crowd box and a degenerate box. Returns the json written, plus the pixel arrays."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    pixels = {20: rng.integers(0, 256, (40, 60, 3), dtype=np.uint8),   # h=40, w=60
              5: rng.integers(0, 256, (30, 30), dtype=np.uint8),       # grayscale
              11: rng.integers(0, 256, (20, 50, 3), dtype=np.uint8)}
    for image_id, array in pixels.items():
        Image.fromarray(array).save(root / "images" / f"{image_id:04d}.png")
    data = {
        "images": [{"id": i, "file_name": f"{i:04d}.png", "height": a.shape[0], "width": a.shape[1]}
                   for i, a in pixels.items()],
        "categories": [{"id": 90, "name": "c90"}, {"id": 3, "name": "c3"}, {"id": 7, "name": "c7"}],
        "annotations": [
            {"id": 1, "image_id": 20, "category_id": 7, "bbox": [10, 5, 20, 10], "area": 200, "iscrowd": 0},
            {"id": 2, "image_id": 20, "category_id": 90, "bbox": [0, 0, 60, 40], "area": 2400, "iscrowd": 1},
            {"id": 3, "image_id": 5, "category_id": 3, "bbox": [2.5, 3, 10, 12], "area": 120, "iscrowd": 0},
            {"id": 4, "image_id": 5, "category_id": 90, "bbox": [4, 4, 0.5, 10], "area": 5, "iscrowd": 0},
            {"id": 5, "image_id": 11, "category_id": 90, "bbox": [30, 2, 15, 16], "area": 240, "iscrowd": 0},
        ]}
    (root / "instances_val.json").write_text(json.dumps(data))
    return {"json": data, "pixels": pixels}


@pytest.fixture
def coco(tmp_path):
    written = write_coco(tmp_path)
    return tmp_path, written


def test_reader_order_labels_crowd_and_degenerate(coco):
    root, written = coco
    ds = CocoDetection(root / "images", root / "instances_val.json")
    assert len(ds) == 3 and ds.num_classes == 3
    assert ds.label_to_cat == {1: 3, 2: 7, 3: 90} and ds.class_names == ["c3", "c7", "c90"]
    (im5, t5), (im11, t11), (im20, t20) = ds[0], ds[1], ds[2]
    assert [t["image_id"] for t in (t5, t11, t20)] == [5, 11, 20]
    # image 20: the crowd box is dropped; image 5: the 0.5 px wide box is dropped
    assert t20["boxes"].tolist() == [[10, 5, 30, 15]] and t20["labels"].tolist() == [2]
    assert t5["boxes"].tolist() == [[2.5, 3, 12.5, 15]] and t5["labels"].tolist() == [1]
    assert t11["labels"].tolist() == [3] and t11["boxes"].dtype == torch.float32
    assert t20["labels"].dtype == torch.int64 and t20["orig_size"] == (40, 60) and t20["scale"] == 1.0
    # pixels untouched; grayscale becomes three equal channels
    assert im20.shape == (3, 40, 60) and im20.dtype == torch.float32
    assert torch.equal((im20 * 255).round().byte(), torch.from_numpy(written["pixels"][20]).permute(2, 0, 1))
    assert im5.shape == (3, 30, 30) and torch.equal(im5[0], im5[2])
    assert torch.equal((im5[1] * 255).round().byte(), torch.from_numpy(written["pixels"][5]))


def test_reader_resizes_and_scales_boxes(coco):
    root, _ = coco
    ds = CocoDetection(root / "images", root / "instances_val.json", min_size=80, max_size=100)
    image, target = ds[2]                     # 40 x 60: 80/40 = 2 would make it 120 wide > 100
    assert target["scale"] == pytest.approx(100 / 60)
    assert image.shape == (3, 67, 100) and target["orig_size"] == (40, 60)
    assert torch.allclose(target["boxes"], torch.tensor([[10., 5, 30, 15]]) * 100 / 60)
    image, target = CocoDetection(root / "images", root / "instances_val.json", min_size=60)[0]
    assert target["scale"] == 2.0 and image.shape == (3, 60, 60)
    assert target["boxes"].tolist() == [[5, 6, 25, 30]]


def test_label_mapping_round_trip_and_collate(coco):
    root, written = coco
    ds = CocoDetection(root / "images", root / "instances_val.json", min_size=50, max_size=90)
    images, targets = collate([ds[i] for i in range(3)])
    assert isinstance(images, list) and len(targets) == 3            # sizes differ
    outputs = [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))}
               for t in targets]
    rows = to_coco_predictions(outputs, targets, ds.label_to_cat)
    kept = {(a["image_id"], a["category_id"]): a["bbox"] for a in written["json"]["annotations"]
            if a["id"] in (1, 3, 5)}
    assert {(r["image_id"], r["category_id"]) for r in rows} == set(kept)
    for r in rows:
        assert r["bbox"] == pytest.approx(kept[r["image_id"], r["category_id"]], abs=1e-4)
    same = collate([ds[0], ds[0]])[0]
    assert isinstance(same, torch.Tensor) and same.shape == (2, 3, 50, 50)


def test_reader_errors_name_the_path(tmp_path, coco):
    root, _ = coco
    with pytest.raises(UsageError, match="nothere.json"):
        CocoDetection(root / "images", root / "nothere.json")
    with pytest.raises(UsageError, match="noimages"):
        CocoDetection(root / "noimages", root / "instances_val.json")
    (tmp_path / "bad.json").write_text('{"images": []}')
    with pytest.raises(UsageError, match="bad.json.*annotations"):
        CocoDetection(root / "images", tmp_path / "bad.json")


# ----------------------------------------------------------------------------- evaluation

def square_gt(n_images=4, box=(10, 10, 40, 40)) -> dict:
    """One 40x40 object per 100x100 image (medium by COCO's areas), categories 5 and 9 alternating."""
    return {"images": [{"id": i + 1, "file_name": f"{i}.png", "height": 100, "width": 100} for i in range(n_images)],
            "categories": [{"id": 5, "name": "a"}, {"id": 9, "name": "b"}],
            "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": (5, 9)[i % 2], "bbox": list(box),
                             "area": box[2] * box[3], "iscrowd": 0} for i in range(n_images)]}


def predictions(gt: dict, dx: float = 0.0) -> list:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9,
             "bbox": [a["bbox"][0] + dx, *a["bbox"][1:]]} for a in gt["annotations"]]


def test_perfect_predictions_score_100(tmp_path):
    gt = square_gt()
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    del gt["annotations"][0]["area"], gt["annotations"][1]["iscrowd"]     # optional in minimal files
    before = json.dumps(gt)
    for source in (gt, path, str(path)):
        result = evaluate_coco(source, predictions(gt))
        assert result["map"] == pytest.approx(100.0) and result["map50"] == pytest.approx(100.0)
        assert result["map75"] == pytest.approx(100.0) and result["map_medium"] == pytest.approx(100.0)
        assert math.isnan(result["map_small"]) and math.isnan(result["map_large"])   # no such gt
    assert json.dumps(gt) == before                                                   # not changed


@pytest.mark.parametrize("dx", [4, 8, 15])
def test_shifted_boxes_give_the_hand_computed_ap(dx):
    gt = square_gt()
    inter = (40 - dx) * 40
    iou = inter / (2 * 40 * 40 - inter)
    # every image has one object and one detection of the same IoU: AP at a threshold is 1 if the
    # IoU reaches it, else 0, so AP@[.5:.95] is the fraction of the ten thresholds it reaches
    thresholds = [0.5 + 0.05 * k for k in range(10)]
    assert all(abs(iou - t) > 0.01 for t in thresholds)
    expected = 100.0 * sum(iou >= t for t in thresholds) / 10
    result = evaluate_coco(gt, predictions(gt, dx))
    assert result["map"] == pytest.approx(expected)
    assert result["map50"] == (100.0 if iou >= 0.5 else 0.0) and result["map75"] == (100.0 if iou >= 0.75 else 0.0)


def test_empty_and_wrong_class_predictions_score_0(capsys):
    gt = square_gt()
    assert evaluate_coco(gt, []) == dict.fromkeys(["map", "map50", "map75", "map_small", "map_medium",
                                                   "map_large"], 0.0)
    swapped = [dict(p, category_id=14 - p["category_id"]) for p in predictions(gt)]
    assert evaluate_coco(gt, swapped)["map"] == 0.0
    assert capsys.readouterr().out == ""                          # pycocotools' prints are silenced


# ----------------------------------------------------------------------------- generated sets

SMALL = dict(source="synthetic", canvas=64, train_images=8, val_images=4, max_items=4, scale=(0.5, 1.5))


def test_compose_boxes_are_tight_and_occlusion_is_limited():
    for i in range(30):
        rng = np.random.default_rng([7, i])
        draw = fmnist_det._item_source("synthetic", "train", None)
        image, anns, masks = fmnist_det.compose(rng, draw, canvas=48, max_items=5, scale=(0.6, 2.5))
        assert image.shape == (48, 48) and 1 <= len(anns) <= 5
        shown = np.zeros_like(masks[0])
        for (x, y, w, h, label, visible), mask in zip(anns[::-1], masks[::-1]):
            ys, xs = np.nonzero(mask)
            assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())
            assert 0 <= label < 10 and visible == (mask & ~shown).sum() >= 0.5 * mask.sum()
            shown |= mask
        assert (image[shown] >= fmnist_det._MASK_MIN).all() and (image[~shown] <= fmnist_det._BG_MAX).all()


def check_set(folder: Path, canvas: int) -> int:
    """The written set is a readable COCO set whose boxes lie in the canvas and are tight around
    item pixels (which are the only pixels brighter than the background). Returns its box count."""
    boxes = 0
    for split in ("train", "val"):
        images_dir, json_path = split_paths(folder, split)
        data = json.loads(json_path.read_text())
        assert [c["id"] for c in data["categories"]] == list(range(1, 11))
        for record in data["images"]:
            pixels = np.asarray(Image.open(images_dir / record["file_name"]))
            assert pixels.shape == (canvas, canvas)
            bright, covered = pixels > fmnist_det._BG_MAX, np.zeros(pixels.shape, bool)
            anns = [a for a in data["annotations"] if a["image_id"] == record["id"]]
            assert anns
            for a in anns:
                x, y, w, h = a["bbox"]
                assert x >= 0 and y >= 0 and x + w <= canvas and y + h <= canvas and 1 <= a["category_id"] <= 10
                inside = bright[y:y + h, x:x + w]
                assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
                covered[y:y + h, x:x + w] = True
            assert not (bright & ~covered).any()
        ds = CocoDetection(images_dir, json_path)
        assert len(ds) == len(data["images"]) and ds[0][0].shape == (3, canvas, canvas)
        boxes += len(data["annotations"])
    return boxes


def file_bytes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_synthetic_set_is_valid_deterministic_and_reused(tmp_path, monkeypatch):
    a = ensure_detection_set(tmp_path / "a", **SMALL)
    b = ensure_detection_set(tmp_path / "b", **SMALL)
    assert a.name == b.name and a.name.startswith("fmnist-det-") and a.parent == tmp_path / "a"
    assert file_bytes(a) == file_bytes(b)
    manifest = json.loads((a / "params.json").read_text())
    assert manifest["params"]["canvas"] == 64 and manifest["boxes"]["train"] + manifest["boxes"]["val"] == \
        check_set(a, 64)
    assert [p.name for p in (tmp_path / "a").iterdir()] == [a.name]      # no temporary left behind
    monkeypatch.setattr(fmnist_det, "_write_split", lambda *args: pytest.fail("rewrote an existing set"))
    assert ensure_detection_set(tmp_path / "a", **SMALL) == a
    other = dict(SMALL, seed=1)
    with pytest.raises(pytest.fail.Exception):
        ensure_detection_set(tmp_path / "a", **other)                 # other parameters: another set


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(fmnist_det, "compose", broken)
    with pytest.raises(RuntimeError):
        ensure_detection_set(tmp_path, **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_set_errors(tmp_path):
    with pytest.raises(UsageError, match="valid choices: fashion-mnist, synthetic"):
        ensure_detection_set(tmp_path, source="fmnist")
    with pytest.raises(UsageError, match="max_items=0"):
        ensure_detection_set(tmp_path, **dict(SMALL, max_items=0))
    folder = ensure_detection_set(tmp_path, **SMALL)
    manifest = json.loads((folder / "params.json").read_text())
    manifest["params"]["seed"] = 5
    (folder / "params.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="delete the folder"):
        ensure_detection_set(tmp_path, **SMALL)


@pytest.mark.skipif(not FMNIST_SYSTEM.is_dir(), reason=f"Fashion-MNIST not installed at {FMNIST_SYSTEM} "
                                                        "(apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_set(tmp_path):
    folder = ensure_detection_set(tmp_path, source="fashion-mnist", canvas=96, train_images=6, val_images=3,
                                  data_root=str(FMNIST_SYSTEM))
    assert check_set(folder, 96) >= 9
    names = [c["name"] for c in json.loads(split_paths(folder, "val")[1].read_text())["categories"]]
    assert names[0] == "T-shirt/top" and names[9] == "Ankle boot"
