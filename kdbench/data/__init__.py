"""Datasets and loaders.

Small datasets (synthetic, Fashion-MNIST, CIFAR-10/100) are read once into uint8 tensors that
live on the training device; each batch is augmented there (pad-crop, flip, resize, normalise,
mixup/cutmix) with random numbers drawn from generators seeded by (seed, epoch), so a run's
data order and augmentation depend on nothing else. ImageNet is read from a folder through a
torch DataLoader behind the same `Loader` protocol.

Modules: `config` (DataConfig, dataset facts), `sources` (where the files are), `readers` (file
formats), `synthetic` (procedural data), `datasets` (loading with limits), `augment` (on-device
augmentation), `loaders` (the Loader protocol, its implementations and `build_loaders`).
"""

from .config import DATASETS, DataConfig, Dataset, DatasetInfo, dataset_geometry, dataset_sizes
from .datasets import load_dataset
from .loaders import (CPU_EVAL_BATCH, EvalLoader, FolderEvalLoader, FolderTrainLoader, Loader, TrainLoader,
                      build_loaders)
from .sources import resolve_root

__all__ = ["DATASETS", "DataConfig", "Dataset", "DatasetInfo", "Loader", "TrainLoader", "EvalLoader",
           "FolderTrainLoader", "FolderEvalLoader", "CPU_EVAL_BATCH", "dataset_geometry", "dataset_sizes",
           "resolve_root", "load_dataset", "build_loaders"]
