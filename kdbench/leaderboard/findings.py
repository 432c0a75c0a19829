"""`kdbench leaderboard --format findings`: the claims a results README makes, generated from the
table so that they cannot drift from the data.

Each finding is one Markdown bullet computed from a `Table`: who ranks best (overall and per
student group) and which ranks differ significantly; which distillers beat the reference over
pairs (Wilcoxon-Holm); feature-level against logit-level methods (each distiller's `level`); whether
methods come in the order of the paper's table for the same pairs; how often each distiller beats vanilla and its median gain; every cell
below vanilla, largest drop first; per-pair tests that survive Holm. Numbers are printed at the
tables' precision.
"""

from collections import Counter
from itertools import combinations
from typing import List

from ..config import load_preset, preset_names
from ..grid import resolve_pairs
from ..registry import DISTILLERS
from .stats import rounded
from .table import ALL_PAIRS, ALPHA, BASELINE, GroupStats, Table, method_display

COLLAPSE = 5.0          # points below vanilla that a finding calls a collapse


def _count(n: int, one: str, many: str = "") -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _names(names: List[str]) -> str:
    shown = [method_display(n) for n in names]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


def _ranking(block: GroupStats) -> List[str]:
    fr = block.friedman
    if not fr.n or len(fr.names) < 2:
        return []
    order = sorted(range(len(fr.names)), key=lambda i: (rounded(fr.avg_ranks[i]), fr.names[i]))
    best = [fr.names[i] for i in order if rounded(fr.avg_ranks[i]) == rounded(fr.avg_ranks[order[0]])]
    where = "over all pairs" if block.group == ALL_PAIRS else f"on {block.group}"
    text = (f"Best average rank {where} ({fr.n} pair{'s' if fr.n != 1 else ''}, {len(fr.names)} distillers): "
            f"{_names(best)} ({fr.avg_ranks[order[0]]:.2f}); last: "
            f"{method_display(fr.names[order[-1]])} ({fr.avg_ranks[order[-1]]:.2f}).")
    if fr.p is not None:
        text += f" Friedman p = {fr.p:.3g}"
        if fr.cd is not None:
            within = [fr.names[i] for i in order[1:] if fr.avg_ranks[i] - fr.avg_ranks[order[0]] < fr.cd]
            text += (f"; within the Nemenyi CD ({fr.cd:.2f}) of the best: {_names(within)}" if within
                     else f"; every other distiller is beyond the Nemenyi CD ({fr.cd:.2f}) of the best")
        text += "."
    return [text]


def _control(table: Table) -> List[str]:
    fr = table.friedman
    if not fr.vs_control:
        return []
    better = [t.name for t in fr.vs_control if t.p_holm < ALPHA and t.rank_diff < 0]
    worse = [t.name for t in fr.vs_control if t.p_holm < ALPHA and t.rank_diff > 0]
    parts = ([f"rank better: {_names(better)}"] if better else []) + ([f"rank worse: {_names(worse)}"] if worse else [])
    return [f"Against `{fr.control}` by average rank (Holm over {len(fr.vs_control)} tests, p < {ALPHA}): "
            + ("; ".join(parts) if parts else "no distiller's rank differs significantly") + "."]


def _over_pairs(table: Table) -> List[str]:
    gains = table.blocks[0].over_reference if table.blocks else {}
    if not gains:
        return []
    sig = [g for g in gains.values() if g.p_holm is not None and g.p_holm < ALPHA]
    lines = [f"{method_display(g.name)} vs {method_display(g.baseline)} over pairs: {_count(g.wins, 'win')}, "
             f"{_count(g.ties, 'tie')}, {_count(g.losses, 'loss', 'losses')} (Wilcoxon-Holm p = {g.p_holm:.2g})."
             for g in sig]
    return lines or [f"No distiller differs from {method_display(table.reference)} over pairs at Wilcoxon-Holm "
                     f"p < {ALPHA}."]


def _level_of(name: str) -> str:
    return getattr(DISTILLERS.get(name), "level", "") if name in DISTILLERS else ""


def _levels(table: Table) -> List[str]:
    """Feature-level vs logit-level methods (the PAT paper's detection claim; OFA's for classification)."""
    groups = {lvl: [d for d in table.distillers if _level_of(d) == lvl] for lvl in ("features", "logits")}
    if not all(groups.values()):
        return []
    best = every = 0
    diffs = []
    for row in table.rows:
        means = {lvl: [rounded(row.cells[d].mean) for d in names if d in row.cells and row.cells[d].mean is not None]
                 for lvl, names in groups.items()}
        if any(len(means[lvl]) < len(groups[lvl]) for lvl in groups):
            continue                                   # only pairs where every method of both groups ran
        top_f, top_l = max(means["features"]), max(means["logits"])
        best += top_f > top_l
        every += min(means["features"]) > top_l
        diffs.append(top_f - top_l)
    if not diffs:
        return []
    diffs.sort()
    mid = len(diffs) // 2
    median = diffs[mid] if len(diffs) % 2 else (diffs[mid - 1] + diffs[mid]) / 2
    return [f"Feature-level methods ({_names(groups['features'])}) vs logit-level ({_names(groups['logits'])}): "
            f"the best feature-level method is above the best logit-level one on {best} of {_count(len(diffs), 'pair')} "
            f"(median difference {median:+.2f}); every feature-level method is above every logit-level one on {every}."]


def _paper_order(table: Table) -> List[str]:
    """Methods in the paper's order? Per pair, the distillers with a published number (the same pair at
    paper scale, for a miniature): method pairs ordered alike vs reversed (Goodman-Kruskal gamma:
    ties on either side left out), whether the paper's best of them is best here, and how many of the
    numbers compared are recalled (R) rather than read from the source."""
    agree = reverse = best_here = best_overall = recalled = used = 0
    paper_best = Counter()
    rows = 0
    for row in table.rows:
        common = [d for d in table.distillers if d in row.paper_values and d in row.cells and row.cells[d].mean is not None]
        if len(common) < 2:
            continue
        ours = {d: rounded(row.cells[d].mean) for d in common}
        paper = {d: row.paper_values[d][0] for d in common}
        for a, b in combinations(common, 2):
            sign = (ours[a] - ours[b]) * (paper[a] - paper[b])
            agree, reverse = agree + (sign > 0), reverse + (sign < 0)
        top = max(common, key=lambda d: paper[d])
        paper_best[top] += 1
        best_here += ours[top] == max(ours.values())
        best_overall += ours[top] == max(rounded(c.mean) for c in row.cells.values() if c.mean is not None)
        recalled += sum(row.paper_values[d][1] == "R" for d in common)
        used += len(common)
        rows += 1
    if not rows or not agree + reverse:
        return []
    firsts = ", ".join(f"{method_display(d)} on {n}" for d, n in paper_best.most_common())
    provenance = f"; {recalled} of the {used} published numbers compared are recalled (R)" if recalled else ""
    return [f"Order of methods against the paper's table (published.yaml `{table.order_source}`, the methods it reports "
            f"on each pair): {agree} of {_count(agree + reverse, 'method pair')} in the paper's order, {reverse} reversed, "
            f"over {_count(rows, 'pair')} (gamma {(agree - reverse) / (agree + reverse):+.2f}{provenance}); the paper's "
            f"best ({firsts}) is best here among the methods it reports on {best_here} of {rows}, and among all "
            f"{len(table.distillers)} columns on {best_overall} of {rows}."]


def _vanilla(table: Table) -> List[str]:
    gains = table.blocks[0].over_baseline if table.blocks else {}
    lines = []
    for g in gains.values():
        if not g.pairs:
            continue
        ci = f", mean {g.mean:+.2f} [95% CI {g.ci_low:+.2f}, {g.ci_high:+.2f}]" if g.ci_low is not None else ""
        lines.append(f"{method_display(g.name)} is above {method_display(BASELINE)} on {g.wins} of "
                     f"{_count(g.pairs, 'pair')} ({_count(g.ties, 'tie')}, {g.losses} below); "
                     f"median gain {g.median:+.2f}{ci}.")
    return lines


def _below_vanilla(table: Table) -> List[str]:
    drops = []
    for row in table.rows:
        base = row.cells.get(BASELINE)
        if base is None or base.mean is None:
            continue
        for name, cell in row.cells.items():
            if name != BASELINE and cell.mean is not None and rounded(cell.mean) < rounded(base.mean):
                m, b = rounded(cell.mean), rounded(base.mean)      # as the table prints them: the gap adds up
                drops.append((rounded(m - b), row.display, name, m, b))
    if not drops:
        return [f"No cell is below {method_display(BASELINE)}."] if BASELINE in table.distillers else []
    drops.sort()
    listed = "; ".join(f"{method_display(n)} on {pair} {m:.2f} vs {b:.2f} ({d:+.2f})" for d, pair, n, m, b in drops)
    collapses = sum(1 for d, *_ in drops if d <= -COLLAPSE)
    return [f"{_count(len(drops), 'cell is', 'cells are')} below {method_display(BASELINE)} ({collapses} by "
            f"{COLLAPSE:g} points or more): {listed}."]


def _cells(table: Table) -> List[str]:
    if not table.reference:
        return []
    marked = [(row.display, name, c.comparison) for row in table.rows for name, c in row.cells.items()
              if c.comparison and c.comparison.p_holm is not None and c.comparison.p_holm < ALPHA]
    if not marked:
        return [f"No single pair shows a seed-paired difference to {method_display(table.reference)} that survives "
                "Holm (few seeds: this is low power, not evidence of equality)."]
    return [f"Per-pair differences to {method_display(table.reference)} that survive Holm: " + "; ".join(
        f"{method_display(n)} on {pair} {c.diff:+.2f} (p = {c.p_holm:.2g})" for pair, n, c in marked) + "."]


def _coverage(table: Table) -> List[str]:
    runs = sum(c.summary.n for r in table.rows for c in r.cells.values() if c.shared_from is None)   # shared: once
    seeds = max((c.summary.n for r in table.rows for c in r.cells.values()), default=0)
    full = [r for r in table.rows if all(d in r.cells and r.cells[d].summary.n == seeds for d in table.distillers)]
    text = (f"Coverage: {runs} finished runs; {len(full)} of {len(table.rows)} pairs have all {len(table.distillers)} "
            f"distillers with {seeds} seeds each")
    expected = _preset_pairs(table.preset)
    missing = expected - {(r.teacher, r.student) for r in table.rows}
    if missing:
        text += f" ({len(missing)} of the preset's {len(expected)} pairs have no runs yet)"
    failed = sum(1 for p in table.problems if p["status"] != "unfinished")
    return [text + (f"; {failed} runs failed or unreadable (listed under the table, not averaged)." if failed else ".")]


def _preset_pairs(preset: str) -> set:
    """The (teacher, student) run-directory names of a built-in preset's `--pairs all`."""
    if preset not in preset_names():
        return set()
    p = load_preset(preset)
    return {pair.scaled(p) for pair in resolve_pairs("all", p)}


def _cost(table: Table) -> List[str]:
    parts = []
    for d in table.distillers:
        walls = sorted(w for r in table.rows if d in r.cells for w in r.cells[d].costs.get("wall_s", {}).values())
        if walls:
            mid = len(walls) // 2
            median = walls[mid] if len(walls) % 2 else (walls[mid - 1] + walls[mid]) / 2
            parts.append(f"{method_display(d)} {median:.0f} s")
    return [f"Median wall time per run: {', '.join(parts)}."] if parts else []


def render_findings(table: Table) -> str:
    """The findings as a Markdown bullet list (a header line, then one bullet per finding)."""
    lines = [f"Findings generated by `kdbench leaderboard --format findings` from {len(table.rows)} pairs "
             f"of preset {table.preset} ({table.label()} at the final epoch, means over seeds):", ""]
    lines += [f"- {x}" for x in _coverage(table)]
    for block in table.blocks:
        lines += [f"- {x}" for x in _ranking(block)]
    for part in (_control, _over_pairs, _levels, _paper_order, _vanilla, _below_vanilla, _cells, _cost):
        lines += [f"- {x}" for x in part(table)]
    return "\n".join(lines) + "\n"
