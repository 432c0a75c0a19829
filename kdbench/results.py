"""Run records: schema, atomic writes, reading a results tree."""

import json
import os
import functools
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import timm
import torch

from . import __version__

SCHEMA = 1
PROTOCOL = ("top1/top5: final-epoch test accuracy of the raw student (headline); best_top1: best "
            "epoch on the test set, as the papers report (optimistic, flagged); ema_top1: final EMA student")


def atomic_write_bytes(path: Path, data: bytes):
    """Write to a temp file in the same directory, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj):
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_torch_save(path: Path, obj):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(run_dir: Path) -> Optional[dict]:
    path = Path(run_dir) / "result.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return None


def iter_records(root: Path) -> Iterator[dict]:
    for path in sorted(Path(root).rglob("result.json")):
        rec = read_record(path.parent)
        if rec is not None:
            rec["_dir"] = str(path.parent)
            yield rec


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


def versions(device: torch.device, world_size: int = 1) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"kdbench": __version__, "source": source_revision(), "torch": torch.__version__,
            "timm": timm.__version__, "python": platform.python_version(), "device": f"{device.type}: {name}",
            "world_size": world_size}
