"""benchmarks/results/performance/README.md, "The newcomer's first command, cold": every figure of the
section recomputed from what the run left (benchmarks/results/newcomer/: its output under
/usr/bin/time -v, its records and teacher manifests) and from the committed tiny leaderboard."""

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
COLD = RESULTS / "newcomer"
README = (RESULTS / "performance" / "README.md").read_text()
SECTION = " ".join(README[README.index("## The newcomer's first command, cold"):].split())   # one line
LOG = (COLD / "cold.log").read_text()


def records(root: Path):
    return {p.relative_to(root).as_posix(): json.loads(p.read_text())
            for p in sorted(root.glob("tiny/*/kd/seed*/result.json"))}


def teachers(root: Path):
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(root.glob("teachers/tiny/*/manifest.json"))}


COLD_RUNS, COLD_TEACHERS = records(COLD / "runs"), teachers(COLD / "runs")
BOARD_RUNS, BOARD_TEACHERS = records(RESULTS / "tiny" / "runs"), teachers(RESULTS / "tiny" / "runs")


def elapsed_s() -> float:
    h_m_s = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", LOG)[1].split(":")
    return sum(float(x) * 60 ** k for k, x in enumerate(reversed(h_m_s)))


def test_wall_clock_exit_status_and_run_count():
    wall = elapsed_s()
    assert wall <= 25 * 60 and re.search(r"^\s*Exit status: 0$", LOG, re.M)
    assert "kdbench run --distiller kd --pairs all --out" in LOG and len(COLD_RUNS) == 36
    assert f"**{int(round(wall)) // 60} min {int(round(wall)) % 60} s** wall clock" in SECTION
    finished = re.search(r"kdbench: finished 36 runs in \d+s, 0 failed", LOG)[0]
    assert f"`{finished}`" in SECTION
    tiny = yaml.safe_load((ROOT / "benchmarks" / "presets" / "tiny.yaml").read_text())["description"]
    assert f"took {int(round(wall)) // 60} min {int(round(wall)) % 60} s cold" in tiny
    assert f"({round(wall):,} s," in tiny


def test_where_the_time_went():
    assert len(COLD_TEACHERS) == 4 and all("training (not cached)" in LOG.split(f"teacher {t}:")[1][:40]
                                           for t in COLD_TEACHERS)
    teach = sum(m["wall_s"] for m in COLD_TEACHERS.values())
    runs = [r["wall_s"] for r in COLD_RUNS.values()]
    assert f"trained in {teach:.0f} s together" in SECTION
    names = {"kdbench_swin_t_s": "Swin-T", "kdbench_vit_s_s": "ViT-S", "kdbench_mixer_b_s": "Mixer-B/16",
             "kdbench_convnext_t_s": "ConvNeXt-T"}
    shown = ", ".join(f"{names[t]} {COLD_TEACHERS[t]['wall_s']:.0f} s" for t in names)
    assert f"({shown}:" in SECTION
    assert f"in {sum(runs):.0f} s of `wall_s` ({sum(runs) / len(runs):.1f} s each)" in SECTION
    assert f"the rest, {elapsed_s() - teach - sum(runs):.0f} s," in SECTION


def test_progress_line_quoted_is_in_the_output():
    quoted = re.search(r"e\.g\. `(kdbench: grid [^`]+)`", SECTION)[1]
    assert quoted in LOG and re.search(r"about \d+m left$", quoted)
    assert len(re.findall(r"^kdbench: grid \d+/36 runs, .* left$", LOG, re.M)) == 36


def test_same_runs_and_teachers_as_the_committed_leaderboard():
    assert set(COLD_RUNS) == set(BOARD_RUNS)
    assert all(COLD_RUNS[k]["config_hash"] == BOARD_RUNS[k]["config_hash"] for k in COLD_RUNS)
    assert {t: m["recipe_hash"] for t, m in COLD_TEACHERS.items()} == \
           {t: m["recipe_hash"] for t, m in BOARD_TEACHERS.items()}


def test_reproduction_figures():
    same_teacher = [k for k in COLD_RUNS if COLD_RUNS[k]["teacher_top1"] == BOARD_RUNS[k]["teacher_top1"]]
    exact = [k for k in same_teacher if COLD_RUNS[k]["top1"] == BOARD_RUNS[k]["top1"]]
    worst = max(abs(COLD_RUNS[k]["top1"] - BOARD_RUNS[k]["top1"]) for k in same_teacher)
    assert (f"for the {len(same_teacher)} runs whose teacher reached the committed leaderboard's teacher top-1"
            in SECTION)
    assert f"{len(exact)} give the committed top-1 exactly, the other {len(same_teacher) - len(exact)} differ by" \
           in SECTION
    assert f"up to {worst:.2f} points" in SECTION
    for t, label in (("kdbench_convnext_t_s", "ConvNeXt-T"), ("kdbench_mixer_b_s", "Mixer-B/16")):
        assert COLD_TEACHERS[t]["top1"] == BOARD_TEACHERS[t]["top1"]
        assert f"{label} {BOARD_TEACHERS[t]['top1']:.2f}" in SECTION
    differ = ("kdbench_swin_t_s", "kdbench_vit_s_s")
    assert (f"reach {COLD_TEACHERS[differ[0]]['top1']:.2f} and {COLD_TEACHERS[differ[1]]['top1']:.2f} against the "
            f"committed {BOARD_TEACHERS[differ[0]]['top1']:.2f} and {BOARD_TEACHERS[differ[1]]['top1']:.2f}") in SECTION

