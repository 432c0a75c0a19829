"""File formats: Fashion-MNIST IDX files, CIFAR pickle batches and ImageNet-style image folders.

Each reader takes a folder already located (see `sources`) and turns any unreadable or
inconsistent file into a UsageError that names it.
"""

from __future__ import annotations

import gzip
import math
import pickle
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import datasets, transforms as T

from kdbench.errors import UsageError

FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_LAYOUT = {  # dataset -> (folder, train files, test files, label key, classes)
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                b"labels", 10),
    "cifar100": ("cifar-100-python", ("train",), ("test",), b"fine_labels", 100),
}


def idx_file(folder: Path, stem: str) -> Optional[Path]:
    """The IDX file `stem` in `folder`, uncompressed preferred, else `stem.gz`, else None."""
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file of uint8 (optionally gzipped) into an array of its declared shape."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            buf = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    if len(buf) < 4 or buf[:3] != b"\x00\x00\x08":
        raise UsageError(f"{path} is not a uint8 IDX file (bad magic bytes)")
    header = 4 + 4 * buf[3]
    dims = [int.from_bytes(buf[4 + 4 * i:8 + 4 * i], "big") for i in range(buf[3])]
    if len(buf) < header or len(buf) - header != math.prod(dims):
        raise UsageError(f"{path} is truncated or corrupt: header says shape {dims}, "
                         f"file holds {max(len(buf) - header, 0)} payload bytes")
    return np.frombuffer(buf, np.uint8, offset=header).reshape(dims)


def read_fashion(folder: Path) -> list:
    """[train images (N, 1, 28, 28), train labels, test images, test labels] as uint8 arrays."""
    arrays = {stem: read_idx(idx_file(folder, stem)) for stem in FASHION_FILES}
    out = []
    for split in ("train", "t10k"):
        images, labels = arrays[f"{split}-images-idx3-ubyte"], arrays[f"{split}-labels-idx1-ubyte"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UsageError(f"Fashion-MNIST files in {folder} are inconsistent: {split} images "
                             f"{images.shape}, labels {labels.shape}")
        out += [images[:, None], labels]
    return out


def _read_cifar_file(path: Path, label_key: bytes):
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except Exception as e:  # noqa: BLE001 - a corrupt pickle can raise almost any exception type
        raise UsageError(f"cannot read {path}: not a CIFAR batch file ({type(e).__name__}: {e})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
        raise UsageError(f"{path} is not a CIFAR batch file: data {data.shape}, labels {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar(dataset: str, folder: Path) -> list:
    """[train images (N, 3, 32, 32), train labels, test images, test labels] of CIFAR-10/100."""
    _, train, test, key, _ = CIFAR_LAYOUT[dataset]
    out = []
    for files in (train, test):
        parts = [_read_cifar_file(folder / f, key) for f in files]
        out += [np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])]
    return out


def read_image_folders(root: Path, img_size: int):
    """(train, val) torchvision ImageFolders of `root`/train and `root`/val with timm's ImageNet
    transforms: random-resized crop and flip for training, resize and centre crop for evaluation."""

    norm = [T.ToTensor(), T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)]
    train_tf = T.Compose([T.RandomResizedCrop(img_size), T.RandomHorizontalFlip()] + norm)
    eval_tf = T.Compose([T.Resize(int(img_size / 0.875)), T.CenterCrop(img_size)] + norm)
    try:
        train = datasets.ImageFolder(str(root / "train"), transform=train_tf)
        val = datasets.ImageFolder(str(root / "val"), transform=eval_tf)
    except (FileNotFoundError, OSError) as e:
        raise UsageError(f"cannot read ImageNet under {root}: {e}") from None
    if train.classes != val.classes:
        raise UsageError(f"ImageNet under {root}: train/ and val/ have different class folders "
                         f"({len(train.classes)} vs {len(val.classes)})")
    return train, val
