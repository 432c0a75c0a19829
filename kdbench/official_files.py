"""Small files in the official formats, for dry runs, benchmarks and tests where the real data and
released teachers are absent: CIFAR-100 in torchvision's python format, an ImageNet class-folder
tree of JPEGs, and teacher checkpoints in the layout timm 0.6's CheckpointSaver writes (OFA-KD's
and PAT's training scripts). The pixels are noise: these files prove formats and costs, not accuracy.
"""

import argparse
import pickle
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image


def write_cifar100(root: Path, train: int = 200, test: int = 100, seed: int = 0) -> Path:
    """`root/cifar-100-python/{train,test,meta}` as the official tarball extracts; returns `root`."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", train), ("test", test)):
        fine = [i % 100 for i in range(n)]
        batch = {b"filenames": [f"img_{i}.png".encode() for i in range(n)], b"batch_label": name.encode(),
                 b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine],
                 b"data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"class_{i}".encode() for i in range(100)],
                     b"coarse_label_names": [f"super_{i}".encode() for i in range(20)]}, f, protocol=2)
    return Path(root)


def write_imagenet(root: Path, classes: int = 1000, train_per_class: int = 1, val_per_class: int = 1,
                   size: int = 64, seed: int = 0) -> Path:
    """`root/{train,val}/<wnid>/*.JPEG` (the class-folder layout of the ILSVRC-2012 train and the
    re-foldered val set); `classes` folders named like WordNet ids; returns `root`."""
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = Path(root) / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"n{c:08d}_{i}.JPEG", quality=80)
    return Path(root)


def timm_checkpoint(model: torch.nn.Module, *, ema: Optional[torch.nn.Module] = None, epoch: int = 299,
                    prefix: str = "", optimizer: bool = True, metric: float = 0.0) -> dict:
    """A dict as timm 0.6.x's CheckpointSaver saves it: `epoch`, `arch`, `state_dict`, `optimizer`,
    `version`, `args` (an argparse.Namespace of the training script), `metric`, `amp_scaler`,
    and `state_dict_ema` when an EMA model is given. `prefix="module."` mimics DataParallel/DDP."""
    def state(m):
        return {prefix + k: v.detach().clone() for k, v in m.state_dict().items()}
    args = argparse.Namespace(model=type(model).__name__.lower(), num_classes=100, lr=5e-5, epochs=epoch + 1,
                              opt="adamw", weight_decay=0.05, model_ema=ema is not None, amp=True,
                              input_size=None, mean=None, drop_path=0.1, output="./output/train", aa="rand-m9")
    ckpt = {"epoch": epoch, "arch": type(model).__name__.lower(), "state_dict": state(model), "version": 2,
            "args": args, "metric": metric,
            "amp_scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                           "growth_interval": 2000, "_growth_tracker": 17}}
    if optimizer:
        params = [p for p in model.parameters()]
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
        opt.state.update({p: {"momentum_buffer": torch.zeros_like(p)} for p in params[:2]})
        ckpt["optimizer"] = opt.state_dict()
    if ema is not None:
        ckpt["state_dict_ema"] = state(ema)
    return ckpt
