"""Loaders: the `Loader` protocol the engine iterates, its device-resident and folder-backed
implementations, and `build_loaders`, which picks them for a DataConfig.

A training epoch is fixed by (seed, epoch): one permutation of the whole dataset, cut into steps
of `world_size` x `batch_size` samples, of which each rank takes its own `batch_size`
(`ShardedTrainLoader`, shared by both train loaders). Augmentation randomness is seeded the same
way, so a run's batches depend on nothing else.
"""

from __future__ import annotations

from typing import Iterator, Optional, Protocol, runtime_checkable

import numpy as np
import torch

from kdbench.errors import UsageError

from .augment import Mixer, Normalizer, pad_crop
from .config import DataConfig, DatasetInfo
from .datasets import image_folders, load_dataset

Batch = tuple[torch.Tensor, torch.Tensor]

# Inference on CPU is 1.4-2.4x slower at batch 1024 than at 128 (cache effects, benchmarks/README.md).
# Eval-mode outputs do not depend on the batch, so this changes speed only.
CPU_EVAL_BATCH = 128


@runtime_checkable
class Loader(Protocol):
    """What the engine iterates: batches of (float images on the device, targets).

    `len(loader)` is the number of batches per epoch, `loader.epoch(e)` iterates epoch `e` (the
    same batches every time it is called with the same `e`), and iterating the loader itself is
    `epoch(0)`. Eval loaders give the same batches for every epoch.
    """

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Batch]: ...

    def epoch(self, epoch: int) -> Iterator[Batch]: ...


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys such as (seed, epoch, rank, stream)."""
    state = np.random.SeedSequence([k % 2 ** 64 for k in keys]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class ShardedTrainLoader:
    """The epoch plan of both train loaders: `len()` = steps per epoch, the incomplete tail dropped.

    Subclasses implement `epoch(e)` from `shard(e)` and `mix_rng(e)`.
    """

    def __init__(self, num_samples: int, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if world_size < 1 or not 0 <= rank < world_size:
            raise UsageError(f"invalid rank={rank!r} of world_size={world_size!r}")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.steps = num_samples // (batch_size * world_size)
        if self.steps == 0:
            raise UsageError(f"batch size {batch_size} x {world_size} rank(s) exceeds the {num_samples} "
                             "training images")

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        raise NotImplementedError

    def shard(self, epoch: int) -> tuple[torch.Tensor, torch.Generator]:
        """This rank's sample indices of `epoch` as (steps, batch_size), and the epoch's generator,
        left just after the permutation for any further per-sample draws."""
        g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        perm = torch.randperm(self.num_samples, generator=g)
        used = self.steps * self.batch_size * self.world_size
        return perm[:used].view(self.steps, self.world_size, self.batch_size)[:, self.rank], g

    def sample_labels(self) -> torch.Tensor:
        """The int64 label of every training sample, by dataset index (for methods that index samples)."""
        raise NotImplementedError

    def mix_rng(self, epoch: int) -> np.random.Generator:
        """The generator of this rank's mixup/cutmix draws in `epoch`."""
        return np.random.default_rng(derive_seed(self.seed, epoch, self.rank, 1))


class TrainLoader(ShardedTrainLoader):
    """Training batches from a dataset held on the device, augmented there.

    Pad-crop offsets and flips are drawn for every sample in a fixed order after the permutation,
    so each rank sees the same draws; then images are normalised (and resized), then mixed.
    """

    def __init__(self, images, labels, *, batch_size: int, seed: int, normalizer: Normalizer,
                 pad: int = 0, flip: bool = False, mixer: Optional[Mixer] = None, rank: int = 0,
                 world_size: int = 1):
        super().__init__(len(labels), batch_size=batch_size, seed=seed, rank=rank, world_size=world_size)
        self.images, self.labels = images, labels
        self.normalize, self.pad, self.flip, self.mixer = normalizer, pad, flip, mixer

    def sample_labels(self) -> torch.Tensor:
        return self.labels

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """Iterate over the batches of `epoch`: (float images on device, targets)."""
        n, device = len(self.labels), self.images.device
        shard, g = self.shard(epoch)
        offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=g).to(device)
        flips = (torch.rand(n, generator=g) < 0.5).to(device)
        return self._batches(shard.to(device), offsets, flips, self.mix_rng(epoch))

    def _batches(self, shard, offsets, flips, rng):
        for idx in shard:
            x, y = self.images[idx], self.labels[idx]
            if self.pad:
                x = pad_crop(x, offsets[idx], self.pad)
            if self.flip:
                x = torch.where(flips[idx].view(-1, 1, 1, 1), x.flip(3), x)
            x = self.normalize(x)
            if self.mixer is not None:
                x, y = self.mixer(x, y, rng)
            yield x, y


class EvalLoader:
    """Every test image once, in order, normalised and resized, in batches of `batch_size`."""

    def __init__(self, images, labels, *, batch_size: int, normalizer: Normalizer):
        self.images, self.labels, self.batch_size, self.normalize = images, labels, batch_size, normalizer

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)

    def epoch(self, epoch: int = 0) -> Iterator[Batch]:
        """The same batches for every `epoch`."""
        for lo in range(0, len(self.labels), self.batch_size):
            yield self.normalize(self.images[lo:lo + self.batch_size]), self.labels[lo:lo + self.batch_size]


class _SeededSamples(torch.utils.data.Dataset):
    """Wraps a map-style dataset so each sample's random transform is seeded by (seed, epoch, index),
    independent of worker count and global RNG state."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        with torch.random.fork_rng(devices=[]):  # CPU RNG only: transforms run on CPU
            torch.default_generator.manual_seed(derive_seed(self.seed, self.epoch, index, 2))
            return self.dataset[index]


class FolderTrainLoader(ShardedTrainLoader):
    """ImageNet-style training batches read through a DataLoader; transforms run per sample on CPU."""

    def __init__(self, dataset, *, batch_size: int, seed: int, device, workers: int,
                 mixer: Optional[Mixer] = None, rank: int = 0, world_size: int = 1):
        super().__init__(len(dataset), batch_size=batch_size, seed=seed, rank=rank, world_size=world_size)
        self.data = _SeededSamples(dataset, seed)
        self.device, self.workers, self.mixer = device, workers, mixer
        self.dataset = dataset

    def sample_labels(self) -> torch.Tensor:
        d, picked = self.dataset, None
        if isinstance(d, torch.utils.data.Subset):        # a class-balanced limit of an image folder
            d, picked = d.dataset, torch.as_tensor(d.indices)
        labels = torch.as_tensor(d.targets, dtype=torch.long)
        return (labels if picked is None else labels[picked]).to(self.device)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """Iterate over the batches of `epoch`, moved to the device (mixup/cutmix applied there)."""
        shard, _ = self.shard(epoch)
        self.data.epoch = epoch  # workers are started per epoch, so they see this
        loader = torch.utils.data.DataLoader(
            self.data, batch_size=self.batch_size, sampler=shard.reshape(-1).tolist(), num_workers=self.workers,
            pin_memory=torch.device(self.device).type == "cuda", drop_last=True)
        rng = self.mix_rng(epoch)
        for x, y in loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.mixer is not None:
                x, y = self.mixer(x, y, rng)
            yield x, y


class FolderEvalLoader:
    """ImageNet validation batches in order, with EvalLoader's interface."""

    def __init__(self, dataset, *, batch_size: int, device, workers: int):
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
            pin_memory=torch.device(device).type == "cuda")
        self.device = device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)

    def epoch(self, epoch: int = 0) -> Iterator[Batch]:
        """The same batches for every `epoch`, moved to the device."""
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def build_loaders(cfg: DataConfig, *, batch_size: int, device, seed: int, mixup: float = 0.0,
                  cutmix: float = 0.0, label_smoothing: float = 0.0, eval_batch_size: Optional[int] = None,
                  rank: int = 0, world_size: int = 1) -> tuple[Loader, Loader, DatasetInfo]:
    """Build (train loader, eval loader, DatasetInfo) for `cfg` on `device`.

    Train batches are (float32 (B, C, img_size, img_size) normalised images, targets) with
    B = `batch_size` per rank; targets are int64 labels, or float (B, num_classes) soft targets
    when mixup or cutmix is on (label smoothing folded in, as timm's Mixup does). Without mixup,
    label smoothing is left to the loss. The eval loader gives every test image once, in order,
    on every rank, in batches of `eval_batch_size` (at most `CPU_EVAL_BATCH` on a CPU).
    The recipe values (batch sizes, mixup, cutmix, label smoothing) are RecipeConfig's to validate.
    """
    eval_batch_size = eval_batch_size or batch_size
    device = torch.device(device)
    if device.type == "cpu":
        eval_batch_size = min(eval_batch_size, CPU_EVAL_BATCH)

    def mixer(num_classes):
        return Mixer(mixup, cutmix, label_smoothing, num_classes) if mixup > 0 or cutmix > 0 else None

    if cfg.dataset == "imagenet":
        train, val, n_cls, root = image_folders(cfg)
        train_loader = FolderTrainLoader(train, batch_size=batch_size, seed=seed, device=device,
                                         workers=cfg.workers, mixer=mixer(n_cls), rank=rank, world_size=world_size)
        eval_loader = FolderEvalLoader(val, batch_size=eval_batch_size, device=device, workers=cfg.workers)
        info = DatasetInfo("imagenet", n_cls, 3, cfg.img_size, len(train), len(val), str(root))
        return train_loader, eval_loader, info

    ds = load_dataset(cfg)
    norm = Normalizer(ds.mean, ds.std, cfg.img_size, device)
    train_loader = TrainLoader(ds.train_images.to(device), ds.train_labels.to(device), batch_size=batch_size,
                               seed=seed, normalizer=norm, pad=cfg.pad, flip=cfg.flip,
                               mixer=mixer(ds.num_classes), rank=rank, world_size=world_size)
    eval_loader = EvalLoader(ds.test_images.to(device), ds.test_labels.to(device),
                             batch_size=eval_batch_size, normalizer=norm)
    info = DatasetInfo(ds.name, ds.num_classes, ds.in_chans, cfg.img_size, len(ds.train_labels),
                       len(ds.test_labels), ds.source)
    return train_loader, eval_loader, info
