"""Batch augmentation on the training device: pad-crop, normalise-and-resize, mixup/cutmix.

Every random number comes in as an argument (offsets, a numpy Generator), so callers decide the
seeding and the results depend on nothing global.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def pad_crop(x: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """Per-sample crop of the zero-padded batch at offsets (B, 2) in [0, 2*pad] (row, col)."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = offsets[:, :1] + torch.arange(h, device=x.device)
    cols = offsets[:, 1:] + torch.arange(w, device=x.device)
    xp = xp.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, w + 2 * pad))
    return xp.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))


class Normalizer:
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


class Mixer:
    """Batch-mode mixup/cutmix with timm's semantics, randomness from an explicit numpy Generator.

    Returns the mixed images and float (B, num_classes) soft targets with label smoothing folded in.
    """

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
