"""Datasets and loaders.

Small datasets (synthetic, Fashion-MNIST, CIFAR-10/100) are read once into uint8 tensors that
live on the training device; each batch is augmented there (pad-crop, flip, resize, normalise,
mixup/cutmix) with random numbers drawn from generators seeded by (seed, epoch), so a run's
data order and augmentation depend on nothing else. ImageNet is read from a folder through a
torch DataLoader with the same loader interface.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from kdbench.errors import UsageError, unknown_choice

__all__ = ["DATASETS", "DataConfig", "Dataset", "DatasetInfo", "TrainLoader", "EvalLoader",
           "FolderTrainLoader", "FolderEvalLoader", "resolve_root", "load_dataset", "build_loaders"]

DATASETS = ("synthetic", "fashion-mnist", "cifar10", "cifar100", "imagenet")

_STATS = {  # per-channel mean, std in [0, 1] units
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_SYSTEM_ROOTS = {"fashion-mnist": ("/usr/share/datasets/fashion-mnist",)}
_DOWNLOADABLE = ("fashion-mnist", "cifar10", "cifar100")
_FMNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_CIFAR = {  # dataset -> (folder, train files, test files, label key, classes)
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                b"labels", 10),
    "cifar100": ("cifar-100-python", ("train",), ("test",), b"fine_labels", 100),
}
_LAYOUTS = {
    "fashion-mnist": "the IDX files {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] directly in DIR, "
                     "in DIR/fashion-mnist/ or in DIR/FashionMNIST/raw/",
    "cifar10": "DIR/cifar-10-batches-py/ with data_batch_1..5 and test_batch",
    "cifar100": "DIR/cifar-100-python/ with train and test",
    "imagenet": "DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG",
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
}


_GEOMETRY = {"fashion-mnist": (10, 1), "cifar10": (10, 3), "cifar100": (100, 3), "imagenet": (1000, 3)}


def dataset_geometry(cfg: "DataConfig") -> tuple:
    """(num_classes, in_chans) of a dataset, without reading it."""
    _check_name(cfg.dataset)
    if cfg.dataset == "synthetic":
        return cfg.synthetic_classes, cfg.synthetic_channels
    return _GEOMETRY[cfg.dataset]


_SIZES = {"fashion-mnist": (60000, 10000), "cifar10": (50000, 10000), "cifar100": (50000, 10000),
          "imagenet": (1281167, 50000)}


def dataset_sizes(cfg: "DataConfig") -> tuple:
    """(train, test) image counts of the full dataset with the config's limits, without reading it:
    what a cost projection assumes even where only small stand-in files are present."""
    _check_name(cfg.dataset)
    train, test = ((cfg.synthetic_train, cfg.synthetic_test) if cfg.dataset == "synthetic" else _SIZES[cfg.dataset])
    return (min(train, cfg.train_limit) if cfg.train_limit else train,
            min(test, cfg.test_limit) if cfg.test_limit else test)


@dataclass
class DataConfig:
    """What data to use and how to augment it (the `data.` section of a run configuration)."""

    dataset: str = "fashion-mnist"
    root: Optional[str] = None       # explicit --data-root; None = resolve
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
    workers: int = 4                 # DataLoader workers (imagenet only)


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


# ----------------------------------------------------------------------------- root resolution

def _check_name(dataset: str) -> None:
    if dataset not in DATASETS:
        raise unknown_choice("dataset", dataset, DATASETS)


def _cache_dir() -> Path:
    return Path.home() / ".cache" / "kdbench" / "data"


def _idx_file(folder: Path, stem: str) -> Optional[Path]:
    """The IDX file `stem` in `folder`, uncompressed preferred, else `stem.gz`, else None."""
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _locate(dataset: str, root: Path) -> Optional[Path]:
    """The folder under `root` that holds `dataset` in an accepted layout, or None."""
    if dataset == "fashion-mnist":
        for folder in (root, root / "fashion-mnist", root / "FashionMNIST" / "raw"):
            if all(_idx_file(folder, stem) for stem in _FMNIST_FILES):
                return folder
        return None
    if dataset in _CIFAR:
        folder, train, test, _, _ = _CIFAR[dataset]
        ok = all((root / folder / f).is_file() for f in train + test)
        return root / folder if ok else None
    if dataset == "imagenet":
        return root if (root / "train").is_dir() and (root / "val").is_dir() else None
    return None


def _download(dataset: str, cache: Path) -> None:
    """Download `dataset` with torchvision into `cache` (raises on any failure, e.g. offline)."""
    import torchvision.datasets as tvd

    cls = {"fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[dataset]
    cache.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        cls(str(cache), train=train, download=True)


def resolve_root(dataset: str, root: Optional[str] = None) -> Path:
    """Find the data root of `dataset` (the folder that contains it in an accepted layout).

    Order: explicit `root` (no fallback if the data is not there), `$KDBENCH_DATA`, known
    system locations, the download cache `~/.cache/kdbench/data`, then a torchvision download
    into that cache. Raises UsageError saying what was tried and how to get the data.
    The synthetic dataset has no files: its root is `Path("procedural")`.
    """
    _check_name(dataset)
    if dataset == "synthetic":
        return Path("procedural")
    if root is not None:
        path = Path(root).expanduser()
        if _locate(dataset, path) is None:
            raise UsageError(f"--data-root {path} does not contain {dataset}: expected {_LAYOUTS[dataset]}")
        return path
    env = os.environ.get("KDBENCH_DATA")
    candidates = [Path(env).expanduser()] if env else []
    candidates += [Path(p) for p in _SYSTEM_ROOTS.get(dataset, ())] + [_cache_dir()]
    for path in candidates:
        if _locate(dataset, path) is not None:
            return path
    tried = ([] if env else ["$KDBENCH_DATA (unset)"]) + [str(p) for p in candidates]
    if dataset in _DOWNLOADABLE:
        try:
            _download(dataset, _cache_dir())
        except Exception as e:  # noqa: BLE001 - any download failure becomes the advice below
            tried.append(f"download into {_cache_dir()} (failed: {type(e).__name__}: {e})")
        else:
            if _locate(dataset, _cache_dir()) is not None:
                return _cache_dir()
            tried.append(f"download into {_cache_dir()} (finished but the files are not there)")
    raise UsageError(f"{dataset} not found; tried: {'; '.join(tried)}. To get it: {_HINTS[dataset]}")


# ----------------------------------------------------------------------------- file readers

def _read_idx(path: Path) -> np.ndarray:
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


def _read_fashion(folder: Path):
    arrays = {stem: _read_idx(_idx_file(folder, stem)) for stem in _FMNIST_FILES}
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


def _read_cifar(dataset: str, folder: Path):
    _, train, test, key, _ = _CIFAR[dataset]
    out = []
    for files in (train, test):
        parts = [_read_cifar_file(folder / f, key) for f in files]
        out += [np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])]
    return out


# ----------------------------------------------------------------------------- synthetic data

_SYNTH_SEED = 20240611  # the data seed: fixed, independent of the run seed
_SYNTH_PARTS = 3
_SYNTH_NOISE = 0.6


def _synthetic(cfg: DataConfig):
    """Procedural images whose class is a fixed spatial arrangement of oriented stripes and blobs.

    Each class has `_SYNTH_PARTS` Gabor-like parts with a class-specific position, orientation,
    frequency (0 = plain blob), size and colour. A sample translates the whole arrangement by a
    couple of pixels and jitters part amplitudes, channel gains and adds pixel noise.
    """
    n_cls, size, chans = cfg.synthetic_classes, cfg.synthetic_size, cfg.synthetic_channels
    rng = np.random.default_rng(_SYNTH_SEED)
    shape = (n_cls, _SYNTH_PARTS)
    centre = rng.uniform(0.25, 0.75, shape + (2,)) * size
    theta = rng.uniform(0, np.pi, shape)
    freq = rng.choice([0.0, 0.15, 0.25, 0.35], shape) * 16 / size  # cycles per pixel at 16 px
    sigma = rng.uniform(0.08, 0.15, shape) * size
    colour = rng.normal(0, 1, shape + (chans,))
    colour /= np.linalg.norm(colour, axis=-1, keepdims=True)
    grid_y, grid_x = np.mgrid[0:size, 0:size].astype(np.float32)
    max_shift = max(1, round(size / 8))
    out = []
    for split, n in enumerate((cfg.synthetic_train, cfg.synthetic_test)):
        r = np.random.default_rng([_SYNTH_SEED, split + 1])
        y = np.arange(n) % n_cls
        shift = r.integers(-max_shift, max_shift + 1, (n, 1, 2))
        amp = r.uniform(0.6, 1.4, (n, _SYNTH_PARTS, 1))
        gain = r.uniform(0.75, 1.25, (n, chans, 1, 1))
        images = np.empty((n, chans, size, size), np.uint8)
        for lo in range(0, n, 1024):  # chunks bound the (chunk, parts, H, W) temporaries
            sl, ys = slice(lo, lo + 1024), y[lo:lo + 1024]
            c = (centre[ys] + shift[sl])[..., None, None].astype(np.float32)
            dy, dx = grid_y - c[:, :, 0], grid_x - c[:, :, 1]
            th = theta[ys][..., None, None]
            stripes = np.cos(2 * np.pi * freq[ys][..., None, None] * (dx * np.cos(th) + dy * np.sin(th)))
            parts = stripes * np.exp(-(dx ** 2 + dy ** 2) / (2 * sigma[ys][..., None, None] ** 2))
            img = np.einsum("npk,nphw->nkhw", colour[ys] * amp[sl], parts) * gain[sl]
            img += r.normal(0, _SYNTH_NOISE, img.shape)
            images[sl] = np.clip(np.rint(128 + 64 * img), 0, 255)
        out += [images, y.astype(np.int64)]
    return out


# ----------------------------------------------------------------------------- loading

def _balanced_subset(labels: torch.Tensor, k: int) -> torch.Tensor:
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


def _check_config(cfg: DataConfig) -> None:
    _check_name(cfg.dataset)
    checks = [("img_size", cfg.img_size > 0), ("pad", cfg.pad >= 0), ("train_limit", cfg.train_limit >= 0),
              ("test_limit", cfg.test_limit >= 0), ("workers", cfg.workers >= 0)]
    if cfg.dataset == "synthetic":
        checks += [("synthetic_classes", cfg.synthetic_classes >= 2), ("synthetic_size", cfg.synthetic_size >= 4),
                   ("synthetic_channels", cfg.synthetic_channels >= 1),
                   ("synthetic_train", cfg.synthetic_train >= 1), ("synthetic_test", cfg.synthetic_test >= 1)]
    for key, ok in checks:
        if not ok:
            raise UsageError(f"invalid data.{key}={getattr(cfg, key)!r}")


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load a small dataset (not imagenet) into memory, with train/test limits applied."""
    _check_config(cfg)
    name = cfg.dataset
    if name == "imagenet":
        raise UsageError("imagenet is read from folders by build_loaders, not loaded into memory")
    if name == "synthetic":
        arrays, source, n_cls = _synthetic(cfg), "procedural", cfg.synthetic_classes
    else:
        folder = _locate(name, resolve_root(name, cfg.root))
        arrays = _read_fashion(folder) if name == "fashion-mnist" else _read_cifar(name, folder)
        source, n_cls = str(folder), (10 if name == "fashion-mnist" else _CIFAR[name][4])
    x_tr, y_tr, x_te, y_te = (torch.from_numpy(np.ascontiguousarray(a).copy()) for a in arrays)
    y_tr, y_te = y_tr.long(), y_te.long()
    for labels, what in ((y_tr, "train"), (y_te, "test")):
        if len(labels) and (labels.min() < 0 or labels.max() >= n_cls):
            raise UsageError(f"{source}: {what} labels outside [0, {n_cls})")
    tr, te = _balanced_subset(y_tr, cfg.train_limit), _balanced_subset(y_te, cfg.test_limit)
    x_tr, y_tr, x_te, y_te = x_tr[tr], y_tr[tr], x_te[te], y_te[te]
    if name == "synthetic":
        mean = tuple((x_tr.float().mean(dim=(0, 2, 3)) / 255).tolist())
        std = tuple((x_tr.float().std(dim=(0, 2, 3)) / 255).clamp_min(1e-3).tolist())
    else:
        mean, std = _STATS[name]
    return Dataset(name, n_cls, x_tr.shape[1], mean, std, x_tr, y_tr, x_te, y_te, source)


# ----------------------------------------------------------------------------- augmentation

def _derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys such as (seed, epoch, rank, stream)."""
    state = np.random.SeedSequence([k % 2 ** 64 for k in keys]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _pad_crop(x: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """Per-sample crop of the zero-padded batch at offsets (B, 2) in [0, 2*pad] (row, col)."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = offsets[:, :1] + torch.arange(h, device=x.device)
    cols = offsets[:, 1:] + torch.arange(w, device=x.device)
    xp = xp.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, w + 2 * pad))
    return xp.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))


class _Normalizer:
    """uint8 (B, C, H, W) -> float32 normalised (B, C, S, S), bilinearly resized if needed."""

    def __init__(self, mean, std, img_size: int, device):
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1) / std_t
        self.size = img_size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # Normalising before resizing is exact (bilinear weights sum to 1) and cheaper when upsampling.
        x = torch.addcmul(self.shift, x.float(), self.scale)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=False)
        return x


class _Mixer:
    """Batch-mode mixup/cutmix with timm's semantics, randomness from an explicit numpy Generator."""

    def __init__(self, mixup: float, cutmix: float, label_smoothing: float, num_classes: int):
        self.mixup, self.cutmix, self.smoothing, self.num_classes = mixup, cutmix, label_smoothing, num_classes

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator):
        use_cutmix = self.mixup <= 0 or (self.cutmix > 0 and rng.random() < 0.5)
        alpha = self.cutmix if use_cutmix else self.mixup
        lam = float(rng.beta(alpha, alpha))
        if use_cutmix:
            h, w = x.shape[-2:]
            ratio = math.sqrt(1 - lam)
            cut_h, cut_w = int(h * ratio), int(w * ratio)
            cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
            y0, y1 = max(cy - cut_h // 2, 0), min(cy + (cut_h + 1) // 2, h)
            x0, x1 = max(cx - cut_w // 2, 0), min(cx + (cut_w + 1) // 2, w)
            x[:, :, y0:y1, x0:x1] = x.flip(0)[:, :, y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # the fraction of each image actually kept
        else:
            x = x * lam + x.flip(0) * (1.0 - lam)
        off = self.smoothing / self.num_classes
        one_hot = torch.full((len(y), self.num_classes), off, device=y.device)
        one_hot.scatter_(1, y.view(-1, 1), 1.0 - self.smoothing + off)
        return x, one_hot * lam + one_hot.flip(0) * (1.0 - lam)


# ----------------------------------------------------------------------------- device-resident loaders

class TrainLoader:
    """Training batches from a dataset held on the device; `len()` = steps per epoch.

    `epoch(e)` shuffles with a permutation seeded by (seed, e), gives this rank its shard of
    every step (`batch_size` images, the incomplete tail is dropped) and augments on device.
    Iterating the loader itself is `epoch(0)`.
    """

    def __init__(self, images, labels, *, batch_size: int, seed: int, normalizer: _Normalizer,
                 pad: int = 0, flip: bool = False, mixer: Optional[_Mixer] = None, rank: int = 0,
                 world_size: int = 1):
        self.images, self.labels, self.batch_size, self.seed = images, labels, batch_size, seed
        self.normalize, self.pad, self.flip, self.mixer = normalizer, pad, flip, mixer
        self.rank, self.world_size = rank, world_size
        self.steps = len(labels) // (batch_size * world_size)
        if self.steps == 0:
            raise UsageError(f"batch size {batch_size} x {world_size} rank(s) exceeds the {len(labels)} "
                             "training images")

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return self.epoch(0)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate over the batches of `epoch`: (float images on device, targets)."""
        n, device = len(self.labels), self.images.device
        g = torch.Generator().manual_seed(_derive_seed(self.seed, epoch))
        # Drawn for every sample in a fixed order, so each rank sees the same draws.
        perm = torch.randperm(n, generator=g)
        offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=g).to(device)
        flips = (torch.rand(n, generator=g) < 0.5).to(device)
        used = self.steps * self.batch_size * self.world_size
        shard = perm[:used].view(self.steps, self.world_size, self.batch_size)[:, self.rank].to(device)
        rng = np.random.default_rng(_derive_seed(self.seed, epoch, self.rank, 1))
        return self._batches(shard, offsets, flips, rng)

    def _batches(self, shard, offsets, flips, rng):
        for idx in shard:
            x, y = self.images[idx], self.labels[idx]
            if self.pad:
                x = _pad_crop(x, offsets[idx], self.pad)
            if self.flip:
                x = torch.where(flips[idx].view(-1, 1, 1, 1), x.flip(3), x)
            x = self.normalize(x)
            if self.mixer is not None:
                x, y = self.mixer(x, y, rng)
            yield x, y


class EvalLoader:
    """Every test image once, in order, normalised and resized, in batches of `batch_size`."""

    def __init__(self, images, labels, *, batch_size: int, normalizer: _Normalizer):
        self.images, self.labels, self.batch_size, self.normalize = images, labels, batch_size, normalizer

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self):
        return self.epoch(0)

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The same batches for every `epoch`."""
        for lo in range(0, len(self.labels), self.batch_size):
            yield self.normalize(self.images[lo:lo + self.batch_size]), self.labels[lo:lo + self.batch_size]


# ----------------------------------------------------------------------------- imagenet (folders)

class _SeededSamples(torch.utils.data.Dataset):
    """Wraps a map-style dataset so each sample's random transform is seeded by (seed, epoch, index),
    independent of worker count and global RNG state."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        with torch.random.fork_rng(devices=[]):  # CPU RNG only: transforms run on CPU
            torch.default_generator.manual_seed(_derive_seed(self.seed, self.epoch, index, 2))
            return self.dataset[index]


class FolderTrainLoader:
    """ImageNet-style training batches through a DataLoader, with TrainLoader's interface."""

    def __init__(self, dataset, *, batch_size: int, seed: int, device, workers: int,
                 mixer: Optional[_Mixer] = None, rank: int = 0, world_size: int = 1):
        self.data = _SeededSamples(dataset, seed)
        self.batch_size, self.seed, self.device, self.workers = batch_size, seed, device, workers
        self.mixer, self.rank, self.world_size = mixer, rank, world_size
        self.steps = len(dataset) // (batch_size * world_size)
        if self.steps == 0:
            raise UsageError(f"batch size {batch_size} x {world_size} rank(s) exceeds the {len(dataset)} "
                             "training images")

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return self.epoch(0)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate over the batches of `epoch`, moved to the device (mixup/cutmix applied there)."""
        g = torch.Generator().manual_seed(_derive_seed(self.seed, epoch))
        perm = torch.randperm(len(self.data), generator=g)
        used = self.steps * self.batch_size * self.world_size
        shard = perm[:used].view(self.steps, self.world_size, self.batch_size)[:, self.rank].reshape(-1)
        self.data.epoch = epoch  # workers are started per epoch, so they see this
        loader = torch.utils.data.DataLoader(
            self.data, batch_size=self.batch_size, sampler=shard.tolist(), num_workers=self.workers,
            pin_memory=torch.device(self.device).type == "cuda", drop_last=True)
        rng = np.random.default_rng(_derive_seed(self.seed, epoch, self.rank, 1))
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

    def __iter__(self):
        return self.epoch(0)

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def _image_folders(cfg: DataConfig):
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from torchvision import datasets, transforms as T

    root = resolve_root("imagenet", cfg.root)
    norm = [T.ToTensor(), T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)]
    train_tf = T.Compose([T.RandomResizedCrop(cfg.img_size), T.RandomHorizontalFlip()] + norm)
    eval_tf = T.Compose([T.Resize(int(cfg.img_size / 0.875)), T.CenterCrop(cfg.img_size)] + norm)
    try:
        train = datasets.ImageFolder(str(root / "train"), transform=train_tf)
        val = datasets.ImageFolder(str(root / "val"), transform=eval_tf)
    except (FileNotFoundError, OSError) as e:
        raise UsageError(f"cannot read ImageNet under {root}: {e}") from None
    if train.classes != val.classes:
        raise UsageError(f"ImageNet under {root}: train/ and val/ have different class folders "
                         f"({len(train.classes)} vs {len(val.classes)})")
    n_cls = len(train.classes)
    if cfg.train_limit:
        train = torch.utils.data.Subset(train, _balanced_subset(torch.tensor(train.targets), cfg.train_limit))
    if cfg.test_limit:
        val = torch.utils.data.Subset(val, _balanced_subset(torch.tensor(val.targets), cfg.test_limit))
    return train, val, n_cls, root


# ----------------------------------------------------------------------------- entry point

# Inference on CPU is 1.4-2.4x slower at batch 1024 than at 128 (cache effects, benchmarks/README.md).
# Eval-mode outputs do not depend on the batch, so this changes speed only.
CPU_EVAL_BATCH = 128


def build_loaders(cfg: DataConfig, *, batch_size: int, device, seed: int, mixup: float = 0.0,
                  cutmix: float = 0.0, label_smoothing: float = 0.0, eval_batch_size: Optional[int] = None,
                  rank: int = 0, world_size: int = 1):
    """Build (train loader, eval loader, DatasetInfo) for `cfg` on `device`.

    Train batches are (float32 (B, C, img_size, img_size) normalised images, targets) with
    B = `batch_size` per rank; targets are int64 labels, or float (B, num_classes) soft targets
    when mixup or cutmix is on (label smoothing folded in, as timm's Mixup does). Without mixup,
    label smoothing is left to the loss. The eval loader gives every test image once, in order,
    on every rank, in batches of `eval_batch_size` (at most `CPU_EVAL_BATCH` on a CPU).
    """
    _check_config(cfg)
    eval_batch_size = eval_batch_size or batch_size
    if torch.device(device).type == "cpu" and eval_batch_size > 0:
        eval_batch_size = min(eval_batch_size, CPU_EVAL_BATCH)
    bad = [(k, v) for k, v, ok in (("batch_size", batch_size, batch_size > 0),
                                   ("eval_batch_size", eval_batch_size, eval_batch_size > 0),
                                   ("mixup", mixup, mixup >= 0), ("cutmix", cutmix, cutmix >= 0),
                                   ("label_smoothing", label_smoothing, 0 <= label_smoothing < 1),
                                   ("world_size", world_size, world_size >= 1),
                                   ("rank", rank, 0 <= rank < world_size)) if not ok]
    if bad:
        raise UsageError(", ".join(f"invalid {k}={v!r}" for k, v in bad))
    device = torch.device(device)

    def mixer(num_classes):
        return _Mixer(mixup, cutmix, label_smoothing, num_classes) if mixup > 0 or cutmix > 0 else None

    if cfg.dataset == "imagenet":
        train, val, n_cls, root = _image_folders(cfg)
        train_loader = FolderTrainLoader(train, batch_size=batch_size, seed=seed, device=device,
                                         workers=cfg.workers, mixer=mixer(n_cls), rank=rank, world_size=world_size)
        eval_loader = FolderEvalLoader(val, batch_size=eval_batch_size, device=device, workers=cfg.workers)
        info = DatasetInfo("imagenet", n_cls, 3, cfg.img_size, len(train), len(val), str(root))
        return train_loader, eval_loader, info

    ds = load_dataset(cfg)
    norm = _Normalizer(ds.mean, ds.std, cfg.img_size, device)
    train_loader = TrainLoader(ds.train_images.to(device), ds.train_labels.to(device), batch_size=batch_size,
                               seed=seed, normalizer=norm, pad=cfg.pad, flip=cfg.flip,
                               mixer=mixer(ds.num_classes), rank=rank, world_size=world_size)
    eval_loader = EvalLoader(ds.test_images.to(device), ds.test_labels.to(device),
                             batch_size=eval_batch_size, normalizer=norm)
    info = DatasetInfo(ds.name, ds.num_classes, ds.in_chans, cfg.img_size, len(ds.train_labels),
                       len(ds.test_labels), ds.source)
    return train_loader, eval_loader, info
