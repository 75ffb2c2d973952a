"""The paired comparison of two arms over seeds: :func:`paired`."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
from scipy import optimize, special
from scipy import stats as sps

from . import _validate as v
from ._results import DEFAULT_SEED, ResultMixin, capture, make_rng
from .decision import verdict as decide
from .power import exact_enumeration, min_p
from .power import wilcoxon_method as auto_wilcoxon_method

#: Below this many pairs the BCa interval under-covers noticeably (DESIGN.md; measured ~83% at n=5,
#: ~90% at n=10 for a nominal 95%).
BCA_MIN_N = 15

#: Resampling works in batches of at most this many values (8 MB of float64), so 10^4 seeds and
#: 10^4 resamples stay in memory (scipy's default batch holds all n_resamples x n values at once).
BATCH_VALUES = 2**20


@dataclasses.dataclass(frozen=True)
class PairedResult(ResultMixin):
    """Result of :func:`paired`; every field is a flat scalar except ``caveats`` (tuple of str).

    See :func:`paired` for the meaning of each field.
    """

    n: int
    n_omitted: int
    n_nonzero: int
    denominator: float
    mean_a: float
    mean_b: float
    estimate: float
    sd_diff: float
    t: float
    df: float
    p_t: float
    p: float
    ci_low: float
    ci_high: float
    confidence_level: float
    alternative: str
    method: str
    boot_ci_low: float
    boot_ci_high: float
    boot_method: str
    n_resamples: int
    p_wilcoxon: float
    wilcoxon_method: str
    zero_method: str
    wilcoxon_correction: bool
    min_p_wilcoxon: float
    p_signflip: float
    signflip_method: str
    min_p_signflip: float
    d_z: float
    d_z_ci_low: float
    d_z_ci_high: float
    g_z: float
    effect_size: float
    effect_size_name: str
    cles: float
    margin_low: float
    margin_high: float
    p_tost: float
    higher_is_better: bool
    verdict: str
    caveats: tuple[str, ...]

    # scipy-like unpacking: statistic, pvalue (the primary test's p; see `method`)
    @property
    def statistic(self) -> float:
        return self.t

    @property
    def pvalue(self) -> float:
        return self.p


def _hedges_j(df: float) -> float:
    """J = Γ(df/2) / (√(df/2) Γ((df−1)/2)), via log-gamma."""
    return float(np.exp(special.gammaln(df / 2) - special.gammaln((df - 1) / 2)) / np.sqrt(df / 2))


def _nct_bound(t_obs: float, df: float, target: float, caveats: list[str]) -> float:
    """The noncentrality λ with ``nct.cdf(t_obs, df, λ) = target`` (cdf decreases in λ)."""

    def g(lam):
        c = sps.nct.cdf(t_obs, df, lam)
        if np.isnan(c):  # scipy returns NaN far in a tail: cdf -> 1 below t_obs, -> 0 above
            c = 1.0 if lam < t_obs else 0.0
        return c - target

    def solve():
        # Bracket from the normal approximation of the noncentral t (sd ≈ √(1 + t²/(2 df))).
        se = math.sqrt(1.0 + t_obs * t_obs / (2.0 * df))
        lo, hi = t_obs - 10.0 * se - 1.0, t_obs + 10.0 * se + 1.0
        for _ in range(60):
            glo, ghi = g(lo), g(hi)
            if glo > 0 and ghi < 0:
                return optimize.brentq(g, lo, hi, xtol=1e-12, rtol=1e-12)
            if glo <= 0:
                lo -= 2.0 * se
            if ghi >= 0:
                hi += 2.0 * se
        return float("nan")

    return float(capture(solve, caveats, "d_z interval (noncentral t)"))


def dz_interval(d_z: float, n: int, *, confidence_level: float, alternative: str, caveats: list[str]):
    """CI for d_z by inverting the noncentral t (see :func:`paired`, Notes)."""
    if not np.isfinite(d_z):
        return float("nan"), float("nan")
    df = n - 1
    t_obs = d_z * math.sqrt(n)
    a = 1 - confidence_level
    low, high = -math.inf, math.inf
    if alternative == "two-sided":
        low = _nct_bound(t_obs, df, 1 - a / 2, caveats)
        high = _nct_bound(t_obs, df, a / 2, caveats)
    elif alternative == "greater":
        low = _nct_bound(t_obs, df, 1 - a, caveats)
    else:
        high = _nct_bound(t_obs, df, a, caveats)
    return low / math.sqrt(n), high / math.sqrt(n)


def _batch(n: int) -> int:
    """Resamples per batch so that one batch holds at most :data:`BATCH_VALUES` values."""
    return max(1, BATCH_VALUES // max(int(n), 1))


def signflip(x, *, alternative, n_resamples, rng):
    """Sign-flip permutation test of the mean of ``x`` (H0: x symmetric about 0); returns ``(p, method)``.

    Zeros are dropped first: their sign changes nothing, so the test on the k nonzero values is the same
    test with ``2**k`` distinct sign patterns, enumerated exactly when ``k <= floor(log2(n_resamples))``
    and drawn ``n_resamples`` times otherwise. p-values follow :func:`scipy.stats.permutation_test`
    (``permutation_type="samples"``) exactly: a null value counts as "at least as extreme" within a
    relative tolerance of 100 machine epsilons, the Monte Carlo p is ``(b + 1) / (n_resamples + 1)``, the
    two-sided p is ``min(1, 2 min(p_less, p_greater))``. Written out here (vectorised, in batches of
    :data:`BATCH_VALUES`) because scipy's version loops in Python over the observations: ~40 s at 10^4
    seeds. No nonzero value: p = 1, method ``"exact"``.
    """
    nz = x[x != 0]
    k = int(nz.size)
    if k == 0:
        return 1.0, "exact"
    observed = float(np.mean(nz))
    gamma = abs(np.finfo(np.float64).eps * 100 * observed)
    exact = exact_enumeration(k, n_resamples)
    total = 2**k if exact else n_resamples
    rng = make_rng(rng)
    batch = _batch(k)
    n_ge = n_le = 0
    for start in range(0, total, batch):
        size = min(batch, total - start)
        if exact:  # pattern j flips value i when bit i of j is set
            bits = (np.arange(start, start + size)[:, None] >> np.arange(k)[None, :]) & 1
        else:
            bits = rng.integers(0, 2, size=(size, k), dtype=np.int8)
        null = ((1 - 2 * bits.astype(np.float64)) @ nz) / k
        n_ge += int(np.count_nonzero(null >= observed - gamma))
        n_le += int(np.count_nonzero(null <= observed + gamma))
    adj = 0 if exact else 1
    p_greater, p_less = (n_ge + adj) / (total + adj), (n_le + adj) / (total + adj)
    p = {"greater": p_greater, "less": p_less, "two-sided": 2 * min(p_less, p_greater)}[alternative]
    return float(min(max(p, 0.0), 1.0)), "exact" if exact else "monte carlo"


def bca_mean(x, *, n_resamples, confidence_level, alternative, rng):
    """BCa bootstrap interval of the mean of ``x``: :func:`scipy.stats.bootstrap` with ``method="BCa"``,
    its O(n²) jackknife replaced by the closed form of the mean's. Returns ``(low, high)``.

    The bootstrap distribution is scipy's, from the same draws of ``rng`` (``method="percentile"``
    resamples exactly as ``"BCa"`` does, in batches of :data:`BATCH_VALUES`); the bias correction ``z0``
    and the interval's quantiles follow scipy's ``_bca_interval`` step by step. Only the acceleration
    differs in how it is computed: scipy evaluates the mean on each of the n leave-one-out samples
    (n² values: 4.4 s of a 5 s comparison at 10^4 seeds); for the mean the leave-one-out estimates are
    ``θ₍ᵢ₎ = (n x̄ − xᵢ)/(n − 1)``, so ``(n − 1)(θ₍.₎ − θ₍ᵢ₎) = xᵢ − x̄`` and

        â = Σ (xᵢ − x̄)³ / (6 [Σ (xᵢ − x̄)²]^{3/2})

    (Efron & Tibshirani 1993, eq. 14.15), in O(n). The intervals agree with scipy's to ~1e-12 relative
    (rounding: scipy subtracts nearly equal leave-one-out means, this form does not);
    tests/stats/test_stats_bca.py checks them against ``scipy.stats.bootstrap(method="BCa")``.

    A NaN end (the interval cannot be computed, e.g. all bootstrap means on one side of x̄) warns
    :class:`scipy.stats.DegenerateDataWarning` with scipy's message, as scipy does.

    References
    ----------
    Efron, B. (1987). Better bootstrap confidence intervals. *JASA* 82(397), 171–185.
    Efron, B., Tibshirani, R. J. (1993). *An Introduction to the Bootstrap*, ch. 14. Chapman & Hall.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    res = sps.bootstrap((x,), np.mean, n_resamples=n_resamples, batch=_batch(n), vectorized=True,
                        confidence_level=confidence_level, alternative=alternative, method="percentile", rng=rng)
    theta_b = np.asarray(res.bootstrap_distribution, dtype=np.float64)
    theta_hat = float(np.mean(x))
    # z0: scipy's _percentile_of_score (the "mean" kind of percentileofscore, as a fraction)
    pct = (np.count_nonzero(theta_b < theta_hat) + np.count_nonzero(theta_b <= theta_hat)) / (2 * theta_b.size)
    z0 = special.ndtri(pct)
    u = x - theta_hat
    a_hat = np.sum(u**3) / (6.0 * np.sum(u**2) ** 1.5)
    alpha = (1 - confidence_level) / 2 if alternative == "two-sided" else 1 - confidence_level
    z_alpha = float(special.ndtri(alpha))
    num1, num2 = z0 + z_alpha, z0 - z_alpha
    alpha_1 = special.ndtr(z0 + num1 / (1 - a_hat * num1))
    alpha_2 = special.ndtr(z0 + num2 / (1 - a_hat * num2))
    if np.isnan(alpha_1) or np.isnan(alpha_2):
        low = high = math.nan
    else:
        # scipy.stats.quantile's default ("linear") is numpy's default: R's type 7
        low, high = (float(q) for q in np.quantile(theta_b, [alpha_1, alpha_2]))
    if math.isnan(low) or math.isnan(high):
        warnings.warn(sps.DegenerateDataWarning(
            "The BCa confidence interval cannot be calculated. This problem is known to occur when the "
            "distribution is degenerate or the statistic is np.min."), stacklevel=2)
    if alternative == "less":
        low = -math.inf
    elif alternative == "greater":
        high = math.inf
    return low, high


def _counts(name, value, size):
    """``denominator``: None, an int >= 1, or 1-D ints >= 1 of length ``size``; returned as float array."""
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or arr.ndim > 1:
        raise TypeError(f"{name} must be None, an int >= 1 or a 1-D array of ints >= 1; got {value!r}")
    arr = np.broadcast_to(arr.astype(np.float64), (size,)) if arr.ndim == 0 else arr.astype(np.float64)
    if arr.shape != (size,):
        raise ValueError(f"{name} must have one entry per pair ({size}); got {arr.size}")
    if not (np.all(np.isfinite(arr)) and np.all(arr >= 1) and np.all(arr == np.round(arr))):
        raise ValueError(f"{name} must hold whole numbers >= 1 (test-set sizes); got {value!r}")
    return arr


def paired(
    a,
    b,
    *,
    confidence_level=0.95,
    alternative="two-sided",
    margin=None,
    n_resamples=9999,
    rng=None,
    higher_is_better=True,
    wilcoxon_method="auto",
    zero_method="wilcox",
    wilcoxon_correction=False,
    nan_policy="raise",
    denominator=None,
) -> PairedResult:
    """Paired comparison of arm ``b`` against arm ``a`` (``d = b - a``, paired by position).

    Parameters
    ----------
    a, b : array_like, 1-D, same length
        The metric per seed for the baseline (``a``) and the arm (``b``); position i of each is seed i.
        With ``denominator``: counts (e.g. correct test examples), whole numbers in [0, denominator].
    confidence_level : float
        Of every interval (t, BCa, d_z). ``alpha = 1 - confidence_level`` drives the verdict.
    alternative : {"two-sided", "less", "greater"}
        About the mean difference ``E[b - a]`` (``"greater"``: b above a). Applies to the t-test, its
        interval (one-sided intervals have an infinite end), BCa, Wilcoxon, sign-flip and the d_z interval.
    margin : None, float > 0, or (low, high)
        Equivalence margin in the metric's units; ``m`` means ``(-m, m)``. Without it ``p_tost`` is NaN.
    n_resamples : int
        Bootstrap resamples for BCa, and the permutation budget of the sign-flip and Wilcoxon tests:
        exact enumeration when ``n <= floor(log2(n_resamples))`` (``2**n`` patterns fit), else Monte
        Carlo with ``n_resamples`` random sign patterns. No size limit: ``2**n`` is never formed.
    rng : None, int, numpy.random.Generator or SeedSequence
        Source of all random draws, through ``np.random.default_rng(rng)``. ``rng=None`` uses the fixed
        default seed ``bnstats.stats.DEFAULT_SEED`` (20150211), so the same inputs give the same
        numbers, byte for byte; global RNG state is never read. Independent child generators are
        spawned for the bootstrap, the sign-flip, the Wilcoxon permutation test and the exact TOST.
    higher_is_better : bool
        ``True`` for accuracies (b > a is "better"), ``False`` for losses.
    wilcoxon_method : {"auto", "exact", "approx", "permutation"}
        Resolved to a concrete method and recorded in ``wilcoxon_method``. ``"auto"``
        (:func:`bnstats.stats.power.wilcoxon_method`): ``"exact"`` when there are no zeros or ties and
        at most 50 ranked differences; else ``"permutation"`` (exact conditional enumeration of sign
        flips of the ranks) when ``n <= floor(log2(n_resamples))``; else ``"approx"`` (normal
        approximation with tie correction). ``"exact"`` with zeros or ties raises. scipy's own
        ``"auto"`` switches silently (NOTES.md) and is not used.
    zero_method : {"wilcox", "pratt", "zsplit"}
        Handling of zero differences, passed to :func:`scipy.stats.wilcoxon` and recorded. ``"wilcox"``
        (drop zeros) is R's behaviour.
    wilcoxon_correction : bool
        Continuity correction of the normal approximation (R's ``correct``; R's default is TRUE,
        scipy's False).
    nan_policy : {"raise", "omit"}
        NaN in either arm raises ``ValueError`` naming the positions, or (``"omit"``) drops the pair;
        ``n_omitted`` records how many.
    denominator : None, int or array_like of int
        When given, ``a`` and ``b`` are counts out of ``denominator`` (one value, or one per pair) and
        the metric is ``count / denominator``. The differences are then computed from the integer
        differences, ``d = (b - a) / denominator``, so equal count differences give bit-identical
        ``d`` and ties are exact (from accuracies, +2 and -2 of 1000 examples come out as
        0.0019999999999998908 and -0.0020000000000000018 and the Wilcoxon ranks split the tie).

    Returns
    -------
    PairedResult
        Frozen dataclass; ``.to_dict()`` / ``.to_frame()``. Fields:

        - ``n``, ``n_omitted``, ``n_nonzero``: pairs used, pairs dropped for NaN, nonzero differences.
        - ``denominator``: the count denominator (NaN without one, or when it varies across pairs).
        - ``mean_a``, ``mean_b``, ``estimate`` (mean of d), ``sd_diff`` (sd of d, ddof=1).
        - ``t``, ``df``, ``p_t`` (paired t-test, :func:`scipy.stats.ttest_1samp` on d), ``ci_low``,
          ``ci_high`` (t interval), ``confidence_level``, ``alternative``.
        - ``p``: the primary p-value, from the test named in ``method``: ``"paired t"`` (``p = p_t``),
          or ``"sign-flip (exact)"`` / ``"sign-flip (monte carlo)"`` (``p = p_signflip``) when every
          difference is equal (see Notes). Multiplicity adjustment (``compare``'s ``p_adj``) uses ``p``.
        - ``boot_ci_low``, ``boot_ci_high``: BCa interval of the mean difference
          (:func:`scipy.stats.bootstrap` on d), ``boot_method``, ``n_resamples``.
        - ``p_wilcoxon``, ``wilcoxon_method`` (resolved), ``zero_method``, ``wilcoxon_correction``,
          ``min_p_wilcoxon`` (smallest p attainable with this method and n).
        - ``p_signflip``, ``signflip_method`` (``"exact"`` | ``"monte carlo"``), ``min_p_signflip``
          (smallest p attainable with the nonzero differences: ``2**(1 - n_nonzero)`` two-sided).
        - ``d_z``, ``d_z_ci_low``, ``d_z_ci_high``, ``g_z``, ``effect_size`` (= d_z),
          ``effect_size_name`` (``"d_z"``), ``cles``.
        - ``margin_low``, ``margin_high`` (NaN without margin), ``p_tost``.
        - ``higher_is_better``, ``verdict``: one of :data:`bnstats.stats.VERDICTS`, decided on this
          comparison alone (a family of one: ``p < alpha``, ``p_tost < alpha``); see
          :func:`bnstats.stats.decision.verdict`. :func:`bnstats.stats.compare` replaces it with the
          family's decision.
        - ``caveats``: tuple of str (small n, unreachable alpha, degenerate data, captured warnings).

    Raises
    ------
    ValueError
        Unequal lengths, n < 2, NaN with ``nan_policy="raise"``, infinite values, bad options.
    TypeError
        Non-numeric input or options of the wrong type.

    Notes
    -----
    With ``d_i = b_i - a_i``, ``d̄`` and ``s_d`` (ddof=1):

    - t = d̄ / (s_d/√n), df = n − 1; interval d̄ ± t_{1−α/2, n−1} s_d/√n.
    - d_z = d̄ / s_d (Cohen 1988, the paired standardized mean difference; *not* d_av). Its interval
      inverts the noncentral t: with t_obs = d_z √n, find λ_L, λ_U with
      F_{nct}(t_obs; n−1, λ_L) = 1 − α/2 and F_{nct}(t_obs; n−1, λ_U) = α/2, then divide by √n
      (Steiger & Fouladi 1997; Algina & Keselman 2003), via :data:`scipy.stats.nct` and
      :func:`scipy.optimize.brentq`.
    - g_z = J · d_z, J = Γ(df/2) / (√(df/2) Γ((df−1)/2)) (Hedges 1981).
    - cles = P(d > 0) + ½ P(d = 0) over the observed pairs (common-language effect size for paired
      data; McGraw & Wong 1992, paired form).
    - Sign-flip: permutation test of the mean of the nonzero d under random signs (:func:`signflip`).
    - TOST: ``p_tost = max(p_lower, p_upper)`` of the two one-sided paired t-tests against the margin
      (t-tests of d against ``margin_low``, "greater", and ``margin_high``, "less"; R's
      ``t.test(mu=)``); equivalence when ``p_tost < α`` (i.e. the 1 − 2α t interval lies inside the
      margin; Schuirmann 1987).
    - **All differences equal** (s_d = 0, e.g. every seed gains the same number of test examples):
      the estimate is exact but the t-test, its interval, BCa, d_z, g_z and their intervals are
      undefined and are NaN (never p = 0 or a zero-width interval). ``p`` is the exact sign-flip p
      (two-sided ``2**(1 - n)`` at best: 0.5 at n = 2), ``method`` says so, ``p_tost`` is the larger
      of the two one-sided sign-flip p-values against the margin, and a caveat explains it.
    - No scipy warning escapes: warnings are recorded in ``caveats``.

    References
    ----------
    Student (1908). The probable error of a mean. *Biometrika* 6(1), 1–25.
    Cohen, J. (1988). *Statistical Power Analysis for the Behavioral Sciences*, 2nd ed.
    Hedges, L. V. (1981). Distribution theory for Glass's estimator of effect size. *J. Educ. Stat.* 6(2).
    Steiger, J. H., Fouladi, R. T. (1997). Noncentrality interval estimation. In *What If There Were No
    Significance Tests?* Erlbaum.
    Algina, J., Keselman, H. J. (2003). Approximate confidence intervals for effect sizes.
    *Educ. Psychol. Meas.* 63(4), 537–553.
    McGraw, K. O., Wong, S. P. (1992). A common language effect size statistic. *Psychol. Bull.* 111(2).
    Efron, B. (1987). Better bootstrap confidence intervals. *JASA* 82(397), 171–185.
    Wilcoxon, F. (1945). Individual comparisons by ranking methods. *Biometrics Bulletin* 1(6), 80–83.
    Good, P. (2005). *Permutation, Parametric, and Bootstrap Tests of Hypotheses*, 3rd ed., Springer.
    Schuirmann, D. J. (1987). A comparison of the two one-sided tests procedure. *J. Pharmacokin.
    Biopharm.* 15(6), 657–680.
    """
    cl = v.probability("confidence_level", confidence_level)
    v.choice("alternative", alternative, v.ALTERNATIVES)
    mg = v.margin(margin)
    n_resamples = v.integer("n_resamples", n_resamples, minimum=1)
    hib = v.boolean("higher_is_better", higher_is_better)
    v.choice("wilcoxon_method", wilcoxon_method, v.WILCOXON_METHODS)
    v.choice("zero_method", zero_method, v.ZERO_METHODS)
    corr = v.boolean("wilcoxon_correction", wilcoxon_correction)
    den = _counts("denominator", denominator, np.size(a))
    a_all, b_all = v.vector("a", a), v.vector("b", b)
    a, b, n_omitted = v.pair_of_vectors(a_all, b_all, nan_policy=nan_policy)
    if den is not None:
        if a_all.shape == b_all.shape:
            den = den[~(np.isnan(a_all) | np.isnan(b_all))]
        for name, x in (("a", a), ("b", b)):
            if not (np.all(x == np.round(x)) and np.all(x >= 0) and np.all(x <= den)):
                raise ValueError(f"with denominator, {name} must hold counts: whole numbers in [0, denominator]; got {x.tolist()}")
    gen = make_rng(rng)
    rng_boot, rng_flip, rng_wil, rng_tost = gen.spawn(4)

    alpha = 1 - cl
    caveats: list[str] = []
    if n_omitted:
        caveats.append(f"{n_omitted} pair(s) with NaN omitted (nan_policy='omit')")
    if den is None:
        d = b - a
        mean_a, mean_b, denom = float(np.mean(a)), float(np.mean(b)), math.nan
    else:
        # Integer differences first (exact in float64 below 2**53), one division each: equal count
        # differences give bit-identical d, so ties stay ties.
        d = (b - a) / den
        mean_a, mean_b = float(np.mean(a / den)), float(np.mean(b / den))
        denom = float(den[0]) if np.all(den == den[0]) else math.nan
    n = int(d.size)
    n_zero = int((d == 0).sum())
    nan = math.nan
    degenerate = bool(np.all(d == d[0]))
    est = float(d[0]) if degenerate else float(np.mean(d))
    sd = 0.0 if degenerate else float(np.std(d, ddof=1))
    df = float(n - 1)

    # --- sign-flip (the primary test when every difference is equal) ----------------------------
    p_flip, flip_method = capture(
        lambda: signflip(d, alternative=alternative, n_resamples=n_resamples, rng=rng_flip), caveats, "sign-flip")
    min_p_flip = min_p(max(n - n_zero, 1), test="signflip", alternative=alternative, n_resamples=n_resamples)
    if n - n_zero == 0:
        min_p_flip = 1.0
    if min_p_flip >= alpha:
        caveats.append(
            f"sign-flip ({flip_method}) cannot reach p < {alpha:g} with {n - n_zero} nonzero difference(s) of {n}: "
            f"smallest attainable p = {min_p_flip:g}"
        )

    # --- paired t ------------------------------------------------------------------------------
    if degenerate:
        caveats.append(
            f"all {n} differences equal {est!r}: sd_diff = 0, so the t test, its interval, BCa and d_z are "
            f"undefined (NaN), and p and the verdict come from the exact sign-flip test (p = {p_flip:g})"
        )
        t_stat = p_t = ci_low = ci_high = nan
        method, p_primary = f"sign-flip ({flip_method})", p_flip
    else:
        tt = capture(lambda: sps.ttest_1samp(d, 0.0, alternative=alternative), caveats, "t-test")
        ci = tt.confidence_interval(confidence_level=cl)
        t_stat, p_t = float(tt.statistic), float(tt.pvalue)
        ci_low, ci_high = float(ci.low), float(ci.high)
        method, p_primary = "paired t", p_t

    # --- BCa -----------------------------------------------------------------------------------
    if n < BCA_MIN_N and not degenerate:
        caveats.append(
            f"n={n} < {BCA_MIN_N}: the BCa interval under-covers (about 83% at n=5, 90% at n=10 for a nominal 95%), "
            "the paired t interval is primary"
        )
    if degenerate:
        boot_low = boot_high = nan
    else:
        boot_low, boot_high = capture(
            lambda: bca_mean(d, n_resamples=n_resamples, confidence_level=cl, alternative=alternative, rng=rng_boot),
            caveats,
            "BCa bootstrap",
        )

    # --- Wilcoxon signed-rank ------------------------------------------------------------------
    # Under zero_method="wilcox" the zeros are dropped before ranking, so the test (and its permutation
    # enumeration, 2**n_w patterns) runs on the nonzero differences only.
    dw = d[d != 0] if zero_method == "wilcox" else d
    n_w = int(dw.size)
    if n_zero == n:
        w_method, p_w, min_p_w = "none", 1.0, 1.0
        caveats.append("Wilcoxon: all differences are zero, p_wilcoxon set to 1")
    elif n_w == 1:  # one ranked difference: two sign patterns (scipy's permutation test needs two values)
        w_method, min_p_w = "exact", min_p(1, test="wilcoxon", alternative=alternative)
        p_w = {"two-sided": 1.0, "greater": 0.5 if dw[0] > 0 else 1.0, "less": 0.5 if dw[0] < 0 else 1.0}[alternative]
    else:
        w_method = _resolve_wilcoxon(wilcoxon_method, d, zero_method, n_resamples)
        if w_method == "permutation":
            sp_method = sps.PermutationMethod(n_resamples=n_resamples, batch=_batch(n_w), rng=rng_wil)
        else:
            sp_method = {"exact": "exact", "approx": "asymptotic"}[w_method]
        wres = capture(
            lambda: sps.wilcoxon(dw, zero_method=zero_method, correction=corr, alternative=alternative, method=sp_method),
            caveats,
            "Wilcoxon",
        )
        p_w = float(wres.pvalue)
        if w_method == "approx":
            min_p_w = min_p(n_w, test="wilcoxon", alternative=alternative, method="approx", correction=corr)
        else:
            min_p_w = min_p(
                n_w, test="wilcoxon", alternative=alternative,
                n_resamples=n_resamples if w_method == "permutation" else None,
            )
    if 0 < n_zero < n and zero_method == "wilcox":
        caveats.append(f"Wilcoxon: {n_zero} zero difference(s) dropped (zero_method='wilcox'), n used = {n_w}")
    if min_p_w >= alpha:
        caveats.append(
            f"Wilcoxon ({w_method}) cannot reach p < {alpha:g} at n={n_w}: smallest attainable p = {min_p_w:g}"
        )

    # --- effect sizes --------------------------------------------------------------------------
    if degenerate:
        d_z = dz_low = dz_high = g_z = nan
    else:
        d_z = est / sd
        dz_low, dz_high = dz_interval(d_z, n, confidence_level=cl, alternative=alternative, caveats=caveats)
        g_z = _hedges_j(df) * d_z if n >= 3 else nan
        if n < 3:
            caveats.append("g_z undefined at n=2 (J needs df >= 2)")
    cles = float(np.mean(d > 0) + 0.5 * np.mean(d == 0))

    # --- TOST ----------------------------------------------------------------------------------
    if mg is None:
        m_low = m_high = p_tost = nan
    else:
        m_low, m_high = mg
        if degenerate:
            r_lo, r_hi = rng_tost.spawn(2)
            p_lo = signflip(d - m_low, alternative="greater", n_resamples=n_resamples, rng=r_lo)[0]
            p_hi = signflip(d - m_high, alternative="less", n_resamples=n_resamples, rng=r_hi)[0]
        else:
            p_lo = float(capture(lambda: sps.ttest_1samp(d, m_low, alternative="greater").pvalue, caveats, "TOST"))
            p_hi = float(capture(lambda: sps.ttest_1samp(d, m_high, alternative="less").pvalue, caveats, "TOST"))
        p_tost = max(p_lo, p_hi)

    verdict = decide(est, rejected=p_primary < alpha, equivalent=mg is not None and p_tost < alpha,
                     higher_is_better=hib)

    return PairedResult(
        n=n, n_omitted=n_omitted, n_nonzero=n - n_zero, denominator=denom, mean_a=mean_a, mean_b=mean_b,
        estimate=est, sd_diff=sd, t=float(t_stat), df=df, p_t=float(p_t), p=float(p_primary), ci_low=float(ci_low),
        ci_high=float(ci_high), confidence_level=cl, alternative=alternative, method=method,
        boot_ci_low=boot_low, boot_ci_high=boot_high, boot_method="BCa", n_resamples=n_resamples,
        p_wilcoxon=p_w, wilcoxon_method=w_method, zero_method=zero_method, wilcoxon_correction=corr,
        min_p_wilcoxon=float(min_p_w), p_signflip=p_flip, signflip_method=flip_method,
        min_p_signflip=float(min_p_flip), d_z=float(d_z), d_z_ci_low=float(dz_low), d_z_ci_high=float(dz_high),
        g_z=float(g_z), effect_size=float(d_z), effect_size_name="d_z", cles=cles,
        margin_low=float(m_low), margin_high=float(m_high), p_tost=float(p_tost), higher_is_better=hib,
        verdict=verdict, caveats=tuple(caveats),
    )


def _resolve_wilcoxon(method: str, d: np.ndarray, zero_method: str, n_resamples: int) -> str:
    has_zero = bool((d == 0).any())
    absd = np.abs(d[d != 0]) if zero_method == "wilcox" else np.abs(d)
    has_ties = absd.size != np.unique(absd).size
    if method == "exact" and (has_zero or has_ties):
        raise ValueError(
            "wilcoxon_method='exact' needs differences without zeros or ties "
            f"(zeros: {int((d == 0).sum())}, tied |d|: {has_ties}); "
            "use wilcoxon_method='permutation' (exact conditional test) or 'approx'"
        )
    if method != "auto":
        return method
    return auto_wilcoxon_method(absd.size, ties=has_zero or has_ties, n_resamples=n_resamples)


__all__ = ["paired", "PairedResult", "DEFAULT_SEED", "bca_mean", "dz_interval", "signflip"]
