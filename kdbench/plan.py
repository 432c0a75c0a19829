"""`kdbench plan`: what a grid will cost before it runs, in FLOPs and projected GPU-hours.

Each (pair, distiller) cell is built with the preset's real models (randomly initialised: no data
or teacher files are needed) and one training step (forward + backward, the second step so that
PAT's feedback path is included) is counted with `torch.utils.flop_counter.FlopCounterMode` on a
batch of 2, together with the student's evaluation forward. The full recipe is
epochs x (trained images x step FLOPs + test images x eval FLOPs) on the full dataset; GPU hours
are FLOPs / (peak bf16 dense TFLOP/s x utilisation).
"""

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from .assembly import bind_synthetic_training_set, build_distiller
from .assets import asset, read_yaml
from .data import DatasetInfo, dataset_geometry, dataset_sizes
from .errors import UsageError
from .executors import Plan
from .flops import BOUND_FOR_COUNTS, count_step_flops
from .registry import DISTILLERS, load_plugin
from .results import atomic_write_json
from .tasks import task_of

CPU = torch.device("cpu")


@dataclass(frozen=True)
class GPU:
    name: str
    bf16_tflops: float      # dense bf16 tensor-core peak with fp32 accumulation (vendor datasheets)


GPUS = {g.name: g for g in (GPU("A100", 312.0), GPU("H100-SXM", 989.0), GPU("H200", 989.0), GPU("L40S", 362.0),
                            GPU("RTX4090", 165.2))}
ASSUMED_UTILISATION = 0.25   # fraction of the bf16 peak a distillation step reaches, until gpu_check.sh measures it
UTILISATION_FILE = "results/gpu-utilisation.json"   # under benchmarks/, written from a gpu_check.sh run


def measured_utilisation() -> Optional[dict]:
    """The utilisation gpu_check.sh measured, when a GPU-lent session committed one."""
    path = asset(UTILISATION_FILE)
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass(frozen=True)
class PlanRequest:
    """What `kdbench plan` projects, as its options say."""

    preset: str = "paper"
    pairs: str = "all"
    distiller: str = "all"
    seeds: Optional[str] = None             # a count or a list; default: the preset's
    overrides: Tuple[str, ...] = ()         # --set KEY=VALUE
    plugin: Tuple[str, ...] = ()
    gpus: Optional[str] = None              # GPU classes (default: all known)
    utilisation: Optional[float] = None
    json: bool = False
    json_out: Optional[str] = None


def plan(args: PlanRequest) -> dict:
    """The grid's cells with FLOPs per step and per recipe and projected hours per GPU class."""
    for module in args.plugin:
        load_plugin(module)
    names = DISTILLERS.parse(args.distiller)
    grid = Plan.build(preset=args.preset, pairs=args.pairs, distillers=names, seeds=args.seeds,
                      overrides=args.overrides, device="cpu", plugins=args.plugin, need_data=False)
    preset, data, seeds = grid.preset, grid.data, grid.seeds
    gpus = _gpus(args.gpus)
    util, util_src = _utilisation(args.utilisation)
    runs = [r for r in grid.runs if r.seed == seeds[0]]
    num_classes, in_chans = dataset_geometry(data)
    num_train, num_test = dataset_sizes(data)
    info = DatasetInfo(data.dataset, num_classes, in_chans, data.img_size, num_train, num_test, "")
    cells, teachers = [], {}
    for run in runs:
        task = task_of(run.task)
        if run.teacher not in teachers:
            torch.manual_seed(0)
            teachers = {run.teacher: task.model(run.teacher, info, run)}
        distiller = build_distiller(run, num_classes=num_classes, in_chans=in_chans, img_size=data.img_size,
                                    teacher=teachers[run.teacher], device=CPU)
        bind_synthetic_training_set(distiller, run, info, at_most=BOUND_FOR_COUNTS)
        flops = count_step_flops(distiller, task, info)
        r = run.recipe
        trained = (num_train // r.batch_size) * r.batch_size
        recipe_flops = r.epochs * (trained * flops["train_flops_per_img"] + num_test * flops["eval_flops_per_img"])
        cells.append({"teacher": run.teacher, "student": run.student, "distiller": run.distiller,
                      "batch_size": r.batch_size, "epochs": r.epochs, "trained_img_per_epoch": trained,
                      "train_flops_per_img": flops["train_flops_per_img"],
                      "eval_flops_per_img": flops["eval_flops_per_img"],
                      "step_flops": flops["train_flops_per_img"] * r.batch_size,
                      "epoch_flops": recipe_flops / r.epochs, "recipe_flops": recipe_flops,
                      "gpu_hours": {g.name: _hours(recipe_flops, g, util) for g in gpus},
                      "extra_params": distiller.num_extra_params,
                      "state_mb": round(distiller.training_state_bytes(num_train) / 2 ** 20, 1)})
        del distiller
    grid_flops = sum(c["recipe_flops"] for c in cells) * len(seeds)
    return {"preset": preset.name, "dataset": data.dataset, "img_size": data.img_size, "num_train": num_train,
            "num_test": num_test, "seeds": len(seeds), "utilisation": util, "utilisation_source": util_src,
            "gpus": {g.name: g.bf16_tflops for g in gpus}, "cells": cells, "grid_flops": grid_flops,
            "grid_gpu_hours": {g.name: _hours(grid_flops, g, util) for g in gpus},
            "pat_kd_ratios": _pat_kd_ratios(cells), "paper_epoch_time_s": _paper_epoch_times()}


def _hours(flops: float, gpu: GPU, util: float) -> float:
    return round(flops / (gpu.bf16_tflops * 1e12 * util) / 3600, 3)


def _gpus(spec: Optional[str]) -> List[GPU]:
    if not spec:
        return list(GPUS.values())
    out = []
    for name in (s.strip() for s in spec.split(",") if s.strip()):
        if name not in GPUS:
            raise UsageError(f"unknown GPU class '{name}'; valid choices: {', '.join(GPUS)}")
        out.append(GPUS[name])
    return out


def _utilisation(value: Optional[float]):
    if value is not None:
        if not 0 < value <= 1:
            raise UsageError(f"--utilisation must be in (0, 1], got {value}")
        return value, "given (--utilisation)"
    measured = measured_utilisation()
    if measured:
        return measured["utilisation"], f"measured by gpu_check.sh on {measured['device']}"
    return ASSUMED_UTILISATION, "assumed (no gpu_check.sh measurement committed yet)"


def _pat_kd_ratios(cells) -> Dict[str, float]:
    by = {(c["teacher"], c["student"], c["distiller"]): c for c in cells}
    return {f"{t}:{s}": round(c["epoch_flops"] / by[(t, s, "kd")]["epoch_flops"], 2)
            for (t, s, d), c in by.items() if d == "pat" and (t, s, "kd") in by}


@lru_cache(maxsize=None)
def _paper_epoch_times() -> dict:
    costs = read_yaml("published.yaml").get("costs", {})
    return costs.get("epoch_time_s", {})


def format_plan(p: dict) -> str:
    """The plan as Markdown."""
    gpus = list(p["gpus"])
    lines = [f"Plan for preset `{p['preset']}`: {p['dataset']} at {p['img_size']} px, {p['num_train']} train / "
             f"{p['num_test']} test images, {p['seeds']} seed(s). Training FLOPs per image = forward + backward "
             f"of one steady-state step (teacher included), counted by torch.utils.flop_counter; GPU hours at "
             f"{p['utilisation']:.0%} of the bf16 dense peak ({p['utilisation_source']}).", "",
             "| teacher → student | distiller | GFLOP/img (train) | TFLOP/step | PFLOP/epoch | EFLOP/run | "
             + " | ".join(f"{g} h/run" for g in gpus) + " |",
             "|---|---|---:|---:|---:|---:|" + "---:|" * len(gpus)]
    for c in p["cells"]:
        lines.append(f"| {c['teacher']} → {c['student']} | {c['distiller']} | {c['train_flops_per_img'] / 1e9:.2f} | "
                     f"{c['step_flops'] / 1e12:.2f} | {c['epoch_flops'] / 1e15:.2f} | {c['recipe_flops'] / 1e18:.2f} | "
                     + " | ".join(f"{c['gpu_hours'][g]:.1f}" for g in gpus) + " |")
    lines += ["", f"Grid ({len(p['cells'])} cells × {p['seeds']} seed(s)): {p['grid_flops'] / 1e18:.1f} EFLOP; "
              + ", ".join(f"{g} {h:.0f} h" for g, h in p["grid_gpu_hours"].items()) + "."]
    state = {c["distiller"]: c.get("state_mb", 0) for c in p["cells"] if c.get("state_mb")}
    if state:
        lines += ["", "Training state that grows with the training set (per run, beside parameters and optimizer "
                  f"state, for {p['num_train']} images): " + ", ".join(f"{d} {mb:,.0f} MB" for d, mb in state.items())
                  + " (CRD: two float32 memory banks of 128-d embeddings)."]
    if p["pat_kd_ratios"]:
        paper = p["paper_epoch_time_s"]
        ratio = f"{paper['pat'] / paper['kd']:.1f}× ({paper['pat']} s vs {paper['kd']} s per CIFAR-100 epoch; " \
                "pair and GPU not stated)" if paper else "not published"
        lines += ["", "PAT/KD epoch cost projected from FLOPs: " + ", ".join(
            f"{pair} {r:.2f}×" for pair, r in p["pat_kd_ratios"].items()) + f". Paper's measured ratio: {ratio}."]
    return "\n".join(lines)


def cmd_plan(args: PlanRequest) -> int:
    p = plan(args)
    print(json.dumps(p, indent=2) if args.json else format_plan(p))
    if args.json_out:
        atomic_write_json(Path(args.json_out), p)
    return 0
