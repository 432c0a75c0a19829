"""`--set recipe.budget=B`: a student budget that scales epochs and every warm-up consistently,
recorded in the config (hashed only when not 1)."""

import pytest

from kdbench.cli import main
from kdbench.config import load_preset
from kdbench.grid import expand_runs, resolve_pairs

PAIR = "swin_tiny_patch4_window7_224:resnet18,convnext_tiny:deit_tiny_patch16_224"


def runs(overrides, distillers=("kd", "dkd")):
    preset = load_preset("tiny")
    return {(r.student, r.distiller): r for r in expand_runs(
        preset, resolve_pairs(PAIR, preset), list(distillers), [0], data=preset.data, teacher_cfg=preset.teacher,
        overrides=overrides)}


def test_budget_scales_epochs_and_warmups():
    base, four = runs({}), runs({"recipe.budget": 4, "distiller.dkd.warmup_epochs": 0.5})
    for key, run in base.items():
        r, r4 = run.recipe, four[key].recipe
        assert (r.budget, r4.budget) == (1.0, 4.0)
        assert r4.epochs == 4 * r.epochs and r4.warmup_epochs == pytest.approx(4 * r.warmup_epochs)
        assert (r4.lr, r4.batch_size) == (r.lr, r.batch_size)           # only the length changes
    dkd = [r for (s, d), r in four.items() if d == "dkd"]
    assert all(r.distiller_config.warmup_epochs == pytest.approx(2.0) for r in dkd)


def test_budget_one_keeps_the_hash_and_other_budgets_change_it():
    base, one, four = runs({}), runs({"recipe.budget": 1}), runs({"recipe.budget": 4})
    for key in base:
        assert base[key].hash() == one[key].hash() != four[key].hash()
        assert "budget" not in base[key].to_dict()["recipe"] and four[key].to_dict()["recipe"]["budget"] == 4.0


def test_budget_rounds_epochs_and_rejects_non_positive(capsys):
    quarter = runs({"recipe.budget": 0.25})
    assert all(r.recipe.epochs == 1 for r in quarter.values())      # 2 x 0.25 rounds to 0: at least one epoch
    assert main(["run", "--distiller", "kd", "--pairs", PAIR, "--set", "recipe.budget=0", "--dry-run"]) == 2
    assert "recipe.budget" in capsys.readouterr().err
