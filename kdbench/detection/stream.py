"""Detection batches streamed from disk (COCO): the in-memory loaders' interface for sets too large to
hold, read by DataLoader workers.

Every image is resized by `CocoDetection` (shorter side `min_size`, longer at most `max_size`),
normalised, and letterboxed: put at the top-left of a zero (= the mean, after normalisation)
square canvas of `canvas` px, because timm's Swin/ViT/Mixer backbones are built for one input
size. Boxes keep their coordinates (the canvas only adds padding right and below), so
`to_coco_predictions` maps them back by the image's scale alone. The training plan (shard,
permutation, flips) is `ShardedTrainLoader`'s, so a seed gives the same batches in any worker count.
"""

from typing import Iterator, List, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.loaders import ShardedTrainLoader
from .coco import CocoDetection
from .loaders import _flip


class Letterboxed(Dataset):
    """(index, flip) -> (normalised image on a canvas x canvas zero map, target)."""

    def __init__(self, dataset: CocoDetection, canvas: int, mean: Sequence[float], std: Sequence[float]):
        self.dataset, self.canvas = dataset, canvas
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: Tuple[int, bool]):
        index, flip = item
        image, target = self.dataset[index]
        c, h, w = image.shape
        if h > self.canvas or w > self.canvas:
            raise ValueError(f"image {target['image_id']} is {h}x{w} after resizing, larger than the "
                             f"{self.canvas}-px canvas: raise data.img_size or lower the resize")
        if flip:
            image, target = image.flip(2), _flip(target, w)
        out = image.new_zeros(c, self.canvas, self.canvas)
        out[:, :h, :w] = (image - self.mean) / self.std
        return out, target


def _stack(batch):
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)


def _on(target: dict, device) -> dict:
    return {"boxes": target["boxes"].to(device), "labels": target["labels"].to(device)}


class StreamTrainLoader(ShardedTrainLoader):
    """This rank's training batches of one epoch, read by `workers` processes: (images on the
    device, targets {"boxes", "labels"} on the device)."""

    def __init__(self, dataset: Letterboxed, *, batch_size: int, seed: int, flip: bool, device, workers: int,
                 rank: int = 0, world_size: int = 1):
        super().__init__(len(dataset), batch_size=batch_size, seed=seed, rank=rank, world_size=world_size)
        self.dataset, self.flip, self.device, self.workers = dataset, flip, device, workers

    def plan(self, epoch: int) -> List[List[Tuple[int, bool]]]:
        """This rank's batches of `epoch` as lists of (image index, flipped)."""
        shard, g = self.shard(epoch)
        flips = torch.rand(self.num_samples, generator=g) < 0.5
        return [[(i, bool(flips[i]) and self.flip) for i in batch.tolist()] for batch in shard]

    def epoch(self, epoch: int) -> Iterator[Tuple[torch.Tensor, List[dict]]]:
        loader = DataLoader(self.dataset, batch_sampler=self.plan(epoch), num_workers=self.workers,
                            collate_fn=_stack, pin_memory=self.device.type == "cuda")
        for images, targets in loader:
            yield images.to(self.device, non_blocking=True), [_on(t, self.device) for t in targets]


class StreamEvalLoader:
    """Every image once, in order: (images on the device, full targets on the CPU)."""

    def __init__(self, dataset: Letterboxed, *, batch_size: int, device, workers: int):
        self.dataset, self.batch_size, self.device, self.workers = dataset, batch_size, device, workers

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self):
        return self.epoch(0)

    def epoch(self, epoch: int = 0):
        n = len(self.dataset)
        batches = [[(i, False) for i in range(lo, min(lo + self.batch_size, n))] for lo in range(0, n, self.batch_size)]
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.workers, collate_fn=_stack)
        for images, targets in loader:
            yield images.to(self.device, non_blocking=True), targets
