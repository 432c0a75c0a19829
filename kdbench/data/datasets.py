"""From a DataConfig to data: small datasets read into memory, ImageNet as image folders, both
cut to the config's deterministic class-balanced limits."""

from __future__ import annotations

import numpy as np
import torch

from kdbench.errors import UsageError

from .config import STATS, DataConfig, Dataset
from .readers import CIFAR_LAYOUT, read_cifar, read_fashion, read_image_folders
from .sources import locate, resolve_root
from .synthetic import synthetic_arrays


def balanced_subset(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted indices of a class-balanced subset of exactly min(k, N) samples.

    Walks a fixed permutation (seed 0) and takes samples round by round: the first of each
    class, then the second of each class, ... so class counts differ by at most one (unless a
    class runs out). Independent of the run seed.
    """
    n = len(labels)
    if k <= 0 or k >= n:
        return torch.arange(n)
    perm = np.random.default_rng(0).permutation(n)
    lab = labels.numpy()[perm]
    order = np.argsort(lab, kind="stable")
    first = np.searchsorted(lab[order], lab[order], side="left")  # start of each sample's class group
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - first  # position of each sample within its class, in perm order
    chosen = perm[np.argsort(rank * n + np.arange(n), kind="stable")[:k]]
    return torch.from_numpy(np.sort(chosen))


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load a small dataset (not imagenet) into memory, with train/test limits applied."""
    name = cfg.dataset
    if name == "imagenet":
        raise UsageError("imagenet is read from folders by build_loaders, not loaded into memory")
    if name == "synthetic":
        arrays, source, n_cls = synthetic_arrays(cfg), "procedural", cfg.synthetic_classes
    else:
        folder = locate(name, resolve_root(name, cfg.root))
        arrays = read_fashion(folder) if name == "fashion-mnist" else read_cifar(name, folder)
        source, n_cls = str(folder), (10 if name == "fashion-mnist" else CIFAR_LAYOUT[name][4])
    x_tr, y_tr, x_te, y_te = (torch.from_numpy(np.ascontiguousarray(a).copy()) for a in arrays)
    y_tr, y_te = y_tr.long(), y_te.long()
    for labels, what in ((y_tr, "train"), (y_te, "test")):
        if len(labels) and (labels.min() < 0 or labels.max() >= n_cls):
            raise UsageError(f"{source}: {what} labels outside [0, {n_cls})")
    tr, te = balanced_subset(y_tr, cfg.train_limit), balanced_subset(y_te, cfg.test_limit)
    x_tr, y_tr, x_te, y_te = x_tr[tr], y_tr[tr], x_te[te], y_te[te]
    if name == "synthetic":
        mean = tuple((x_tr.float().mean(dim=(0, 2, 3)) / 255).tolist())
        std = tuple((x_tr.float().std(dim=(0, 2, 3)) / 255).clamp_min(1e-3).tolist())
    else:
        mean, std = STATS[name]
    return Dataset(name, n_cls, x_tr.shape[1], mean, std, x_tr, y_tr, x_te, y_te, source)


def image_folders(cfg: DataConfig):
    """(train, val, num_classes, root) of an ImageNet-style folder tree, with the config's limits."""
    root = resolve_root("imagenet", cfg.root)
    train, val = read_image_folders(root, cfg.img_size)
    n_cls = len(train.classes)
    if cfg.train_limit:
        train = torch.utils.data.Subset(train, balanced_subset(torch.tensor(train.targets), cfg.train_limit))
    if cfg.test_limit:
        val = torch.utils.data.Subset(val, balanced_subset(torch.tensor(val.targets), cfg.test_limit))
    return train, val, n_cls, root
