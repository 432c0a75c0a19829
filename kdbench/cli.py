"""`kdbench` command line (contract: DESIGN.md §6)."""

import argparse
import dataclasses
import json
import os
import shutil
import signal
import sys
import time
import traceback
from collections import deque
from pathlib import Path
from typing import List

from . import __version__
from .errors import UsageError


def log(msg: str):
    from .distributed import info
    if info().is_main:          # under torchrun, rank 0 speaks for all
        worker = os.environ.get("KDBENCH_WORKER")         # kdbench run --workers N
        print(f"[worker {worker}] {msg}" if worker else msg, file=sys.stderr, flush=True)


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

    from .report import add_parser as add_leaderboard
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
        log("kdbench: interrupted; rerun the same command to resume")
        return 130


# -- list ---------------------------------------------------------------------------------
def cmd_list(args) -> int:
    from .config import load_preset, preset_names
    from .registry import DISTILLERS, load_plugin
    for module in args.plugin:
        load_plugin(module)
    if args.what == "distillers":
        rows = [{"name": n, "config": {f.name: f.default for f in dataclasses.fields(DISTILLERS.get(n).Config)
                                        if f.default is not dataclasses.MISSING}} for n in DISTILLERS.names()]
        _emit(rows, args.json, lambda r: f"{r['name']:12s} {r['config']}")
    elif args.what == "presets":
        rows = [{"name": n, "description": load_preset(n).description.strip()} for n in preset_names()]
        _emit(rows, args.json, lambda r: f"{r['name']:8s} {r['description']}")
    elif args.what == "pairs":
        from .grid import pair_sets
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
        import timm
        from .models import zoo  # noqa: F401
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
class Plan:
    """A validated grid: everything is checked before anything is written."""

    def __init__(self, args, distillers: List[str]):
        from .config import apply_overrides, compile_flag, load_preset, parse_overrides
        from .data import resolve_root
        from .engine import resolve_device
        from .grid import expand_runs, parse_seeds, resolve_pairs
        from .registry import load_plugin
        for module in args.plugin:
            load_plugin(module)
        self.preset = load_preset(args.preset)
        self.pairs = resolve_pairs(args.pairs, self.preset)
        overrides = parse_overrides(args.overrides)
        self.data = apply_overrides(self.preset.data, overrides, "data")
        if args.data_root is not None:
            self.data = dataclasses.replace(self.data, root=args.data_root)
        resolve_root(self.data.dataset, self.data.root)       # missing data: fail now, write nothing
        self.teacher_cfg = apply_overrides(self.preset.teacher, overrides, "teacher")
        compile_ = compile_flag(overrides)
        from .distributed import device_for
        self.device = device_for(resolve_device(args.device))
        self.out = Path(args.out)
        self.seeds = parse_seeds(args.seeds) if getattr(args, "seeds", None) else list(range(self.preset.seeds))
        self.runs = expand_runs(self.preset, self.pairs, distillers, self.seeds, data=self.data,
                                teacher_cfg=self.teacher_cfg, overrides=overrides, compile_=compile_,
                                device=self.device)
        self.teachers = list(dict.fromkeys(p.scaled(self.preset)[0] for p in self.pairs))


def cmd_run(args) -> int:
    from .registry import DISTILLERS
    names = DISTILLERS.parse(args.distiller)
    from . import distributed
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if args.dry_run:
        return _dry_run(args, names)
    if args.workers > 1:
        if args.fresh or args.executor == "ray" or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UsageError("--workers > 1 runs the local executor in one process per worker; it cannot be "
                             "combined with --fresh, --executor ray or torchrun")
        from .workers import execute_workers
        plan = Plan(args, names)          # validated here, before any worker starts
        status = execute_workers(args, log)
        print_leaderboard(plan)
        return status
    if args.executor == "ray":
        if args.fresh:
            raise UsageError("--fresh cannot be combined with --executor ray; clear the cells locally first")
        from .ray_executor import execute_ray
        plan = Plan(args, names)          # validated here, before any task starts
        status = execute_ray(plan, args, log)
        print_leaderboard(plan)
        return status
    distributed.init_from_env(args.device)
    try:
        plan = Plan(args, names)
        status = execute(plan, fresh=args.fresh)
        if distributed.info().is_main:
            print_leaderboard(plan)
        return status
    finally:
        distributed.shutdown()


def _dry_run(args, names: List[str]) -> int:
    from .dry_run import execute_dry_run
    if args.workers > 1 or args.executor == "ray" or args.fresh or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("--dry-run measures one process on this device; it cannot be combined with --workers, "
                         "--executor ray, --fresh or torchrun")
    return execute_dry_run(Plan(args, names), args.dry_steps, log)


def print_leaderboard(plan: "Plan"):
    """The grid ends with the leaderboard of its preset (every record under --out, not only this grid's)."""
    from .report import collect, emit, render
    try:
        emit(render(collect(plan.out, plan.preset.name), "md"))
    except UsageError as exc:             # nothing finished yet: say so, the grid's status stands
        log(f"kdbench: no leaderboard ({exc})")


def cmd_plan(args) -> int:
    from .plan import cmd_plan as plan
    return plan(args)


def cmd_viz(args) -> int:
    from .viz import cmd_viz as viz
    return viz(args)


def cmd_leaderboard(args) -> int:
    from .report import cmd_leaderboard as leaderboard
    return leaderboard(args)


def cmd_teach(args) -> int:
    from . import distributed
    from .teachers import get_teacher
    distributed.init_from_env(args.device)
    try:
        plan = Plan(args, [])
        manifests = [get_teacher(plan.preset, teacher, plan.data, plan.teacher_cfg, out=plan.out, device=plan.device,
                                 log=log, verify=True)[1] for teacher in plan.teachers]
        if distributed.info().is_main:
            print(teacher_table(manifests))
        return 0
    finally:
        distributed.shutdown()


def teacher_table(manifests: List[dict]) -> str:
    """`kdbench teach`'s summary: each teacher's top-1 beside the published one, warnings loud."""
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)
    lines = [f"{'teacher':34s} {'top-1':>6s} {'published':>10s} {'gap':>6s}  weights"]
    for m in manifests:
        pub = f"{m['published_top1']:.2f} {m['published_src']}" if m.get("published_top1") is not None else "-"
        lines.append(f"{m['architecture']:34s} {num(m.get('top1'), '6.2f')} {pub:>10s} "
                     f"{num(m.get('published_gap'), '+6.2f')}  {m.get('weights', 'trained by kdbench')}")
    warnings = [m for m in manifests if m.get("warning")]
    for m in warnings:
        lines.append(f"WARNING: {m['architecture']}: {m['warning']}")
    return "\n".join(lines)


def cmd_bench(args) -> int:
    from .bench import bench, format_rows
    rows = bench(args)
    if args.data and not args.json:
        for r in rows:
            print(f"{r['loader']:44s} {r['img_per_s']:10.0f} img/s  x{r['ratio_to_torchvision']:.2f}")
    else:
        print(json.dumps(rows, indent=2) if args.json else format_rows(rows))
    return 0


def execute(plan: Plan, fresh: bool = False) -> int:
    """Run the plan's missing cells, teacher by teacher. SIGINT/SIGTERM finish the current step,
    save a checkpoint and stop (exit 130/143); a rerun resumes. Cells that another kdbench
    process holds (a lock in the run directory) are left to it."""
    from .engine import Interrupted
    from .grid import run_dir
    from .locks import RunLock
    from .registry import DISTILLERS
    from .results import atomic_write_json, read_record
    from .teachers import teacher_in_use
    from . import distributed
    main = distributed.info().is_main
    todo, skipped, error = [], 0, None
    for i, run in enumerate(plan.runs):
        rdir = run_dir(plan.out, run.preset, run.teacher, run.student, run.distiller, run.seed)
        rec = None if fresh or not main else read_record(rdir)
        if rec is not None and rec.get("status") == "done":
            if rec.get("config_hash") != run.hash():
                error = error or (f"{rdir}/result.json was produced with a different configuration (hash "
                                  f"{rec.get('config_hash')} != {run.hash()}); use --fresh or another --out")
            skipped += 1
            continue
        todo.append(i)
    todo, skipped, error = distributed.broadcast((todo, skipped, error))     # rank 0 read the records
    if error:
        raise UsageError(error)
    todo = [(plan.runs[i], run_dir(plan.out, plan.runs[i].preset, plan.runs[i].teacher, plan.runs[i].student,
                                   plan.runs[i].distiller, plan.runs[i].seed)) for i in todo]
    log(f"kdbench: {len(plan.runs)} runs ({skipped} already done, {len(todo)} to run) on {plan.device}")
    # Order: by teacher, so each teacher is trained (or loaded) once and then reused. A cell whose
    # teacher another process is training right now waits its turn behind the other teachers' cells.
    order = {t: i for i, t in enumerate(plan.teachers)}
    queue = deque(sorted(todo, key=lambda x: order[x[0].teacher]))
    teachers, failed, busy, k, deferred, t0 = {}, 0, 0, 0, 0, time.perf_counter()
    total = len(queue)
    with StopOnSignal() as stop:
        while queue:
            run, rdir = queue.popleft()
            needs_teacher = DISTILLERS.get(run.distiller).requires_teacher and run.teacher not in teachers
            if deferred < len(queue) and needs_teacher and distributed.broadcast(
                    main and teacher_in_use(plan.out, plan.preset.name, run.teacher)):
                queue.append((run, rdir))
                deferred += 1
                continue
            deferred, k = 0, k + 1
            label = f"[{k}/{total}] {run.distiller} {run.teacher}->{run.student} seed{run.seed}"
            if distributed.any_rank(stop(), plan.device):
                log(f"kdbench: {stop.name} received; stopped before {label}; rerun the same command to go on")
                return 128 + (stop.signum or signal.SIGTERM)
            lock = RunLock(rdir)
            if not distributed.broadcast(lock.try_acquire() if main else None):
                busy += 1
                log(f"{label}: running in another process ({lock.owner()}); skipped")
                continue
            try:
                if fresh and main:
                    _clear_run_dir(rdir)
                done = main and not fresh and (rec := read_record(rdir)) is not None and rec.get("status") == "done"
                if distributed.broadcast(done):
                    continue                           # finished by another process meanwhile
                distributed.barrier()
                log(label)
                try:
                    teacher, manifest = None, None
                    if DISTILLERS.get(run.distiller).requires_teacher:
                        if run.teacher not in teachers:
                            teachers = {run.teacher: _teacher(plan, run.teacher, stop)}   # keep one in memory
                        teacher, manifest = teachers[run.teacher]
                        if isinstance(teacher, Exception):
                            raise teacher
                    record = _train(run, rdir, plan, teacher, manifest, label, stop, lock)
                except (UsageError, KeyboardInterrupt, Interrupted):
                    raise
                except Exception as exc:  # one failed run never stops the grid
                    failed += 1
                    record = _failed_record(run, exc)
                    log(f"  FAILED: {record['error']}")
                if main:
                    atomic_write_json(rdir / "result.json", record)
            except Interrupted as exc:
                log(f"kdbench: {stop.name} received: {label} {exc}; rerun the same command to resume")
                return 128 + (stop.signum or signal.SIGTERM)
            finally:
                lock.release()
    log(f"kdbench: finished {total - busy} runs in {time.perf_counter() - t0:.0f}s, {failed} failed"
        + (f", {busy} left to other processes" if busy else "") + f"; records under {plan.out / plan.preset.name}")
    return 1 if failed else 0


def _clear_run_dir(rdir: Path):
    """--fresh: remove a run's record, checkpoint and metrics (not the lock we hold)."""
    for path in rdir.iterdir():
        if path.name != ".lock":
            shutil.rmtree(path) if path.is_dir() else path.unlink()


class StopOnSignal:
    """Within the block, the first SIGINT/SIGTERM asks the running training to stop at the end of
    its current step (it saves a checkpoint); a second one interrupts at once."""

    def __init__(self):
        self.signum, self._previous = None, {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def __call__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        log(f"kdbench: {self.name}: finishing the current step and saving a checkpoint (again to abort)")

    def __enter__(self):
        import threading
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _teacher(plan: Plan, name: str, stop):
    from .engine import Interrupted
    from .teachers import get_teacher
    try:
        return get_teacher(plan.preset, name, plan.data, plan.teacher_cfg, out=plan.out, device=plan.device, log=log,
                           should_stop=stop)
    except (UsageError, Interrupted):
        raise
    except Exception as exc:
        return exc, None


def _train(run, rdir, plan, teacher, manifest, label, stop, lock):
    from .engine import Trainer
    trainer = Trainer(run, rdir, device=plan.device, teacher=teacher,
                      teacher_top1=manifest["top1"] if manifest else None, log=log, label=label,
                      should_stop=stop, on_epoch=lock.refresh)
    return trainer.fit()


def _failed_record(run, exc) -> dict:
    from .results import SCHEMA
    return {"schema": SCHEMA, "status": "failed", "error": f"{exc.__class__.__name__}: {exc}",
            "traceback": traceback.format_exc(limit=8), "distiller": run.distiller, "teacher": run.teacher,
            "student": run.student, "preset": run.preset, "dataset": run.data.dataset, "seed": run.seed,
            "config": run.to_dict(), "config_hash": run.hash()}
