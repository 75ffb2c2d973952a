"""The BCa interval of a mean in O(n) (issue 26): ``paired.bca_mean`` against ``scipy.stats.bootstrap``.

scipy's BCa computes the acceleration from the n leave-one-out means (n² values: 4.4 s of a 5 s
comparison at 10^4 seeds); ``bca_mean`` uses their closed form. Same draws, same z0 and quantiles: the
intervals must agree to rounding, at every n, confidence level and alternative, ties included.
"""

import math
import time
import warnings

import numpy as np
import pytest
from scipy import stats as sps
from scipy.stats._resampling import _bca_interval

from bnstats import stats
from bnstats.stats.paired import _batch, bca_mean


def scipy_bca(x, *, n_resamples, confidence_level, alternative, rng):
    res = sps.bootstrap((x,), np.mean, n_resamples=n_resamples, batch=_batch(x.size), vectorized=True,
                        confidence_level=confidence_level, alternative=alternative, method="BCa", rng=rng)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


SAMPLES = {
    "normal n=5": np.random.default_rng(1).normal(0.3, 1.0, 5),
    "R sleep differences": np.array([1.2, 2.4, 1.3, 1.3, 0.0, 1.0, 1.8, 0.8, 4.6, 1.4]),
    "skewed n=40": np.random.default_rng(2).exponential(1.0, 40) - 0.5,
    # accuracy differences of a count metric: multiples of 1/1000, many ties and zeros, small vs the mean
    "counts n=200": np.random.default_rng(3).integers(-3, 6, 200) / 1000 + 0.912 - 0.912,
    "offset n=300": 1e3 + np.random.default_rng(4).normal(0, 1e-3, 300),
}


@pytest.mark.parametrize("name", list(SAMPLES))
@pytest.mark.parametrize(("confidence_level", "alternative"), [(0.95, "two-sided"), (0.9, "less"), (0.99, "greater")])
def test_bca_mean_equals_scipys_bca(name, confidence_level, alternative):
    x = SAMPLES[name]
    kw = dict(n_resamples=1999, confidence_level=confidence_level, alternative=alternative)
    ours = bca_mean(x, rng=np.random.default_rng(7), **kw)
    ref = scipy_bca(x, rng=np.random.default_rng(7), **kw)
    for a, b in zip(ours, ref, strict=True):
        if math.isinf(b):
            assert a == b
        else:
            # relative to the interval's scale (the offset sample's ends are 1e3 with a 1e-4 width)
            assert abs(a - b) <= 1e-12 * max(abs(b), 1.0), (a, b)


def test_acceleration_is_scipys_jackknife_one():
    # scipy's _bca_interval returns its acceleration a_hat for testing; ours is the closed form of the same
    # jackknife: sum(u^3) / (6 sum(u^2)^1.5), u = x - mean(x) (Efron & Tibshirani 1993, eq. 14.15)
    x = SAMPLES["skewed n=40"]
    theta_b = np.random.default_rng(0).normal(np.mean(x), 0.1, 999)
    a_scipy = float(_bca_interval((x,), lambda v, axis: np.mean(v, axis=axis), axis=-1, alpha=0.025,
                                  theta_hat_b=theta_b, batch=None, xp=np)[2])
    u = x - x.mean()
    assert np.sum(u**3) / (6 * np.sum(u**2) ** 1.5) == pytest.approx(a_scipy, rel=1e-12)


def test_paired_boot_interval_is_scipys_bca_of_the_differences():
    # paired() spawns its bootstrap generator as the first of four children of the default generator
    g = np.random.default_rng(11)
    a = g.normal(0.9, 0.01, 60)
    b = a + g.normal(0.002, 0.004, 60)
    r = stats.paired(a, b, rng=123, n_resamples=999)
    rng_boot = np.random.default_rng(123).spawn(4)[0]
    low, high = scipy_bca(b - a, n_resamples=999, confidence_level=0.95, alternative="two-sided", rng=rng_boot)
    assert r.boot_ci_low == pytest.approx(low, rel=1e-12) and r.boot_ci_high == pytest.approx(high, rel=1e-12)


def test_degenerate_bootstrap_gives_nan_and_the_warnings_scipy_gives():
    # three resamples of (0, 0, 0, 1) that all miss the 1 (rng 13): every bootstrap mean is below the
    # sample's, z0 = -inf, and scipy's interval is NaN with a DegenerateDataWarning
    x = np.array([0.0, 0.0, 0.0, 1.0])
    kw = dict(n_resamples=3, confidence_level=0.95, alternative="two-sided")
    with warnings.catch_warnings(record=True) as ref:
        warnings.simplefilter("always")
        assert all(map(math.isnan, scipy_bca(x, rng=np.random.default_rng(13), **kw)))
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        assert all(map(math.isnan, bca_mean(x, rng=np.random.default_rng(13), **kw)))
    assert {(w.category, str(w.message)) for w in ours} == {(w.category, str(w.message)) for w in ref}
    assert any(w.category is sps.DegenerateDataWarning for w in ours)


def test_bca_of_ten_thousand_seeds_is_linear_time():
    # scipy's jackknife alone takes seconds here; the closed form keeps the interval at the cost of resampling
    x = np.random.default_rng(5).normal(0, 1, 10_000)
    t0 = time.process_time()
    low, high = bca_mean(x, n_resamples=99, confidence_level=0.95, alternative="two-sided", rng=np.random.default_rng(1))
    assert time.process_time() - t0 < 1.0
    assert low < x.mean() < high
