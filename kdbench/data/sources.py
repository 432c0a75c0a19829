"""Where a dataset's files are: an explicit root, `$KDBENCH_DATA`, system locations, the download
cache, or a torchvision download into that cache, and what to tell the user when none has them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torchvision.datasets as tvd

from kdbench.errors import UsageError

from .config import check_name
from .readers import CIFAR_LAYOUT, FASHION_FILES, idx_file

_SYSTEM_ROOTS = {"fashion-mnist": ("/usr/share/datasets/fashion-mnist",)}
_DOWNLOADABLE = ("fashion-mnist", "cifar10", "cifar100")
_LAYOUTS = {
    "fashion-mnist": "the IDX files {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] directly in DIR, "
                     "in DIR/fashion-mnist/ or in DIR/FashionMNIST/raw/",
    "cifar10": "DIR/cifar-10-batches-py/ with data_batch_1..5 and test_batch",
    "cifar100": "DIR/cifar-100-python/ with train and test",
    "imagenet": "DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG",
    "coco": "DIR/annotations/instances_{train,val}2017.json with DIR/train2017/ and DIR/val2017/",
}
_HINTS = {
    "fashion-mnist": "install it with `apt-get install dataset-fashion-mnist`, run once online to download it, "
                     "or pass --data-root DIR holding the IDX files",
    "cifar10": "extract https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz into DIR so that "
               "DIR/cifar-10-batches-py/ exists and pass --data-root DIR (or set $KDBENCH_DATA=DIR), "
               "or run once online to download it",
    "cifar100": "extract https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz into DIR so that "
                "DIR/cifar-100-python/ exists and pass --data-root DIR (or set $KDBENCH_DATA=DIR), "
                "or run once online to download it",
    "imagenet": "ImageNet cannot be downloaded automatically; pass --data-root DIR with "
                "DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG (or set $KDBENCH_DATA=DIR)",
    "coco": "download COCO 2017 (train2017, val2017, annotations_trainval2017 from cocodataset.org) into DIR "
            "and pass --data-root DIR (or set $KDBENCH_DATA=DIR)",
}


def _cache_dir() -> Path:
    return Path.home() / ".cache" / "kdbench" / "data"


def locate(dataset: str, root: Path) -> Optional[Path]:
    """The folder under `root` that holds `dataset` in an accepted layout, or None."""
    if dataset == "fashion-mnist":
        for folder in (root, root / "fashion-mnist", root / "FashionMNIST" / "raw"):
            if all(idx_file(folder, stem) for stem in FASHION_FILES):
                return folder
        return None
    if dataset in CIFAR_LAYOUT:
        folder, train, test, _, _ = CIFAR_LAYOUT[dataset]
        ok = all((root / folder / f).is_file() for f in train + test)
        return root / folder if ok else None
    if dataset == "imagenet":
        return root if (root / "train").is_dir() and (root / "val").is_dir() else None
    if dataset == "coco":
        ok = all((root / "annotations" / f"instances_{s}2017.json").is_file() and (root / f"{s}2017").is_dir()
                 for s in ("train", "val"))
        return root if ok else None
    return None


def _download(dataset: str, cache: Path) -> None:
    """Download `dataset` with torchvision into `cache` (raises on any failure, e.g. offline)."""
    cls = {"fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[dataset]
    cache.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        cls(str(cache), train=train, download=True)


def resolve_root(dataset: str, root: Optional[str] = None) -> Path:
    """Find the data root of `dataset` (the folder that contains it in an accepted layout).

    Order: explicit `root` (no fallback if the data is not there), `$KDBENCH_DATA`, known
    system locations, the download cache `~/.cache/kdbench/data`, then a torchvision download
    into that cache. Raises UsageError saying what was tried and how to get the data.
    The synthetic datasets have no files: their root is `Path("procedural")`; fmnist-det's is
    Fashion-MNIST's (the generated set itself goes to the cache).
    """
    check_name(dataset)
    if dataset in ("synthetic", "synthetic-det"):
        return Path("procedural")
    if dataset == "fmnist-det":             # generated from Fashion-MNIST into the cache (kdbench.detection)
        return resolve_root("fashion-mnist", root)
    if root is not None:
        path = Path(root).expanduser()
        if locate(dataset, path) is None:
            raise UsageError(f"--data-root {path} does not contain {dataset}: expected {_LAYOUTS[dataset]}")
        return path
    env = os.environ.get("KDBENCH_DATA")
    candidates = [Path(env).expanduser()] if env else []
    candidates += [Path(p) for p in _SYSTEM_ROOTS.get(dataset, ())] + [_cache_dir()]
    for path in candidates:
        if locate(dataset, path) is not None:
            return path
    tried = ([] if env else ["$KDBENCH_DATA (unset)"]) + [str(p) for p in candidates]
    if dataset in _DOWNLOADABLE:
        try:
            _download(dataset, _cache_dir())
        except Exception as e:  # noqa: BLE001 - any download failure becomes the advice below
            tried.append(f"download into {_cache_dir()} (failed: {type(e).__name__}: {e})")
        else:
            if locate(dataset, _cache_dir()) is not None:
                return _cache_dir()
            tried.append(f"download into {_cache_dir()} (finished but the files are not there)")
    raise UsageError(f"{dataset} not found; tried: {'; '.join(tried)}. To get it: {_HINTS[dataset]}")
