"""Verdicts and the intervals that agree with them: :data:`VERDICTS`, :func:`verdict`, :func:`family_intervals`.

A verdict is a *decision* about one comparison within a family of comparisons. It is made from two
multiplicity-adjusted p-values and nothing else:

- the difference decision: ``p_adj < alpha`` (``p_adj`` adjusts the primary ``p`` over the family), with
  the direction of the estimate;
- the equivalence decision (only with a margin): ``p_tost_adj < alpha`` (the TOST p-values adjusted over
  the same family with the same method).

Per-comparison intervals (``ci_low``, ``ci_high``) are *not* decisions: in a family of m comparisons a
95% interval that excludes 0 is not evidence at the family's level. The decision intervals of
:func:`family_intervals` are built so that, on every row, "the decision interval excludes 0" holds
exactly when the verdict is better or worse (with or without "within margin").
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

#: Every verdict :func:`bnstats.stats.compare` and :func:`bnstats.stats.paired` can return, in the
#: order a table legend lists them. The rules are in :func:`verdict`.
VERDICTS = (
    "better",
    "worse",
    "better, within margin",
    "worse, within margin",
    "equivalent",
    "inconclusive",
    "not estimable",
)

#: Verdicts that state a difference from the baseline (the decision interval excludes 0).
DIFFERENCE_VERDICTS = ("better", "worse", "better, within margin", "worse, within margin")

#: ``decision_interval_method`` per ``p_adjust`` method (see :func:`family_intervals`).
DECISION_INTERVAL_METHODS = {
    "bonferroni": "bonferroni",
    "holm": "bonferroni, cut at 0 where holm rejects (strassburger-bretz)",
    "bh": "fcr-adjusted (benjamini-yekutieli)",
}


def verdict(estimate, *, rejected, equivalent, higher_is_better, estimable=True) -> str:
    """The verdict of one comparison from the family's decisions.

    Parameters
    ----------
    estimate : float
        Mean difference ``arm - baseline``.
    rejected : bool
        The difference decision: ``p_adj < alpha`` (no difference rejected).
    equivalent : bool
        The equivalence decision: ``p_tost_adj < alpha`` (False without a margin).
    higher_is_better : bool
        Whether a positive difference is an improvement (accuracy) or not (loss).
    estimable : bool
        False when the comparison has fewer than 2 usable pairs.

    Returns
    -------
    str
        One of :data:`VERDICTS`:

        ===========================  ==========================================================
        ``"not estimable"``          fewer than 2 usable pairs (e.g. an arm diverged on every seed)
        ``"better"`` / ``"worse"``   difference decided, not shown to lie within the margin
        ``"better, within margin"``  difference decided *and* equivalence decided: the arm differs
        / ``"worse, within margin"`` from the baseline, by less than the margin
        ``"equivalent"``             equivalence decided, no difference decided
        ``"inconclusive"``           neither decided ("no detectable difference")
        ===========================  ==========================================================

        "better" means the difference is in the direction ``higher_is_better`` calls an improvement.
    """
    if not estimable:
        return "not estimable"
    if rejected:
        direction = "better" if (estimate > 0) == bool(higher_is_better) else "worse"
        return f"{direction}, within margin" if equivalent else direction
    return "equivalent" if equivalent else "inconclusive"


def excludes_zero(low: float, high: float) -> bool:
    """Whether a decision interval excludes 0. An end exactly at 0 is open there (see :func:`family_intervals`)."""
    if np.isnan(low) or np.isnan(high):
        return False
    return bool(low > 0 or high < 0 or (low == 0 and high > 0) or (high == 0 and low < 0))


def _t_bounds(est, se, df, gamma, alternative):
    """The 1 - gamma t interval ``est ± t se`` (one-sided: one infinite end); NaN where se/df are NaN."""
    if not (np.isfinite(se) and np.isfinite(df)):
        return math.nan, math.nan
    if alternative == "two-sided":
        h = float(sps.t.ppf(1 - gamma / 2, df)) * se
        return est - h, est + h
    h = float(sps.t.ppf(1 - gamma, df)) * se
    return (est - h, math.inf) if alternative == "greater" else (-math.inf, est + h)


def _sign_region(est, rejected):
    """What an exact sign test decides when differences are all equal: the side of 0, or nothing."""
    if not rejected:
        return -math.inf, math.inf
    return (0.0, math.inf) if est > 0 else (-math.inf, 0.0)


def family_intervals(estimate, se, df, *, rejected, t_valid, alpha, p_adjust, alternative):
    """Simultaneous and decision intervals for a family of comparisons.

    Parameters
    ----------
    estimate, se, df : array_like, one entry per comparison
        Mean difference, its standard error ``sd_diff / √n`` and ``n - 1``.
    rejected : array_like of bool
        The family's difference decisions (``p_adj < alpha``).
    t_valid : array_like of bool
        Whether the row's t interval is defined (False for degenerate rows, where every difference is
        equal, and for rows that are not estimable). Rows with ``t_valid`` False get NaN simultaneous
        intervals; their decision region is the side of 0 the exact test decided, or the whole line.
    alpha : float
        ``1 - confidence_level``, the family's level.
    p_adjust : {"holm", "bh", "bonferroni"}
    alternative : {"two-sided", "less", "greater"}

    Returns
    -------
    dict of numpy.ndarray
        ``ci_low_simultaneous``, ``ci_high_simultaneous`` (Bonferroni), ``ci_low_decision``,
        ``ci_high_decision``. Rows outside the family (NaN ``estimate``) are NaN.

    Notes
    -----
    With m the number of comparisons in the family and r the number the adjustment rejects:

    - **Simultaneous** (every method): Bonferroni, the t interval at level ``1 - alpha/m``. All m
      intervals cover their true differences together with probability >= 1 - alpha, under any
      dependence between the comparisons (they share the baseline's seeds).
    - **Decision, bonferroni**: the Bonferroni intervals themselves; they exclude 0 exactly where
      ``p_adj < alpha``.
    - **Decision, holm**: Holm rejects everything Bonferroni rejects, and may reject more. On a row Holm
      rejects whose Bonferroni interval still contains 0, the interval is cut at 0 on the side of 0
      away from the estimate, and that end is open: ``[0, high]`` with ``ci_low_decision = 0`` reads
      "difference > 0, and at most high". Every other row keeps its Bonferroni interval (a row Holm does
      not reject contains 0 in its Bonferroni interval, because its p exceeds alpha/m). The cut end is
      the compatible lower bound of Strassburger & Bretz (2008) for a hypothesis Holm rejects (their
      bound is exactly 0 unless Holm rejects all m; when it rejects all m, their bound is
      ``max(0, Bonferroni bound)``, which is what the cut gives). For one-sided alternatives the
      Strassburger–Bretz construction is used as published: a row not rejected gets the one-sided
      bound at level ``1 - alpha/(m - r)``, a rejected row the bound 0 (``max(0, Bonferroni bound)``
      when r = m), and this set of bounds has simultaneous coverage >= 1 - alpha. For two-sided
      comparisons there are no Holm-compatible simultaneous *intervals* with a general guarantee
      (Holm's two-sided decisions are decisions about θ = 0; their signs are controlled under
      independence, Shaffer 1980), so the far ends and the unrejected rows carry Bonferroni's
      guarantee and the cut end carries Holm's decision.
    - **Decision, bh**: the FCR-adjusted intervals of Benjamini & Yekutieli (2005): every row's t
      interval at level ``1 - R alpha / m`` with R = max(r, 1). BH rejects exactly the rows with
      ``p < R alpha / m`` (for a rejected row p <= p_(R) < R alpha/m; an unrejected row of rank k > R
      has p >= k alpha/m > R alpha/m), so these intervals exclude 0 exactly on BH's rejections; over the
      rejected rows the expected share of intervals that miss their parameter is <= alpha under
      independence or positive regression dependence (BY 2005, Theorems 1–2). They promise nothing
      about the rows BH does not select.

    Degenerate rows (all differences equal) have no t interval; their decision region is the side of 0
    that the exact sign-flip test decided (``[0, inf)`` or ``(-inf, 0]``, open at 0) or the whole line.
    Finally, decision-interval ends that fall within rounding of 0 on the wrong side are moved (to 0 on
    a rejected row, just past 0 on an unrejected one), so the interval and the verdict always agree.

    References
    ----------
    Strassburger, K., Bretz, F. (2008). Compatible simultaneous lower confidence bounds for the Holm
    procedure and other Bonferroni-based closed tests. *Stat. Med.* 27(24), 4914–4927.
    Benjamini, Y., Yekutieli, D. (2005). False discovery rate-adjusted multiple confidence intervals for
    selected parameters. *JASA* 100(469), 71–81.
    Shaffer, J. P. (1980). Control of directional errors with stagewise multiple test procedures.
    *Ann. Stat.* 8(6), 1342–1347.
    Holm, S. (1979). *Scand. J. Stat.* 6, 65–70.
    """
    est = np.asarray(estimate, dtype=float)
    se = np.asarray(se, dtype=float)
    df = np.asarray(df, dtype=float)
    rej = np.asarray(rejected, dtype=bool)
    tv = np.asarray(t_valid, dtype=bool)
    k = est.size
    nan = np.full(k, np.nan)
    sim_lo, sim_hi, dec_lo, dec_hi = nan.copy(), nan.copy(), nan.copy(), nan.copy()
    in_family = ~np.isnan(est)
    m = int(in_family.sum())
    if m == 0:
        return {"ci_low_simultaneous": sim_lo, "ci_high_simultaneous": sim_hi,
                "ci_low_decision": dec_lo, "ci_high_decision": dec_hi}
    r = int((rej & in_family).sum())
    gamma_bonf = alpha / m
    for i in np.flatnonzero(in_family):
        if tv[i]:
            sim_lo[i], sim_hi[i] = _t_bounds(est[i], se[i], df[i], gamma_bonf, alternative)
        if not tv[i]:
            dec_lo[i], dec_hi[i] = _sign_region(est[i], rej[i])
            continue
        if p_adjust == "bonferroni":
            lo, hi = sim_lo[i], sim_hi[i]
        elif p_adjust == "bh":
            lo, hi = _t_bounds(est[i], se[i], df[i], max(r, 1) * alpha / m, alternative)
        elif alternative == "two-sided":  # holm, two-sided: Bonferroni cut at 0 where Holm rejects
            lo, hi = sim_lo[i], sim_hi[i]
            if rej[i]:
                lo, hi = (max(lo, 0.0), hi) if est[i] > 0 else (lo, min(hi, 0.0))
        else:  # holm, one-sided: Strassburger & Bretz (2008) as published
            if rej[i] and r < m:
                lo, hi = (0.0, math.inf) if alternative == "greater" else (-math.inf, 0.0)
            elif rej[i]:  # r == m
                lo, hi = sim_lo[i], sim_hi[i]
                lo, hi = (max(lo, 0.0), hi) if alternative == "greater" else (lo, min(hi, 0.0))
            else:
                lo, hi = _t_bounds(est[i], se[i], df[i], alpha / (m - r), alternative)
        dec_lo[i], dec_hi[i] = _agree(lo, hi, est[i], rej[i])
    return {"ci_low_simultaneous": sim_lo, "ci_high_simultaneous": sim_hi,
            "ci_low_decision": dec_lo, "ci_high_decision": dec_hi}


def _agree(lo, hi, est, rejected):
    """Move an end that rounding put on the wrong side of 0 (p within ~1e-16 of its threshold)."""
    if rejected and not excludes_zero(lo, hi):
        return (0.0, hi) if est > 0 else (lo, 0.0)
    if not rejected and excludes_zero(lo, hi):
        tiny = math.ulp(0.0)
        return (min(lo, -tiny), hi) if lo >= 0 else (lo, max(hi, tiny))
    return lo, hi


__all__ = ["DECISION_INTERVAL_METHODS", "DIFFERENCE_VERDICTS", "VERDICTS", "excludes_zero", "family_intervals", "verdict"]
