"""Shape adapters shared by the feature distillers: tokens <-> maps, aligners, patch merging.

Everything here is driven by `StageSpec`s (layout, channels, grid, prefix tokens) found by
`FeatureModel`'s probe, never by model classes. Prefix tokens (cls, dist) are always the first
`spec.prefix_tokens` tokens, as timm orders them.
"""

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from kdbench.models import StageSpec


def split_prefix(x: torch.Tensor, spec: StageSpec) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
    """(prefix tokens (B, P, C) or None, spatial part as an NCHW map)."""
    if spec.layout == "map":
        return None, x
    p = spec.prefix_tokens
    prefix = x[:, :p] if p else None
    return prefix, tokens_to_map(x[:, p:], spec.grid)


def to_map(x: torch.Tensor, spec: StageSpec) -> torch.Tensor:
    """Any stage feature as an NCHW map of its spatial grid (prefix tokens dropped)."""
    return split_prefix(x, spec)[1]


def tokens_to_map(x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """(B, h*w, C) -> (B, C, h, w)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h*w, C)."""
    return x.flatten(2).transpose(1, 2)


def integer_ratio(a: Tuple[int, int], b: Tuple[int, int]) -> Optional[int]:
    """p if grid a is exactly p times grid b in both directions (p >= 1), else None."""
    if a[0] % b[0] or a[1] % b[1] or a[0] // b[0] != a[1] // b[1]:
        return None
    return a[0] // b[0]


class MapAligner(nn.Module):
    """Maps an NCHW feature of grid `in_grid` to `out_channels` x `out_grid` with one linear layer.

    Same grid: 1x1 conv. Input p times finer: p x p patchify conv (stride p). Input p times
    coarser: 1x1 conv to p^2 x channels, then pixel shuffle (unpatchify). These are the
    heterogeneous FitNet's aligners (algorithms.md §2.3) in one form, with the same parameter
    counts: an MSE against a regrouped target is the MSE against the target itself. Grids with
    no integer ratio are resized (area pooling down, bilinear up) before a 1x1 conv.
    """

    def __init__(self, in_channels: int, in_grid, out_channels: int, out_grid, *, same_grid_kernel: int = 1,
                 bias: bool = True):
        super().__init__()
        in_grid, out_grid = tuple(in_grid), tuple(out_grid)
        self.out_grid, self.shuffle, self.resize = out_grid, 1, False
        down, up = integer_ratio(in_grid, out_grid), integer_ratio(out_grid, in_grid)
        if down is not None:
            k = same_grid_kernel if down == 1 else down
            self.proj = nn.Conv2d(in_channels, out_channels, kernel_size=k, stride=down, padding=(k - down) // 2,
                                  bias=bias)
        elif up is not None:
            self.shuffle = up
            self.proj = nn.Conv2d(in_channels, out_channels * up * up, kernel_size=1, bias=bias)
        else:
            self.resize = True
            self.proj = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize:
            x = resize_map(x, self.out_grid)
        x = self.proj(x)
        return F.pixel_shuffle(x, self.shuffle) if self.shuffle > 1 else x


def resize_map(x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    if x.shape[-2] >= grid[0] and x.shape[-1] >= grid[1]:
        return F.adaptive_avg_pool2d(x, grid)
    return F.interpolate(x, size=grid, mode="bilinear", align_corners=False)


class StageAligner(nn.Module):
    """A student stage feature (any layout) -> the teacher stage's spatial part as an NCHW map."""

    def __init__(self, student: StageSpec, teacher: StageSpec):
        super().__init__()
        self.student = student
        self.align = MapAligner(student.channels, student.grid, teacher.channels, teacher.grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.align(to_map(x, self.student))


class PatchMerging(nn.Module):
    """Swin-style 2x2 merge of a token grid: concat -> LayerNorm -> Linear (no bias) -> act.

    Input (B, h*w, C) with its grid; odd grids are zero-padded to even first. Returns the tokens
    of the (ceil(h/2), ceil(w/2)) grid.
    """

    def __init__(self, dim: int, out_dim: int, act: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)
        self.act = nn.GELU() if act else nn.Identity()

    def forward(self, x: torch.Tensor, grid: Tuple[int, int]) -> Tuple[torch.Tensor, Tuple[int, int]]:
        b, _, c = x.shape
        h, w = grid
        x = x.reshape(b, h, w, c)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        # the order of the four neighbours is Swin's: (0,0), (1,0), (0,1), (1,1)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        new_grid = (x.shape[1], x.shape[2])
        return self.act(self.reduction(self.norm(x.reshape(b, -1, 4 * c)))), new_grid


def merges_to(grid: int, target: int) -> int:
    """How many 2x merges bring a grid down to about `target` (OFA: floor(log2(grid/target)))."""
    return max(int(math.log2(grid / target)), 0) if grid > 0 else 0


def init_weights(m: nn.Module):
    """The OFA/PAT projector init (`init_weights` in both repositories' distillers/utils.py): conv
    kaiming-normal (fan_out, ReLU gain) with the bias left at PyTorch's default, as there; norms
    (1, 0); Linear trunc-normal(0.02) with zero bias. Use as `module.apply(init_weights)`."""
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
