"""Tests of kdbench.config: `--set` parsing and application, presets, run-config hashing."""

import dataclasses

import pytest

from distillers.base import TaskConfig
from distillers.kd import KDConfig
from kdbench.config import (OPTIMIZERS, Preset, RecipeConfig, RunConfig, SECTIONS, apply_overrides, load_preset,
                            parse_overrides, preset_names)
from kdbench.data import DATASETS, DataConfig
from kdbench.errors import UsageError
from kdbench.grid import pair_sets


# ----------------------------------------------------------------------------- parse_overrides

def test_parse_overrides_types():
    out = parse_overrides(["recipe.epochs=3", "distiller.temperature=4", "recipe.amp=false", "data.root=/x",
                           "recipe.lr=0.001", "recipe.optimizer=adamw", "compile=true"])
    assert out == {"recipe.epochs": 3, "distiller.temperature": 4, "recipe.amp": False, "data.root": "/x",
                   "recipe.lr": 0.001, "recipe.optimizer": "adamw", "compile": True}
    assert type(out["recipe.epochs"]) is int
    assert type(out["distiller.temperature"]) is int
    assert type(out["recipe.amp"]) is bool
    assert type(out["data.root"]) is str


def test_parse_overrides_whitespace_and_empty():
    assert parse_overrides([" recipe.epochs =5"]) == {"recipe.epochs": 5}
    assert parse_overrides(["data.root="]) == {"data.root": ""}
    assert parse_overrides([]) == {} and parse_overrides(None) == {}
    # a later value of the same key wins
    assert parse_overrides(["recipe.epochs=1", "recipe.epochs=2"]) == {"recipe.epochs": 2}


@pytest.mark.parametrize("item", ["recipe.epochs", "=3", " =3", ""])
def test_parse_overrides_malformed(item):
    with pytest.raises(UsageError) as err:
        parse_overrides([item])
    assert "key=value" in str(err.value)


def test_parse_overrides_unknown_section():
    with pytest.raises(UsageError) as err:
        parse_overrides(["foo.bar=1"])
    msg = str(err.value)
    assert "'foo'" in msg
    for section in SECTIONS:
        assert section in msg


def test_parse_overrides_section_did_you_mean():
    with pytest.raises(UsageError, match="did you mean 'recipe'"):
        parse_overrides(["recipes.epochs=3"])


def test_parse_overrides_exponent_without_dot_is_float():
    out = parse_overrides(["recipe.lr=1e-3", "recipe.weight_decay=5e-4"])
    assert out == {"recipe.lr": 1e-3, "recipe.weight_decay": 5e-4}
    recipe = apply_overrides(RecipeConfig(), out, "recipe")
    assert recipe.lr == 1e-3 and recipe.weight_decay == 5e-4


# ----------------------------------------------------------------------------- apply_overrides

def _apply(obj, items, section):
    return apply_overrides(obj, parse_overrides(items), section)


def test_apply_overrides_values_and_copy():
    base = RecipeConfig()
    new = _apply(base, ["recipe.epochs=7", "recipe.lr=0.2", "recipe.amp=false", "recipe.optimizer=adamw",
                        "distiller.temperature=4"], "recipe")
    assert (new.epochs, new.lr, new.amp, new.optimizer) == (7, 0.2, False, "adamw")
    assert base == RecipeConfig(), "apply_overrides must not mutate its input"
    assert _apply(base, ["distiller.temperature=4"], "recipe") == base   # other sections are ignored


def test_apply_overrides_int_to_float():
    cfg = _apply(KDConfig(), ["distiller.temperature=4"], "distiller")
    assert cfg.temperature == 4.0 and isinstance(cfg.temperature, float)
    assert cfg.kd_weight == 1.0 and cfg.gt_weight == 1.0


@pytest.mark.parametrize("item,needle", [
    ("recipe.epochs=abc", "recipe.epochs"),
    ("recipe.epochs=2.5", "recipe.epochs"),
    ("recipe.lr=true", "recipe.lr"),
    ("recipe.amp=1", "recipe.amp"),
    ("recipe.epochs=-1", ">= 1"),
    ("recipe.epochs=0", ">= 1"),
    ("recipe.lr=0", "> 0"),
    ("recipe.label_smoothing=1", "[0, 1)"),
    ("recipe.optimizer=adam", "sgd or adamw"),
    ("recipe.schedule=linear", "cosine or step"),
    ("recipe.weight_decay=-0.1", ">= 0"),
])
def test_apply_overrides_bad_values(item, needle):
    with pytest.raises(UsageError) as err:
        _apply(RecipeConfig(), [item], "recipe")
    assert needle in str(err.value)


def test_apply_overrides_unknown_field_did_you_mean():
    with pytest.raises(UsageError) as err:
        _apply(RecipeConfig(), ["recipe.epoch=3"], "recipe")
    msg = str(err.value)
    assert "did you mean 'epochs'" in msg
    assert "batch_size" in msg     # the valid choices are listed


def test_apply_overrides_section_only_and_subfield_of_scalar():
    with pytest.raises(UsageError):
        apply_overrides(RecipeConfig(), {"recipe": 3}, "recipe")
    with pytest.raises(UsageError, match="no sub-fields"):
        _apply(RecipeConfig(), ["recipe.epochs.x=3"], "recipe")


def test_apply_overrides_nested():
    teacher = load_preset("smoke").teacher
    new = _apply(teacher, ["teacher.cnn.epochs=2", "teacher.vit_mlp.lr=0.01", "teacher.seed=5"], "teacher")
    assert new.cnn.epochs == 2 and new.vit_mlp.lr == 0.01 and new.seed == 5
    assert new.cnn.lr == teacher.cnn.lr and new.vit_mlp.epochs == teacher.vit_mlp.epochs
    assert teacher == load_preset("smoke").teacher      # the input is untouched
    with pytest.raises(UsageError, match=">= 1"):
        _apply(teacher, ["teacher.cnn.epochs=0"], "teacher")
    with pytest.raises(UsageError, match="did you mean 'epochs'"):
        _apply(teacher, ["teacher.cnn.epoch=1"], "teacher")


def test_apply_overrides_distiller_post_init_value_error():
    with pytest.raises(UsageError) as err:
        _apply(KDConfig(), ["distiller.temperature=0"], "distiller")
    assert "distiller.temperature" in str(err.value) and "temperature must be > 0" in str(err.value)
    with pytest.raises(UsageError, match="did you mean 'temperature'"):
        _apply(KDConfig(), ["distiller.temprature=2"], "distiller")


def test_apply_overrides_data():
    data = _apply(DataConfig(), ["data.root=/x", "data.train_limit=100", "data.flip=true"], "data")
    assert (data.root, data.train_limit, data.flip) == ("/x", 100, True)


# ----------------------------------------------------------------------------- presets

def test_contract_presets_exist():
    names = preset_names()
    assert {"smoke", "tiny"} <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads(name):
    preset = load_preset(name)
    assert isinstance(preset, Preset) and preset.name == name
    assert preset.description.strip()
    assert isinstance(preset.data, DataConfig) and preset.data.dataset in DATASETS
    assert isinstance(preset.cnn, RecipeConfig) and isinstance(preset.vit_mlp, RecipeConfig)
    assert preset.seeds >= 1
    # the 12 CIFAR pairs or the 15 ImageNet pairs are all available at this scale
    sets = pair_sets()
    assert any(all(p.teacher in preset.models and p.student in preset.models for p in sets[key])
               for key in ("all", "imagenet")), f"preset {name} cannot run either pair grid"
    if name in ("smoke", "tiny"):
        assert all(p.teacher in preset.models and p.student in preset.models for p in sets["all"] + sets["imagenet"])


def test_tiny_and_smoke_presets():
    tiny, smoke = load_preset("tiny"), load_preset("smoke")
    assert tiny.data.dataset == "fashion-mnist" and tiny.data.img_size == 28
    assert smoke.data.dataset == "synthetic"
    assert smoke.data.img_size == 16 and smoke.data.synthetic_channels == 3 and smoke.data.synthetic_classes == 10
    assert smoke.models["resnet18"] == "kdbench_resnet18_xs"
    assert tiny.models["resnet18"] == "kdbench_resnet18_s"
    assert smoke.cnn.optimizer == "sgd" and smoke.vit_mlp.optimizer == "adamw"


def test_unknown_preset():
    with pytest.raises(UsageError) as err:
        load_preset("tiyn")
    msg = str(err.value)
    assert "did you mean 'tiny'" in msg and "smoke" in msg


# ----------------------------------------------------------------------------- RunConfig.hash

def _run(**changes):
    preset = load_preset("smoke")
    base = dict(preset="smoke", teacher="kdbench_vit_s_xs", student="kdbench_resnet18_xs", seed=0, distiller="kd",
                distiller_config=KDConfig(), recipe=preset.cnn, data=preset.data, teacher_config=preset.teacher)
    base.update(changes)
    return RunConfig(**base)


def _changed(value, field):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value > 0 else 0.1
    if field == "optimizer":
        return next(o for o in OPTIMIZERS if o != value)
    if field == "schedule":
        return "step" if value == "cosine" else "cosine"
    raise AssertionError(f"no change rule for {field}={value!r}")


def test_hash_stable_and_json():
    a, b = _run(), _run()
    assert a is not b and a.hash() == b.hash()
    assert len(a.hash()) == 16 and int(a.hash(), 16) >= 0
    assert a.hash() == _run(recipe=dataclasses.replace(load_preset("smoke").cnn)).hash()


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(RecipeConfig)])
def test_hash_changes_with_recipe(field):
    base = _run()
    recipe = dataclasses.replace(base.recipe, **{field: _changed(getattr(base.recipe, field), field)})
    assert _run(recipe=recipe).hash() != base.hash()


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(KDConfig)])
def test_hash_changes_with_distiller_config(field):
    base = _run()
    cfg = dataclasses.replace(KDConfig(), **{field: _changed(getattr(KDConfig(), field), field)})
    assert _run(distiller_config=cfg).hash() != base.hash()


def test_hash_changes_with_identity_fields():
    base = _run().hash()
    assert _run(seed=1).hash() != base
    assert _run(distiller="vanilla", distiller_config=TaskConfig()).hash() != base
    assert _run(student="kdbench_mobilenetv2_xs").hash() != base
    assert _run(teacher="kdbench_swin_t_xs").hash() != base
    data = load_preset("smoke").data
    assert _run(data=dataclasses.replace(data, img_size=32)).hash() != base


def test_hash_ignores_where_files_live():
    base = _run()
    data = dataclasses.replace(base.data, root="/somewhere/else", workers=1)
    tcfg = dataclasses.replace(base.teacher_config, checkpoint_dir="/ckpts")
    assert _run(data=data, teacher_config=tcfg).hash() == base.hash()
    d = base.to_dict()
    assert "root" not in d["data"] and "checkpoint_dir" not in d["teacher_config"]
    assert d["distiller"]["name"] == "kd" and d["distiller"]["temperature"] == 1.0


def test_hash_changes_when_a_member_is_redefined(monkeypatch):
    from kdbench.models import zoo
    run = _run()
    base = run.hash()
    assert run.to_dict()["models"]["student"].startswith("_")   # a kdbench member: its definition is recorded
    builder, defaults = zoo.MEMBERS["resnet18"]["xs"]
    monkeypatch.setitem(zoo.MEMBERS["resnet18"], "xs", (builder, {**defaults, "channels": (8, 16, 32, 32)}))
    assert run.student == "kdbench_resnet18_xs" and run.hash() != base
    assert zoo.member_definition("resnet18") is None   # timm's own models: the timm version covers them
