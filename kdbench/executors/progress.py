"""The grid's progress line: runs done out of those to run, and the time left."""

import time
from typing import Callable


class GridClock:
    """Times a grid's cells and, apart, the preparation of the teachers it has to train (or to load
    from released files), which only a teacher's first cell pays; loading a cached teacher is part of
    its first cell. The time left is the cells still to run at the mean cell time without teachers,
    plus the teachers still to prepare at the mean preparation time so far (at the mean cell time
    while none has been prepared)."""

    def __init__(self, total: int, teachers: int, now: Callable[[], float] = time.perf_counter):
        self.total, self.teachers_total, self.now = total, teachers, now
        self.done, self.teachers, self.teacher_s = 0, 0, 0.0
        self.t0 = now()

    def teacher_prepared(self, seconds: float):
        self.teachers += 1
        self.teacher_s += seconds

    def finished(self):
        self.done += 1

    def skipped(self):
        """A cell left to another process: not ours to run, not counted."""
        self.total -= 1

    def line(self) -> str:
        cells = max(self.now() - self.t0 - self.teacher_s, 0.0) / max(self.done, 1)
        teacher = self.teacher_s / self.teachers if self.teachers else cells
        left = max(self.total - self.done, 0) * cells + max(self.teachers_total - self.teachers, 0) * teacher
        text = f"kdbench: grid {self.done}/{self.total} runs, {cells:.0f}s per run"
        if self.teachers_total:
            text += f", teachers {self.teachers}/{self.teachers_total} ({teacher:.0f}s each)"
        return f"{text}, about {duration(left)} left"


def duration(seconds: float) -> str:
    """12m, or 1h05m."""
    minutes = int(round(seconds / 60))
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"
