"""The paper and ImageNet presets end to end, without the real data or teachers: small files in the
official formats stand in for them (CIFAR-100 in torchvision's python format, an ImageNet class-folder
tree, randomly initialised teachers saved as timm 0.6 CheckpointSaver files under the names the presets
expect), then `kdbench run --dry-run` over the whole grid and `kdbench plan` for its cost.

    python studies/paper_dry_run.py OUT_DIR [--batch-size 8] [--which paper,imagenet] [--commit]

--commit copies the tables to benchmarks/results/ (dry-run-<preset>-cpu.{md,json}, plan-<preset>.{md,json}).
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from kdbench.config import load_preset
from kdbench.data import dataset_geometry
from kdbench.dry_run import format_table
from kdbench.grid import resolve_pairs
from kdbench.models import create_model
from kdbench.official_files import timm_checkpoint, write_cifar100, write_imagenet
from kdbench.plan import format_plan

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
GRIDS = {"paper": ("all", "all"), "imagenet": ("imagenet", "kd,ofa,pat")}


def write_teachers(preset_name: str, zoo: Path, num_classes: int):
    """One CheckpointSaver file per teacher of the preset's grid, under the file name it expects."""
    preset = load_preset(preset_name)
    zoo.mkdir(parents=True, exist_ok=True)
    for paper in dict.fromkeys(p.teacher for p in resolve_pairs(GRIDS[preset_name][0], preset)):
        path = zoo / preset.teacher.files.get(paper, preset.teacher.file_pattern.format(model=paper))
        if not path.exists():
            torch.manual_seed(0)
            model = create_model(preset.models[paper], num_classes=num_classes, in_chans=3, img_size=preset.data.img_size)
            torch.save(timm_checkpoint(model, optimizer=False), path)


def kdbench(*args) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kdbench", *args], check=True)
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dry-steps", type=int, default=2)
    ap.add_argument("--which", default="paper,imagenet")
    ap.add_argument("--commit", action="store_true")
    a = ap.parse_args()
    out = Path(a.out)
    for name in a.which.split(","):
        data = out / "data" / name
        if name == "paper":
            if not (data / "cifar-100-python").exists():
                write_cifar100(data, train=256, test=100)
        elif not (data / "val").exists():
            write_imagenet(data, classes=dataset_geometry(load_preset(name).data)[0], size=64)
        write_teachers(name, out / "zoo" / name, dataset_geometry(load_preset(name).data)[0])
        pairs, distillers = GRIDS[name]
        common = ["--preset", name, "--pairs", pairs, "--distiller", distillers,
                  "--set", f"recipe.batch_size={a.batch_size}"]
        wall = kdbench("run", "--dry-run", "--dry-steps", str(a.dry_steps), *common, "--device", "cpu",
                       "--data-root", str(data), "--set", f"teacher.checkpoint_dir={out / 'zoo' / name}",
                       "--out", str(out / "runs"))
        print(f"{name}: dry run {wall:.0f} s", file=sys.stderr)
        kdbench("plan", "--preset", name, "--pairs", pairs, "--distiller", distillers,
                "--json-out", str(out / f"plan-{name}.json"))
        if a.commit:
            commit(out / "runs" / "dry-run" / name / "summary.json", RESULTS / f"dry-run-{name}-cpu")
            commit(out / f"plan-{name}.json", RESULTS / f"plan-{name}")


def commit(source: Path, stem: Path):
    """The JSON and its Markdown rendering, which a test re-renders from the JSON."""
    shutil.copy(source, stem.with_suffix(".json"))
    stem.with_suffix(".md").write_text(render(json.loads(source.read_text())) + "\n")


def render(obj: dict) -> str:
    return format_plan(obj) if "cells" in obj else format_table(obj)


if __name__ == "__main__":
    main()
