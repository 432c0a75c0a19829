"""Tests of the distiller registry, plugin loading, the KD loss (golden values) and the Distiller base."""

import math
import sys
import textwrap
import uuid

import pytest
import torch

from distillers.base import Distiller, DistillOutput
from distillers.kd import KD, KDConfig
from distillers.losses import kd_loss
from kdbench.assembly import make_criterion
from kdbench.errors import UsageError
from kdbench.models import create_feature_model
from kdbench.registry import DISTILLERS, Registry, load_plugin


# ----------------------------------------------------------------------------- Registry

def test_registry_round_trip():
    reg = Registry("thing")

    @reg.register("alpha")
    class Alpha:
        pass

    def beta():
        return 1

    assert reg.register("beta")(beta) is beta
    assert reg.get("alpha") is Alpha and reg.get("beta") is beta
    assert Alpha.registry_name == "alpha" and beta.registry_name == "beta"
    assert reg.names() == ["alpha", "beta"]
    assert "alpha" in reg and "gamma" not in reg
    # registering the same object again is harmless
    assert reg.register("alpha")(Alpha) is Alpha
    assert reg.names() == ["alpha", "beta"]


def test_registry_duplicate_name_raises():
    reg = Registry("thing")
    reg.register("alpha")(type("A", (), {}))
    with pytest.raises(ValueError, match="alpha"):
        reg.register("alpha")(type("B", (), {}))


def test_registry_unknown_name():
    reg = Registry("thing")
    reg.register("temperature")(type("T", (), {}))
    reg.register("weight")(type("W", (), {}))
    with pytest.raises(UsageError) as err:
        reg.get("temprature")
    msg = str(err.value)
    assert "unknown thing 'temprature'" in msg
    assert "did you mean 'temperature'" in msg
    assert "weight" in msg


def test_registry_imports_builtins_lazily(tmp_path, monkeypatch):
    mod = f"kdbench_test_builtin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{mod}.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("thing", builtins=(mod,))
    assert mod not in sys.modules
    assert reg.names() == []
    assert mod in sys.modules


def test_builtin_distillers():
    names = DISTILLERS.names()
    assert {"kd", "vanilla"} <= set(names)
    assert DISTILLERS.get("kd") is KD
    assert issubclass(DISTILLERS.get("vanilla"), Distiller)
    assert DISTILLERS.get("vanilla").requires_teacher is False and KD.requires_teacher is True
    with pytest.raises(UsageError, match="did you mean 'kd'"):
        DISTILLERS.get("kdd")


# ----------------------------------------------------------------------------- plugins

PLUGIN = """
from dataclasses import dataclass

from distillers.base import Distiller, DistillOutput, TaskConfig
from kdbench.registry import register_distiller


@dataclass
class MyConfig(TaskConfig):
    scale: float = 2.0


@register_distiller("{name}")
class MyKD(Distiller):
    Config = MyConfig

    def forward(self, images, labels):
        logits = self.student.logits(images)
        return DistillOutput(logits, {{"gt": self.gt_loss(logits, labels)}})
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """(module, distiller name) of a fresh plugin module on sys.path (unique: the registry is global)."""
    tag = uuid.uuid4().hex[:8]
    module, name = f"kdbench_test_plugin_{tag}", f"mykd_{tag}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(PLUGIN.format(name=name)))
    monkeypatch.syspath_prepend(str(tmp_path))
    return module, name


def test_load_plugin_registers_distiller(plugin):
    module, name = plugin
    assert name not in DISTILLERS
    load_plugin(module)
    cls = DISTILLERS.get(name)
    assert issubclass(cls, Distiller) and cls.registry_name == name
    assert cls.Config().scale == 2.0
    assert name in DISTILLERS.names()
    load_plugin(module)          # loading twice is harmless
    assert DISTILLERS.get(name) is cls


def test_plugin_via_cli(plugin, capsys):
    import json

    from kdbench.cli import main
    module, name = plugin
    assert main(["list", "distillers", "--json", "--plugin", module]) == 0
    rows = {r["name"]: r["config"] for r in json.loads(capsys.readouterr().out)}
    assert rows[name] == {"gt_weight": 1.0, "scale": 2.0}
    assert rows["kd"] == {"gt_weight": 1.0, "kd_weight": 1.0, "temperature": 1.0,
                          "logit_standardization": False}


def test_load_plugin_missing_module():
    with pytest.raises(UsageError) as err:
        load_plugin("no_such_module_xyz")
    assert "no_such_module_xyz" in str(err.value)


def test_load_plugin_broken_module_is_usage_error(tmp_path, monkeypatch):
    module = f"kdbench_test_broken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text("raise RuntimeError('plugin is broken')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UsageError, match=module):
        load_plugin(module)


# ----------------------------------------------------------------------------- kd_loss golden values

def _kd_by_hand(student, teacher, t):
    """T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), mean over rows, in plain float64 Python."""
    def log_softmax(row):
        z = [v / t for v in row]
        m = max(z)
        lse = m + math.log(sum(math.exp(v - m) for v in z))
        return [v - lse for v in z]
    total = 0.0
    for zs, zt in zip(student, teacher):
        ls, lt = log_softmax(zs), log_softmax(zt)
        total += sum(math.exp(b) * (b - a) for a, b in zip(ls, lt))
    return t * t * total / len(student)


SMALL_S = [[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]]
SMALL_T = [[3.0, 2.0, 1.0], [1.0, 0.0, 0.0]]

# /work/shared/data/golden-losses.json: computed by the official OFA-KD loss in float64.
GOLDEN_S = [
    [-0.3678208589553833, 1.4592796564102173, 1.2483338117599487, 0.24506953358650208, -0.06288620084524155,
     -1.4820846319198608, -2.7148008346557617, -0.044002972543239594, -1.0900665521621704, 0.43865248560905457],
    [-2.9910104274749756, 0.6865354180335999, -0.3832879960536957, -1.8059637546539307, 1.9963352680206299,
     0.07212706655263901, 0.4875587522983551, 0.14640145003795624, 1.7997524738311768, -1.6106224060058594],
    [-1.0610382556915283, 3.157897472381592, 2.9021379947662354, -2.1589198112487793, -3.0412778854370117,
     0.48104003071784973, -0.8106325268745422, -0.21389849483966827, 0.7411929965019226, -1.160274624824524],
    [2.638676643371582, -3.9194400310516357, 2.238905429840088, -2.7601265907287598, -0.0901971384882927,
     -2.0244314670562744, 1.766904354095459, -0.03670800104737282, 0.0910189300775528, -0.611589252948761],
]
GOLDEN_T = [
    [1.1175028085708618, -3.6039512157440186, -4.648246765136719, 4.416279315948486, 1.2070338726043701,
     -7.273362159729004, 5.289897441864014, -2.273448944091797, 3.0072734355926514, -1.0572309494018555],
    [-1.6216371059417725, 1.6594916582107544, -0.9417123198509216, -1.3732476234436035, 1.913506269454956,
     1.8533709049224854, -0.7886394262313843, -3.7140073776245117, 1.2352514266967773, 1.718592882156372],
    [0.6396033763885498, 2.5059123039245605, 0.36739158630371094, -2.6086783409118652, -3.8599610328674316,
     -4.085894584655762, 2.088623523712158, -0.16329050064086914, 3.0122427940368652, 2.450975179672241],
    [3.7866387367248535, 0.18387800455093384, -3.3464131355285645, -0.27394023537635803, 3.4396872520446777,
     1.117037296295166, -1.9374144077301025, -0.20058941841125488, -4.235321044921875, -4.440704345703125],
]
GOLDEN_KD = {1: 1.7847718133495016, 4: 4.283835224261244}


@pytest.mark.parametrize("t", [1.0, 4.0])
def test_kd_loss_by_hand(t):
    expected = _kd_by_hand(SMALL_S, SMALL_T, t)
    got = kd_loss(torch.tensor(SMALL_S), torch.tensor(SMALL_T), t)
    assert got.ndim == 0
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert expected > 0


def test_kd_loss_properties():
    z = torch.tensor(GOLDEN_S)
    assert kd_loss(z, z, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    # invariant to a per-row shift of either side's logits
    shifted = kd_loss(z + 3.0, torch.tensor(GOLDEN_T) - 1.0, 2.0).item()
    assert shifted == pytest.approx(kd_loss(z, torch.tensor(GOLDEN_T), 2.0).item(), rel=1e-5)
    # low-precision logits are computed in float32
    half = kd_loss(z.bfloat16(), torch.tensor(GOLDEN_T).bfloat16(), 1.0)
    assert half.dtype == torch.float32


@pytest.mark.parametrize("t", [1, 4])
def test_kd_loss_golden_float32(t):
    assert _kd_by_hand(GOLDEN_S, GOLDEN_T, t) == pytest.approx(GOLDEN_KD[t], rel=1e-12)
    got = kd_loss(torch.tensor(GOLDEN_S), torch.tensor(GOLDEN_T), float(t)).item()
    assert got == pytest.approx(GOLDEN_KD[t], rel=1e-6)


@pytest.mark.parametrize("t", [1, 4])
def test_kd_loss_golden_float64(t):
    got = kd_loss(torch.tensor(GOLDEN_S, dtype=torch.float64), torch.tensor(GOLDEN_T, dtype=torch.float64),
                  float(t))
    assert got.dtype == torch.float64
    assert abs(got.item() - GOLDEN_KD[t]) <= 1e-9


# ----------------------------------------------------------------------------- Distiller base invariants

def _kd(student_name, teacher_name, **cfg):
    torch.manual_seed(0)
    student = create_feature_model(student_name, num_classes=10, in_chans=3, img_size=16)
    teacher = create_feature_model(teacher_name, num_classes=10, in_chans=3, img_size=16)
    return KD(student, teacher, KDConfig(**cfg), num_classes=10, criterion=make_criterion(0.0))


def _batch(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_kd_distiller_frozen_teacher_and_gradients():
    d = _kd("kdbench_resnet18_xs", "kdbench_vit_s_xs")
    assert d.train() is d
    assert d.training and d.student.training
    assert not d.teacher.training
    assert all(not m.training for m in d.teacher.modules())
    assert all(not p.requires_grad for p in d.teacher.parameters())
    assert all(p.requires_grad for p in d.student.parameters())
    assert d.num_extra_params == 0 and d.extra_named_parameters() == []
    assert d.num_student_params == sum(p.numel() for p in d.student.model.parameters())

    images, labels = _batch()
    out = d(images, labels)
    assert isinstance(out, DistillOutput)
    assert set(out.losses) == {"gt", "kd"} and out.logits.shape == (4, 10)
    with torch.no_grad():
        t_logits = d.teacher.logits(images)
    assert torch.allclose(out.losses["kd"], kd_loss(out.logits, t_logits, 1.0))
    assert torch.allclose(out.losses["gt"], torch.nn.functional.cross_entropy(out.logits, labels))
    sum(out.losses.values()).backward()
    for n, p in d.student.named_parameters():
        assert p.grad is not None, f"student parameter {n} got no gradient"
    assert any(p.grad.abs().sum() > 0 for p in d.student.parameters())
    assert all(p.grad is None for p in d.teacher.parameters())

    d.eval()
    d.train(True)
    assert not d.teacher.training and d.student.training


def test_kd_distiller_weights_and_temperature():
    d = _kd("kdbench_resnet18_xs", "kdbench_vit_s_xs", kd_weight=0.5, gt_weight=2.0, temperature=4.0).eval()
    images, labels = _batch(1)
    with torch.no_grad():
        out = d(images, labels)
        s, t = d.student.logits(images), d.teacher.logits(images)
    assert torch.allclose(out.losses["kd"], 0.5 * kd_loss(s, t, 4.0))
    assert torch.allclose(out.losses["gt"], 2.0 * torch.nn.functional.cross_entropy(s, labels))


def test_kd_distiller_teacher_batchnorm_untouched():
    d = _kd("kdbench_deit_t_xs", "kdbench_resnet18_xs")
    bn = {k: v.clone() for k, v in d.teacher.state_dict().items() if "running" in k or "num_batches" in k}
    assert bn
    teacher_params = {k: v.clone() for k, v in d.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in d.student.state_dict().items()}
    d.train()
    opt = torch.optim.SGD([p for p in d.parameters() if p.requires_grad], lr=0.1)
    for step in range(2):
        images, labels = _batch(step)
        out = d(images, labels)
        opt.zero_grad()
        sum(out.losses.values()).backward()
        opt.step()
    for k, v in d.teacher.state_dict().items():
        assert torch.equal(v, teacher_params[k]), f"teacher state {k} changed during training"
    # ... while the student did train
    assert any(not torch.equal(v, student_before[k]) for k, v in d.student.state_dict().items())
    state = d.trainable_state()
    assert state and not any(k.startswith("teacher.") for k in state)
    assert set(d.student_state()) == set(d.student.model.state_dict())
