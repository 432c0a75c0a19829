"""Paper scale before it runs: the dry run, the cost planner, gpu_check.sh's CPU self-test, the
official-format stand-in files, and the CUDA-path findings a CPU can exercise (one precision for
training and every evaluation, per-run peak memory)."""

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdbench.context import RunContext, SILENT
from kdbench import engine, teachers
from kdbench.cli import main
from kdbench.config import RecipeConfig, load_preset
from kdbench.data import DataConfig, build_loaders, dataset_sizes
from kdbench.dry_run import dry_run_dir
from kdbench.errors import UsageError
from kdbench.grid import expand_runs, resolve_pairs
from kdbench.official_files import timm_checkpoint, write_cifar100, write_imagenet
from kdbench.data import DatasetInfo
from kdbench.flops import count_step_flops
from kdbench.plan import GPUS
from kdbench.tasks import CLASSIFICATION
from kdbench.leaderboard import collect

ROOT = Path(__file__).resolve().parent.parent
SMOKE_PAIRS = "swin_tiny_patch4_window7_224:resnet18,convnext_tiny:deit_tiny_patch16_224"


# ----------------------------------------------------------------------------- dry run

@pytest.mark.slow
def test_dry_run_measures_every_cell_and_stays_out_of_leaderboards(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["run", "--dry-run", "--preset", "smoke", "--distiller", "kd,pat,vanilla", "--pairs", SMOKE_PAIRS,
                 "--seeds", "3", "--dry-steps", "2", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    summary = json.loads((dry_run_dir(out, "smoke") / "summary.json").read_text())
    rows = summary["rows"]
    assert len(rows) == 6 and all(r["status"] == "done" for r in rows) and summary["seeds"] == 3
    for r in rows:
        assert r["step_s"] > 0 and r["peak_mem_mb"] > 0 and r["steps"] == 2
        assert r["steps_per_epoch"] == 1024 // 64 and r["num_train"] == 1024     # the smoke set's full size
        assert math.isclose(r["projected_run_s"], r["epochs"] * r["projected_epoch_s"], abs_tol=0.1)
        assert r["projected_epoch_s"] >= r["steps_per_epoch"] * r["step_s"] - 0.01
    pat = [r for r in rows if r["distiller"] == "pat"]
    assert all(r["extra_params"] > 0 and r["teacher_note"].startswith("freshly initialised") for r in pat)
    assert math.isclose(summary["projected_grid_h"], 3 * sum(r["projected_run_h"] for r in rows), abs_tol=0.02)
    assert table.count("| kdbench_") == 6 and "projected" in table
    assert not list(out.rglob("result.json")) and not (out / "teachers").exists()   # nothing trained or recorded
    with pytest.raises(UsageError, match="no run records"):
        collect(out)


def test_dry_run_rejects_executors_and_bad_steps(tmp_path, capsys):
    for extra in (["--workers", "2"], ["--executor", "ray"], ["--dry-steps", "0"]):
        assert main(["run", "--dry-run", "--preset", "smoke", "--distiller", "kd", "--pairs", SMOKE_PAIRS,
                     "--out", str(tmp_path), *extra]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_dry_run_of_the_paper_preset_loads_released_teachers(tmp_path, capsys):
    """One paper pair at 224 px with the real timm models, CIFAR-100 in torchvision's format and a
    teacher saved as timm's CheckpointSaver does, batch 2: proves the whole path a GPU user takes."""
    data = write_cifar100(tmp_path / "data", train=256, test=8)
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    preset = load_preset("paper")
    from kdbench.models import create_model
    teacher = create_model("convnext_tiny", num_classes=100, in_chans=3, img_size=224)
    torch.save(timm_checkpoint(teacher, ema=teacher, prefix="module."), zoo / "convnext_tiny_cifar100.pth")
    out = tmp_path / "runs"
    code = main(["run", "--dry-run", "--preset", "paper", "--distiller", "kd,fitnet", "--pairs",
                 "convnext_tiny:resmlp_12_224", "--dry-steps", "1", "--data-root", str(data), "--device", "cpu",
                 "--set", "recipe.batch_size=2", "--set", f"teacher.checkpoint_dir={zoo}", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = json.loads((dry_run_dir(out, "paper") / "summary.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["done", "done"]
    assert all(r["teacher_note"] == "loaded, not evaluated (dry run)" for r in rows)
    assert all(r["num_train"] == 50000 and r["epochs"] == preset.vit_mlp.epochs for r in rows)
    with torch.device("meta"):          # a parameter count needs shapes only, not 224-px weights
        student = create_model("resmlp_12_224", num_classes=100, in_chans=3, img_size=224)
    assert rows[0]["student_params"] == sum(p.numel() for p in student.parameters())


# ----------------------------------------------------------------------------- plan

def _distiller(name, pair="swin_tiny_patch4_window7_224:resnet18"):
    preset = load_preset("smoke")
    run = expand_runs(preset, resolve_pairs(pair, preset), [name], [0], data=preset.data,
                      teacher_cfg=preset.teacher, overrides={})[0]
    from kdbench.models import create_feature_model
    torch.manual_seed(0)
    teacher = create_feature_model(run.teacher, num_classes=10, in_chans=3, img_size=16)
    return engine.build_distiller(run, num_classes=10, in_chans=3, img_size=16, teacher=teacher,
                                  device=torch.device("cpu")), teacher


INFO = DatasetInfo("synthetic", 10, 3, 16, 0, 0, "")


def test_kd_step_flops_are_vanilla_plus_one_teacher_forward():
    from torch.utils.flop_counter import FlopCounterMode
    kd, teacher = _distiller("kd")
    vanilla, _ = _distiller("vanilla")
    f_kd = count_step_flops(kd, CLASSIFICATION, INFO)
    f_vanilla = count_step_flops(vanilla, CLASSIFICATION, INFO)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        teacher.logits(torch.zeros(2, 3, 16, 16))
    assert f_kd["train_flops_per_img"] == f_vanilla["train_flops_per_img"] + counter.get_total_flops() / 2
    assert f_kd["eval_flops_per_img"] == f_vanilla["eval_flops_per_img"] > 0
    pat, _ = _distiller("pat")
    assert count_step_flops(pat, CLASSIFICATION, INFO)["train_flops_per_img"] > f_kd["train_flops_per_img"]


def test_plan_projects_flops_and_hours(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", "--preset", "smoke", "--pairs", "swin_tiny_patch4_window7_224:resnet18",
                 "--distiller", "kd,pat", "--seeds", "2", "--utilisation", "0.5", "--gpus", "H100-SXM,A100",
                 "--json-out", str(out)]) == 0
    text = capsys.readouterr().out
    p = json.loads(out.read_text())
    assert p["utilisation"] == 0.5 and set(p["gpus"]) == {"H100-SXM", "A100"}
    for c in p["cells"]:
        trained = (1024 // 64) * 64
        expect = c["epochs"] * (trained * c["train_flops_per_img"] + 256 * c["eval_flops_per_img"])
        assert math.isclose(c["recipe_flops"], expect, rel_tol=1e-9)
        assert math.isclose(c["gpu_hours"]["A100"], round(expect / (312e12 * 0.5) / 3600, 3), abs_tol=1e-3)
    assert math.isclose(p["grid_flops"], 2 * sum(c["recipe_flops"] for c in p["cells"]), rel_tol=1e-9)
    pair = "kdbench_swin_t_xs:kdbench_resnet18_xs"
    assert p["pat_kd_ratios"][pair] > 1 and "Paper's measured ratio: 3.2×" in text
    assert main(["plan", "--preset", "smoke", "--gpus", "B300"]) == 2
    assert "valid choices: " + ", ".join(GPUS) in capsys.readouterr().err


# ----------------------------------------------------------------------------- committed results

@pytest.mark.parametrize("stem", ["dry-run-paper-cpu", "dry-run-imagenet-cpu", "plan-paper", "plan-imagenet"])
def test_committed_tables_are_rendered_from_their_json(stem):
    sys.path.insert(0, str(ROOT))
    from studies.paper_dry_run import render
    data = json.loads((ROOT / "benchmarks" / "results" / f"{stem}.json").read_text())
    assert (ROOT / "benchmarks" / "results" / f"{stem}.md").read_text() == render(data) + "\n"
    if stem.startswith("dry-run"):
        assert all(r["status"] == "done" for r in data["rows"])
        assert len(data["rows"]) == {"paper": 12 * 7, "imagenet": 15 * 3}[data["preset"]]


# ----------------------------------------------------------------------------- gpu_check.sh

@pytest.mark.slow
def test_gpu_check_cpu_self_test(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), "--tiny"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((out / "gpu-check.json").read_text())
    assert [s["step"] for s in result["steps"]] == ["probe", "plan", "dry-eager", "dry-compile", "dry-fused", "faithful",
                                                     "faithful-compile", "heaviest", "overhead", "teach-twice",
                                                     "detection", "boxes", "tiny"]
    assert result["ok"] and all(s["rc"] == 0 for s in result["steps"])
    modes = [c["mode"] for c in result["dry_run"]]
    assert {m: modes.count(m) for m in set(modes)} == {"eager": 6, "compile": 6, "fused": 2, "faithful": 2,
                                                       "faithful-compile": 2, "heaviest": 1}
    assert all(c["status"] == "done" for c in result["dry_run"])
    assert all(c["utilisation"] > 0 for c in result["dry_run"] if c["mode"] != "heaviest")   # the plan's cells
    assert result["boxes"]["ok"] and result["boxes"]["proposals"] == ["float32"]
    assert [r["distiller"] for r in result["overhead"]] == ["kd"] and result["overhead"][0]["engine_over_bare"] > 0
    assert "verified" in (out / "teach-twice.log").read_text()             # the second teach re-verified
    assert [t["distiller"] for t in result["tiny_vs_cpu"]] == sorted(t["distiller"] for t in result["tiny"])
    assert sorted(t["distiller"] for t in result["tiny"]) == ["kd", "pat"]
    assert all(t["status"] == "done" for t in result["tiny"])
    assert json.loads((out / "gpu-utilisation.json").read_text())["utilisation"] == result["utilisation"]


# ----------------------------------------------------------------------------- official-format files

def test_official_format_stand_ins_are_read_by_the_real_readers(tmp_path):
    cifar = write_cifar100(tmp_path / "c", train=200, test=100)
    _, ev, info = build_loaders(DataConfig(dataset="cifar100", root=str(cifar), img_size=32), batch_size=8,
                                device="cpu", seed=0)
    assert (info.num_classes, info.num_train, info.num_test) == (100, 200, 100)
    labels = torch.cat([y for _, y in ev.epoch(0)])
    assert sorted(labels.tolist()) == list(range(100))
    tree = write_imagenet(tmp_path / "i", classes=3, train_per_class=2, size=40)
    _, ev, info = build_loaders(DataConfig(dataset="imagenet", root=str(tree), img_size=32, workers=0),
                                batch_size=2, device="cpu", seed=0)
    assert (info.num_classes, info.num_train, info.num_test) == (3, 6, 3)
    assert next(iter(ev.epoch(0)))[0].shape == (2, 3, 32, 32)       # eval batch = the train batch here
    assert dataset_sizes(DataConfig(dataset="imagenet")) == (1281167, 50000)
    assert dataset_sizes(DataConfig(dataset="cifar100", train_limit=1000)) == (1000, 10000)


# ----------------------------------------------------------------------------- CUDA-path findings on CPU

def test_bf16_teacher_is_verified_in_bf16(tmp_path, monkeypatch):
    """A teacher trained (and evaluated) under bf16 autocast is re-verified under the same autocast,
    not in fp32: its manifest's top-1 is reproduced exactly. (Exercises CUDA's bf16 path on a CPU.)"""
    monkeypatch.setattr(RecipeConfig, "precision_on", lambda self, device: "bf16" if self.amp else "fp32")
    used = []
    real = engine.autocast_for
    monkeypatch.setattr(teachers, "autocast_for", lambda p, d: used.append(p) or real(p, d))
    preset = load_preset("smoke")
    data = dataclasses.replace(preset.data, synthetic_train=256, synthetic_test=64)
    tcfg = dataclasses.replace(preset.teacher, cnn=dataclasses.replace(preset.teacher.cnn, epochs=1))
    cpu = torch.device("cpu")
    _, manifest = teachers.get_teacher(preset, "kdbench_resnet18_xs", data, tcfg, out=tmp_path, device=cpu,
                                       context=SILENT)
    assert manifest.precision == "bf16"
    logs = []
    teachers.get_teacher(preset, "kdbench_resnet18_xs", data, tcfg, out=tmp_path, device=cpu, context=RunContext(sink=logs.append),
                         verify=True)
    assert used == ["bf16"] and any("verified" in s for s in logs)


def test_precision_is_part_of_the_run_configuration():
    preset = load_preset("smoke")
    cpu = expand_runs(preset, resolve_pairs(SMOKE_PAIRS, preset), ["kd"], [0], data=preset.data,
                      teacher_cfg=preset.teacher, overrides={})[0]
    bf16 = dataclasses.replace(cpu, precision="bf16")
    assert cpu.precision == "fp32" and cpu.to_dict()["precision"] == "fp32" and cpu.hash() != bf16.hash()
    with pytest.raises(ValueError, match="precision"):
        dataclasses.replace(cpu, precision="fp16")


def test_peak_memory_is_reset_per_run():
    cpu = torch.device("cpu")
    engine.reset_peak_memory(cpu)          # hands freed heap back first (earlier tests, glibc's mmap threshold)
    base = engine.peak_memory_mb(cpu)
    block = torch.ones(300 * 2**20 // 4)          # 300 MB resident
    block += 1
    high = engine.peak_memory_mb(cpu)
    del block
    engine.reset_peak_memory(cpu)
    low = engine.peak_memory_mb(cpu)
    assert high - base > 250 and high - low > 250


def test_readme_names_exactly_the_teacher_files_the_presets_expect():
    import re
    section = (ROOT / "README.md").read_text().split("## Paper preset")[1].split("\n## ")[0]
    listed = set(re.findall(r"`([\w.-]+\.pth)`", section))
    expected = set()
    for name in ("paper", "imagenet"):
        preset = load_preset(name)
        for pair in resolve_pairs("all", preset):
            expected.add(preset.teacher.files.get(pair.teacher, preset.teacher.file_pattern.format(model=pair.teacher)))
    assert listed == expected and len(expected) == 9


def test_benchmarks_readme_figures_match_the_committed_tables():
    text = (ROOT / "benchmarks" / "README.md").read_text()
    dry = json.loads((ROOT / "benchmarks" / "results" / "dry-run-paper-cpu.json").read_text())["rows"]
    plan = json.loads((ROOT / "benchmarks" / "results" / "plan-paper.json").read_text())
    extra = {(r["teacher"], r["student"]): r["extra_params"] for r in dry if r["distiller"] == "pat"}
    assert f"{extra[('convnext_tiny', 'deit_tiny_patch16_224')] / 1e6:.2f} M, the paper's own figure" in text
    top = max(extra, key=extra.get)
    assert top == ("mixer_b16_224", "resnet18") and f"up to {extra[top] / 1e6:.2f} M (Mixer-B/16→ResNet18)" in text
    ratios = plan["pat_kd_ratios"]
    assert f"{ratios['swin_tiny_patch4_window7_224:resnet18']:.2f}× on Swin-T→ResNet18" in text
    assert f"from {min(ratios.values()):.2f}× to {max(ratios.values()):.2f}×" in text
    assert max(ratios, key=ratios.get).startswith("mixer_b16_224")
    assert f"is {plan['grid_gpu_hours']['H100-SXM']:.0f} H100-hours at the assumed {plan['utilisation']:.0%}" \
        in text.replace(" %", "%")
