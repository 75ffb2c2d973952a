"""mixed (vs R nlme), variance_ratio behaviour, association / paired_association."""

import numpy as np
import pandas as pd
import pytest

from bnstats import stats

# R 4.2.2 with nlme 3.1.162 (Debian r-cran-nlme), run while writing this test:
#   d <- data.frame(seed=factor(seed), placement, activation, acc)
#   f <- lme(acc ~ placement * activation, random = ~1 | seed, data = d, method = "REML")  # and "ML"
#   fixef(f); sqrt(diag(vcov(f))); as.numeric(VarCorr(f)[, "Variance"]); logLik(f)
SEED = [s for s in range(6) for _ in range(4)]
PLACEMENT = ["after", "after", "before", "before"] * 6
ACTIVATION = ["relu", "tanh"] * 12
ACC = [0.9036, 0.8995, 0.8982, 0.8941, 0.8992, 0.8987, 0.895, 0.8898, 0.9057, 0.9022, 0.9001, 0.8969, 0.9031,
       0.9019, 0.899, 0.8952, 0.8952, 0.8901, 0.8932, 0.8879, 0.8972, 0.8982, 0.8992, 0.8945]
R_FIXEF = [0.90066666666666639, -0.00321666666666666, -0.00223333333333332, -0.00215000000000001]
R_SE = {"REML": [0.001521170053246469, 0.000956590202341406, 0.000956590202341406, 0.001352822837784440],
        "ML": [0.001388631920671947, 0.000873243386660312, 0.000873243386660312, 0.001234952640667625]}
R_VAR = {"REML": (1.11385555397165e-05, 2.74519444564672e-06), "ML": (9.28212962961645e-06, 2.28766203703791e-06)}
R_LOGLIK = {"REML": 88.977681757741, "ML": 113.261299516964}


@pytest.mark.parametrize("method", ["REML", "ML"])
def test_mixed_matches_nlme(method):
    runs = pd.DataFrame({"seed": SEED, "placement": PLACEMENT, "activation": ACTIVATION, "test_acc": ACC})
    r = stats.mixed(runs, "test_acc ~ placement * activation", groups="seed", reml=method == "REML")
    assert list(r.coef.columns) == ["term", "estimate", "se", "z", "ci_low", "ci_high", "p", "confidence_level"]
    np.testing.assert_allclose(r.coef.estimate, R_FIXEF, rtol=1e-6)
    # variance components come from different optimisers (nlme vs statsmodels): agree to ~1e-5 relative
    np.testing.assert_allclose(r.coef.se, R_SE[method], rtol=1e-4)
    assert r.group_var == pytest.approx(R_VAR[method][0], rel=1e-3)
    assert r.residual_var == pytest.approx(R_VAR[method][1], rel=1e-3)
    assert r.log_likelihood == pytest.approx(R_LOGLIK[method], rel=1e-9)
    assert r.converged and r.n_groups == 6 and r.n_obs == 24
    assert all(isinstance(w, str) for w in r.warnings)
    f = r.to_frame()
    assert len(f) == 4 and isinstance(f.warnings.iloc[0], str)
    assert "coef" not in r.to_dict()


def test_mixed_captures_warnings_instead_of_raising():
    # random slopes on 3 seeds: statsmodels warns (singular / convergence); nothing escapes
    runs = pd.DataFrame({"seed": SEED, "placement": PLACEMENT, "activation": ACTIVATION, "test_acc": ACC})
    small = runs[runs.seed < 3].copy()
    small["test_acc"] = 0.9 + (small.placement == "after") * 0.001
    r = stats.mixed(small, "test_acc ~ placement", groups="seed")
    assert isinstance(r.converged, bool)
    assert isinstance(r.warnings, tuple)


def test_variance_ratio_behaviour():
    g = np.random.default_rng(0)
    a = g.normal(0, 1, 40)
    b = 0.5 * a + g.normal(0, 0.3, 40)
    r = stats.variance_ratio(a, b)
    assert r.ratio < 1 and r.ci_low < r.ratio < r.ci_high and r.p < 0.05
    s = stats.variance_ratio(b, a)
    assert s.ratio == pytest.approx(1 / r.ratio) and s.p == pytest.approx(r.p)
    assert s.ci_low == pytest.approx(1 / r.ci_high) and s.ci_high == pytest.approx(1 / r.ci_low)
    one = stats.variance_ratio(a, b, alternative="less")
    assert one.ci_low == 0 and one.p == pytest.approx(r.p / 2)
    with pytest.raises(ValueError, match="at least 3 pairs"):
        stats.variance_ratio([1.0, 2], [2.0, 3])


def test_association(runs, moments):
    out = stats.association(moments, runs, moment="skew", site="norm_in")
    # placement 'none' records no norm_in site; 2 layers, 4 cells, 2 arms with norm_in
    assert len(out) == 4 * 2 * 2
    assert (out.n == 10).all()
    l0 = out[out.layer == 0]
    assert (l0.r > 0.8).all() and (l0.ci_low < l0.r).all() and (l0.r < l0.ci_high).all()
    np.testing.assert_array_equal(out.p_adj, stats.adjust(out.p.to_numpy(), "bh"))
    assert list(out.columns[-2:]) == ["p_adj", "p_adjust_method"]
    # epoch=0 picks other rows (fresh noise per epoch in the synthetic data)
    e0 = stats.association(moments, runs, moment="skew", site="norm_in", epoch=0)
    assert not np.allclose(e0.r, out.r)
    x = moments[(moments.source == "probe") & (moments.epoch == 2) & (moments.layer == 0) & (moments.site == "norm_in")]
    j = x.merge(runs, on="run_id")
    j = j[(j.arch == "cnn") & (j.activation == "relu") & (j.placement == "after")]
    row = out[(out.arch == "cnn") & (out.activation == "relu") & (out.arm == "after") & (out.layer == 0)].iloc[0]
    assert row.r == pytest.approx(np.corrcoef(j["skew"], j["test_acc"])[0, 1], rel=1e-12)
    with pytest.raises(ValueError, match=r"site \['norm_out'\] not found"):
        stats.association(moments, runs, site="norm_out")


def test_paired_association(runs, moments):
    out = stats.paired_association(moments, runs, moment="skew", site=None)
    # arm 'after' vs 'before': sites norm_in and act_out; arm 'none' has only act_out
    per_cell = out.groupby(["arch", "activation"]).size()
    assert (per_cell == 2 * 2 + 2).all()
    assert (out.n == 10).all() and (out.n_dropped == 0).all()
    np.testing.assert_array_equal(out.p_adj, stats.adjust(out.p.to_numpy(), "bh"))
    broken = runs.drop(runs.index[(runs.placement == "after") & (runs.seed == 5)])
    with pytest.raises(ValueError, match=r"seed \[5\]"):
        stats.paired_association(moments, broken)
    ok = stats.paired_association(moments, broken, drop_unpaired=True)
    assert (ok.loc[ok.arm == "after", "n"] == 9).all()
