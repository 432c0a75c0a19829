"""PAT's Adaptive Feedback Prompts (algorithms.md §3.3): the prompt blocks that enter the teacher's
stages through `FeatureModel.stage_inputs`, and the feedback kept between steps. Imported by
`distillers.pat`, which re-exports these names."""

import math
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.models import StageSpec

from .adapters import init_weights
from .pat_closed_form import gated_block


class SEBlock(nn.Module):
    """Squeeze-and-excitation, r = 16. Corrected: x * gate. Official: the gate alone (§3.6.3)."""

    def __init__(self, c: int, gate_only: bool):
        super().__init__()
        self.gate_only = gate_only
        self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, max(c // 16, 1), 1), nn.ReLU(),
                                nn.Conv2d(max(c // 16, 1), c, 1), nn.Sigmoid())

    def forward(self, x):
        gate = self.fc(x)
        return gate if self.gate_only else x * gate


class SameConv2d(nn.Conv2d):
    """A stride-1 'same'-padded conv that skips the kernel taps which only ever meet zero padding
    (maps smaller than the kernel, e.g. a 5x5 conv on the 1x1 or 2x2 maps of late teacher stages):
    the same output and gradients for much less work."""

    def forward(self, x):
        (kh, kw), (h, w) = self.kernel_size, x.shape[-2:]
        eh, ew = min(kh, 2 * h - 1), min(kw, 2 * w - 1)
        if (eh, ew) == (kh, kw):
            return super().forward(x)
        oh, ow = (kh - eh) // 2, (kw - ew) // 2
        weight = self.weight[:, :, oh:oh + eh, ow:ow + ew]
        return F.conv2d(x, weight, self.bias, 1, (eh // 2, ew // 2), 1, self.groups)


class PromptBlock(nn.Module):
    """x + beta * PB(u), u = FB([x, aligned feedback]) (or x without feedback); beta starts at 0,
    so a fresh block leaves the teacher unchanged (§3.3). Works on NCHW maps.

    With the official SE bug (`gate_only`) FB and PB end in per-channel constants that depend on
    their inputs' window sums only: computed in closed form (`pat_closed_form`), equal up to
    rounding; `closed_form = False` convolves as the official code does."""

    closed_form = True

    def __init__(self, stage_in: StageSpec, stage_out: StageSpec, gate_only: bool, with_feedback: bool):
        super().__init__()
        c, co = stage_in.channels, stage_out.channels
        g = math.gcd(4, c)

        def conv(i, o, k=1, groups=1):
            return SameConv2d(i, o, k, padding=k // 2, groups=groups)

        self.fb_align = None
        if with_feedback and (co, tuple(stage_out.grid)) != (c, tuple(stage_in.grid)):
            self.in_grid = tuple(stage_in.grid)
            # officially built by the projector factory, which applies init_weights (conv kaiming-normal
            # fan_out, BN (1, 0)); the fusion and prompt convs below keep PyTorch's defaults, as officially
            self.fb_align = nn.Sequential(nn.BatchNorm2d(co), nn.Conv2d(co, c, 1, bias=False))
            self.fb_align.apply(init_weights)
        self.fuse = nn.Sequential(conv(2 * c, c), conv(c, c, 5), conv(c, c), SEBlock(c, gate_only), conv(c, c)) \
            if with_feedback else None
        self.prompt = nn.Sequential(conv(c, c, groups=g), conv(c, c, 5, groups=c), conv(c, c), SEBlock(c, gate_only),
                                    conv(c, c, groups=g))
        self.beta = nn.Parameter(torch.zeros(1))
        self.gate_only = gate_only

    def fusion_parameters(self) -> List[nn.Parameter]:
        """The parameters that only a step with feedback uses (fusion and feedback alignment)."""
        return [p for m in (self.fuse, self.fb_align) if m is not None for p in m.parameters()]

    def forward(self, x, feedback=None):
        closed = self.closed_form and self.gate_only
        u = x
        if feedback is not None and self.fuse is not None:
            if self.fb_align is not None:
                feedback = self.fb_align(F.interpolate(feedback, size=self.in_grid, mode="nearest"))
            feedback = feedback.to(x.dtype)
            u = gated_block(self.fuse, [x, feedback]) if closed else self.fuse(torch.cat([x, feedback], dim=1))
        prompt = gated_block(self.prompt, [u]) if closed else self.prompt(u)
        return x + (self.beta * prompt).to(x.dtype)      # bf16 stays bf16 (beta is fp32)


class FeedbackState(nn.Module):
    """Per-stage feedback (student aligned - prompted teacher target, detached) from the previous
    step, kept in the checkpoint through `get_extra_state` so a resumed run continues exactly.

    `stepped` is the last epoch whose first training step has run: a tensor, which a compiled
    forward updates without guarding on its value (an int would recompile every epoch). The
    checkpoint keeps it as the int `stepped_epoch`, as before."""

    def __init__(self):
        super().__init__()
        self.maps: Dict[int, torch.Tensor] = {}
        self.register_buffer("stepped", torch.full((), -1, dtype=torch.long), persistent=False)
        self.host_stepped = -1          # a host copy, kept by the official-order path only (no sync per step)

    @property
    def stepped_epoch(self) -> int:
        return int(self.stepped)        # a device sync: for checkpoints, never per step

    @stepped_epoch.setter
    def stepped_epoch(self, epoch: int):
        self.stepped.fill_(epoch)
        self.host_stepped = epoch

    def get_extra_state(self):
        return {"maps": {str(k): v for k, v in self.maps.items()}, "stepped_epoch": self.stepped_epoch}

    def set_extra_state(self, state):
        state = state or {}
        self.maps = {int(k): v for k, v in state.get("maps", {}).items()}
        self.stepped_epoch = int(state.get("stepped_epoch", -1))
