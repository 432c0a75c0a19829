"""The grid's progress line (kdbench/executors/progress.py) on a hand-driven clock."""

from kdbench.executors.progress import GridClock, duration


class FakeTime:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_time_left_counts_cells_and_teachers_apart():
    now = FakeTime()
    clock = GridClock(total=4, teachers=2, now=now)
    assert clock.line() == "kdbench: grid 0/4 runs, 0s per run, teachers 0/2 (0s each), about 0m left"
    clock.teacher_prepared(100.0)               # the first teacher trains for 100 s ...
    now.t += 130.0                              # ... and its first cell takes 30 s more
    clock.finished()
    # 3 cells at 30 s, 1 teacher at 100 s: 190 s
    assert clock.line() == "kdbench: grid 1/4 runs, 30s per run, teachers 1/2 (100s each), about 3m left"
    now.t += 3600.0                             # a slow cell: 3630 s of cells over 2 = 1815 s each
    clock.finished()
    assert clock.line().endswith("grid 2/4 runs, 1815s per run, teachers 1/2 (100s each), about 1h02m left")


def test_before_any_teacher_a_teacher_counts_as_a_cell_and_skips_leave_the_total():
    now = FakeTime()
    clock = GridClock(total=3, teachers=1, now=now)
    now.t += 60.0
    clock.finished()
    clock.skipped()                             # left to another process: neither done nor to do
    assert clock.line() == "kdbench: grid 1/2 runs, 60s per run, teachers 0/1 (60s each), about 2m left"
    assert GridClock(total=2, teachers=0, now=now).line() == "kdbench: grid 0/2 runs, 0s per run, about 0m left"


def test_duration():
    assert [duration(s) for s in (0, 29, 31, 3570, 3600, 3725)] == ["0m", "0m", "1m", "1h00m", "1h00m", "1h02m"]
