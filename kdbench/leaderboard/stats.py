"""Statistics for the leaderboard (docs/design.md §1): pure functions, no I/O.

Per cell: summary over seeds. Per pair: seed-paired comparison against a reference distiller (mean
difference, its t-interval, the paired effect size d_z, a t-test), Holm-corrected across a table.
Across pairs (`kdbench.across`): gains with bootstrap intervals, win/tie/loss and Wilcoxon
signed-rank over pairs (Benavoli et al., JMLR 2016); average ranks, Friedman and Iman–Davenport
tests, the Nemenyi critical difference and Holm against a control (Demšar, JMLR 2006).

Ranks and win/tie/loss use means rounded to RANK_DIGITS, the precision the tables report, so two
distillers whose means print the same tie exactly instead of being ordered by float error.
"""

import itertools
import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from scipy import stats as st

WILCOXON_MIN_N = 6
RANK_DIGITS = 2                       # the tables' precision: ranks and ties are decided on it


def rounded(x: float) -> float:
    """`x` at the reported precision: the value that ranks and ties are decided on."""
    return round(float(x), RANK_DIGITS)


@dataclass
class Summary:
    """n, mean, sample std (ddof=1) and a two-sided t-interval; None where undefined (`note` says why)."""

    n: int
    mean: Optional[float] = None
    std: Optional[float] = None
    ci_low: Optional[float] = None
    ci_high: Optional[float] = None
    note: str = ""


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Summary of one cell's per-seed values."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return Summary(0, note="no finished runs")
    mean = float(x.mean())
    if n == 1:
        return Summary(1, mean, note="n=1: no std or interval")
    std = float(x.std(ddof=1))
    half = float(st.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


@dataclass
class Comparison:
    """A distiller against the reference on the seeds both have: mean of (distiller - reference)."""

    n: int
    seeds: List[int] = field(default_factory=list)
    diff: Optional[float] = None
    ci_low: Optional[float] = None       # 95 % t-interval of the mean difference
    ci_high: Optional[float] = None
    effect_dz: Optional[float] = None    # Cohen's d_z: mean difference / std of the differences
    p_t: Optional[float] = None          # paired t-test, two-sided
    p_wilcoxon: Optional[float] = None   # Wilcoxon signed-rank, two-sided, only where n >= 6
    p_holm: Optional[float] = None       # p_t after Holm over the table (set by `holm`)
    note: str = ""


def paired_compare(values: Mapping[int, float], reference: Mapping[int, float]) -> Comparison:
    """Seed-paired comparison; seeds that only one side has are ignored."""
    seeds = sorted(set(values) & set(reference))
    n = len(seeds)
    if n == 0:
        return Comparison(0, note="no seeds in common with the reference")
    d = np.array([values[s] - reference[s] for s in seeds], dtype=float)
    c = Comparison(n, seeds, float(d.mean()))
    notes = []
    if n < 2:
        notes.append("n=1 paired seed: no test")
    elif np.all(d == 0):
        notes.append("all paired differences are zero: no test")
    elif np.all(d == d[0]):
        notes.append("constant paired difference (zero variance): t-test undefined")
    else:
        c.p_t = _finite(st.ttest_1samp(d, 0.0).pvalue)
        interval = summarize(d)
        c.ci_low, c.ci_high = interval.ci_low, interval.ci_high
        c.effect_dz = float(d.mean() / d.std(ddof=1))
    if n >= 2 and not np.all(d == 0):
        if n < WILCOXON_MIN_N:
            notes.append(f"Wilcoxon needs n >= {WILCOXON_MIN_N}")
        else:
            c.p_wilcoxon = _finite(st.wilcoxon(d).pvalue)
    c.note = "; ".join(notes)
    return c


def _finite(p) -> Optional[float]:
    p = float(p)
    return p if math.isfinite(p) else None


def holm(pvalues: Sequence[Optional[float]]) -> List[Optional[float]]:
    """Holm step-down adjusted p-values, in input order; None (no test) stays None and is not counted."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    m = len(idx)
    out: List[Optional[float]] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))   # monotone, capped at 1
        out[i] = running
    return out


def holm_comparisons(comparisons: Sequence[Comparison]) -> None:
    """Set `p_holm` on every comparison, correcting over all of them (those with a t-test p)."""
    for c, p in zip(comparisons, holm([c.p_t for c in comparisons])):
        c.p_holm = p


# -- across pairs: `means` is one {distiller: mean top-1} mapping per pair (missing = not run) ----------
def complete_rows(means: Sequence[Mapping[str, float]], names: Sequence[str]) -> List[List[float]]:
    """The rows (pairs) where every distiller in `names` has a mean, as lists in `names` order."""
    return [[row[d] for d in names] for row in means if all(d in row for d in names)]


def average_ranks(rows: Sequence[Sequence[float]]) -> List[float]:
    """Mean rank per column over rows; rank 1 = highest value, ties (at the reported precision) get
    the average of their ranks."""
    r = np.array([st.rankdata(-np.array([rounded(v) for v in row]), method="average") for row in rows])
    return [float(v) for v in r.mean(axis=0)]


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """Critical value q_alpha of the Nemenyi test: studentized range (df = inf) / sqrt(2)."""
    return float(st.studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2)


def critical_difference(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi CD = q_alpha * sqrt(k (k+1) / (6 N)) for k methods over N datasets (pairs)."""
    return nemenyi_q(k, alpha) * rank_se(k, n)


def rank_se(k: int, n: int) -> float:
    """Standard error of a difference of two average ranks: sqrt(k (k+1) / (6 N)) (Demšar 2006)."""
    return math.sqrt(k * (k + 1) / (6 * n))


def bonferroni_dunn_cd(k: int, n: int, alpha: float = 0.05) -> float:
    """Bonferroni–Dunn CD for comparing k-1 methods with a control: z_{1-alpha/(2(k-1))} * SE."""
    return float(st.norm.ppf(1 - alpha / (2 * (k - 1)))) * rank_se(k, n)


@dataclass
class ControlTest:
    """One method's average rank against the control's: z = (R_i - R_c) / SE, two-sided normal p."""

    name: str
    rank_diff: float
    z: float
    p: float
    p_holm: Optional[float] = None


@dataclass
class Friedman:
    """Friedman test over complete rows, with average ranks, the Iman–Davenport F, the Nemenyi CD,
    and Holm-adjusted tests of every method against a control (with the Bonferroni–Dunn CD)."""

    names: List[str]
    n: int                                  # pairs with every distiller present
    avg_ranks: List[Optional[float]]
    chi2: Optional[float] = None
    p: Optional[float] = None
    cd: Optional[float] = None              # Nemenyi, all pairs of methods
    iman_davenport_f: Optional[float] = None
    iman_davenport_p: Optional[float] = None
    control: Optional[str] = None
    bonferroni_dunn_cd: Optional[float] = None
    vs_control: List[ControlTest] = field(default_factory=list)
    note: str = ""


EXACT_BELOW = 5              # fewer pairs: the Friedman p by permutation; no asymptotic F, CD or rank z-tests
EXACT_MAX_STATES = 200_000   # beyond, the permutation p is a seeded Monte Carlo estimate
MONTE_CARLO_DRAWS = 100_000
MONTE_CARLO_SEED = 0


def friedman_permutation_p(rows: Sequence[Sequence[float]]):
    """(p, method) of the Friedman test by permutation: under H0 each pair's ranking (mid-ranks of the
    values at the reported precision, its ties kept) is equally likely in every arrangement, pairs
    independently; p = P(sum of squared rank sums >= the observed), which orders exactly as the
    tie-corrected chi-square. Exact by dynamic programming over the pairs (the first pair fixed, by
    symmetry) while the distinct rank-sum vectors stay below EXACT_MAX_STATES; else a Monte Carlo
    estimate from MONTE_CARLO_DRAWS seeded draws, (1 + hits) / (1 + draws). `method` says which."""
    twice = [tuple(int(round(2 * r)) for r in st.rankdata(-np.array([rounded(v) for v in row]), method="average"))
             for row in rows]
    observed = sum(v * v for v in np.sum(twice, axis=0))
    states = {twice[0]: 1}
    for block in twice[1:]:
        if len(states) * _arrangements(block) > EXACT_MAX_STATES * 20:
            states = None
            break
        arrangements = set(itertools.permutations(block))
        nxt: Dict[tuple, int] = {}
        for sums, count in states.items():
            for arr in arrangements:
                key = tuple(a + b for a, b in zip(sums, arr))
                nxt[key] = nxt.get(key, 0) + count
        states = nxt
        if len(states) > EXACT_MAX_STATES:
            states = None
            break
    if states is not None:
        total = sum(states.values())
        hits = sum(c for sums, c in states.items() if sum(v * v for v in sums) >= observed)
        return hits / total, "exact"
    rng = np.random.default_rng(MONTE_CARLO_SEED)
    sums = np.zeros((MONTE_CARLO_DRAWS, len(twice[0])), dtype=np.int64)
    for block in twice:
        order = np.argsort(rng.random((MONTE_CARLO_DRAWS, len(block))), axis=1)
        sums += np.asarray(block)[order]
    hits = int(((sums ** 2).sum(axis=1) >= observed).sum())
    return (1 + hits) / (1 + MONTE_CARLO_DRAWS), "Monte Carlo"


def _arrangements(block) -> int:
    """Distinct orders of a rank vector: k! over the factorials of its tie counts."""
    out = math.factorial(len(block))
    for count in np.unique(block, return_counts=True)[1]:
        out //= math.factorial(int(count))
    return out


def friedman(means: Sequence[Mapping[str, float]], names: Sequence[str], alpha: float = 0.05,
             control: Optional[str] = None) -> Friedman:
    """Friedman chi-square (scipy, tie-corrected, on means at the reported precision), the
    Iman–Davenport F, the Nemenyi CD, and Holm over the k-1 rank tests against `control`;
    needs >= 3 distillers and >= 2 complete pairs. Below EXACT_BELOW pairs the p is the permutation
    p (`friedman_permutation_p`) and the asymptotic F, CDs and rank z-tests are left out."""
    names = list(names)
    rows = complete_rows(means, names)
    res = Friedman(names, len(rows), average_ranks(rows) if rows else [None] * len(names))
    k, n = len(names), len(rows)
    if k < 3 or n < 2:
        res.note = f"Friedman test needs >= 3 distillers and >= 2 complete pairs (have {k} and {n})"
        return res
    if n < EXACT_BELOW:
        at_precision = [[rounded(v) for v in row] for row in rows]
        if all(len(set(row)) == 1 for row in at_precision):
            res.chi2, res.p, res.note = 0.0, 1.0, "all distillers tie on every pair"
            return res
        res.chi2 = float(st.friedmanchisquare(*np.array(at_precision).T)[0])
        res.p, method = friedman_permutation_p(rows)
        res.note = (f"{n} pairs (< {EXACT_BELOW}): Friedman p by permutation ({method}); no Iman–Davenport F, "
                    "no Nemenyi or Bonferroni–Dunn critical difference (asymptotic)")
        return res
    res.cd = critical_difference(k, n, alpha)
    if control in names:
        res.control, res.bonferroni_dunn_cd = control, bonferroni_dunn_cd(k, n, alpha)
        c, se = res.avg_ranks[names.index(control)], rank_se(k, n)
        res.vs_control = [ControlTest(d, r - c, (r - c) / se, float(2 * st.norm.sf(abs(r - c) / se)))
                          for d, r in zip(names, res.avg_ranks) if d != control]
        for t, p in zip(res.vs_control, holm([t.p for t in res.vs_control])):
            t.p_holm = p
    at_precision = np.array([[rounded(v) for v in row] for row in rows])
    if all(len(set(row)) == 1 for row in at_precision):
        res.chi2, res.p, res.note = 0.0, 1.0, "all distillers tie on every pair"
        return res
    chi2, p = st.friedmanchisquare(*at_precision.T)
    res.chi2, res.p = float(chi2), _finite(p)
    denominator = n * (k - 1) - res.chi2
    if denominator > 0:                    # 0: every pair ranks the methods identically (F infinite)
        res.iman_davenport_f = (n - 1) * res.chi2 / denominator
        res.iman_davenport_p = _finite(st.f.sf(res.iman_davenport_f, k - 1, (k - 1) * (n - 1)))
    else:
        res.iman_davenport_p = 0.0
    return res


def cd_groups(avg_ranks: Sequence[float], cd: float) -> List[List[int]]:
    """Maximal groups of methods (indices, best rank first) whose rank spread is below the CD."""
    order = sorted(range(len(avg_ranks)), key=lambda i: avg_ranks[i])
    groups: List[List[int]] = []
    for a in range(len(order)):
        b = a
        while b + 1 < len(order) and avg_ranks[order[b + 1]] - avg_ranks[order[a]] < cd:
            b += 1
        group = order[a:b + 1]
        if len(group) > 1 and not (groups and set(group) <= set(groups[-1])):
            groups.append(group)
    return groups
