"""Training FLOPs of a distiller step and the device's measured matmul peak (issue 18): the work a
step does, so that step times can be read as a fraction of what the hardware can do.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions and
attention: the ops that dominate; elementwise work is not counted) on a batch of COUNT_BATCH from
the task's `fixed_batch`, on the second training step (the first may skip parts: PAT's feedback).
"""

import dataclasses
import time
from typing import Dict

import torch
from torch.utils.flop_counter import FlopCounterMode

from .assembly import bind_synthetic_training_set, build_distiller, sample_inputs
from .registry import DISTILLERS
from .tasks import task_of

COUNT_BATCH = 2
BOUND_FOR_COUNTS = 4096      # training-set size a sample-indexing method is bound to for counting (FLOPs do not depend on it)
CPU = torch.device("cpu")


def count_step_flops(distiller, task, info, device=CPU) -> Dict[str, float]:
    """{"train_flops_per_img": forward + backward of the whole distiller (teacher included) per
    image, "eval_flops_per_img": the student's evaluation forward per image}. Runs two training
    steps (no optimizer step) on `distiller`: count on a model whose state may change."""
    images, targets = task.fixed_batch(COUNT_BATCH, info, device)
    distiller.train()
    distiller.set_progress(0, 1)
    for k in range(2):
        counter = FlopCounterMode(display=False)
        with counter:
            out = distiller(images, targets, **sample_inputs(distiller, COUNT_BATCH, device, k))
            sum(out.losses.values()).backward()
        distiller.zero_grad(set_to_none=True)
    train = counter.get_total_flops() / COUNT_BATCH
    distiller.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        task.predict(distiller.student, images)
    return {"train_flops_per_img": train, "eval_flops_per_img": counter.get_total_flops() / COUNT_BATCH}


_COUNTED: Dict[tuple, Dict[str, float]] = {}     # one count per cell configuration and process (seeds share it)


def run_flops(run, info) -> Dict[str, float]:
    """`count_step_flops` of `run`'s cell on fresh, randomly initialised CPU models (FLOPs do not depend
    on the weights; a detector's proposal counts do, within their caps, and are counted under a fixed
    seed, so not on the run's). The global RNG is restored: the run's own training draws are unaffected."""
    key = (dataclasses.replace(run, seed=0).hash(), info.num_classes, info.in_chans, info.img_size)
    if key not in _COUNTED:
        _COUNTED[key] = _count_run(run, info)
    return dict(_COUNTED[key])


def _count_run(run, info) -> Dict[str, float]:
    task = task_of(run.task)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        teacher = task.model(run.teacher, info, run).eval().requires_grad_(False) \
            if DISTILLERS.get(run.distiller, run.task).requires_teacher else None
        distiller = build_distiller(run, num_classes=info.num_classes, in_chans=info.in_chans,
                                    img_size=info.img_size, teacher=teacher, device=CPU)
        bind_synthetic_training_set(distiller, run, info, at_most=BOUND_FOR_COUNTS)
        return count_step_flops(distiller, task, info)


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype = torch.float32, seconds: float = 1.0) -> float:
    """The device's measured dense matmul throughput in TFLOP/s for `dtype` (square matmuls, 2048 on
    a CPU, 8192 on a GPU, repeated for about `seconds` after one warm-up)."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    _sync(device)
    reps, start = 0, time.perf_counter()
    while True:
        torch.mm(a, b)
        reps += 1
        _sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds or reps >= 1000:
            return 2 * n ** 3 * reps / elapsed / 1e12


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
