"""`kdbench bench --data`: the device-resident loader against torchvision's DataLoader path.

Both read the same uint8 images and apply the same augmentation (pad-crop, flip, resize to the
preset's size, normalise); the torchvision path is the usual per-sample PIL pipeline.
"""

import time
from typing import Dict, List

import torch
from PIL import Image
from torchvision import transforms as T

from .data import build_loaders, load_dataset


def bench_data(data_cfg, *, batch_size: int, batches: int, device: torch.device, workers: int) -> List[Dict]:
    loader, _, info = build_loaders(data_cfg, batch_size=batch_size, device=device, seed=0)
    ours = _rate(lambda: _iterate(loader, batches), batches * batch_size, device)
    tv = _rate(lambda: _iterate_torchvision(data_cfg, batch_size, batches, device, workers),
               batches * batch_size, device)
    common = {"dataset": info.name, "img_size": info.img_size, "batch_size": batch_size, "device": str(device)}
    return [{"loader": "kdbench (device-resident)", "img_per_s": round(ours, 1), **common,
             "ratio_to_torchvision": round(ours / tv, 2)},
            {"loader": f"torchvision DataLoader (PIL, {workers} workers)", "img_per_s": round(tv, 1), **common,
             "ratio_to_torchvision": 1.0}]


def _rate(fn, images: int, device) -> float:
    fn()                                   # warm-up: caches, worker start-up paths
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return images / (time.perf_counter() - start)


def _iterate(loader, batches: int):
    it, epoch = loader.epoch(0), 0
    for _ in range(batches):
        try:
            x, y = next(it)
        except StopIteration:
            epoch += 1
            it = loader.epoch(epoch)
            x, y = next(it)
    return x.sum()                         # touch the last batch


def _iterate_torchvision(cfg, batch_size, batches, device, workers):

    ds = load_dataset(cfg)
    native = ds.train_images.shape[-1]
    steps = [T.RandomCrop(native, padding=cfg.pad)] if cfg.pad else []
    steps += [T.RandomHorizontalFlip()] if cfg.flip else []
    steps += [T.Resize(cfg.img_size)] if cfg.img_size != native else []
    steps += [T.ToTensor(), T.Normalize(ds.mean, ds.std)]
    dataset = _PILDataset(ds.train_images, ds.train_labels, T.Compose(steps))
    dl = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                     num_workers=workers, pin_memory=device.type == "cuda",
                                     persistent_workers=False)
    n = 0
    while n < batches:
        for x, y in dl:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            n += 1
            if n == batches:
                break
    return x.sum()


class _PILDataset(torch.utils.data.Dataset):
    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        img = self.images[i]
        pil = Image.fromarray(img[0].numpy(), mode="L") if img.shape[0] == 1 else \
            Image.fromarray(img.permute(1, 2, 0).numpy(), mode="RGB")
        return self.transform(pil), int(self.labels[i])
