"""kdbench.stats against values computed independently (by hand or with a second formula)."""

import math

import numpy as np
import pytest
from scipy import stats as st

from kdbench.leaderboard import stats

DEMSAR_Q05 = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031}   # Demšar 2006, Table 5a


def test_summary_matches_the_t_interval_formula():
    s = stats.summarize([1.0, 2.0, 3.0, 4.0])
    std = math.sqrt(5 / 3)                       # sum of squares 5, ddof=1
    half = 3.182446305284263 * std / 2           # t_{0.975, 3} from tables, / sqrt(4)
    assert (s.n, s.mean) == (4, 2.5)
    assert s.std == pytest.approx(std)
    assert (s.ci_low, s.ci_high) == pytest.approx((2.5 - half, 2.5 + half))
    assert s.note == ""


def test_summary_n1_and_n0_say_why():
    s = stats.summarize([78.5])
    assert (s.n, s.mean, s.std, s.ci_low, s.ci_high) == (1, 78.5, None, None, None)
    assert "n=1" in s.note
    s0 = stats.summarize([])
    assert s0.n == 0 and s0.mean is None and s0.note


def test_paired_compare_uses_common_seeds_and_matches_scipy():
    a = {0: 80.1, 1: 79.4, 2: 81.0, 3: 80.2, 9: 50.0}
    ref = {0: 78.0, 1: 78.9, 2: 79.5, 3: 79.9, 7: 10.0}
    c = stats.paired_compare(a, ref)
    d = np.array([2.1, 0.5, 1.5, 0.3])
    assert c.n == 4 and c.seeds == [0, 1, 2, 3]
    assert c.diff == pytest.approx(d.mean())
    assert c.p_t == pytest.approx(st.ttest_1samp(d, 0).pvalue)
    t = d.mean() / (d.std(ddof=1) / 2)           # the paired t statistic by hand, df = 3
    assert c.p_t == pytest.approx(2 * st.t.sf(abs(t), 3))
    assert c.p_wilcoxon is None and "Wilcoxon needs n >= 6" in c.note


def test_wilcoxon_from_six_seeds():
    a = {s: 70 + s * 0.1 + (0.7 if s % 2 else 0.2) for s in range(6)}
    ref = {s: 70 + s * 0.1 for s in range(6)}
    c = stats.paired_compare(a, ref)
    d = [a[s] - ref[s] for s in range(6)]
    assert c.p_wilcoxon == pytest.approx(st.wilcoxon(d).pvalue)
    assert c.p_wilcoxon == pytest.approx(2 / 2 ** 6)   # all 6 differences positive: exact two-sided p
    assert c.p_t == pytest.approx(st.ttest_rel([a[s] for s in range(6)], [ref[s] for s in range(6)]).pvalue)


@pytest.mark.parametrize("a, ref, reason", [
    ({0: 80.0}, {0: 79.0}, "n=1"),
    ({0: 80.0, 1: 81.0}, {5: 79.0}, "no seeds in common"),
    ({0: 80.0, 1: 81.0, 2: 82.0}, {0: 80.0, 1: 81.0, 2: 82.0}, "all paired differences are zero"),
    ({0: 81.0, 1: 82.0, 2: 83.0}, {0: 80.0, 1: 81.0, 2: 82.0}, "zero variance"),
])
def test_paired_compare_degenerate_cases_give_a_reason_not_nan(a, ref, reason):
    c = stats.paired_compare(a, ref)
    assert c.p_t is None and c.p_wilcoxon is None
    assert reason in c.note
    assert c.diff is None or math.isfinite(c.diff)


def test_holm_hand_example():
    # sorted: .005*4=.02, .01*3=.03, .03*2=.06, .04*1=.04 -> monotone .06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, None, 0.6]) == [1.0, None, 1.0]     # capped at 1; None not counted (m = 2)
    assert stats.holm([]) == []


def test_holm_comparisons_sets_p_holm():
    cs = [stats.Comparison(3, p_t=0.01), stats.Comparison(1), stats.Comparison(3, p_t=0.02)]
    stats.holm_comparisons(cs)
    assert [c.p_holm for c in cs] == pytest.approx([0.02, None, 0.02])


def test_average_gain_over_baseline():
    from kdbench.leaderboard.across import gains_over
    means = [{"vanilla": 70.0, "kd": 72.0, "ofa": 75.0}, {"vanilla": 60.0, "kd": 59.0}, {"kd": 90.0}]
    g = gains_over(means, ["vanilla", "kd", "ofa"], "vanilla")
    assert set(g) == {"kd", "ofa"}
    assert (g["kd"].mean, g["kd"].pairs) == (pytest.approx(0.5), 2)
    assert (g["ofa"].mean, g["ofa"].pairs) == (pytest.approx(5.0), 1)


def test_average_ranks_with_ties():
    # row 1: 80 best (1), the two 70s share ranks 2 and 3 -> 2.5; row 2: 90 best, 60s -> 2.5
    assert stats.average_ranks([[80, 70, 70], [60, 90, 60]]) == pytest.approx([1.75, 1.75, 2.5])


def test_friedman_matches_the_hand_formula():
    names = ["a", "b", "c", "d"]
    rng = np.random.default_rng(0)
    rows = [rng.permutation(4) + 70.0 for _ in range(7)] + [np.array([74.0, 73.0, 72.0, 71.0])] * 3
    means = [dict(zip(names, r)) for r in rows] + [{"a": 1.0}]          # incomplete rows are left out
    f = stats.friedman(means, names)
    k, n = 4, 10
    ranks = np.array([st.rankdata(-r) for r in rows]).mean(axis=0)
    chi2 = 12 * n / (k * (k + 1)) * (np.sum(ranks ** 2) - k * (k + 1) ** 2 / 4)
    assert f.n == n and f.avg_ranks == pytest.approx(ranks)
    assert f.chi2 == pytest.approx(chi2)
    assert f.p == pytest.approx(st.chi2.sf(chi2, k - 1))
    assert f.cd == pytest.approx(2.569 * math.sqrt(k * (k + 1) / (6 * n)), abs=1e-3)


def test_friedman_needs_three_distillers_and_two_pairs():
    two = stats.friedman([{"a": 1.0, "b": 2.0}] * 3, ["a", "b"])
    assert two.p is None and two.cd is None and ">= 3 distillers" in two.note
    assert two.avg_ranks == [2.0, 1.0]
    one_pair = stats.friedman([{"a": 1.0, "b": 2.0, "c": 3.0}], ["a", "b", "c"])
    assert one_pair.p is None and "have 3 and 1" in one_pair.note
    tied = stats.friedman([{"a": 1.0, "b": 1.0, "c": 1.0}] * 3, ["a", "b", "c"])
    assert (tied.chi2, tied.p) == (0.0, 1.0) and "tie" in tied.note


@pytest.mark.parametrize("k, q", sorted(DEMSAR_Q05.items()))
def test_nemenyi_q_matches_demsar_table(k, q):
    assert stats.nemenyi_q(k) == pytest.approx(q, abs=1e-3)


def test_critical_difference_demsar_example():
    # Demšar 2006, section 3.2.4: 4 classifiers on 14 data sets, CD = 2.569 * sqrt(4*5/(6*14)) = 1.25
    assert stats.critical_difference(4, 14) == pytest.approx(1.25, abs=0.005)


def test_cd_groups():
    assert stats.cd_groups([1.0, 1.5, 2.8, 3.0], 1.0) == [[0, 1], [2, 3]]
    assert stats.cd_groups([2.2, 1.0, 1.6], 1.0) == [[1, 2], [2, 0]]     # overlapping groups, best first
    assert stats.cd_groups([1.0, 3.0], 1.0) == []
    assert stats.cd_groups([1.0, 1.2, 1.4], 1.0) == [[0, 1, 2]]


# -- leaderboard v2: exact ties, paired intervals, across-pairs tests, Iman–Davenport, control ----------
def test_means_equal_at_the_printed_precision_tie_exactly():
    # the audit's case: 141.01 / 3 summed in two orders differs in the last bit
    dkd, fitnet = 47.00333333333334, 47.00333333333333
    assert dkd != fitnet
    assert stats.average_ranks([[dkd, fitnet, 46.0]]) == [1.5, 1.5, 3.0]
    means = [{"dkd": dkd, "fitnet": fitnet, "kd": 46.0}, {"dkd": 50.0, "fitnet": 49.0, "kd": 51.0}]
    f = stats.friedman(means, ["dkd", "fitnet", "kd"])
    assert f.avg_ranks == [1.75, 2.25, 2.0]


def test_paired_difference_interval_and_effect_size_by_hand():
    c = stats.paired_compare({0: 11.0, 1: 12.0, 2: 14.0}, {0: 10.0, 1: 10.0, 2: 10.0})   # d = 1, 2, 4
    sd = math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)                                        # t_{0.975, 2}
    assert c.diff == pytest.approx(7 / 3) and c.effect_dz == pytest.approx((7 / 3) / sd)
    assert (c.ci_low, c.ci_high) == pytest.approx((7 / 3 - half, 7 / 3 + half))
    constant = stats.paired_compare({0: 11.0, 1: 11.0}, {0: 10.0, 1: 10.0})
    assert constant.ci_low is None and constant.effect_dz is None and "zero variance" in constant.note


def test_wilcoxon_over_pairs_wins_ties_losses_and_holm():
    from kdbench.leaderboard.across import gain, gains_over
    base = [50.0 + i for i in range(8)]
    up = [{"m": b + 0.5 + 0.1 * i, "v": b} for i, b in enumerate(base)]          # 8 wins, distinct gains
    g = gain(up, "m", "v")
    assert (g.wins, g.ties, g.losses, g.pairs) == (8, 0, 0, 8)
    assert g.p_wilcoxon == pytest.approx(2 / 2 ** 8)                                # exact two-sided p
    assert g.median == pytest.approx(0.85) and g.mean == pytest.approx(0.85)
    # a tie at the printed precision is a tie (47.001 vs 47.004 both print 47.00), dropped by Wilcoxon
    mixed = [{"m": 47.001, "v": 47.004}, {"m": 60.0, "v": 59.0}, {"m": 40.0, "v": 42.0}]
    g = gain(mixed, "m", "v")
    assert (g.wins, g.ties, g.losses) == (1, 1, 1)
    assert g.p_wilcoxon == pytest.approx(st.wilcoxon([100, -200]).pvalue) and "cannot reach" in g.note
    tied = gain([{"m": 1.0, "v": 1.0}] * 3, "m", "v")
    assert tied.p_wilcoxon is None and tied.ties == 3
    # Holm over the distillers that had a test
    rows = [dict(r, n=r["v"]) for r in up]                                          # n ties v everywhere
    out = gains_over(rows, ["v", "m", "n"], "v")
    assert set(out) == {"m", "n"} and out["n"].p_holm is None
    assert out["m"].p_holm == pytest.approx(out["m"].p_wilcoxon)                    # m = 1 test


def test_bootstrap_interval_is_deterministic_and_brackets_the_mean():
    from kdbench.leaderboard.across import bootstrap_ci
    d = np.array([-20.0, 0.5, 1.0, 1.5, 2.0, 0.7])
    lo, hi = bootstrap_ci(d)
    assert (lo, hi) == bootstrap_ci(d) and lo < d.mean() < hi
    means = d[np.random.default_rng(0).integers(0, 6, size=(10_000, 6))].mean(axis=1)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    assert bootstrap_ci(np.array([1.5, 1.5, 1.5])) == (1.5, 1.5)


def test_iman_davenport_and_control_tests_by_formula():
    names = ["a", "b", "c", "d"]
    rng = np.random.default_rng(1)
    rows = [rng.permutation(4) + 70.0 for _ in range(9)] + [np.array([74.0, 73.0, 72.0, 71.0])] * 5
    f = stats.friedman([dict(zip(names, r)) for r in rows], names, control="d")
    k, n = 4, 14
    ff = (n - 1) * f.chi2 / (n * (k - 1) - f.chi2)
    assert f.iman_davenport_f == pytest.approx(ff)
    assert f.iman_davenport_p == pytest.approx(st.f.sf(ff, k - 1, (k - 1) * (n - 1)))
    se = math.sqrt(k * (k + 1) / (6 * n))
    z = [(f.avg_ranks[i] - f.avg_ranks[3]) / se for i in range(3)]
    assert [t.name for t in f.vs_control] == ["a", "b", "c"]
    assert [t.z for t in f.vs_control] == pytest.approx(z)
    p = [2 * st.norm.sf(abs(x)) for x in z]
    assert [t.p for t in f.vs_control] == pytest.approx(p)
    order = np.argsort(p)
    holm = np.maximum.accumulate([min(1, (3 - j) * p[i]) for j, i in enumerate(order)])
    assert [f.vs_control[i].p_holm for i in order] == pytest.approx(list(holm))


def test_bonferroni_dunn_cd_demsar_example():
    # Demšar 2006, section 3.2.4: Bonferroni–Dunn q_0.05 = 2.394 for k = 4; CD = 2.394 * sqrt(20/84)
    assert stats.bonferroni_dunn_cd(4, 14) == pytest.approx(2.394 * math.sqrt(20 / 84), abs=2e-3)
