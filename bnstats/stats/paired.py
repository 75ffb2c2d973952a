"""The paired comparison of two arms over seeds: :func:`paired`."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import optimize, special
from scipy import stats as sps
from statsmodels.stats.weightstats import ttost_paired

from . import _validate as v
from ._results import DEFAULT_SEED, ResultMixin, capture, make_rng
from .power import min_p

#: Below this many pairs the BCa interval under-covers noticeably (DESIGN.md; measured ~83% at n=5,
#: ~90% at n=10 for a nominal 95%).
BCA_MIN_N = 15


@dataclasses.dataclass(frozen=True)
class PairedResult(ResultMixin):
    """Result of :func:`paired`; every field is a flat scalar except ``caveats`` (tuple of str).

    See :func:`paired` for the meaning of each field.
    """

    n: int
    n_omitted: int
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

    # scipy-like unpacking: statistic, pvalue
    @property
    def statistic(self) -> float:
        return self.t

    @property
    def pvalue(self) -> float:
        return self.p_t


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


def _resolve_wilcoxon(method: str, d: np.ndarray, zero_method: str, n_resamples: int) -> str:
    has_zero = bool((d == 0).any())
    absd = np.abs(d[d != 0]) if zero_method == "wilcox" else np.abs(d)
    has_ties = absd.size != np.unique(absd).size
    n_eff = absd.size
    if method == "exact" and (has_zero or has_ties):
        raise ValueError(
            "wilcoxon_method='exact' needs differences without zeros or ties "
            f"(zeros: {int((d == 0).sum())}, tied |d|: {has_ties}); "
            "use wilcoxon_method='permutation' (exact conditional test) or 'approx'"
        )
    if method != "auto":
        return method
    if not (has_zero or has_ties) and n_eff <= 50:
        return "exact"
    if 2.0**n_eff <= n_resamples:
        return "permutation"
    return "approx"


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
) -> PairedResult:
    """Paired comparison of arm ``b`` against arm ``a`` (``d = b - a``, paired by position).

    Parameters
    ----------
    a, b : array_like, 1-D, same length
        The metric per seed for the baseline (``a``) and the arm (``b``); position i of each is seed i.
    confidence_level : float
        Of every interval (t, BCa, d_z). ``alpha = 1 - confidence_level`` drives the verdict.
    alternative : {"two-sided", "less", "greater"}
        About the mean difference ``E[b - a]`` (``"greater"``: b above a). Applies to the t-test, its
        interval (one-sided intervals have an infinite end), BCa, Wilcoxon, sign-flip and the d_z interval.
    margin : None, float > 0, or (low, high)
        Equivalence margin in the metric's units; ``m`` means ``(-m, m)``. Without it ``p_tost`` is NaN.
    n_resamples : int
        Bootstrap resamples for BCa, and the sign-flip budget: exact enumeration when
        ``2**n <= n_resamples``, else Monte Carlo with ``n_resamples`` random sign patterns.
    rng : None, int, numpy.random.Generator or SeedSequence
        Source of all random draws, through ``np.random.default_rng(rng)``. ``rng=None`` uses the fixed
        default seed ``bnstats.stats.DEFAULT_SEED`` (20150211), so the same inputs give the same
        numbers, byte for byte; global RNG state is never read. Independent child generators are
        spawned for the bootstrap, the sign-flip and the Wilcoxon permutation test.
    higher_is_better : bool
        ``True`` for accuracies (b > a is "better"), ``False`` for losses.
    wilcoxon_method : {"auto", "exact", "approx", "permutation"}
        Resolved to a concrete method and recorded in ``wilcoxon_method``. ``"auto"``: ``"exact"`` when
        there are no zeros or ties and at most 50 nonzero differences; else ``"permutation"`` (exact
        conditional enumeration of sign flips of the ranks) when ``2**n <= n_resamples``; else
        ``"approx"`` (normal approximation with tie correction). ``"exact"`` with zeros or ties raises.
        scipy's own ``"auto"`` switches silently (NOTES.md) and is not used.
    zero_method : {"wilcox", "pratt", "zsplit"}
        Handling of zero differences, passed to :func:`scipy.stats.wilcoxon` and recorded. ``"wilcox"``
        (drop zeros) is R's behaviour.
    wilcoxon_correction : bool
        Continuity correction of the normal approximation (R's ``correct``; R's default is TRUE,
        scipy's False).
    nan_policy : {"raise", "omit"}
        NaN in either arm raises ``ValueError`` naming the positions, or (``"omit"``) drops the pair;
        ``n_omitted`` records how many.

    Returns
    -------
    PairedResult
        Frozen dataclass; ``.to_dict()`` / ``.to_frame()``. Fields:

        - ``n``, ``n_omitted``: pairs used, pairs dropped for NaN.
        - ``mean_a``, ``mean_b``, ``estimate`` (mean of d), ``sd_diff`` (sd of d, ddof=1).
        - ``t``, ``df``, ``p_t`` (paired t-test, :func:`scipy.stats.ttest_1samp` on d), ``p`` (= ``p_t``,
          the primary p), ``ci_low``, ``ci_high`` (t interval), ``confidence_level``, ``alternative``,
          ``method`` (``"paired t"``).
        - ``boot_ci_low``, ``boot_ci_high``: BCa interval of the mean difference
          (:func:`scipy.stats.bootstrap` on d), ``boot_method``, ``n_resamples``.
        - ``p_wilcoxon``, ``wilcoxon_method`` (resolved), ``zero_method``, ``wilcoxon_correction``,
          ``min_p_wilcoxon`` (smallest p attainable at this n).
        - ``p_signflip``, ``signflip_method`` (``"exact"`` | ``"monte carlo"``), ``min_p_signflip``.
        - ``d_z``, ``d_z_ci_low``, ``d_z_ci_high``, ``g_z``, ``effect_size`` (= d_z),
          ``effect_size_name`` (``"d_z"``), ``cles``.
        - ``margin_low``, ``margin_high`` (NaN without margin), ``p_tost``.
        - ``higher_is_better``, ``verdict``: "better" | "worse" | "equivalent" | "inconclusive".
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
    - Sign-flip: permutation test of the mean of d under random signs
      (:func:`scipy.stats.permutation_test`, ``permutation_type="samples"``).
    - TOST: ``p_tost = max(p_lower, p_upper)`` of the two one-sided paired t-tests against the margin
      (:func:`statsmodels.stats.weightstats.ttost_paired`); "equivalent" when ``p_tost < α``
      (i.e. the 1 − 2α t interval lies inside the margin; Schuirmann 1987).
    - verdict: with a margin, "equivalent" if ``p_tost < α``; otherwise "better"/"worse" when the t
      interval excludes 0 (by the sign of the estimate and ``higher_is_better``), else "inconclusive".
    - All differences equal (s_d = 0): the estimate is exact, both intervals collapse to it (one-sided:
      one infinite end), t = ±inf (NaN if d ≡ 0) with p_t 0 or 1, d_z and g_z are ±inf/NaN with NaN
      interval; a caveat says so. No scipy warning escapes: warnings are recorded in ``caveats``.

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
    a, b, n_omitted = v.pair_of_vectors(a, b, nan_policy=nan_policy)
    gen = make_rng(rng)
    rng_boot, rng_flip, rng_wil = gen.spawn(3)

    alpha = 1 - cl
    caveats: list[str] = []
    if n_omitted:
        caveats.append(f"{n_omitted} pair(s) with NaN omitted (nan_policy='omit')")
    d = b - a
    n = int(d.size)
    est = float(np.mean(d))
    sd = float(np.std(d, ddof=1))
    degenerate = bool(np.all(d == d[0]))
    if degenerate:
        est = float(d[0])
        sd = 0.0
    df = float(n - 1)
    inf = math.inf

    # --- paired t ------------------------------------------------------------------------------
    if degenerate:
        caveats.append(
            f"all {n} differences equal {est!r}: sd_diff = 0, intervals are degenerate, t and d_z undefined or infinite"
        )
        if est == 0:
            t_stat, p_t = float("nan"), 1.0
        else:
            t_stat = math.copysign(inf, est)
            p_t = {"two-sided": 0.0, "greater": 0.0 if est > 0 else 1.0, "less": 0.0 if est < 0 else 1.0}[alternative]
        ci_low = est if alternative in ("two-sided", "greater") else -inf
        ci_high = est if alternative in ("two-sided", "less") else inf
    else:
        tt = capture(lambda: sps.ttest_1samp(d, 0.0, alternative=alternative), caveats, "t-test")
        ci = tt.confidence_interval(confidence_level=cl)
        t_stat, p_t = float(tt.statistic), float(tt.pvalue)
        ci_low, ci_high = float(ci.low), float(ci.high)

    # --- BCa -----------------------------------------------------------------------------------
    if n < BCA_MIN_N:
        caveats.append(
            f"n={n} < {BCA_MIN_N}: the BCa interval under-covers (about 83% at n=5, 90% at n=10 for a nominal 95%); "
            "the paired t interval is primary"
        )
    if degenerate:
        boot_low, boot_high = ci_low, ci_high
    else:
        bres = capture(
            lambda: sps.bootstrap(
                (d,), np.mean, n_resamples=n_resamples, vectorized=True, confidence_level=cl,
                alternative=alternative, method="BCa", rng=rng_boot,
            ),
            caveats,
            "BCa bootstrap",
        )
        boot_low, boot_high = float(bres.confidence_interval.low), float(bres.confidence_interval.high)

    # --- Wilcoxon signed-rank ------------------------------------------------------------------
    n_zero = int((d == 0).sum())
    n_w = n - n_zero if zero_method == "wilcox" else n
    if n_zero == n:
        w_method, p_w, min_p_w = "none", 1.0, 1.0
        caveats.append("Wilcoxon: all differences are zero; p_wilcoxon set to 1")
    else:
        w_method = _resolve_wilcoxon(wilcoxon_method, d, zero_method, n_resamples)
        if w_method == "permutation":
            sp_method = sps.PermutationMethod(n_resamples=n_resamples, rng=rng_wil)
        else:
            sp_method = {"exact": "exact", "approx": "asymptotic"}[w_method]
        wres = capture(
            lambda: sps.wilcoxon(d, zero_method=zero_method, correction=corr, alternative=alternative, method=sp_method),
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
        if n_zero and zero_method == "wilcox":
            caveats.append(f"Wilcoxon: {n_zero} zero difference(s) dropped (zero_method='wilcox'); n used = {n_w}")
    if min_p_w >= alpha:
        caveats.append(
            f"Wilcoxon ({w_method}) cannot reach p < {alpha:g} at n={n_w}: smallest attainable p = {min_p_w:g}"
        )

    # --- sign-flip -----------------------------------------------------------------------------
    flip_exact = 2.0**n <= n_resamples
    flip_method = "exact" if flip_exact else "monte carlo"
    if n_zero == n:
        p_flip = 1.0
    else:
        fres = capture(
            lambda: sps.permutation_test(
                (d,), lambda x, axis: np.mean(x, axis=axis), permutation_type="samples", vectorized=True,
                n_resamples=n_resamples, alternative=alternative, rng=rng_flip,
            ),
            caveats,
            "sign-flip",
        )
        p_flip = float(fres.pvalue)
    min_p_flip = min_p(n, test="signflip", alternative=alternative, n_resamples=n_resamples)
    if min_p_flip >= alpha:
        caveats.append(f"sign-flip ({flip_method}) cannot reach p < {alpha:g} at n={n}: smallest attainable p = {min_p_flip:g}")

    # --- effect sizes --------------------------------------------------------------------------
    if degenerate:
        d_z = float("nan") if est == 0 else math.copysign(inf, est)
        dz_low = dz_high = float("nan")
        g_z = d_z
    else:
        d_z = est / sd
        dz_low, dz_high = dz_interval(d_z, n, confidence_level=cl, alternative=alternative, caveats=caveats)
        g_z = _hedges_j(df) * d_z if n >= 3 else float("nan")
        if n < 3:
            caveats.append("g_z undefined at n=2 (J needs df >= 2)")
    cles = float(np.mean(d > 0) + 0.5 * np.mean(d == 0))

    # --- TOST ----------------------------------------------------------------------------------
    if mg is None:
        m_low = m_high = p_tost = float("nan")
    else:
        m_low, m_high = mg
        if degenerate:
            p_tost = 0.0 if m_low < est < m_high else 1.0
        else:
            p_tost = float(capture(lambda: ttost_paired(b, a, m_low, m_high)[0], caveats, "TOST"))

    # --- verdict -------------------------------------------------------------------------------
    if mg is not None and p_tost < alpha:
        verdict = "equivalent"
    elif ci_low > 0 or ci_high < 0:
        verdict = "better" if (est > 0) == hib else "worse"
    else:
        verdict = "inconclusive"

    return PairedResult(
        n=n, n_omitted=n_omitted, mean_a=float(np.mean(a)), mean_b=float(np.mean(b)), estimate=est, sd_diff=sd,
        t=float(t_stat), df=df, p_t=float(p_t), p=float(p_t), ci_low=float(ci_low), ci_high=float(ci_high),
        confidence_level=cl, alternative=alternative, method="paired t",
        boot_ci_low=boot_low, boot_ci_high=boot_high, boot_method="BCa", n_resamples=n_resamples,
        p_wilcoxon=p_w, wilcoxon_method=w_method, zero_method=zero_method, wilcoxon_correction=corr,
        min_p_wilcoxon=float(min_p_w), p_signflip=p_flip, signflip_method=flip_method,
        min_p_signflip=float(min_p_flip), d_z=float(d_z), d_z_ci_low=float(dz_low), d_z_ci_high=float(dz_high),
        g_z=float(g_z), effect_size=float(d_z), effect_size_name="d_z", cles=cles,
        margin_low=float(m_low), margin_high=float(m_high), p_tost=float(p_tost), higher_is_better=hib,
        verdict=verdict, caveats=tuple(caveats),
    )


__all__ = ["paired", "PairedResult", "DEFAULT_SEED", "dz_interval"]
