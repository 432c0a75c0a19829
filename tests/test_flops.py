"""Training FLOPs (kdbench.flops): counted on fresh CPU models without touching the run's RNG, the same
in a run's record as `count_step_flops` of its cell, for both tasks; the matmul peak probe."""

import torch

from kdbench.data import DatasetInfo
from kdbench.detection.task import DETECTION
from kdbench.assembly import build_distiller
from kdbench.engine import Trainer
from kdbench.flops import count_step_flops, matmul_peak_tflops, run_flops
from kdbench.tasks import CLASSIFICATION

from test_engine import smoke_run

CPU = torch.device("cpu")


def test_run_flops_restores_the_rng_and_matches_the_cell_count():
    run = smoke_run("vanilla")
    info = DatasetInfo("synthetic", 10, 3, run.data.img_size, 0, 0, "")
    torch.manual_seed(123)
    before = torch.get_rng_state()
    flops = run_flops(run, info)
    assert torch.equal(torch.get_rng_state(), before)
    d = build_distiller(run, num_classes=10, in_chans=3, img_size=run.data.img_size, teacher=None, device=CPU)
    assert flops == count_step_flops(d, CLASSIFICATION, info)
    assert flops["train_flops_per_img"] > 2 * flops["eval_flops_per_img"] > 0      # backward ~ 2x forward


def test_seeds_of_a_cell_share_one_count(monkeypatch):
    """A grid's seeds differ only in `seed`, which the count does not see: counted once per process."""
    import dataclasses
    from kdbench import flops
    calls = []
    monkeypatch.setattr(flops, "_COUNTED", {})
    monkeypatch.setattr(flops, "_count_run", lambda run, info: calls.append(run.seed) or {"train_flops_per_img": 1.0})
    run = smoke_run("kd")
    info = DatasetInfo("synthetic", 10, 3, run.data.img_size, 0, 0, "")
    assert [run_flops(dataclasses.replace(run, seed=s), info) for s in (0, 1, 2)] == [{"train_flops_per_img": 1.0}] * 3
    run_flops(smoke_run("vanilla"), info)
    assert calls == [0, 0]


def test_a_record_carries_its_training_flops(tmp_path):
    run = smoke_run("vanilla")
    rec = Trainer(run, run_dir=tmp_path, device=CPU).fit()
    info = DatasetInfo("synthetic", 10, 3, run.data.img_size, 0, 0, "")
    assert rec.train_flops_per_img == run_flops(run, info)["train_flops_per_img"]


def test_detection_steps_are_counted():
    from kdbench.executors import Plan
    plan = Plan.build(preset="det-smoke", pairs="swin_tiny_patch4_window7_224:resnet18", distillers=["vanilla", "kd"],
                      seeds="0,", overrides={}, device="cpu", need_data=False)
    runs = plan.runs
    info = DatasetInfo("synthetic-det", 10, 3, plan.data.img_size, 0, 0, "")
    vanilla, kd = (run_flops(r, info)["train_flops_per_img"] for r in runs)
    assert kd > vanilla > 0                                   # KD adds the teacher's detector forward
    assert DETECTION.fixed_batch(2, info, CPU)[1][0]["boxes"].shape == (4, 4)


def test_matmul_probe_measures_something_plausible():
    tflops = matmul_peak_tflops(CPU, torch.float32, seconds=0.05)
    assert 1e-4 < tflops < 1e3
