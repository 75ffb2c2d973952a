"""Behaviour of paired(): degenerate data, small n, NaN, validation, properties (hypothesis)."""

import math
import random
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bnstats import stats

FAST = {"n_resamples": 199}


def test_all_differences_equal_no_warning():
    # Every seed gains the same amount: no p of 0 and no zero-width interval (the t outputs are undefined),
    # p and the verdict come from the exact sign-flip test, `method` says so. Old code: p_t = 0, "better".
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = stats.paired([0.9, 0.91, 0.92, 0.93], [0.9125, 0.9225, 0.9325, 0.9425])
    assert r.estimate == 0.9125 - 0.9 and r.sd_diff == 0.0
    for k in ("t", "p_t", "ci_low", "ci_high", "boot_ci_low", "boot_ci_high", "d_z", "d_z_ci_low", "d_z_ci_high", "g_z"):
        assert math.isnan(getattr(r, k)), k
    assert r.method == "sign-flip (exact)" and r.p == r.p_signflip == 0.125 and r.pvalue == r.p
    assert r.verdict == "inconclusive"
    assert any("all 4 differences equal" in c and "exact sign-flip" in c for c in r.caveats)
    z = stats.paired([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert z.estimate == 0 and z.p == 1.0 and z.p_wilcoxon == 1.0 and z.p_signflip == 1.0
    assert z.verdict == "inconclusive" and math.isnan(z.p_t)
    # exact TOST from the sign-flip: 3 identical seeds cannot show equivalence (floor 2**-3 = 0.125) ...
    assert stats.paired([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], margin=0.1).p_tost == 0.125
    # ... 6 can (2**-6 = 0.015625)
    six = stats.paired(np.arange(6.0), np.arange(6.0), margin=0.1)
    assert six.p_tost == 0.015625 and six.verdict == "equivalent"


def test_small_n_caveats():
    r = stats.paired([1.0, 2, 3, 4, 5], [1.3, 2.1, 3.6, 4.2, 5.5])
    text = " | ".join(r.caveats)
    assert "BCa interval under-covers" in text
    assert "sign-flip (exact) cannot reach p < 0.05 with 5 nonzero difference(s) of 5: smallest attainable p = 0.0625" in text
    assert "Wilcoxon (exact) cannot reach p < 0.05" in text
    assert r.min_p_signflip == 0.0625 and r.p_signflip == 0.0625


def test_n_below_two_and_nan():
    with pytest.raises(ValueError, match="at least 2 pairs"):
        stats.paired([1.0], [2.0])
    with pytest.raises(ValueError, match=r"NaN at positions \[1\]"):
        stats.paired([1.0, np.nan, 3, 4], [1.2, 2, 3.5, 4.1])
    r = stats.paired([1.0, np.nan, 3, 4], [1.2, 2, 3.5, 4.1], nan_policy="omit")
    assert r.n == 3 and r.n_omitted == 1


def test_validation_names_argument():
    with pytest.raises(ValueError, match=r"alternative must be one of \['two-sided', 'less', 'greater'\]; got 'two_sided'"):
        stats.paired([1.0, 2, 3], [1, 2, 4], alternative="two_sided")
    with pytest.raises(ValueError, match=r"confidence_level must be in the open interval \(0, 1\); got 95"):
        stats.paired([1.0, 2, 3], [1, 2, 4], confidence_level=95)
    with pytest.raises(TypeError, match="a must be a 1-D numeric array-like"):
        stats.paired(["x", "y"], [1, 2])
    with pytest.raises(ValueError, match="same length"):
        stats.paired([1.0, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="wilcoxon_method must be one of"):
        stats.paired([1.0, 2, 3], [1, 2, 4], wilcoxon_method="asymptotic")
    with pytest.raises(TypeError, match="n_resamples must be an int"):
        stats.paired([1.0, 2, 3], [1, 2, 4], n_resamples=99.5)


def test_signflip_monte_carlo_when_too_many_patterns():
    g = np.random.default_rng(3)
    a = g.normal(size=20)
    r = stats.paired(a, a + 0.5 + g.normal(size=20), n_resamples=999)
    assert r.signflip_method == "monte carlo" and r.min_p_signflip == pytest.approx(2 / 1000)
    assert stats.paired(a[:8], a[:8] + 1 + g.normal(size=8), n_resamples=999).signflip_method == "exact"


def test_frames_are_flat_and_names_fixed():
    r = stats.paired([1.0, 2, 3, 4], [1.5, 2.2, 3.9, 4.1], **FAST)
    f = r.to_frame()
    assert f.shape[0] == 1 and isinstance(f.loc[0, "caveats"], str)
    assert stats.caveat_list(f.loc[0, "caveats"]) == list(r.caveats) == stats.caveat_list(r.caveats)
    r2 = stats.paired([1.0, 2, 3, 4], [1.5, 2.2, 3.9, 4.1], confidence_level=0.8, margin=0.3, **FAST)
    assert list(r2.to_frame().columns) == list(f.columns)
    assert isinstance(r.to_dict()["caveats"], tuple)
    assert (r.statistic, r.pvalue) == (r.t, r.p_t)


def test_higher_is_better_false_flips_the_verdict():
    a, b = [1.0, 2, 3, 4, 5, 6], [1.5, 2.7, 3.6, 4.9, 5.8, 6.4]
    assert stats.paired(a, b, **FAST).verdict == "better"
    assert stats.paired(a, b, higher_is_better=False, **FAST).verdict == "worse"


# ---- properties --------------------------------------------------------------------------------
# Values are multiples of 1/1024 so that differences and shifts are exact in floating point.
grid = st.integers(min_value=-2000, max_value=2000).map(lambda k: k / 1024)


@st.composite
def pairs(draw):
    n = draw(st.integers(min_value=3, max_value=12))
    a = np.array(draw(st.lists(grid, min_size=n, max_size=n)))
    b = np.array(draw(st.lists(grid, min_size=n, max_size=n)))
    assume(not np.all(b - a == (b - a)[0]))
    return a, b


PROP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROP
@given(pairs(), st.sampled_from(["two-sided", "less", "greater"]))
def test_ci_contains_estimate_and_p_matches_ci(ab, alternative):
    a, b = ab
    r = stats.paired(a, b, alternative=alternative, **FAST)
    assert r.ci_low <= r.estimate <= r.ci_high
    assert r.d_z_ci_low <= r.d_z <= r.d_z_ci_high
    alpha = 1 - r.confidence_level
    assume(abs(r.p_t - alpha) > 1e-9)
    assert (r.p_t < alpha) == (r.ci_low > 0 or r.ci_high < 0)


@PROP
@given(pairs())
def test_swap_negates(ab):
    a, b = ab
    r, s = stats.paired(a, b, **FAST), stats.paired(b, a, **FAST)
    assert s.estimate == -r.estimate and s.d_z == pytest.approx(-r.d_z, rel=1e-12)
    assert s.d_z_ci_low == pytest.approx(-r.d_z_ci_high, rel=1e-7, abs=1e-9)
    assert s.p_t == pytest.approx(r.p_t, rel=1e-12) and s.cles == pytest.approx(1 - r.cles)


@PROP
@given(pairs(), grid)
def test_shift_changes_nothing(ab, c):
    a, b = ab
    r, s = stats.paired(a, b, **FAST).to_dict(), stats.paired(a + c, b + c, **FAST).to_dict()
    for k in ("mean_a", "mean_b"):
        r.pop(k), s.pop(k)
    assert r == s or all((r[k] == s[k]) or (isinstance(r[k], float) and math.isnan(r[k]) and math.isnan(s[k])) for k in r)


@settings(max_examples=10, deadline=None)
@given(pairs(), st.integers(0, 2**31 - 1))
def test_global_rng_state_is_irrelevant(ab, seed):
    a, b = ab
    np.random.seed(seed)  # noqa: NPY002 (deliberately disturbing the global state)
    random.seed(seed)
    r = stats.paired(a, b, **FAST).to_frame()
    np.random.seed(seed + 1)  # noqa: NPY002
    random.seed(seed + 1)
    np.random.random(10)  # noqa: NPY002
    s = stats.paired(a, b, **FAST).to_frame()
    assert r.equals(s)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-4, 4), min_size=1, max_size=11), st.sampled_from(["two-sided", "less", "greater"]),
       st.sampled_from([9999, 99]))
def test_signflip_equals_scipy_permutation_test(x, alternative, n_resamples):
    # bnstats' vectorised sign-flip (scipy's loops in Python: ~40 s at 10^4 seeds) gives scipy's exact
    # p-values, ties and tolerance included; Monte Carlo draws differ, so only exact cases are compared.
    from scipy import stats as sps

    from bnstats.stats.paired import signflip

    x = np.array(x, dtype=float) / 8
    nz = x[x != 0]
    p, method = signflip(x, alternative=alternative, n_resamples=n_resamples, rng=0)
    assume(method == "exact" and nz.size >= 2)
    ref = sps.permutation_test((nz,), lambda y, axis: np.mean(y, axis=axis), permutation_type="samples",
                               vectorized=True, n_resamples=n_resamples, alternative=alternative).pvalue
    assert p == ref
