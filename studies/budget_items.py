"""The budget study's ablation of PAT (official): which of the official code's behaviours makes it differ
from the corrected PAT on ConvNeXt-T -> DeiT-T at the tiny budget (6 points at 1x)?

One grid per behaviour (`runs/pat-items-b1/<item>`): PAT corrected with only that behaviour of the
official code turned on (`--set distiller.faithful_items=[<item>]`, docs/pat.md); then one grid per
behaviour that acts on this pair with every behaviour but that one (`runs/pat-items-b1/all-but-<item>`).
2 seeds, on the study's teacher cache. Run and reported by studies/budget_study.py (`run`, `report`).
"""

import statistics
from pathlib import Path
from typing import Dict, List

ITEMS_GRID = "pat-items-b1"
ITEMS_PAIR = "convnext_tiny:deit_tiny_patch16_224"
# the order they run in: the first three act on this pair's map teacher and token student; the last two
# touch only token teachers (token_permute) and teachers with BatchNorm or drop-path (teacher_train_first_step)
ITEMS = ("se_gate_only", "pe_by_batch", "last_token_cls", "token_permute", "teacher_train_first_step")
ACTING = ITEMS[:3]
VARIANTS = [(i, (i,)) for i in ITEMS] + [(f"all-but-{i}", tuple(j for j in ITEMS if j != i)) for i in ACTING]


def label(variant: str) -> str:
    return f"all but `{variant.removeprefix('all-but-')}`" if variant.startswith("all-but-") else f"`{variant}`"


def items_dir(root: Path, item: str) -> Path:
    return root / "runs" / ITEMS_GRID / item


def run(root: Path, grid) -> int:
    """Run (or resume) one PAT grid per variant through `grid` (budget_study._grid)."""
    for variant, items in VARIANTS:
        code = grid(root, items_dir(root, variant), [ITEMS_PAIR], ("pat",), 1,
                    overrides=(f"distiller.faithful_items=[{','.join(items)}]",))
        if code:
            return code
    return 0


def rows(root: Path, read) -> List[Dict]:
    """One row per finished run, `item` added (read: budget_study._rows)."""
    return [{**r, "item": v} for v, _ in VARIANTS for r in read(items_dir(root, v), 1) if r["method"] == "pat"]


def items_md(data: List[Dict], base: List[Dict]) -> str:
    """Markdown: PAT with one official behaviour at a time against PAT (corrected) and PAT (official), the
    latter two from `base` (the 1x grid's rows of the same pair), and how much of the gap each closes."""
    if not data:
        return "No finished runs yet.\n"
    pair = data[0]["pair"]
    ref = {m: [r["top1"] for r in base if r["pair"] == pair and r["method"] == m] for m in ("pat", "pat-faithful")}
    if not all(ref.values()):
        return "The 1× grid has no PAT and PAT (official) runs on this pair yet.\n"
    pat, official = statistics.fmean(ref["pat"]), statistics.fmean(ref["pat-faithful"])
    gap = official - pat
    lines = [f"**{pair}**, 1× (top-1 %, final epoch, mean ± std over seeds (n))", "",
             "| PAT with | top-1 | − PAT | share of PAT (official) − PAT |", "|---|---|---|---|"]

    def cell(values):
        sd = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        return f"{statistics.fmean(values):.2f}{sd} ({len(values)})"

    lines.append(f"| nothing (PAT, corrected) | {cell(ref['pat'])} | — | — |")
    by_seed = {r["seed"]: r["top1"] for r in base if r["pair"] == pair and r["method"] == "pat"}

    def diff(rows_, mean):
        paired = [f"{r['top1'] - by_seed[r['seed']]:+.2f}" for r in sorted(rows_, key=lambda r: r["seed"])
                  if r["seed"] in by_seed]
        return f"{mean - pat:+.2f}" + (f" (seeds {' / '.join(paired)})" if paired else "")

    share = {}
    for variant, _ in VARIANTS:
        mine = [r for r in data if r["item"] == variant]
        if mine:
            values = [r["top1"] for r in mine]
            mean = statistics.fmean(values)
            share[variant] = (mean - pat) / gap
            lines.append(f"| {label(variant)} | {cell(values)} | {diff(mine, mean)} | {share[variant]:+.0%} |")
    official_rows = [r for r in base if r["pair"] == pair and r["method"] == "pat-faithful"]
    lines.append(f"| all five (PAT (official)) | {cell(ref['pat-faithful'])} | {diff(official_rows, official)} "
                 "| +100% |")
    found = []
    alone = {v: x for v, x in share.items() if v in ITEMS}
    if alone:
        top = max(alone, key=alone.get)
        others = ", ".join(f"`{i}` {alone[i]:+.0%}" for i in alone if i != top) or "—"
        found.append(f"- Alone, `{top}` moves PAT by {alone[top]:+.0%} of the gap between PAT and PAT (official) "
                     f"({gap:+.2f} points); the others: {others} ({len(alone)} of {len(ITEMS)} behaviours ran).")
    but = {v.removeprefix("all-but-"): x for v, x in share.items() if v not in ITEMS}
    if but:
        found.append("- Left out one at a time from PAT (official), it keeps " + ", ".join(
            f"{x:+.0%} of its lead without `{i}`" for i, x in but.items()) + ".")
    return "\n".join(lines) + "\n" + ("\nFindings (generated from the records):\n\n" + "\n".join(found) + "\n"
                                     if found else "")
