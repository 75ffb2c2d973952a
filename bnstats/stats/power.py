"""Power and planning: seeds needed, attainable p-values.

``seeds_needed`` and ``seeds_for_halfwidth`` act on numbers; :func:`bnstats.stats.plan` (in
``compare.py``) applies them to a pilot sweep.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize
from scipy import stats as sps
from statsmodels.stats.power import TTestPower

from . import _validate as v

MIN_P_TESTS = ("signflip", "wilcoxon", "t")


def min_p(n, *, test="signflip", alternative="two-sided", method="exact", correction=False, n_resamples=None):
    """Smallest p-value a test can return with ``n`` pairs.

    Parameters
    ----------
    n : int
        Number of pairs (for Wilcoxon with ``zero_method="wilcox"``: the number of nonzero
        differences).
    test : {"signflip", "wilcoxon", "t"}
        ``"t"`` returns 0.0: the paired t-test can reach any p once n >= 2.
    alternative : {"two-sided", "less", "greater"}
    method : {"exact", "approx"}
        Wilcoxon only: the exact null distribution, or the normal approximation (with
        ``correction``, the continuity correction) as computed by :func:`scipy.stats.wilcoxon`.
    correction : bool
        Continuity correction of the Wilcoxon normal approximation.
    n_resamples : int or None
        If given and ``2**n > n_resamples``, the test is Monte Carlo with ``n_resamples`` draws
        (as in :func:`scipy.stats.permutation_test`), whose p cannot go below ``k / (n_resamples + 1)``
        (k = 2 two-sided, 1 one-sided).

    Returns
    -------
    float

    Notes
    -----
    Under the exact sign-flip (and the exact Wilcoxon signed-rank test without ties) all ``2**n``
    sign patterns are equally likely under H0; the most extreme outcome has one-sided probability
    ``2**-n``, so the smallest two-sided p is ``2**(1 - n)`` (n=5: 0.0625, n=6: 0.03125).
    For the normal approximation the floor is the p of the most extreme data (all differences
    positive, distinct ranks), computed by :func:`scipy.stats.wilcoxon`.

    References
    ----------
    Good, P. (2005). *Permutation, Parametric, and Bootstrap Tests of Hypotheses*, 3rd ed., Springer, §3.
    Hollander, M., Wolfe, D. A., Chicken, E. (2014). *Nonparametric Statistical Methods*, 3rd ed., §3.1.
    """
    n = v.integer("n", n, minimum=1)
    v.choice("test", test, MIN_P_TESTS)
    v.choice("alternative", alternative, v.ALTERNATIVES)
    v.choice("method", method, ("exact", "approx"))
    v.boolean("correction", correction)
    if n_resamples is not None:
        n_resamples = v.integer("n_resamples", n_resamples, minimum=1)
    k = 2.0 if alternative == "two-sided" else 1.0
    if test == "t":
        return 0.0
    if test == "wilcoxon" and method == "approx":
        x = np.arange(1.0, n + 1.0)
        alt = "less" if alternative == "less" else alternative
        x = -x if alt == "less" else x
        return float(sps.wilcoxon(x, method="asymptotic", correction=correction, alternative=alt).pvalue)
    floor = min(1.0, k * 2.0 ** (-n))
    if n_resamples is not None and 2.0**n > n_resamples:
        floor = max(floor, min(1.0, k / (n_resamples + 1)))
    return floor


def _alpha_one_tail(alpha, alternative):
    return alpha / 2 if alternative == "two-sided" else alpha


def seeds_needed(sd_diff, effect, *, power=0.8, alpha=0.05, alternative="two-sided"):
    """Number of seeds (pairs) for a paired t-test to reach ``power`` at a true mean difference ``effect``.

    Parameters
    ----------
    sd_diff : float
        Standard deviation of the paired differences (e.g. from a pilot), > 0.
    effect : float
        Mean difference to detect, in the metric's units; its sign is taken to be the tested direction.
    power : float
        Target power, in (0, 1).
    alpha : float
        Significance level, in (0, 1).
    alternative : {"two-sided", "less", "greater"}

    Returns
    -------
    int
        ``ceil(n)``, at least 2: equals ``ceiling(power.t.test(delta=effect, sd=sd_diff,
        power=power, sig.level=alpha, type="paired", alternative=...)$n)`` in R.

    Notes
    -----
    With ``d_z = |effect| / sd_diff``, ``df = n - 1`` and noncentrality ``λ = d_z √n``,
    the power is ``P(T'_{df, λ} > t_{1-α/2, df})`` (two-sided; one tail only, as R's default
    ``strict=FALSE``) or ``P(T'_{df, λ} > t_{1-α, df})`` (one-sided), computed by
    :class:`statsmodels.stats.power.TTestPower` (``alternative="larger"``); n is the root found by
    :func:`scipy.optimize.brentq`. If two seeds already give the power, 2 is returned.

    References
    ----------
    Cohen, J. (1988). *Statistical Power Analysis for the Behavioral Sciences*, 2nd ed., ch. 2.
    R Core Team. ``power.t.test`` (package stats).
    """
    sd = v.positive("sd_diff", sd_diff)
    eff = v.nonzero("effect", effect)
    pw = v.probability("power", power)
    a = v.probability("alpha", alpha)
    v.choice("alternative", alternative, v.ALTERNATIVES)
    es = abs(eff) / sd
    a1 = _alpha_one_tail(a, alternative)
    tp = TTestPower()

    def gap(n):
        return tp.power(effect_size=es, nobs=n, alpha=a1, alternative="larger") - pw

    if gap(2.0) >= 0:
        return 2
    hi = 4.0
    while gap(hi) < 0:
        hi *= 2
        if hi > 1e9:
            raise ValueError(f"effect={effect!r} is too small relative to sd_diff={sd_diff!r}: more than 1e9 seeds needed")
    n = optimize.brentq(gap, 2.0, hi, xtol=1e-10, rtol=1e-12)
    return int(math.ceil(n - 1e-9))


def halfwidth_at(n, sd_diff, *, confidence_level=0.95):
    """Half-width ``t_{1-α/2, n-1} · sd / √n`` of the two-sided paired t interval with ``n`` pairs."""
    a = 1 - confidence_level
    return float(sps.t.ppf(1 - a / 2, n - 1) * sd_diff / np.sqrt(n))


def seeds_for_halfwidth(sd_diff, halfwidth, *, confidence_level=0.95):
    """Smallest n with ``t_{1-α/2, n-1} · sd_diff / √n <= halfwidth`` (two-sided paired t interval).

    Parameters
    ----------
    sd_diff : float
        Standard deviation of the paired differences, > 0.
    halfwidth : float
        Target half-width of the interval, in the metric's units, > 0.
    confidence_level : float

    Returns
    -------
    int
        At least 2.

    Notes
    -----
    The half-width decreases monotonically in n; the smallest integer satisfying the inequality is
    found by bisection on the integers. This plans the *expected-sd* width; the realised width varies
    with the sample sd (Kupper & Hafner 1989 give a tolerance-probability version).

    References
    ----------
    Kupper, L. L., Hafner, K. B. (1989). How appropriate are popular sample size formulas?
    *The American Statistician* 43(2), 101–105.
    """
    sd = v.positive("sd_diff", sd_diff)
    hw = v.positive("halfwidth", halfwidth)
    cl = v.probability("confidence_level", confidence_level)
    if halfwidth_at(2, sd, confidence_level=cl) <= hw:
        return 2
    lo, hi = 2, 4
    while halfwidth_at(hi, sd, confidence_level=cl) > hw:
        lo, hi = hi, hi * 2
        if hi > 2**40:
            raise ValueError(f"halfwidth={halfwidth!r} is too small relative to sd_diff={sd_diff!r}")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if halfwidth_at(mid, sd, confidence_level=cl) <= hw:
            hi = mid
        else:
            lo = mid
    return hi
