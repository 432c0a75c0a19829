"""FeatureModel: logits and four stage features from any supported timm model in one pass."""

import contextlib
import copy
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

from .families import family_of, stage_layout
from .prefix import PrefixReplay


@dataclass(frozen=True)
class StageSpec:
    """Shape of one stage feature (batch excluded).

    layout "map": (channels, h, w). layout "tokens": (prefix_tokens + h*w, channels), prefix
    tokens (cls, dist) first, as timm orders them.
    """

    layout: str
    channels: int
    grid: Tuple[int, int]
    prefix_tokens: int = 0

    @property
    def num_tokens(self) -> int:
        return self.prefix_tokens + self.grid[0] * self.grid[1]

    @property
    def shape(self) -> Tuple[int, ...]:
        if self.layout == "map":
            return (self.channels, *self.grid)
        return (self.num_tokens, self.channels)


StageTransform = Callable[[torch.Tensor], torch.Tensor]


class _HookState:
    """What the stage-input pre-hooks read. The hooks close over this, never over the FeatureModel:
    a hook on a submodule of `self.model` that refers back to its FeatureModel makes a reference
    cycle, and a finished model (its GPU memory) then waits for the cyclic garbage collector."""

    def __init__(self, hook_layout: str):
        self.hook_layout = hook_layout
        self.transforms: Dict[int, StageTransform] = {}


def _stage_pre_hook(state: _HookState, stage: int):
    def hook(module, args):
        fn = state.transforms.get(stage)
        if fn is None:
            return None
        x = args[0]
        if state.hook_layout == "nhwc":
            b, h, w, c = x.shape
            y = fn(x.reshape(b, h * w, c)).reshape(b, h, w, c)
        else:
            y = fn(x)
        return (y,) + tuple(args[1:])
    return hook


class FeatureModel(nn.Module):
    """Wraps a timm model: `forward(x) -> (logits, [f1, f2, f3, f4])`.

    Features come from `forward_intermediates` and logits from `forward_head` of the same pass.
    Map families return NCHW features; token families return (B, L, C) with prefix tokens first
    (Swin: its NCHW map flattened to tokens). `stage_specs` describes them, `input_specs` the
    inputs of the four stages, both found by a probe pass in eval mode under no_grad.
    """

    def __init__(self, model: nn.Module, img_size: int, in_chans: int):
        super().__init__()
        self.model = model
        self.family = family_of(model)
        self.img_size, self.in_chans = img_size, in_chans
        self.indices, self.stage_module_names = stage_layout(self.family, model)
        self._fi_kwargs = dict(self.family.intermediate_kwargs)
        self._stage_hooks = _HookState(self.family.hook_layout)
        self._specs = None
        for i, name in enumerate(self.stage_module_names):
            self.model.get_submodule(name).register_forward_pre_hook(_stage_pre_hook(self._stage_hooks, i))

    def clone(self) -> "FeatureModel":
        """An independent copy (weights, buffers, modes) with its own stage-input hooks. (A plain
        deepcopy would keep hooks that read the original's transforms.)"""
        model = copy.deepcopy(self.model)
        for name in self.stage_module_names:
            model.get_submodule(name)._forward_pre_hooks.clear()
        twin = FeatureModel(model, self.img_size, self.in_chans)
        twin._specs = self._specs
        return twin

    # -- forward -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        final, inter = self.model.forward_intermediates(x, indices=list(self.indices), **self._fi_kwargs)
        feats = [self._canonical(f) for f in inter]
        if self.family.final_is_last_stage:
            feats.append(final)
        return self.model.forward_head(final), feats

    def pooled(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(logits, pooled pre-logit feature) of one pass: the feature the classifier reads (OFA-KD's
        `feat[-1]`, "stage -1", which RSD and CRD distil), and the classifier applied to it."""
        feature = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return self.model.get_classifier()(feature), feature

    def deployable_state(self) -> Dict[str, torch.Tensor]:
        """The weights a deployed model needs (the timm model's state dict)."""
        return self.model.state_dict()

    def load_deployable_state(self, state: Dict[str, torch.Tensor]):
        self.model.load_state_dict(state)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Plain `model(x)`, for methods that need no features."""
        return self.model(x)

    def _canonical(self, f):
        if isinstance(f, tuple):                      # ViT with return_prefix_tokens
            spatial, prefix = f
            return torch.cat([prefix, spatial], dim=1) if prefix is not None else spatial
        if self.family.layout == "tokens" and f.ndim == 4:  # Swin: NCHW -> tokens
            return f.flatten(2).transpose(1, 2)
        return f

    # -- widths the family row names ------------------------------------------------------
    @property
    def num_features(self) -> int:
        """Width of the final pooled feature (what the classifier reads)."""
        return int(getattr(self.model, self.family.num_features_attr))

    @property
    def prefix_tokens(self) -> int:
        """Class/distillation tokens before the patch tokens (0 for map families, Swin and Mixer);
        the same count as every stage spec's `prefix_tokens`."""
        attr = self.family.prefix_tokens_attr
        return int(getattr(self.model, attr)) if attr else 0

    # -- stage-input transforms (forward pre-hooks) -----------------------------------------
    @contextlib.contextmanager
    def stage_inputs(self, transforms: Dict[int, StageTransform]):
        """Within the block, stage i's input passes through `transforms[i]` (stages 0-3).

        A transform sees the input in the canonical layout (NCHW maps, or (B, L, C) tokens with
        prefix tokens first) and must return the same shape. Nothing is transformed outside.
        """
        previous, self._stage_hooks.transforms = self._stage_hooks.transforms, dict(transforms)
        try:
            yield self
        finally:
            self._stage_hooks.transforms = previous

    @property
    def prefix(self) -> PrefixReplay:
        """Records the modules before a stage in one pass and replays them in the next (`prefix.py`)."""
        if getattr(self, "_prefix", None) is None:
            self._prefix = PrefixReplay(self.model, self.stage_module_names)
        return self._prefix

    # -- shapes --------------------------------------------------------------------------
    @property
    def stage_specs(self) -> List[StageSpec]:
        if self._specs is None:
            self._specs = self._probe()
        return self._specs[0]

    @property
    def input_specs(self) -> List[StageSpec]:
        """Specs of the four stage inputs as a stage-input transform sees them."""
        if self._specs is None:
            self._specs = self._probe()
        return self._specs[1]

    def _probe(self):
        param = next(self.model.parameters())
        x = torch.zeros(1, self.in_chans, self.img_size, self.img_size, device=param.device, dtype=param.dtype)
        seen = {}

        def record(i):
            def hook(module, args):
                seen[i] = tuple(args[0].shape)
            return hook

        handles = [self.model.get_submodule(n).register_forward_pre_hook(record(i))
                   for i, n in enumerate(self.stage_module_names)]
        modes = {m: m.training for m in self.model.modules()}
        transforms, self._stage_hooks.transforms = self._stage_hooks.transforms, {}
        self.model.eval()
        try:
            with torch.no_grad():
                _, feats = self.forward(x)
                maps = self.model.forward_intermediates(x, indices=list(self.indices), intermediates_only=True)
        finally:
            self._stage_hooks.transforms = transforms
            for m, mode in modes.items():
                m.training = mode
            for h in handles:
                h.remove()
        specs, in_specs = [], []
        for i, f in enumerate(feats):
            if f.ndim == 4:
                spec = StageSpec("map", f.shape[1], tuple(f.shape[2:]))
            else:
                grid = tuple(maps[i].shape[2:])
                spec = StageSpec("tokens", f.shape[2], grid, f.shape[1] - grid[0] * grid[1])
            specs.append(spec)
            in_specs.append(self._input_spec(seen[i], spec))
        return specs, in_specs

    def _input_spec(self, shape, stage_spec):
        if self.family.hook_layout == "nchw":
            return StageSpec("map", shape[1], shape[2:])
        if self.family.hook_layout == "nhwc":
            return StageSpec("tokens", shape[3], shape[1:3])
        n = shape[1] - stage_spec.prefix_tokens   # blocks of a token model keep the token grid
        return StageSpec("tokens", shape[2], stage_spec.grid if n == stage_spec.grid[0] * stage_spec.grid[1]
                         else (n, 1), stage_spec.prefix_tokens)
