"""The local executor: a plan's cells in this process (and its torchrun peers), teacher by teacher."""

import shutil
import signal
import threading
import time
from collections import deque
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from ..config import RunConfig
from ..context import LOCAL, RunContext
from ..engine import Interrupted, Trainer
from ..errors import UsageError
from ..locks import RunLock
from ..process import source_revision
from ..registry import DISTILLERS
from ..results import RESULT_FILE, RunRecord, read_record, write_record
from ..teachers import get_teacher, teacher_cached, teacher_in_use
from .plan import Plan
from .progress import GridClock


class TeacherUnavailable(RuntimeError):
    """A cell's teacher could not be prepared (its cells fail with this message; the grid goes on)."""


class LocalExecutor:
    """Runs the plan's missing cells. SIGINT/SIGTERM finish the current step, save a checkpoint and
    stop (exit 130/143); a rerun resumes. Cells another kdbench process holds (a lock in the run
    directory) are left to it; under torchrun, rank 0 decides and every rank trains each cell."""

    def __init__(self, context: RunContext = LOCAL):
        self.context = context
        self.log = context.log
        self._clock, self._to_train = GridClock(0, 0), set()

    def run(self, plan: Plan) -> int:
        """The grid's exit status: 0, 1 if a cell failed, 128+signal if stopped."""
        dist, main = self.context.dist, self.context.dist.is_main
        source_revision()       # cached now: records name the source this process loaded, not a later tree
        todo, skipped, error = dist.broadcast(self._todo(plan) if main else None)   # rank 0 reads the records
        if error:
            raise UsageError(error)
        self.log(f"kdbench: {len(plan.runs)} runs ({skipped} already done, {len(todo)} to run) on {plan.device}")
        # By teacher, so each teacher is trained (or loaded) once and reused. A cell whose teacher
        # another process is training right now waits its turn behind the other teachers' cells.
        order = {t: i for i, t in enumerate(plan.teachers)}
        queue = deque(sorted((plan.runs[i] for i in todo), key=lambda r: order.get(r.teacher, len(order))))
        needs_teacher = {r.teacher for r in queue if DISTILLERS.get(r.distiller, r.task).requires_teacher}
        # the line counts the teachers to train apart; loading a cached one is part of its first cell
        self._to_train = {t for t in needs_teacher if main and not teacher_cached(
            plan.preset, t, plan.data, plan.teacher_cfg, out=plan.out, device=plan.device)}
        self._clock = clock = GridClock(len(queue), len(self._to_train))
        total, done, failed, busy, deferred = len(queue), 0, 0, 0, 0
        self._teacher: Tuple[Optional[str], object, Optional[dict], Optional[str]] = (None, None, None, None)
        with StopOnSignal(self.log) as stop:
            while queue:
                run = queue.popleft()
                if deferred < len(queue) and self._teacher_busy(plan, run):
                    queue.append(run)
                    deferred += 1
                    continue
                deferred, done = 0, done + 1
                label = f"[{done}/{total}] {run.distiller} {run.teacher}->{run.student} seed{run.seed}"
                if dist.any_rank(stop(), plan.device):
                    self.log(f"kdbench: {stop.name} received; stopped before {label}; rerun the same command to go on")
                    return 128 + (stop.signum or signal.SIGTERM)
                outcome = self._cell(plan, run, label, stop)
                if outcome == "stopped":
                    return 128 + (stop.signum or signal.SIGTERM)
                busy += outcome == "busy"
                failed += outcome == "failed"
                if outcome in ("done", "failed"):
                    clock.finished()
                    if total > 1:
                        self.log(clock.line())
                else:                                  # busy, or finished by another process meanwhile
                    clock.skipped()
        self.log(f"kdbench: finished {total - busy} runs in {clock.now() - clock.t0:.0f}s, {failed} failed"
                 + (f", {busy} left to other processes" if busy else "")
                 + f"; records under {plan.out / plan.preset.name}")
        return 1 if failed else 0

    def teach(self, plan: Plan, verify: bool = True) -> List[dict]:
        """Train (or load) and cache every teacher of the plan; their manifests."""
        return [get_teacher(plan.preset, name, plan.data, plan.teacher_cfg, out=plan.out, device=plan.device,
                            context=self.context, verify=verify)[1] for name in plan.teachers]

    # -- one cell ----------------------------------------------------------------------------
    def _todo(self, plan: Plan):
        """(indices of the cells to run, cells already done, an error when a record disagrees)."""
        todo, skipped = [], 0
        for i, run in enumerate(plan.runs):
            rec = None if plan.fresh else read_record(plan.run_dir(run))
            if rec is not None and rec.status == "done":
                if rec.config_hash != run.hash():
                    return [], 0, (f"{plan.run_dir(run) / RESULT_FILE} was produced with a different "
                                   f"configuration (hash {rec.config_hash} != {run.hash()}); use --fresh or "
                                   "another --out")
                skipped += 1
                continue
            todo.append(i)
        return todo, skipped, None

    def _teacher_busy(self, plan: Plan, run: RunConfig) -> bool:
        if not DISTILLERS.get(run.distiller, run.task).requires_teacher or run.teacher == self._teacher[0]:
            return False
        return self.context.dist.broadcast(self.context.dist.is_main
                                           and teacher_in_use(plan.out, plan.preset.name, run.teacher))

    def _cell(self, plan: Plan, run: RunConfig, label: str, stop) -> str:
        """Train one cell under its lock: 'done', 'failed', 'busy' (another process has it), 'skipped'
        (finished meanwhile) or 'stopped' (a signal; its checkpoint is saved)."""
        dist, main, rdir = self.context.dist, self.context.dist.is_main, plan.run_dir(run)
        lock = RunLock(rdir)
        if not dist.broadcast(lock.try_acquire() if main else None):
            self.log(f"{label}: running in another process ({lock.owner()}); skipped")
            return "busy"
        try:
            if plan.fresh and main:
                _clear_run_dir(rdir)
            finished = main and not plan.fresh and (rec := read_record(rdir)) is not None and rec.status == "done"
            if dist.broadcast(finished):
                return "skipped"                       # finished by another process meanwhile
            dist.barrier()
            self.log(label)
            try:
                record = self._train(plan, run, rdir, label, stop, lock)
            except (UsageError, KeyboardInterrupt, Interrupted):
                raise
            except Exception as exc:  # noqa: BLE001 - one failed run never stops the grid
                record = RunRecord.failed(run, exc)
                self.log(f"  FAILED: {record.error}")
            if main:
                write_record(rdir, record)
            return record.status
        except Interrupted as exc:
            self.log(f"kdbench: {stop.name} received: {label} {exc}; rerun the same command to resume")
            return "stopped"
        finally:
            lock.release()

    def _train(self, plan: Plan, run: RunConfig, rdir: Path, label: str, stop, lock):
        teacher, manifest = self._teacher_of(plan, run, stop) if DISTILLERS.get(run.distiller, run.task).requires_teacher \
            else (None, None)
        if run.compile:     # each cell compiles from a fresh dynamo state: no recompile limit carried over
            torch._dynamo.reset()
        trainer = Trainer(run, rdir, device=plan.device, teacher=teacher,
                          teacher_top1=manifest.top1 if manifest else None, context=self.context, label=label,
                          should_stop=stop, on_epoch=lock.refresh)
        return trainer.fit()

    def _teacher_of(self, plan: Plan, run: RunConfig, stop):
        """The cell's teacher: one kept in memory at a time; a teacher that could not be prepared
        fails each of its cells with the same message instead of being retried per cell."""
        name, teacher, manifest, error = self._teacher
        if name != run.teacher:
            self._teacher, teacher, manifest, error = (None, None, None, None), None, None, None
            if plan.device.type == "cuda":    # the previous teacher leaves the GPU before the next one trains
                torch.cuda.empty_cache()
            start = time.perf_counter()
            try:
                teacher, manifest = get_teacher(plan.preset, run.teacher, plan.data, plan.teacher_cfg, out=plan.out,
                                                device=plan.device, context=self.context, should_stop=stop)
                if run.teacher in self._to_train:
                    self._clock.teacher_prepared(time.perf_counter() - start)
            except (UsageError, Interrupted):
                raise
            except Exception as exc:  # noqa: BLE001 - its cells record the failure
                error = f"teacher {run.teacher} unavailable: {exc.__class__.__name__}: {exc}"
            self._teacher = (run.teacher, teacher, manifest, error)
        if error is not None:
            raise TeacherUnavailable(error)
        return teacher, manifest


def _clear_run_dir(rdir: Path):
    """--fresh: remove a run's record, checkpoint and metrics (not the lock we hold)."""
    for path in rdir.iterdir():
        if path.name != ".lock":
            shutil.rmtree(path) if path.is_dir() else path.unlink()


class StopOnSignal:
    """Within the block, the first SIGINT/SIGTERM asks the running training to stop at the end of
    its current step (it saves a checkpoint); a second one interrupts at once."""

    def __init__(self, log=LOCAL.log):
        self.signum, self._previous, self.log = None, {}, log

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def __call__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        self.log(f"kdbench: {self.name}: finishing the current step and saving a checkpoint (again to abort)")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
