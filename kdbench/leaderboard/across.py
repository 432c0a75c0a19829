"""Across pairs: each method's per-pair gain over a baseline (vanilla, or the reference distiller).

The pairs are the units (Benavoli et al., JMLR 2016: compare classifiers over data sets with the
Wilcoxon signed-rank test on their per-data-set differences, not with tests inside one data set).
Per method: the mean gain with a percentile bootstrap interval (two-way cluster bootstrap over the
pairs' teachers and students where they are known: the pairs share both), the median gain (a
collapse on one pair moves the mean, not the median), win/tie/loss counts and a two-sided
Wilcoxon signed-rank p, Holm-adjusted over the methods compared with the same baseline.

Differences are taken between means at the reported precision, in integer hundredths, so a tie
in the table is a tie here (a zero difference, dropped by Wilcoxon as in its original form).
"""

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
from scipy import stats as st

from .stats import RANK_DIGITS, holm, rounded

BOOTSTRAP_SAMPLES = 10_000
BOOTSTRAP_SEED = 0                  # fixed: a committed leaderboard regenerates byte for byte
WILCOXON_SIGNIFICANT_MIN = 6        # below 6 nonzero differences no two-sided p can be < 0.05


@dataclass
class Gain:
    """One method against `baseline` over the pairs where both have a mean."""

    name: str
    baseline: str
    pairs: int
    mean: Optional[float] = None
    median: Optional[float] = None
    ci_low: Optional[float] = None          # 95 % percentile bootstrap interval of the mean gain
    ci_high: Optional[float] = None
    wins: int = 0
    ties: int = 0
    losses: int = 0
    p_wilcoxon: Optional[float] = None
    p_holm: Optional[float] = None
    note: str = ""


def _units(x: float) -> int:
    """A mean at the reported precision in integer units (hundredths of a point)."""
    return int(round(rounded(x) * 10 ** RANK_DIGITS))


def bootstrap_ci(d: np.ndarray, confidence: float = 0.95, samples: int = BOOTSTRAP_SAMPLES,
                 seed: int = BOOTSTRAP_SEED):
    """Percentile bootstrap interval of the mean of `d` (resampling its entries with replacement)."""
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(samples, len(d)))].mean(axis=1)
    lo, hi = np.percentile(means, [50 * (1 - confidence), 50 * (1 + confidence)])
    return float(lo), float(hi)


def two_way_bootstrap_ci(d: np.ndarray, teachers: Sequence[str], students: Sequence[str], confidence: float = 0.95,
                         samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED):
    """Percentile interval of the mean of `d` (one value per pair) by a two-way cluster bootstrap: the
    pairs share teachers and students, so teachers and students are resampled, each with replacement
    and independently, and a pair counts (its teacher's draws) x (its student's draws) times (McCullagh
    2000; Owen 2007). Draws that hit no observed pair are dropped. Seeded: a table regenerates exactly."""
    t_ids = {t: i for i, t in enumerate(dict.fromkeys(teachers))}
    s_ids = {s: i for i, s in enumerate(dict.fromkeys(students))}
    rng = np.random.default_rng(seed)
    t_counts = np.stack([np.bincount(r, minlength=len(t_ids))
                         for r in rng.integers(0, len(t_ids), size=(samples, len(t_ids)))])
    s_counts = np.stack([np.bincount(r, minlength=len(s_ids))
                         for r in rng.integers(0, len(s_ids), size=(samples, len(s_ids)))])
    weights = t_counts[:, [t_ids[t] for t in teachers]] * s_counts[:, [s_ids[s] for s in students]]
    total = weights.sum(axis=1)
    keep = total > 0
    means = (weights[keep] @ d) / total[keep]
    lo, hi = np.percentile(means, [50 * (1 - confidence), 50 * (1 + confidence)])
    return float(lo), float(hi)


def gain(means: Sequence[Mapping[str, float]], name: str, baseline: str, clusters=None) -> Gain:
    """`name` against `baseline` over the pairs (one {distiller: mean} mapping each) both have. With
    `clusters` ((teacher, student) of each mapping), the interval is the two-way cluster bootstrap's
    (`two_way_bootstrap_ci`), else the pairs are resampled as if independent."""
    both = [(row[name], row[baseline], k) for k, row in enumerate(means) if name in row and baseline in row]
    g = Gain(name, baseline, len(both))
    if not both:
        g.note = f"no pair with both {name} and {baseline}"
        return g
    d = np.array([a - b for a, b, _ in both], dtype=float)
    units = np.array([_units(a) - _units(b) for a, b, _ in both])
    g.mean, g.median = float(d.mean()), float(np.median(d))
    g.wins, g.ties, g.losses = int((units > 0).sum()), int((units == 0).sum()), int((units < 0).sum())
    if len(d) >= 2 and clusters is not None:
        g.ci_low, g.ci_high = two_way_bootstrap_ci(d, [clusters[k][0] for *_, k in both],
                                                   [clusters[k][1] for *_, k in both])
    elif len(d) >= 2:
        g.ci_low, g.ci_high = bootstrap_ci(d)
    nonzero = int((units != 0).sum())
    if nonzero == 0:
        g.note = "ties on every pair: no test"
    else:
        g.p_wilcoxon = float(st.wilcoxon(units, zero_method="wilcox").pvalue)
        if nonzero < WILCOXON_SIGNIFICANT_MIN:
            g.note = f"{nonzero} nonzero differences: Wilcoxon cannot reach p < 0.05 below {WILCOXON_SIGNIFICANT_MIN}"
    return g


def gains_over(means: Sequence[Mapping[str, float]], names: Sequence[str], baseline: str,
               clusters=None) -> Dict[str, Gain]:
    """Every method of `names` but the baseline against it, Holm-adjusted over the tests that ran."""
    out = {d: gain(means, d, baseline, clusters) for d in names if d != baseline}
    tested = list(out.values())
    for g, p in zip(tested, holm([g.p_wilcoxon for g in tested])):
        g.p_holm = p
    return out


def tested_count(gains: Mapping[str, Gain]) -> int:
    """How many of `gains` had a test (the m of their Holm correction)."""
    return sum(1 for g in gains.values() if g.p_wilcoxon is not None)


def as_dict(g: Gain) -> dict:
    return {"name": g.name, "baseline": g.baseline, "pairs": g.pairs, "mean_gain": g.mean,
            "median_gain": g.median, "ci_low": g.ci_low, "ci_high": g.ci_high, "wins": g.wins, "ties": g.ties,
            "losses": g.losses, "p_wilcoxon": g.p_wilcoxon, "p_holm": g.p_holm, "note": g.note}


