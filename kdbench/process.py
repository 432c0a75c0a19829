"""Facts about this process that records and benchmarks state: the allocator it runs with, the
library versions and the source revision. A low module: the record contract (results), the benchmarks
and the entry point (launch) all read it; it imports nothing of kdbench but its version, and no torch
at import: the entry point reads it before it re-executes itself under tcmalloc."""

import functools
import platform
import subprocess
from pathlib import Path
from typing import Optional

from . import __version__

ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")


def malloc_in_use(maps: str = "/proc/self/maps") -> str:
    """The allocator this process runs with: a preloaded one that is actually mapped, else "system"."""
    try:
        with open(maps) as f:
            loaded = f.read()
    except OSError:                    # not Linux: nothing is preloaded by kdbench
        return "system"
    return next((name for name in ALLOCATORS if f"lib{name}" in loaded), "system")



@functools.lru_cache(maxsize=1)
def source_revision() -> Optional[str]:
    """The git commit of the kdbench source tree ("+dirty" when modified), or None outside a checkout."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        def git(*args):
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "kdbench", "distillers", "benchmarks")
        return git("rev-parse", "--short=12", "HEAD") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions(device, world_size: int = 1) -> dict:
    """What ran a record: kdbench and its source revision, torch, timm, Python, the device (a
    torch.device), the world size and the allocator."""
    import timm     # deferred: the entry point imports this module before torch may load (see the docstring)
    import torch    # deferred: as timm
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"kdbench": __version__, "source": source_revision(), "torch": torch.__version__,
            "timm": timm.__version__, "python": platform.python_version(), "device": f"{device.type}: {name}",
            "world_size": world_size, "malloc": malloc_in_use()}
