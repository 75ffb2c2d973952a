"""Reference values from R 4.2.2 (Debian bookworm r-base-core), run while writing these tests.

Each number below was printed by the R code in the comment beside it (``options(digits=15)``).
R is not needed to run the tests. Data used throughout::

    # R's `sleep` data, group 1 (x) and group 2 (y); d = y - x
    x <- c(0.7,-1.6,-0.2,-1.2,-0.1,3.4,3.7,0.8,0.0,2.0)
    y <- c(1.9,0.8,1.1,0.1,-0.1,4.4,5.5,1.6,4.6,3.4)
    # accuracies without zero or tied differences
    a <- c(0.9120,0.9050,0.9180,0.8990,0.9210,0.9100,0.9150,0.9030,0.9080)
    b <- c(0.9151,0.9038,0.9225,0.9017,0.9218,0.9152,0.9146,0.9049,0.9142)
"""

import math

import numpy as np
import pytest

from bnstats import stats
from bnstats.stats.paired import _hedges_j

X = np.array([0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0])
Y = np.array([1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4])
A = np.array([0.9120, 0.9050, 0.9180, 0.8990, 0.9210, 0.9100, 0.9150, 0.9030, 0.9080])
B = np.array([0.9151, 0.9038, 0.9225, 0.9017, 0.9218, 0.9152, 0.9146, 0.9049, 0.9142])
REL = 1e-10


def test_paired_t_two_sided_sleep():
    # r <- t.test(y, x, paired=TRUE); c(r$statistic, r$parameter, r$p.value, r$conf.int)
    r = stats.paired(X, Y)
    assert r.t == pytest.approx(4.06212768338203656, rel=REL)
    assert r.df == 9
    assert r.p_t == pytest.approx(0.00283289019738427, rel=1e-9)
    assert r.ci_low == pytest.approx(0.70011423672301754, rel=REL)
    assert r.ci_high == pytest.approx(2.45988576327698238, rel=REL)
    assert r.estimate == pytest.approx(1.58, rel=1e-14)
    assert r.verdict == "better"


def test_paired_t_one_sided_sleep():
    # r <- t.test(y, x, paired=TRUE, alternative="greater", conf.level=0.9)
    # -> t 4.06212768338203656, p 0.00141644509869214, CI 1.04205890681226876 Inf
    r = stats.paired(X, Y, alternative="greater", confidence_level=0.9)
    assert r.p_t == pytest.approx(0.00141644509869214, rel=1e-9)
    assert r.ci_low == pytest.approx(1.04205890681226876, rel=REL)
    assert r.ci_high == math.inf
    # r <- t.test(y, x, paired=TRUE, alternative="less") -> p 0.998583554901308, CI -Inf 2.293005267029284
    r = stats.paired(X, Y, alternative="less")
    assert r.p_t == pytest.approx(0.998583554901308, rel=1e-12)
    assert r.ci_low == -math.inf
    assert r.ci_high == pytest.approx(2.293005267029284, rel=1e-12)


def test_paired_t_accuracies():
    # r <- t.test(b, a, paired=TRUE) -> t 3.018345589000202445, df 8, p 0.016601236497623895,
    #   CI 0.000597876650106974 0.004468790016559628
    r = stats.paired(A, B)
    assert (r.t, r.df) == (pytest.approx(3.018345589000202445, rel=REL), 8)
    assert r.p_t == pytest.approx(0.016601236497623895, rel=1e-9)
    assert r.ci_low == pytest.approx(0.000597876650106974, rel=1e-9)
    assert r.ci_high == pytest.approx(0.004468790016559628, rel=1e-9)


def test_wilcoxon_exact():
    # wilcox.test(b, a, paired=TRUE, exact=TRUE) -> V 41, p 0.02734375
    r = stats.paired(A, B, wilcoxon_method="exact")
    assert r.wilcoxon_method == "exact"
    assert r.p_wilcoxon == pytest.approx(0.02734375, rel=1e-12)
    # "auto" resolves to exact here (no zeros, no ties, n <= 50)
    assert stats.paired(A, B).wilcoxon_method == "exact"
    # wilcox.test(b, a, paired=TRUE, exact=TRUE, alternative="greater") -> 0.013671875
    r = stats.paired(A, B, wilcoxon_method="exact", alternative="greater")
    assert r.p_wilcoxon == pytest.approx(0.013671875, rel=1e-12)


@pytest.mark.parametrize(
    ("correct", "p_ab", "p_sleep"),
    [
        # wilcox.test(b, a, paired=TRUE, exact=FALSE, correct=TRUE)$p.value; same for (y, x) (ties, one zero)
        (True, 0.0329693812442201, 0.00909069801592506),
        # ... correct=FALSE
        (False, 0.0284018370442017, 0.00763244164820552),
    ],
)
def test_wilcoxon_normal_approximation(correct, p_ab, p_sleep):
    r = stats.paired(A, B, wilcoxon_method="approx", wilcoxon_correction=correct)
    assert r.wilcoxon_method == "approx" and r.wilcoxon_correction is correct
    assert r.p_wilcoxon == pytest.approx(p_ab, rel=1e-10)
    r = stats.paired(X, Y, wilcoxon_method="approx", wilcoxon_correction=correct, zero_method="wilcox")
    assert r.p_wilcoxon == pytest.approx(p_sleep, rel=1e-10)
    assert any("zero difference" in c for c in r.caveats)


def test_wilcoxon_exact_refuses_ties():
    with pytest.raises(ValueError, match="wilcoxon_method='exact'"):
        stats.paired(X, Y, wilcoxon_method="exact")


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        # pv <- c(0.01, 0.02, 0.03, 0.04, 0.05, 0.2, NA, 0.001); p.adjust(pv, "holm")
        ("holm", [0.060, 0.100, 0.120, 0.120, 0.120, 0.200, np.nan, 0.007]),
        # p.adjust(pv, "BH")
        ("bh", [0.0350000000000000, 0.0466666666666667, 0.0525000000000000, 0.0560000000000000,
                0.0583333333333333, 0.2000000000000000, np.nan, 0.0070000000000000]),
        # p.adjust(pv, "bonferroni")
        ("bonferroni", [0.070, 0.140, 0.210, 0.280, 0.350, 1.000, np.nan, 0.007]),
    ],
)
def test_adjust_equals_p_adjust(method, expected):
    pv = [0.01, 0.02, 0.03, 0.04, 0.05, 0.2, np.nan, 0.001]
    np.testing.assert_allclose(stats.adjust(pv, method=method), expected, rtol=1e-13, equal_nan=True)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        # pv <- c(0.02, 0.02, 0.01, 0.04, 0.04, 0.5, 0.001); p.adjust(pv, "holm")   (tied p-values)
        ("holm", [0.1, 0.1, 0.06, 0.12, 0.12, 0.5, 0.007]),
        # p.adjust(pv, "BH")
        ("bh", [0.035, 0.035, 0.035, 0.0466666666666666688, 0.0466666666666666688, 0.5, 0.007]),
        # p.adjust(pv, "bonferroni")
        ("bonferroni", [0.14, 0.14, 0.07, 0.28, 0.28, 1.0, 0.007]),
    ],
)
def test_adjust_with_ties_equals_p_adjust(method, expected):
    pv = [0.02, 0.02, 0.01, 0.04, 0.04, 0.5, 0.001]
    np.testing.assert_allclose(stats.adjust(pv, method=method), expected, rtol=1e-13)


@pytest.mark.parametrize(
    ("sd", "effect", "kw", "r_n"),
    [
        # power.t.test(delta=0.002, sd=0.003, power=0.8, type="paired")$n
        (0.003, 0.002, {}, 19.6669729270756),
        # power.t.test(delta=0.5, sd=1, power=0.8, type="paired")$n
        (1.0, 0.5, {}, 33.367204088022),
        # power.t.test(delta=1.5, sd=1, power=0.8, type="paired")$n
        (1.0, 1.5, {}, 5.68614464853983),
        # power.t.test(delta=0.001, sd=0.004, power=0.9, sig.level=0.01, type="paired")$n
        (0.004, 0.001, {"power": 0.9, "alpha": 0.01}, 241.397098936971),
        # power.t.test(delta=0.3, sd=1, power=0.8, type="paired", alternative="one.sided")$n
        (1.0, 0.3, {"alternative": "greater"}, 70.0679345381795),
    ],
)
def test_seeds_needed_equals_power_t_test(sd, effect, kw, r_n):
    assert stats.seeds_needed(sd, effect, **kw) == math.ceil(r_n)
    if kw.get("alternative", "two-sided") == "two-sided":
        assert stats.seeds_needed(sd, -effect, **kw) == math.ceil(r_n)
    else:  # a one-sided test cannot detect an effect on its other side (old code planned it anyway)
        with pytest.raises(ValueError, match=r"effect=-0.3 lies on the side alternative='greater' cannot detect"):
            stats.seeds_needed(sd, -effect, **kw)
        assert stats.seeds_needed(sd, -effect, **{**kw, "alternative": "less"}) == math.ceil(r_n)


def test_tost_from_two_one_sided_t_tests():
    # m <- 0.5; p1 <- t.test(y, x, paired=TRUE, mu=-m, alternative="greater")$p.value
    # p2 <- t.test(y, x, paired=TRUE, mu=m, alternative="less")$p.value; max(p1, p2)
    # -> 0.000231902704481593, 0.989240756621612816, 0.989240756621612816
    r = stats.paired(X, Y, margin=0.5)
    assert r.p_tost == pytest.approx(0.989240756621612816, rel=1e-10)
    assert r.verdict == "better"
    # same with (b, a), m <- 0.01 -> 1.99488621251918e-07, 1.00898542305525e-05, max 1.00898542305525e-05
    r = stats.paired(A, B, margin=0.01)
    assert r.p_tost == pytest.approx(1.00898542305525e-05, rel=1e-9)
    # p_t = 0.0166 < 0.05 too: different from 0 *and* within the margin (old label: "equivalent")
    assert r.verdict == "better, within margin"
    assert (r.margin_low, r.margin_high) == (-0.01, 0.01)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        # dz_ci <- function(d, level=0.95) { n <- length(d); tt <- mean(d)/(sd(d)/sqrt(n)); al <- 1-level
        #   lo <- uniroot(function(l) pt(tt, n-1, ncp=l) - (1-al/2), c(tt-20, tt+20), tol=1e-14)$root
        #   hi <- uniroot(function(l) pt(tt, n-1, ncp=l) - al/2, c(tt-20, tt+20), tol=1e-14)$root
        #   c(mean(d)/sd(d), lo/sqrt(n), hi/sqrt(n)) }
        # dz_ci(y - x)
        (X, Y, (1.284557562591055, 0.414627756380144, 2.118016513977067)),
        # dz_ci(b - a)
        (A, B, (1.006115196333401, 0.173127332900929, 1.799891470128165)),
    ],
)
def test_d_z_and_noncentral_t_interval(a, b, expected):
    # R's pt(ncp=) reports "full precision may not have been achieved" far from the root: compare at 1e-8.
    r = stats.paired(a, b)
    assert r.d_z == pytest.approx(expected[0], rel=1e-12)
    assert r.d_z_ci_low == pytest.approx(expected[1], rel=1e-8)
    assert r.d_z_ci_high == pytest.approx(expected[2], rel=1e-8)
    assert r.effect_size == r.d_z and r.effect_size_name == "d_z"


def test_hedges_correction():
    # df <- 9; gamma(df/2)/(sqrt(df/2)*gamma((df-1)/2)) -> 0.913874891792552
    assert _hedges_j(9) == pytest.approx(0.913874891792552, rel=1e-13)
    r = stats.paired(X, Y)
    assert r.g_z == pytest.approx(0.913874891792552 * 1.284557562591055, rel=1e-12)


def test_pitman_morgan():
    # r <- cor.test(y - x, y + x); c(r$statistic, r$parameter, r$p.value)
    # -> 0.526362675106352, 8, 0.612912877461085
    # F <- var(y)/var(x); rr <- cor(x, y); tq <- qt(0.975, n-2); K <- (1-rr^2)*tq^2/(n-2)
    # c(F, F*(1+2*K-2*sqrt(K*(K+1))), F*(1+2*K+2*sqrt(K*(K+1))))
    # -> 1.252595035584100, 0.483284933650102, 3.246520249079154
    r = stats.variance_ratio(X, Y)
    assert r.t == pytest.approx(0.526362675106352, rel=1e-12)
    assert r.df == 8
    assert r.p == pytest.approx(0.612912877461085, rel=1e-10)
    assert r.ratio == pytest.approx(1.252595035584100, rel=1e-13)
    assert r.ci_low == pytest.approx(0.483284933650102, rel=1e-12)
    assert r.ci_high == pytest.approx(3.246520249079154, rel=1e-12)


def test_pitman_morgan_interval_inverts_the_test():
    # At each end θ of the interval, the Pitman–Morgan test of var(y)/var(x) = θ (correlation of
    # y - √θ x and y + √θ x) has p = alpha exactly; this is the definition of the interval.
    from scipy import stats as sps

    r = stats.variance_ratio(X, Y, confidence_level=0.9)
    for theta in (r.ci_low, r.ci_high):
        c = math.sqrt(theta)
        assert sps.pearsonr(Y - c * X, Y + c * X).pvalue == pytest.approx(0.1, rel=1e-9)


def test_pearson_correlation():
    # r <- cor.test(x, y); c(r$estimate, r$statistic, r$p.value, r$conf.int)
    # -> 0.79517020583357778, 3.70899042780410770, 0.00596499579691846, 0.33152547416433725, 0.94944653361136355
    r, lo, hi, p, _ = stats.correlation(X, Y)
    assert r == pytest.approx(0.79517020583357778, rel=1e-13)
    assert p == pytest.approx(0.00596499579691846, rel=1e-10)
    assert (lo, hi) == (pytest.approx(0.33152547416433725, rel=1e-12), pytest.approx(0.94944653361136355, rel=1e-12))
    # r <- cor.test(a, b, conf.level=0.9) -> 0.942995654425035301, p 0.000137688255726115,
    #   CI 0.797941668622801581 0.984798462328102864
    r, lo, hi, p, _ = stats.correlation(A, B, confidence_level=0.9)
    assert r == pytest.approx(0.942995654425035301, rel=1e-12)
    assert p == pytest.approx(0.000137688255726115, rel=1e-9)
    assert (lo, hi) == (pytest.approx(0.797941668622801581, rel=1e-12), pytest.approx(0.984798462328102864, rel=1e-12))


def test_spearman_t_approximation():
    # r <- cor.test(a, b, method="spearman", exact=FALSE) -> rho 0.9, p 0.000943062322340328
    r, lo, hi, p, _ = stats.correlation(A, B, method="spearman")
    assert r == pytest.approx(0.9, rel=1e-13)
    assert p == pytest.approx(0.000943062322340328, rel=1e-9)
    assert -1 < lo < r < hi < 1


def test_min_p_textbook_values():
    # Exact sign-flip / Wilcoxon floors (NOTES.md; 2**(1-n)): n=5 -> 0.0625, n=6 -> 0.03125
    assert stats.min_p(5) == 0.0625
    assert stats.min_p(6, test="wilcoxon") == 0.03125
    assert stats.min_p(5, alternative="greater") == 0.03125
    assert stats.min_p(30, n_resamples=9999) == pytest.approx(2 / 10000)
    assert stats.min_p(10, test="t") == 0.0
    # scipy agrees on the extreme sample
    from scipy import stats as sps

    assert sps.wilcoxon(np.arange(1.0, 7.0), method="exact").pvalue == pytest.approx(stats.min_p(6, test="wilcoxon"))
    approx = stats.min_p(5, test="wilcoxon", method="approx")
    assert approx == pytest.approx(sps.wilcoxon(np.arange(1.0, 6.0), method="asymptotic").pvalue)


def test_exact_signflip_by_enumeration():
    # d <- c(0.3, -0.1, 0.5, 0.2, 0.4, -0.05, 0.25)
    # s <- as.matrix(expand.grid(rep(list(c(-1,1)), length(d)))); null <- s %*% d; obs <- sum(d)
    # mean(null >= obs - 1e-12) -> 0.03125 ; 2*min(mean(null >= obs - 1e-12), mean(null <= obs + 1e-12)) -> 0.0625
    from bnstats.stats.paired import signflip

    d = np.array([0.3, -0.1, 0.5, 0.2, 0.4, -0.05, 0.25])
    assert signflip(d, alternative="greater", n_resamples=9999, rng=0) == (0.03125, "exact")
    assert signflip(d, alternative="two-sided", n_resamples=9999, rng=0) == (0.0625, "exact")
    assert stats.paired(np.zeros(7), d).p_signflip == 0.0625
