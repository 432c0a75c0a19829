"""Released teacher checkpoints: every layout loads strictly and gives the saved model's logits; bad
files exit 2 with one line naming the file and the problem, and write nothing; the teacher is
compared with its published accuracy."""

import argparse
import dataclasses
import os
import pathlib

import pytest
import torch

from kdbench.context import RunContext, SILENT
from kdbench import checkpoints, teachers
from kdbench.cli import main
from kdbench.teachers import teacher_table
from kdbench.config import load_preset
from kdbench.errors import UsageError
from kdbench.models import create_model
from kdbench.official_files import timm_checkpoint
from kdbench.teachers import get_teacher, published_check

CPU = torch.device("cpu")
TEACHER, PAPER = "kdbench_resnet18_xs", "resnet18"      # the smoke preset's member for resnet18
STUDENT = "mobilenetv2_100"


def _model(seed=0, num_classes=10, arch=TEACHER):
    torch.manual_seed(seed)
    model = create_model(arch, num_classes=num_classes, in_chans=3, img_size=16)
    with torch.no_grad():        # BatchNorm statistics that differ from the defaults
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _setup(tmp_path, **tcfg):
    preset = load_preset("smoke")
    data = dataclasses.replace(preset.data, synthetic_train=128, synthetic_test=32)
    cfg = dataclasses.replace(preset.teacher, source="checkpoint", checkpoint_dir=str(tmp_path / "zoo"),
                              min_top1=0.0, **tcfg)
    (tmp_path / "zoo").mkdir(exist_ok=True)
    return preset, data, cfg


def _save_layout(layout, path, model, ema):
    if layout == "safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        return
    obj = {"bare": lambda: model.state_dict(),
           "state_dict": lambda: {"state_dict": model.state_dict()},
           "model": lambda: {"model": model.state_dict(), "epoch": 3},
           "timm-saver": lambda: timm_checkpoint(model, ema=ema),
           "timm-saver-ddp": lambda: timm_checkpoint(model, ema=ema, prefix="module."),
           "model_ema": lambda: {"model": model.state_dict(), "model_ema": ema.state_dict()},
           "dataparallel-bare": lambda: {f"module.{k}": v for k, v in model.state_dict().items()}}[layout]()
    torch.save(obj, path)


LAYOUTS = ["bare", "state_dict", "model", "timm-saver", "timm-saver-ddp", "model_ema", "dataparallel-bare",
           "safetensors"]


@pytest.mark.parametrize("use_ema", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_strictly_with_the_saved_logits(tmp_path, layout, use_ema):
    model, ema = _model(0), _model(1)
    suffix = ".safetensors" if layout == "safetensors" else ".pth"
    preset, data, tcfg = _setup(tmp_path, use_ema=use_ema, files={PAPER: f"teacher{suffix}"})
    _save_layout(layout, tmp_path / "zoo" / f"teacher{suffix}", model, ema)
    fm, manifest = get_teacher(preset, TEACHER, data, tcfg, out=tmp_path / "out", device=CPU, context=SILENT)
    has_ema = layout in ("timm-saver", "timm-saver-ddp", "model_ema")
    expected = ema if use_ema and has_ema else model
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert (fm.logits(x) - expected(x)).abs().max().item() <= 1e-5
    plain = {"bare": "file", "dataparallel-bare": "file", "safetensors": "file", "model": "model",
             "model_ema": "model"}.get(layout, "state_dict")
    assert manifest.weights == ({"model_ema": "model_ema"}.get(layout, "state_dict_ema")
                                   if use_ema and has_ema else plain)
    assert 0 <= manifest.top1 <= 100 and len(manifest.sha256) == 64


def test_timm_saver_file_needs_the_namespace_allow_list(tmp_path):
    """The file really holds an argparse.Namespace: plain weights_only loading refuses it."""
    path = tmp_path / "t.pth"
    torch.save(timm_checkpoint(_model()), path)
    with pytest.raises(Exception, match="Namespace|Unsupported global"):
        torch.load(path, weights_only=True)
    state, source = checkpoints.read_weights(path)
    assert source == "state_dict" and set(state) == set(_model().state_dict())


class _Payload:
    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(os.environ["KDBENCH_TEST_MARK"]),))


def _bad_file(case, path, tmp_path, monkeypatch):
    good = _model().state_dict()
    if case == "other-architecture":
        torch.save({"state_dict": _model(arch="kdbench_mobilenetv2_xs").state_dict()}, path)
    elif case == "other-class-count":
        torch.save(timm_checkpoint(_model(num_classes=100)), path)
    elif case == "truncated":
        torch.save(timm_checkpoint(_model()), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif case == "code-payload":
        monkeypatch.setenv("KDBENCH_TEST_MARK", str(tmp_path / "code-ran"))
        torch.save({"state_dict": good, "extra": _Payload()}, path)
    elif case == "unknown-global":
        ckpt = timm_checkpoint(_model())
        ckpt["args"].output = pathlib.PurePosixPath("/runs/teacher")     # an object no allow-list holds
        torch.save(ckpt, path)
    elif case == "no-state-dict":
        torch.save({"epoch": 3, "metric": 80.0}, path)


@pytest.mark.parametrize("case,needle", [
    ("other-architecture", "does not fit kdbench_resnet18_xs with 10 classes"),
    ("other-class-count", "does not fit kdbench_resnet18_xs with 10 classes"),
    ("truncated", "unreadable: not a complete torch checkpoint"),
    ("code-payload", "unreadable: it needs the global 'pathlib"),
    ("unknown-global", "unreadable: it needs the global 'pathlib.PurePosixPath'"),
    ("no-state-dict", "has no state dict"),
    ("missing", "not found")])
def test_bad_teacher_files_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, monkeypatch, case, needle):
    path = tmp_path / "zoo" / f"{PAPER}_cifar100.pth"
    path.parent.mkdir()
    _bad_file(case, path, tmp_path, monkeypatch)
    out = tmp_path / "out"
    code = main(["teach", "--preset", "smoke", "--pairs", f"{PAPER}:{STUDENT}", "--out", str(out), "--device", "cpu",
                 "--set", "teacher.source=checkpoint", "--set", f"teacher.checkpoint_dir={path.parent}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("kdbench: error: teacher checkpoint") and str(path) in err[0], err
    assert needle in err[0]
    assert not out.exists()                          # nothing written
    assert not (tmp_path / "code-ran").exists()      # the payload never ran


def test_published_teacher_accuracy_check():
    far = published_check("cifar100", "convnext_tiny", "convnext_tiny", 85.0)
    assert far["published_top1"] == 88.41 and far["published_gap"] == -3.41
    assert "3.41 points below the published 88.41%" in far["warning"]
    near = published_check("cifar100", "swin_tiny_patch4_window7_224", "swin_tiny_patch4_window7_224", 89.9)
    assert near["published_gap"] == 0.64 and near["warning"] is None
    assert published_check("imagenet", "resnet50", "resnet50", 80.0)["published_top1"] == 80.38
    assert published_check("cifar100", "convnext_tiny", "kdbench_convnext_t_s", 50.0) == {}   # a scaled member
    assert published_check("fashion-mnist", "convnext_tiny", "convnext_tiny", 50.0) == {}


def test_teacher_far_from_its_paper_warns_loudly_and_is_cached_by_sha256(tmp_path, monkeypatch):
    real = teachers.published_data()
    monkeypatch.setattr(teachers, "published_data", lambda: {**real, "synthetic": {
        "teachers": {TEACHER: {"top1": 99.5, "src": "V"}}}})
    preset, data, tcfg = _setup(tmp_path)
    preset = dataclasses.replace(preset, models={**preset.models, TEACHER: TEACHER})
    torch.save(timm_checkpoint(_model()), tmp_path / "zoo" / f"{TEACHER}_cifar100.pth")
    logs = []
    fm, manifest = get_teacher(preset, TEACHER, data, tcfg, out=tmp_path / "out", device=CPU, context=RunContext(sink=logs.append))
    assert manifest.published_top1 == 99.5 and manifest.published_gap < -1.0
    assert "points below the published 99.50% (V)" in manifest.warning
    assert any(s.startswith("WARNING: teacher") for s in logs) and any("evaluating" in s for s in logs)
    table = teacher_table([manifest])
    assert "WARNING: kdbench_resnet18_xs" in table and "99.50 V" in table
    logs.clear()
    _, again = get_teacher(preset, TEACHER, data, tcfg, out=tmp_path / "out", device=CPU, context=RunContext(sink=logs.append))
    assert again == manifest and not any("evaluating" in s for s in logs)      # evaluated once per file
    assert any(s.startswith("WARNING") for s in logs)                          # and still warned


def test_read_weights_rejects_non_dict_files(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(UsageError, match="holds a list, not a state dict"):
        checkpoints.read_weights(path)
    ns = tmp_path / "ns.pth"
    torch.save({"args": argparse.Namespace(a=1), "state_dict": {"w": torch.ones(2)}}, ns)
    assert checkpoints.read_weights(ns)[0]["w"].tolist() == [1.0, 1.0]
