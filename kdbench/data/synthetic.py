"""The synthetic dataset: procedural images that need no files, fixed by a data seed of their own."""

from __future__ import annotations

import numpy as np

from .config import DataConfig

_SYNTH_SEED = 20240611  # the data seed: fixed, independent of the run seed
_SYNTH_PARTS = 3
_SYNTH_NOISE = 0.6


def synthetic_arrays(cfg: DataConfig) -> list:
    """[train images, train labels, test images, test labels] of procedural uint8 images whose
    class is a fixed spatial arrangement of oriented stripes and blobs.

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
