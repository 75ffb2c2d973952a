"""Verdicts follow the family's decision; simultaneous and decision intervals agree with it (issue 19, items 1-2).

Reference values from R 4.2.2 (Debian bookworm r-base-core), ``options(digits=17)``, run while writing
these tests; the R code is in the comment beside each value. Differences are counts of 1000 test
examples, as ``(correct_arm - correct_baseline) / 1000``.
"""

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnstats import stats
from bnstats.stats.decision import DIFFERENCE_VERDICTS, excludes_zero, family_intervals, verdict

# Family 1: the reproduced 3-seed sweep (2 archs x 2 arms); R:
#   d1 <- list(c(3,4,6), -c(6,7,9), c(1,9,-2), c(2,-3,1))
#   p <- sapply(d1, function(d) t.test(d/1000)$p.value)
#   -> 0.039012347759055321 0.014156427113914167 0.501941754908247662 1
#   p.adjust(p, "holm") -> 0.117037043277165964 0.056625708455656669 1 1
#   for (d in d1) print(t.test(d/1000, conf.level=1-0.05/4)$conf.int[1:2])
FAMILY1 = {("cnn", "after"): [3, 4, 6], ("cnn", "none"): [-6, -7, -9], ("mlp", "after"): [1, 9, -2],
           ("mlp", "none"): [2, -3, 1]}
R1_P = [0.039012347759055321, 0.014156427113914167, 0.501941754908247662, 1.0]
R1_HOLM = [0.117037043277165964, 0.056625708455656669, 1.0, 1.0]
R1_BONF_CI = [(-0.0034806286193270627, 0.0121472952859937294), (-0.01514729528599372682, 0.00048062861932705972),
              (-0.026420950078926423, 0.031754283412259755), (-0.013534179110417918, 0.013534179110417918)]

# Family 2: 8 seeds, 3 comparisons (one cell, arms b, c, d); R:
#   d2 <- list(c(11,4,6,2,4,4,7,10), c(7,10,1,11,7,-5,10,5), c(13,11,-5,-2,-6,5,10,-2))
#   p <- sapply(d2, function(d) t.test(d/1000)$p.value) -> 0.0010453728356434391 0.0198964368017624411 0.3052707517097105194
#   p.adjust(p, "holm") -> 0.0031361185069303174 0.0397928736035248823 0.3052707517097105194
#   p.adjust(p, "bonferroni") -> 0.0031361185069303174 0.0596893104052873269 0.9158122551291315583
#   p.adjust(p, "BH") -> 0.0031361185069303174 0.0298446552026436634 0.3052707517097105194
#   for (d in d2) print(t.test(d/1000, conf.level=1-0.05/3)$conf.int[1:2])      # Bonferroni
#   for (d in d2) print(t.test(d/1000, conf.level=1-2*0.05/3)$conf.int[1:2])    # BY, R = 2 BH rejections
FAMILY2 = {"b": [11, 4, 6, 2, 4, 4, 7, 10], "c": [7, 10, 1, 11, 7, -5, 10, 5], "d": [13, 11, -5, -2, -6, 5, 10, -2]}
R2_HOLM = [0.0031361185069303174, 0.0397928736035248823, 0.3052707517097105194]
R2_BONF = [0.0031361185069303174, 0.0596893104052873269, 0.9158122551291315583]
R2_BH = [0.0031361185069303174, 0.0298446552026436634, 0.3052707517097105194]
R2_BONF_CI = [(0.0025032902558005262, 0.0094967097441994754), (-0.0002412366857524246, 0.0117412366857524257),
              (-0.0054831895639839007, 0.0114831895639839008)]
R2_BY_CI = [(0.0030463110948755882, 0.0089536889051244125), (0.00068917121487227886, 0.01081082878512772127),
            (-0.0041657943404572887, 0.0101657943404572897)]
REL = 1e-9


def _runs(diffs_by_key, base, *, counts=True, n_test=1000, by=("arch",), arm_level=None):
    """A runs frame with baseline counts ``base`` and arms at ``base + d``; ``test_acc = correct / n_test``."""
    rows = []
    for key, d in diffs_by_key.items():
        cell = dict(zip(by, key[:-1] if isinstance(key, tuple) else (), strict=True))
        arm = key[-1] if isinstance(key, tuple) else key
        for s, (c0, k) in enumerate(zip(base, d, strict=True)):
            for placement, c in (("before", c0), (arm, c0 + k)):
                rows.append({"run_id": "-".join(map(str, [*cell.values(), placement, s])), "seed": s, **cell,
                             "placement": placement,
                             "test_acc": c / n_test, "diverged": False,
                             **({"test_correct": c, "n_test": n_test} if counts else {})})
    df = pd.DataFrame(rows).drop_duplicates("run_id").reset_index(drop=True)
    df.attrs["factors"] = [*by, "placement"]
    return df


def test_reproduced_three_seed_sweep_verdicts_follow_p_adj():
    # Old code printed "better" (p_adj 0.12) and "worse" (p_adj 0.056) from the unadjusted 95% intervals.
    out = stats.compare(_runs(FAMILY1, [900, 910, 905]), n_resamples=999)
    np.testing.assert_allclose(out.p, R1_P, rtol=REL)
    np.testing.assert_allclose(out.p_adj, R1_HOLM, rtol=REL)
    assert (out.ci_low.iloc[0] > 0) and (out.ci_high.iloc[1] < 0)  # the per-comparison intervals exclude 0 ...
    assert out.verdict.tolist() == ["inconclusive"] * 4  # ... but the family decides nothing
    np.testing.assert_allclose(out[["ci_low_simultaneous", "ci_high_simultaneous"]].to_numpy(), R1_BONF_CI, rtol=REL)
    assert (out.simultaneous_method == "bonferroni").all() and (out.family_size == 4).all()
    for lo, hi in out[["ci_low_decision", "ci_high_decision"]].to_numpy():
        assert lo < 0 < hi


@pytest.mark.parametrize(("method", "p_adj", "verdicts"), [
    ("holm", R2_HOLM, ["better", "better", "inconclusive"]),
    ("bonferroni", R2_BONF, ["better", "inconclusive", "inconclusive"]),
    ("bh", R2_BH, ["better", "better", "inconclusive"]),
])
def test_family_decisions_and_intervals_match_r(method, p_adj, verdicts):
    out = stats.compare(_runs(FAMILY2, [900, 910, 905, 899, 920, 915, 903, 911], by=()), p_adjust=method,
                        n_resamples=999)
    np.testing.assert_allclose(out.p_adj, p_adj, rtol=REL)
    assert out.verdict.tolist() == verdicts
    sim = out[["ci_low_simultaneous", "ci_high_simultaneous"]].to_numpy()
    np.testing.assert_allclose(sim, R2_BONF_CI, rtol=REL)
    dec = out[["ci_low_decision", "ci_high_decision"]].to_numpy()
    if method == "bonferroni":
        np.testing.assert_array_equal(dec, sim)
    elif method == "holm":
        # Holm rejects row c, whose Bonferroni interval contains 0: cut at 0 (open there), far end kept
        assert sim[1, 0] < 0 < sim[1, 1]
        np.testing.assert_array_equal(dec[[0, 2]], sim[[0, 2]])
        assert dec[1, 0] == 0.0 and dec[1, 1] == sim[1, 1]
        assert out.decision_interval_method.iloc[0].startswith("bonferroni, cut at 0 where holm rejects")
    else:
        np.testing.assert_allclose(dec, R2_BY_CI, rtol=REL)
        assert out.decision_interval_method.iloc[0] == "fcr-adjusted (benjamini-yekutieli)"
    for (lo, hi), v in zip(dec, out.verdict, strict=True):
        assert excludes_zero(lo, hi) == (v in DIFFERENCE_VERDICTS)


def test_one_sided_holm_uses_strassburger_bretz_bounds():
    # R: pg <- sapply(d2, function(d) t.test(d/1000, alternative="greater")$p.value); p.adjust(pg, "holm")
    #    -> 0.0015680592534651587 0.0198964368017624411 0.1526353758548552597  (r = 2 of m = 3 rejected)
    #    d <- d2[[3]]/1000; mean(d) - qt(1-0.05/(3-2), 7)*sd(d)/sqrt(8) -> -0.0021388651704373242
    # Strassburger & Bretz (2008): rejected (not all) -> bound 0; not rejected -> bound at alpha/(m - r)
    # (gMCP's simConfint(BonferroniHolm(3), ..., alternative="greater") computes the same bounds).
    runs = _runs(FAMILY2, [900, 910, 905, 899, 920, 915, 903, 911], by=())
    out = stats.compare(runs, alternative="greater", n_resamples=999)
    np.testing.assert_allclose(out.p_adj, [0.0015680592534651587, 0.0198964368017624411, 0.1526353758548552597], rtol=REL)
    assert out.ci_low_decision.tolist()[:2] == [0.0, 0.0]
    assert out.ci_low_decision.iloc[2] == pytest.approx(-0.0021388651704373242, rel=REL)
    assert np.isinf(out.ci_high_decision).all()
    # all rejected (m = 2): max(0, est - qt(1-0.05/2, 7) se); R:
    #   for (d in d2[1:2]) { d <- d/1000; print(max(0, mean(d) - qt(1-0.05/2, 7)*sd(d)/sqrt(8))) }
    #   -> 0.0033562697160969845 0.0012202520303753158 ; p.adjust(pg[1:2], "holm") -> 0.00104537 0.00994822
    two = stats.compare(runs[runs.placement.isin(["before", "b", "c"])], alternative="greater", n_resamples=999)
    np.testing.assert_allclose(two.ci_low_decision, [0.0033562697160969845, 0.0012202520303753158], rtol=REL)
    assert two.verdict.tolist() == ["better", "better"]


def test_equivalent_is_not_no_difference():
    # +0.19 pp with a tight interval and a 0.5 pp margin: different from 0 AND within the margin.
    # Old code: "equivalent".
    g = np.random.default_rng(7)
    base = g.integers(880, 920, size=30)
    d = {"after": (19 + g.integers(-3, 4, size=30)).tolist()}
    out = stats.compare(_runs(d, base.tolist(), n_test=10000, by=()), margin=0.005, n_resamples=999)
    row = out.iloc[0]
    assert row.p_adj < 1e-12 and row.p_tost_adj < 0.05
    assert row.verdict == "better, within margin"
    assert "better, within margin" in stats.VERDICTS and "worse, within margin" in stats.VERDICTS
    assert stats.compare(_runs(d, base.tolist(), n_test=10000, by=()), n_resamples=999).verdict.iloc[0] == "better"


def test_verdict_rules_table():
    assert verdict(0.1, rejected=True, equivalent=False, higher_is_better=True) == "better"
    assert verdict(0.1, rejected=True, equivalent=False, higher_is_better=False) == "worse"
    assert verdict(-0.1, rejected=True, equivalent=True, higher_is_better=True) == "worse, within margin"
    assert verdict(-0.1, rejected=False, equivalent=True, higher_is_better=True) == "equivalent"
    assert verdict(-0.1, rejected=False, equivalent=False, higher_is_better=True) == "inconclusive"
    assert verdict(math.nan, rejected=False, equivalent=False, higher_is_better=True, estimable=False) == "not estimable"
    assert stats.VERDICTS == ("better", "worse", "better, within margin", "worse, within margin", "equivalent",
                              "inconclusive", "not estimable")


def test_tost_is_adjusted_over_the_family():
    out = stats.compare(_runs(FAMILY2, [900, 910, 905, 899, 920, 915, 903, 911], by=()), margin=0.02,
                        p_adjust="bonferroni", n_resamples=999)
    np.testing.assert_allclose(out.p_tost_adj, np.minimum(1, 3 * out.p_tost), rtol=1e-12)


# ---- property: "decision interval excludes 0" <=> "verdict is better/worse", for every row -----------
@st.composite
def families(draw):
    """A random family: 1-6 comparisons on n seeds, count differences, some rows degenerate, some not estimable."""
    n = draw(st.integers(min_value=2, max_value=9))
    m = draw(st.integers(min_value=1, max_value=4))
    rows = {}
    for j in range(m):
        kind = draw(st.sampled_from(["random", "random", "random", "shifted", "degenerate"]))
        if kind == "degenerate":
            d = [draw(st.integers(-5, 5))] * n
        else:
            shift = draw(st.integers(-12, 12)) if kind == "shifted" else 0
            d = [shift + x for x in draw(st.lists(st.integers(-6, 6), min_size=n, max_size=n))]
        rows[f"arm{j}"] = d
    dead = draw(st.lists(st.sampled_from(sorted(rows)), max_size=1, unique=True))
    return n, rows, dead


PROP = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROP
@given(families(), st.sampled_from(["holm", "bonferroni", "bh"]), st.sampled_from([None, 0.004]),
       st.sampled_from(["two-sided", "greater", "less"]))
def test_decision_interval_excludes_zero_iff_difference_verdict(fam, method, margin, alternative):
    n, rows, dead = fam
    runs = _runs(rows, [900 + 3 * s for s in range(n)], by=())
    runs.loc[runs.placement.isin(dead), "diverged"] = True  # an arm that diverged on every seed
    runs.loc[runs.placement.isin(dead), ["test_acc", "test_correct"]] = np.nan
    out = stats.compare(runs, p_adjust=method, margin=margin, alternative=alternative, n_resamples=99,
                        diverged="drop_pair")
    alpha = 0.05
    est = out.method != "not estimable"
    assert (out.family_size == est.sum()).all()
    for r in out.itertuples():
        assert excludes_zero(r.ci_low_decision, r.ci_high_decision) == (r.verdict in DIFFERENCE_VERDICTS), r
        assert (r.verdict in DIFFERENCE_VERDICTS) == (r.p_adj < alpha)
        if r.method == "not estimable":
            assert r.verdict == "not estimable" and math.isnan(r.p_adj) and math.isnan(r.ci_low_decision)
        elif r.method == "paired t":  # the simultaneous interval is the Bonferroni one and agrees with it
            assert excludes_zero(r.ci_low_simultaneous, r.ci_high_simultaneous) == (r.p * r.family_size < alpha)
        else:  # degenerate: no t interval at all
            assert math.isnan(r.ci_low_simultaneous) and r.method.startswith("sign-flip")
    np.testing.assert_array_equal(out.p_adj[est], stats.adjust(out.p[est].to_numpy(), method))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(-3, 3), st.floats(0.05, 2), st.integers(2, 40), st.booleans()), min_size=1,
                max_size=12),
       st.sampled_from(["holm", "bonferroni", "bh"]), st.sampled_from(["two-sided", "greater", "less"]),
       st.sampled_from([0.05, 0.1, 0.2]))
def test_decision_intervals_agree_with_adjusted_p_on_many_families(rows, method, alternative, alpha):
    # The interval construction alone, on many families (fast): t-test p from est/se on n - 1 df, the
    # family's adjustment, and the decision intervals; degenerate rows (no t) get the sign region.
    from scipy import stats as sps

    est = np.array([r[0] for r in rows])
    se = np.array([r[1] for r in rows])
    df = np.array([r[2] for r in rows], dtype=float)
    t_valid = np.array([r[3] for r in rows]) | (np.arange(len(rows)) % 3 != 2)
    t = est / se
    p = {"two-sided": 2 * sps.t.sf(np.abs(t), df), "greater": sps.t.sf(t, df), "less": sps.t.cdf(t, df)}[alternative]
    p = np.where(t_valid, p, np.where(est == 0, 1.0, 0.01))  # degenerate rows: an exact-test p
    rejected = stats.adjust(p, method) < alpha
    iv = family_intervals(est, se, df, rejected=rejected, t_valid=t_valid, alpha=alpha, p_adjust=method,
                          alternative=alternative)
    for i in range(len(rows)):
        assert excludes_zero(iv["ci_low_decision"][i], iv["ci_high_decision"][i]) == rejected[i]
        if t_valid[i]:
            assert iv["ci_low_decision"][i] <= est[i] <= iv["ci_high_decision"][i] or rejected[i]


def test_family_intervals_reconcile_rounding():
    # p exactly at the Bonferroni threshold puts the interval end on 0 (closed): an unrejected row must
    # contain 0 in its interior, so that end is moved just past 0.
    iv = family_intervals([1.0], [1.0], [1e9], rejected=[False], t_valid=[True], alpha=2 * (1 - 0.8413447460685429),
                          p_adjust="bonferroni", alternative="two-sided")
    assert iv["ci_low_decision"][0] < 0 < iv["ci_high_decision"][0]
