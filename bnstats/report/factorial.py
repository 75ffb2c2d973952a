"""Beyond one contrast at a time: the factorial analysis and the seed-variance comparison, as tidy frames
for ``bnstats compare --model mixed`` and the report's notebook.

- :func:`interaction_table`: does an arm's difference from the baseline change with the level of another
  grid factor (placement × activation)? A linear mixed model per cell of the remaining factors,
  ``metric ~ factor * other`` with a random intercept per seed (:func:`bnstats.stats.mixed`); one row
  per interaction coefficient.
- :func:`seed_variance_table`: does an arm change how much the metric varies over seeds? The
  Pitman–Morgan paired test of the variance ratio (:func:`bnstats.stats.variance_ratio`); one row per
  cell and arm.

Both only call :mod:`bnstats.stats` and arrange its results; every number is in the metric's units
(the report and the CLI scale them for reading). Deterministic: no random draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..stats._results import join_caveats

INTERACTION_COLUMNS = (
    "factor", "arm", "baseline", "other", "level", "reference", "estimate", "ci_low", "ci_high", "p", "p_adj",
    "confidence_level", "n_obs", "n_seeds", "n_dropped", "converged", "method", "warnings")
VARIANCE_COLUMNS = (
    "arm", "baseline", "n", "n_omitted", "sd_baseline", "sd_arm", "ratio", "ci_low", "ci_high", "r", "t", "df",
    "p", "p_adj", "confidence_level", "method", "caveats")


def other_factors(runs: pd.DataFrame, factors: Sequence[str], factor: str) -> list[str]:
    """The grid factors besides ``factor`` that have at least two levels in ``runs`` (the ones an
    interaction with ``factor`` can be estimated for)."""
    return [f for f in factors if f != factor and f in runs and runs[f].nunique(dropna=True) >= 2]


def interaction_table(runs: pd.DataFrame, *, metric: str = "test_acc", factor: str = "placement",
                      baseline: Any = "before", factors: Sequence[str] | None = None,
                      others: Sequence[str] | None = None, references: dict[str, Any] | None = None,
                      levels: dict[str, Sequence[Any]] | None = None, confidence_level: float = 0.95,
                      p_adjust: str = "holm") -> pd.DataFrame:
    """Interaction of ``factor`` with each other grid factor, from a mixed model per cell.

    For each other factor G (``others``; default :func:`other_factors`) and each cell of the remaining
    factors, fits ``metric ~ C(factor, Treatment(baseline)) * C(G, Treatment(reference))`` with a random
    intercept per seed (:func:`bnstats.stats.mixed`, REML) and returns its interaction coefficients.

    Parameters
    ----------
    runs : pandas.DataFrame
        One row per run (``store.load(DIR).runs``), with ``seed``, ``metric`` and the factor columns.
    metric, factor, baseline : str
        As in :func:`bnstats.stats.compare`.
    factors : sequence of str, optional
        The grid factors (default ``runs.attrs["factors"]``).
    others : sequence of str, optional
        The factors to cross with ``factor``.
    references : dict, optional
        The reference level of each other factor (default: the first of ``levels[G]``, else the first
        sorted level).
    levels : dict, optional
        Level order per factor (the sweep's grid order), for the rows' order and the default references.
    confidence_level : float
        Of the Wald intervals.
    p_adjust : {"holm", "bh", "bonferroni"}
        Adjustment of ``p`` over every row of the table (``p_adj``).

    Returns
    -------
    pandas.DataFrame
        One row per cell × other factor × arm × level (level ≠ reference): the cell columns (the remaining
        factors; empty in the rows where that factor is the one crossed), ``factor``, ``arm``, ``baseline``, ``other``, ``level``,
        ``reference``, ``estimate`` (the arm − baseline difference at ``level`` minus the same difference
        at ``reference``, in the metric's units), ``ci_low``, ``ci_high``, ``p`` (Wald), ``p_adj``,
        ``confidence_level``, ``n_obs`` (runs in the model), ``n_seeds`` (random-intercept groups),
        ``n_dropped`` (runs with a non-finite metric, e.g. diverged, left out), ``converged``, ``method``
        (``"REML"``), ``warnings`` (what statsmodels said during the fit, ``; ``-joined).

    Notes
    -----
    With treatment coding the interaction coefficient ``(arm, level)`` is the difference-in-differences
    ``(μ[arm, level] − μ[baseline, level]) − (μ[arm, ref] − μ[baseline, ref])``. The random intercept per
    seed carries the pairing (all arms and levels of a seed share its initial weights and data order);
    the Wald intervals are anti-conservative with few seeds (Pinheiro & Bates 2000, §2.4), so the paired
    t of :func:`bnstats.stats.compare` stays the primary analysis of each single contrast. A cell where
    the fit fails gets NaN numbers and the error in ``warnings``.

    References
    ----------
    Laird, N. M., Ware, J. H. (1982). Random-effects models for longitudinal data. *Biometrics* 38(4), 963–974.
    Pinheiro, J. C., Bates, D. M. (2000). *Mixed-Effects Models in S and S-PLUS*. Springer.
    """
    from .. import stats
    from ..stats._frames import cells

    factors = list(factors if factors is not None else runs.attrs.get("factors", []))
    for col in ("seed", metric, factor):
        if col not in runs:
            raise ValueError(f"interaction_table: column {col!r} is not in the runs table; columns: {list(runs.columns)}")
    levels = dict(levels or {})
    others = list(others) if others is not None else other_factors(runs, factors, factor)
    for g in others:
        if g not in factors or g == factor:
            raise ValueError(f"--interaction: {g!r} is not another grid factor; choose from "
                             f"{[f for f in factors if f != factor]}")
    rows: list[dict[str, Any]] = []
    for g in others:
        order = _order(runs[g], levels.get(g))
        ref = (references or {}).get(g, order[0])
        if str(ref) not in map(str, order):
            raise ValueError(f"reference of {g}: {ref!r} is not a level; levels: {order}")
        rest = [f for f in factors if f not in (factor, g)]
        for cell, sub in cells(runs, rest):
            rows.extend(_interaction_rows(sub, cell, metric, factor, baseline, g, ref,
                                          _order(runs[factor], levels.get(factor)), order, confidence_level, stats))
    out = pd.DataFrame(rows)
    cell_cols = [c for c in factors if c in out and c not in (factor,)]
    if out.empty:
        return pd.DataFrame(columns=[*cell_cols, *INTERACTION_COLUMNS])
    out["p_adj"] = _adjust(out["p"].to_numpy(float), p_adjust)
    for c in cell_cols:  # a cell column is empty in the rows where that factor is the one crossed (``other``)
        out[c] = out[c].astype(object).where(out[c].notna(), "")
    return out[[*cell_cols, *INTERACTION_COLUMNS]]


def _interaction_rows(sub, cell, metric, factor, baseline, other, ref, factor_levels, other_levels,
                      confidence_level, stats) -> list[dict[str, Any]]:
    finite = np.isfinite(sub[metric].to_numpy(float))
    # short aliases: the formula does not depend on what the columns are called
    data = pd.DataFrame({"y": sub[metric].to_numpy(float), "a": sub[factor].astype(str).to_numpy(),
                         "b": sub[other].astype(str).to_numpy(), "seed": sub["seed"].to_numpy()})[finite]
    a_ref, b_ref = repr(str(baseline)), repr(str(ref))
    formula = f"y ~ C(a, Treatment({a_ref})) * C(b, Treatment({b_ref}))"
    arms = [str(x) for x in factor_levels if str(x) != str(baseline) and (data["a"] == str(x)).any()]
    lvls = [str(x) for x in other_levels if str(x) != str(ref) and (data["b"] == str(x)).any()]
    base = {**cell, "factor": factor, "baseline": baseline, "other": other, "reference": ref,
            "confidence_level": confidence_level, "n_obs": int(len(data)), "n_seeds": int(data["seed"].nunique()),
            "n_dropped": int((~finite).sum()), "method": "REML"}
    try:
        fit = stats.mixed(data, formula, groups="seed", confidence_level=confidence_level)
        coef = fit.coef.set_index("term")
        converged, warn = fit.converged, "; ".join(fit.warnings)
    except (ValueError, np.linalg.LinAlgError) as e:  # a cell statsmodels cannot fit: shown, not hidden
        coef, converged, warn = None, False, f"{type(e).__name__}: {e}"
    rows = []
    for arm in arms:
        for lvl in lvls:
            term = f"C(a, Treatment({a_ref}))[T.{arm}]:C(b, Treatment({b_ref}))[T.{lvl}]"
            c = coef.loc[term] if coef is not None and term in coef.index else None
            rows.append({**base, "arm": arm, "level": lvl,
                         "estimate": float(c["estimate"]) if c is not None else float("nan"),
                         "ci_low": float(c["ci_low"]) if c is not None else float("nan"),
                         "ci_high": float(c["ci_high"]) if c is not None else float("nan"),
                         "p": float(c["p"]) if c is not None else float("nan"),
                         "converged": bool(converged), "warnings": warn})
    return rows


def seed_variance_table(runs: pd.DataFrame, *, metric: str = "test_acc", factor: str = "placement",
                        baseline: Any = "before", by: Sequence[str] | None = None,
                        arms: Sequence[Any] | None = None, confidence_level: float = 0.95,
                        p_adjust: str = "holm") -> pd.DataFrame:
    """Does an arm change the spread of the metric over seeds? Pitman–Morgan, per cell and arm.

    Parameters
    ----------
    runs : pandas.DataFrame
        One row per run.
    metric, factor, baseline : str
        As in :func:`bnstats.stats.compare`.
    by : sequence of str, optional
        The cell columns (default: every grid factor but ``factor``).
    arms : sequence, optional
        The arms, in display order (default: the levels of ``factor`` but the baseline, sorted).
    confidence_level : float
    p_adjust : {"holm", "bh", "bonferroni"}
        Adjustment over the table's rows (``p_adj``).

    Returns
    -------
    pandas.DataFrame
        One row per cell × arm: the cell columns, ``arm``, ``baseline``, ``n`` (seed pairs used),
        ``n_omitted`` (pairs with a non-finite metric), ``sd_baseline``, ``sd_arm`` (SD over seeds,
        ddof = 1, metric units), ``ratio`` (var(arm) / var(baseline)) with ``ci_low``, ``ci_high``, ``r``
        (corr(arm − baseline, arm + baseline)), ``t``, ``df``, ``p``, ``p_adj``, ``confidence_level``,
        ``method``, ``caveats`` (one per line, as in :mod:`bnstats.stats` frames: read them with
        :func:`bnstats.stats.caveat_list`; a cell where the test is undefined, e.g. fewer than 3 pairs or
        a constant arm, gets NaN numbers and the reason here).

    Notes
    -----
    Seeds are paired as :func:`bnstats.stats.compare` pairs them (a seed missing from either arm is left
    out); the ratio and its interval are Pitman's (:func:`bnstats.stats.variance_ratio`).

    References
    ----------
    Pitman, E. J. G. (1939). A note on normal correlation. *Biometrika* 31(1/2), 9–12.
    Morgan, W. A. (1939). A test for the significance of the difference between the two variances in a
    sample from a normal bivariate population. *Biometrika* 31(1/2), 13–19.
    """
    from .. import stats
    from ..stats._frames import cells, pair_up

    factors = list(runs.attrs.get("factors", []))
    by = list(by) if by is not None else [f for f in factors if f != factor]
    all_arms = [a for a in _order(runs[factor], None) if str(a) != str(baseline)]
    arms = list(arms) if arms is not None else all_arms
    rows = []
    for cell, sub in cells(runs, by):
        for arm in arms:
            if not (sub[factor] == arm).any():
                continue
            b0, b1, _ = pair_up(sub, factor, baseline, arm, "seed", drop_unpaired=True, where="seed_variance_table")
            x0, x1 = b0[metric].to_numpy(float), b1[metric].to_numpy(float)
            row = {**cell, "arm": arm, "baseline": baseline, "confidence_level": confidence_level,
                   "method": "Pitman-Morgan"}
            try:
                res = stats.variance_ratio(x0, x1, confidence_level=confidence_level, nan_policy="omit")
                row.update(n=res.n, n_omitted=res.n_omitted, sd_baseline=float(np.sqrt(res.var_a)),
                           sd_arm=float(np.sqrt(res.var_b)), ratio=res.ratio, ci_low=res.ci_low, ci_high=res.ci_high,
                           r=res.r, t=res.t, df=res.df, p=res.p, caveats=join_caveats(res.caveats))
            except ValueError as e:  # too few pairs, a constant arm: stated in the row
                ok = np.isfinite(x0) & np.isfinite(x1)
                row.update(n=int(ok.sum()), n_omitted=int((~ok).sum()), sd_baseline=_sd(x0[ok]), sd_arm=_sd(x1[ok]),
                           ratio=float("nan"), ci_low=float("nan"), ci_high=float("nan"), r=float("nan"),
                           t=float("nan"), df=float("nan"), p=float("nan"), caveats=join_caveats([str(e)]))
            rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return pd.DataFrame(columns=[*by, *VARIANCE_COLUMNS])
    out["p_adj"] = _adjust(out["p"].to_numpy(float), p_adjust)
    return out[[*by, *VARIANCE_COLUMNS]]


def _sd(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if x.size > 1 else float("nan")


def _order(series: pd.Series, given: Sequence[Any] | None) -> list[Any]:
    """Levels present in ``series``, in the grid's order where given, else sorted."""
    present = list(pd.unique(series.dropna()))
    if given:
        known = [x for x in given if any(str(x) == str(p) for p in present)]
        return known + sorted((p for p in present if all(str(p) != str(k) for k in known)), key=str)
    return sorted(present, key=str)


def _adjust(p: np.ndarray, method: str) -> np.ndarray:
    """``stats.adjust`` over the finite p-values; NaN where a row has none."""
    from .. import stats

    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = stats.adjust(p[ok], method=method)
    return out
