"""CUDA-path defects found by reading the code, each checked on the CPU: a compiled distiller does not
recompile when the epoch changes; a dropped FeatureModel is freed by reference counting alone; PAT
needs no DDP unused-parameter search and its first step is unchanged; stop requests cost a
collective only every K steps under DDP; the process-group timeout; workers inside a CUDA mask; the
torch.backends flags; fused optimizers build."""

import dataclasses
import gc
import os
import weakref
from contextlib import nullcontext
from datetime import timedelta
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch._dynamo.testing import CompileCounter

from distillers.base import TaskConfig
from distillers.pat import PAT
from kdbench.context import SILENT
from kdbench import distributed, engine
from kdbench.config import RecipeConfig, RunConfig, TeacherConfig, load_preset
from kdbench.assembly import make_criterion
from kdbench.engine import STOP_CHECK_EVERY, Trainer, build_optimizer, configure_backends, train_step
from kdbench.errors import UsageError
from kdbench.models import create_feature_model
from kdbench.registry import DISTILLERS
from kdbench.executors.workers import worker_env

TEACHER, STUDENT = "kdbench_vit_s_xs", "kdbench_deit_t_xs"
PAT_SMALL = dict(dim=32, num_queries=16, heads=4)


def make(name, teacher=TEACHER, student=STUDENT, **cfg):
    torch.manual_seed(0)
    s = create_feature_model(student, num_classes=10, in_chans=3, img_size=16)
    t = create_feature_model(teacher, num_classes=10, in_chans=3, img_size=16)
    cls = DISTILLERS.get(name)
    return cls(s, t, cls.Config(**cfg), num_classes=10, criterion=make_criterion(0.0)).train()


def batch(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)


# ----------------------------------------------------------------------------- torch.compile across epochs

COMPILED = [
    ("kd", TEACHER, STUDENT, {}),
    ("dkd", TEACHER, STUDENT, {"warmup_epochs": 5}),
    ("reviewkd", TEACHER, "kdbench_resnet18_xs", {}),
    ("pat", TEACHER, STUDENT, PAT_SMALL),
    ("pat", "kdbench_resnet50_xs", STUDENT, {**PAT_SMALL, "faithful": True}),   # the teacher's first-step train mode
]


class GraphRecorder(CompileCounter):
    """Counts compiled frames and keeps the functions their graphs call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __call__(self, gm, example_inputs):
        self.calls.extend(n.target for n in gm.graph.nodes if n.op == "call_function")
        return super().__call__(gm, example_inputs)


@pytest.mark.parametrize("name,teacher,student,cfg", COMPILED, ids=["kd", "dkd", "reviewkd", "pat", "pat-faithful"])
def test_a_compiled_distiller_does_not_recompile_when_the_epoch_changes(name, teacher, student, cfg):
    eager, plain = make(name, teacher, student, **cfg), make(name, teacher, student, **cfg)
    torch._dynamo.reset()
    counter = GraphRecorder()
    compiled = torch.compile(plain, backend=counter)
    frames = []
    try:
        for epoch in range(3):
            eager.set_progress(epoch, 3)
            plain.set_progress(epoch, 3)
            for step in range(2):          # PAT: no feedback yet, then feedback
                want, got = eager(*batch(step)).losses, compiled(*batch(step)).losses
                assert want.keys() == got.keys()
                for k in want:
                    assert torch.allclose(got[k], want[k], rtol=1e-5, atol=1e-5), (epoch, step, k)
            frames.append(counter.frame_count)
    finally:
        torch._dynamo.reset()
    assert frames[0] >= 1 and frames == [frames[0]] * 3, frames
    assert torch.sin not in counter.calls and torch.cos not in counter.calls     # PAT's PE table is built once


@pytest.mark.parametrize("name,weight,span,value,epochs,term", [
    ("dkd", "kd_weight", "warmup_epochs", 3.0, 3.0, "dkd"),
    ("reviewkd", "feat_weight", "warmup_fraction", 0.7, 0.7 * 4, "hcl")])
def test_the_warmup_keeps_the_bits_of_the_python_float_it_replaced(name, weight, span, value, epochs, term):
    x, y = batch()
    with torch.no_grad():
        raw = make(name, student="kdbench_resnet18_xs", **{weight: 1.0, span: 0}).eval()(x, y).losses[term]
        d = make(name, student="kdbench_resnet18_xs", **{weight: 0.7, span: value}).eval()
        for epoch in range(4):
            d.set_progress(epoch, 4)
            factor = 0.7 * min(1.0, (epoch + 1) / epochs)              # the previous code's Python float
            assert torch.equal(d(x, y).losses[term], factor * raw), epoch


# ----------------------------------------------------------------------------- FeatureModel: no reference cycle

def test_a_dropped_feature_model_is_freed_by_reference_counting_alone():
    gc.collect()
    gc.disable()           # what is still alive after `del` now waits for the cycle collector
    try:
        fm = create_feature_model("kdbench_swin_t_xs", num_classes=10, in_chans=3, img_size=16)
        twin = fm.clone()
        with fm.stage_inputs({0: lambda x: x + 1.0}):
            changed = fm(torch.zeros(1, 3, 16, 16))[0]
        assert not torch.equal(changed, twin(torch.zeros(1, 3, 16, 16))[0])      # the hooks still work
        refs = [weakref.ref(m) for m in (fm, fm.model, twin, twin.model)]
        del fm, twin
        assert [r() for r in refs] == [None] * 4
    finally:
        gc.enable()


# ----------------------------------------------------------------------------- PAT under DDP: no unused parameters

def _pat(teacher="kdbench_convnext_t_xs"):
    d = make("pat", teacher, STUDENT, **PAT_SMALL)
    d.set_progress(0, 1)
    return d


def _without_anchor(monkeypatch):
    """The previous code's first step: the fusion blocks stay out of the graph."""
    monkeypatch.setattr(PAT, "_zero_anchor", lambda self, feedback: None)


def test_pat_first_step_uses_every_parameter_and_keeps_losses_and_gradients(monkeypatch):
    assert PAT.find_unused_parameters is False
    new, old = _pat(), _pat()
    x, y = batch()
    idle = new.idle_parameters(x.shape[0])
    fusion = [p for b in new.prompts.values() for p in b.fusion_parameters()]
    assert len(fusion) > 4 and {id(p) for p in idle} == {id(p) for p in fusion}
    out = new(x, y)
    sum(out.losses.values()).backward()
    assert all(p.grad is not None for p in new.parameters() if p.requires_grad)     # DDP sees them all
    assert all(torch.count_nonzero(p.grad) == 0 for p in idle)
    with monkeypatch.context() as m:
        _without_anchor(m)
        before = old(x, y)
    sum(before.losses.values()).backward()
    assert out.losses.keys() == before.losses.keys()
    assert all(torch.equal(out.losses[k], before.losses[k]) for k in out.losses)
    for (name, p), q in zip(new.named_parameters(), old.parameters()):
        if q.grad is None:
            assert id(p) in {id(i) for i in idle} or not p.requires_grad, name
        else:
            assert torch.equal(p.grad, q.grad), name
    assert new.idle_parameters(x.shape[0]) == []                  # the next step has feedback


def test_pat_first_optimizer_step_is_unchanged(monkeypatch):
    new, old = _pat(), _pat()
    x, y = batch()

    def step(d, idle):
        params = [p for p in d.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
        train_step(d, opt, x, y, params=params, clip_grad=1.0, autocast=nullcontext, idle=idle)
        return opt
    opt_new = step(new, new.idle_parameters(x.shape[0]))
    with monkeypatch.context() as m:
        _without_anchor(m)
        opt_old = step(old, ())
    assert all(torch.equal(p, q) for p, q in zip(new.parameters(), old.parameters()))
    assert len(opt_new.state) == len(opt_old.state)              # no momentum for the idle blocks


def _ddp_pat_worker(rank, world, init_file, out_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        d = _pat("kdbench_vit_s_xs")
        ddp = torch.nn.parallel.DistributedDataParallel(d, find_unused_parameters=d.find_unused_parameters)
        params = [p for p in d.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
        for step in range(3):              # the second step fails when a parameter sat out the first
            x, y = batch(10 * step + rank)
            train_step(ddp, opt, x, y, params=params, clip_grad=0.0, autocast=nullcontext,
                       idle=d.idle_parameters(x.shape[0]))
        if rank == 0:
            torch.save({n: p.detach().clone() for n, p in d.named_parameters()}, out_file)
    finally:
        dist.destroy_process_group()


def test_pat_trains_under_ddp_without_the_unused_parameter_search(tmp_path):
    out_file = tmp_path / "params.pt"
    mp.spawn(_ddp_pat_worker, args=(2, str(tmp_path / "init"), str(out_file)), nprocs=2, join=True)
    params = torch.load(out_file, weights_only=True)
    assert all(torch.isfinite(v).all() for v in params.values())


# ----------------------------------------------------------------------------- stop requests under DDP

def _trainer_stub(active: bool, steps: int, stop: bool = False):
    """What `Trainer._stop_agreed` reads, and the list of `should_stop` calls."""
    calls = []

    def should_stop():
        calls.append(1)
        return stop
    return SimpleNamespace(dist=distributed.DistInfo(0, 2 if active else 1, 0), steps_per_epoch=steps,
                           device=torch.device("cpu"), should_stop=should_stop), calls


def test_ddp_agrees_on_stop_requests_every_k_steps_and_at_each_epoch_end(monkeypatch):
    collectives = []
    monkeypatch.setattr(distributed.DistInfo, "any_rank", lambda self, flag, device: collectives.append(1) or flag)
    ddp, _ = _trainer_stub(True, 60, stop=True)
    agreed = [done for done in range(1, 61) if Trainer._stop_agreed(ddp, done)]
    assert agreed == [STOP_CHECK_EVERY, 2 * STOP_CHECK_EVERY] and len(collectives) == 2   # 60: the epoch end's
    assert Trainer._stop_agreed(ddp) and len(collectives) == 3


def test_one_process_checks_every_step_without_a_collective(monkeypatch):
    monkeypatch.setattr(distributed.dist, "all_reduce", lambda *a, **k: pytest.fail("a collective"))
    single, calls = _trainer_stub(False, 60)
    assert not any(Trainer._stop_agreed(single, done) for done in range(1, 61)) and len(calls) == 60
    stop, _ = _trainer_stub(False, 60, stop=True)
    assert Trainer._stop_agreed(stop, 7) and Trainer._stop_agreed(stop)


# ----------------------------------------------------------------------------- process group, workers, backends

def test_the_process_group_gets_a_long_timeout(monkeypatch):
    seen = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, **kw: seen.append((backend, kw)))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    assert distributed.init_from_env("cpu") == distributed.DistInfo(1, 2, 1)
    assert seen == [("gloo", {"timeout": timedelta(hours=2)})]
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "90")
    distributed.init_from_env("cpu")
    assert seen[-1] == ("gloo", {"timeout": timedelta(seconds=90)})
    for bad in ("0", "ten"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(UsageError, match=distributed.TIMEOUT_ENV):
            distributed.init_from_env("cpu")


def test_workers_take_their_gpu_from_an_existing_mask(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5, 6,7")
    assert [worker_env(k, 4, 4)["CUDA_VISIBLE_DEVICES"] for k in range(4)] == ["4", "5", "6", "7"]
    assert [worker_env(k, 2, 4)["CUDA_VISIBLE_DEVICES"] for k in range(2)] == ["4", "5"]
    assert worker_env(1, 8, 4)["CUDA_VISIBLE_DEVICES"] == "4,5, 6,7"     # fewer GPUs than workers: shared
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert [worker_env(k, 2, 2)["CUDA_VISIBLE_DEVICES"] for k in range(2)] == ["0", "1"]


BACKEND_FLAGS = {"matmul_tf32": (torch.backends.cuda.matmul, "allow_tf32"),
                 "cudnn_tf32": (torch.backends.cudnn, "allow_tf32"),
                 "benchmark": (torch.backends.cudnn, "benchmark"),
                 "cudnn_deterministic": (torch.backends.cudnn, "deterministic")}


def _flags():
    return {k: getattr(owner, name) for k, (owner, name) in BACKEND_FLAGS.items()}


@pytest.fixture
def restored_backends(monkeypatch):
    before = _flags()
    mode = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)     # restored afterwards
    yield
    for k, (owner, name) in BACKEND_FLAGS.items():
        setattr(owner, name, before[k])
    torch.use_deterministic_algorithms(mode[0], warn_only=mode[1])


def test_backends_tf32_with_autotuning_or_deterministic(restored_backends):
    configure_backends(deterministic=False)
    assert _flags() == {"matmul_tf32": True, "cudnn_tf32": True, "benchmark": True, "cudnn_deterministic": False}
    assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    configure_backends(deterministic=True)
    assert _flags() == {"matmul_tf32": True, "cudnn_tf32": True, "benchmark": False, "cudnn_deterministic": True}
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    configure_backends(deterministic=False)                      # the next run in the same process
    assert not torch.are_deterministic_algorithms_enabled() and _flags()["benchmark"]


def test_every_trainer_configures_the_backends(restored_backends, monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(engine, "configure_backends", seen.append)
    preset = load_preset("smoke")
    data = dataclasses.replace(preset.data, synthetic_train=64, synthetic_test=32)
    run = RunConfig(preset="smoke", teacher=STUDENT, student=STUDENT, seed=0, distiller="vanilla",
                    distiller_config=TaskConfig(), recipe=dataclasses.replace(preset.vit_mlp, batch_size=32),
                    data=data, teacher_config=TeacherConfig())
    for expected in (False, True):
        Trainer(dataclasses.replace(run, deterministic=expected), tmp_path, device=torch.device("cpu"),
                context=SILENT)
        assert seen[-1] is expected


# ----------------------------------------------------------------------------- fused optimizers (torch >= 2.3)

@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_cuda_optimizers_are_fused_and_build_without_a_gpu(optimizer):
    params = [torch.nn.Parameter(torch.zeros(3, 3)), torch.nn.Parameter(torch.zeros(3))]
    opt = build_optimizer([{"params": params}], RecipeConfig(optimizer=optimizer), torch.device("cuda"))
    assert opt.param_groups[0]["fused"] is True and not opt.param_groups[0].get("foreach")
    cpu = build_optimizer([{"params": params}], RecipeConfig(optimizer=optimizer), torch.device("cpu"))
    assert cpu.param_groups[0]["foreach"] is True and not cpu.param_groups[0].get("fused")
