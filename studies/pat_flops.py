"""PAT's step against KD's in work, not time: training FLOPs per image of each of PAT's parts (issue 18).

    python -m studies.pat_flops [--preset tiny] [--pair T:S ...] [--bench FILE] [--json FILE]

For each pair, the training FLOPs per image (forward + backward, teacher included; kdbench.flops) of
KD and of PAT with its parts switched on one at a time, cumulatively (the variants of
studies/pat_breakdown.py: RAA + aligners + HCL, + the prompted teacher pass, + the feedback fusion
blocks = PAT as configured). `--bench` names a committed `kdbench bench --json` file with both
distillers' rows for the pair: its PAT/KD step-time ratio and utilisations go beside the FLOP ratio.
At equal utilisation the time ratio is the work ratio, so a time ratio of 2 needs PAT's work cut by
1 - 2 / (time ratio) at its measured utilisation. Prints a Markdown table; --json writes the rows.
"""

import argparse
import json
import sys
from pathlib import Path

from kdbench.bench import BenchRequest, bench

from .pat_breakdown import PAIRS, VARIANTS


def flops_of(preset: str, pair: str, distiller: str, overrides: list) -> tuple:
    """(the pair at the preset's scale, training FLOPs per image of the cell): one timed step counts them."""
    request = BenchRequest(steps=1, warmup=0, distillers=distiller, preset=preset, pair=pair,
                           overrides=tuple(overrides), device="cpu")
    row = next(r for r in bench(request) if r["distiller"] == distiller)
    return row["pair"], row["train_flops_per_img"]


def measure(preset: str, pair: str, bench_rows: list) -> dict:
    scaled, kd = flops_of(preset, pair, "kd", [])
    row = {"pair": scaled, "kd_gflop": kd / 1e9}
    for name, overrides in VARIANTS:
        row[f"{name}_gflop"] = flops_of(preset, pair, "pat", overrides)[1] / 1e9
    row["flop_ratio"] = row["pat_gflop"] / row["kd_gflop"]
    timed = {r["distiller"]: r for r in bench_rows if r["pair"] == scaled}
    if {"kd", "pat"} <= set(timed):
        row["time_ratio"] = timed["pat"]["step_ms"] / timed["kd"]["step_ms"]
        row["utilisation_kd"], row["utilisation_pat"] = timed["kd"]["peak_fraction"], timed["pat"]["peak_fraction"]
    return row


def table(rows: list) -> str:
    lines = ["| pair | KD GFLOP/img | + RAA, aligners, HCL | + prompted pass | + feedback fusion | PAT / KD work "
             "| PAT / KD time | % peak KD / PAT | PAT work to cut for 2.0× |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        steps = [r["kd_gflop"]] + [r[f"{name}_gflop"] for name, _ in VARIANTS]
        parts = [f"+{(b - a) / r['kd_gflop']:.2f}× KD" for a, b in zip(steps, steps[1:])]
        if "time_ratio" in r:
            timed = (f"{r['time_ratio']:.2f}× | {100 * r['utilisation_kd']:.1f} / {100 * r['utilisation_pat']:.1f} | "
                     f"{max(0.0, 100 * (1 - 2 / r['time_ratio'])):.0f} %")
        else:
            timed = "- | - | -"
        lines.append(f"| {r['pair']} | {r['kd_gflop']:.3f} | " + " | ".join(parts) + f" | {r['flop_ratio']:.2f}× | {timed} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--pair", action="append", default=None, help="T:S (repeatable); default: four tiny pairs")
    p.add_argument("--bench", default=None, metavar="FILE", help="a `kdbench bench --json` file with kd and pat rows")
    p.add_argument("--json", default=None, metavar="FILE")
    args = p.parse_args(argv)
    bench_rows = json.loads(Path(args.bench).read_text()) if args.bench else []
    rows = [measure(args.preset, pair, bench_rows) for pair in args.pair or PAIRS]
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
