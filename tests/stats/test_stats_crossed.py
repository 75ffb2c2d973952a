"""Intervals over seeds and test examples (issue 19 item 6): crossed(), compare_crossed(), the bit layout.

R 4.2.2 with lme4 1.1-31 (Debian r-cran-lme4), ``options(digits=17)``, on the table below::

    A <- matrix(c(1,0,0,1,1,1,0,1, 0,0,1,0,1,1,0,1, 1,0,1,1,1,1,1,0, 0,0,1,1,1,1,0,1), 4, 8, byrow=TRUE)
    B <- matrix(c(1,0,1,0,1,1,0,0, 1,1,1,1,1,1,1,0, 0,1,1,0,1,1,0,0, 0,0,0,1,1,1,1,0), 4, 8, byrow=TRUE)
    D <- B - A
    dat <- data.frame(D=as.vector(D), seed=factor(rep(1:4, 8)), ex=factor(rep(1:8, each=4)))
    a <- anova(lm(D ~ seed + ex, data=dat)); a[["Mean Sq"]]; a[["Df"]]
    f <- lmer(D ~ 1 + (1|seed) + (1|ex), data=dat, REML=TRUE); as.data.frame(VarCorr(f))[, c("grp", "vcov")]
    sqrt(diag(as.matrix(vcov(f))))
    ms <- a[["Mean Sq"]]; S <- 4; E <- 8
    v <- (ms[1] + ms[2] - ms[3])/(S*E); dfs <- (ms[1] + ms[2] - ms[3])^2/(ms[1]^2/3 + ms[2]^2/7 + ms[3]^2/21)
    c(mean(D), sqrt(v), dfs); mean(D) + c(-1,1)*qt(0.975, dfs)*sqrt(v); 2*pt(-abs(mean(D)/sqrt(v)), dfs)
    sm <- rowMeans(D); t.test(sm)$conf.int; t.test(sm)$p.value
"""

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnstats import stats

A = np.array([[1, 0, 0, 1, 1, 1, 0, 1], [0, 0, 1, 0, 1, 1, 0, 1], [1, 0, 1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1, 0, 1]])
B = np.array([[1, 0, 1, 0, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1, 0], [0, 1, 1, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 1, 0]])


def test_variance_components_and_intervals_match_r():
    r = stats.crossed(A, B, n_resamples=999)
    assert (r.n_seeds, r.n_examples) == (4, 8) and r.estimate == -0.03125
    # anova(lm(...)) mean squares -> 0.61458333333333515 0.53124999999999978 0.44791666666666691 (df 3, 7, 21)
    np.testing.assert_allclose([r.ms_seed, r.ms_example, r.ms_interaction],
                               [0.61458333333333515, 0.53124999999999978, 0.44791666666666691], rtol=1e-13)
    # lmer REML variance components (balanced data: REML = ANOVA when positive) -> ex 0.020833328201680455,
    # seed 0.020833337137016836, Residual 0.447916668544220298 (lme4's optimiser: agree to ~1e-6)
    np.testing.assert_allclose([r.var_seed, r.var_example, r.var_interaction],
                               [0.020833337137016836, 0.020833328201680455, 0.447916668544220298], rtol=1e-6)
    # se, Satterthwaite df, interval and p -> 0.14768173832039413 2.77106910843939991,
    #   -0.52398714749403830 0.46148714749403824, p 0.84701081821956381 ; lmer's SE of the intercept 0.14768173956678307
    assert r.se == pytest.approx(0.14768173832039413, rel=1e-13) and r.se == pytest.approx(0.14768173956678307, rel=1e-7)
    assert r.df == pytest.approx(2.77106910843939991, rel=1e-12)
    assert (r.ci_low, r.ci_high) == (pytest.approx(-0.52398714749403830, rel=1e-12), pytest.approx(0.46148714749403824, rel=1e-12))
    assert r.p == pytest.approx(0.84701081821956381, rel=1e-10)
    # seeds only: t.test(rowMeans(D)) -> -0.47228848236633703 0.40978848236633703, p 0.83608322580796268
    assert (r.ci_low_seeds, r.ci_high_seeds) == (pytest.approx(-0.47228848236633703, rel=1e-12),
                                                 pytest.approx(0.40978848236633703, rel=1e-12))
    assert r.p_seeds == pytest.approx(0.83608322580796268, rel=1e-10) and r.df_seeds == 3
    assert r.share_example == pytest.approx((r.var_example / 8) / r.se**2, rel=1e-12)
    assert r.method == "crossed anova, satterthwaite t" and isinstance(r.to_frame().caveats.iloc[0], str)


def test_pigeonhole_bootstrap_variance_is_owens_formula():
    # The pigeonhole bootstrap mean has variance mu_seed/S + mu_example/E + mu_int/(S E) exactly, with the
    # divide-by-count variances of row means, column means and residuals (derivation in Owen 2007, §3;
    # it follows from Cov(W) = I - 11'/S for multinomial counts W). Check the resampler against it.
    g = np.random.default_rng(11)
    a = (g.random((6, 40)) < 0.7).astype(int)
    b = (g.random((6, 40)) < np.linspace(0.5, 0.95, 40)).astype(int)
    D = (b - a).astype(float)
    S, E = D.shape
    rm, cm, gm = D.mean(1), D.mean(0), D.mean()
    exact = (np.mean((rm - gm) ** 2) / S + np.mean((cm - gm) ** 2) / E
             + np.mean((D - rm[:, None] - cm[None, :] + gm) ** 2) / (S * E))
    r = stats.crossed(a, b, n_resamples=40_000, rng=5)
    assert r.boot_se**2 == pytest.approx(exact, rel=0.03)  # Monte Carlo sd of a variance: ~sqrt(2/40000) = 0.7%
    assert r.boot_ci_low < r.estimate < r.boot_ci_high


def test_fixed_test_set_hides_example_variance():
    # Arms that differ only on some examples, identically for every seed: the seeds-only interval is
    # narrow (zero seed variance), the crossed one is not, and the example share is ~1.
    g = np.random.default_rng(2)
    base = g.random(200) < 0.8  # which examples a model of this kind gets right
    a = base ^ (g.random((8, 200)) < 0.02)  # seeds differ on a few examples
    b = a.copy()
    b[:, g.random(200) < 0.1] = True  # the arm fixes the same examples on every seed
    r = stats.crossed(a, b, n_resamples=999, rng=1)
    assert r.share_example > 0.9 and (r.ci_high - r.ci_low) > 3 * (r.ci_high_seeds - r.ci_low_seeds)


def test_reproducible_and_validated():
    r1, r2 = stats.crossed(A, B, rng=3, n_resamples=999), stats.crossed(A, B, rng=3, n_resamples=999)
    assert r1 == r2 and stats.crossed(A, B, rng=4, n_resamples=999).boot_ci_low != r1.boot_ci_low
    with pytest.raises(ValueError, match="same shape"):
        stats.crossed(A, B[:, :5])
    with pytest.raises(ValueError, match="0/1 or bools"):
        stats.crossed(A * 2, B)
    with pytest.raises(ValueError, match="at least 2 seeds and 2 examples"):
        stats.crossed(A[:1], B[:1])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=40))
def test_pack_unpack_round_trip_little_bit_order(bools):
    bits = stats.pack_correct(bools)
    assert bits == np.packbits(np.array(bools), bitorder="little").tobytes() and len(bits) == (len(bools) + 7) // 8
    np.testing.assert_array_equal(stats.unpack_correct(bits, len(bools)), bools)


def test_unpack_checks_length_and_padding():
    assert stats.pack_correct([True, False, False]) == bytes([0b001])  # example 0 is the least significant bit
    with pytest.raises(ValueError, match="bits hold 1 byte"):
        stats.unpack_correct(b"\x01", 9)
    with pytest.raises(ValueError, match="nonzero padding"):
        stats.unpack_correct(bytes([0b1000_0001]), 3)


def _bit_runs(rng=0, seeds=6, n_test=50):
    g = np.random.default_rng(rng)
    rows = []
    for arch in ("cnn", "mlp"):
        ex = g.normal(0, 1.5, n_test)
        for s in range(seeds):
            for arm, shift in (("before", 0.0), ("after", 0.6)):
                p = 1 / (1 + np.exp(-(1.0 + shift + ex + g.normal(0, 0.3))))
                c = g.random(n_test) < p
                rows.append({"run_id": f"{arch}{arm}{s}", "seed": s, "arch": arch, "placement": arm,
                             "test_acc": c.sum() / n_test, "test_correct": int(c.sum()), "n_test": n_test,
                             "test_correct_bits": stats.pack_correct(c), "diverged": False})
    return pd.DataFrame(rows)


def test_compare_crossed_frame():
    runs = _bit_runs()
    out = stats.compare_crossed(runs, n_resamples=999)
    assert list(out.arch) == ["cnn", "mlp"] and (out.arm == "after").all()  # test_correct_bits is not a factor
    cmp = stats.compare(runs, n_resamples=999)
    np.testing.assert_allclose(out.estimate, cmp.estimate, rtol=1e-12)  # the same mean difference as compare
    np.testing.assert_allclose(out.ci_low_seeds, cmp.ci_low, rtol=1e-9)  # seeds-only = compare's paired t
    np.testing.assert_array_equal(out.p_adj, stats.adjust(out.p.to_numpy(), "holm"))
    sub = runs[runs.arch == "cnn"].sort_values("seed")
    a = np.vstack([stats.unpack_correct(x, 50) for x in sub[sub.placement == "before"].test_correct_bits])
    b = np.vstack([stats.unpack_correct(x, 50) for x in sub[sub.placement == "after"].test_correct_bits])
    direct = stats.crossed(a, b, n_resamples=999)
    assert out.iloc[0].se == direct.se and out.iloc[0].var_example == direct.var_example
    # missing bits are dropped and counted; a diverged pair is dropped by default
    runs.loc[(runs.arch == "mlp") & (runs.seed == 0) & (runs.placement == "after"), "test_correct_bits"] = None
    runs.loc[(runs.arch == "mlp") & (runs.seed == 1), "diverged"] = True
    row = stats.compare_crossed(runs, n_resamples=999).iloc[1]
    assert (row.n_seeds, row.n_missing, row.n_diverged) == (4, 1, 1)
    assert "1 pair(s) without stored test_correct_bits dropped" in stats.caveat_list(row.caveats)


def test_compare_crossed_errors_and_not_estimable():
    runs = _bit_runs()
    bad = runs.copy()
    bad.loc[0, "test_correct_bits"] = b"\x00"
    with pytest.raises(ValueError, match=r"test_correct_bits of run 'cnnbefore0': bits hold 1 byte"):
        stats.compare_crossed(bad)
    with pytest.raises(ValueError, match="metric must be one of"):
        stats.compare_crossed(runs, metric="test_loss")
    dead = runs.copy()
    dead.loc[(dead.arch == "cnn") & (dead.placement == "after"), "diverged"] = True
    out = stats.compare_crossed(dead, n_resamples=99)
    assert out.method.iloc[0] == "not estimable" and math.isnan(out.p_adj.iloc[0]) and out.p_adj.notna().iloc[1]
