"""The `coco` preset's path on files the tests write: a detectron2-format teacher checkpoint given
exactly the inputs it was trained on (BGR, 0-255, minus PIXEL_MEAN), students from ImageNet weights
with frozen BatchNorm, detectron2's multi-step schedule, and the whole preset dry-run and taught."""

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file
from torchvision.ops.misc import FrozenBatchNorm2d

from kdbench.cli import main
from kdbench.config import RecipeConfig, TeacherConfig, load_preset
from kdbench.detection.detectron2_keys import to_detectron2_state_dict
from kdbench.detection.model import build_detector
from kdbench.detection.released import load_released_detector, teacher_input
from kdbench.dry_run import dry_run_dir
from kdbench.engine import lr_at
from kdbench.errors import UsageError
from kdbench.grid import expand_runs, resolve_pairs
from kdbench.models import create_model
from kdbench.student_init import load_student_init
from tests.test_detection_stream import write_coco2017

K, SIZE = 5, 64
SMALL = dict(fpn_channels=32, representation_size=64)
PAT_BGR = dict(pixel_format="BGR", pixel_mean=(103.53, 116.28, 123.675), pixel_std=(1.0, 1.0, 1.0))


# ----------------------------------------------------------------------------- schedule and preset

def test_multistep_schedule_decays_at_its_fractions():
    r = RecipeConfig(lr=0.01, warmup_epochs=0, schedule="multistep", milestones=(2 / 3, 8 / 9), step_gamma=0.1)
    total = 180_000
    assert lr_at(0, total, 0, r) == pytest.approx(0.01)
    assert lr_at(119_999, total, 0, r) == pytest.approx(0.01)
    assert lr_at(120_000, total, 0, r) == pytest.approx(0.001)
    assert lr_at(160_000, total, 0, r) == pytest.approx(0.0001)
    with pytest.raises(ValueError, match="milestones"):
        RecipeConfig(schedule="multistep")
    with pytest.raises(ValueError, match="milestones"):
        RecipeConfig(milestones=(0.5,))


def test_coco_preset_is_pats_protocol():
    preset = load_preset("coco")
    assert preset.task == "detection" and preset.data.dataset == "coco"
    assert (preset.data.img_size, preset.data.resize_short) == (1120, 800)
    assert preset.cnn.batch_size == 8 and preset.cnn.lr == 0.01 and preset.cnn.schedule == "multistep"
    iters = preset.cnn.epochs * 118_287 / preset.cnn.batch_size
    assert iters == pytest.approx(180_000, rel=0.02)                       # PAT's MAX_ITER
    assert preset.cnn.warmup_epochs * 118_287 / 8 == pytest.approx(1000, rel=0.01)
    assert preset.detector.freeze_bn and preset.detector.rpn_post_nms_top_n_train == 1000
    assert preset.teacher.source == "checkpoint" and preset.teacher.pixel_format == "BGR"
    runs = expand_runs(preset, resolve_pairs("det", preset), ["kd", "pat"], [0], data=preset.data,
                       teacher_cfg=preset.teacher, overrides={})
    assert {r.student for r in runs} == {"resnet18", "mobilenetv2_100"}
    assert all(r.student_init.source == "checkpoint" for r in runs)
    scratch = dataclasses.replace(runs[0], student_init=dataclasses.replace(runs[0].student_init, source="scratch"))
    assert scratch.hash() != runs[0].hash()


# ----------------------------------------------------------------------------- released teacher

def test_teacher_input_statistics_are_exact():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 8, 8, generator=g)                    # RGB in [0, 1]
    m, s = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    conv = teacher_input((m, s), **PAT_BGR)
    x_n = (x - torch.tensor(m)[:, None, None]) / torch.tensor(s)[:, None, None]
    seen = (x_n - torch.tensor(conv["image_mean"])[:, None, None]) / torch.tensor(conv["image_std"])[:, None, None]
    bgr = (255 * x.flip(0) - torch.tensor(PAT_BGR["pixel_mean"])[:, None, None]) / 1.0
    torch.testing.assert_close(seen, bgr.flip(0), rtol=0, atol=1e-4)      # what detectron2 fed, in RGB order
    assert teacher_input((m, s), "RGB", (), ()) is None
    one = teacher_input(((0.5,), (0.25,)), **PAT_BGR)                      # one statistic for all channels
    assert len(one["image_mean"]) == 3


def _d2_teacher(seed=1):
    """A detector as detectron2 trained it: BGR 0-255 inputs minus PIXEL_MEAN, so identity normalisation
    here, fed those inputs by hand; and its checkpoint in detectron2's layout."""
    torch.manual_seed(seed)
    det = build_detector("kdbench_swin_t_xs", num_classes=K, img_size=SIZE, stage_norms=True, **SMALL).eval()
    with torch.no_grad():
        for p in det.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return det, {"model": to_detectron2_state_dict(det.state_dict()), "__author__": "test"}


def test_detectron2_teacher_sees_what_it_was_trained_on(tmp_path):
    original, ckpt = _d2_teacher()
    torch.save(ckpt, tmp_path / "teacher.pth")
    m, s = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)
    tcfg = TeacherConfig(source="checkpoint", **PAT_BGR)

    def build(name, **extra):
        return build_detector(name, num_classes=K, img_size=SIZE, **{**SMALL, **extra})
    loaded = load_released_detector(build, "kdbench_swin_t_xs", torch.load(tmp_path / "teacher.pth"),
                                    tmp_path / "teacher.pth", student_stats=(m, s), tcfg=tcfg).eval()
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    x_n = (x - torch.tensor(m)[:, None, None]) / torch.tensor(s)[:, None, None]
    d2_input = 255 * x.flip(1) - torch.tensor(PAT_BGR["pixel_mean"])[:, None, None]
    with torch.no_grad():
        _, want, _ = original.forward_features(d2_input)
        _, got, _ = loaded.forward_features(x_n)
    for level in want:
        torch.testing.assert_close(got[level], want[level], rtol=1e-4, atol=1e-3)
    with pytest.raises(UsageError, match="does not fit"):
        load_released_detector(lambda n, **e: build_detector("kdbench_resnet18_xs", num_classes=K, img_size=SIZE,
                                                             **SMALL), "kdbench_resnet18_xs", original.state_dict(),
                               "x.pth", student_stats=(m, s), tcfg=TeacherConfig())


# ----------------------------------------------------------------------------- students

def test_student_backbone_starts_from_imagenet_weights_with_frozen_bn(tmp_path):
    torch.manual_seed(7)
    imagenet = create_model("kdbench_resnet18_xs", num_classes=1000, in_chans=3, img_size=SIZE)
    with torch.no_grad():
        for name, b in imagenet.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    save_file({k: v.contiguous() for k, v in imagenet.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    det = build_detector("kdbench_resnet18_xs", num_classes=K, img_size=SIZE, freeze_bn=True, **SMALL)
    backbone = det.feature_model.model
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    loaded = load_student_init(backbone, tmp_path / "r18.safetensors")
    want = imagenet.state_dict()
    for k, v in backbone.state_dict().items():
        torch.testing.assert_close(v, want[k], rtol=0, atol=0)
    assert loaded == len([k for k in want if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]) \
        or loaded == len([k for k in want if not k.startswith("fc.")])
    assert not any(p.requires_grad for m in backbone.modules() if isinstance(m, FrozenBatchNorm2d)
                   for p in m.parameters(recurse=False))
    other = create_model("kdbench_mobilenetv2_xs", num_classes=1000, in_chans=3, img_size=SIZE)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "mv2.safetensors"))
    with pytest.raises(UsageError, match="does not fit"):
        load_student_init(backbone, tmp_path / "mv2.safetensors")


# ----------------------------------------------------------------------------- the preset end to end

@pytest.fixture
def zoo(tmp_path):
    """COCO 2017 in the official layout, PAT's Swin-T teacher in detectron2's layout, ImageNet students."""
    write_coco2017(tmp_path / "coco", sizes=((200, 260), (240, 180), (224, 224), (160, 220)))
    torch.manual_seed(0)
    teacher = build_detector("swin_tiny_patch4_window7_224", num_classes=2, img_size=224, stage_norms=True)
    (tmp_path / "teachers").mkdir()
    torch.save({"model": to_detectron2_state_dict(teacher.state_dict())},
               tmp_path / "teachers" / "faster_rcnn_swint_T.pth")
    (tmp_path / "students").mkdir()
    r18 = create_model("resnet18", num_classes=1000, in_chans=3, img_size=224)
    save_file(dict(r18.state_dict()), str(tmp_path / "students" / "resnet18.tv_in1k.safetensors"))
    return SimpleNamespace(root=tmp_path, sets=["--data-root", str(tmp_path / "coco"), "--device", "cpu",
                                                "--set", "data.img_size=224", "--set", "data.resize_short=200",
                                                "--set", "data.workers=0", "--set", "recipe.batch_size=2",
                                                "--set", "recipe.eval_batch_size=2",
                                                "--set", "teacher.vit_mlp.batch_size=2",
                                                "--set", "teacher.vit_mlp.eval_batch_size=2",
                                                "--set", f"teacher.checkpoint_dir={tmp_path / 'teachers'}",
                                                "--set", f"student.checkpoint_dir={tmp_path / 'students'}"])


@pytest.mark.slow
def test_coco_preset_dry_runs_and_teaches(zoo, capsys):
    out = zoo.root / "runs"
    pair = "swin_tiny_patch4_window7_224:resnet18"
    code = main(["run", "--dry-run", "--preset", "coco", "--distiller", "kd,pat", "--pairs", pair,
                 "--dry-steps", "1", "--out", str(out), *zoo.sets])
    assert code == 0, capsys.readouterr().err
    rows = json.loads((dry_run_dir(out, "coco") / "summary.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["done", "done"]
    assert all(r["teacher_note"] == "loaded, not evaluated (dry run)" for r in rows)
    assert all(r["num_train"] == 118287 and r["epochs"] == 12 for r in rows)
    (zoo.root / "students" / "resnet18.tv_in1k.safetensors").rename(zoo.root / "elsewhere.safetensors")
    code = main(["teach", "--preset", "coco", "--pairs", pair, "--out", str(out), *zoo.sets])   # needs no students
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "teachers" / "coco" / "swin_tiny_patch4_window7_224" / "manifest.json").read_text())
    assert manifest["source"] == "checkpoint" and manifest["metric"] == "map"
    assert 0.0 <= manifest["top1"] <= 100.0 and manifest["dataset"] == "coco"
    capsys.readouterr()
    # a student file that is not there: one line, exit 2
    code = main(["run", "--dry-run", "--preset", "coco", "--distiller", "kd", "--pairs",
                 "swin_tiny_patch4_window7_224:mobilenetv2_100", "--dry-steps", "1", "--out", str(out), *zoo.sets])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "mobilenetv2_100.ra_in1k.safetensors" in err[0], err
    assert not (dry_run_dir(out, "coco") / "swin_tiny_patch4_window7_224__mobilenetv2_100").exists()
