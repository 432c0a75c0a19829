"""The run context: what a process knows about where it runs, passed down explicitly."""

import sys
from dataclasses import dataclass
from typing import Callable, Optional

from .distributed import SINGLE, DistInfo


@dataclass(frozen=True)
class RunContext:
    """Where this process runs: its place in a torchrun group and, under `kdbench run --workers N`,
    its worker index. Rank 0 speaks for all ranks; a worker prefixes its lines with its index."""

    dist: DistInfo = SINGLE
    worker: Optional[int] = None
    sink: Optional[Callable[[str], None]] = None     # where log lines go; None: stderr

    def log(self, msg: str) -> None:
        if not self.dist.is_main:
            return
        line = f"[worker {self.worker}] {msg}" if self.worker is not None else msg
        if self.sink is not None:
            self.sink(line)
        else:
            print(line, file=sys.stderr, flush=True)

    @property
    def progress_row(self) -> int:
        """The terminal row of this process's progress bar (one per worker)."""
        return self.worker or 0


LOCAL = RunContext()
SILENT = RunContext(sink=lambda line: None)
