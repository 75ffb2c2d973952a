"""Paired test of equal variances (Pitman–Morgan): :func:`variance_ratio`."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats as sps

from . import _validate as v
from ._results import ResultMixin, capture


@dataclasses.dataclass(frozen=True)
class VarianceRatioResult(ResultMixin):
    """Result of :func:`variance_ratio` (flat scalars, ``caveats`` a tuple of str)."""

    n: int
    n_omitted: int
    var_a: float
    var_b: float
    ratio: float
    ci_low: float
    ci_high: float
    r: float
    t: float
    df: float
    p: float
    confidence_level: float
    alternative: str
    method: str
    caveats: tuple[str, ...]


def variance_ratio(a, b, *, confidence_level=0.95, alternative="two-sided", nan_policy="raise") -> VarianceRatioResult:
    """Pitman–Morgan test of equal variances of two paired samples; ratio ``var(b) / var(a)``.

    Answers "is arm b less seed-sensitive than arm a?" while respecting the pairing on seed.

    Parameters
    ----------
    a, b : array_like, 1-D, same length
        Paired samples (position i = seed i).
    confidence_level : float
    alternative : {"two-sided", "less", "greater"}
        About the ratio ``σ_b² / σ_a²`` vs 1 (``"greater"``: b more variable).
    nan_policy : {"raise", "omit"}

    Returns
    -------
    VarianceRatioResult
        ``ratio`` = s_b²/s_a² with its interval ``ci_low``, ``ci_high``; ``r`` = corr(b − a, b + a);
        ``t``, ``df`` = n − 2, ``p``.

    Notes
    -----
    ``cov(b − a, b + a) = σ_b² − σ_a²``, so equal variances ⇔ zero correlation of the difference and the
    sum. The test is the t-test of that Pearson correlation, ``t = r √(n−2) / √(1 − r²)`` with n − 2
    df (:func:`scipy.stats.pearsonr`). Inverting it over ratios θ (using b − √θ a and b + √θ a) gives
    Pitman's interval: with F = s_b²/s_a², ρ = corr(a, b) and K = (1 − ρ²) t²_{1−α/2, n−2} / (n − 2),
    ``θ = F (1 + 2K ± 2 √(K(1 + K)))`` (one-sided: t_{1−α}, one end).

    References
    ----------
    Pitman, E. J. G. (1939). A note on normal correlation. *Biometrika* 31(1/2), 9–12.
    Morgan, W. A. (1939). A test for the significance of the difference between the two variances in a
    sample from a normal bivariate population. *Biometrika* 31(1/2), 13–19.
    Bonett, D. G. (2006). Robust confidence interval for a ratio of standard deviations. *Appl. Psychol.
    Meas.* 30(5), 432–439 (summary of the Pitman–Morgan interval).
    """
    cl = v.probability("confidence_level", confidence_level)
    v.choice("alternative", alternative, v.ALTERNATIVES)
    a, b, n_omitted = v.pair_of_vectors(a, b, nan_policy=nan_policy)
    n = int(a.size)
    if n < 3:
        raise ValueError(f"variance_ratio needs at least 3 pairs (df = n - 2); got n={n}")
    caveats: list[str] = []
    va, vb = float(np.var(a, ddof=1)), float(np.var(b, ddof=1))
    if va == 0 or vb == 0:
        raise ValueError(f"variance_ratio needs non-constant samples; got var(a)={va!r}, var(b)={vb!r}")
    d, s = b - a, b + a
    if np.all(d == d[0]) or np.all(s == s[0]):
        raise ValueError("variance_ratio: b - a or b + a is constant; the correlation is undefined")
    res = capture(lambda: sps.pearsonr(d, s, alternative=alternative), caveats, "Pitman-Morgan")
    r = float(res.statistic)
    df = n - 2
    t = r * math.sqrt(df) / math.sqrt(1 - r * r) if abs(r) < 1 else math.copysign(math.inf, r)
    F = vb / va
    rho = float(np.corrcoef(a, b)[0, 1])

    def bounds(level_tail):
        tq = sps.t.ppf(level_tail, df)
        K = (1 - rho * rho) * tq * tq / df
        root = 2 * math.sqrt(K * (1 + K))
        return F * (1 + 2 * K - root), F * (1 + 2 * K + root)

    a_ = 1 - cl
    if alternative == "two-sided":
        lo, hi = bounds(1 - a_ / 2)
    elif alternative == "greater":
        lo, hi = bounds(1 - a_)[0], math.inf
    else:
        lo, hi = 0.0, bounds(1 - a_)[1]
    if n < 10:
        caveats.append(f"n={n}: the Pitman-Morgan test assumes bivariate normality and has little power at small n")
    return VarianceRatioResult(
        n=n, n_omitted=n_omitted, var_a=va, var_b=vb, ratio=F, ci_low=float(lo), ci_high=float(hi), r=r, t=float(t),
        df=float(df), p=float(res.pvalue), confidence_level=cl, alternative=alternative, method="Pitman-Morgan",
        caveats=tuple(caveats),
    )
