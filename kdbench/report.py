"""Leaderboard: run records -> table model -> Markdown/CSV/LaTeX/JSON and PNG plots (DESIGN.md §8).

`collect` reads `<out>/<preset>/<teacher>__<student>/<distiller>/seed<k>/` and computes every
statistic; `render` and the `plot_*` functions only format it. `add_parser`/`cmd_leaderboard`
are the `kdbench leaderboard` subcommand.
"""

import csv
import io
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from . import stats
from .errors import UsageError, unknown_choice

FORMATS = ("md", "csv", "latex", "json")
FIRST = ("vanilla", "kd")                       # column order: these, then the rest alphabetically
BASELINE = "vanilla"
ALPHA = 0.05
PUBLISHED_SECTION = {"paper": "cifar100", "imagenet": "imagenet"}   # presets that reproduce a paper table
GROUPS = {"cnn-students": "CNN students", "vit-mlp-students": "ViT-MLP students",
          "imagenet-cnn-students": "CNN students", "imagenet-vit-students": "ViT students",
          "imagenet-mlp-students": "MLP students", "custom": "Other pairs"}


@dataclass
class Cell:
    """One (pair, distiller): per-seed top-1 of done runs, their summary and the test against the reference."""

    distiller: str
    values: Dict[int, float] = field(default_factory=dict)       # seed -> final-epoch top-1
    best: Dict[int, float] = field(default_factory=dict)         # seed -> best-epoch top-1 (flagged)
    hashes: set = field(default_factory=set)
    failed: int = 0
    unfinished: int = 0
    summary: Optional[stats.Summary] = None
    comparison: Optional[stats.Comparison] = None
    published: Optional[float] = None
    published_src: Optional[str] = None
    best_in_row: bool = False

    @property
    def mean(self):
        return self.summary.mean if self.summary else None

    @property
    def gap(self):
        return None if self.published is None or self.mean is None else self.mean - self.published


@dataclass
class Row:
    teacher: str                 # preset-scale names, as in the run directories
    student: str
    paper_teacher: str
    paper_student: str
    group: str
    cells: Dict[str, Cell] = field(default_factory=dict)
    teacher_top1: Optional[float] = None

    @property
    def label(self):
        return f"{self.teacher} → {self.student}"


@dataclass
class Table:
    out: str
    preset: str
    dataset: Optional[str]
    reference: Optional[str]
    distillers: List[str]
    rows: List[Row]
    problems: List[dict]                      # failed / unfinished / unreadable runs: never averaged
    gains: Dict[str, dict] = field(default_factory=dict)     # set by _compute
    friedman: Optional[stats.Friedman] = None
    published_protocol: Optional[str] = None
    notes: List[str] = field(default_factory=list)


# -- collect ---------------------------------------------------------------------------------------
def collect(out_dir, preset: Optional[str] = None, reference: Optional[str] = None, *,
            pairs: Optional[str] = None, distillers: Optional[str] = None) -> Table:
    """Load the records of one preset under `out_dir` and compute all statistics.

    `preset` may be omitted when `out_dir` holds one preset; `reference` defaults to `kd` when
    it was run (otherwise no significance tests). `pairs` (a `--pairs` spec) and `distillers`
    (comma-separated names) restrict the table, e.g. to the pairs every distiller has run."""
    root = Path(out_dir)
    if not root.is_dir():
        raise UsageError(f"results directory '{root}' does not exist; pass the --out of `kdbench run`")
    seed_dirs = [d for d in sorted(root.glob("*/*__*/*/seed*"))
                 if d.is_dir() and d.name[4:].isdigit() and d.parts[-4] != "teachers"]
    found = sorted({d.parts[-4] for d in seed_dirs})
    if not found:
        hint = " (it looks like a preset directory: pass its parent)" if any(root.glob("*__*/*/seed*")) else ""
        raise UsageError(f"no run records under '{root}'{hint}; expected "
                         "<out>/<preset>/<teacher>__<student>/<distiller>/seed<k>/result.json")
    if preset is None:
        if len(found) > 1:
            raise UsageError(f"'{root}' holds results of several presets; choose one with --preset: "
                             f"{', '.join(found)}")
        preset = found[0]
    elif preset not in found:
        raise unknown_choice(f"preset with results under '{root}'", preset, found)

    order, by_scaled = _pair_order(preset)
    keep_pair, keep_distiller = _filters(root / preset, preset, seed_dirs, pairs, distillers)
    rows: Dict[tuple, Row] = {}
    problems, datasets = [], set()
    for d in (d for d in seed_dirs if d.parts[-4] == preset):
        teacher, _, student = d.parts[-3].partition("__")
        if not (keep_pair(teacher, student) and keep_distiller(d.parts[-2])):
            continue
        if (teacher, student) not in rows:
            pair = order.get((teacher, student))
            rows[(teacher, student)] = Row(teacher, student, by_scaled.get(teacher, teacher),
                                           by_scaled.get(student, student),
                                           GROUPS.get(pair[1].set if pair else "custom", GROUPS["custom"]))
        row = rows[(teacher, student)]
        problem = _add_run(row, row.cells.setdefault(d.parts[-2], Cell(d.parts[-2])), d, datasets)
        if problem:
            problems.append({"status": problem[0], "dir": str(d.relative_to(root)), "error": problem[1]})
    rows_sorted = sorted(rows.values(), key=lambda r: (order.get((r.teacher, r.student), (len(order),))[0],
                                                       r.teacher, r.student))
    names = sorted({d for r in rows_sorted for d in r.cells},
                   key=lambda d: (FIRST.index(d) if d in FIRST else len(FIRST), d))
    if reference is None:
        reference = "kd" if "kd" in names else None
    elif reference not in names:
        raise unknown_choice(f"reference distiller (runs under '{root / preset}')", reference, names)
    problems.sort(key=lambda p: (p["status"], p["dir"]))
    table = Table(str(root), preset, ", ".join(sorted(str(x) for x in datasets)) or None, reference, names,
                  rows_sorted, problems)
    _compute(table)
    _attach_published(table)
    return table


def _filters(where: Path, preset: str, seed_dirs, pairs: Optional[str], distillers: Optional[str]):
    """Predicates for the --pairs and --distillers restrictions (everything when not given)."""
    keep_pair = keep_distiller = lambda *_: True
    if pairs:
        from .config import load_preset, preset_names
        from .grid import resolve_pairs
        if preset not in preset_names():
            raise UsageError(f"--pairs needs a built-in preset's pair names; '{preset}' is not one")
        p = load_preset(preset)
        wanted = {pair.scaled(p) for pair in resolve_pairs(pairs, p)}
        keep_pair = lambda t, s: (t, s) in wanted   # noqa: E731
    if distillers:
        have = sorted({d.parts[-2] for d in seed_dirs if d.parts[-4] == preset})
        wanted_d = [x.strip() for x in distillers.split(",") if x.strip()]
        for name in wanted_d:
            if name not in have:
                raise unknown_choice(f"distiller with runs under '{where}'", name, have)
        keep_distiller = lambda name: name in wanted_d   # noqa: E731
    return keep_pair, keep_distiller


def _add_run(row: Row, cell: Cell, d: Path, datasets: set):
    """Add one seed directory to its cell; returns (status, error) for a run that is not averaged."""
    from .results import read_record
    rec = read_record(d)
    if rec is None:
        if (d / "result.json").exists():
            cell.failed += 1
            return "unreadable", "result.json is not valid JSON"
        cell.unfinished += 1
        return "unfinished", "checkpoint.pt, no result.json" if (d / "checkpoint.pt").exists() else "no result.json"
    top1 = rec.get("top1")
    if rec.get("status") != "done" or not isinstance(top1, (int, float)) or not math.isfinite(top1):
        cell.failed += 1
        return "failed", rec.get("error") or f"status {rec.get('status')!r} without a finite top1"
    seed = int(d.name[4:])
    cell.values[seed] = float(top1)
    if isinstance(rec.get("best_top1"), (int, float)):
        cell.best[seed] = float(rec["best_top1"])
    cell.hashes.add(_config_without_seed(rec))
    datasets.add(rec.get("dataset"))
    if isinstance(rec.get("teacher_top1"), (int, float)):
        row.teacher_top1 = float(rec["teacher_top1"])
    return None


def _pair_order(preset: str):
    """(scaled teacher, student) -> (index, Pair) in the preset's pair-set order, and scaled -> paper name."""
    from .config import load_preset, preset_names
    from .grid import pair_sets
    if preset not in preset_names():
        return {}, {}
    p = load_preset(preset)
    sets = pair_sets()
    candidates = sets.get(p.pairs, []) + sets["imagenet" if p.pairs == "all" else "all"]
    order = {}
    for pair in candidates:
        if pair.teacher in p.models and pair.student in p.models:
            order.setdefault(pair.scaled(p), (len(order), pair))
    return order, {v: k for k, v in p.models.items()}


def _compute(table: Table):
    comparisons = []
    for row in table.rows:
        for cell in row.cells.values():
            cell.summary = stats.summarize([cell.values[s] for s in sorted(cell.values)])
            if len(cell.hashes) > 1:
                table.notes.append(f"{row.label} {cell.distiller}: runs with {len(cell.hashes)} different "
                                   "configurations (other than the seed) are averaged together")
        ref = row.cells.get(table.reference)
        for name, cell in row.cells.items():
            if ref is not None and name != table.reference and cell.values and ref.values:
                cell.comparison = stats.paired_compare(cell.values, ref.values)
                comparisons.append(cell.comparison)
        means = [c.mean for c in row.cells.values() if c.mean is not None]
        for cell in row.cells.values():
            cell.best_in_row = cell.mean is not None and cell.mean == max(means)
    stats.holm_comparisons(comparisons)
    means = [{d: c.mean for d, c in r.cells.items() if c.mean is not None} for r in table.rows]
    table.gains = stats.average_gain(means, BASELINE) if BASELINE in table.distillers else {}
    table.friedman = stats.friedman(means, table.distillers, ALPHA)


@lru_cache(maxsize=None)
def published_data() -> dict:
    """benchmarks/published.yaml (published top-1 per pair and method, with V/R provenance)."""
    return yaml.safe_load(resources.files("benchmarks").joinpath("published.yaml").read_text())


def _attach_published(table: Table):
    section = PUBLISHED_SECTION.get(table.preset)
    if section is None:
        return
    data = published_data()[section]
    table.published_protocol = data.get("protocol")
    for row in table.rows:
        entry = next((p for p in data["pairs"] if (p["teacher"], p["student"]) ==
                      (row.paper_teacher, row.paper_student)), {})
        for name, cell in row.cells.items():
            if name == BASELINE and row.paper_student in data.get("scratch", {}):
                cell.published = data["scratch"][row.paper_student]["top1"]
                cell.published_src = data["scratch"][row.paper_student]["src"]
            elif name in entry:
                cell.published, cell.published_src = entry[name]


# -- render ----------------------------------------------------------------------------------------
def render(table: Table, fmt: str = "md") -> str:
    """The table as md, csv, latex or json text."""
    if fmt not in FORMATS:
        raise unknown_choice("format", fmt, FORMATS)
    return {"md": _markdown, "csv": _csv, "latex": _latex, "json": _json}[fmt](table)


def _num(x, digits=2, sign=False):
    return "—" if x is None else f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _mark(cell: Cell) -> str:
    """'†↑' / '†↓': differs from the reference at Holm-adjusted p < ALPHA, better / worse."""
    c = cell.comparison
    if c is None or c.p_holm is None or c.p_holm >= ALPHA:
        return ""
    return "†↑" if c.diff > 0 else "†↓"


def _counts(cell: Cell) -> str:
    extra = [f"{k} {what}" for k, what in ((cell.failed, "failed"), (cell.unfinished, "unfinished")) if k]
    return f"({', '.join([str(cell.summary.n)] + extra)})"


def _pub_columns(table: Table) -> List[str]:
    return [d for d in table.distillers if any(d in r.cells and r.cells[d].published is not None
                                               for r in table.rows)]


def _header(table: Table):
    pubs = _pub_columns(table)
    cols = []
    for d in table.distillers:
        cols.append((d, d))
        if d in pubs:
            cols.append((d, f"{d} pub."))
    return cols


def _cell_text(cell: Optional[Cell], pub: bool, bold) -> str:
    if cell is None:
        return "—"
    if pub:
        if cell.published is None:
            return "—"
        return f"{cell.published:.2f} {cell.published_src} ({_num(cell.gap, sign=True)})"
    s = cell.summary
    if s.mean is None:
        return f"— {_counts(cell)}"
    text = f"{s.mean:.2f}" + (f" ± {s.std:.2f}" if s.std is not None else "")
    return f"{bold(text) if cell.best_in_row else text} {_counts(cell)}{_mark(cell)}"


def _footer(table: Table):
    """[(label, {distiller: text})] for the average-gain and average-rank rows."""
    rows = []
    if table.gains:
        rows.append((f"avg. gain over {BASELINE}",
                     {d: "—" if d == BASELINE else f"{_num(g['gain'], sign=True)} ({g['pairs']})"
                      for d, g in table.gains.items()}))
    fr = table.friedman
    if fr.n:
        rows.append((f"avg. rank ({fr.n} pair{'' if fr.n == 1 else 's'})", dict(zip(fr.names, (_num(r) for r in fr.avg_ranks)))))
    return rows


def _notes(table: Table) -> List[str]:
    fr, n_cmp = table.friedman, sum(1 for r in table.rows for c in r.cells.values() if c.comparison)
    notes = ["Top-1 (%) at the final epoch: mean ± std over seeds (number of runs); bold: best mean in the row. "
             "Best-epoch top-1 (as the papers report it; optimistic) is in the CSV/JSON output."]
    if any(c.summary.n == 1 for r in table.rows for c in r.cells.values()):
        notes.append("Cells with one run show no std; they get no interval and no test.")
    if BASELINE not in table.distillers:
        notes.append(f"No `{BASELINE}` runs: no average gain.")
    if table.reference:
        notes.append(f"†↑ / †↓: better / worse than `{table.reference}` (paired by seed, two-sided t-test, "
                     f"Holm-adjusted over {n_cmp} comparisons, p < {ALPHA}).")
    else:
        notes.append("No reference distiller (`kd` not run and no --reference): no significance tests.")
    if fr.p is not None:
        notes.append(f"Friedman test over {fr.n} pairs with all {len(fr.names)} distillers: chi2 = {fr.chi2:.2f}, "
                     f"p = {fr.p:.3g}; Nemenyi critical difference (alpha {ALPHA}) = {fr.cd:.2f} in average rank.")
    elif fr.note:
        notes.append(fr.note + ".")
    if table.published_protocol and _pub_columns(table):
        notes.append(f"pub.: published top-1 ({table.published_protocol}); V = read from the source, R = recalled (provisional); in "
                     "parentheses: measured mean - published (measured: final epoch, published: best epoch).")
    return notes + table.notes


def _problem_lines(table: Table) -> List[str]:
    return [f"{p['status']}: {p['dir']}: {' '.join(str(p['error']).split())}" for p in table.problems]


def _title(table: Table) -> str:
    return f"kdbench leaderboard: preset {table.preset} ({table.dataset or 'no finished runs'})"


def _markdown(table: Table) -> str:
    cols = _header(table)
    lines = [f"## {_title(table)}", "", "| teacher → student | teacher top-1 | " + " | ".join(c[1] for c in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    group = None
    for row in table.rows:
        if row.group != group:
            group = row.group
            lines.append(f"| **{group}** |" + " |" * (len(cols) + 1))
        texts = [_cell_text(row.cells.get(d), label != d, lambda t: f"**{t}**") for d, label in cols]
        lines.append(f"| {row.label} | {_num(row.teacher_top1)} | " + " | ".join(texts) + " |")
    for label, vals in _footer(table):
        lines.append(f"| *{label}* | | " + " | ".join(vals.get(d, "—") if lab == d else "" for d, lab in cols) + " |")
    lines += [""] + [f"- {n}" for n in _notes(table)]
    if table.problems:
        lines += ["", "Runs not included (not averaged):", ""] + [f"- {p}" for p in _problem_lines(table)]
    return "\n".join(lines) + "\n"


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("&", r"\&"), ("%", r"\%"), ("#", r"\#"),
                 ("→", r"$\rightarrow$"), ("±", r"$\pm$"), ("†↑", r"$^{\dagger\uparrow}$"),
                 ("†↓", r"$^{\dagger\downarrow}$"), ("—", "--"), ("`", ""), ("<", "$<$"), (">=", r"$\geq$"),
                 ("chi2", r"$\chi^2$")):
        s = s.replace(a, b)
    return s


def _latex(table: Table) -> str:
    cols = _header(table)
    n = len(cols) + 2
    lines = [r"% requires \usepackage{booktabs}", r"\begin{table}[t]", r"\centering",
             rf"\caption{{{_tex(_title(table))}}}", r"\begin{tabular}{ll" + "c" * len(cols) + "}", r"\toprule",
             "Teacher $\\rightarrow$ Student & Teacher top-1 & " + " & ".join(_tex(c[1]) for c in cols) + r" \\",
             r"\midrule"]
    group = None
    for row in table.rows:
        if row.group != group:
            if group is not None:
                lines.append(r"\midrule")
            group = row.group
            lines.append(rf"\multicolumn{{{n}}}{{l}}{{\textit{{{_tex(group)}}}}} \\")
        texts = [_tex(_cell_text(row.cells.get(d), lab != d, lambda t: f"@B{{{t}}}"))
                 .replace("@B{", r"\textbf{") for d, lab in cols]
        lines.append(f"{_tex(row.label)} & {_num(row.teacher_top1)} & " + " & ".join(texts) + r" \\")
    footer = _footer(table)
    if footer:
        lines.append(r"\midrule")
    for label, vals in footer:
        lines.append(f"{_tex(label)} & & " + " & ".join(_tex(vals.get(d, "—")) if lab == d else ""
                                                       for d, lab in cols) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", "", r"\footnotesize " + _tex(" ".join(_notes(table))),
              r"\end{table}"]
    lines += [f"% {p}" for p in _problem_lines(table)]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("preset", "dataset", "group", "teacher", "student", "paper_teacher", "paper_student", "distiller",
              "n", "n_failed", "n_unfinished", "seeds", "mean", "std", "ci_low", "ci_high", "best_top1_mean",
              "best_in_row", "reference", "n_paired", "diff_vs_ref", "p_t", "p_wilcoxon", "p_holm",
              "significant", "note", "published", "published_src", "gap_to_published", "teacher_top1")


def cell_records(table: Table) -> List[dict]:
    """Long format: one dict per (pair, distiller) with every statistic (the CSV rows)."""
    out = []
    for row in table.rows:
        for d in table.distillers:
            cell = row.cells.get(d)
            if cell is None:
                continue
            s, c = cell.summary, cell.comparison
            out.append({"preset": table.preset, "dataset": table.dataset, "group": row.group,
                        "teacher": row.teacher, "student": row.student, "paper_teacher": row.paper_teacher,
                        "paper_student": row.paper_student, "distiller": d, "n": s.n, "n_failed": cell.failed,
                        "n_unfinished": cell.unfinished, "seeds": sorted(cell.values), "mean": s.mean,
                        "std": s.std, "ci_low": s.ci_low, "ci_high": s.ci_high,
                        "best_top1_mean": sum(cell.best.values()) / len(cell.best) if cell.best else None,
                        "best_in_row": cell.best_in_row, "reference": table.reference if c else None,
                        "n_paired": c.n if c else None, "diff_vs_ref": c.diff if c else None,
                        "p_t": c.p_t if c else None, "p_wilcoxon": c.p_wilcoxon if c else None,
                        "p_holm": c.p_holm if c else None, "significant": bool(_mark(cell)),
                        "note": "; ".join(x for x in (s.note, c.note if c else "") if x),
                        "published": cell.published, "published_src": cell.published_src,
                        "gap_to_published": cell.gap, "teacher_top1": row.teacher_top1})
    return out


def _csv(table: Table) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for rec in cell_records(table):
        w.writerow({k: " ".join(map(str, v)) if isinstance(v, list) else ("" if v is None else v)
                    for k, v in rec.items()})
    return buf.getvalue()


def _json(table: Table) -> str:
    fr = table.friedman
    doc = {"preset": table.preset, "dataset": table.dataset, "out": table.out, "reference": table.reference,
           "metric": "top1 (final epoch, %)", "distillers": [
               {"name": d, "avg_gain_over_vanilla": table.gains.get(d, {}).get("gain"),
                "gain_pairs": table.gains.get(d, {}).get("pairs"),
                "avg_rank": fr.avg_ranks[i] if fr.n else None} for i, d in enumerate(table.distillers)],
           "friedman": {"pairs": fr.n, "k": len(fr.names), "chi2": fr.chi2, "p": fr.p, "cd": fr.cd,
                        "alpha": ALPHA, "note": fr.note},
           "cells": cell_records(table), "problems": table.problems, "notes": _notes(table),
           "published_protocol": table.published_protocol}
    return json.dumps(doc, indent=2) + "\n"


# -- plots -----------------------------------------------------------------------------------------
def plot_cd(table: Table, path) -> None:
    """Critical-difference diagram (Demšar 2006): average ranks, bars join groups within the CD."""
    from matplotlib.figure import Figure
    fr = table.friedman
    k = len(fr.names)
    if k < 2 or not fr.n:
        raise UsageError(f"cannot draw a CD diagram: need >= 2 distillers and a pair with results for all of "
                         f"them (have {k} distillers, {fr.n} complete pairs)")
    groups = stats.cd_groups(fr.avg_ranks, fr.cd) if fr.cd else []
    order = sorted(range(k), key=lambda i: fr.avg_ranks[i])
    half = (k + 1) // 2
    y0 = 0.4 + 0.2 * len(groups)            # first label line, below the group bars
    height = y0 + 0.35 * half + 0.05
    fig = Figure(figsize=(7, 0.85 * (height + 1.3)))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(height, -1.3)
    lo, hi = 0.28, 0.72
    x = lambda r: lo + (r - 1) / max(k - 1, 1) * (hi - lo)   # noqa: E731 (rank -> axis position)
    ax.plot([lo, hi], [0, 0], color="black", lw=1)
    for r in range(1, k + 1):
        ax.plot([x(r), x(r)], [0, -0.1], color="black", lw=1)
        ax.text(x(r), -0.15, str(r), ha="center", va="bottom", fontsize=9)
    title = f"average rank over {fr.n} pairs"
    if fr.cd:
        ax.plot([x(1), x(1 + fr.cd)], [-0.7, -0.7], color="black", lw=2)
        ax.text((x(1) + x(1 + fr.cd)) / 2, -0.75, f"CD = {fr.cd:.2f}", ha="center", va="bottom", fontsize=9)
        title += f"; Friedman p = {fr.p:.3g}" if fr.p is not None else ""
    else:
        title += f" (no CD: {fr.note})"
    ax.text(0.5, -1.25, f"{table.preset}: {title}", ha="center", va="top", fontsize=9)
    for j, i in enumerate(order):
        left = j < half
        y = y0 + 0.35 * (j if left else k - 1 - j)
        edge = lo - 0.03 if left else hi + 0.03
        ax.plot([x(fr.avg_ranks[i])] * 2 + [edge], [0, y, y], color="black", lw=0.8)
        ax.text(edge - 0.01 if left else edge + 0.01, y, f"{fr.names[i]} ({fr.avg_ranks[i]:.2f})",
                ha="right" if left else "left", va="center", fontsize=9)
    for g, members in enumerate(groups):
        rs = [fr.avg_ranks[i] for i in members]
        ax.plot([x(min(rs)) - 0.008, x(max(rs)) + 0.008], [0.25 + 0.2 * g] * 2, color="black", lw=3)
    fig.savefig(path, dpi=150, bbox_inches="tight")


def plot_pairs(table: Table, path) -> None:
    """Mean top-1 per pair and distiller with 95% t-interval error bars (none where n = 1)."""
    from matplotlib.figure import Figure
    rows, names = table.rows, table.distillers
    fig = Figure(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.5))
    ax = fig.add_subplot()
    width = 0.8 / max(len(names), 1)
    for j, d in enumerate(names):
        xs, ys, err = [], [], [[], []]
        for i, row in enumerate(rows):
            cell = row.cells.get(d)
            if cell is None or cell.mean is None:
                continue
            s = cell.summary
            xs.append(i + (j - (len(names) - 1) / 2) * width)
            ys.append(s.mean)
            err[0].append(0 if s.ci_low is None else s.mean - s.ci_low)
            err[1].append(0 if s.ci_high is None else s.ci_high - s.mean)
        ax.errorbar(xs, ys, yerr=err, fmt="o", ms=4, capsize=2, label=d)
    for i in range(1, len(rows)):
        if rows[i].group != rows[i - 1].group:
            ax.axvline(i - 0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r.label.replace("kdbench_", "") for r in rows], rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("top-1 (%), final epoch")
    ax.set_title(f"{table.preset}: mean ± 95% t-interval over seeds", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(len(names), 7), loc="upper center", bbox_to_anchor=(0.5, -0.28), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=150, bbox_inches="tight")


def plot_paths(plot: str):
    """--plot FILE.png -> (FILE.png for the CD diagram, FILE-pairs.png for the per-pair plot)."""
    p = Path(plot)
    p = p if p.suffix else p.with_suffix(".png")
    return p, p.with_name(f"{p.stem}-pairs{p.suffix}")


# -- command line ----------------------------------------------------------------------------------
def add_parser(subparsers):
    """Add the `leaderboard` subcommand to an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "leaderboard", help="tables and statistics from run records",
        description="Tabulate the runs of one preset: mean ± std per pair and distiller, seed-paired tests "
                    "against a reference (Holm-corrected), average gain over vanilla, average ranks, Friedman "
                    "test and Nemenyi critical difference. Failed and unfinished runs are listed, not averaged.")
    p.add_argument("--out", default="runs", help="results directory given to `kdbench run` (default: runs)")
    p.add_argument("--preset", default=None, help="preset to tabulate (needed when --out holds several)")
    p.add_argument("--reference", default=None, help="distiller the others are tested against (default: kd if run)")
    p.add_argument("--pairs", default=None, help="only these pairs: all | SET | T:S[,T:S..] (default: every pair run)")
    p.add_argument("--distillers", default=None, help="only these distillers: NAME[,NAME..] (default: every one run)")
    p.add_argument("--format", default="md", choices=FORMATS, help="output on stdout (default: md)")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="also write the CD diagram to FILE.png and per-pair accuracies to FILE-pairs.png")
    p.set_defaults(func=cmd_leaderboard)
    return p


def cmd_leaderboard(args) -> int:
    """Print the leaderboard of `args.out` in `args.format`; write the plots when `args.plot` is set."""
    import sys
    table = collect(args.out, args.preset, args.reference, pairs=args.pairs, distillers=args.distillers)
    if args.plot:
        cd_path, pairs_path = plot_paths(args.plot)
        cd_path.parent.mkdir(parents=True, exist_ok=True)
        plot_cd(table, cd_path)
        plot_pairs(table, pairs_path)
        print(f"kdbench: wrote {cd_path} and {pairs_path}", file=sys.stderr)
    emit(render(table, args.format))
    return 0


def emit(text: str):
    """Print a rendered table to stdout, ending with exactly one newline."""
    print(text, end="" if text.endswith("\n") else "\n")


def _config_without_seed(rec: dict) -> str:
    """Identity of a run's configuration apart from its seed (seeds of one cell differ by design)."""
    cfg = rec.get("config")
    if not isinstance(cfg, dict):
        return str(rec.get("config_hash"))
    return json.dumps({k: v for k, v in cfg.items() if k != "seed"}, sort_keys=True, default=str)
