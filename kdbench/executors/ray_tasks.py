"""`kdbench run --executor ray`: every grid cell becomes a Ray task on a cluster.

Teachers first (one task each, trained once and cached), then one task per cell. A task runs the
local executor on a one-cell plan in a worker process (`kdbench.executors.worker`, the cell as
JSON on stdin), so records, locks, checkpoints and resume are exactly those of a local run; the
results tree must be on a filesystem all nodes share. A task whose process dies (a preempted node,
SIGTERM) is retried by Ray and resumes from the cell's last checkpoint. Needs `pip install kdbench[ray]`.
"""

import os
import subprocess
import sys
import time
from typing import List, Optional

from ..context import LOCAL, RunContext
from ..errors import UsageError
from ..registry import DISTILLERS
from .plan import Plan
from .workers import WORKER_MODULE

RETRIES = 3


def _import_ray():
    try:
        import ray      # deferred: Ray is an optional extra (`kdbench[ray]`)
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'kdbench[ray]' (or pip install ray)") from None
    return ray


def run_cell(payload: str, teach: bool = False) -> int:
    """A Ray task: one plan in a worker process; a killed process is an error Ray retries."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("KDBENCH_CELL_THREADS", "1")}
    argv: List[str] = [sys.executable, "-m", WORKER_MODULE] + (["--teach"] if teach else [])
    # stdout (each cell's leaderboard) is dropped: the driver prints the grid's; stderr is the task log
    proc = subprocess.run(argv, input=payload.encode(), env=env, stdout=subprocess.DEVNULL)
    if proc.returncode not in (0, 1):          # 1: the cell ran and its failure is recorded
        raise RuntimeError(f"kdbench worker ({'teach' if teach else 'run'}) exited with {proc.returncode}")
    return proc.returncode


class RayExecutor:
    """Sends a plan's cells to Ray; the status is the grid's (0, or 1 if a cell failed)."""

    def __init__(self, address: Optional[str] = None, context: RunContext = LOCAL):
        self.address, self.context = address, context

    def run(self, plan: Plan) -> int:
        ray, log = _import_ray(), self.context.log
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=True,
                     **({} if self.address else {"num_cpus": os.cpu_count()}))
        gpus = 1 if plan.device_name == "cuda" or (
            plan.device_name == "auto" and ray.cluster_resources().get("GPU", 0) > 0) else 0
        task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=RETRIES, retry_exceptions=True)(run_cell)
        t0 = time.perf_counter()
        need = list(dict.fromkeys(r.teacher for r in plan.runs if DISTILLERS.get(r.distiller, r.task).requires_teacher))
        log(f"kdbench: ray: {len(need)} teachers, then {len(plan.runs)} cells ({gpus} GPU per task)")
        if any(ray.get([task.remote(plan.subset([], [t]).to_json(), True) for t in need])):
            log("kdbench: ray: a teacher could not be prepared; see the task logs")
            return 1
        refs = {task.remote(plan.subset([r]).to_json()): f"{r.distiller} {r.teacher}->{r.student} seed{r.seed}"
                for r in plan.runs}
        status, pending = 0, list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            rc = ray.get(done[0])
            status = max(status, rc)
            log(f"kdbench: ray: {len(refs) - len(pending)}/{len(refs)} done: {refs[done[0]]}"
                + (" (failed, recorded)" if rc else ""))
        log(f"kdbench: ray: grid finished in {time.perf_counter() - t0:.0f}s; records under "
            f"{plan.out / plan.preset.name}")
        return status
