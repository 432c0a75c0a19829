"""The miniature pilot (issue 29): which data, teacher recipe and student budget make a CPU leaderboard
that can rank distillers? Options are `--set` variations of the `mini` preset on one shared teacher cache:

- `a`: students on a class-balanced 2k subset for 24 epochs (the preset as committed);
- `b`: KD's classical data-limited regime pushed further: 1k images for 48 epochs (about the same steps);
- `a2`: option a at twice the budget (`recipe.budget=2`), for criterion (d), the order's stability;
- `noise`: option a's From scratch and KD runs repeated, identical, in a separate process (criterion c).

Every stage is one `kdbench run` (or `teach`) process, resumable; stages run in priority order, so an
interrupted pilot leaves the most useful part finished. `python -m studies.mini_pilot run [STAGE..]`;
`python -m studies.mini_pilot plan` prints the stages and their commands; `python -m
studies.mini_pilot_report` writes the criteria table from the finished records.
"""

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "mini-pilot" / "runs"
PRESET = "mini"
ALL_PAIRS = ("swin_tiny_patch4_window7_224:resnet18", "vit_small_patch16_224:resnet18", "mixer_b16_224:resnet18",
             "swin_tiny_patch4_window7_224:mobilenetv2_100", "vit_small_patch16_224:mobilenetv2_100",
             "mixer_b16_224:mobilenetv2_100", "convnext_tiny:deit_tiny_patch16_224",
             "mixer_b16_224:deit_tiny_patch16_224", "convnext_tiny:swin_pico_patch4_window7_224",
             "mixer_b16_224:swin_pico_patch4_window7_224", "convnext_tiny:resmlp_12_224",
             "swin_tiny_patch4_window7_224:resmlp_12_224")
# From scratch depends only on the student: one pair per student (its first in paper order) carries it.
SCRATCH_PAIRS = ("swin_tiny_patch4_window7_224:resnet18", "swin_tiny_patch4_window7_224:mobilenetv2_100",
                 "convnext_tiny:deit_tiny_patch16_224", "convnext_tiny:swin_pico_patch4_window7_224",
                 "convnext_tiny:resmlp_12_224")
# Criterion (d): one pair per teacher, From scratch, KD, OFA and PAT at 1x and 2x.
ORDER_PAIRS = ("swin_tiny_patch4_window7_224:resnet18", "vit_small_patch16_224:mobilenetv2_100",
               "convnext_tiny:deit_tiny_patch16_224", "mixer_b16_224:swin_pico_patch4_window7_224")
# Criterion (e): every other column of the grid timed once at the chosen budget (one pair, seed 0).
COST_COLUMNS = ("kd+ls", "dkd", "dist", "fitnet", "fitnet+norm", "reviewkd", "rsd", "pat-faithful")
OPTIONS: Dict[str, Tuple[str, ...]] = {
    "a": (),
    "a2": ("recipe.budget=2",),
    "b": ("data.train_limit=1000", "recipe.epochs=48"),
    "noise": (),
}


def stages() -> List[Tuple[str, str, List[str]]]:
    """(name, option, kdbench arguments) in priority order."""
    def run(option, methods, pairs, seeds):
        sets = [a for s in OPTIONS[option] for a in ("--set", s)]
        return ["run", "--preset", PRESET, "--distiller", methods, "--pairs", ",".join(pairs),
                "--seeds", seeds, *sets]
    return [
        ("teachers", "a", ["teach", "--preset", PRESET, "--pairs", "all"]),
        ("a-scratch", "a", run("a", "vanilla", SCRATCH_PAIRS, "0,")),         # one seed on every pair first,
        ("a-kd", "a", run("a", "kd", ALL_PAIRS, "0,")),                       # so that a partial pilot covers them
        ("a-scratch-seeds", "a", run("a", "vanilla", SCRATCH_PAIRS, "0,1,2")),
        ("a-kd-seeds", "a", run("a", "kd", ALL_PAIRS, "0,1,2")),
        ("a-order", "a", run("a", "vanilla,ofa,pat", ORDER_PAIRS, "0,1")),
        ("a-cost", "a", run("a", ",".join(COST_COLUMNS), ORDER_PAIRS[:1], "0,")),
        ("a2-order", "a2", run("a2", "vanilla,kd,ofa,pat", ORDER_PAIRS, "0,1")),
        ("noise", "noise", run("noise", "vanilla,kd", ORDER_PAIRS, "0,")),
        ("b-scratch", "b", run("b", "vanilla", SCRATCH_PAIRS, "0,1,2")),
        ("b-kd", "b", run("b", "kd", ALL_PAIRS, "0,1,2")),
    ]


def out_dir(option: str, root: Path = ROOT) -> Path:
    """The option's kdbench output folder, linked to the pilot's one teacher cache."""
    out = root / option
    out.mkdir(parents=True, exist_ok=True)
    link = out / "teachers"
    if not link.exists():
        (root / "teachers").mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(root / "teachers", out))
    return out


def main(argv: List[str]) -> int:
    command, chosen = (argv[0] if argv else "plan"), set(argv[1:])

    for name, option, args in stages():
        if chosen and name not in chosen:
            continue
        cmd = ["kdbench", *args, "--out", str(out_dir(option))]
        print(f"[{name}] {' '.join(cmd)}", flush=True)
        if command == "run":
            code = subprocess.call(cmd)
            if code:
                print(f"[{name}] exit {code}; stopping", flush=True)
                return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
