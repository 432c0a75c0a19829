"""Tests of kdbench.models: the family table, FeatureModel (features, logits, pre-hooks, probe), the zoo."""

import functools
import sys

import pytest
import timm
import torch

from kdbench.config import load_preset, preset_names
from kdbench.errors import UsageError
from kdbench.models import (FAMILIES, FeatureModel, checkpoint_filter, create_feature_model, create_model, family_of,
                            family_of_name, recipe_kind_of)
from kdbench.models.families import family_of_prefix
from kdbench.models.zoo import PREFIX, SCALED_MODELS

# Channels of each dataset (synthetic ones take theirs from the preset's data section).
_DATASET_CHANNELS = {"fashion-mnist": 1, "cifar10": 3, "cifar100": 3, "imagenet": 3, "synthetic-det": 3, "fmnist-det": 3,
                     "coco": 3}
# Members of these presets are also run with real weights; every preset's members get the meta-device
# shape test (the others share the `_s` members at another size, or are paper-scale timm models).
_REAL_PRESETS = ("smoke", "tiny")


def _preset_members(real: bool):
    """pytest params (model, img_size, in_chans), id preset-model, deduplicated by geometry: the members of
    the real-weight presets (real=True) or the members of every other preset at geometries not already
    covered by those (real=False)."""
    seen, out = set(), {True: [], False: []}
    for preset_name in sorted(preset_names(), key=lambda n: n not in _REAL_PRESETS):
        preset = load_preset(preset_name)
        data = preset.data
        chans = data.synthetic_channels if data.dataset == "synthetic" else _DATASET_CHANNELS[data.dataset]
        for model in sorted(set(preset.models.values())):
            key = (model, data.img_size, chans)
            if key not in seen:
                seen.add(key)
                out[preset_name in _REAL_PRESETS].append(pytest.param(*key, id=f"{preset_name}-{model}"))
    return out[real]


MEMBERS = _preset_members(real=True)
OTHER_MEMBERS = _preset_members(real=False)


def test_member_lists():
    ids = {p.id for p in MEMBERS}
    assert any(i.startswith("smoke-") for i in ids)
    assert any(i.startswith("tiny-") for i in ids)
    assert len(MEMBERS) == 22
    assert not {p.values for p in MEMBERS} & {p.values for p in OTHER_MEMBERS}


@pytest.mark.parametrize("name,img_size,in_chans", OTHER_MEMBERS)
def test_member_shapes_at_preset_geometry(name, img_size, in_chans):
    """Every model of the other presets (lite, paper, imagenet, ...) at its preset's image size and
    channels, on the meta device (shapes only, so 224 px paper models cost nothing)."""
    with torch.device("meta"):
        fm = create_feature_model(name, num_classes=10, in_chans=in_chans, img_size=img_size)
        x = torch.empty(2, in_chans, img_size, img_size)
    fm.eval()
    logits, feats = fm(x)
    assert logits.shape == (2, 10)
    assert len(feats) == 4 and len(fm.stage_specs) == 4 and len(fm.input_specs) == 4
    for i, (f, spec) in enumerate(zip(feats, fm.stage_specs)):
        assert tuple(f.shape) == (2, *spec.shape), f"stage {i}: {tuple(f.shape)} vs spec {spec}"
        assert spec.layout == fm.family.layout
    grids = [s.grid[0] * s.grid[1] for s in fm.stage_specs]
    assert grids == sorted(grids, reverse=True) and grids[-1] >= 1


@functools.lru_cache(maxsize=None)
def _member(name, img_size, in_chans):
    torch.manual_seed(0)
    return create_feature_model(name, num_classes=10, in_chans=in_chans, img_size=img_size).eval()


def _inputs(img_size, in_chans, seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, in_chans, img_size, img_size, generator=g)


def _noise_like(t, seed):
    """A fixed, non-constant perturbation (a constant shift would vanish in a LayerNorm)."""
    g = torch.Generator().manual_seed(seed)
    return 0.5 * torch.randn(t.shape, generator=g, dtype=t.dtype)


# ----------------------------------------------------------------------------- every preset member

@pytest.mark.parametrize("name,img_size,in_chans", MEMBERS)
def test_member(name, img_size, in_chans):
    """Features, specs, logits and stage-input pre-hooks of one preset member.

    One batch holds six rows: rows 0-4 the same image x, row 5 another image. In the pass with
    transforms installed at all four stages, row r (r < 4) is perturbed at the input of stage r
    only and rows 4-5 get `t + 0` (an identity); samples are independent in eval mode, so each row
    is its own experiment (one transformed pass instead of five keeps this fast on a loaded 2-core
    machine).
    """
    fm = _member(name, img_size, in_chans)
    assert fm.family.name in FAMILIES
    specs = fm.stage_specs
    in_shapes = [s.shape for s in fm.input_specs]
    assert len(specs) == 4 and len(in_shapes) == 4
    x = _inputs(img_size, in_chans, 1, batch=1)
    batch = torch.cat([x.expand(5, -1, -1, -1), _inputs(img_size, in_chans, 2, batch=1)])
    with torch.no_grad():
        logits, feats = fm(batch)
        plain = fm.model(batch)

        # -- features, specs, logits
        assert len(feats) == 4 and logits.shape == (6, 10)
        assert torch.allclose(logits, plain, atol=1e-6, rtol=0), (logits - plain).abs().max()
        for i, (f, spec) in enumerate(zip(feats, specs)):
            assert tuple(f.shape[1:]) == spec.shape, f"stage {i}: {tuple(f.shape)} vs spec {spec}"
            assert spec.layout == fm.family.layout
            if spec.layout == "tokens":
                assert spec.shape == (spec.prefix_tokens + spec.grid[0] * spec.grid[1], spec.channels)
            else:
                assert spec.prefix_tokens == 0 and spec.shape == (spec.channels, *spec.grid)
            # Mixer/ResMLP heads are zero-initialised: logits alone would not catch a dead feature path.
            assert not torch.allclose(f[4], f[5], atol=1e-5), f"stage {i} features ignore the input"
        grids = [s.grid[0] * s.grid[1] for s in specs]
        assert grids == sorted(grids, reverse=True), "stage grids never grow"

        # -- stage-input transforms
        seen = {}

        def transform(r):
            def fn(t):
                assert tuple(t.shape) == (6, *in_shapes[r]), f"stage {r} input {tuple(t.shape)} vs {in_shapes[r]}"
                seen[r] = t.clone()
                noise = torch.zeros_like(t)
                noise[r] = _noise_like(t[r], 10 + r)   # non-constant: a shift would vanish in a LayerNorm
                return t + noise
            return fn

        with fm.stage_inputs({r: transform(r) for r in range(4)}) as ctx:
            assert ctx is fm
            logits2, feats2 = fm(batch)
        assert sorted(seen) == [0, 1, 2, 3]
        # identity rows: bitwise what the plain pass gave
        assert torch.equal(logits2[4:], logits[4:])
        for j in range(4):
            assert torch.equal(feats2[j][4:], feats[j][4:]), f"stage {j}: identity transforms changed features"
        # row r: stages before r untouched, stages r.. changed
        for r in range(4):
            for j in range(4):
                if j < r:
                    assert torch.equal(feats2[j][r], feats[j][r]), f"stage {j} changed by a transform at stage {r}"
                else:
                    diff = (feats2[j][r] - feats[j][r]).abs().max().item()
                    assert diff > 1e-3, f"stage {j} unchanged by a transform at stage {r} (max diff {diff})"
        # each pre-hook sits at the entry of its stage
        if fm.family.name != "swin_transformer":      # Swin merges patches between a stage and the next
            for i in range(3):
                assert torch.equal(seen[i + 1][4:], feats[i][4:]), f"stage {i + 1} input is not stage {i} output"


def test_stage_inputs_plain_after_exit():
    fm = _member("kdbench_swin_p_xs", 16, 3)
    x = _inputs(16, 3, 7)
    with torch.no_grad():
        logits0, feats0 = fm(x)
        with fm.stage_inputs({i: (lambda t: t) for i in range(4)}):
            logits1, feats1 = fm(x)
        with fm.stage_inputs({1: lambda t: t + 0.5}):
            _, feats2 = fm(x)
        logits3, feats3 = fm(x)
    assert torch.equal(logits1, logits0) and all(torch.equal(a, b) for a, b in zip(feats1, feats0))
    assert torch.equal(feats2[0], feats0[0]) and not torch.allclose(feats2[1], feats0[1])
    assert torch.equal(logits3, logits0) and all(torch.equal(a, b) for a, b in zip(feats3, feats0))


# ----------------------------------------------------------------------------- pre-hook context details

def test_stage_inputs_nesting_and_exception_restore():
    fm = _member("kdbench_resnet18_xs", 16, 3)
    x = _inputs(16, 3, 4)
    shift_a = {1: lambda t: t + _noise_like(t, 1)}
    shift_b = {2: lambda t: t + _noise_like(t, 2)}
    with torch.no_grad():
        _, plain = fm(x)
        with fm.stage_inputs(shift_a):
            _, only_a = fm(x)
        with fm.stage_inputs(shift_a):
            with fm.stage_inputs(shift_b):
                _, inner = fm(x)
            _, after_inner = fm(x)
        with pytest.raises(RuntimeError):
            with fm.stage_inputs(shift_a):
                raise RuntimeError("boom")
        _, after_error = fm(x)
    # The inner context replaces the outer one (stage 1 untouched, stage 2 changed) ...
    assert torch.equal(inner[0], plain[0]) and torch.equal(inner[1], plain[1])
    assert not torch.equal(inner[2], plain[2])
    # ... and the outer one is back when it exits; nothing is left after an exception.
    assert all(torch.equal(a, b) for a, b in zip(after_inner, only_a))
    assert all(torch.equal(a, b) for a, b in zip(after_error, plain))


def test_stage_transform_gradient_flows_through_transform():
    """PAT's prompts are trained through the pre-hooks: the transform's parameters get gradients."""
    fm = create_feature_model("kdbench_deit_t_xs", num_classes=10, in_chans=3, img_size=16)
    prompt = torch.zeros(fm.input_specs[2].shape, requires_grad=True)
    with fm.stage_inputs({2: lambda t: t + prompt}):
        logits, feats = fm(_inputs(16, 3, 5))
        (logits.square().sum() + feats[3].square().sum()).backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- the probe

def _buffers(module):
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("train_mode", [True, False])
def test_probe_keeps_mode_and_batchnorm_stats(train_mode):
    torch.manual_seed(0)
    fm = create_feature_model("kdbench_resnet18_xs", num_classes=10, in_chans=3, img_size=16)
    fm.train()
    fm(_inputs(16, 3, 6, batch=4))              # non-trivial running stats
    fm.train(train_mode)
    before = _buffers(fm)
    assert before, "resnet has BatchNorm buffers"
    specs, in_specs = fm.stage_specs, fm.input_specs
    assert [s.channels for s in specs] == [8, 16, 32, 64]
    assert len(in_specs) == 4
    after = _buffers(fm)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"probe changed {k}"
    assert fm.training is train_mode and fm.model.training is train_mode
    assert all(m.training is train_mode for m in fm.model.modules())


def test_probe_follows_model_dtype():
    fm = create_feature_model("kdbench_resnet18_xs", num_classes=10, in_chans=3, img_size=16).double()
    assert [s.grid for s in fm.stage_specs] == [(16, 16), (8, 8), (4, 4), (2, 2)]


def test_probe_keeps_per_module_modes():
    fm = create_feature_model("kdbench_resnet18_xs", num_classes=10, in_chans=3, img_size=16)
    fm.train()
    fm.model.bn1.eval()                         # e.g. a frozen stem BatchNorm
    modes = {n: m.training for n, m in fm.model.named_modules()}
    fm.stage_specs
    assert {n: m.training for n, m in fm.model.named_modules()} == modes


def test_probe_does_not_call_active_transforms():
    fm = create_feature_model("kdbench_resnet18_xs", num_classes=10, in_chans=3, img_size=16)
    calls = []
    with fm.stage_inputs({0: lambda t: (calls.append(tuple(t.shape)), t)[1]}):
        fm.stage_specs
    assert calls == []


# ----------------------------------------------------------------------------- paper-scale stage convention

def _paper(name):
    """A paper-scale model on the meta device: the probe pass propagates shapes only (fast at 224 px),
    and it must run on the model's own device (a CPU probe input would fail against meta weights)."""
    with torch.device("meta"):
        fm = create_feature_model(name, num_classes=100, in_chans=3, img_size=224)
    assert next(fm.parameters()).device.type == "meta"
    return fm


# algorithms.md §1.2 (stage shapes of the OFA/PAT convention) and §4.1/§1.2 (params with 100 classes,
# Swin-N: 9.60M with 1000 classes).
PAPER = {
    "resnet18": ([(64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)], 11.23e6),
    "resnet50": ([(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)], None),
    "mobilenetv2_100": ([(24, 56, 56), (32, 28, 28), (96, 14, 14), (1280, 7, 7)], 2.35e6),
    "convnext_tiny": ([(96, 56, 56), (192, 28, 28), (384, 14, 14), (768, 7, 7)], 27.90e6),
    "vit_small_patch16_224": ([(197, 384)] * 4, 21.70e6),
    "deit_tiny_patch16_224": ([(197, 192)] * 4, 5.54e6),
    "swin_tiny_patch4_window7_224": ([(3136, 96), (784, 192), (196, 384), (49, 768)], 27.60e6),
    "swin_nano_patch4_window7_224": ([(3136, 64), (784, 128), (196, 256), (49, 512)], 9.60e6 - 900 * 513),
    "swin_pico_patch4_window7_224": ([(3136, 48), (784, 96), (196, 192), (49, 384)], 5.16e6),
    "mixer_b16_224": ([(196, 768)] * 4, 59.19e6),
    "resmlp_12_224": ([(196, 384)] * 4, 15.00e6),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_stage_shapes_and_params(name):
    shapes, params = PAPER[name]
    fm = _paper(name)
    assert [s.shape for s in fm.stage_specs] == shapes
    prefix = 1 if name.startswith(("vit_", "deit_")) else 0
    assert all(s.prefix_tokens == prefix for s in fm.stage_specs)
    if params is not None:
        n = sum(p.numel() for p in fm.model.parameters())
        assert abs(n - params) <= 0.02 * params, f"{name}: {n / 1e6:.2f}M params, expected {params / 1e6:.2f}M"


def test_paper_resnet18_stages():
    fm = _paper("resnet18")
    assert fm.family.name == "resnet"
    assert [s.channels for s in fm.stage_specs] == [64, 128, 256, 512]
    assert [s.grid for s in fm.stage_specs] == [(56, 56), (28, 28), (14, 14), (7, 7)]
    assert fm.stage_module_names == ("layer1", "layer2", "layer3", "layer4")


def test_paper_deit_tiny_stages():
    fm = _paper("deit_tiny_patch16_224")
    assert fm.indices == (1, 3, 9, 11)
    assert fm.stage_module_names == ("blocks.0", "blocks.2", "blocks.4", "blocks.10")
    for spec in fm.stage_specs:
        assert spec.layout == "tokens" and spec.prefix_tokens == 1 and spec.grid == (14, 14)
        assert spec.shape == (197, 192) and spec.num_tokens == 197
    assert [s.shape for s in fm.input_specs] == [(197, 192)] * 4


def test_paper_mobilenetv2_stages():
    fm = _paper("mobilenetv2_100")
    assert fm.family.name == "efficientnet"
    assert fm.stage_specs[3].channels == 1280 and fm.stage_specs[3].grid == (7, 7)
    # the stage-4 pre-hook is the entry of blocks 5-6 + conv_head, fed by stage 3's output
    assert fm.stage_module_names[3] == "blocks.5"
    assert fm.input_specs[3].shape == fm.stage_specs[2].shape


def test_paper_swin_pico_stages():
    fm = _paper("swin_pico_patch4_window7_224")
    assert fm.family.name == "swin_transformer"
    assert [s.grid for s in fm.stage_specs] == [(56, 56), (28, 28), (14, 14), (7, 7)]
    assert [s.shape for s in fm.input_specs] == [(3136, 48), (784, 96), (196, 192), (49, 384)]


# ----------------------------------------------------------------------------- family table and zoo

@pytest.mark.parametrize("arch", ["regnetx_002", "levit_128s"])
def test_family_of_unsupported_model(arch):
    model = timm.create_model(arch, pretrained=False, num_classes=10)
    with pytest.raises(UsageError) as err:
        family_of(model)
    msg = str(err.value)
    assert type(model).__name__ in msg
    for family in FAMILIES:
        assert family in msg
    with pytest.raises(UsageError):
        FeatureModel(model, img_size=224, in_chans=3)


def test_family_of_supported_aliases():
    deit = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=10, depth=6)
    assert family_of(deit).name == "vision_transformer"
    assert family_of(timm.create_model("kdbench_resmlp_s12_xs", num_classes=10)).name == "mlp_mixer"


def test_too_shallow_token_model_is_usage_error():
    with pytest.raises(UsageError, match="too shallow"):
        create_feature_model("kdbench_vit_s_xs", num_classes=10, in_chans=3, img_size=16, depth=4)


def test_create_model_unknown_name():
    with pytest.raises(UsageError) as err:
        create_model("kdbench_resnet18_sx", num_classes=10, in_chans=3, img_size=16)
    assert "kdbench_resnet18_s" in str(err.value)


def test_scaled_members_registered():
    listed = set(timm.list_models("kdbench_*"))
    assert set(SCALED_MODELS) <= listed
    assert len(SCALED_MODELS) == 22
    for preset_name in preset_names():
        for model in load_preset(preset_name).models.values():
            assert timm.is_model(model), f"preset {preset_name} maps to unknown model {model}"
            if model.startswith("kdbench_"):
                assert model in listed
    assert {"swin_pico_patch4_window7_224", "swin_nano_patch4_window7_224"} <= set(timm.list_models("swin_*"))


def test_scaled_member_has_no_pretrained_weights():
    with pytest.raises(ValueError, match="no pretrained"):
        timm.create_model("kdbench_resnet18_s", pretrained=True)


def test_clone_is_independent_and_has_its_own_stage_hooks():
    import torch
    from kdbench.models import create_feature_model
    fm = create_feature_model("kdbench_vit_s_xs", num_classes=10, in_chans=3, img_size=16).eval()
    twin = fm.clone()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = fm(x)[0]
        assert torch.equal(twin(x)[0], ref)
        with twin.stage_inputs({0: lambda t: t * 0}):
            assert not torch.equal(twin(x)[0], ref)
            assert torch.equal(fm(x)[0], ref)           # the original is untouched
        with fm.stage_inputs({0: lambda t: t * 0}):
            assert torch.equal(twin(x)[0], ref)
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(fm.parameters(), twin.parameters()))


# ----------------------------------------------------------------------------- classification by name (meta device)

ALL_MEMBERS = MEMBERS + OTHER_MEMBERS


def _old_filter_lookup(model):
    """How teachers.py found the checkpoint filter before the family table had the column."""
    return getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)


def test_all_members_cover_presets_and_zoo():
    names = {p.values[0] for p in ALL_MEMBERS}
    assert set(SCALED_MODELS) <= names
    assert {m for n in preset_names() for m in load_preset(n).models.values()} <= names


@pytest.mark.parametrize("name,img_size,in_chans", ALL_MEMBERS)
def test_family_of_name_on_meta(name, img_size, in_chans):
    """Classification by name builds on the meta device (no random draws: no real weights are made),
    and agrees with the family of a real build (small members) and with the row's name prefixes."""
    rng = torch.random.get_rng_state()
    family = family_of_name.__wrapped__(name, img_size)          # uncached: really builds it
    assert torch.equal(torch.random.get_rng_state(), rng), "classification initialised real weights"
    assert family_of_name(name, img_size) is family
    assert family_of_prefix(name[len(PREFIX):] if name.startswith(PREFIX) else name) is family
    if name.startswith(PREFIX):
        real = create_model(name, num_classes=10, in_chans=in_chans, img_size=img_size)
        assert next(real.parameters()).device.type == "cpu"
        assert family_of(real) is family
        assert checkpoint_filter(real) is _old_filter_lookup(real)
    else:
        with torch.device("meta"):
            model = create_model(name, num_classes=10, in_chans=in_chans, img_size=img_size)
        assert checkpoint_filter(model) is _old_filter_lookup(model)


def test_recipe_kind_of():
    expected = {"resnet18": "cnn", "resnet50": "cnn", "mobilenetv2_100": "cnn", "convnext_tiny": "vit_mlp",
                "vit_small_patch16_224": "vit_mlp", "deit_tiny_patch16_224": "vit_mlp",
                "swin_tiny_patch4_window7_224": "vit_mlp", "swin_pico_patch4_window7_224": "vit_mlp",
                "swin_nano_patch4_window7_224": "vit_mlp", "mixer_b16_224": "vit_mlp", "resmlp_12_224": "vit_mlp"}
    assert {n: recipe_kind_of(n, 224) for n in expected} == expected
    for preset_name in preset_names():
        preset = load_preset(preset_name)
        for paper, member in preset.models.items():    # a scaled member trains with its paper model's recipe
            assert recipe_kind_of(member, preset.data.img_size) == expected[paper], (preset_name, member)


def test_family_of_name_errors_and_cache():
    with pytest.raises(UsageError, match="kdbench_resnet18_s"):
        family_of_name("kdbench_resnet18_sx", 32)
    with pytest.raises(UsageError, match="no supported family"):
        family_of_name("regnetx_002", 224)
    family_of_name.cache_clear()
    family_of_name("kdbench_resnet18_xs", 16)
    family_of_name("kdbench_resnet18_xs", 16)
    assert family_of_name.cache_info().hits == 1 and family_of_name.cache_info().misses == 1


def test_family_rows_name_real_timm_attributes():
    import importlib
    for family in FAMILIES.values():
        if family.checkpoint_filter_module:
            assert callable(importlib.import_module(family.checkpoint_filter_module).checkpoint_filter_fn)
        assert family.name_prefixes
    assert checkpoint_filter(timm.create_model("kdbench_resnet18_xs", num_classes=10)) is None
    import timm.models.swin_transformer as swin
    assert checkpoint_filter(timm.create_model("kdbench_swin_p_xs", num_classes=10)) is swin.checkpoint_filter_fn


@pytest.mark.parametrize("name,img_size,in_chans", ALL_MEMBERS)
def test_feature_model_widths(name, img_size, in_chans):
    """`num_features` is the width of the pooled feature the classifier reads; `prefix_tokens` the
    prefix of every stage feature (from the family row, no probe needed)."""
    with torch.device("meta"):
        fm = create_feature_model(name, num_classes=10, in_chans=in_chans, img_size=img_size)
        x = torch.empty(2, in_chans, img_size, img_size)
    fm.eval()
    pooled = fm.model.forward_head(fm.model.forward_features(x), pre_logits=True)
    assert fm.num_features == pooled.shape[-1] == fm.model.num_features
    assert all(s.prefix_tokens == fm.prefix_tokens for s in fm.stage_specs)
    if name.startswith(("vit_", "deit_", PREFIX + "vit_", PREFIX + "deit_")):
        assert fm.prefix_tokens == 1
