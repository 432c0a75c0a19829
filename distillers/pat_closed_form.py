"""The official PAT's prompt and fusion blocks in closed form (issue 18, faithful mode only).

With the official SE bug (`se_gate_only`, docs/pat.md) a block [1x1 conv, kxk conv, 1x1 conv, SE,
1x1 conv] returns conv(gate), and the gate reads only the spatial mean of the SE's input. Every
layer before it is linear, so that mean is a linear function of the block input's sums over the
k x k border-cropped windows a 'same' convolution reads for each kernel tap:

    mean_ij conv_kxk(z)[o] = b[o] + sum_{c,u,v} W[o,c,u,v] * S_z[c,u,v] / (H*W),
    S_z[c,u,v] = sum of z[c] over the rows/columns that tap (u, v) reads (zero padding excluded),

and S_z of z = conv_1x1(x) is conv_1x1 applied to S_x (plus the bias times the window's size).
`gated_block` computes the block's output from those sums: O(k*C*H*W) instead of the convolutions'
O(k^2*C^2*H*W), the same value and gradients up to float rounding (tests/test_pat.py checks both).
"""

from typing import List, Sequence, Tuple

import torch
from torch import nn


def _ranges(size: int, k: int) -> List[Tuple[int, int]]:
    """(lo, hi) per kernel tap along one axis of a stride-1 conv padded by k // 2: the input indices
    [lo, hi) that tap reads over all output positions. Python ints: no tensor, no host copy, and
    nothing for torch.compile to break its graph on."""
    out = []
    for shift in range(-(k // 2), k - k // 2):
        lo = min(max(shift, 0), size)
        out.append((lo, max(min(max(size + shift, 0), size), lo)))
    return out


def tap_window_sums(x: torch.Tensor, kernel: Tuple[int, int]) -> torch.Tensor:
    """(B, C, kh, kw): per kernel tap, the sum of x (B, C, H, W) over the window that tap reads."""
    (kh, kw), (h, w) = kernel, x.shape[-2:]
    rows = torch.stack([x[:, :, a:b].sum(2) for a, b in _ranges(h, kh)], 2)          # (B, C, kh, W)
    return torch.stack([rows[..., a:b].sum(-1) for a, b in _ranges(w, kw)], -1)      # (B, C, kh, kw)


def tap_window_sizes(like: torch.Tensor, kernel: Tuple[int, int]) -> torch.Tensor:
    """(kh, kw): the number of input positions each tap's window holds, for maps of `like`'s size,
    computed on its device (the window sums of ones)."""
    return tap_window_sums(torch.ones_like(like[:1, :1]), kernel)[0, 0]


def _pointwise(conv: nn.Conv2d, s: torch.Tensor) -> torch.Tensor:
    """A 1x1 (grouped) conv's weights applied to per-channel values s (B, C_in, ...), no bias."""
    g, b, c = conv.groups, s.shape[0], s.shape[1]
    weight = conv.weight[:, :, 0, 0].reshape(g, conv.out_channels // g, c // g)
    out = torch.einsum("goc,bgcr->bgor", weight, s.reshape(b, g, c // g, -1))
    return out.reshape(b, conv.out_channels, *s.shape[2:])


def _taps(conv: nn.Conv2d, z: torch.Tensor) -> torch.Tensor:
    """sum over input channels and taps of a kxk (grouped) conv's weights times z (B, C_in, kh, kw)."""
    g, b, c = conv.groups, z.shape[0], z.shape[1]
    weight = conv.weight.reshape(g, conv.out_channels // g, c // g, *conv.weight.shape[2:])
    out = torch.einsum("gocuv,bgcuv->bgo", weight, z.reshape(b, g, c // g, *z.shape[2:]))
    return out.reshape(b, conv.out_channels)


def gated_block(block: nn.Sequential, parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """The output (B, C, 1, 1) of a gate-only block [1x1, kxk, 1x1, SEBlock(gate_only), 1x1] on the
    channel concatenation of `parts` (NCHW maps of one size), without convolving any map."""
    reduce, spatial, mix, se, last = block
    kernel, size = spatial.kernel_size, parts[0].shape[-2:]
    sums = torch.cat([tap_window_sums(p, kernel) for p in parts], 1)            # (B, C_in, kh, kw)
    z = _pointwise(reduce, sums)                                                 # the 1x1 conv's window sums
    if reduce.bias is not None:
        z = z + reduce.bias[None, :, None, None] * tap_window_sizes(parts[0], kernel)
    mean = _taps(spatial, z) / (size[0] * size[1])                               # (B, C): the kxk output's mean
    if spatial.bias is not None:
        mean = mean + spatial.bias
    mean = _pointwise(mix, mean)
    if mix.bias is not None:
        mean = mean + mix.bias
    gate = se.fc[1:](mean[:, :, None, None])             # the SE after its average pool: it has the mean
    return last(gate)
