"""Models: timm only. FeatureModel, the family table, the scaled members."""

from functools import lru_cache

import timm
import torch

from ..errors import unknown_choice
from . import zoo  # noqa: F401  (registers the kdbench_* and swin_pico/nano entrypoints)
from .families import FAMILIES, Family, checkpoint_filter, family_of, family_of_prefix, recipe_kind
from .feature_model import FeatureModel, StageSpec

__all__ = ["FAMILIES", "Family", "FeatureModel", "StageSpec", "checkpoint_filter", "create_model",
           "create_feature_model", "family_of", "family_of_name", "recipe_kind_of"]


def create_model(name: str, *, num_classes: int, in_chans: int, img_size: int, **kwargs):
    """timm.create_model with the image geometry passed where the architecture takes it."""
    if not timm.is_model(name):
        raise unknown_choice("model", name, timm.list_models(zoo.PREFIX + "*") +
                             [n for n in timm.list_models() if family_of_prefix(n) is not None])
    family = family_of_prefix(name[len(zoo.PREFIX):] if name.startswith(zoo.PREFIX) else name)
    if family is not None and family.takes_img_size:
        kwargs["img_size"] = img_size
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)


def create_feature_model(name: str, *, num_classes: int, in_chans: int, img_size: int, **kwargs) -> FeatureModel:
    model = create_model(name, num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs)
    return FeatureModel(model, img_size=img_size, in_chans=in_chans)


@lru_cache(maxsize=None)
def family_of_name(name: str, img_size: int) -> Family:
    """The family row of a timm model name at this image size. The model is built on the meta
    device (shapes, no storage, no random draws), so a paper-scale model costs milliseconds."""
    with torch.device("meta"):
        model = create_model(name, num_classes=10, in_chans=3, img_size=img_size)
    return family_of(model)


def recipe_kind_of(name: str, img_size: int) -> str:
    """'cnn' or 'vit_mlp': which of a preset's two recipes trains this model (its family row's choice)."""
    return recipe_kind(family_of_name(name, img_size))
