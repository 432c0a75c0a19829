"""DDP: two gloo processes on CPU. The averaged gradients equal a single process's on the same
global batch; `torchrun -m kdbench run` finishes and records world size 2."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kdbench.assembly import make_criterion
from kdbench.models import create_feature_model
from kdbench.registry import DISTILLERS

GLOBAL_BATCH = 8


def _distiller(name):
    torch.manual_seed(0)
    student = create_feature_model("kdbench_deit_t_xs", num_classes=10, in_chans=3, img_size=16)  # no BatchNorm
    teacher = create_feature_model("kdbench_vit_s_xs", num_classes=10, in_chans=3, img_size=16)
    cls = DISTILLERS.get(name)
    return cls(student, teacher, cls.Config(), num_classes=10, criterion=make_criterion(0.1)).train()


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=g), torch.randint(0, 10, (GLOBAL_BATCH,), generator=g)


def _grads(d):
    return {n: p.grad.detach().clone() for n, p in d.named_parameters() if p.grad is not None}


def _worker(rank, world, init_file, out_file, name):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        d = _distiller(name)
        ddp = torch.nn.parallel.DistributedDataParallel(d)
        x, y = _batch()
        per = GLOBAL_BATCH // world
        out = ddp(x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per])
        sum(out.losses.values()).backward()
        if rank == 0:
            torch.save(_grads(d), out_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", ["kd", "fitnet"])
def test_ddp_gradients_match_a_single_process_on_the_global_batch(tmp_path, name):
    out_file = tmp_path / "grads.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out_file), name), nprocs=2, join=True)
    ddp_grads = torch.load(out_file, weights_only=True)
    d = _distiller(name)
    out = d(*_batch())
    sum(out.losses.values()).backward()
    single = _grads(d)
    assert ddp_grads.keys() == single.keys() and len(single) > 10
    for k in single:
        assert torch.allclose(ddp_grads[k], single[k], rtol=1e-4, atol=1e-6), k
    assert not any(k.startswith("teacher.") for k in single)


def _torchrun(run_args):
    """`kdbench run RUN_ARGS` as two torchrun processes on a free local port, one thread each."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "kdbench", "run", *run_args],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_torchrun_two_processes_smoke_run(tmp_path):
    out = tmp_path / "runs"
    proc = _torchrun(["--distiller", "kd,pat", "--pairs", "kdbench_vit_s_xs:kdbench_deit_t_xs", "--preset", "smoke",
                      "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("kd", "pat"):
        rec = json.loads((out / "smoke" / "kdbench_vit_s_xs__kdbench_deit_t_xs" / name / "seed0" /
                          "result.json").read_text())
        assert rec["status"] == "done" and rec["world_size"] == 2 and rec["versions"]["world_size"] == 2
        assert rec["global_batch_size"] == 64 and rec["per_rank_batch_size"] == 32
    manifest = json.loads((out / "teachers" / "smoke" / "kdbench_vit_s_xs" / "manifest.json").read_text())
    assert manifest["top1"] > 0
    assert proc.stdout.count("kdbench leaderboard") == 1           # rank 0 alone prints


@pytest.mark.slow
def test_torchrun_two_processes_detection_run(tmp_path):
    """Detection under DDP: the teacher trained on two ranks, KD on ROI logits and PAT with prompts in
    the teacher's backbone, records with mAP from rank 0."""
    out = tmp_path / "runs"
    proc = _torchrun(["--distiller", "kd,pat", "--pairs", "swin_tiny_patch4_window7_224:resnet18", "--preset",
                      "det-smoke", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("kd", "pat"):
        rec = json.loads((out / "det-smoke" / "kdbench_swin_t_xs__kdbench_resnet18_xs" / name / "seed0" /
                          "result.json").read_text())
        assert rec["status"] == "done" and rec["world_size"] == 2 and rec["metric"] == "map"
        assert rec["global_batch_size"] == 8 and rec["per_rank_batch_size"] == 4
        assert 0 <= rec["metrics"]["map"] <= 100
    assert proc.stdout.count("kdbench leaderboard") == 1


@pytest.mark.slow
def test_grid_on_a_local_ray_instance(tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "runs"
    pairs = "kdbench_vit_s_xs:kdbench_resnet18_xs,kdbench_convnext_t_xs:kdbench_deit_t_xs"
    cell = out / "smoke" / "kdbench_vit_s_xs__kdbench_resnet18_xs" / "kd" / "seed1"
    proc = subprocess.run([sys.executable, "-m", "kdbench", "run", "--executor", "ray", "--distiller", "kd,vanilla",
                           "--pairs", pairs, "--preset", "smoke", "--seeds", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = [json.loads(p.read_text()) for p in out.rglob("result.json") if "teachers" not in p.parts]
    assert len(recs) == 8 and all(r["status"] == "done" for r in recs)
    assert len(list((out / "teachers" / "smoke").glob("*/manifest.json"))) == 2     # each teacher once
    assert "ray: 8/8 done" in proc.stderr
    assert proc.stdout.count("kdbench leaderboard: preset smoke") == 1
    assert json.loads((cell / "result.json").read_text())["seed"] == 1
    assert not list(out.rglob(".lock"))
