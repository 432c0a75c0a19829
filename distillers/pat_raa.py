"""PAT's Region-Aware Attention (algorithms.md §3.2): the student's stages as p x p region tokens,
one self-attention over them, and the aligners M_i onto the teacher's stage maps; with the token/map
conversions, corrected or as the official code does them. Imported by `distillers.pat`, which
re-exports these names."""

import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.models import StageSpec

from .adapters import map_to_tokens, resize_map, tokens_to_map


# -- tokens <-> maps, corrected or as the official code does it ------------------------------
def grid_part(x: torch.Tensor, spec: StageSpec, last_token_cls: bool):
    """(the spatial tokens as an NCHW map, the other tokens). Corrected: the prefix tokens are the
    first `prefix_tokens` (timm's order); official: the last ones (§3.6.2)."""
    if spec.layout == "map":
        return x, None
    p, n = spec.prefix_tokens, spec.num_tokens - spec.prefix_tokens
    spatial, rest = (x[:, :n], x[:, n:]) if last_token_cls else (x[:, p:], x[:, :p])
    return tokens_to_map(spatial, spec.grid), rest


def back_to_tokens(m: torch.Tensor, rest: Optional[torch.Tensor], last_token_cls: bool, permute_bug: bool):
    """Inverse of `grid_part`; with `permute_bug`, the official plain reshape (§3.6.1)."""
    b, c = m.shape[:2]
    tokens = m.reshape(b, -1, c) if permute_bug else map_to_tokens(m)
    if rest is None or rest.shape[1] == 0:
        return tokens
    return torch.cat([tokens, rest] if last_token_cls else [rest, tokens], dim=1)


PE_BATCH_ROWS = 5000       # the official table's length: `pe_by_batch` indexes it by sample (batches <= 5000)


def sinusoid(n: int, d: int) -> torch.Tensor:
    """The fixed transformer sinusoidal table for positions 0..n-1, (n, d) fp32, computed on the CPU
    in fp64 (the same bits on every device)."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float64) * (-math.log(10000.0) / d))
    pe = torch.zeros(n, d, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : d // 2]
    return pe.float()


# -- Region-Aware Attention -----------------------------------------------------------------
class RegionProjector(nn.Module):
    """A student stage -> p x p region tokens of width d: nearest-upsample to k*p (k = ceil(H/p)),
    then a k x k patch-embedding conv with stride k (§3.2)."""

    def __init__(self, spec: StageSpec, p: int, dim: int, last_token_cls: bool):
        super().__init__()
        self.spec, self.last_token_cls = spec, last_token_cls
        k = (math.ceil(spec.grid[0] / p), math.ceil(spec.grid[1] / p))
        self.size = (k[0] * p, k[1] * p)
        self.conv = nn.Conv2d(spec.channels, dim, kernel_size=k, stride=k)

    def forward(self, x):
        m, _ = grid_part(x, self.spec, self.last_token_cls)
        if tuple(m.shape[-2:]) != self.size:
            m = F.interpolate(m, size=self.size, mode="nearest")
        return map_to_tokens(self.conv(m))


class RegionAttention(nn.Module):
    """One self-attention over the N_q region tokens of all four student stages: shared LayerNorm,
    q and kv projections, sinusoidal PE on q and k, no output projection, residual or MLP (§3.2)."""

    def __init__(self, specs: List[StageSpec], cfg):          # cfg: a PATConfig
        super().__init__()
        self.heads, self.pe_by_batch = cfg.heads, "pe_by_batch" in cfg.items
        self.projectors = nn.ModuleList(RegionProjector(s, cfg.grid, cfg.dim, "last_token_cls" in cfg.items)
                                        for s in specs)
        self.norm = nn.LayerNorm(cfg.dim)
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.kv = nn.Linear(cfg.dim, 2 * cfg.dim)
        self.keep_attention = False          # set by `kdbench viz attention`
        self.attention: Optional[torch.Tensor] = None
        # Built once and moved with the module: forward only slices it (no table built, cached or
        # copied to the device inside a compiled step). Not persistent: checkpoints stay as they were.
        rows = PE_BATCH_ROWS if self.pe_by_batch else len(specs) * cfg.grid ** 2
        self.register_buffer("pe", sinusoid(rows, cfg.dim), persistent=False)

    def forward(self, feats: List[torch.Tensor]) -> List[torch.Tensor]:
        e = torch.cat([proj(f) for proj, f in zip(self.projectors, feats)], dim=1)
        b, n, d = e.shape
        h = self.norm(e)
        q, (k, v) = self.q(h), self.kv(h).chunk(2, dim=-1)
        pe = (self.pe[:b, None] if self.pe_by_batch else self.pe[None, :n]).to(q.dtype)
        q, k = q + pe, k + pe
        q, k, v = (t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        if self.keep_attention:
            attn = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1)
            self.attention = attn.mean(dim=1).detach()
            out = attn @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return list(out.transpose(1, 2).reshape(b, n, d).chunk(len(self.projectors), dim=1))


def nearest_indices(n_in: int, n_out: int) -> torch.Tensor:
    """The source index of each output position of F.interpolate(mode="nearest") from n_in to n_out
    (asked of F.interpolate itself, so it is exactly the one it uses)."""
    src = torch.arange(n_in, dtype=torch.float64, device="cpu").reshape(1, 1, n_in)   # also under a meta device
    return F.interpolate(src, size=n_out, mode="nearest").reshape(n_out).long()


class RegionToStage(nn.Module):
    """(B, p^2, d) region tokens -> the teacher stage's spatial map (§3.2's aligners M_i).
    Map teacher: upsample (nearest; area-pool when the teacher grid is smaller) -> BN -> 1x1 conv.
    Token teacher: BN over positions -> Linear d->D_t -> BN -> Linear p^2 -> L_t (token mixing).

    Nearest upsampling repeats each region cell; BN's statistics over the upsampled map are the
    cells' statistics weighted by their repeat counts, and BN and the 1x1 conv act per position. So
    `gathered` (default) normalises and projects the p x p cells (BN statistics weighted, running
    statistics updated as BatchNorm2d does) and upsamples the result: the same map and gradients up
    to rounding, with BN and the conv on p^2 positions instead of the teacher's H x W."""

    gathered = True

    def __init__(self, p: int, dim: int, teacher: StageSpec):
        super().__init__()
        self.p, self.teacher = p, teacher
        c, grid = teacher.channels, teacher.grid
        if teacher.layout == "map":
            self.norm, self.proj = nn.BatchNorm2d(dim), nn.Conv2d(dim, c, 1, bias=False)
            if grid[0] >= p and grid[1] >= p:
                rows, cols = nearest_indices(p, grid[0]), nearest_indices(p, grid[1])
                self.register_buffer("rows", rows, persistent=False)
                self.register_buffer("cols", cols, persistent=False)
                counts = torch.bincount(rows, minlength=p)[:, None] * torch.bincount(cols, minlength=p)[None, :]
                self.register_buffer("counts", counts.float(), persistent=False)
        else:
            self.pos_norm, self.channel = nn.BatchNorm1d(p * p), nn.Linear(dim, c)
            self.norm, self.mix = nn.BatchNorm1d(c), nn.Linear(p * p, grid[0] * grid[1])

    def forward(self, tokens):
        grid = self.teacher.grid
        if self.teacher.layout == "map":
            m = tokens_to_map(tokens, (self.p, self.p))
            if grid[0] >= self.p and grid[1] >= self.p and self.gathered:
                y = self.proj(self._norm_as_upsampled(m))
                return y.index_select(2, self.rows).index_select(3, self.cols)
            m = F.interpolate(m, size=grid, mode="nearest") if grid[0] >= self.p else resize_map(m, grid)
            return self.proj(self.norm(m))
        x = self.norm(self.channel(self.pos_norm(tokens)).transpose(1, 2))      # (B, D_t, p^2)
        return self.mix(x).reshape(x.shape[0], x.shape[1], *grid)

    def _norm_as_upsampled(self, m):
        """`self.norm` of the nearest-upsampled map, computed on the cells (see the class docstring)."""
        bn = self.norm
        x = m.to(torch.promote_types(m.dtype, torch.float32))           # at least fp32 (bf16 under autocast)
        if bn.training:
            w = self.counts.to(x.dtype)
            n = x.shape[0] * w.sum()
            mean = (x * w).sum((0, 2, 3)) / n
            var = ((x - mean[:, None, None]) ** 2 * w).sum((0, 2, 3)) / n
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
                bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
                bn.running_var.lerp_((var * n / (n - 1)).to(bn.running_var.dtype), momentum)
        else:
            mean, var = bn.running_mean.to(x.dtype), bn.running_var.to(x.dtype)
        scale = bn.weight.to(x.dtype) * torch.rsqrt(var + bn.eps)
        y = (x - mean[:, None, None]) * scale[:, None, None] + bn.bias.to(x.dtype)[:, None, None]
        return y.to(m.dtype)
