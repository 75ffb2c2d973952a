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
        If given and ``n > log2(n_resamples)`` (i.e. ``2**n > n_resamples``, decided without computing
        ``2**n``), the test is Monte Carlo with ``n_resamples`` draws (as in
        :func:`scipy.stats.permutation_test`), whose p cannot go below ``k / (n_resamples + 1)``
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
    # 2**-n underflows to 0.0 beyond n = 1074 (harmless: the Monte Carlo floor then rules); 2.0**n itself
    # would overflow beyond n = 1023, so the exact-or-Monte-Carlo choice compares n with log2(n_resamples).
    floor = min(1.0, k * math.ldexp(1.0, -n))
    if n_resamples is not None and not exact_enumeration(n, n_resamples):
        floor = max(floor, min(1.0, k / (n_resamples + 1)))
    return floor


def exact_enumeration(n, n_resamples) -> bool:
    """Whether all ``2**n`` sign patterns fit in ``n_resamples``: ``n <= floor(log2(n_resamples))``.

    This is the rule of :func:`scipy.stats.permutation_test` (exact when ``n_resamples >= 2**n``),
    evaluated without forming ``2**n`` (``2.0**n`` overflows beyond n = 1023).
    """
    # floor(log2(N)) = N.bit_length() - 1 for an int N >= 1: exact integer arithmetic, no float rounding.
    return int(n) <= int(n_resamples).bit_length() - 1


def wilcoxon_method(n, *, ties, n_resamples) -> str:
    """The Wilcoxon method that ``wilcoxon_method="auto"`` resolves to (shared by :func:`paired` and planning).

    Parameters
    ----------
    n : int
        Number of differences the test ranks (the nonzero ones under ``zero_method="wilcox"``).
    ties : bool
        Whether the differences contain zeros or tied absolute values.
    n_resamples : int
        Permutation budget.

    Returns
    -------
    str
        ``"exact"`` without zeros or ties and n <= 50 (the exact null distribution; scipy's own
        ``"auto"`` uses it up to n = 50 too); else ``"permutation"`` (exact enumeration of the signs of
        the ranks, conditional on the ties) when ``n <= log2(n_resamples)``; else ``"approx"`` (normal
        approximation with the tie correction).
    """
    if not ties and n <= 50:
        return "exact"
    if exact_enumeration(n, n_resamples):
        return "permutation"
    return "approx"


def min_p_wilcoxon(n, *, ties=False, alternative="two-sided", n_resamples=9999, correction=False):
    """Smallest p the Wilcoxon test of :func:`bnstats.stats.paired` can return with ``n`` ranked differences.

    Resolves the method as ``wilcoxon_method="auto"`` does (:func:`wilcoxon_method`) and returns the
    floor of that method: ``2**(1-n)`` (two-sided) for the exact and the permutation test, the p of the
    most extreme data under the normal approximation otherwise. Planning uses ``ties=False``: the
    floor of a sample without ties (ties can only raise it).
    """
    method = wilcoxon_method(n, ties=ties, n_resamples=n_resamples)
    if method == "approx":
        return min_p(n, test="wilcoxon", alternative=alternative, method="approx", correction=correction)
    return min_p(n, test="wilcoxon", alternative=alternative)


def _alpha_one_tail(alpha, alternative):
    return alpha / 2 if alternative == "two-sided" else alpha


def seeds_needed(sd_diff, effect, *, power=0.8, alpha=0.05, alternative="two-sided"):
    """Number of seeds (pairs) for a paired t-test to reach ``power`` at a true mean difference ``effect``.

    Parameters
    ----------
    sd_diff : float
        Standard deviation of the paired differences (e.g. from a pilot), > 0.
    effect : float
        Mean difference to detect, in the metric's units. With a one-sided ``alternative`` its sign must
        be the direction that alternative detects (``"greater"``: > 0, ``"less"``: < 0); an effect the
        test cannot detect raises ``ValueError`` naming both. Two-sided: only ``|effect|`` matters.
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
    check_direction(eff, alternative)
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


def check_direction(effect: float, alternative: str) -> None:
    """A one-sided test detects effects on one side only: refuse an effect on the other side."""
    if (alternative == "greater" and effect < 0) or (alternative == "less" and effect > 0):
        side = "> 0" if alternative == "greater" else "< 0"
        raise ValueError(
            f"effect={effect!r} lies on the side alternative={alternative!r} cannot detect (it detects effect {side}); "
            f"flip the sign of effect, or use alternative={'less' if alternative == 'greater' else 'greater'!r} "
            "or 'two-sided'"
        )


def sd_interval(sd_diff, n, *, confidence_level=0.95):
    """Confidence interval for the standard deviation of the differences from a pilot of ``n`` pairs.

    Parameters
    ----------
    sd_diff : float
        Sample standard deviation (ddof=1) of the pilot's differences, >= 0.
    n : int
        Pilot size, >= 2.
    confidence_level : float

    Returns
    -------
    (float, float)
        ``(low, high)``.

    Notes
    -----
    Under normality ``(n-1) s² / σ² ~ χ²_{n-1}``, so the interval is
    ``s √((n-1)/χ²_{1-α/2, n-1})`` to ``s √((n-1)/χ²_{α/2, n-1})``. With 3 pilot seeds and 95% the
    upper end is 4.4 s, which multiplies the seeds needed by about 20: a small pilot plans little.

    References
    ----------
    Mood, A. M., Graybill, F. A., Boes, D. C. (1974). *Introduction to the Theory of Statistics*, 3rd ed.,
    §VIII.4.3 (interval for σ). Browne, R. H. (1995). *Stat. Med.* 14(17), 1933–1940.
    """
    n = v.integer("n", n, minimum=2)
    cl = v.probability("confidence_level", confidence_level)
    if isinstance(sd_diff, bool) or not np.isfinite(sd_diff) or sd_diff < 0:
        raise ValueError(f"sd_diff must be a finite number >= 0; got {sd_diff!r}")
    a = 1 - cl
    df = n - 1
    low = float(sd_diff) * math.sqrt(df / sps.chi2.ppf(1 - a / 2, df))
    high = float(sd_diff) * math.sqrt(df / sps.chi2.ppf(a / 2, df))
    return low, high


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
