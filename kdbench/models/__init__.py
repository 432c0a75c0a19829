"""Models: timm only. FeatureModel, the family table, the scaled members."""

import timm

from ..errors import unknown_choice
from . import zoo  # noqa: F401  (registers the kdbench_* and swin_pico/nano entrypoints)
from .families import FAMILIES, family_of
from .feature_model import FeatureModel, StageSpec

__all__ = ["FAMILIES", "FeatureModel", "StageSpec", "create_model", "create_feature_model", "family_of"]


def create_model(name: str, *, num_classes: int, in_chans: int, img_size: int, **kwargs):
    """timm.create_model with the image geometry passed where the architecture takes it."""
    if not timm.is_model(name):
        raise unknown_choice("model", name, timm.list_models("kdbench_*") + [n for n in timm.list_models()
                                                                                 if n.split("_")[0] in _FAMILY_PREFIXES])
    if _takes_img_size(name):
        kwargs["img_size"] = img_size
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)


def create_feature_model(name: str, *, num_classes: int, in_chans: int, img_size: int, **kwargs) -> FeatureModel:
    model = create_model(name, num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs)
    return FeatureModel(model, img_size=img_size, in_chans=in_chans)


_FAMILY_PREFIXES = ("resnet18", "resnet50", "mobilenetv2", "convnext", "vit", "deit", "swin", "mixer", "resmlp")


def _takes_img_size(name: str) -> bool:
    return name.startswith(("kdbench_", "vit_", "deit_", "swin_", "mixer_", "resmlp_"))
