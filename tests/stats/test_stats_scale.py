"""No size limit (issue 26 item 1): every exact-vs-Monte-Carlo choice compares n with log2(n_resamples).

Old code computed ``2.0**n`` and raised OverflowError above 1,023 nonzero differences (in paired, the
sign-flip choice and power.min_p). Each function is run at n = 5, 1,023, 1,024 and 10^4.
"""

import math

import numpy as np
import pandas as pd
import pytest

from bnstats import stats
from bnstats.stats.paired import signflip
from bnstats.stats.power import exact_enumeration, min_p_wilcoxon, wilcoxon_method

SIZES = [5, 1023, 1024, 10_000]


@pytest.mark.parametrize("n", SIZES)
def test_min_p_and_method_choices(n):
    for test in ("signflip", "wilcoxon"):
        for nr in (None, 9999):
            p = stats.min_p(n, test=test, n_resamples=nr)
            assert math.isfinite(p) and 0 <= p <= 1
    assert stats.min_p(n, n_resamples=9999) == (2.0 ** (1 - n) if n <= 13 else pytest.approx(2 / 10000))
    assert math.isfinite(min_p_wilcoxon(n)) and wilcoxon_method(n, ties=True, n_resamples=9999) in ("permutation", "approx")
    assert exact_enumeration(n, 2**n) and not exact_enumeration(n, 2**n - 1)  # exact integer rule, no float 2**n


@pytest.mark.parametrize("n", SIZES)
def test_paired_and_signflip_are_finite(n):
    g = np.random.default_rng(n)
    a = g.integers(880, 920, size=n).astype(float)
    b = a + g.integers(-3, 6, size=n)  # counts: zeros and ties, the case that crashed
    r = stats.paired(a, b, denominator=1000, n_resamples=99, rng=1)
    for k in ("estimate", "ci_low", "ci_high", "p", "p_signflip", "p_wilcoxon", "min_p_signflip", "min_p_wilcoxon",
              "d_z", "boot_ci_low", "boot_ci_high"):
        assert math.isfinite(getattr(r, k)), k
    assert r.signflip_method == ("exact" if r.n_nonzero <= 6 else "monte carlo")
    p, method = signflip((b - a)[:n], alternative="greater", n_resamples=99, rng=2)
    assert 0 < p <= 1 and method in ("exact", "monte carlo")


def test_compare_and_plan_at_ten_thousand_seeds():
    g = np.random.default_rng(0)
    n = 10_000
    base = g.integers(880, 920, size=n)
    rows = pd.DataFrame({
        "run_id": [f"b{s}" for s in range(n)] + [f"a{s}" for s in range(n)],
        "seed": np.tile(np.arange(n), 2),
        "placement": ["before"] * n + ["after"] * n,
        "test_correct": np.concatenate([base, base + g.integers(-3, 6, size=n)]),
        "n_test": 1000,
    })
    rows["test_acc"] = rows.test_correct / 1000
    out = stats.compare(rows, factors=["placement"], n_resamples=99)
    assert np.isfinite(out[["estimate", "ci_low", "p", "p_adj", "ci_low_simultaneous", "ci_low_decision"]].to_numpy()).all()
    assert out.verdict.iloc[0] == "better" and out.n.iloc[0] == n
    plan = stats.plan(rows, factors=["placement"], effect=0.0001)
    assert plan.n_planned.iloc[0] > 0 and np.isfinite(plan.min_p_wilcoxon_planned.iloc[0])
