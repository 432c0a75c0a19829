"""A leaderboard `Table` as text: Markdown, CSV (long format), LaTeX (booktabs) or JSON."""

import csv
import io
import json
from typing import List, Optional

from ..errors import unknown_choice
from .across import as_dict as gain_dict, tested_count
from .table import ALL_PAIRS, ALPHA, BASELINE, COSTS, Cell, Table, method_display

TEXT_FORMATS = ("md", "csv", "latex", "json")


def render_text(table: Table, fmt: str = "md") -> str:
    """The table as md, csv, latex or json text (every format, findings and html included: `publish.render`)."""
    if fmt not in TEXT_FORMATS:
        raise unknown_choice("format", fmt, TEXT_FORMATS)
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
    """[(distiller, is_published_column, label)]: a column per distiller (its paper name), and
    beside it the published numbers where there are any."""
    pubs = _pub_columns(table)
    cols = []
    for d in table.distillers:
        cols.append((d, False, method_display(d)))
        if d in pubs:
            cols.append((d, True, f"{method_display(d)} pub."))
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


def _gain_text(g) -> str:
    if g is None or g.mean is None:
        return "—"
    ci = f" [{_num(g.ci_low, sign=True)}, {_num(g.ci_high, sign=True)}]" if g.ci_low is not None else ""
    return f"{_num(g.mean, sign=True)}{ci} ({g.pairs})"


def _wtl_text(g) -> str:
    if g is None or not g.pairs:
        return "—"
    p = f", p {g.p_holm:.2g}" if g.p_holm is not None else ""
    return f"{g.wins}/{g.ties}/{g.losses}{p}"


def _footer(table: Table):
    """[(label, {distiller: text})]: per block (all pairs, then each student group) the gain over
    vanilla with its bootstrap interval, the median gain, win/tie/loss against the reference with
    the Wilcoxon-Holm p, and the average rank."""
    rows = []
    for block in table.blocks:
        prefix = "" if block.group == ALL_PAIRS else f"{block.group}: "
        if block.over_baseline:
            rows.append((f"{prefix}avg. gain over {BASELINE} [95% CI] (pairs)",
                         {d: "—" if d == BASELINE else _gain_text(block.over_baseline.get(d)) for d in table.distillers}))
            if not prefix:
                rows.append((f"median gain over {BASELINE}",
                             {d: _num(g.median, sign=True) for d, g in block.over_baseline.items()}))
        if block.over_reference and not prefix:
            rows.append((f"W/T/L vs {table.reference}, Wilcoxon-Holm p",
                         {d: _wtl_text(g) for d, g in block.over_reference.items()}))
        fr = block.friedman
        if fr.n:
            rows.append((f"{prefix}avg. rank ({fr.n} pair{'' if fr.n == 1 else 's'})",
                         dict(zip(fr.names, (_num(r) for r in fr.avg_ranks)))))
    return rows


def _notes(table: Table) -> List[str]:
    fr = table.friedman
    n_cmp = sum(1 for r in table.rows for c in r.cells.values() if c.comparison and c.comparison.p_t is not None)
    notes = [f"{table.label(True)} (%) at the final epoch: mean ± std over seeds (number of runs); bold: best mean in "
             f"the row. Best-epoch {table.label()} (as the papers report it; optimistic) is in the CSV/JSON output."]
    if any(c.summary.n == 1 for r in table.rows for c in r.cells.values()):
        notes.append("Cells with one run show no std; they get no interval and no test.")
    if BASELINE not in table.distillers:
        notes.append(f"No `{BASELINE}` runs: no average gain.")
    if table.reference:
        notes.append(f"†↑ / †↓: better / worse than `{table.reference}` (paired by seed, two-sided t-test, "
                     f"Holm-adjusted over the {n_cmp} comparisons that had a test, p < {ALPHA}). With few seeds "
                     "these tests have little power: an unmarked cell is not evidence of no difference (the "
                     "CSV/JSON give each difference with its 95% interval and effect size).")
        over_ref = table.blocks[0].over_reference if table.blocks else {}
        if over_ref:
            notes.append(f"W/T/L: pairs where the mean is above / equal to / below `{table.reference}`'s at the "
                         f"printed precision; p: two-sided Wilcoxon signed-rank over pairs, Holm-adjusted over "
                         f"the {tested_count(over_ref)} distillers tested (Benavoli et al. 2016); it takes the pairs as "
                         "independent, which pairs that share teachers and students are not.")
    else:
        notes.append("No reference distiller (`kd` not run and no --reference): no significance tests.")
    if table.blocks and table.blocks[0].over_baseline:
        notes.append(f"Gain over `{BASELINE}`: mean over pairs of the difference of cell means, with a 95% "
                     "percentile interval from a two-way cluster bootstrap (teachers and students resampled: the "
                     "pairs share them); the median is robust to one collapse.")
    if fr.p is not None:
        notes.append(f"Ranks use means at the printed precision (ties share a rank). Friedman test over {fr.n} pairs "
                     f"with all {len(fr.names)} distillers: chi2 = {fr.chi2:.2f}, p = {fr.p:.3g}"
                     + (f"; Iman–Davenport F = {fr.iman_davenport_f:.2f}, p = {fr.iman_davenport_p:.3g}"
                        if fr.iman_davenport_f is not None else "")
                     + (f"; Nemenyi critical difference (alpha {ALPHA}) = {fr.cd:.2f} in average rank."
                        if fr.cd is not None else f" ({fr.note})."))
        if fr.vs_control:
            worse = [f"{method_display(t.name)} (p {t.p_holm:.2g})" for t in fr.vs_control if t.p_holm < ALPHA]
            notes.append(f"Against the control `{fr.control}` (Demšar 2006, Holm over {len(fr.vs_control)} rank "
                         f"tests; Bonferroni–Dunn CD = {fr.bonferroni_dunn_cd:.2f}): "
                         + (f"rank differs for {', '.join(worse)}." if worse else f"no rank differs at p < {ALPHA}."))
    elif fr.note:
        notes.append(fr.note + ".")
    if table.published_protocol and _pub_columns(table):
        notes.append(f"pub.: published {table.label()} ({table.published_protocol}); V = read from the source, R = recalled (provisional); in "
                     "parentheses: measured mean - published (measured: final epoch; published: as its protocol says).")
    return notes + table.notes


def _problem_lines(table: Table) -> List[str]:
    return [f"{p['status']}: {p['dir']}: {' '.join(str(p['error']).split())}" for p in table.problems]


def _title(table: Table) -> str:
    return f"kdbench leaderboard: preset {table.preset} ({table.dataset or 'no finished runs'})"


def _markdown(table: Table) -> str:
    cols = _header(table)
    lines = [f"## {_title(table)}", "", f"| teacher → student | teacher {table.label()} | " + " | ".join(c[2] for c in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    group = None
    for row in table.rows:
        if row.group != group:
            group = row.group
            lines.append(f"| **{group}** |" + " |" * (len(cols) + 1))
        texts = [_cell_text(row.cells.get(d), pub, lambda t: f"**{t}**") for d, pub, _ in cols]
        lines.append(f"| {row.display} | {_num(row.teacher_top1)} | " + " | ".join(texts) + " |")
    for label, vals in _footer(table):
        lines.append(f"| *{label}* | | " + " | ".join("" if pub else vals.get(d, "—") for d, pub, _ in cols) + " |")
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
             f"Teacher $\\rightarrow$ Student & Teacher {table.label()} & " + " & ".join(_tex(c[2]) for c in cols) + r" \\",
             r"\midrule"]
    group = None
    for row in table.rows:
        if row.group != group:
            if group is not None:
                lines.append(r"\midrule")
            group = row.group
            lines.append(rf"\multicolumn{{{n}}}{{l}}{{\textit{{{_tex(group)}}}}} \\")
        texts = [_tex(_cell_text(row.cells.get(d), pub, lambda t: f"@B{{{t}}}"))
                 .replace("@B{", r"\textbf{") for d, pub, _ in cols]
        lines.append(f"{_tex(row.display)} & {_num(row.teacher_top1)} & " + " & ".join(texts) + r" \\")
    footer = _footer(table)
    if footer:
        lines.append(r"\midrule")
    for label, vals in footer:
        lines.append(f"{_tex(label)} & & " + " & ".join("" if pub else _tex(vals.get(d, "—"))
                                                       for d, pub, _ in cols) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", "", r"\footnotesize " + _tex(" ".join(_notes(table))),
              r"\end{table}"]
    lines += [f"% {p}" for p in _problem_lines(table)]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("preset", "dataset", "group", "pair", "method", "teacher", "student", "paper_teacher", "paper_student",
              "distiller", "n", "n_failed", "n_unfinished", "seeds", "top1_per_seed", "mean", "std", "ci_low",
              "ci_high", "best_top1_per_seed", "best_top1_mean", "best_in_row", "reference", "n_paired",
              "diff_vs_ref", "diff_ci_low", "diff_ci_high", "effect_size_dz", "p_t", "p_wilcoxon", "p_holm",
              "significant", "note", "published", "published_src", "gap_to_published", "teacher_top1",
              "wall_s_mean", "train_img_per_s_mean", "peak_mem_mb_mean", "student_params", "extra_params",
              "train_flops_per_img")


def cell_records(table: Table) -> List[dict]:
    """Long format: one dict per (pair, distiller) with every statistic (the CSV rows)."""
    out = []
    for row in table.rows:
        for d in table.distillers:
            cell = row.cells.get(d)
            if cell is None:
                continue
            s, c = cell.summary, cell.comparison
            seeds = sorted(cell.values)
            out.append({"preset": table.preset, "dataset": table.dataset, "group": row.group,
                        "pair": row.display, "method": method_display(d),
                        "teacher": row.teacher, "student": row.student, "paper_teacher": row.paper_teacher,
                        "paper_student": row.paper_student, "distiller": d, "n": s.n, "n_failed": cell.failed,
                        "n_unfinished": cell.unfinished, "seeds": seeds,
                        "top1_per_seed": {str(k): cell.values[k] for k in seeds}, "mean": s.mean,
                        "std": s.std, "ci_low": s.ci_low, "ci_high": s.ci_high,
                        "best_top1_per_seed": {str(k): cell.best[k] for k in sorted(cell.best)},
                        "best_top1_mean": sum(cell.best.values()) / len(cell.best) if cell.best else None,
                        "best_in_row": cell.best_in_row, "reference": table.reference if c else None,
                        "n_paired": c.n if c else None, "diff_vs_ref": c.diff if c else None,
                        "diff_ci_low": c.ci_low if c else None, "diff_ci_high": c.ci_high if c else None,
                        "effect_size_dz": c.effect_dz if c else None,
                        "p_t": c.p_t if c else None, "p_wilcoxon": c.p_wilcoxon if c else None,
                        "p_holm": c.p_holm if c else None, "significant": bool(_mark(cell)),
                        "note": "; ".join(x for x in (s.note, c.note if c else "") if x),
                        "published": cell.published, "published_src": cell.published_src,
                        "gap_to_published": cell.gap, "teacher_top1": row.teacher_top1,
                        **{f"{k}_mean": cell.cost_mean(k) for k in COSTS},
                        **{k: cell.params.get(k) for k in ("student_params", "extra_params", "train_flops_per_img")}})
    return out


def _csv(table: Table) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for rec in cell_records(table):
        w.writerow({k: " ".join(map(str, v.values() if isinstance(v, dict) else v)) if isinstance(v, (list, dict))
                    else ("" if v is None else v) for k, v in rec.items()})
    return buf.getvalue()


def _json(table: Table) -> str:
    fr = table.friedman
    doc = {"preset": table.preset, "dataset": table.dataset, "out": table.out, "reference": table.reference,
           "metric": f"{table.metric} (final epoch, %)", "distillers": [
               {"name": d, "method": method_display(d), "avg_gain_over_vanilla": table.gains.get(d, {}).get("gain"),
                "gain_pairs": table.gains.get(d, {}).get("pairs"),
                "avg_rank": fr.avg_ranks[i] if fr.n else None} for i, d in enumerate(table.distillers)],
           "friedman": _friedman_dict(fr),
           "across_pairs": [{"group": b.group, "pairs": b.pairs, "baseline": base, "friedman": _friedman_dict(b.friedman),
                             "rows": [dict(gain_dict(g), method=method_display(g.name)) for g in gains.values()]}
                            for b in table.blocks for base, gains in ((BASELINE, b.over_baseline),
                                                                      (table.reference, b.over_reference)) if gains],
           "cells": cell_records(table), "problems": table.problems, "notes": _notes(table),
           "published_protocol": table.published_protocol}
    return json.dumps(doc, indent=2) + "\n"


def _friedman_dict(fr) -> dict:
    return {"pairs": fr.n, "k": len(fr.names), "chi2": fr.chi2, "p": fr.p, "cd": fr.cd, "alpha": ALPHA,
            "iman_davenport_f": fr.iman_davenport_f, "iman_davenport_p": fr.iman_davenport_p,
            "control": fr.control, "bonferroni_dunn_cd": fr.bonferroni_dunn_cd,
            "vs_control": [{"name": t.name, "method": method_display(t.name), "rank_diff": t.rank_diff, "z": t.z,
                            "p": t.p, "p_holm": t.p_holm} for t in fr.vs_control],
            "avg_ranks": dict(zip(fr.names, fr.avg_ranks)) if fr.n else {}, "note": fr.note}
