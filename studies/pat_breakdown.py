"""What PAT's step costs beyond KD's, part by part, by switching its parts on one at a time.

    python studies/pat_breakdown.py [--preset tiny] [--pair T:S ...] [--steps 12] [--repeats 3]

Each variant is timed by `kdbench bench` next to `kd` on the same pair in the same process, and
the median over repeats of the step-time ratio to KD is reported (ratios drift less than raw
times on a shared machine). Rows are cumulative:
  raa      RAA + aligners + HCL on clean-teacher targets  (--set distiller.afp=false)
  prompts  + the prompted teacher pass with prompt blocks (--set distiller.feedback=none)
  pat      + the feedback fusion blocks = PAT as configured
Prints a markdown table; --json writes the raw rows.
"""

import argparse
import json
import statistics
import sys

from kdbench.bench import BenchRequest, bench

VARIANTS = (("raa", ["distiller.afp=false"]), ("prompts", ["distiller.feedback=none"]), ("pat", []))
PAIRS = ("swin_tiny_patch4_window7_224:resnet18", "vit_small_patch16_224:mobilenetv2_100",
         "convnext_tiny:deit_tiny_patch16_224", "mixer_b16_224:swin_pico_patch4_window7_224")


def measure(preset: str, pair: str, steps: int, repeats: int, device: str) -> dict:
    """{variant: {step_ms, ratio_to_kd, extra_params}} (medians over repeats), kd included."""
    out, kd_ms = {}, []
    for name, overrides in VARIANTS:
        rows = []
        for _ in range(repeats):
            row = bench(BenchRequest(steps=steps, warmup=2, distillers="pat", preset=preset, pair=pair,
                                     overrides=tuple(overrides), device=device))[0]
            rows.append(row)
            kd_ms.append(row["step_ms"] / row["ratio_to_kd"])
        out[name] = {"step_ms": statistics.median(r["step_ms"] for r in rows),
                     "ratio_to_kd": statistics.median(r["ratio_to_kd"] for r in rows),
                     "extra_params": rows[0]["extra_params"]}
    out["kd"] = {"step_ms": round(statistics.median(kd_ms), 2), "ratio_to_kd": 1.0, "extra_params": 0}
    return out


def table(results: dict) -> str:
    lines = ["| pair | KD ms | RAA + aligners + HCL | + prompted pass (PB) | + feedback fusion (FB) | PAT × KD |",
             "|---|---|---|---|---|---|"]
    for pair, r in results.items():
        kd = r["kd"]["ratio_to_kd"]
        steps = [r[v]["ratio_to_kd"] for v, _ in VARIANTS]
        incr = [f"+{(b - a):.2f}× KD" for a, b in zip([kd] + steps[:-1], steps)]
        lines.append(f"| {pair} | {r['kd']['step_ms']:.0f} | " + " | ".join(incr) + f" | {steps[-1]:.2f}× |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--pair", action="append", default=None, help="T:S (repeatable); default: four tiny pairs")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, metavar="FILE")
    args = p.parse_args(argv)
    results = {}
    for pair in args.pair or PAIRS:
        results[pair] = measure(args.preset, pair, args.steps, args.repeats, args.device)
        print(f"{pair}: " + ", ".join(f"{k} {v['ratio_to_kd']:.2f}x" for k, v in results[pair].items()), file=sys.stderr)
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
