"""End-to-end smoke runs through the CLI (the `smoke` preset: procedural data, seconds per run)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kdbench.cli import main

PAIR = "kdbench_vit_s_xs:kdbench_resnet18_xs"
PAIRS = PAIR + ",kdbench_convnext_t_xs:kdbench_deit_t_xs"


def records(root):
    return sorted((json.loads(p.read_text()) for p in Path(root).rglob("result.json")
                   if "teachers" not in p.parts), key=lambda r: (r["teacher"], r["student"], r["distiller"]))


@pytest.mark.slow
def test_grid_two_distillers_then_skip_then_config_change(smoke_out, capsys):
    out = smoke_out(PAIRS)                  # the session's teachers: loaded, not trained again
    assert main(["run", "--distiller", "kd,vanilla", "--pairs", PAIRS, "--preset", "smoke",
                 "--seeds", "1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert ": training (" not in err
    # the grid's progress: runs and the time left; teachers loaded from the cache are not "to train"
    assert re.search(r"^kdbench: grid 1/4 runs, \d+s per run, about \d+m left$", err, re.M)
    assert re.search(r"^kdbench: grid 4/4 runs, \d+s per run, about 0m left$", err, re.M)
    recs = records(out)
    assert len(recs) == 4 and all(r["status"] == "done" for r in recs)
    kd = [r for r in recs if r["distiller"] == "kd"]
    assert all(r["teacher_top1"] is not None and r["extra_params"] == 0 for r in kd)
    assert (out / "smoke" / "kdbench_vit_s_xs__kdbench_resnet18_xs" / "kd" / "seed0" / "metrics.jsonl").exists()
    manifest = json.loads((out / "teachers" / "smoke" / "kdbench_vit_s_xs" / "manifest.json").read_text())
    assert {"architecture", "dataset", "top1", "recipe_hash", "timm_version", "sha256"} <= set(manifest)

    # Second invocation: everything is done, nothing is retrained.
    assert main(["run", "--distiller", "kd,vanilla", "--pairs", PAIRS, "--preset", "smoke",
                 "--seeds", "1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "4 already done, 0 to run" in err and "training" not in err

    # Same cells with another configuration: refused, nothing overwritten.
    before = (out / "smoke" / "kdbench_vit_s_xs__kdbench_resnet18_xs" / "kd" / "seed0" / "result.json").read_text()
    assert main(["run", "--distiller", "kd", "--pairs", PAIRS, "--preset", "smoke", "--seeds", "1",
                 "--out", str(out), "--set", "distiller.temperature=4"]) == 2
    assert "different configuration" in capsys.readouterr().err
    after = (out / "smoke" / "kdbench_vit_s_xs__kdbench_resnet18_xs" / "kd" / "seed0" / "result.json").read_text()
    assert before == after


@pytest.mark.slow
def test_failed_run_is_recorded_and_grid_continues(smoke_out, capsys):
    """A KD weight beyond float32's range (configs refuse inf itself) makes the fp32 KD loss infinite at
    its first step (the KL between a trained teacher and a fresh student is > 0), whatever the pair: the KD cell fails with a record, and the
    grid goes on to the vanilla cell after it, which has no KD term and trains."""
    out = smoke_out(PAIR)
    code = main(["run", "--distiller", "kd,vanilla", "--pairs", PAIR, "--preset", "smoke", "--seeds", "1",
                 "--out", str(out), "--set", "distiller.kd.kd_weight=1e300"])
    err = capsys.readouterr().err
    recs = records(out)
    assert [(r["distiller"], r["status"]) for r in recs] == [("kd", "failed"), ("vanilla", "done")], err[-2000:]
    assert code == 1
    kd = recs[0]
    assert "non-finite loss at step 0 " in kd["error"] and "kd" in kd["error"].split("epoch: ")[1]
    assert kd["config_hash"] and kd["config"]["distiller"]["kd_weight"] == 1e300
    assert err.index("FAILED: ") < err.index("] vanilla ")                  # the grid went on after it


LAYOUT_PAIRS = ("swin_tiny_patch4_window7_224:resnet18,convnext_tiny:deit_tiny_patch16_224,"      # tokens->map, map->tokens,
                "mixer_b16_224:swin_pico_patch4_window7_224,vit_small_patch16_224:mobilenetv2_100")  # tokens->tokens, ->map
EVERY_MEMBER = LAYOUT_PAIRS + ",convnext_tiny:resmlp_12_224"        # the 4 teachers and the 5 students


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_smoke_grid_all_pairs_every_baseline(smoke_out):
    """The acceptance command of the foundation and baseline issues, through the console entry point, on
    five pairs that hold every teacher and every student (the full 12-pair grid costs the suite two
    minutes; every distiller meets every layout in-process in tests/test_conformance.py, and PAT's grid
    below runs all 12 pairs): each distiller exits 0 with 5 done records; the grid ends with the
    leaderboard on stdout. (The teachers are the session's.)"""
    out = smoke_out(EVERY_MEMBER)
    names = ["kd", "fitnet", "reviewkd", "ofa"]           # DKD: in-process on every layout (test_conformance.py)
    proc = subprocess.run([sys.executable, "-m", "kdbench", "run", "--distiller", ",".join(names), "--pairs", EVERY_MEMBER,
                           "--preset", "smoke", "--seeds", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ": training (" not in proc.stderr                # the copied teachers were loaded
    recs = records(out)
    assert all(r["status"] == "done" for r in recs)
    for name in names:
        mine = [r for r in recs if r["distiller"] == name]
        assert len(mine) == 5 and len({(r["teacher"], r["student"]) for r in mine}) == 5, name
        assert all((r["extra_params"] > 0) == (name in ("fitnet", "reviewkd", "ofa")) for r in mine)
    assert len(list((out / "teachers" / "smoke").glob("*/manifest.json"))) == 4
    assert "kdbench leaderboard: preset smoke" in proc.stdout
    assert "Swin-T → ResNet18" in proc.stdout                  # paper names where people read


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_smoke_grid_of_rsd_dist_and_crd(smoke_out):
    """Issue 31's acceptance command through the CLI, on one pair per layout of teacher and student (the
    all-pairs command, 36 of 36 done, ran on 2026-12-08 in 67 s; every layout is also checked in-process
    by tests/test_conformance.py): RSD, DIST and CRD, 12 of 12 done."""
    out = smoke_out(LAYOUT_PAIRS)
    proc = subprocess.run([sys.executable, "-m", "kdbench", "run", "--distiller", "rsd,dist,crd", "--pairs", LAYOUT_PAIRS,
                           "--preset", "smoke", "--seeds", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    recs = records(out)
    assert len(recs) == 12 and all(r["status"] == "done" for r in recs)
    assert all((r["extra_params"] > 0) == (r["distiller"] != "dist") for r in recs)
    assert "kdbench leaderboard: preset smoke" in proc.stdout and "CRD" in proc.stdout and "RSD" in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_smoke_grid_pat_then_attention_picture(tmp_path, smoke_out):
    """PAT's acceptance command, then `kdbench viz attention` on one of its runs."""
    out = smoke_out("all")
    proc = subprocess.run([sys.executable, "-m", "kdbench", "run", "--distiller", "pat", "--pairs", "all",
                           "--preset", "smoke", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    recs = records(out)
    assert len(recs) == 12 and all(r["status"] == "done" and r["distiller"] == "pat" for r in recs)
    assert all(r["extra_params"] > 0 and r["config"]["distiller"]["dim"] == 32 for r in recs)   # the preset's d
    run = out / "smoke" / "kdbench_convnext_t_xs__kdbench_deit_t_xs" / "pat" / "seed0"
    png = tmp_path / "attn.png"
    proc = subprocess.run([sys.executable, "-m", "kdbench", "viz", "attention", "--run", str(run), "--out", str(png),
                           "--images", "64"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    rows = [line for line in proc.stdout.splitlines() if line.strip().startswith("stage")]
    assert len(rows) == 4
    for line in rows:        # each query stage's attention mass over the four key stages sums to 1
        assert sum(float(v) for v in line.split(":")[1].split()) == pytest.approx(1.0, abs=0.01)
    bad = subprocess.run([sys.executable, "-m", "kdbench", "viz", "attention", "--run", str(tmp_path),
                          "--out", str(tmp_path / "x.png")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "not a run directory" in bad.stderr and not (tmp_path / "x.png").exists()
