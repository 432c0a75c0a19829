"""A detection set made of Fashion-MNIST items (or procedural glyphs) pasted on dark noisy canvases,
written once in the COCO format under a cache directory and reused.

A set is `<root>/fmnist-det-<hash>/` with `train/` and `val/` PNGs, `instances_{train,val}.json`
and `params.json` (its parameters); the hash covers the parameters and the format version. It
is written into a temporary directory and renamed into place, so it exists only complete. Every
canvas is drawn from its own generator seeded by (seed, split, index): the same parameters give
byte-identical files, and a larger set starts with the canvases of a smaller one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
from PIL import Image
from tqdm import tqdm

from kdbench.data.readers import read_fashion
from kdbench.data.sources import locate, resolve_root
from kdbench.errors import UsageError, unknown_choice

SOURCES = ("fashion-mnist", "synthetic")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
GLYPH_CLASSES = ("disc", "ring", "square", "frame", "triangle", "plus", "cross", "bars", "diamond", "crescent")
SPLITS = ("train", "val")
_FORMAT = 1          # bump when the drawing changes: it is part of the hash
_BG_MAX = 40         # background pixels are at most this ...
_MASK_MIN = 56       # ... and an item's mask is its scaled pixels >= this, so items stay visible
_MIN_VISIBLE = 0.5   # a placement is rejected if it leaves an earlier item less of its mask visible
_TRIES = 20          # placements tried per item before it is left out

Item = tuple  # (uint8 [28, 28] image, int label 0..9)


def split_paths(set_dir: Union[str, Path], split: str) -> tuple[Path, Path]:
    """(image folder, instances json) of `split` ("train" or "val") of a set directory."""
    if split not in SPLITS:
        raise unknown_choice("split", split, SPLITS)
    return Path(set_dir) / split, Path(set_dir) / f"instances_{split}.json"


def glyph(label: int, rng: np.random.Generator) -> np.ndarray:
    """A 28x28 uint8 procedural item of class `label` (0..9): a class-specific shape with a random
    small rotation, size, stroke width, brightness and texture."""
    yy, xx = (np.mgrid[0:28, 0:28] + 0.5) / 14 - 1
    th, s, t = rng.uniform(-0.25, 0.25), rng.uniform(0.65, 0.95), rng.uniform(0.18, 0.3)
    u = (xx * np.cos(th) + yy * np.sin(th)) / s
    v = (-xx * np.sin(th) + yy * np.cos(th)) / s
    r, box = np.hypot(u, v), np.maximum(abs(u), abs(v))
    shape = [r < 1, abs(r - 0.8) < t, box < 0.85, abs(box - 0.8) < t,
             (v > -0.9) & (v < 0.9) & (abs(u) < (v + 0.9) / 1.9),
             ((abs(u) < t) | (abs(v) < t)) & (box < 1),
             ((abs(u - v) < 1.4 * t) | (abs(u + v) < 1.4 * t)) & (box < 0.9),
             (box < 0.95) & (np.cos(3 * np.pi * v) > 0.3),
             abs(abs(u) + abs(v) - 0.85) < t,
             (r < 1) & (np.hypot(u - 0.45, v) > 0.75)][label]
    level = rng.uniform(150, 255) * rng.uniform(0.85, 1.0, (28, 28))
    return np.where(shape, level, 0).astype(np.uint8)


def compose(rng: np.random.Generator, draw: Callable[[np.random.Generator], Item], *, canvas: int,
            max_items: int, scale: tuple) -> tuple:
    """One canvas: (uint8 image [canvas, canvas], annotations, masks).

    1..max_items items from `draw`, each resized to a random multiple in `scale` of 28 px (at most
    the canvas) and pasted at a random position, in order, over a dark noisy background. Its box
    is the tight box of its mask (its scaled pixels >= _MASK_MIN), in the canvas; a placement that
    would leave an earlier item under _MIN_VISIBLE of its mask visible is retried, and after
    _TRIES the item is left out. Annotations are (x, y, w, h, label, visible area); masks are the
    items' full boolean masks in the canvas.
    """
    level = rng.uniform(8, 24)
    image = np.clip(np.rint(rng.normal(level, 6, (canvas, canvas))), 0, _BG_MAX).astype(np.uint8)
    owner = np.full((canvas, canvas), -1, np.int16)   # which item shows at each pixel
    labels, masks = [], []
    for _ in range(int(rng.integers(1, max_items + 1))):
        for _ in range(_TRIES):
            item, label = draw(rng)
            size = min(canvas, max(1, round(28 * rng.uniform(*scale))))
            scaled = np.asarray(Image.fromarray(item).resize((size, size), Image.BILINEAR))
            y0, x0 = rng.integers(0, canvas - size + 1, 2)
            mask = np.zeros((canvas, canvas), bool)
            mask[y0:y0 + size, x0:x0 + size] = scaled >= _MASK_MIN
            if mask.sum() < 4:
                continue
            covered = np.bincount(owner[mask & (owner >= 0)], minlength=len(masks))
            visible = np.bincount(owner[owner >= 0], minlength=len(masks))
            if any(visible[j] - covered[j] < _MIN_VISIBLE * masks[j].sum() for j in range(len(masks))):
                continue
            owner[mask] = len(masks)
            image[mask] = scaled[mask[y0:y0 + size, x0:x0 + size]]
            masks.append(mask)
            labels.append(label)
            break
    visible = np.bincount(owner[owner >= 0], minlength=len(masks))
    out = []
    for j, (mask, label) in enumerate(zip(masks, labels)):
        ys, xs = np.nonzero(mask)
        out.append((int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1),
                    int(label), int(visible[j])))
    return image, out, masks


def _item_source(source: str, split: str, data_root: Optional[str]) -> Callable:
    """draw(rng) -> (28x28 uint8 item, label) for `split`: Fashion-MNIST train/test images, or glyphs."""
    if source == "synthetic":
        def draw_glyph(rng):
            label = int(rng.integers(10))
            return glyph(label, rng), label
        return draw_glyph

    x_tr, y_tr, x_te, y_te = read_fashion(locate("fashion-mnist", resolve_root("fashion-mnist", data_root)))
    images, labels = (x_tr, y_tr) if split == "train" else (x_te, y_te)

    def draw_fashion(rng):
        i = int(rng.integers(len(images)))
        return images[i, 0], int(labels[i])
    return draw_fashion


def _write_split(folder: Path, split: str, params: dict, draw: Callable, bar) -> int:
    names = FASHION_CLASSES if params["source"] == "fashion-mnist" else GLYPH_CLASSES
    images_dir, json_path = split_paths(folder, split)
    images_dir.mkdir()
    records, anns = [], []
    for i in range(params[f"{split}_images"]):
        rng = np.random.default_rng([params["seed"], SPLITS.index(split), i])
        image, boxes, _ = compose(rng, draw, canvas=params["canvas"], max_items=params["max_items"],
                                  scale=tuple(params["scale"]))
        name = f"{i + 1:06d}.png"
        Image.fromarray(image, "L").save(images_dir / name, format="PNG")
        records.append({"id": i + 1, "file_name": name, "height": image.shape[0], "width": image.shape[1]})
        for x, y, w, h, label, area in boxes:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": label + 1,
                         "bbox": [x, y, w, h], "area": area, "iscrowd": 0})
        bar.update()
    categories = [{"id": c + 1, "name": n, "supercategory": params["source"]} for c, n in enumerate(names)]
    data = {"info": {"description": f"kdbench fmnist-det, {split}", "version": str(_FORMAT)},
            "images": records, "annotations": anns, "categories": categories}
    json_path.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    return len(anns)


def ensure_detection_set(root: Union[str, Path], *, source: str = "fashion-mnist", canvas: int = 128,
                         train_images: int = 2000, val_images: int = 500, max_items: int = 4,
                         scale: tuple = (0.6, 2.5), seed: int = 0, data_root: Optional[str] = None) -> Path:
    """The directory of the detection set with these parameters under `root`, written if absent.

    `source` is "fashion-mnist" (train canvases from its train split, val from its test split;
    found as kdbench.data finds it, `data_root` first) or "synthetic" (procedural glyphs, no
    files). Canvases are `canvas` px square with 1..`max_items` items each, at `scale` x 28 px.
    Use `split_paths(dir, split)` and `CocoDetection` to read it. A progress bar shows after 2 s.
    """
    if source not in SOURCES:
        raise unknown_choice("detection item source", source, SOURCES)
    lo, hi = (float(s) for s in scale)
    if not (canvas >= 16 and max_items >= 1 and train_images >= 1 and val_images >= 1 and 0 < lo <= hi):
        raise UsageError(f"invalid detection set parameters: canvas={canvas} (>= 16), max_items={max_items} "
                         f"(>= 1), train_images={train_images}, val_images={val_images} (>= 1), "
                         f"scale={scale} (0 < low <= high)")
    params = {"format": _FORMAT, "source": source, "canvas": int(canvas), "train_images": int(train_images),
              "val_images": int(val_images), "max_items": int(max_items), "scale": [lo, hi], "seed": int(seed)}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(root).expanduser()
    final = root / f"fmnist-det-{digest}"
    if final.exists():
        return _check_existing(final, params)

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}.tmp-"))
    try:
        counts = {}
        with tqdm(total=train_images + val_images, desc=f"writing {final.name}", unit="img", delay=2) as bar:
            for split in SPLITS:
                counts[split] = _write_split(tmp, split, params, _item_source(source, split, data_root), bar)
        manifest = {"params": params, "images": {"train": train_images, "val": val_images}, "boxes": counts}
        (tmp / "params.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, 0o755)     # mkdtemp makes it private; the cache is shared like the data cache
        try:
            os.rename(tmp, final)
        except OSError:          # another process renamed its copy first: use that one
            if not final.exists():
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _check_existing(final, params)


def _check_existing(folder: Path, params: dict) -> Path:
    try:
        found = json.loads((folder / "params.json").read_text())["params"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{folder} is not a complete detection set (no readable params.json); "
                         "delete it to have it written again") from None
    if found != params:
        raise UsageError(f"{folder}/params.json has parameters {found}, not {params}; "
                         "delete the folder to have it written again")
    return folder
