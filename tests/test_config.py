"""Tests of kdbench.config: `--set` parsing and application, presets, run-config hashing, the validation
convention (ValueError in configs, exit 2 at the CLI), RunConfig.from_dict."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distillers.base import TaskConfig
from distillers.kd import KDConfig
from kdbench.assets import asset
from kdbench.cli import main
from kdbench.config import (OPTIMIZERS, Preset, RecipeConfig, RunConfig, SECTIONS, TeacherConfig, apply_overrides,
                            config_hash, load_preset, parse_overrides, preset_names)
from kdbench.data import DATASETS, DataConfig
from kdbench.errors import UsageError
from kdbench.grid import expand_runs, pair_sets, resolve_pairs
from kdbench.registry import DISTILLERS
from kdbench.validators import at_least, in_range, is_hashed, non_negative, one_of, positive, subset_of, unhashed


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
    ("recipe.schedule=linear", "one of cosine, step, multistep"),
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
    assert str(err.value) == "bad value 0.0 for distiller.temperature: must be > 0"
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
    # the 12 CIFAR pairs or the 15 ImageNet pairs (detection: the det pairs) are all available at this scale
    sets = pair_sets()
    keys = ("det",) if preset.task == "detection" else ("all", "imagenet")
    assert any(all(p.teacher in preset.models and p.student in preset.models for p in sets[key])
               for key in keys), f"preset {name} cannot run its pair grid"
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


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(RecipeConfig) if is_hashed(f)])
def test_hash_changes_with_recipe(field):
    base = _run()
    if field == "milestones":                    # they go with the multistep schedule only
        change = {"schedule": "multistep", "milestones": (0.5,)}
    else:
        change = {field: _changed(getattr(base.recipe, field), field)}
    recipe = dataclasses.replace(base.recipe, **change)
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


def test_recipe_log_every_is_not_hashed():
    base = _run()
    assert _run(recipe=dataclasses.replace(base.recipe, log_every=7)).hash() == base.hash()


def test_opt_in_switch_is_hashed_only_when_set():
    from kdbench.validators import opt_in

    @dataclasses.dataclass
    class Cfg:
        weight: float = 1.0
        new_switch: bool = opt_in(False)

    run = dataclasses.replace(_run(), distiller_config=Cfg())
    assert "new_switch" not in run.to_dict()["distiller"] and "new_switch" in run.to_dict(full=True)["distiller"]
    assert run.hash() == dataclasses.replace(_run(), distiller_config=Cfg()).hash()
    on = dataclasses.replace(run, distiller_config=Cfg(new_switch=True))
    assert on.to_dict()["distiller"]["new_switch"] is True and on.hash() != run.hash()


def test_hash_ignores_every_field_marked_unhashed():
    @dataclasses.dataclass
    class Inner:
        kept: int = 1
        cache: str = unhashed("/tmp/a")

    @dataclasses.dataclass
    class MethodConfig(TaskConfig):
        inner: Inner = dataclasses.field(default_factory=Inner)
        scratch: str = unhashed(None)

    base = _run(distiller_config=MethodConfig())
    moved = _run(distiller_config=MethodConfig(inner=Inner(cache="/b"), scratch="/c"))
    assert moved.hash() == base.hash() and moved.to_dict() == base.to_dict()
    assert base.to_dict()["distiller"] == {"name": "kd", "gt_weight": 1.0, "inner": {"kept": 1}}
    assert moved.to_dict(full=True)["distiller"]["inner"] == {"kept": 1, "cache": "/b"}
    assert _run(distiller_config=MethodConfig(inner=Inner(kept=2))).hash() != base.hash()
    assert not is_hashed(next(f for f in dataclasses.fields(TeacherConfig) if f.name == "checkpoint_dir"))


# ----------------------------------------------------------------------------- validation convention

def test_validators_wording():
    cases = [(lambda: positive("distiller.temperature", 0), "bad value 0 for distiller.temperature: must be > 0"),
             (lambda: non_negative("recipe.mixup", -1.0), "bad value -1.0 for recipe.mixup: must be >= 0"),
             (lambda: at_least("recipe.epochs", 0, 1), "bad value 0 for recipe.epochs: must be an integer >= 1"),
             (lambda: in_range("recipe.ema_decay", 1.0, 0, 1, hi_open=True),
              "bad value 1.0 for recipe.ema_decay: must be in [0, 1)"),
             (lambda: in_range("distiller.warmup_fraction", 2, 0, 1), "bad value 2 for distiller.warmup_fraction: "
                                                                      "must be in [0, 1]"),
             (lambda: one_of("recipe.optimizer", "adam", OPTIMIZERS), "bad value 'adam' for recipe.optimizer: "
                                                                      "must be sgd or adamw"),
             (lambda: one_of("x", "d", "abc"), "bad value 'd' for x: must be one of a, b, c"),
             (lambda: subset_of("x", ("a", "q"), "abc"), "bad value 'q' in x: must be one of a, b, c")]
    for call, message in cases:
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == message and not isinstance(err.value, UsageError)
    positive("k", 1e-9), non_negative("k", 0), at_least("k", 1, 1), in_range("k", 0, 0, 1, hi_open=True)
    one_of("k", "a", "ab"), subset_of("k", (), "ab")


@pytest.mark.parametrize("make,message", [
    (lambda: RecipeConfig(epochs=0), "bad value 0 for recipe.epochs: must be an integer >= 1"),
    (lambda: RecipeConfig(schedule="linear"), "bad value 'linear' for recipe.schedule: must be one of cosine, step, multistep"),
    (lambda: TeacherConfig(source="zoo"), "bad value 'zoo' for teacher.source: must be train or checkpoint"),
    (lambda: _run(precision="fp16"), "bad value 'fp16' for precision: must be one of fp32, tf32, bf16"),
    (lambda: _run(seed=-1), "bad value -1 for seed: must be >= 0"),
])
def test_configs_raise_value_error_not_usage_error(make, message):
    with pytest.raises(ValueError) as err:
        make()
    assert str(err.value) == message and not isinstance(err.value, UsageError)


BAD_DISTILLER_VALUES = [("kd", "temperature", 0.0), ("dkd", "temperature", -1.0), ("dkd", "warmup_epochs", -1.0),
                        ("fitnet", "temperature", 0.0), ("fitnet", "stages", (1, 1)), ("reviewkd", "temperature", 0.0),
                        ("reviewkd", "mid_channels", 0), ("reviewkd", "warmup_fraction", 1.5),
                        ("reviewkd", "stages", ()), ("ofa", "temperature", 0.0), ("ofa", "final_grid", 0),
                        ("ofa", "eps", (1.0, 1.0)), ("ofa", "stages", (5,)), ("pat", "temperature", 0.0),
                        ("pat", "num_queries", 48), ("pat", "heads", 0), ("pat", "dim", 30),
                        ("pat", "feedback", "later"), ("pat", "faithful_items", ("nope",)),
                        ("pat", "afp_stages", (0,)), ("kd+ls", "temperature", 0.0),
                        ("pat-faithful", "temperature", 0.0), ("fitnet+norm", "temperature", 0.0),
                        ("dist", "beta", -1.0), ("dist", "temperature", 0.0), ("rsd", "kappa", 1.5),
                        ("rsd", "gamma", 0), ("rsd", "rsd_weight", -0.1)]
# Every registered distiller's numbers (finite, weights >= 0, temperature > 0): tests/test_conformance.py


@pytest.mark.parametrize("name,field,value", BAD_DISTILLER_VALUES)
def test_distiller_configs_raise_one_value_error_naming_the_key(name, field, value):
    with pytest.raises(ValueError) as err:
        DISTILLERS.get(name).Config(**{field: value})
    message = str(err.value)
    assert message.startswith("bad value ") and f"distiller.{field}: must be " in message and "\n" not in message
    assert not isinstance(err.value, UsageError)


def test_bad_distiller_value_from_the_command_line_is_exit_2_one_line(tmp_path, capsys):
    code = main(["run", "--distiller", "kd,pat", "--pairs", "all", "--preset", "smoke", "--out", str(tmp_path / "r"),
                 "--set", "distiller.temperature=0"])
    err = capsys.readouterr().err
    assert code == 2 and err == "kdbench: error: bad value 0.0 for distiller.temperature: must be > 0\n"
    assert not (tmp_path / "r").exists()
    code = main(["run", "--distiller", "kd", "--pairs", "all", "--preset", "smoke", "--out", str(tmp_path / "r"),
                 "--set", "distiller.kd.temperature=-2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "distiller.temperature: must be > 0" in err


def test_bad_values_in_a_preset_file_are_exit_2_one_line(tmp_path, capsys):
    raw = yaml.safe_load(asset("presets", "smoke.yaml").read_text())
    raw["cnn"]["epochs"] = 0
    raw["distillers"] = {"kd": {"temperature": 0}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    code = main(["run", "--distiller", "kd", "--pairs", "all", "--preset", str(path), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "cnn" in err and "bad value 0 for recipe.epochs: must be an integer >= 1" in err
    raw["cnn"]["epochs"] = 1
    path.write_text(yaml.safe_dump(raw))
    code = main(["run", "--distiller", "kd", "--pairs", "all", "--preset", str(path), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "distiller kd: bad value 0.0 for distiller.temperature" in err
    assert not (tmp_path / "r").exists()


def test_nested_set_key_is_named_when_the_message_names_another():
    with pytest.raises(UsageError) as err:
        _apply(load_preset("smoke").teacher, ["teacher.cnn.epochs=0"], "teacher")
    assert str(err.value) == "--set teacher.cnn.epochs: bad value 0 for recipe.epochs: must be an integer >= 1"


# ----------------------------------------------------------------------------- hashes stay what they were

# Computed with the code before fields were marked `unhashed` (the hand-written pops of to_dict()):
# a change here changes the identity of every existing run record.
PINNED = {
    "smoke/vit_small_patch16_224:resnet18": {
        "dkd": "98bcc49a0da4b92c", "fitnet": "9b83f938e9fde92d", "kd": "6377223ceb90ebb9", "ofa": "4ddca3916c16e6a9",
        "pat": "a15c865588a4c97a", "reviewkd": "0a6d064ed5abd2f8", "vanilla": "5159f574e51e07ae"},
    "paper/vit_small_patch16_224:resnet18": {
        "dkd": "fd54c8ec31461afc", "fitnet": "4516a5c67f3dc788", "kd": "d820da5df05a6c3c", "ofa": "25d3632e25d994d3",
        "pat": "ed273b71522e61f8", "reviewkd": "a8deed953ee67d86", "vanilla": "ed2d7ca5acbf9e05"},
    "tiny/resnet18:deit_tiny_patch16_224": {
        "dkd": "5e5c3809fcf2696b", "fitnet": "4d915652eeb78426", "kd": "2b89266f18f8fbd8", "ofa": "e63d592362590b8d",
        "pat": "e0234871cea6e933", "reviewkd": "a955fef8c9f85a21", "vanilla": "5e4405fddd29ab28"},
}


# Behaviour changes made on purpose, each with a hashed field so that old records stay distinct:
# the hash a run had before is the hash of its configuration without that field.
CHANGED = {"ofa": "branch_norm_eps"}      # issue 31: the official LayerNorm eps (records before: timm's 1e-6)


def before_changes(run) -> str:
    d = run.to_dict()
    if run.distiller in CHANGED:
        d["distiller"] = {k: v for k, v in d["distiller"].items() if k != CHANGED[run.distiller]}
    return config_hash(d)


@pytest.mark.parametrize("where", sorted(PINNED))
def test_hashes_of_existing_runs_are_pinned(where):
    preset_name, pair = where.split("/")
    preset = load_preset(preset_name)
    runs = expand_runs(preset, resolve_pairs(pair, preset), sorted(PINNED[where]), [0], data=preset.data,
                       teacher_cfg=preset.teacher, overrides={})
    assert {r.distiller: before_changes(r) for r in runs} == PINNED[where]
    assert all(r.hash() != before_changes(r) for r in runs if r.distiller in CHANGED)
    for run in runs:       # where files live never counts
        moved = dataclasses.replace(run, data=dataclasses.replace(run.data, root="/x", workers=1),
                                    teacher_config=dataclasses.replace(run.teacher_config, checkpoint_dir="/c"))
        assert moved.hash() == run.hash()
        d = run.to_dict()
        assert {"root", "workers"} & set(d["data"]) == set() and "checkpoint_dir" not in d["teacher_config"]


def test_committed_imagenet_dry_run_hashes_are_reproduced():
    """The committed ImageNet dry-run rows carry config hashes (made with --set recipe.batch_size=B)."""
    rows = json.loads(asset("results", "dry-run-imagenet-cpu.json").read_text())["rows"]
    preset = load_preset("imagenet")
    for batch in {r["batch_size"] for r in rows}:
        mine = [r for r in rows if r["batch_size"] == batch]
        runs = expand_runs(preset, resolve_pairs("imagenet", preset), sorted({r["distiller"] for r in mine}), [0],
                           data=preset.data, teacher_cfg=preset.teacher, overrides={"recipe.batch_size": batch})
        hashes = {(r.teacher, r.student, r.distiller): before_changes(r) for r in runs}      # made before them
        assert [hashes[(r["teacher"], r["student"], r["distiller"])] for r in mine] == [r["config_hash"] for r in mine]


# ----------------------------------------------------------------------------- from_dict

@pytest.mark.parametrize("preset_name", ["smoke", "paper"])
def test_run_config_round_trip_for_every_distiller(preset_name):
    preset = load_preset(preset_name)
    data = dataclasses.replace(preset.data, root="/data/here", workers=2)
    teacher_cfg = dataclasses.replace(preset.teacher, checkpoint_dir="/ckpts", files={"resnet18": "r18.pth"})
    runs = expand_runs(preset, resolve_pairs("all", preset), DISTILLERS.names(), [0, 1], data=data,
                       teacher_cfg=teacher_cfg, overrides={"distiller.pat.faithful_items": ["pe_by_batch"],
                                                            "distiller.ofa.eps": [1.5], "recipe.epochs": 2})
    assert {r.distiller for r in runs} == set(DISTILLERS.names())
    for run in runs:
        full = run.to_dict(full=True)
        assert full["data"]["root"] == "/data/here" and full["teacher_config"]["checkpoint_dir"] == "/ckpts"
        back = RunConfig.from_dict(json.loads(json.dumps(full)))     # as sent to a subprocess or a Ray task
        assert back == run and back.hash() == run.hash()
        assert type(back.distiller_config) is DISTILLERS.get(run.distiller).Config
        hashed = RunConfig.from_dict(json.loads(json.dumps(run.to_dict())))   # a record's config
        assert hashed.hash() == run.hash()
        assert hashed.data.root is None and hashed.teacher_config.checkpoint_dir is None
        assert hashed == dataclasses.replace(run, data=dataclasses.replace(run.data, root=None, workers=4),
                                             teacher_config=dataclasses.replace(run.teacher_config, checkpoint_dir=None))


def test_from_dict_ignores_models_and_checks_values():
    run = _run()
    d = run.to_dict(full=True)
    assert RunConfig.from_dict({**d, "models": {"teacher": "anything"}}) == run
    with pytest.raises(UsageError, match="recipe.epochs"):
        RunConfig.from_dict({**d, "recipe": {**d["recipe"], "epochs": 0}})
    with pytest.raises(UsageError, match="did you mean 'kd'"):
        RunConfig.from_dict({**d, "distiller": {**d["distiller"], "name": "kdd"}})


# ----------------------------------------------------------------------------- package data

def test_no_top_level_benchmarks_package_is_installed():
    """The assets are installed as data of kdbench (`kdbench.benchmarks`): outside the repository no
    package named `benchmarks` comes with kdbench."""
    out = subprocess.run([sys.executable, "-c", "import importlib.util, kdbench.assets as a; "
                          "print(importlib.util.find_spec('benchmarks') is None, (a.ROOT / 'presets' / 'tiny.yaml').is_file())"],
                         cwd="/", capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "True"], out.stderr


def test_presets_are_not_shadowed_by_a_benchmarks_folder_in_the_working_directory(tmp_path):
    (tmp_path / "benchmarks" / "presets").mkdir(parents=True)
    (tmp_path / "benchmarks" / "__init__.py").write_text("")
    code = ("from kdbench.config import load_preset, preset_names; from kdbench.grid import pair_sets; "
            "import benchmarks; assert benchmarks.__file__.startswith(%r), benchmarks.__file__; "
            "import kdbench.assets; assert not str(kdbench.assets.ROOT).startswith(%r); "
            "assert {'smoke', 'tiny'} <= set(preset_names()); assert load_preset('tiny').name == 'tiny'; "
            "assert len(pair_sets()['all']) == 12; print('ok')" % (str(tmp_path), str(tmp_path)))
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(root)]))}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_compile_auto_compiles_long_cuda_runs_only():
    """Issue 18: `compile=auto` (the default): CUDA runs of COMPILE_MIN_STEPS steps or more, never CPU runs."""
    import torch
    from kdbench.config import COMPILE_MIN_STEPS, compile_flag
    from kdbench.grid import resolve_compile
    preset = load_preset("paper")
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert compile_flag({}) == "auto" and compile_flag({"compile": True}) is True
    assert resolve_compile("auto", preset.cnn, preset.data, cuda)                 # 300 epochs of CIFAR-100
    assert not resolve_compile("auto", preset.cnn, preset.data, cpu)
    short = dataclasses.replace(preset.cnn, epochs=1)                             # 390 steps
    assert not resolve_compile("auto", short, preset.data, cuda)
    assert resolve_compile(True, short, preset.data, cpu) and not resolve_compile(False, preset.cnn, preset.data, cuda)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"at least {COMPILE_MIN_STEPS:,} steps are compiled" in readme
