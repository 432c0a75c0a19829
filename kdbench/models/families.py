"""All architecture knowledge of kdbench, as data: one row per timm family.

Stage convention (OFA/PAT, algorithms.md §1.2): four stages per model.
- CNNs: the outputs of the four residual stages (MobileNetV2: feature levels 1-3, then the
  1280-channel `conv_head` output, which is timm's `final` feature).
- ViT/DeiT/Mixer/ResMLP: raw outputs of the last block of the block groups [0-1], [2-3],
  [4-9], [10-11] (for depth 12; other depths are scaled by `block_fractions`).
- Swin: the output of each layer, before the next layer's patch merging.
The pre-hook modules are the entry points of those four stages (PAT inserts prompts there).

The other columns hold the rest of what is model-specific: the preset recipe that trains the
family, its timm name prefixes and whether its constructor takes `img_size`, the timm module that
converts its released checkpoints, and the model attributes that give its prefix-token count and
the width of its final pooled feature. Code outside this table asks it (or `FeatureModel`); it
never tests model names, classes or modules itself.
"""

import importlib
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

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
    name_prefixes: Tuple[str, ...] = ()             # first "_"-word of the timm names kdbench uses here
    takes_img_size: bool = False                    # the timm constructor takes `img_size`
    checkpoint_filter_module: str = ""              # timm module whose checkpoint_filter_fn converts
                                                    # official/old-timm checkpoints; "" = none needed
    prefix_tokens_attr: str = ""                    # model attribute: number of class/distillation
                                                    # tokens before the patch tokens; "" = none
    num_features_attr: str = "num_features"         # model attribute: width of the final pooled feature


FAMILIES = {
    f.name: f
    for f in (
        Family("resnet", "map", "nchw", indices=(1, 2, 3, 4),
               stage_modules=("layer1", "layer2", "layer3", "layer4"), channels_last=True,
               name_prefixes=("resnet18", "resnet50")),
        Family("efficientnet", "map", "nchw", indices=(1, 2, 3), final_is_last_stage=True,
               stage_modules=("blocks.1", "blocks.2", "blocks.3", "blocks.5"), channels_last=True,
               name_prefixes=("mobilenetv2",)),
        Family("convnext", "map", "nchw", indices=(0, 1, 2, 3),   # trained like a ViT (AdamW), as published
               stage_modules=("stages.0", "stages.1", "stages.2", "stages.3"), recipe="vit_mlp",
               name_prefixes=("convnext",), checkpoint_filter_module="timm.models.convnext"),
        Family("vision_transformer", "tokens", "nlc", block_fractions=(2, 4, 10, 12),
               stage_modules=("blocks.{start}",) * 4,
               intermediate_kwargs=(("output_fmt", "NLC"), ("return_prefix_tokens", True)),
               name_prefixes=("vit", "deit"), takes_img_size=True,
               checkpoint_filter_module="timm.models.vision_transformer", prefix_tokens_attr="num_prefix_tokens"),
        Family("swin_transformer", "tokens", "nhwc", indices=(0, 1, 2, 3),
               stage_modules=("layers.0.blocks", "layers.1.blocks", "layers.2.blocks", "layers.3.blocks"),
               name_prefixes=("swin",), takes_img_size=True, checkpoint_filter_module="timm.models.swin_transformer"),
        Family("mlp_mixer", "tokens", "nlc", block_fractions=(2, 4, 10, 12),
               stage_modules=("blocks.{start}",) * 4, intermediate_kwargs=(("output_fmt", "NLC"),),
               name_prefixes=("mixer", "resmlp"), takes_img_size=True, checkpoint_filter_module="timm.models.mlp_mixer"),
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


def family_of_prefix(name: str) -> Optional[Family]:
    """The family whose `name_prefixes` hold the first `_`-word of a timm name, without building it
    (None when no row names it). For the geometry arguments and suggestions only: a model's real
    family is the one its class belongs to (`family_of`, `family_of_name`)."""
    word = name.split("_", 1)[0]
    return next((f for f in FAMILIES.values() if word in f.name_prefixes), None)


def checkpoint_filter(model) -> Optional[Callable]:
    """The timm `checkpoint_filter_fn(state_dict, model)` that converts official and old-timm
    checkpoints of this model's family to its timm 1.x keys (None: the family needs none)."""
    module = family_of(model).checkpoint_filter_module
    return importlib.import_module(module).checkpoint_filter_fn if module else None


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
