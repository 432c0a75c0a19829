"""PAT's exact savings (issue 18), each measured alone and together, by `kdbench bench`.

    python -m studies.pat_savings [--preset paper] [--pair T:S ...] [--steps 5] [--batch-size 8]
                                     [--set KEY=VALUE ...] [--json FILE]

Variants (all compute the same losses and gradients; tests/test_pat_savings.py and
tests/test_pat_closed_form.py check that):
  none         every saving off: the prompted pass recomputes the stem and earlier stages, faithful
               gate-only blocks convolve as the official code does
  closed_form  faithful gate-only prompt/fusion blocks from window sums (distiller.closed_form)
  replay       the prompted pass replays the clean pass's prefix (distiller.replay_prefix)
  gathered     map aligners normalise and project the region cells before upsampling
               (distiller.gathered_aligners; map teachers: ConvNeXt, ResNet, MobileNetV2)
  all          the default
Each variant is one `kdbench bench` row (PAT next to KD on the same pair in the same process);
rows report step time, the ratio to KD and the saving against `none`.
"""

import argparse
import json
import sys

from kdbench.bench import BenchRequest, bench

OFF = {"closed_form": "distiller.closed_form=false", "replay": "distiller.replay_prefix=false",
       "gathered": "distiller.gathered_aligners=false"}
VARIANTS = {"none": list(OFF.values()),
            **{name: [v for k, v in OFF.items() if k != name] for name in OFF},
            "all": []}
PAIRS = ("swin_tiny_patch4_window7_224:resnet18", "convnext_tiny:deit_tiny_patch16_224")


def measure(preset, pair, steps, batch_size, overrides, device="cpu"):
    rows = []
    for name, extra in VARIANTS.items():
        row = bench(BenchRequest(steps=steps, warmup=1, batch_size=batch_size, distillers="pat", preset=preset,
                                 pair=pair, overrides=tuple(overrides) + tuple(extra), device=device))[0]
        rows.append({"pair": row["pair"], "variant": name, "overrides": list(overrides) + extra,
                     "batch_size": row["batch_size"], "steps": steps, "step_ms": row["step_ms"],
                     "ratio_to_kd": row["ratio_to_kd"], "kd_ms": round(row["step_ms"] / row["ratio_to_kd"], 2)})
    base = rows[0]["step_ms"]
    for r in rows:
        r["saving_ms"] = round(base - r["step_ms"], 2)
        r["saving_pct"] = round(100 * (base - r["step_ms"]) / base, 1)
    return rows


def table(rows) -> str:
    lines = ["| pair | variant | PAT ms | KD ms | PAT / KD | saving vs none |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['pair']} | {r['variant']} | {r['step_ms']:.1f} | {r['kd_ms']:.1f} | "
                     f"{r['ratio_to_kd']:.2f} | {r['saving_ms']:+.1f} ms ({r['saving_pct']:+.1f} %) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="paper")
    p.add_argument("--pair", action="append")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--json")
    args = p.parse_args(argv)
    rows = []
    for pair in args.pair or PAIRS:
        rows += measure(args.preset, pair, args.steps, args.batch_size, args.overrides)
        print(table(rows[-len(VARIANTS):]), file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
