"""Degenerate differences, exact ties from counts, not-estimable comparisons (issue 19 items 3-4, issue 22 item 7).

R 4.2.2 reference values (``options(digits=17)``) with the generating code beside each.
"""

import math

import numpy as np
import pandas as pd
import pytest

from bnstats import stats


@pytest.mark.parametrize(("n", "r_p"), [
    # binom.test(n, n)$p.value: the exact sign test of n equal positive differences (= the sign-flip p)
    (2, 0.5), (3, 0.25000000000000006), (6, 0.031250000000000007),
])
def test_equal_differences_decide_from_the_exact_test(n, r_p):
    # Old code: p_t = 0, a zero-width CI and "better", even at n = 2.
    a = 0.9 + 0.001 * np.arange(n)
    r = stats.paired(a * 1000, a * 1000 + 2, denominator=1000)  # every seed gains 2 of 1000 examples
    assert r.estimate == 0.002 and r.sd_diff == 0
    assert r.p == pytest.approx(r_p, rel=1e-12) and r.p == r.p_signflip and r.method == "sign-flip (exact)"
    assert math.isnan(r.p_t) and math.isnan(r.ci_low) and math.isnan(r.ci_high) and math.isnan(r.d_z)
    assert r.verdict == ("better" if r_p < 0.05 else "inconclusive")
    assert any("exact sign-flip" in c for c in r.caveats)
    # binom.test(6, 6, alternative="greater")$p.value -> 0.015625000000000003
    if n == 6:
        one = stats.paired(a, a + 0.002, alternative="greater")
        assert one.p == pytest.approx(0.015625000000000003, rel=1e-12)


def test_p_adj_uses_the_primary_p_of_degenerate_rows():
    rows = []
    for s in range(6):
        for arm, c in (("before", 900 + s), ("after", 905 + s), ("none", 900 + s + (s % 3) - 1)):
            rows.append({"run_id": f"{arm}{s}", "seed": s, "placement": arm, "test_acc": c / 1000, "test_correct": c,
                         "n_test": 1000})
    out = stats.compare(pd.DataFrame(rows), factors=["placement"], n_resamples=999)
    deg = out[out.arm == "after"].iloc[0]
    assert deg.method == "sign-flip (exact)" and deg.p == 0.03125 and math.isnan(deg.p_t)
    np.testing.assert_array_equal(out.p_adj, stats.adjust(out.p.to_numpy(), "holm"))
    assert math.isnan(deg.ci_low_simultaneous) and deg.ci_high_decision == math.inf  # the side of 0, nothing more


# k <- c(2, -2, 3, 5, -1, 4, 6, 2, 8, -2, 9, 1, 11, -3, 7, 10)    (count differences of 1000 examples)
# wilcox.test(k, exact=FALSE, correct=FALSE)$p.value -> 0.0095797980781488646 (same for k/1000)
TIE_K = np.array([2, -2, 3, 5, -1, 4, 6, 2, 8, -2, 9, 1, 11, -3, 7, 10])
# baselines chosen so that the float accuracies split the +-2 tie: (563 - 561)/1000 computed from
# 0.563 - 0.561 is 0.0019999999999998908, (498 - 500) from 0.498 - 0.5 is -0.0020000000000000018
TIE_BASE = np.array([561, 500, 905, 910, 899, 921, 917, 561, 903, 500, 912, 900, 915, 909, 920, 911])
R_TIE_P = 0.0095797980781488646


def _tie_runs(*, with_counts=True, with_n=True):
    rows = []
    for s, (c0, k) in enumerate(zip(TIE_BASE, TIE_K, strict=True)):
        for arm, c in (("before", c0), ("after", c0 + k)):
            row = {"run_id": f"{arm}{s}", "seed": s, "placement": arm, "test_acc": c / 1000}
            if with_counts:
                row["test_correct"] = int(c)
            if with_n:
                row["n_test"] = 1000
            rows.append(row)
    return pd.DataFrame(rows)


def test_count_metrics_are_differenced_on_integers():
    a, b = TIE_BASE / 1000, (TIE_BASE + TIE_K) / 1000
    assert len({abs(x) for x in (b - a)[np.abs(TIE_K) == 2]}) == 2  # floats split the tie ...
    floats = stats.paired(a, b)
    counts = stats.paired(TIE_BASE, TIE_BASE + TIE_K, denominator=1000)
    assert counts.wilcoxon_method == floats.wilcoxon_method == "approx"
    assert counts.p_wilcoxon == pytest.approx(R_TIE_P, rel=1e-12)  # ... counts keep it: R's value
    assert abs(floats.p_wilcoxon - R_TIE_P) > 1e-3  # 0.0130 from the split tie
    assert counts.denominator == 1000 and counts.estimate == pytest.approx(TIE_K.mean() / 1000, rel=1e-14)
    for source, runs in (("counts", _tie_runs()), ("counts recovered from the metric", _tie_runs(with_counts=False))):
        row = stats.compare(runs, factors=["placement"], n_resamples=999).iloc[0]
        assert row.differences == source and row.p_wilcoxon == pytest.approx(R_TIE_P, rel=1e-12)
    row = stats.compare(_tie_runs(with_counts=False, with_n=False), factors=["placement"], n_resamples=999).iloc[0]
    assert row.differences == "floats" and row.p_wilcoxon == floats.p_wilcoxon
    assert any("computed from floats" in c and "split ties" in c for c in stats.caveat_list(row.caveats))


def test_count_columns_are_checked():
    bad = _tie_runs()
    bad.loc[3, "test_correct"] += 1
    with pytest.raises(ValueError, match=r"test_acc disagrees with test_correct/n_test for run\(s\) \['after1'\]"):
        stats.compare(bad, factors=["placement"])
    other = _tie_runs()
    other.loc[other.run_id == "after4", "n_test"] = 500
    with pytest.raises(ValueError, match=r"n_test differs between the arms for seed \[4\]"):
        stats.compare(other, factors=["placement"])
    frac = _tie_runs(with_counts=False)
    frac.loc[0, "test_acc"] += 0.0004
    with pytest.raises(ValueError, match=r"test_acc is not a multiple of 1/n_test for run\(s\) \['before0'\]"):
        stats.compare(frac, factors=["placement"])
    with pytest.raises(ValueError, match="denominator"):
        stats.paired([1.5, 2, 3], [2, 3, 4], denominator=10)


def test_min_p_signflip_counts_nonzero_differences_only():
    # d = [1,2,3,4,5,0]: the zero's sign changes nothing, so the floor is 2**(1-5) = 0.0625 (R: 2*0.5^5),
    # not 0.031 as old code reported, and the "cannot reach p < 0.05" caveat appears.
    r = stats.paired(np.zeros(6), [1.0, 2, 3, 4, 5, 0])
    assert r.n_nonzero == 5 and r.min_p_signflip == 0.0625 and r.p_signflip == 0.0625
    assert any(c.startswith("sign-flip (exact) cannot reach p < 0.05 with 5 nonzero") for c in r.caveats)


def _diverged_runs():
    rows = []
    for arch in ("cnn", "mlp"):
        for s in range(5):
            for arm, c in (("before", 900 + s), ("after", 903 + s + s % 2), ("none", 880 - s)):
                dead = arch == "cnn" and arm == "none"
                rows.append({"run_id": f"{arch}{arm}{s}", "seed": s, "arch": arch, "placement": arm,
                             "test_acc": np.nan if dead else c / 1000, "diverged": dead})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("policy", ["keep", "drop_pair"])
def test_an_arm_that_diverged_on_every_seed_is_not_estimable(policy):
    # Old code: ValueError "fewer than 2 complete pairs" (bnstats compare exited 2, the report 1).
    out = stats.compare(_diverged_runs(), factors=["arch", "placement"], diverged=policy, n_resamples=999)
    dead = out[(out.arch == "cnn") & (out.arm == "none")].iloc[0]
    assert dead.verdict == "not estimable" and dead.method == "not estimable"
    assert dead.n == 0 and dead.n_diverged == 5
    for k in ("estimate", "ci_low", "p", "p_adj", "ci_low_simultaneous", "ci_low_decision", "d_z"):
        assert math.isnan(dead[k]), k
    assert any(c.startswith("not estimable: 0 usable pair(s) of 5 seed(s)") for c in stats.caveat_list(dead.caveats))
    rest = out.drop(dead.name)
    assert (rest.family_size == 3).all() and rest.p_adj.notna().all()
    np.testing.assert_array_equal(rest.p_adj, stats.adjust(rest.p.to_numpy(), "holm"))
    assert set(rest.verdict) <= set(stats.VERDICTS) - {"not estimable"}


def test_caveats_are_one_per_line_and_never_contain_a_line_break():
    out = stats.compare(_diverged_runs(), factors=["arch", "placement"], n_resamples=999)
    for cell in out.caveats:
        items = stats.caveat_list(cell)
        assert items and "\n".join(items) == cell and all("\n" not in c and c.strip() == c for c in items)
    assert stats.caveat_list("") == [] and stats.caveat_list(None) == [] and stats.caveat_list(float("nan")) == []
    assert stats.caveat_list(("a; b", "c")) == ["a; b", "c"]  # a caveat may contain "; " (old joiner)
    with pytest.raises(TypeError, match="caveat_list expects"):
        stats.caveat_list(3)
    # the joiner folds a line break inside a caveat (e.g. a captured warning) into a space
    from bnstats.stats._results import join_caveats
    assert stats.caveat_list(join_caveats(["two\nlines", "x"])) == ["two lines", "x"]
