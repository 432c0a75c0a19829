"""`kdbench` command line (contract: README.md, "Commands"; docs/design.md)."""

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from typing import List

import timm

from . import __version__, distributed
from .bench import BenchRequest, bench, format_rows
from .bench_overhead import format_overhead
from .config import load_preset, preset_names
from .context import LOCAL, RunContext
from .dry_run import execute_dry_run
from .errors import UsageError
from .executors import LocalExecutor, Plan, RayExecutor, WorkersExecutor
from .grid import pair_sets
from .leaderboard import collect, render
from .leaderboard.command import LeaderboardRequest, add_parser as add_leaderboard, cmd_leaderboard as leaderboard, emit
from .models import zoo  # noqa: F401 (registers kdbench's members with timm, for `list models`)
from .plan import PlanRequest, cmd_plan as plan
from .registry import DISTILLERS, load_plugin
from .requests import from_args
from .teachers import teacher_table
from .viz import cmd_viz as viz


class _Parser(argparse.ArgumentParser):
    def error(self, message):          # argparse's own usage errors: one line, exit 2
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kdbench", description="Knowledge-distillation benchmark for heterogeneous architectures.")
    p.add_argument("--version", action="version", version=f"kdbench {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ls = sub.add_parser("list", help="list distillers, pairs, models or presets")
    ls.add_argument("what", choices=["distillers", "pairs", "models", "presets"])
    ls.add_argument("--preset", default="tiny")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--plugin", action="append", default=[])

    def common(q):
        q.add_argument("--pairs", default="all", help="all | SET | T:S[,T:S..]")
        q.add_argument("--preset", default="tiny")
        q.add_argument("--out", default="runs")
        q.add_argument("--data-root", default=None)
        q.add_argument("--device", default="auto", help="auto | cpu | cuda")
        q.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
        q.add_argument("--plugin", action="append", default=[])

    run = sub.add_parser("run", help="train a grid of distillers x pairs x seeds")
    run.add_argument("--distiller", required=True, help="NAME[,NAME..] | all")
    common(run)
    run.add_argument("--seeds", default=None, help="a count (3) or a list (0,1,2); default: the preset's")
    run.add_argument("--fresh", action="store_true", help="discard existing records and checkpoints of these runs")
    run.add_argument("--executor", default="local", choices=["local", "ray"],
                     help="where the grid's cells run: this process (local) or Ray tasks")
    run.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")
    run.add_argument("--workers", type=int, default=1,
                     help="local executor: processes sharing the grid, each with 1/N of the CPU threads")
    run.add_argument("--dry-run", action="store_true",
                     help="build every cell at full scale, train a few steps, project the recipe's cost; "
                          "records under <out>/dry-run/, never in a leaderboard")
    run.add_argument("--dry-steps", type=int, default=2, help="--dry-run: training steps per cell")

    teach = sub.add_parser("teach", help="train, verify and cache the teachers of the pairs")
    common(teach)

    add_leaderboard(sub)

    plan = sub.add_parser("plan", help="a grid's cells with training FLOPs and projected GPU-hours, before it runs")
    plan.add_argument("--distiller", default="all", help="NAME[,NAME..] | all")
    plan.add_argument("--pairs", default="all", help="all | SET | T:S[,T:S..]")
    plan.add_argument("--preset", default="paper")
    plan.add_argument("--seeds", default=None, help="a count (3) or a list (0,1,2); default: the preset's")
    plan.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    plan.add_argument("--plugin", action="append", default=[])
    plan.add_argument("--gpus", default=None, help="GPU classes to project onto (default: all known)")
    plan.add_argument("--utilisation", type=float, default=None,
                      help="fraction of the bf16 peak reached (default: gpu_check.sh's measurement, else assumed)")
    plan.add_argument("--json", action="store_true")
    plan.add_argument("--json-out", default=None, metavar="FILE.json", help="also write the plan as JSON")

    viz = sub.add_parser("viz", help="pictures of what a trained distiller learned")
    viz.add_argument("what", choices=["attention"], help="attention: PAT's region-attention map")
    viz.add_argument("--run", required=True, help="a PAT run directory (<out>/<preset>/<T>__<S>/pat/seed<k>)")
    viz.add_argument("--out", required=True, metavar="FILE.png")
    viz.add_argument("--images", type=int, default=256, help="test images averaged over")
    viz.add_argument("--device", default="auto", help="auto | cpu | cuda")

    bench = sub.add_parser("bench", help="training-step throughput, memory and parameter counts per distiller")
    bench.add_argument("--pair", default="all", help="T:S (paper or preset-scale names), a set, or all")
    bench.add_argument("--distillers", default="kd", help="NAME[,NAME..] | all")
    bench.add_argument("--preset", default="tiny")
    bench.add_argument("--steps", type=int, default=20, help="timed steps; 0 = parameter counts only")
    bench.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    bench.add_argument("--batch-size", type=int, default=None, help="default: the preset recipe's")
    bench.add_argument("--device", default="auto", help="auto | cpu | cuda")
    bench.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    bench.add_argument("--plugin", action="append", default=[])
    bench.add_argument("--json", action="store_true")
    bench.add_argument("--data", action="store_true",
                       help="data only: the device-resident loader vs torchvision's DataLoader (img/s)")
    bench.add_argument("--workers", type=int, default=2, help="--data: torchvision DataLoader workers")
    bench.add_argument("--overhead", action="store_true",
                       help="engine loop vs bare loop vs plain-timm KD, per distiller (kdbench/bench_overhead.py)")
    bench.add_argument("--rounds", type=int, default=5, help="--overhead: timed rounds of --steps steps per loop")
    return p


def main(argv: List[str] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return {"list": cmd_list, "run": cmd_run, "teach": cmd_teach, "bench": cmd_bench, "plan": cmd_plan,
                "leaderboard": cmd_leaderboard, "viz": cmd_viz}[args.command](args)
    except UsageError as exc:
        print(f"kdbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        LOCAL.log("kdbench: interrupted; rerun the same command to resume")
        return 130


# -- list ---------------------------------------------------------------------------------
def cmd_list(args) -> int:
    for module in args.plugin:
        load_plugin(module)
    if args.what == "distillers":
        rows = [{"name": n, "tasks": DISTILLERS.tasks_of(n),
                 "config": {f.name: f.default for f in dataclasses.fields(DISTILLERS.get(n).Config)
                            if f.default is not dataclasses.MISSING}} for n in DISTILLERS.names()]
        _emit(rows, args.json, lambda r: f"{r['name']:12s} {r['config']}  (tasks: {', '.join(r['tasks'])})")
    elif args.what == "presets":
        rows = [{"name": n, "description": load_preset(n).description.strip()} for n in preset_names()]
        _emit(rows, args.json, lambda r: f"{r['name']:8s} {r['description']}")
    elif args.what == "pairs":
        preset = load_preset(args.preset)
        rows = []
        for set_name, pairs in pair_sets().items():
            if set_name not in ("all", "imagenet"):
                continue
            for p in pairs:
                if p.teacher in preset.models and p.student in preset.models:
                    t, s = p.scaled(preset)
                    rows.append({"teacher": t, "student": s, "set": set_name if set_name == "imagenet" else p.set,
                                 "paper_teacher": p.teacher, "paper_student": p.student})
        _emit(rows, args.json, lambda r: f"{r['teacher']:32s} -> {r['student']:32s} [{r['set']}]")
    else:
        preset = load_preset(args.preset)
        rows = [{"name": n, "paper_model": k} for k, n in sorted(preset.models.items())]
        rows += [{"name": n, "paper_model": None} for n in timm.list_models("kdbench_*")
                 if n not in preset.models.values()]
        _emit(rows, args.json, lambda r: f"{r['name']:36s} {r['paper_model'] or ''}")
    return 0


def _emit(rows, as_json, fmt):
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(fmt(r))


# -- run / teach ---------------------------------------------------------------------------
def cmd_run(args) -> int:
    names = DISTILLERS.parse(args.distiller)
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if args.dry_run:
        if args.workers > 1 or args.executor == "ray" or args.fresh or torchrun:
            raise UsageError("--dry-run measures one process on this device; it cannot be combined with --workers, "
                             "--executor ray, --fresh or torchrun")
        return execute_dry_run(Plan.from_args(args, names), args.dry_steps)
    if args.workers > 1 and (args.fresh or args.executor == "ray" or torchrun):
        raise UsageError("--workers > 1 runs the local executor in one process per worker; it cannot be "
                         "combined with --fresh, --executor ray or torchrun")
    if args.executor == "ray" and args.fresh:
        raise UsageError("--fresh cannot be combined with --executor ray; clear the cells locally first")
    with _context(args.device) as context:
        plan = Plan.from_args(args, names, context.dist)     # validated before any cell starts
        executor = (WorkersExecutor(args.workers, context) if args.workers > 1
                    else RayExecutor(args.ray_address, context) if args.executor == "ray"
                    else LocalExecutor(context))
        status = executor.run(plan)
        if context.dist.is_main:
            print_leaderboard(plan, context)
        return status


def cmd_teach(args) -> int:
    with _context(args.device) as context:
        manifests = LocalExecutor(context).teach(Plan.from_args(args, [], context.dist))
        if context.dist.is_main:
            print(teacher_table(manifests))
        return 0


@contextlib.contextmanager
def _context(device: str):
    """This process's run context: under torchrun, joined to its process group for the block."""
    try:
        yield RunContext(dist=distributed.init_from_env(device))
    finally:
        distributed.shutdown()


def print_leaderboard(plan, context: RunContext = LOCAL):
    """The grid ends with the leaderboard of its preset (every record under --out, not only this grid's)."""
    try:
        emit(render(collect(plan.out, plan.preset.name), "md"))
    except UsageError as exc:             # nothing finished yet: say so, the grid's status stands
        context.log(f"kdbench: no leaderboard ({exc})")


def cmd_plan(args) -> int:
    return plan(from_args(PlanRequest, args))


def cmd_viz(args) -> int:
    return viz(args)


def cmd_leaderboard(args) -> int:
    return leaderboard(from_args(LeaderboardRequest, args))


def cmd_bench(args) -> int:
    rows = bench(from_args(BenchRequest, args))
    if args.overhead and not args.json:
        print(format_overhead(rows))
    elif args.data and not args.json:
        for r in rows:
            print(f"{r['loader']:44s} {r['img_per_s']:10.0f} img/s  x{r['ratio_to_torchvision']:.2f}")
    else:
        print(json.dumps(rows, indent=2) if args.json else format_rows(rows))
    return 0
