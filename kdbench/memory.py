"""Peak memory of a run or a benchmark row: CUDA's allocator peak, or the CPU process's peak resident set."""

import ctypes
import resource

import torch


def reset_peak_memory(device: torch.device):
    """Start a new peak-memory measurement (per run, per benchmark row): CUDA's allocator peak, or on
    Linux CPUs the process's peak resident set (VmHWM, reset through /proc/self/clear_refs)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    release_free_memory()      # what an earlier run freed but the allocator kept would count as this run's
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:          # not Linux: the peak stays the process's since its start
        pass


def release_free_memory():
    """Hand the allocator's free pages back to the OS: tcmalloc's ReleaseFreeMemory, glibc's malloc_trim."""
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):       # no process-wide symbol lookup (Windows)
        return
    for name, args in (("MallocExtension_ReleaseFreeMemory", ()), ("malloc_trim", (0,))):
        fn = getattr(libc, name, None)
        if fn is not None:
            fn(*args)
            return


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since the last `reset_peak_memory`: CUDA allocated bytes, or the CPU process's RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
