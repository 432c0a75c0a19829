"""`kdbench run --workers N`: N local processes share one grid through its run locks.

Each worker is an ordinary `kdbench run` of the same grid with 1/N of the CPU threads (and, with
at least N GPUs, a GPU of its own). The run locks hand every cell to one worker; a worker whose
next teacher another worker is training takes other teachers' cells meanwhile. Meant for nodes with
several GPUs; on a 2-core CPU it measured no faster than one process (benchmarks/README.md).
"""

import os
import signal
import subprocess
import sys
from typing import List

from .ray_executor import common_args


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                 # not Linux
        return os.cpu_count() or 1


def worker_env(k: int, workers: int, gpus: int) -> dict:
    """Worker k's environment: its share of the CPU threads and, with a GPU per worker, the k-th of
    the visible GPUs (the k-th entry of an existing CUDA_VISIBLE_DEVICES mask, which `gpus` counts)."""
    env = {**os.environ, "KDBENCH_WORKER": str(k)}
    env.setdefault("OMP_NUM_THREADS", str(max(1, cpu_count() // workers)))
    if gpus >= workers:
        mask = [d.strip() for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        env["CUDA_VISIBLE_DEVICES"] = mask[k] if k < len(mask) else str(k)
    return env


def run_argv(args) -> List[str]:
    argv = ["run", "--distiller", args.distiller, "--pairs", args.pairs, *common_args(args)]
    return argv + (["--seeds", args.seeds] if args.seeds else [])


def execute_workers(args, log) -> int:
    """Run the grid in `args.workers` processes; the grid's status (0, 1 if a cell failed, 128+signal
    if stopped)."""
    import torch
    gpus = torch.cuda.device_count() if args.device in ("auto", "cuda") else 0
    argv = [sys.executable, "-m", "kdbench", *run_argv(args)]
    envs = [worker_env(k, args.workers, gpus) for k in range(args.workers)]
    log(f"kdbench: {args.workers} worker processes, {envs[0]['OMP_NUM_THREADS']} threads each"
        + (", one GPU each" if gpus >= args.workers else ""))
    # stdout (each worker's leaderboard) is dropped: the parent prints the grid's; stderr is the log.
    # Own sessions: a Ctrl-C reaches the workers once, forwarded by `forward`, as in a single process.
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, start_new_session=True) for env in envs]

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
