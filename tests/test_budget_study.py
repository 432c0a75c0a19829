"""The budget study's report (benchmarks/budget_study.py): tables, CSV and findings computed by hand on
made-up rows, and the committed report regenerated from the committed records."""

from pathlib import Path

import pytest

from benchmarks import budget_study as bs


def row(pair, method, budget, seed, top1):
    return {"pair": pair, "method": method, "method_display": method.upper(), "budget": budget, "seed": seed,
            "top1": top1}


DATA = [row("A → B", m, b, s, v) for m, b, s, v in [
    ("kd", 1, 0, 50.0), ("kd", 1, 1, 52.0), ("kd", 4, 0, 60.0), ("kd", 4, 1, 60.0),
    ("pat", 1, 0, 45.0), ("pat", 1, 1, 47.0), ("pat", 4, 0, 59.0), ("pat", 4, 1, 60.0),
    ("pat-faithful", 1, 0, 44.0), ("pat-faithful", 4, 0, 61.0)]]


def test_table_by_hand():
    md = bs.table_md(DATA)
    assert "| KD | 51.00 ± 1.41 (2) | 60.00 ± 0.00 (2) | — | — |" in md
    assert "| PAT | 46.00 ± 1.41 (2) | 59.50 ± 0.71 (2) | -5.00 | -0.50 |" in md
    assert "| PAT-FAITHFUL | 44.00 (1) | 61.00 (1) | -7.00 | +1.00 |" in md
    assert "- A → B: PAT − KD -5.00 at 1×, -0.50 at 4×; the gap shrinks from 1× to 4×." in md
    assert "- A → B: PAT (official) − PAT -2.00 at 1×, +1.50 at 4×." in md
    assert "- A → B: best at 4×: pat-faithful (61.00)." in md
    assert bs.table_csv(DATA).splitlines()[1] == "A → B,kd,1,0,50.0"
    assert bs.table_md([]) == "No finished runs yet.\n"


@pytest.mark.skipif(not (bs.ROOT / "runs").is_dir(), reason="no committed budget-study records yet")
def test_committed_report_regenerates(tmp_path):
    data = bs.rows(bs.ROOT)
    assert (bs.ROOT / "budget.md").read_text() == bs.table_md(data)
    assert (bs.ROOT / "budget.csv").read_text() == bs.table_csv(data)
    readme = (bs.ROOT / "README.md").read_text()
    assert bs.table_md(data) in readme
