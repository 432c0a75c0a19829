"""Detection batches with the classification loaders' interface (`epoch(k)`, `len`).

A generated (or small COCO-format) set is read once into memory: uint8 images (N, C, S, S) of one
canvas size and per-image targets. Training batches are this rank's shard of a seeded
permutation (`ShardedTrainLoader`), horizontally flipped per sample (boxes with them), then
normalised on the device; targets are lists of {"boxes" x1y1x2y2, "labels" 1..K} on the device.
The eval loader gives every image once, in order, with its full target (image_id, scale) for the
COCO evaluation.
"""

from typing import Iterator, List, Tuple

import torch

from ..data.augment import Normalizer
from ..data.loaders import ShardedTrainLoader

Targets = List[dict]


def load_in_memory(dataset) -> Tuple[torch.Tensor, List[dict]]:
    """All images of a `CocoDetection` as one uint8 tensor (N, C, S, S) and their targets; every
    image must have the same size (a generated set's canvas)."""
    images, targets = [], []
    for i in range(len(dataset)):
        x, t = dataset[i]
        images.append((x * 255).round().to(torch.uint8))
        targets.append(t)
    sizes = {tuple(x.shape[-2:]) for x in images}
    if len(sizes) > 1:
        raise ValueError(f"detection images of several sizes {sorted(sizes)}: expected one canvas size")
    return torch.stack(images), targets


def _flip(target: dict, width: int) -> dict:
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    return {**target, "boxes": boxes}


def _on(target: dict, device) -> dict:
    return {"boxes": target["boxes"].to(device), "labels": target["labels"].to(device)}


class DetectionTrainLoader(ShardedTrainLoader):
    """This rank's batches of one epoch: (normalised images on the device, targets on the device)."""

    def __init__(self, images: torch.Tensor, targets: Targets, *, batch_size: int, seed: int,
                 normalizer: Normalizer, flip: bool, device, rank: int = 0, world_size: int = 1):
        super().__init__(len(targets), batch_size=batch_size, seed=seed, rank=rank, world_size=world_size)
        self.images, self.targets = images.to(device), targets
        self.normalize, self.flip, self.device = normalizer, flip, device

    def epoch(self, epoch: int) -> Iterator[Tuple[torch.Tensor, Targets]]:
        shard, g = self.shard(epoch)
        flips = torch.rand(len(self.targets), generator=g) < 0.5
        width = self.images.shape[-1]
        for idx in shard:
            x = self.images[idx.to(self.images.device)]
            chosen = flips[idx] if self.flip else torch.zeros(len(idx), dtype=torch.bool)
            if chosen.any():
                x = torch.where(chosen.to(x.device).view(-1, 1, 1, 1), x.flip(3), x)
            targets = [_on(_flip(self.targets[i], width) if f else self.targets[i], self.device)
                       for i, f in zip(idx.tolist(), chosen.tolist())]
            yield self.normalize(x), targets


class DetectionEvalLoader:
    """Every image once, in order: (normalised images, full targets on the CPU)."""

    def __init__(self, images: torch.Tensor, targets: Targets, *, batch_size: int, normalizer: Normalizer, device):
        self.images, self.targets = images.to(device), targets
        self.batch_size, self.normalize = batch_size, normalizer

    def __len__(self) -> int:
        return -(-len(self.targets) // self.batch_size)

    def __iter__(self):
        return self.epoch(0)

    def epoch(self, epoch: int = 0):
        for lo in range(0, len(self.targets), self.batch_size):
            yield self.normalize(self.images[lo:lo + self.batch_size]), self.targets[lo:lo + self.batch_size]
