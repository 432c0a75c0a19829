"""`kdbench run --executor ray`: every grid cell becomes a Ray task on a cluster.

Teachers first (one task each, trained once and cached), then one task per (pair, distiller,
seed). A task runs the ordinary `kdbench run` for its cell in a subprocess, so records, locks,
checkpoints and resume are exactly those of a local run; the results tree must be on a
filesystem all nodes share. A task whose process dies (a preempted node, SIGTERM) is retried by
Ray and resumes from the cell's last checkpoint. Needs `pip install kdbench[ray]`.
"""

import os
import subprocess
import sys
import time
from typing import List

from .errors import UsageError

RETRIES = 3


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'kdbench[ray]' (or pip install ray)") from None
    return ray


def common_args(args) -> List[str]:
    argv = ["--preset", args.preset, "--out", os.path.abspath(args.out), "--device", args.device]
    if args.data_root:
        argv += ["--data-root", os.path.abspath(args.data_root)]
    for item in args.overrides:
        argv += ["--set", item]
    for module in args.plugin:
        argv += ["--plugin", module]
    return argv


def _cell_command(kind: str, argv: List[str]) -> int:
    """Run one `kdbench` cell in a subprocess; a killed process is an error Ray retries."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("KDBENCH_CELL_THREADS", "1")}
    # stdout (each cell's leaderboard) is dropped: the driver prints the grid's; stderr is the task log
    proc = subprocess.run([sys.executable, "-m", "kdbench", kind, *argv], env=env, stdout=subprocess.DEVNULL)
    if proc.returncode not in (0, 1):          # 1: the cell ran and its failure is recorded
        raise RuntimeError(f"kdbench {kind} {' '.join(argv)} exited with {proc.returncode}")
    return proc.returncode


def execute_ray(plan, args, log) -> int:
    """Send the plan's cells to Ray; returns the grid's exit status (0, or 1 if a cell failed)."""
    ray = _import_ray()
    if not ray.is_initialized():
        ray.init(address=args.ray_address, include_dashboard=False, log_to_driver=True,
                 **({} if args.ray_address else {"num_cpus": os.cpu_count()}))
    gpus = 1 if args.device == "cuda" or (args.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0) else 0
    task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=RETRIES, retry_exceptions=True)(_cell_command)
    common = common_args(args)
    from .registry import DISTILLERS
    t0 = time.perf_counter()
    # 1. teachers, each once
    need = list(dict.fromkeys(r.teacher for r in plan.runs if DISTILLERS.get(r.distiller).requires_teacher))
    pair_of = {r.teacher: f"{r.teacher}:{r.student}" for r in plan.runs}
    log(f"kdbench: ray: {len(need)} teachers, then {len(plan.runs)} cells ({gpus} GPU per task)")
    teach_rc = ray.get([task.remote("teach", ["--pairs", pair_of[t], *common]) for t in need])
    if any(teach_rc):
        log("kdbench: ray: a teacher could not be prepared; see the task logs")
        return 1
    # 2. cells
    refs = {task.remote("run", ["--distiller", r.distiller, "--pairs", f"{r.teacher}:{r.student}",
                                "--seeds", f"{r.seed},", *common]):
            f"{r.distiller} {r.teacher}->{r.student} seed{r.seed}" for r in plan.runs}
    status, pending = 0, list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        rc = ray.get(done[0])
        status = max(status, rc)
        log(f"kdbench: ray: {len(refs) - len(pending)}/{len(refs)} done: {refs[done[0]]}"
            + (" (failed, recorded)" if rc else ""))
    log(f"kdbench: ray: grid finished in {time.perf_counter() - t0:.0f}s; records under {plan.out / plan.preset.name}")
    return status
