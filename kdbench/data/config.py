"""What data a run uses: the `data.` config section, dataset facts known without reading files,
and the two records the loaders produce (an in-memory `Dataset`, a `DatasetInfo` for the run)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from kdbench.errors import unknown_choice
from kdbench.validators import at_least, non_negative, opt_in, unhashed

CLASSIFICATION_DATASETS = ("synthetic", "fashion-mnist", "cifar10", "cifar100", "imagenet")
DETECTION_DATASETS = ("synthetic-det", "fmnist-det", "coco")     # generated sets (kdbench.detection), COCO 2017
DATASETS = CLASSIFICATION_DATASETS + DETECTION_DATASETS

STATS = {  # per-channel mean, std in [0, 1] units
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_GEOMETRY = {"fashion-mnist": (10, 1), "cifar10": (10, 3), "cifar100": (100, 3), "imagenet": (1000, 3),
             "synthetic-det": (10, 3), "fmnist-det": (10, 3), "coco": (80, 3)}   # detection: foreground classes
_SIZES = {"fashion-mnist": (60000, 10000), "cifar10": (50000, 10000), "cifar100": (50000, 10000),
          "imagenet": (1281167, 50000), "coco": (118287, 5000),
          "synthetic-det": (2000, 500), "fmnist-det": (2000, 500)}   # generated: their default sizes


@dataclass
class DataConfig:
    """What data to use and how to augment it (the `data.` section of a run configuration)."""

    dataset: str = "fashion-mnist"
    root: Optional[str] = unhashed(None)   # explicit --data-root; None = resolve (not in the hash)
    img_size: int = 28               # size of the images fed to the model (resized on device if != native)
    train_limit: int = 0             # 0 = all; else a deterministic class-balanced subset
    test_limit: int = 0
    pad: int = 0                     # pad-crop padding in pixels at native resolution (0 = off)
    flip: bool = False               # random horizontal flip
    synthetic_classes: int = 10
    synthetic_size: int = 16         # native side of synthetic images
    synthetic_channels: int = 3
    synthetic_train: int = 2048
    synthetic_test: int = 512
    workers: int = unhashed(4)             # DataLoader workers (imagenet, coco; not in the hash)
    resize_short: int = opt_in(0)          # coco: shorter side in px, longer <= img_size (the canvas); 0 = fit

    def __post_init__(self):
        """Checked when built, like every config, so a bad `--set data.*` is refused before anything is
        written (the dataset's presence is checked apart, when a grid is planned)."""
        check_name(self.dataset)
        at_least("data.img_size", self.img_size, 1)
        for name in ("train_limit", "test_limit", "pad", "workers", "resize_short"):
            non_negative(f"data.{name}", getattr(self, name))
        if self.dataset == "synthetic":
            at_least("data.synthetic_classes", self.synthetic_classes, 2)
            at_least("data.synthetic_size", self.synthetic_size, 4)
            for name in ("synthetic_channels", "synthetic_train", "synthetic_test"):
                at_least(f"data.{name}", getattr(self, name), 1)


@dataclass
class Dataset:
    """A small dataset held in memory as uint8 (N, C, H, W) CPU tensors with int64 labels."""

    name: str
    num_classes: int
    in_chans: int
    mean: tuple
    std: tuple
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str


@dataclass
class DatasetInfo:
    """What the rest of kdbench needs to know about the data a run trains on."""

    name: str
    num_classes: int
    in_chans: int
    img_size: int
    num_train: int
    num_test: int
    source: str


def check_name(dataset: str) -> None:
    """Raise a "did you mean" UsageError unless `dataset` is one of DATASETS."""
    if dataset not in DATASETS:
        raise unknown_choice("dataset", dataset, DATASETS)


def dataset_geometry(cfg: DataConfig) -> tuple:
    """(num_classes, in_chans) of a dataset, without reading it."""
    check_name(cfg.dataset)
    if cfg.dataset == "synthetic":
        return cfg.synthetic_classes, cfg.synthetic_channels
    return _GEOMETRY[cfg.dataset]


def dataset_sizes(cfg: DataConfig) -> tuple:
    """(train, test) image counts of the full dataset with the config's limits, without reading it:
    what a cost projection assumes even where only small stand-in files are present."""
    check_name(cfg.dataset)
    train, test = ((cfg.synthetic_train, cfg.synthetic_test) if cfg.dataset == "synthetic" else _SIZES[cfg.dataset])
    return (min(train, cfg.train_limit) if cfg.train_limit else train,
            min(test, cfg.test_limit) if cfg.test_limit else test)
