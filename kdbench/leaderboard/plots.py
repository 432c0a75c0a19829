"""A leaderboard `Table` as figures (PNG): the critical-difference diagram, per-pair accuracies,
per-pair differences to the reference, and accuracy against cost. People read paper names."""

import io
from pathlib import Path

from ..errors import UsageError
from . import stats
from .table import BASELINE, COSTS, Table, method_display


def plot_cd(table: Table, path) -> None:
    """Critical-difference diagram (Demšar 2006): average ranks, bars join groups within the CD."""
    from matplotlib.figure import Figure  # deferred: matplotlib is heavy, and only drawing needs it
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
        ax.text(edge - 0.01 if left else edge + 0.01, y, f"{method_display(fr.names[i])} ({fr.avg_ranks[i]:.2f})",
                ha="right" if left else "left", va="center", fontsize=9)
    for g, members in enumerate(groups):
        rs = [fr.avg_ranks[i] for i in members]
        ax.plot([x(min(rs)) - 0.008, x(max(rs)) + 0.008], [0.25 + 0.2 * g] * 2, color="black", lw=3)
    fig.savefig(path, dpi=150, bbox_inches="tight")


def _group_spans(rows):
    """[(group, first index, last index)] of consecutive rows of one student group."""
    spans = []
    for i, row in enumerate(rows):
        if spans and spans[-1][0] == row.group:
            spans[-1][2] = i
        else:
            spans.append([row.group, i, i])
    return spans


def _pair_axes(ax, rows):
    """Pair labels (paper names) on the x axis, group separators and group names above the data."""
    for group, lo, hi in _group_spans(rows):
        if lo:
            ax.axvline(lo - 0.5, color="grey", lw=0.8, ls="--")
        ax.text((lo + hi) / 2, 1.01, group, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r.display for r in rows], rotation=35, ha="right", fontsize=7)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.grid(axis="y", alpha=0.3)


def _color(table: Table, distiller: str) -> str:
    """One colour per distiller in every figure of a table."""
    return f"C{table.distillers.index(distiller) % 10}"


def _legend(fig, ax, n):
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, ncol=min(n, 7), loc="lower center", frameon=False)


def plot_pairs(table: Table, path) -> None:
    """Mean top-1 per pair and distiller with 95% t-interval error bars (none where n = 1); the y axis
    fits the data."""
    _per_pair(table, path, lambda cell, ref: cell.summary if cell.mean is not None else None,
              f"{table.label()} (%), final epoch", f"{table.preset}: mean {table.label()} ± 95% t-interval over seeds")


def plot_diffs(table: Table, path) -> None:
    """Per pair, each distiller's seed-paired difference to the reference with its 95% t-interval."""
    if not table.reference:
        raise UsageError("cannot draw differences to a reference: no reference distiller (kd not run, no --reference)")
    if all(d == table.reference for d in table.distillers):
        raise UsageError(f"cannot draw differences to {table.reference}: no other distiller ran")

    def diff(cell, ref):
        c = cell.comparison
        if c is None or c.diff is None:
            return None
        return stats.Summary(c.n, c.diff, None, c.ci_low, c.ci_high)
    _per_pair(table, path, diff, f"{table.label()} difference to {method_display(table.reference)} (points)",
              f"{table.preset}: seed-paired difference to {method_display(table.reference)} ± 95% t-interval",
              zero_line=True, skip=table.reference)


def _per_pair(table: Table, path, value, ylabel: str, title: str, zero_line: bool = False, skip=None):
    from matplotlib.figure import Figure  # deferred: matplotlib is heavy, and only drawing needs it
    rows, names = table.rows, [d for d in table.distillers if d != skip]
    fig = Figure(figsize=(max(7.0, 0.75 * len(rows) + 2.5), 5.0))
    ax = fig.add_axes((0.1, 0.3, 0.88, 0.6))
    width = 0.8 / max(len(names), 1)
    for j, d in enumerate(names):
        xs, ys, err = [], [], [[], []]
        for i, row in enumerate(rows):
            cell = row.cells.get(d)
            s = value(cell, row.cells.get(table.reference)) if cell is not None else None
            if s is None:
                continue
            xs.append(i + (j - (len(names) - 1) / 2) * width)
            ys.append(s.mean)
            err[0].append(0 if s.ci_low is None else s.mean - s.ci_low)
            err[1].append(0 if s.ci_high is None else s.ci_high - s.mean)
        ax.errorbar(xs, ys, yerr=err, fmt="o", ms=3.5, capsize=2, lw=1, label=method_display(d),
                    color=_color(table, d))
    if zero_line:
        ax.axhline(0, color="black", lw=0.8)
    _pair_axes(ax, rows)
    ax.set_ylabel(ylabel, fontsize=9)
    fig.suptitle(title, fontsize=10, y=0.99)
    _legend(fig, ax, len(names))
    fig.savefig(path, dpi=150)


COST_AXES = (("wall_s", "wall time per run (s)"), ("extra_params", "training-only parameters (M)"))


def plot_cost(table: Table, path) -> None:
    """Accuracy against cost: per distiller, its mean gain over vanilla across pairs against its mean
    wall time per run and its training-only parameters (means over the pairs with results)."""
    from matplotlib.figure import Figure  # deferred: matplotlib is heavy, and only drawing needs it
    gains = table.blocks[0].over_baseline if table.blocks else {}
    if not gains:
        raise UsageError("cannot draw accuracy vs cost: no vanilla runs to measure gains against")
    fig = Figure(figsize=(9, 4))
    for k, (key, label) in enumerate(COST_AXES):
        ax = fig.add_subplot(1, 2, k + 1)
        for d in table.distillers:
            costs = [c.cost_mean(key) if key in COSTS else c.params.get(key)
                     for r in table.rows for c in [r.cells.get(d)] if c is not None and c.mean is not None]
            costs = [x for x in costs if x is not None]
            g = 0.0 if d == BASELINE else (gains[d].mean if d in gains else None)
            if not costs or g is None:
                continue
            x = sum(costs) / len(costs) / (1e6 if key == "extra_params" else 1)
            ax.scatter([x], [g], s=30, color=_color(table, d))
            ax.annotate(method_display(d), (x, g), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel(label, fontsize=9)
        ax.set_ylabel(f"mean gain over {method_display(BASELINE)} (points)" if k == 0 else "", fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{table.preset}: accuracy vs cost ({table.blocks[0].pairs} pairs)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=150)


def png_bytes(draw, table: Table) -> bytes:
    """A figure drawn by `draw(table, file)` as PNG bytes."""
    buf = io.BytesIO()
    draw(table, buf)
    return buf.getvalue()


def plot_paths(plot: str):
    """--plot FILE.png -> (FILE.png for the CD diagram, FILE-pairs.png for the per-pair plot)."""
    p = Path(plot)
    p = p if p.suffix else p.with_suffix(".png")
    return p, p.with_name(f"{p.stem}-pairs{p.suffix}")
