"""Statistics that respect the leaderboard's design (issue 29, item 5): the Friedman test by
permutation below 5 pairs (no asymptotic F or CDs there), and the two-way cluster bootstrap of the
across-pairs gain (pairs share teachers and students). Hand-computed tables."""

import numpy as np
import pytest

from kdbench.leaderboard import stats
from kdbench.leaderboard.across import gain, two_way_bootstrap_ci


def test_permutation_friedman_by_hand_two_pairs_three_methods():
    """Both pairs rank a > b > c. With the first pair fixed, the second's 6 orders give rank sums whose
    squares sum to 56 (the observed order), 54, 54, 50, 50, 48: p = P(>= 56) = 1/6."""
    rows = [[3.0, 2.0, 1.0], [30.0, 20.0, 10.0]]
    p, method = stats.friedman_permutation_p(rows)
    assert method == "exact" and p == pytest.approx(1 / 6)
    res = stats.friedman([dict(zip("abc", r)) for r in rows], ["a", "b", "c"])
    assert res.p == pytest.approx(1 / 6) and res.n == 2
    assert res.cd is None and res.iman_davenport_f is None and res.vs_control == [] and "permutation" in res.note


def test_permutation_friedman_keeps_each_pairs_ties():
    """Pair 1 ties a and b (mid-ranks 1.5, 1.5, 3), pair 2 ranks a > b > c; pair 1's ranks are fixed and
    pair 2's 6 orders are equally likely. Observed rank sums (2.5, 3.5, 6): Σ² = 54.5; the orders
    (1,2,3) and (2,1,3) both give 54.5, (1,3,2) and (3,1,2) 51.5, (2,3,1) and (3,2,1) 48.5: p = 2/6."""
    rows = [[5.0, 5.0, 1.0], [3.0, 2.0, 1.0]]
    first, second = [1.5, 1.5, 3.0], [1.0, 2.0, 3.0]
    import itertools
    stat = [sum((a + b) ** 2 for a, b in zip(first, perm)) for perm in itertools.permutations(second)]
    observed = sum((a + b) ** 2 for a, b in zip(first, second))
    assert observed == 54.5 and sorted(stat) == [48.5, 48.5, 51.5, 51.5, 54.5, 54.5]
    assert stats.friedman_permutation_p(rows) == (pytest.approx(2 / 6), "exact")


def test_permutation_friedman_det_tiny_shape_and_monte_carlo_agree(monkeypatch):
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(3, 5)).round(2).tolist()
    exact, method = stats.friedman_permutation_p(rows)
    assert method == "exact"
    monkeypatch.setattr(stats, "EXACT_MAX_STATES", 0)
    mc, method = stats.friedman_permutation_p(rows)
    assert method == "Monte Carlo" and mc == pytest.approx(exact, abs=0.01)
    assert stats.friedman_permutation_p(rows) == (mc, "Monte Carlo")          # seeded: the same twice


def test_five_pairs_keep_the_asymptotic_test():
    rows = [dict(zip("abcd", r)) for r in np.random.default_rng(0).normal(size=(5, 4)).round(2).tolist()]
    res = stats.friedman(rows, list("abcd"), control="a")
    assert res.cd is not None and res.iman_davenport_f is not None and len(res.vs_control) == 3


def test_two_way_bootstrap_by_hand():
    # every pair gains the same: the interval is that point
    assert two_way_bootstrap_ci(np.full(4, 1.5), ["t1", "t1", "t2", "t2"], ["s1", "s2", "s1", "s2"]) == (1.5, 1.5)
    # one teacher, two students with gains 0 and 2: a draw is (s1, s1) mean 0, (s2, s2) mean 2, mixed mean 1,
    # with probabilities 1/4, 1/4, 1/2: the 2.5 % and 97.5 % percentiles are 0 and 2
    lo, hi = two_way_bootstrap_ci(np.array([0.0, 2.0]), ["t", "t"], ["s1", "s2"], samples=20_000)
    assert (lo, hi) == (0.0, 2.0)


def test_two_way_bootstrap_is_wider_than_iid_when_a_teacher_carries_the_gain():
    """Four teachers x three students; the gain is the teacher's effect (one teacher +6, others 0) plus
    small noise. Pairs resampled as independent understate the uncertainty: 12 'units' where there are
    4 teachers."""
    teachers = [f"t{i}" for i in range(4) for _ in range(3)]
    students = [f"s{j}" for _ in range(4) for j in range(3)]
    d = np.array([6.0 if t == "t0" else 0.0 for t in teachers]) + np.tile([0.1, -0.1, 0.0], 4)
    rows = [{"m": float(x), "vanilla": 0.0} for x in d]
    iid = gain(rows, "m", "vanilla")
    two_way = gain(rows, "m", "vanilla", clusters=list(zip(teachers, students)))
    assert two_way.mean == iid.mean == pytest.approx(1.5)
    assert two_way.ci_high - two_way.ci_low > 1.3 * (iid.ci_high - iid.ci_low)
    # the 2.5 % draws hold no t0 (gain about 0), the 97.5 % ones three t0 of four teacher draws (about 4.5)
    assert two_way.ci_low < iid.ci_low and two_way.ci_low == pytest.approx(0.0, abs=0.15)
    assert two_way.ci_high == pytest.approx(4.5, abs=0.2) and iid.ci_high < 3.5
    assert gain(rows, "m", "vanilla", clusters=list(zip(teachers, students))).ci_low == two_way.ci_low  # seeded
