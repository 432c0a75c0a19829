"""Where a grid's cells run. One plan type (`Plan`: validated, serialisable) and one interface,
`executor.run(plan) -> exit status`, implemented by the local executor (this process and its
torchrun peers), the `--workers N` executor (local processes sharing the grid through its locks)
and the Ray executor (one task per cell). Worker processes and Ray tasks receive the driver's
cells as JSON, so every option that shapes a cell reaches them unchanged."""

from typing import Protocol

from .local import LocalExecutor, StopOnSignal
from .plan import Plan
from .ray_tasks import RayExecutor
from .workers import WorkersExecutor

__all__ = ["Executor", "LocalExecutor", "Plan", "RayExecutor", "StopOnSignal", "WorkersExecutor"]


class Executor(Protocol):
    def run(self, plan: Plan) -> int:
        """Run the plan's missing cells; 0, 1 if a cell failed, 128+signal if stopped."""
