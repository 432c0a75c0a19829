"""The budget study (issue 19): does PAT's deficit on the tiny miniature shrink with training?

Two tiny pairs (ConvNeXt-T -> DeiT-T, Swin-T -> ResNet18) x vanilla, kd, ofa, pat (corrected) and
pat-faithful (the official code's behaviour) x training budgets 1, 4, 16 (`recipe.budget`: epochs and
warm-ups scaled, the same 8k-image subset) x 2 seeds. One kdbench output folder per budget
(`runs/b1`, `runs/b4`, `runs/b16`), each sharing the tiny leaderboard's teachers.

    python -m benchmarks.budget_study run [--budgets 1,4,16]   # resumable: SIGTERM saves a checkpoint
    python -m benchmarks.budget_study report                   # table, CSV, plot, README block

`report` reads only finished records, so it can be run while the study is under way; every number
in the README's generated block comes from the committed records (tests/test_budget_study.py
regenerates the files).
"""

import argparse
import csv
import io
import os
import statistics
import sys
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent / "results" / "budget"
TINY_TEACHERS = Path(__file__).resolve().parent / "results" / "tiny" / "runs" / "teachers"
PAIRS = ("convnext_tiny:deit_tiny_patch16_224", "swin_tiny_patch4_window7_224:resnet18")
METHODS = ("vanilla", "kd", "ofa", "pat", "pat-faithful")
BUDGETS = (1, 4, 16)
SEEDS = 2
README_BLOCK = "budget.md"


def budget_dir(root: Path, budget) -> Path:
    return root / "runs" / f"b{budget:g}"


def run(root: Path = ROOT, budgets=BUDGETS) -> int:
    """Run (or resume) the study's grids, one per budget; teachers are the tiny leaderboard's."""
    from kdbench.cli import main
    for b in budgets:
        out = budget_dir(root, b)
        out.mkdir(parents=True, exist_ok=True)
        link = out / "teachers"
        if not link.exists():
            TINY_TEACHERS.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(TINY_TEACHERS, out))
        code = main(["run", "--preset", "tiny", "--pairs", ",".join(PAIRS), "--distiller", ",".join(METHODS),
                     "--seeds", str(SEEDS), "--set", f"recipe.budget={b:g}", "--out", str(out)])
        if code:
            return code
    return 0


def rows(root: Path = ROOT, budgets=BUDGETS) -> List[Dict]:
    """One row per finished run: pair (paper names), method, budget, seed, final-epoch top-1."""
    from kdbench.leaderboard import collect, method_display
    out = []
    for b in budgets:
        folder = budget_dir(root, b)
        if not (folder / "tiny").is_dir():
            continue
        table = collect(folder, "tiny", finished_only=True)
        for row in table.rows:
            for name, cell in row.cells.items():
                for seed in sorted(cell.values):
                    out.append({"pair": row.display, "method": name, "method_display": method_display(name),
                                "budget": b, "seed": seed, "top1": cell.values[seed]})
    return out


def _mean(values):
    return statistics.fmean(values) if values else None


def table_md(data: List[Dict]) -> str:
    """Markdown: per pair, one line per method, one column per budget (mean ± std over seeds, n), then
    each method's gap to KD per budget."""
    budgets = sorted({r["budget"] for r in data})
    lines = []
    for pair in dict.fromkeys(r["pair"] for r in data):
        mine = [r for r in data if r["pair"] == pair]
        lines += [f"**{pair}** (top-1 %, final epoch, mean ± std over seeds (n))", "",
                  "| method | " + " | ".join(f"{b:g}×" for b in budgets) + " | " +
                  " | ".join(f"− KD at {b:g}×" for b in budgets) + " |",
                  "|---|" + "---|" * (2 * len(budgets))]
        kd = {b: _mean([r["top1"] for r in mine if r["method"] == "kd" and r["budget"] == b]) for b in budgets}
        for m in [m for m in METHODS if any(r["method"] == m for r in mine)]:
            cells, gaps = [], []
            for b in budgets:
                v = [r["top1"] for r in mine if r["method"] == m and r["budget"] == b]
                sd = f" ± {statistics.stdev(v):.2f}" if len(v) > 1 else ""
                cells.append(f"{_mean(v):.2f}{sd} ({len(v)})" if v else "—")
                gaps.append(f"{_mean(v) - kd[b]:+.2f}" if v and kd[b] is not None and m != "kd" else "—")
            name = next(r["method_display"] for r in mine if r["method"] == m)
            lines.append(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(gaps) + " |")
        lines.append("")
    if not lines:
        return "No finished runs yet.\n"
    found = findings(data)
    return "\n".join(lines) + ("\nFindings (generated from the records; a gap is a difference of seed means, "
                               "points):\n\n" + found if found else "")


def findings(data: List[Dict]) -> str:
    """The study's answers, generated: per pair, PAT's and PAT (official)'s gap to KD at each budget and
    whether it shrinks from the smallest to the largest, and the best method at the largest budget."""
    budgets = sorted({r["budget"] for r in data})
    out = []
    for pair in dict.fromkeys(r["pair"] for r in data):
        mean = {(r["method"], r["budget"]): _mean([x["top1"] for x in data if x["pair"] == pair and
                                                  x["method"] == r["method"] and x["budget"] == r["budget"]])
                for r in data if r["pair"] == pair}
        for m in ("pat", "pat-faithful"):
            gaps = [(b, mean[(m, b)] - mean[("kd", b)]) for b in budgets if (m, b) in mean and ("kd", b) in mean]
            if len(gaps) < 1:
                continue
            text = ", ".join(f"{g:+.2f} at {b:g}×" for b, g in gaps)
            trend = ""
            if len(gaps) > 1:
                first, last = gaps[0][1], gaps[-1][1]
                trend = ("; the gap shrinks" if abs(last) < abs(first) else "; the gap does not shrink") + \
                    f" from {gaps[0][0]:g}× to {gaps[-1][0]:g}×"
            name = "PAT" if m == "pat" else "PAT (official)"
            out.append(f"- {pair}: {name} − KD {text}{trend}.")
        both = [(b, mean[("pat-faithful", b)] - mean[("pat", b)]) for b in budgets
                if ("pat", b) in mean and ("pat-faithful", b) in mean]
        if both:
            out.append(f"- {pair}: PAT (official) − PAT " + ", ".join(f"{g:+.2f} at {b:g}×" for b, g in both) + ".")
        top = max(budgets)
        at_top = {m: v for (m, b), v in mean.items() if b == top}
        if at_top:
            best = max(at_top, key=at_top.get)
            out.append(f"- {pair}: best at {top:g}×: {best} ({at_top[best]:.2f}).")
    return "\n".join(out) + "\n" if out else ""


def table_csv(data: List[Dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, ["pair", "method", "budget", "seed", "top1"], lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    writer.writerows(data)
    return buf.getvalue()


def plot(data: List[Dict], path: Path) -> None:
    """Top-1 against budget (log scale), one panel per pair, one line per method (seed means) with
    every seed as a dot."""
    from matplotlib.figure import Figure
    pairs = list(dict.fromkeys(r["pair"] for r in data))
    fig = Figure(figsize=(5.0 * max(len(pairs), 1), 4.2))
    for k, pair in enumerate(pairs):
        ax = fig.add_subplot(1, len(pairs), k + 1)
        for j, m in enumerate(m for m in METHODS if any(r["method"] == m for r in data)):
            mine = [r for r in data if r["pair"] == pair and r["method"] == m]
            budgets = sorted({r["budget"] for r in mine})
            color = f"C{j}"
            ax.plot(budgets, [_mean([r["top1"] for r in mine if r["budget"] == b]) for b in budgets], "-o", ms=4,
                    color=color, label=next((r["method_display"] for r in mine), m))
            ax.plot([r["budget"] for r in mine], [r["top1"] for r in mine], ".", color=color, alpha=0.5, ms=4)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("training budget (× the tiny student recipe)", fontsize=9)
        ax.set_ylabel("top-1 (%), final epoch", fontsize=9)
        ax.set_title(pair, fontsize=10)
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def report(root: Path = ROOT) -> List[Path]:
    """Write budget.md, budget.csv, budget.png and refresh the README's generated block."""
    from kdbench.publish import README_BLOCK as BLOCK
    from kdbench.results import atomic_write_bytes
    data = rows(root)
    written = []
    for name, text in (("budget.md", table_md(data)), ("budget.csv", table_csv(data))):
        atomic_write_bytes(root / name, text.encode())
        written.append(root / name)
    if data:
        plot(data, root / "budget.png")
        written.append(root / "budget.png")
    readme = root / "README.md"
    if readme.is_file():
        text = readme.read_text()
        new = BLOCK.sub(lambda m: m[1] + (root / m[2]).read_text() + m[4], text)
        if new != text:
            atomic_write_bytes(readme, new.encode())
            written.append(readme)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.budget_study", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("run", "report"))
    parser.add_argument("--budgets", default=",".join(f"{b:g}" for b in BUDGETS))
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args.root, tuple(float(b) for b in args.budgets.split(",")))
    for path in report(args.root):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
