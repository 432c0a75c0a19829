"""The miniature pilot's criteria (studies/mini_pilot_report.py) on hand-made rows, and the committed
pilot table regenerated from the committed records."""

import json
from pathlib import Path

import pytest

from studies import mini_pilot, mini_pilot_report as rep

ROOT = Path(__file__).resolve().parents[1]


def test_last_quarter_gain_reads_the_scored_epochs(tmp_path):
    rows = [{"kind": "epoch", "epoch": e, "loss": {"gt": 1.0}} for e in range(1, 25)]
    for row, top1 in zip(rows[5::6], (70.0, 80.0, 84.0, 84.6)):      # scored at 6, 12, 18, 24
        row["top1"] = top1
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert rep.last_quarter_gain(tmp_path) == pytest.approx(0.6)    # 24 vs 18 (three quarters of 24)
    (tmp_path / "metrics.jsonl").write_text("")
    assert rep.last_quarter_gain(tmp_path) is None


def _row(pair, headroom, kd_gain, s_last, kd_last, tau=None):
    return {"paper_pair": pair, "headroom": headroom, "kd_gain": kd_gain, "scratch_last_quarter": s_last,
            "kd_last_quarter": kd_last, "tau": tau}


def test_verdicts_count_each_criterion_by_hand():
    rows = [_row("a", 5.0, 2.0, 0.5, 0.2, 1.0), _row("b", 2.0, 0.9, 0.2, 1.5, 0.333),
            _row("c", 3.0, 1.2, 0.9, 0.1), _row("d", 10.0, 0.5, 1.0, 0.0, 0.6)]
    v = rep.verdicts(rows, noise_level=0.5)
    assert v["(a) headroom >= 3 on every pair"] == "3 of 4"               # a, c, d
    assert v["(b) plateau < 1 on every pair (From scratch and KD)"] == "2 of 4"   # b: KD +1.5; d: scratch 1.0
    assert v["(c) KD - From scratch >= 2 x noise (1.00) on >= 9 of 12"] == "2 of 4"   # a 2.0, c 1.2
    assert v["(d) Kendall tau >= 0.6 at 1x vs 2x on >= 3 pairs"] == "2 of 3 pairs run at both budgets"


def test_the_pilot_plan_runs_from_scratch_once_per_student():
    students = [p.split(":")[1] for p in mini_pilot.SCRATCH_PAIRS]
    assert sorted(students) == sorted({p.split(":")[1] for p in mini_pilot.ALL_PAIRS}) and len(students) == 5
    from kdbench.grid import parse_seeds
    for _, _, args in mini_pilot.stages():          # every stage's seeds parse as kdbench parses them
        if "--seeds" in args:
            assert parse_seeds(args[args.index("--seeds") + 1])
    names = [name for name, _, _ in mini_pilot.stages()]
    assert names[0] == "teachers" and names.index("a-kd") < names.index("a-kd-seeds") < names.index("a2-order") < names.index("b-kd")


def test_committed_pilot_table_regenerates():
    where = ROOT / "benchmarks" / "results" / "mini-pilot"
    if not (where / "pilot.md").exists():
        pytest.skip("no pilot table committed yet")
    for name, text in rep.render(where / "runs").items():
        assert text == (where / name).read_text(), f"{name} does not regenerate from its records"
