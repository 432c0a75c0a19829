"""Teacher cache: train once, reuse, verify, retrain when stale; released checkpoints load strictly."""

import dataclasses

import pytest
import torch

from kdbench.context import RunContext, SILENT
from kdbench.config import load_preset
from kdbench.errors import UsageError
from kdbench.models import create_model
from kdbench.results import read_manifest
from kdbench.teachers import WEIGHTS, get_teacher, teacher_cached, teacher_dir

CPU = torch.device("cpu")
TEACHER = "kdbench_resnet18_xs"


@pytest.fixture
def setup():
    preset = load_preset("smoke")
    data = dataclasses.replace(preset.data, synthetic_train=256, synthetic_test=64)
    tcfg = dataclasses.replace(preset.teacher, cnn=dataclasses.replace(preset.teacher.cnn, epochs=1))
    return preset, data, tcfg


def test_trained_once_then_reused_and_verified(tmp_path, setup):
    preset, data, tcfg = setup
    logs = []
    fm, manifest = get_teacher(preset, TEACHER, data, tcfg, out=tmp_path, device=CPU, context=RunContext(sink=logs.append))
    assert any("training" in s for s in logs)
    assert not fm.training and not any(p.requires_grad for p in fm.parameters())
    assert manifest.architecture == TEACHER and len(manifest.sha256) == 64 and manifest.source == "train"
    logs.clear()
    fm2, m2 = get_teacher(preset, TEACHER, data, tcfg, out=tmp_path, device=CPU, context=RunContext(sink=logs.append), verify=True)
    assert not any("training" in s for s in logs) and any("verified" in s for s in logs)
    assert m2 == manifest == read_manifest(teacher_dir(tmp_path, "smoke", TEACHER))
    for a, b in zip(fm.state_dict().values(), fm2.state_dict().values()):
        assert torch.equal(a, b)


def test_corrupt_weights_or_new_recipe_retrain(tmp_path, setup):
    preset, data, tcfg = setup
    get_teacher(preset, TEACHER, data, tcfg, out=tmp_path, device=CPU, context=SILENT)
    weights = teacher_dir(tmp_path, "smoke", TEACHER) / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:100])
    logs = []
    get_teacher(preset, TEACHER, data, tcfg, out=tmp_path, device=CPU, context=RunContext(sink=logs.append))
    assert any("weights missing or corrupt" in s for s in logs)
    logs.clear()
    tcfg2 = dataclasses.replace(tcfg, cnn=dataclasses.replace(tcfg.cnn, lr=0.01))
    get_teacher(preset, TEACHER, data, tcfg2, out=tmp_path, device=CPU, context=RunContext(sink=logs.append))
    assert any("recipe changed" in s for s in logs)


def test_teacher_cached_says_what_get_teacher_will_do(tmp_path, setup):
    preset, data, tcfg = setup
    cached = lambda cfg=tcfg: teacher_cached(preset, TEACHER, data, cfg, out=tmp_path, device=CPU)   # noqa: E731
    assert not cached()
    get_teacher(preset, TEACHER, data, tcfg, out=tmp_path, device=CPU, context=SILENT)
    assert cached()
    assert not cached(dataclasses.replace(tcfg, cnn=dataclasses.replace(tcfg.cnn, lr=0.01)))     # another recipe
    assert not cached(dataclasses.replace(tcfg, source="checkpoint"))                              # released files
    weights = teacher_dir(tmp_path, "smoke", TEACHER) / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:100])
    assert not cached()


def test_accuracy_floor(tmp_path, setup):
    preset, data, tcfg = setup
    with pytest.raises(UsageError, match="min_top1"):
        get_teacher(preset, TEACHER, data, dataclasses.replace(tcfg, min_top1=101.0), out=tmp_path,
                    device=CPU, context=SILENT)


def test_released_checkpoint_strict_load(tmp_path, setup):
    preset, data, tcfg = setup
    ckpt_cfg = dataclasses.replace(tcfg, source="checkpoint", checkpoint_dir=str(tmp_path / "zoo"))
    (tmp_path / "zoo").mkdir()
    with pytest.raises(UsageError, match="not found"):
        get_teacher(preset, TEACHER, data, ckpt_cfg, out=tmp_path, device=CPU, context=SILENT)
    paper = {v: k for k, v in preset.models.items()}[TEACHER]
    model = create_model(TEACHER, num_classes=10, in_chans=3, img_size=16)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "zoo" / f"{paper}_cifar100.pth")
    fm, manifest = get_teacher(preset, TEACHER, data, ckpt_cfg, out=tmp_path, device=CPU, context=SILENT)
    assert all(torch.equal(a, b) for a, b in zip(fm.model.state_dict().values(), model.state_dict().values()))
    assert 0 <= manifest.top1 <= 100 and manifest.source == "checkpoint"
    assert read_manifest(teacher_dir(tmp_path, "smoke", TEACHER)) == manifest
    wrong = create_model(TEACHER, num_classes=7, in_chans=3, img_size=16)
    torch.save(wrong.state_dict(), tmp_path / "zoo" / f"{paper}_cifar100.pth")
    with pytest.raises(UsageError, match="does not fit"):
        get_teacher(preset, TEACHER, data, ckpt_cfg, out=tmp_path, device=CPU, context=SILENT)
    (tmp_path / "zoo" / f"{paper}_cifar100.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="unreadable"):
        get_teacher(preset, TEACHER, data, ckpt_cfg, out=tmp_path, device=CPU, context=SILENT)
