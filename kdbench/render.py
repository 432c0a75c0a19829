"""A leaderboard `Table` as text: Markdown, CSV (long format), LaTeX (booktabs) or JSON."""

import csv
import io
import json
from typing import List, Optional

from .errors import unknown_choice
from .leaderboard import ALPHA, BASELINE, Cell, Table

FORMATS = ("md", "csv", "latex", "json")


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
