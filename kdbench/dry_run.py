"""`kdbench run --dry-run`: every cell of a grid built at full scale with the preset's real models
and teachers, a few training steps and evaluation batches, and the cost of the full recipe projected.

Dry-run records live under `<out>/dry-run/<preset>/<teacher>__<student>/<distiller>/dry.json`, apart
from real run records (no `seed<k>/` directories), so no leaderboard ever reads them. Seeds of a cell cost
the same: one is measured and the grid's projection multiplies by their number.
"""

import math
import time
from pathlib import Path
from typing import Dict, List

import torch

from .assembly import sample_inputs
from .context import LOCAL, SILENT, RunContext
from .data import dataset_sizes
from .engine import Trainer, lr_at, peak_memory_mb, train_step
from .errors import UsageError
from .process import versions
from .registry import DISTILLERS
from .results import SCHEMA, atomic_write_json
from .tasks import task_of
from .teachers import get_teacher

DRY_DIR = "dry-run"
EVAL_BATCHES = 2


def dry_run_dir(out: Path, preset: str) -> Path:
    return Path(out) / DRY_DIR / preset


def execute_dry_run(plan, steps: int, context: RunContext = LOCAL) -> int:
    """Measure every (pair, distiller) cell of `plan`; print the table; 0 if every cell ran, else 1."""
    log = context.log
    if steps < 1:
        raise UsageError(f"--dry-steps must be >= 1, got {steps}")
    cells = list({(r.teacher, r.student, r.distiller): r for r in plan.runs}.values())
    seeds = len(plan.seeds)
    log(f"kdbench: dry run of {len(cells)} cells ({seeds} seed(s) each in the real grid), {steps} step(s) each, "
        f"on {plan.device}")
    rows, teachers = [], {}
    for k, run in enumerate(cells, 1):
        label = f"[{k}/{len(cells)}] {run.distiller} {run.teacher}->{run.student}"
        teacher, note = None, None
        try:
            if DISTILLERS.get(run.distiller, run.task).requires_teacher:
                if run.teacher not in teachers:
                    teachers = {run.teacher: get_teacher(plan.preset, run.teacher, plan.data, plan.teacher_cfg,
                                                         out=plan.out, device=plan.device, context=context, dry_run=True)}
                teacher, manifest = teachers[run.teacher]
                note = manifest.note or f"top-1 {manifest.top1:.2f}% (cached)"
            row = measure_cell(run, teacher, plan.device, steps, dry_run_dir(plan.out, run.preset) / "scratch")
            row.update(status="done", error=None, teacher_note=note)
        except UsageError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failing cell is the finding; the dry run goes on
            row = {"status": "failed", "error": f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:300]}"}
        row = {"schema": SCHEMA, "kind": "dry-run", "preset": run.preset, "teacher": run.teacher,
               "student": run.student, "distiller": run.distiller, "seeds": seeds, **row,
               "config_hash": run.hash(), "versions": versions(plan.device)}
        atomic_write_json(dry_run_dir(plan.out, run.preset) / f"{run.teacher}__{run.student}" / run.distiller
                          / "dry.json", row)
        log(f"{label}: " + (f"{row['step_s']:.3f} s/step, peak {row['peak_mem_mb']:.0f} MB, projected "
                            f"{row['projected_run_h']:.2f} h" if row["status"] == "done" else f"FAILED: {row['error']}"))
        rows.append(row)
    summary = {"preset": plan.preset.name, "device": str(plan.device), "steps": steps, "seeds": seeds, "rows": rows,
               "projected_grid_h": round(sum(r.get("projected_run_h", 0) for r in rows) * seeds, 2)}
    atomic_write_json(dry_run_dir(plan.out, plan.preset.name) / "summary.json", summary)
    print(format_table(summary))
    failed = [r for r in rows if r["status"] != "done"]
    log(f"kdbench: dry run finished: {len(rows) - len(failed)} cells ran, {len(failed)} failed; "
        f"records under {dry_run_dir(plan.out, plan.preset.name)}")
    return 1 if failed else 0


def measure_cell(run, teacher, device: torch.device, steps: int, scratch: Path) -> Dict:
    """Build the run exactly as `kdbench run` would (loaders, distiller, optimizer, EMA, compile,
    precision), train `steps` steps (the first one or two untimed, see `_steady`), evaluate
    EVAL_BATCHES batches, and project the full recipe from the full dataset's size."""
    trainer = Trainer(run, scratch, device=device, teacher=teacher, context=SILENT)
    d, r = trainer.distiller, run.recipe
    d.train()
    d.set_progress(0, r.epochs)
    params = [p for p in d.parameters() if p.requires_grad]
    batches = _cycle(trainer.train_loader)
    times = []
    for step in range(steps):
        images, targets = next(batches)
        for g in trainer.optimizer.param_groups:
            g["lr"] = lr_at(step, trainer.total_steps, trainer.warmup_steps, r)
        start = time.perf_counter()
        _, loss = train_step(trainer.forward, trainer.optimizer, images, targets, params=params,
                             clip_grad=r.clip_grad, autocast=trainer.autocast,
                             idle=d.idle_parameters(images.shape[0]),
                             extra=sample_inputs(d, images.shape[0], images.device, step))
        if trainer.ema is not None:
            trainer.ema.update(d.student.model)
        if not torch.isfinite(loss):          # one host sync per step: a dry run may afford it
            raise RuntimeError(f"non-finite loss at dry step {step + 1}")
        _sync(device)
        times.append(time.perf_counter() - start)
    d.eval()
    task = task_of(run.task)
    eval_times, eval_batch = [], None
    with torch.inference_mode(), trainer.autocast():
        for i, (images, _) in zip(range(EVAL_BATCHES + 1), trainer.eval_loader.epoch(0)):
            start = time.perf_counter()
            task.predict(d.student, images)
            _sync(device)
            eval_times.append(time.perf_counter() - start)
            eval_batch = eval_batch or images.shape[0]
    step_s = _steady(times, warmup=2 if run.compile else 1)   # compiled: step 2 may compile a second graph
    eval_s = _steady(eval_times, warmup=1)
    num_train, num_test = dataset_sizes(run.data)
    steps_per_epoch = num_train // r.batch_size
    eval_per_epoch = math.ceil(num_test / eval_batch) * eval_s
    epoch_s = steps_per_epoch * step_s + eval_per_epoch
    return {"batch_size": r.batch_size, "precision": run.precision, "compile": run.compile, "steps": steps,
            "step_s": round(step_s, 4), "first_step_s": round(times[0], 4), "img_per_s": round(r.batch_size / step_s, 1),
            "eval_batch_size": eval_batch, "eval_batch_s": round(eval_s, 4),
            "peak_mem_mb": round(peak_memory_mb(device), 1), "student_params": d.num_student_params,
            "extra_params": d.num_extra_params, "epochs": r.epochs, "num_train": num_train, "num_test": num_test,
            "steps_per_epoch": steps_per_epoch, "projected_epoch_s": round(epoch_s, 2),
            "projected_run_s": round(r.epochs * epoch_s, 1), "projected_run_h": round(r.epochs * epoch_s / 3600, 3)}


def _cycle(loader):
    epoch = 0
    while True:
        yield from loader.epoch(epoch)
        epoch += 1


def _steady(times: List[float], warmup: int) -> float:
    """Median of the steps after the first `warmup` ones (allocation, compilation), keeping at least one."""
    timed = sorted(times[min(warmup, len(times) - 1):])
    return timed[len(timed) // 2]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_table(summary: dict) -> str:
    """The dry run as Markdown: one row per cell, the grid's projection last."""
    lines = [f"Dry run, preset `{summary['preset']}` on {summary['device']}, {summary['steps']} step(s) per cell; "
             f"projection = epochs x (steps/epoch x step time + evaluation) on the full dataset, this device.", "",
             "| teacher → student | distiller | batch | s/step | img/s | peak MB | student M | extra M "
             "| epoch (proj.) | run h (proj.) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in summary["rows"]:
        pair = f"{r['teacher']} → {r['student']}"
        if r["status"] != "done":
            lines.append(f"| {pair} | {r['distiller']} | FAILED: {r['error']} |||||||| ")
            continue
        lines.append(f"| {pair} | {r['distiller']} | {r['batch_size']} | {r['step_s']:.3f} | {r['img_per_s']:.1f} "
                     f"| {r['peak_mem_mb']:.0f} | {r['student_params'] / 1e6:.2f} | {r['extra_params'] / 1e6:.2f} "
                     f"| {_duration(r['projected_epoch_s'])} | {r['projected_run_h']:.1f} |")
    lines += ["", f"Grid: {summary['projected_grid_h']:.1f} h projected for {len(summary['rows'])} cells × "
                  f"{summary['seeds']} seed(s) on this device.",
              "", "peak MB: on CUDA the allocator's peak during the cell; on a CPU the process's resident-set peak "
                  "(reset per cell, so it includes the loaded teacher, the data and what the allocator kept)."]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 \
        else f"{seconds:.1f} s"
