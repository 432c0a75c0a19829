"""`kdbench run --workers N`: N local processes share one grid through its run locks.

Each worker runs the driver's plan (its cells as JSON on stdin) with 1/N of the CPU threads and,
with at least N GPUs, a GPU of its own. The run locks hand every cell to one worker; a worker whose
next teacher another worker is training takes other teachers' cells meanwhile. Meant for nodes with
several GPUs; on a 2-core CPU it measured no faster than one process (benchmarks/README.md).
"""

import os
import signal
import subprocess
import sys
from typing import List

import torch

from ..context import LOCAL, RunContext
from .plan import Plan

WORKER_MODULE = "kdbench.executors.worker"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                 # not Linux
        return os.cpu_count() or 1


def worker_env(k: int, workers: int, gpus: int) -> dict:
    """Worker k's environment: its share of the CPU threads and, with a GPU per worker, the k-th of
    the visible GPUs (the k-th entry of an existing CUDA_VISIBLE_DEVICES mask, which `gpus` counts)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, cpu_count() // workers)))
    if gpus >= workers:
        mask = [d.strip() for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        env["CUDA_VISIBLE_DEVICES"] = mask[k] if k < len(mask) else str(k)
    return env


def worker_argv(k: int) -> List[str]:
    return [sys.executable, "-m", WORKER_MODULE, "--worker", str(k)]


class WorkersExecutor:
    """Runs a plan in `workers` processes; the status is the grid's (0, 1 if a cell failed,
    128+signal if stopped)."""

    def __init__(self, workers: int, context: RunContext = LOCAL):
        self.workers, self.context = workers, context

    def run(self, plan: Plan) -> int:
        gpus = torch.cuda.device_count() if plan.device_name in ("auto", "cuda") else 0
        payload = plan.to_json().encode()
        envs = [worker_env(k, self.workers, gpus) for k in range(self.workers)]
        self.context.log(f"kdbench: {self.workers} worker processes, {envs[0]['OMP_NUM_THREADS']} threads each"
                         + (", one GPU each" if gpus >= self.workers else ""))
        # stdout (each worker's leaderboard) is dropped: the driver prints the grid's; stderr is the
        # log. Own sessions: a Ctrl-C reaches the workers once, forwarded by `forward`.
        procs = [subprocess.Popen(worker_argv(k), env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                  start_new_session=True) for k, env in enumerate(envs)]
        for p in procs:
            p.stdin.write(payload)
            p.stdin.close()

        def forward(signum, frame):
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signum)
        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            codes = [p.wait() for p in procs]
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        stopped = [c for c in codes if c >= 128 or c < 0]
        if stopped:
            return 128 - stopped[0] if stopped[0] < 0 else stopped[0]
        return max(codes)
