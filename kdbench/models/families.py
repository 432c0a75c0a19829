"""All architecture knowledge of kdbench, as data: one row per timm family.

Stage convention (OFA/PAT, algorithms.md §1.2): four stages per model.
- CNNs: the outputs of the four residual stages (MobileNetV2: feature levels 1-3, then the
  1280-channel `conv_head` output, which is timm's `final` feature).
- ViT/DeiT/Mixer/ResMLP: raw outputs of the last block of the block groups [0-1], [2-3],
  [4-9], [10-11] (for depth 12; other depths are scaled by `block_fractions`).
- Swin: the output of each layer, before the next layer's patch merging.
The pre-hook modules are the entry points of those four stages (PAT inserts prompts there).
"""

from dataclasses import dataclass
from typing import Optional, Tuple

from ..errors import UsageError


@dataclass(frozen=True)
class Family:
    name: str
    layout: str                     # "map" (NCHW features) or "tokens" (B, L, C features)
    hook_layout: str                # what a stage pre-hook receives: "nchw", "nhwc" or "nlc"
    indices: Optional[Tuple[int, ...]] = None       # forward_intermediates indices, stages 1-4
    block_fractions: Optional[Tuple[int, ...]] = None  # per-block models: group ends out of 12
    stage_modules: Tuple[str, ...] = ()             # pre-hook targets, "{start}" = first block of stage
    final_is_last_stage: bool = False               # stage 4 is the `final` feature (MobileNetV2)
    channels_last: bool = False                     # faster on CPU and GPU for this family
    recipe: str = ""                                # preset recipe: "cnn" or "vit_mlp"; "" = by layout
    intermediate_kwargs: Tuple[Tuple[str, object], ...] = ()


FAMILIES = {
    f.name: f
    for f in (
        Family("resnet", "map", "nchw", indices=(1, 2, 3, 4),
               stage_modules=("layer1", "layer2", "layer3", "layer4"), channels_last=True),
        Family("efficientnet", "map", "nchw", indices=(1, 2, 3), final_is_last_stage=True,
               stage_modules=("blocks.1", "blocks.2", "blocks.3", "blocks.5"), channels_last=True),
        Family("convnext", "map", "nchw", indices=(0, 1, 2, 3),   # trained like a ViT (AdamW), as published
               stage_modules=("stages.0", "stages.1", "stages.2", "stages.3"), recipe="vit_mlp"),
        Family("vision_transformer", "tokens", "nlc", block_fractions=(2, 4, 10, 12),
               stage_modules=("blocks.{start}",) * 4,
               intermediate_kwargs=(("output_fmt", "NLC"), ("return_prefix_tokens", True))),
        Family("swin_transformer", "tokens", "nhwc", indices=(0, 1, 2, 3),
               stage_modules=("layers.0.blocks", "layers.1.blocks", "layers.2.blocks", "layers.3.blocks")),
        Family("mlp_mixer", "tokens", "nlc", block_fractions=(2, 4, 10, 12),
               stage_modules=("blocks.{start}",) * 4, intermediate_kwargs=(("output_fmt", "NLC"),)),
    )
}
def recipe_kind(family: Family) -> str:
    """Which of a preset's two recipes trains this family: 'cnn' or 'vit_mlp'."""
    return family.recipe or ("cnn" if family.layout == "map" else "vit_mlp")


# timm modules whose classes reuse a family above.
ALIASES = {"deit": "vision_transformer"}


def family_of(model) -> Family:
    """The family row for a timm model, found from the timm module that defines its class."""
    for cls in type(model).__mro__:
        module = cls.__module__.rsplit(".", 1)[-1]
        name = ALIASES.get(module, module)
        if name in FAMILIES:
            return FAMILIES[name]
    raise UsageError(f"model class {type(model).__name__} belongs to no supported family; "
                     f"supported timm families: {', '.join(sorted(FAMILIES))}")


def stage_layout(family: Family, model) -> Tuple[Tuple[int, ...], Tuple[str, ...]]:
    """(forward_intermediates indices, pre-hook module names) of the four stages."""
    if family.block_fractions is None:
        return family.indices, family.stage_modules
    depth = len(model.blocks)
    ends = tuple(max(round(f * depth / 12) - 1, 0) for f in family.block_fractions)
    if len(set(ends)) != 4:
        raise UsageError(f"{family.name} model with {depth} blocks is too shallow for 4 distinct stages (need >= 5 blocks)")
    starts = (0,) + tuple(e + 1 for e in ends[:-1])
    return ends, tuple(m.format(start=s) for m, s in zip(family.stage_modules, starts))
