"""The `kdbench` entry point: the CLI, under tcmalloc when it is installed (issue 18).

CPU training frees and re-allocates the same large activation buffers at every step; glibc's malloc
returns big blocks to the kernel and faults them in again, tcmalloc keeps them. Measured on the tiny
grid's steps in benchmarks/results/performance/README.md ("CPU thread and allocator settings").
On Linux, for the commands that train (`run`, `teach`, `bench`), the entry point re-executes itself
once, with the same interpreter and arguments, before torch is imported, with the library in
LD_PRELOAD. Debian/Ubuntu: `apt-get install libtcmalloc-minimal4`. KDBENCH_MALLOC=system keeps glibc's
allocator; KDBENCH_TCMALLOC=PATH names the library where it is installed elsewhere. An allocator the
user preloads is left alone.
"""

import os
import sys
from typing import List, Mapping, Optional

from .process import ALLOCATORS

TRAINING_COMMANDS = ("run", "teach", "bench")
MALLOC_CHOICES = ("tcmalloc", "system")
TCMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                  "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
                  "/usr/lib64/libtcmalloc_minimal.so.4", "/usr/lib/libtcmalloc_minimal.so.4")
QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}   # no "large alloc" lines in the logs


def tcmalloc_library(env: Mapping[str, str] = os.environ) -> Optional[str]:
    """The tcmalloc shared library to preload, or None when it is not installed."""
    paths = [env["KDBENCH_TCMALLOC"]] if env.get("KDBENCH_TCMALLOC") else TCMALLOC_PATHS
    return next((p for p in paths if os.path.isfile(p)), None)


def preload_env(argv: List[str], env: Mapping[str, str]) -> Optional[dict]:
    """The environment to re-execute `kdbench argv` in, tcmalloc preloaded, or None to go on in this
    process: not a training command, opted out, an allocator (or this library) already preloaded, no library."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in TRAINING_COMMANDS or env.get("KDBENCH_MALLOC", "tcmalloc") == "system":
        return None
    preload = [p for p in env.get("LD_PRELOAD", "").replace(" ", ":").split(":") if p]
    lib = tcmalloc_library(env)
    if lib is None or lib in preload or any(name in p for p in preload for name in ALLOCATORS):
        return None
    return {**QUIET, **env, "LD_PRELOAD": ":".join([lib, *preload])}


def reexec_under_tcmalloc(argv: List[str]) -> None:
    """Re-execute this process (same interpreter, same command line) under tcmalloc when `preload_env`
    says so for the kdbench arguments `argv`; return only when it does not (or cannot) re-execute."""
    env = preload_env(argv, os.environ) if sys.platform == "linux" and sys.executable else None
    if env is not None:
        try:
            os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
        except OSError:            # cannot re-execute: run as we are, with glibc's allocator
            pass


def main() -> int:
    """`kdbench ...`: the CLI, re-executed once under tcmalloc where that applies."""
    choice = os.environ.get("KDBENCH_MALLOC", "tcmalloc")
    if choice not in MALLOC_CHOICES:
        print(f"kdbench: error: KDBENCH_MALLOC={choice!r}; choose from: {', '.join(MALLOC_CHOICES)}", file=sys.stderr)
        return 2
    reexec_under_tcmalloc(sys.argv[1:])
    from .cli import main as cli_main      # deferred: the CLI loads torch, which must follow the re-exec
    return cli_main(sys.argv[1:])
