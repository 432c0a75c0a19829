"""CRD (distillers/crd.py): the NCE loss on a hand-computed case, negatives from other classes only,
the normalisation constants fixed by the first batch, the bank's momentum update, and its memory cost."""

import json
import math

import pytest
import torch

from distillers.crd import CRDConfig, nce_loss
from kdbench.assembly import make_criterion
from kdbench.cli import main
from kdbench.config import load_preset
from kdbench.context import SILENT, RunContext
from kdbench.engine import Trainer
from kdbench.grid import expand_runs, resolve_pairs
from kdbench.models import create_feature_model
from kdbench.registry import DISTILLERS


def test_nce_loss_by_hand():
    """One sample, one negative, two training samples: P_n = 1/2, K P_n = 1/2. Scores 1.5 (positive) and
    0.5: -(log 1.5 / (1.5 + 0.5) + log 0.5 / (0.5 + 0.5)) = -(log 0.75 + log 0.5) = 0.98083."""
    scores = torch.tensor([[1.5, 0.5]], dtype=torch.float64)
    assert nce_loss(scores, 2).item() == pytest.approx(-(math.log(1.5 / 2.0000001) + math.log(0.5 / 1.0000001)), abs=1e-12)
    assert nce_loss(scores, 2).item() == pytest.approx(0.98083, abs=1e-5)
    # a batch is the mean over its samples of each sample's sum
    two = torch.tensor([[1.5, 0.5], [1.5, 0.5]], dtype=torch.float64)
    assert nce_loss(two, 2).item() == pytest.approx(nce_loss(scores, 2).item())


def make(num_negatives=64, n=40):
    torch.manual_seed(0)
    s = create_feature_model("kdbench_resnet18_xs", num_classes=4, in_chans=3, img_size=16)
    t = create_feature_model("kdbench_vit_s_xs", num_classes=4, in_chans=3, img_size=16)
    d = DISTILLERS.get("crd")(s, t, CRDConfig(num_negatives=num_negatives), num_classes=4,
                              criterion=make_criterion(0.0)).train()
    labels = torch.arange(n) % 4
    d.bind_training_set(labels)
    return d, labels


def test_negatives_come_from_every_other_class_and_never_the_samples_own():
    d, labels = make(num_negatives=4000)
    index = torch.tensor([0, 1, 5, 39])
    neg = d.negatives(index)
    assert neg.shape == (4, 4000)
    for row, i in zip(neg, index):
        assert not (labels[row] == labels[i]).any()
        assert set(row.tolist()) == {j for j in range(40) if labels[j] != labels[i]}    # all 30 others drawn
        counts = torch.bincount(row, minlength=40)[labels != labels[i]].float()
        assert counts.min() > 0.6 * counts.mean()                                     # about uniform


def test_constants_set_by_the_first_batch_and_the_bank_moves_by_momentum():
    d, _ = make()
    images, y, index = torch.randn(6, 3, 16, 16), torch.arange(6) % 4, torch.arange(6) * 3
    bank_s, bank_t = d.memory_s.clone(), d.memory_t.clone()
    assert torch.equal(d.z, torch.tensor([-1.0, -1.0]))
    d(images, y, index=index)
    z = d.z.clone()
    assert (z > 0).all()
    with torch.no_grad():
        _, fs = d.student.pooled(images)
        _, ft = d.teacher.pooled(images)
        f_s, f_t = d.embed_s(fs), d.embed_t(ft)
    want = torch.nn.functional.normalize(bank_s[index] * 0.5 + f_s * 0.5, dim=1)
    torch.testing.assert_close(d.memory_s[index], want)
    torch.testing.assert_close(d.memory_t[index], torch.nn.functional.normalize(bank_t[index] * 0.5 + f_t * 0.5, dim=1))
    others = torch.ones(40, dtype=torch.bool)
    others[index] = False
    assert torch.equal(d.memory_s[others], bank_s[others]) and torch.equal(d.memory_t[others], bank_t[others])
    d(images, y, index=index)
    assert torch.equal(d.z, z)                      # fixed after the first batch
    assert set(d.trainable_state()) >= {"memory_s", "memory_t", "z"}


def test_forward_without_the_index_says_what_is_missing():
    d, _ = make()
    with pytest.raises(RuntimeError, match="needs each sample's dataset index"):
        d(torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))


class Stop(Exception):
    pass


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path):
    """The bank, the constants and the negatives' RNG are training state: stopped after epoch 1 and
    resumed, the run ends with the same bank and top-1 as without the stop."""
    preset = load_preset("smoke")
    (run,) = expand_runs(preset, resolve_pairs("kdbench_vit_s_xs:kdbench_resnet18_xs", preset), ["crd"], [0],
                         data=preset.data, teacher_cfg=preset.teacher,
                         overrides={"recipe.epochs": 2})
    torch.manual_seed(123)
    teacher = create_feature_model(run.teacher, num_classes=10, in_chans=3, img_size=16)
    cpu = torch.device("cpu")
    full = Trainer(run, tmp_path / "full", device=cpu, teacher=teacher, context=SILENT).fit()

    def stop_after_first_epoch(msg):
        if "epoch 1/2" in msg:
            raise Stop
    with pytest.raises(Stop):
        Trainer(run, tmp_path / "cut", device=cpu, teacher=teacher, context=RunContext(sink=stop_after_first_epoch)).fit()
    resumed = Trainer(run, tmp_path / "cut", device=cpu, teacher=teacher, context=SILENT)
    assert resumed.distiller.memory_s.shape == (run.data.synthetic_train, 128)
    rec = resumed.fit()
    assert rec.top1 == full.top1 and rec.extra_params == full.extra_params
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["distiller"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["distiller"]
    assert all(torch.equal(a[k], b[k]) for k in ("memory_s", "memory_t", "z"))


def test_plan_states_the_banks_memory(capsys):
    """`kdbench plan` names the bank's size: 2 x N x 128 float32 (ImageNet's 1,281,167 images: 1,251 MB;
    the smoke set's 1,024: 1.0 MB)."""
    d, _ = make()
    assert d.training_state_bytes(1_281_167) / 2 ** 20 == pytest.approx(1251.1, abs=0.1)
    assert main(["plan", "--preset", "smoke", "--pairs", "kdbench_vit_s_xs:kdbench_resnet18_xs", "--distiller", "crd,kd",
                 "--json"]) == 0
    cells = {c["distiller"]: c for c in json.loads(capsys.readouterr().out)["cells"]}
    assert cells["crd"]["state_mb"] == 1.0 and cells["kd"]["state_mb"] == 0.0
    assert cells["crd"]["train_flops_per_img"] > cells["kd"]["train_flops_per_img"]
