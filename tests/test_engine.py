"""The training loop: schedule, parameter groups, resume, determinism, non-finite losses."""

import dataclasses
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distillers.base import Distiller, DistillOutput, TaskConfig
from kdbench.context import RunContext, SILENT
from kdbench.config import RecipeConfig, RunConfig, TeacherConfig, load_preset
from kdbench.assembly import make_criterion
from kdbench.engine import Interrupted, NonFiniteLoss, Trainer, lr_at, param_groups
from kdbench.models import create_feature_model
from kdbench.registry import register_distiller

CPU = torch.device("cpu")


def smoke_run(distiller="vanilla", student="kdbench_resnet18_xs", seed=0, **recipe):
    preset = load_preset("smoke")
    data = dataclasses.replace(preset.data, synthetic_train=256, synthetic_test=64)
    r = dataclasses.replace(preset.cnn, **{"epochs": 2, "batch_size": 32, "eval_batch_size": 64, **recipe})
    return RunConfig(preset="smoke", teacher=student, student=student, seed=seed, distiller=distiller,
                     distiller_config=TaskConfig(), recipe=r, data=data, teacher_config=TeacherConfig())


def test_lr_schedule_warmup_then_cosine():
    r = RecipeConfig(lr=0.1, warmup_lr=0.0, min_lr=0.001, warmup_epochs=1)
    assert lr_at(0, 100, 10, r) == 0.0
    assert lr_at(5, 100, 10, r) == pytest.approx(0.05)
    assert lr_at(10, 100, 10, r) == pytest.approx(0.1)
    assert lr_at(55, 100, 10, r) == pytest.approx(0.001 + 0.5 * 0.099)
    assert lr_at(100, 100, 10, r) == pytest.approx(0.001)


def test_step_schedule():
    r = RecipeConfig(lr=0.1, schedule="step", step_epochs=30, step_gamma=0.1, epochs=100)
    assert lr_at(0, 1000, 0, r) == pytest.approx(0.1)
    assert lr_at(299, 1000, 0, r) == pytest.approx(0.1)
    assert lr_at(300, 1000, 0, r) == pytest.approx(0.01)
    assert lr_at(650, 1000, 0, r) == pytest.approx(0.001)


def test_criterion_label_smoothing_and_soft_targets():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    logp = torch.log_softmax(logits, 1)[0]
    hard = make_criterion(0.3)(logits, torch.tensor([0]))
    assert hard.item() == pytest.approx(-(0.8 * logp[0] + 0.1 * logp[1] + 0.1 * logp[2]).item(), rel=1e-6)
    soft = make_criterion(0.0)(logits, torch.tensor([[0.5, 0.5, 0.0]]))
    assert soft.item() == pytest.approx(-(0.5 * logp[0] + 0.5 * logp[1]).item(), rel=1e-6)


def test_no_weight_decay_on_1d_and_vit_tokens():
    student = create_feature_model("kdbench_deit_t_xs", num_classes=10, in_chans=3, img_size=16)
    d = Distiller(student, None, TaskConfig(), num_classes=10, criterion=make_criterion(0.0))
    decay, no_decay = param_groups(d, 0.05)
    ids = {id(p) for p in no_decay["params"]}
    assert id(student.model.pos_embed) in ids and id(student.model.cls_token) in ids
    assert all(p.ndim > 1 for p in decay["params"])
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(student.parameters()))


class Stop(Exception):
    pass


@pytest.mark.slow
def test_resume_after_interruption_matches_uninterrupted(tmp_path):
    run = smoke_run(student="kdbench_deit_t_xs", optimizer="adamw", lr=2e-3, ema_decay=0.9)
    full = Trainer(run, tmp_path / "a", device=CPU, context=SILENT).fit()

    def stop_after_first_epoch(msg):
        if "epoch 1/2" in msg:
            raise Stop
    with pytest.raises(Stop):
        Trainer(run, tmp_path / "b", device=CPU, context=RunContext(sink=stop_after_first_epoch)).fit()
    assert (tmp_path / "b" / "checkpoint.pt").exists()
    lines = []
    resumed = Trainer(run, tmp_path / "b", device=CPU, context=RunContext(sink=lines.append)).fit()
    assert any("resumed after epoch 1" in s for s in lines)
    for key in ("top1", "top5", "best_top1", "ema_top1"):
        assert getattr(resumed, key) == getattr(full, key), key
    a = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    sa = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["distiller"]
    sb = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["distiller"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_a_resumed_epoch_reports_the_speed_of_the_batches_it_trained(tmp_path):
    """Stopped one batch before the end of epoch 1 and resumed: that epoch's img/s counts the one batch
    trained after the resume, not the seven before it (which would read about 8x too fast)."""
    run = smoke_run()
    Trainer(run, tmp_path / "a", device=CPU, context=SILENT).fit()
    t = Trainer(run, tmp_path / "b", device=CPU, context=SILENT,
                should_stop=lambda: t.step >= t.steps_per_epoch - 1)
    with pytest.raises(Interrupted):
        t.fit()
    Trainer(run, tmp_path / "b", device=CPU, context=SILENT).fit()
    speed = {d: [json.loads(x)["img_per_s"] for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()
                 if json.loads(x)["kind"] == "epoch"] for d in "ab"}
    assert t.steps_per_epoch == 8 and speed["b"][0] < 3 * speed["a"][0]


@pytest.mark.slow
def test_same_seed_same_result_other_seed_differs(tmp_path):
    r0 = Trainer(smoke_run(seed=0), tmp_path / "x", device=CPU, context=SILENT).fit()
    r0b = Trainer(smoke_run(seed=0), tmp_path / "y", device=CPU, context=SILENT).fit()
    r1 = Trainer(smoke_run(seed=1), tmp_path / "z", device=CPU, context=SILENT).fit()
    m = lambda d: (tmp_path / d / "metrics.jsonl").read_text()
    assert _same_but_speed(m("x"), m("y"))
    assert r0.top1 == r0b.top1
    assert _losses(m("x")) != _losses(m("z"))
    assert r0.config_hash == r0b.config_hash != r1.config_hash


def _losses(text):
    return [json.loads(line)["loss"] for line in text.splitlines()]


def _same_but_speed(a, b):
    strip = lambda t: [{k: v for k, v in json.loads(x).items() if k != "img_per_s"} for x in t.splitlines()]
    return strip(a) == strip(b)


@dataclasses.dataclass
class NanConfig(TaskConfig):
    at_step: int = 3


@register_distiller("test_nan_at_step")
class NanAtStep(Distiller):
    Config = NanConfig
    requires_teacher = False

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.calls = 0

    def forward(self, images, labels):
        logits = self.student.logits(images)
        bad = torch.tensor(math.nan if self.calls == self.cfg.at_step else 0.0)
        self.calls += 1
        return DistillOutput(logits, {"gt": self.gt_loss(logits, labels), "probe": bad})


def test_non_finite_loss_fails_with_step_and_term(tmp_path):
    run = dataclasses.replace(smoke_run(), distiller="test_nan_at_step", distiller_config=NanConfig(at_step=3))
    with pytest.raises(NonFiniteLoss, match=r"step 3 .*probe"):
        Trainer(run, tmp_path, device=CPU, context=SILENT).fit()


def test_record_fields(tmp_path):
    rec = Trainer(smoke_run(), tmp_path, device=CPU, context=SILENT).fit()
    for key in ("schema", "status", "error", "distiller", "teacher", "student", "preset", "dataset", "seed",
                "top1", "top5", "best_top1", "teacher_top1", "epochs", "wall_s", "train_img_per_s",
                "peak_mem_mb", "student_params", "extra_params", "config", "config_hash", "versions"):
        assert key in rec.to_dict(), key
    assert rec.status == "done" and rec.epochs == 2 and 0 <= rec.top1 <= 100
    assert rec.top5 >= rec.top1 and rec.best_top1 >= rec.top1
    assert set(rec.versions) >= {"kdbench", "source", "torch", "timm", "python", "device", "world_size"}
    assert rec.config["distiller"]["name"] == "vanilla"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [1, 2]


def _git(root, *args):
    return subprocess.run(["git", "-C", str(root), "-c", "user.name=kdbench", "-c", "user.email=kdbench@test",
                           "-c", "commit.gpgsign=false", *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_records_name_the_source_revision(tmp_path, monkeypatch):
    """source_revision() names the commit of the tree kdbench's source lies in ("+dirty" once its
    code is modified) and is None in a tree that is no git checkout (an installed copy). The test
    builds both trees and points the module at each, so that it, not the environment, decides which
    answer is right."""
    import kdbench
    from kdbench.process import source_revision
    module = sys.modules[source_revision.__module__]           # the module whose __file__ it reads
    here = Path(module.__file__).resolve().relative_to(Path(kdbench.__file__).resolve().parents[1])
    forget = getattr(source_revision, "cache_clear", lambda: None)      # it may be cached per process

    def revision_of(tree):
        monkeypatch.setattr(module, "__file__", str(tree / here))
        forget()
        return source_revision()

    try:
        repo = tmp_path / "repo"
        for part in ("kdbench", "distillers", "benchmarks"):
            (repo / part).mkdir(parents=True)
            (repo / part / "code.py").write_text("x = 1\n")
        _git(repo, "init", "-q")
        _git(repo, "add", ".")
        _git(repo, "commit", "-q", "-m", "test")
        head = _git(repo, "rev-parse", "--short=12", "HEAD")
        assert re.fullmatch(r"[0-9a-f]{12}", head)
        assert revision_of(repo) == head
        (repo / "notes.txt").write_text("untracked, outside the source")
        assert revision_of(repo) == head
        (repo / "distillers" / "code.py").write_text("x = 1 + 1\n")     # another size: no racy stat
        assert revision_of(repo) == head + "+dirty"
        installed = tmp_path / "installed"
        shutil.copytree(repo, installed, ignore=shutil.ignore_patterns(".git"))
        assert revision_of(installed) is None
    finally:
        forget()           # later callers see the real tree again (monkeypatch restores __file__)


def test_training_curve_windows_average_the_steps(tmp_path):
    """metrics.jsonl's train rows: with log_every=1 one row per step whose mean over an epoch is the
    epoch row's loss; with log_every=3 each row is the mean of its three steps, across epochs too."""
    Trainer(smoke_run(log_every=1), tmp_path / "one", device=CPU, context=SILENT).fit()
    Trainer(smoke_run(log_every=3), tmp_path / "three", device=CPU, context=SILENT).fit()
    rows = lambda d: [json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
    one, three = rows("one"), rows("three")
    steps = [r for r in one if r["kind"] == "train"]
    assert [r["step"] for r in steps] == list(range(1, 17)) and [r["kind"] for r in one].count("epoch") == 2
    assert one[8]["kind"] == "epoch" and one[8]["step"] == 8           # after the train row of its step
    epoch1 = next(r for r in one if r["kind"] == "epoch")
    assert sum(r["loss"]["gt"] for r in steps[:8]) / 8 == pytest.approx(epoch1["loss"]["gt"], abs=1e-5)
    windows = [r for r in three if r["kind"] == "train"]
    assert [r["step"] for r in windows] == [3, 6, 9, 12, 15]
    for w in windows:
        mean = sum(r["loss"]["gt"] for r in steps[w["step"] - 3:w["step"]]) / 3
        assert w["loss"]["gt"] == pytest.approx(mean, abs=1e-5)
        assert 0 <= w["train_top1"] <= 100 and w["epoch"] == pytest.approx(w["step"] / 8, abs=1e-4)
    assert len([r for r in rows("one") if r["kind"] == "train"]) == 16


def test_curve_default_keeps_about_fifty_points():
    from kdbench.curves import curve_every
    assert curve_every(0, 124) == 2 and 124 // curve_every(0, 124) == 62       # a tiny student run
    assert curve_every(0, 300 * 391) == 2346 and curve_every(0, 10) == 1 and curve_every(7, 124) == 7


@pytest.mark.slow
def test_eval_every_scores_only_the_due_epochs_and_the_last(tmp_path):
    """`recipe.eval_every=2` over 3 epochs: epochs 2 and 3 are scored (3 is the last), epoch 1 only
    logs its losses; the record's final and best figures come from the scored epochs, and the model
    trained is the same as with an evaluation every epoch (evaluation draws no training randomness)."""
    every = Trainer(smoke_run(epochs=3), tmp_path / "every", device=CPU, context=SILENT).fit()
    run = smoke_run(epochs=3, eval_every=2)
    sparse = Trainer(run, tmp_path / "sparse", device=CPU, context=SILENT).fit()
    rows = [json.loads(x) for x in (tmp_path / "sparse" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r.get("kind") == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert ["top1" in r for r in epochs] == [False, True, True] and all("loss" in r for r in epochs)
    assert sparse.top1 == every.top1 and sparse.best_epoch in (2, 3)
    assert sparse.best_top1 == max(r["top1"] for r in epochs if "top1" in r)
    assert run.to_dict()["recipe"]["eval_every"] == 2 and "eval_every" not in smoke_run().to_dict()["recipe"]
