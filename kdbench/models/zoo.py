"""Small family members (timm entrypoints) for the CPU/GPU-sized presets, and OFA's Swin students.

Registered with `timm.models.register_model`, so `timm.create_model("kdbench_resnet18_s")`
works and `kdbench list models` shows them. Suffix `_s`: the tiny/lite scale (0.5-5M params,
28-32 px; CNN stems of stride 2 and Swin patches of 4 px keep CPU training at 0.5-2.4k img/s);
`_xs`: the smoke scale (16 px, seconds per run). Each one keeps its family: a Swin stays a
SwinTransformer, a ResMLP an MlpMixer with ResBlock/Affine, so the family table and every
distiller see the same structure as at paper scale. All accept `num_classes`, `in_chans` and
`img_size`; CNNs get a 3x3 stem without max-pool so small images keep four stages.
"""

from functools import partial

import timm
from timm.models import build_model_with_cfg, register_model
from timm.models.mlp_mixer import Affine, MlpMixer, ResBlock
from timm.models.swin_transformer import SwinTransformer
from torch import nn

PREFIX = "kdbench_"


def _cnn(name, variant=None, img_size=None, **kwargs):
    """A timm CNN by its registered name (the member's own name and image size are not its arguments)."""
    return timm.create_model(name, pretrained=False, **kwargs)


def _small_stem_resnet(model, stride):
    """3x3 stem without max-pool: stages at strides (1|2) x (1, 2, 4, 8) instead of 4..32."""
    conv = model.conv1
    model.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, 3, stride, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _resnet(arch, layers, channels, stem_stride=1, **kwargs):
    kwargs.pop("img_size", None)
    return _small_stem_resnet(_cnn(arch, layers=layers, channels=channels, **kwargs), stem_stride)


def _mobilenetv2(arch, **kwargs):
    kwargs.pop("img_size", None)
    model = _cnn(arch, **kwargs)
    model.conv_stem.stride = (1, 1)   # total stride 16 instead of 32
    return model


def _convnext(dims, depths, stem_stride=1, **kwargs):
    kwargs.pop("img_size", None)
    model = _cnn("convnext_atto", dims=dims, depths=depths, patch_size=1, **kwargs)
    if stem_stride > 1:  # timm's patch_size=2 would also downsample in stage 0: patch only the stem
        conv = model.stem[0]
        model.stem[0] = nn.Conv2d(conv.in_channels, conv.out_channels, stem_stride, stem_stride)
    return model


def _vit(arch, embed_dim, depth, heads, img_size=32, variant=None, **kwargs):
    return timm.create_model(arch, pretrained=False, img_size=img_size, patch_size=4, embed_dim=embed_dim,
                             depth=depth, num_heads=heads, mlp_ratio=2.0, **kwargs)


def _build(cls, **kwargs):
    """Build a timm class directly (its registered fn hard-codes the sizes), with a pretrained_cfg."""
    variant = kwargs.pop("variant")
    if kwargs.pop("pretrained", False):
        raise ValueError(f"{variant} has no pretrained weights in kdbench; load a checkpoint instead")
    cfg = kwargs.pop("pretrained_cfg", None) or {"architecture": variant}
    for key in ("pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return build_model_with_cfg(cls, variant, pretrained=False, pretrained_cfg=cfg, **kwargs)


def _swin(embed_dim, heads, variant, pretrained=False, img_size=224, patch_size=4, window_size=7,
          drop_path_rate=0.1, **kwargs):
    return _build(SwinTransformer, variant=variant, pretrained=pretrained, img_size=img_size,
                  patch_size=patch_size, window_size=window_size, embed_dim=embed_dim, depths=(2, 2, 2, 2),
                  num_heads=heads, drop_path_rate=drop_path_rate, **kwargs)


def _mixer(embed_dim, blocks, variant, resmlp=False, img_size=32, layer_scale=1e-4, **kwargs):
    extra = dict(mlp_ratio=4, block_layer=partial(ResBlock, init_values=layer_scale), norm_layer=Affine) if resmlp else {}
    return _build(MlpMixer, variant=variant, img_size=img_size, patch_size=4, num_blocks=blocks, embed_dim=embed_dim, **extra, **kwargs)


# OFA's custom Swin students (patch 4, window 7, depths 2-2-2-2, drop path 0.1 as in timm 0.6.5).
@register_model
def swin_pico_patch4_window7_224(pretrained=False, **kwargs):
    return _swin(48, (2, 4, 8, 16), "swin_pico_patch4_window7_224", pretrained, **kwargs)


@register_model
def swin_nano_patch4_window7_224(pretrained=False, **kwargs):
    return _swin(64, (2, 4, 8, 16), "swin_nano_patch4_window7_224", pretrained, **kwargs)


# Scaled members: (builder, kwargs) per scale; registered below as kdbench_<member>_<scale>. Every
# builder is called with `variant=<registered name>` (used by those that build a timm class directly).
_SMALL_SWIN = dict(patch_size=4, drop_path_rate=0.0)
_XS_SWIN = dict(patch_size=2, drop_path_rate=0.0)
MEMBERS = {
    # teachers of the 12 CIFAR pairs
    "swin_t": {"s": (_swin, dict(embed_dim=48, heads=(2, 4, 8, 16), window_size=7, **_SMALL_SWIN)),
               "xs": (_swin, dict(embed_dim=16, heads=(1, 2, 4, 4), window_size=4, **_XS_SWIN))},
    "vit_s": {"s": (_vit, dict(arch="vit_small_patch16_224", embed_dim=128, depth=6, heads=4)),
              "xs": (_vit, dict(arch="vit_small_patch16_224", embed_dim=32, depth=6, heads=2))},
    "mixer_b": {"s": (_mixer, dict(embed_dim=128, blocks=6)),
                "xs": (_mixer, dict(embed_dim=32, blocks=6))},
    "convnext_t": {"s": (_convnext, dict(dims=(32, 64, 128, 256), depths=(1, 1, 2, 1), stem_stride=2,
                                             ls_init_value=1.0)),
                   "xs": (_convnext, dict(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1)))},
    # students
    "resnet18": {"s": (_resnet, dict(arch="resnet18", layers=(1, 1, 1, 1), channels=(32, 64, 128, 256),
                                      stem_stride=2)),
                 "xs": (_resnet, dict(arch="resnet18", layers=(1, 1, 1, 1), channels=(8, 16, 32, 64)))},
    "mobilenetv2": {"s": (_mobilenetv2, dict(arch="mobilenetv2_050")),
                    "xs": (_mobilenetv2, dict(arch="mobilenetv2_035"))},
    "deit_t": {"s": (_vit, dict(arch="deit_tiny_patch16_224", embed_dim=96, depth=6, heads=3)),
               "xs": (_vit, dict(arch="deit_tiny_patch16_224", embed_dim=24, depth=6, heads=2))},
    "swin_p": {"s": (_swin, dict(embed_dim=24, heads=(1, 2, 4, 8), window_size=7, **_SMALL_SWIN)),
               "xs": (_swin, dict(embed_dim=8, heads=(1, 1, 2, 2), window_size=4, **_XS_SWIN))},
    "resmlp_s12": {"s": (_mixer, dict(embed_dim=96, blocks=6, resmlp=True, layer_scale=0.1)),
                   "xs": (_mixer, dict(embed_dim=24, blocks=6, resmlp=True))},
    # the extra members of the ImageNet pairs
    "resnet50": {"s": (_resnet, dict(arch="resnet50", layers=(1, 1, 1, 1), channels=(16, 32, 64, 128),
                                      stem_stride=2)),
                 "xs": (_resnet, dict(arch="resnet50", layers=(1, 1, 1, 1), channels=(4, 8, 16, 32)))},
    "swin_n": {"s": (_swin, dict(embed_dim=32, heads=(1, 2, 4, 8), window_size=7, **_SMALL_SWIN)),
               "xs": (_swin, dict(embed_dim=12, heads=(1, 1, 2, 2), window_size=4, **_XS_SWIN))},
}


def member_definition(name: str):
    """The builder and sizes behind a kdbench member (None for other timm models): part of every
    run's configuration, so redefining a member invalidates its cached teachers and results."""
    if not name.startswith(PREFIX):
        return None
    member, _, scale = name[len(PREFIX):].rpartition("_")
    builder, defaults = MEMBERS.get(member, {}).get(scale, (None, None))
    return None if builder is None else f"{builder.__name__}{sorted(defaults.items())}"


def _entrypoint(name, builder, defaults):
    def create(pretrained=False, **kwargs):
        if pretrained:
            raise ValueError(f"{name} has no pretrained weights")
        return builder(**{**defaults, **kwargs, "variant": name})
    create.__name__ = name
    create.__qualname__ = name
    create.__module__ = __name__
    create.__doc__ = f"kdbench scaled member {name}: {builder.__name__.strip('_')} {defaults}"
    return create


def _register_members():
    names = []
    for member, scales in MEMBERS.items():
        for scale, (builder, defaults) in scales.items():
            name = f"{PREFIX}{member}_{scale}"
            globals()[name] = register_model(_entrypoint(name, builder, defaults))
            names.append(name)
    return names


SCALED_MODELS = _register_members()
