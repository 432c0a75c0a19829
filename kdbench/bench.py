"""`kdbench bench`: steady-state training-step speed, memory and parameter counts per distiller."""

import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

from .assembly import bind_synthetic_training_set, build_distiller, sample_inputs
from .bench_data import bench_data
from .bench_overhead import overhead_rows
from .data import DatasetInfo, dataset_geometry
from .engine import autocast_for, build_optimizer, param_groups, peak_memory_mb, reset_peak_memory, train_step
from .errors import UsageError
from .executors import Plan
from .flops import count_step_flops, matmul_peak_tflops
from .process import malloc_in_use
from .registry import DISTILLERS, load_plugin
from .tasks import task_of


def _sig(x: float) -> float:
    """x to 6 significant digits: a slow small model's TFLOP/s (1e-5) keeps its precision."""
    return float(f"{x:.6g}")


@dataclass(frozen=True)
class BenchRequest:
    """What `kdbench bench` measures, as its options say (scripts build one instead of an argv)."""

    pair: str = "all"
    distillers: str = "kd"
    preset: str = "tiny"
    steps: int = 20                     # timed steps; 0: parameter counts only
    warmup: int = 3
    batch_size: Optional[int] = None    # default: the preset recipe's
    device: str = "auto"
    overrides: Tuple[str, ...] = ()     # --set KEY=VALUE
    plugin: Tuple[str, ...] = ()
    data: bool = False                  # the loader instead of the distillers
    workers: int = 2
    overhead: bool = False              # engine vs bare loop vs plain timm
    rounds: int = 5


def bench(args: BenchRequest) -> List[Dict]:
    """One row per (pair, distiller). `steps=0` counts parameters only (nothing is trained)."""
    for module in args.plugin:
        load_plugin(module)
    if args.steps < 0 or args.warmup < 0:
        raise UsageError(f"--steps and --warmup must be >= 0, got {args.steps} and {args.warmup}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.data:
        return _bench_data(args)
    if args.overhead:
        return _bench_overhead(args)
    names = DISTILLERS.parse(args.distillers)
    timed = args.steps > 0
    measured = names + (["kd"] if timed and "kd" not in names else [])   # kd: the ratio's reference
    plan = Plan.build(preset=args.preset, pairs=args.pair, distillers=measured, seeds="0,",
                      overrides=args.overrides, device=args.device, need_data=False)
    preset, data, runs, device = plan.preset, plan.data, plan.runs, plan.device
    num_classes, in_chans = dataset_geometry(data)
    rows, teachers = [], {}
    # Counting parameters needs no weights: without timed steps, every model is built on the meta device.
    build_on = device if timed else torch.device("meta")
    info = DatasetInfo(data.dataset, num_classes, in_chans, data.img_size, 0, 0, "")
    peaks = {}          # precision -> the device's measured matmul TFLOP/s in that dtype, probed once
    for run in runs:
        if run.teacher not in teachers:
            torch.manual_seed(0)
            with build_on:
                teachers = {run.teacher: task_of(run.task).model(run.teacher, info, run)}
        with build_on:
            distiller = build_distiller(run, num_classes=num_classes, in_chans=in_chans, img_size=data.img_size,
                                        teacher=teachers[run.teacher], device=build_on)
        row = {"pair": f"{run.teacher}:{run.student}", "teacher": run.teacher, "student": run.student,
               "distiller": run.distiller, "preset": preset.name, "device": str(device),
               "student_params": distiller.num_student_params, "extra_params": distiller.num_extra_params,
               "batch_size": args.batch_size or run.recipe.batch_size, "steps": args.steps,
               "img_per_s": None, "step_ms": None, "peak_mem_mb": None, "ratio_to_kd": None, "compile": run.compile,
               "precision": run.precision, "malloc": malloc_in_use(), "train_flops_per_img": None, "achieved_tflops": None,
               "peak_tflops": None, "peak_fraction": None}
        if timed:
            bind_synthetic_training_set(distiller, run, info)
            if run.precision not in peaks:
                dtype = torch.bfloat16 if run.precision == "bf16" else torch.float32
                peaks[run.precision] = matmul_peak_tflops(device, dtype)
            flops = count_step_flops(distiller, task_of(run.task), info, device)["train_flops_per_img"]
            forward = torch.compile(distiller) if run.compile else distiller
            row.update(_time_steps(distiller, forward, run, row["batch_size"], info, args.steps, args.warmup,
                                   device))
            achieved = flops * row["img_per_s"] / 1e12
            row.update(train_flops_per_img=flops, achieved_tflops=_sig(achieved), peak_tflops=_sig(peaks[run.precision]),
                       peak_fraction=_sig(achieved / peaks[run.precision]))
        rows.append(row)
        del distiller
    for row in rows:
        kd = next(r for r in rows if r["pair"] == row["pair"] and r["distiller"] == "kd") if timed else None
        if kd is not None:
            row["ratio_to_kd"] = round(row["step_ms"] / kd["step_ms"], 3)
    return [r for r in rows if r["distiller"] in names]


def _time_steps(distiller, forward, run, batch_size, info, steps, warmup, device) -> Dict:
    """Steady state: `warmup` steps (timed apart: torch.compile's cost shows there), then `steps`
    timed ones on a fixed batch (the task's `fixed_batch`)."""
    images, labels = task_of(run.task).fixed_batch(batch_size, info, device)
    extra = sample_inputs(distiller, batch_size, device)
    recipe = run.recipe
    optimizer = build_optimizer(param_groups(distiller, recipe.weight_decay), recipe, device)
    params = [p for p in distiller.parameters() if p.requires_grad]
    autocast = autocast_for(run.precision, device)
    distiller.train()
    reset_peak_memory(device)

    def step():
        _, loss = train_step(forward, optimizer, images, labels, params=params, clip_grad=recipe.clip_grad,
                             autocast=autocast, idle=distiller.idle_parameters(batch_size), extra=extra)
        return loss

    start = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    _sync(device)
    elapsed = time.perf_counter() - start
    if not torch.isfinite(loss):
        raise RuntimeError(f"{distiller.__class__.__name__}: non-finite loss while benchmarking")
    return {"img_per_s": round(steps * batch_size / elapsed, 1), "step_ms": round(1000 * elapsed / steps, 2),
            "peak_mem_mb": round(peak_memory_mb(device), 1), "warmup_s": round(warmup_s, 2)}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_rows(rows: List[Dict]) -> str:
    head = f"{'pair':44s} {'distiller':10s} {'img/s':>8s} {'ms/step':>8s} {'x kd':>6s} {'peak MB':>8s} " \
           f"{'student':>9s} {'extra':>9s} {'GFLOP/img':>10s} {'TFLOP/s':>8s} {'% peak':>7s}"
    lines = [head]
    for r in rows:
        def num(v, fmt):
            return format(v, fmt) if v is not None else format("-", ">" + fmt.split(".")[0])
        lines.append(f"{r['pair']:44s} {r['distiller']:10s} {num(r['img_per_s'], '8.1f')} {num(r['step_ms'], '8.2f')} "
                     f"{num(r['ratio_to_kd'], '6.2f')} {num(r['peak_mem_mb'], '8.0f')} "
                     f"{r['student_params'] / 1e6:8.2f}M {r['extra_params'] / 1e6:8.2f}M "
                     f"{num(r['train_flops_per_img'] and r['train_flops_per_img'] / 1e9, '10.3f')} "
                     f"{num(r['achieved_tflops'], '8.3f')} {num(r['peak_fraction'] and 100 * r['peak_fraction'], '7.1f')}")
    return "\n".join(lines)


def _bench_data(args) -> List[Dict]:
    plan = Plan.build(preset=args.preset, pairs="all", distillers=[], overrides=args.overrides, device=args.device)
    batch = args.batch_size or plan.preset.cnn.batch_size
    return bench_data(plan.data, batch_size=batch, batches=max(args.steps, 1), device=plan.device,
                      workers=args.workers)


def _bench_overhead(args) -> List[Dict]:
    if args.steps < 1 or args.rounds < 1:
        raise UsageError(f"--overhead needs --steps >= 1 and --rounds >= 1, got {args.steps} and {args.rounds}")
    plan = Plan.build(preset=args.preset, pairs=args.pair, distillers=DISTILLERS.parse(args.distillers), seeds="0,",
                      overrides=args.overrides, device=args.device, need_data=False)
    return overhead_rows(plan, steps=args.steps, rounds=args.rounds, batch_size=args.batch_size)
