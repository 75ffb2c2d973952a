"""Coverage and type-I error by simulation (slow; run by the `slow` nox session: pytest -m slow)."""

import numpy as np
import pytest
from scipy import stats as sps

from bnstats import stats

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("n", [5, 10, 30])
def test_t_interval_covers_nominal(n):
    reps = 20000
    g = np.random.default_rng(1000 + n)
    d = g.normal(0.3, 1.0, size=(reps, n))  # true mean 0.3
    m, s = d.mean(axis=1), d.std(axis=1, ddof=1)
    h = sps.t.ppf(0.975, n - 1) * s / np.sqrt(n)
    cover = np.mean((m - h <= 0.3) & (0.3 <= m + h))
    # the library's own interval agrees with the vectorised one on a few samples
    for i in range(3):
        r = stats.paired(np.zeros(n), d[i], n_resamples=99)
        assert (r.ci_low, r.ci_high) == (pytest.approx(m[i] - h[i]), pytest.approx(m[i] + h[i]))
    print(f"\nt interval coverage n={n}: {cover:.4f} over {reps}")
    assert 0.94 <= cover <= 0.96


@pytest.mark.parametrize("n", [5, 10, 30])
def test_bca_coverage_reported(n):
    reps = 300
    g = np.random.default_rng(2000 + n)
    hits = 0
    for _ in range(reps):
        d = g.normal(0.3, 1.0, size=n)
        ci = sps.bootstrap((d,), np.mean, method="BCa", n_resamples=999, vectorized=True, rng=g).confidence_interval
        hits += ci.low <= 0.3 <= ci.high
    cover = hits / reps
    print(f"\nBCa coverage n={n}: {cover:.3f} over {reps} (Monte Carlo sd ~{np.sqrt(0.95 * 0.05 / reps):.3f})")
    assert cover < 0.99  # reported, not required to be nominal: BCa under-covers at small n


def test_signflip_and_wilcoxon_type_one_error():
    reps, n = 1000, 8
    g = np.random.default_rng(3000)
    p_flip = np.empty(reps)
    p_wil = np.empty(reps)
    for i in range(reps):
        a = g.normal(size=n)
        b = a + g.normal(size=n)  # H0 true
        r = stats.paired(a, b, n_resamples=999)
        p_flip[i], p_wil[i] = r.p_signflip, r.p_wilcoxon
    mc = 3 * np.sqrt(0.05 * 0.95 / reps)
    rf, rw = np.mean(p_flip < 0.05), np.mean(p_wil < 0.05)
    print(f"\ntype-I at alpha .05, n={n}, {reps} reps: sign-flip {rf:.4f}, Wilcoxon {rw:.4f} (3 MC sd = {mc:.4f})")
    assert rf <= 0.05 + mc and rw <= 0.05 + mc
