"""A leaderboard `Table` as figures: the critical-difference diagram and per-pair accuracies (PNG)."""

from pathlib import Path

from . import stats
from .errors import UsageError
from .leaderboard import Table


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
