"""`kdbench bench --overhead`: what the harness costs on top of the math (issue 18).

Per (pair, distiller), three loops on the same seeded models, batch size and optimizer, timed in
alternating rounds (the median round of each counts, so drift on a shared machine hits all alike):

- `engine`: the real training loop (`Trainer.train_epoch`: lr schedule, `train_step`, on-device loss
  sums and the finiteness check, training-curve points at the preset's own interval, the progress
  bar) over an in-memory synthetic set of the preset's geometry through the same loader and
  augmentation code as every in-memory dataset;
- `bare`: the same distiller's forward, summed losses, backward, gradient clipping and optimizer
  step on one fixed batch, nothing else;
- `plain` (KD only): what a researcher would write without kdbench: the timm models themselves,
  `F.cross_entropy` (label smoothing as the recipe) plus the temperature-scaled KL of the teacher
  under `torch.no_grad`, the recipe's optimizer (no weight decay on 1-D parameters) and clipping.

Rows: the three step times and `engine_over_bare`, `kd_over_plain` (kdbench's bare KD step over the
plain loop's). Teachers are randomly initialised: speed does not depend on the weights.
"""

import dataclasses
import statistics
import tempfile
import time
from typing import Dict, List

import torch
import torch.nn.functional as F

from .context import SILENT
from .curves import CurveLog, curve_every
from .data import DatasetInfo, dataset_geometry, dataset_sizes
from .assembly import bind_synthetic_training_set, build_distiller, sample_inputs
from .engine import Trainer, autocast_for, build_optimizer, param_groups
from .errors import UsageError
from .models import create_model
from .tasks import task_of


def overhead_rows(plan, *, steps: int, rounds: int, batch_size=None) -> List[Dict]:
    """One row per run of `plan` (one seed per cell)."""
    if any(run.task != "classification" for run in plan.runs):
        raise UsageError("bench --overhead measures classification presets")
    return [_overhead(run, plan.preset, steps=steps, rounds=rounds, batch_size=batch_size, device=plan.device)
            for run in plan.runs]


def _synthetic(run, batch: int, steps: int):
    """`run` on an in-memory synthetic set of its own geometry, `steps` batches per epoch."""
    num_classes, channels = dataset_geometry(run.data)
    data = dataclasses.replace(run.data, dataset="synthetic", synthetic_classes=num_classes,
                               synthetic_channels=channels, synthetic_size=run.data.img_size,
                               synthetic_train=batch * steps, synthetic_test=batch, train_limit=0, test_limit=0)
    recipe = dataclasses.replace(run.recipe, batch_size=batch)
    return dataclasses.replace(run, data=data, recipe=recipe)


def _overhead(run, preset, *, steps, rounds, batch_size, device) -> Dict:
    batch = batch_size or run.recipe.batch_size
    num_classes, channels = dataset_geometry(run.data)
    info = DatasetInfo(run.data.dataset, num_classes, channels, run.data.img_size, 0, 0, "")
    task = task_of(run.task)
    torch.manual_seed(0)
    teacher = task.model(run.teacher, info, run).to(device).eval().requires_grad_(False)
    loops = {"engine": _engine_loop(_synthetic(run, batch, steps), teacher, device),
             "bare": _bare_loop(run, teacher, info, batch, device)}
    if run.distiller == "kd":
        loops["plain"] = _plain_kd_loop(run, info, batch, device)
    # the real run's curve interval, not one for these few steps
    real_steps = run.recipe.epochs * (dataset_sizes(run.data)[0] // run.recipe.batch_size)
    loops["engine"].trainer.curve = CurveLog(curve_every(run.recipe.log_every, real_steps), steps)
    times = {name: [] for name in loops}
    for k in range(rounds + 1):                          # round 0 warms up (allocator, oneDNN primitives)
        for name, loop in loops.items():
            start = time.perf_counter()
            loop(steps)
            _sync(device)
            if k:
                times[name].append(1000 * (time.perf_counter() - start) / steps)
    ms = {name: round(statistics.median(t), 2) for name, t in times.items()}
    row = {"pair": f"{run.teacher}:{run.student}", "distiller": run.distiller, "preset": preset.name,
           "device": str(device), "batch_size": batch, "steps": steps, "rounds": rounds,
           "engine_ms": ms["engine"], "bare_ms": ms["bare"], "plain_ms": ms.get("plain"),
           "engine_over_bare": round(ms["engine"] / ms["bare"], 3),
           "kd_over_plain": round(ms["bare"] / ms["plain"], 3) if "plain" in ms else None,
           "rounds_ms": {name: [round(t, 2) for t in v] for name, v in times.items()}}
    return row


def _engine_loop(run, teacher, device):
    """One `Trainer.train_epoch` per call: the synthetic set holds exactly `steps` batches."""
    trainer = Trainer(run, tempfile.mkdtemp(prefix="kdbench-overhead-"), device=device, teacher=teacher, context=SILENT)

    def loop(n):
        assert n == trainer.steps_per_epoch
        trainer.train_epoch()
    loop.trainer = trainer
    return loop


def _bare_loop(run, teacher, info, batch, device):
    distiller = build_distiller(run, num_classes=info.num_classes, in_chans=info.in_chans, img_size=info.img_size,
                                teacher=teacher, device=device)
    r = run.recipe
    optimizer = build_optimizer(param_groups(distiller, r.weight_decay), r, device)
    images, labels = task_of(run.task).fixed_batch(batch, info, device)
    bind_synthetic_training_set(distiller, run, info)
    extra = sample_inputs(distiller, batch, device)
    params = [p for p in distiller.parameters() if p.requires_grad]
    autocast = autocast_for(run.precision, device)
    distiller.train()
    distiller.set_progress(0, r.epochs)

    def loop(n):
        for _ in range(n):
            with autocast():
                loss = sum(distiller(images, labels, **extra).losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if r.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(params, r.clip_grad)
            optimizer.step()
    return loop


def _plain_kd_loop(run, info, batch, device):
    r, cfg = run.recipe, run.distiller_config
    torch.manual_seed(run.seed)
    student = create_model(run.student, num_classes=info.num_classes, in_chans=info.in_chans,
                           img_size=info.img_size).to(device).train()
    torch.manual_seed(0)
    teacher = create_model(run.teacher, num_classes=info.num_classes, in_chans=info.in_chans,
                           img_size=info.img_size).to(device).eval().requires_grad_(False)
    decay = [p for p in student.parameters() if p.ndim > 1]
    no_decay = [p for p in student.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": r.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = build_optimizer(groups, r, device)
    images, labels = task_of(run.task).fixed_batch(batch, info, device)
    autocast = autocast_for(run.precision, device)
    t = cfg.temperature

    def loop(n):
        for _ in range(n):
            with autocast():
                logits = student(images)
                with torch.no_grad():
                    target = teacher(images)
                kl = F.kl_div(F.log_softmax(logits.float() / t, -1), F.softmax(target.float() / t, -1),
                              reduction="batchmean")
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=r.label_smoothing) \
                    + cfg.kd_weight * t * t * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if r.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(student.parameters(), r.clip_grad)
            optimizer.step()
    return loop


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_overhead(rows: List[Dict]) -> str:
    """The rows as a Markdown table."""
    lines = ["| pair | distiller | batch | engine ms | bare ms | plain ms | engine / bare | kd / plain |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        plain = "-" if r["plain_ms"] is None else f"{r['plain_ms']:.2f}"
        ratio = "-" if r["kd_over_plain"] is None else f"{r['kd_over_plain']:.3f}"
        lines.append(f"| {r['pair']} | {r['distiller']} | {r['batch_size']} | {r['engine_ms']:.2f} | "
                     f"{r['bare_ms']:.2f} | {plain} | {r['engine_over_bare']:.3f} | {ratio} |")
    return "\n".join(lines)
