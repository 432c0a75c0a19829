"""The conformance suite: every registered distiller, for every task it declares, keeps the base
class's promises. Parametrised over the registry at collection time (like timm's model tests), so a
new registration is tested without an edit here; a plugin registered at run time is checked by the
same functions (`test_a_plugin_distiller_is_checked_without_editing_the_suite`).

Promises: the teacher stays frozen and in eval mode through training steps, its state unchanged;
gradients reach the student and every extra parameter, never the teacher; `num_extra_params` is the
count of trainable parameters outside the student; the trainable state round-trips and one step
resumes exactly; losses are finite on every layout pair (map/token teacher x map/token student);
configs refuse bad numbers with one line; `--set distiller.NAME.FIELD` reaches the config."""

import copy
import dataclasses
import math
import sys
import textwrap

import pytest
import torch

from kdbench.config import load_preset, parse_overrides
from kdbench.detection.model import build_detector
from kdbench.assembly import make_criterion
from kdbench.errors import UsageError
from kdbench.grid import distiller_config
from kdbench.models import create_feature_model
from kdbench.registry import DISTILLERS, TASKS, load_plugin

pytestmark = pytest.mark.timeout(120)

# classification: one smoke-member pair per layout (teacher -> student)
LAYOUTS = {"tokens->map": ("kdbench_vit_s_xs", "kdbench_resnet18_xs"),
           "map->tokens": ("kdbench_convnext_t_xs", "kdbench_deit_t_xs"),
           "tokens->tokens": ("kdbench_mixer_b_xs", "kdbench_swin_p_xs"),
           "map->map": ("kdbench_resnet50_xs", "kdbench_mobilenetv2_xs")}
PRESETS = {"classification": "smoke", "detection": "det-smoke"}
DETECTOR = dict(fpn_channels=16, representation_size=32, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=60,
                rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=60, rpn_batch_size_per_image=64,
                box_batch_size_per_image=32)
TEACHER_SEED = 100
TRAIN_SET = 64          # samples of the training set that methods indexing samples (CRD) are bound to


def registered_cells():
    """(name, task) of every registration, in registry order."""
    return [(name, task) for task in TASKS for name in DISTILLERS.names(task)]


CELLS = registered_cells()
# Detection cells build two Faster R-CNNs each: the slow tier (the fast tier stays within its 4 minutes)
TIERED = [pytest.param(n, t, marks=pytest.mark.slow) if t == "detection" else (n, t) for n, t in CELLS]


# ----------------------------------------------------------------------------- building blocks

def preset_config(name, task, **cfg):
    """The method's config at the task's smoke preset (its scaled defaults), plus `cfg`."""
    cls = DISTILLERS.get(name, task)
    return cls.Config(**{**load_preset(PRESETS[task]).distillers.get(name, {}), **cfg})


def build(name, task, *, layout="tokens->map", seed=0, **cfg):
    """A fresh distiller: the student from `seed`, the teacher always from TEACHER_SEED."""
    cls = DISTILLERS.get(name, task)
    if task == "classification":
        teacher_name, student_name = LAYOUTS[layout]
        torch.manual_seed(seed)
        student = create_feature_model(student_name, num_classes=10, in_chans=3, img_size=16)
        torch.manual_seed(TEACHER_SEED)
        teacher = create_feature_model(teacher_name, num_classes=10, in_chans=3, img_size=16)
    else:
        torch.manual_seed(seed)
        student = build_detector("kdbench_resnet18_xs", num_classes=4, img_size=64, **DETECTOR)
        torch.manual_seed(TEACHER_SEED)
        teacher = build_detector("kdbench_swin_t_xs", num_classes=4, img_size=64, **DETECTOR)
    d = cls(student, teacher if cls.requires_teacher else None, preset_config(name, task, **cfg),
            num_classes=10 if task == "classification" else 4, criterion=make_criterion(0.1))
    if d.needs_sample_index:                         # a training set of TRAIN_SET samples, 10 classes
        d.bind_training_set(torch.arange(TRAIN_SET) % 10)
    return d


def batch(task, seed=0):
    g = torch.Generator().manual_seed(seed)
    if task == "classification":
        return torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 10, (4,), generator=g)
    images = torch.randn(2, 3, 64, 64, generator=g)
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 18.0, 60.0, 50.0]]), "labels": torch.tensor([1, 3])},
               {"boxes": torch.tensor([[10.0, 10.0, 26.0, 22.0]]), "labels": torch.tensor([4])}]
    return images, targets


def same(a, b) -> bool:
    """Exact equality of (nested) states: tensors bit for bit, containers item by item."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def optimizer(d):
    return torch.optim.SGD([p for p in d.parameters() if p.requires_grad], lr=0.01, momentum=0.9)


def forward(d, data, seed=0):
    """The distiller on a batch, with each sample's dataset index where the method takes it."""
    if d.needs_sample_index:
        return d(*data, index=(torch.arange(len(data[0])) + 4 * seed) % TRAIN_SET)
    return d(*data)


def step(d, data, opt, seed=0):
    """One training step as the engine takes it (idle parameters' gradients cleared)."""
    out = forward(d, data, seed)
    opt.zero_grad(set_to_none=True)
    sum(out.losses.values()).backward()
    for p in d.idle_parameters(data[0].shape[0]):
        p.grad = None
    opt.step()
    return out


# ----------------------------------------------------------------------------- the checks

def check_training_invariants(name, task):
    d = build(name, task).train()
    teacher_state = {k: v.clone() for k, v in d.teacher.state_dict().items()} if d.teacher is not None else {}
    opt = optimizer(d)
    for k in range(2):                      # methods with feedback (PAT) use every module from step 2
        out = step(d, batch(task, k), opt, k)
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.losses.values()), out.losses
    if d.teacher is not None:
        assert not any(m.training for m in d.teacher.modules()), "teacher left in train mode"
        assert not any(p.requires_grad or p.grad is not None for p in d.teacher.parameters())
        changed = [k for k, v in d.teacher.state_dict().items() if not torch.equal(v, teacher_state[k])]
        assert not changed, f"teacher state changed: {changed[:3]}"
    idle = {id(p) for p in d.idle_parameters(batch(task)[0].shape[0])}
    missing = [n for n, p in d.extra_named_parameters() if id(p) not in idle and p.grad is None]
    assert not missing, f"extra parameters without a gradient: {missing[:5]}"
    student = list(d.student.parameters())
    if task == "classification":
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student)
    else:                                   # a detector may leave its backbone's classifier norm unused
        assert student[0].grad is not None and student[0].grad.abs().sum() > 0
    outside = sum(p.numel() for n, p in d.named_parameters() if p.requires_grad and not n.startswith("student."))
    assert d.num_extra_params == outside


def check_exact_resume(name, task):
    d = build(name, task).train()
    opt = optimizer(d)
    step(d, batch(task, 0), opt, 0)
    state, opt_state = copy.deepcopy(d.trainable_state()), copy.deepcopy(opt.state_dict())
    twin = build(name, task, seed=1).train()
    twin.load_trainable_state(state)
    assert same(twin.trainable_state(), state)
    twin_opt = optimizer(twin)
    twin_opt.load_state_dict(opt_state)
    outs = []
    for model, o in ((d, opt), (twin, twin_opt)):
        torch.manual_seed(7)
        outs.append(step(model, batch(task, 1), o, 1))
    assert {k: v.item() for k, v in outs[0].losses.items()} == {k: v.item() for k, v in outs[1].losses.items()}
    assert same(d.trainable_state(), twin.trainable_state())


def check_config_refuses_bad_numbers(name, task):
    cls = DISTILLERS.get(name, task)
    numbers = [f for f in dataclasses.fields(cls.Config)
               if isinstance(getattr(cls.Config(), f.name), (int, float)) and not isinstance(getattr(cls.Config(), f.name), bool)]
    assert any(f.name == "gt_weight" for f in numbers)
    for f in numbers:
        bad = [float("nan")] + ([-1.0] if f.name.endswith("weight") or f.name == "temperature" else [])
        for value in bad:
            with pytest.raises(ValueError) as err:
                cls.Config(**{f.name: value})
            assert "\n" not in str(err.value) and f"distiller.{f.name}" in str(err.value)
    preset = load_preset(PRESETS[task])
    with pytest.raises(UsageError) as err:
        distiller_config(name, preset, parse_overrides([f"distiller.{name}.gt_weight=-1"]), [name])
    assert "\n" not in str(err.value) and "gt_weight" in str(err.value)


def _accepted_change(cls, f):
    """A value of field `f`, other than its default, that the config accepts; None if none is tried."""
    default = getattr(cls.Config(), f.name)
    if isinstance(default, bool):
        candidates = [not default]
    elif isinstance(default, (int, float)):
        candidates = [default * 2, default + 1, default / 2, default - 1, 1, 0]
        candidates = [type(default)(c) for c in candidates if type(default)(c) == c]
    else:
        return None
    for value in candidates:
        if value == default:
            continue
        try:
            cls.Config(**{f.name: value})
            return value
        except ValueError:
            continue
    return None


def check_set_reaches_the_config(name, task):
    cls = DISTILLERS.get(name, task)
    preset = load_preset(PRESETS[task])
    routed = 0
    for f in dataclasses.fields(cls.Config):
        value = _accepted_change(cls, f)
        if value is None:
            continue
        overrides = parse_overrides([f"distiller.{name}.{f.name}={str(value).lower()}"])
        cfg = distiller_config(name, preset, overrides, [name])
        assert getattr(cfg, f.name) == value and type(getattr(cfg, f.name)) is type(value), f.name
        routed += 1
    assert routed >= 1


CHECKS = (check_training_invariants, check_exact_resume, check_config_refuses_bad_numbers,
          check_set_reaches_the_config)


# ----------------------------------------------------------------------------- the tests

def test_every_task_has_a_builder_and_every_registration_a_cell():
    assert set(TASKS) == set(PRESETS)
    built_in = {(n, t) for n, t in registered_cells() if DISTILLERS.get(n, t).__module__.startswith("distillers.")}
    assert len(built_in) >= 19 and built_in <= set(CELLS) and len(CELLS) == len(set(CELLS))
    for name, task in CELLS:
        assert DISTILLERS.get(name, task).registry_name == name


@pytest.mark.parametrize("name,task", TIERED)
def test_training_invariants(name, task):
    check_training_invariants(name, task)


@pytest.mark.slow
@pytest.mark.parametrize("name,task", CELLS)
def test_exact_resume_of_one_step(name, task):
    check_exact_resume(name, task)


@pytest.mark.parametrize("name,task", CELLS)
def test_config_refuses_bad_numbers_with_one_line(name, task):
    check_config_refuses_bad_numbers(name, task)


@pytest.mark.parametrize("name,task", CELLS)
def test_set_reaches_the_config(name, task):
    check_set_reaches_the_config(name, task)


@pytest.mark.slow
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("name", DISTILLERS.names("classification"))
def test_finite_losses_on_every_layout(name, layout):
    d = build(name, "classification", layout=layout).train()
    for k in range(2):
        out = forward(d, batch("classification", k), k)
        assert out.logits.shape == (4, 10)
        assert all(v.ndim == 0 and torch.isfinite(v) for v in out.losses.values()), (layout, out.losses)


def test_a_plugin_distiller_is_checked_without_editing_the_suite(tmp_path, monkeypatch):
    (tmp_path / "conformance_plugin.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        import torch
        from distillers.base import Distiller, DistillOutput, TaskConfig
        from distillers.losses import kd_loss
        from kdbench.registry import register_distiller

        @dataclass
        class HeadKDConfig(TaskConfig):
            kd_weight: float = 1.0
            temperature: float = 2.0

        @register_distiller("conformance-plugin")
        class HeadKD(Distiller):
            """KD through a trainable linear map of the teacher's logits: an extra parameter."""
            Config = HeadKDConfig

            def __init__(self, student, teacher, cfg, **kwargs):
                super().__init__(student, teacher, cfg, **kwargs)
                self.map = torch.nn.Linear(self.num_classes, self.num_classes)

            def forward(self, images, labels):
                logits = self.student.logits(images)
                target = self.map(self.teacher_logits(images))
                return DistillOutput(logits, {"gt": self.gt_loss(logits, labels),
                                              "kd": self.cfg.kd_weight * kd_loss(logits, target, self.cfg.temperature)})
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(DISTILLERS, "_items", dict(DISTILLERS._items))
    monkeypatch.setattr(DISTILLERS, "_by_task", {t: dict(v) for t, v in DISTILLERS._by_task.items()})
    monkeypatch.delitem(sys.modules, "conformance_plugin", raising=False)
    load_plugin("conformance_plugin")
    assert ("conformance-plugin", "classification") in registered_cells()
    for check in CHECKS:
        check("conformance-plugin", "classification")
    assert math.isclose(build("conformance-plugin", "classification").num_extra_params, 10 * 10 + 10)
