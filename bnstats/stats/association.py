"""Moment–outcome association across seeds: :func:`association`, :func:`paired_association`."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps

from . import _validate as v
from ._frames import cells, describe_cell, levels, pair_up, resolve_by
from ._results import capture, join_caveats
from .multiplicity import adjust

MOMENT_COLUMNS = ("mean", "var", "skew", "exkurt", "frac_zero")
CORR_METHODS = ("pearson", "spearman")


def _final_moments(moments, moment, site, source, epoch):
    v.frame("moments", moments, ["run_id", "epoch", "step", "source", "layer", "site", moment])
    v.choice("moment", moment, MOMENT_COLUMNS)
    m = moments[moments["source"] == source]
    if m.empty:
        raise ValueError(f"moments has no rows with source={source!r}; sources present: {sorted(moments['source'].unique())}")
    if site is not None:
        sites = [site] if isinstance(site, str) else list(site)
        known = sorted(m["site"].unique())
        unknown = [s for s in sites if s not in known]
        if unknown:
            raise ValueError(f"site {unknown} not found in moments (source={source!r}); sites present: {known}")
        m = m[m["site"].isin(sites)]
    if epoch == "last":
        last = m.groupby("run_id")["epoch"].transform("max")
        m = m[m["epoch"] == last]
    else:
        e = v.integer("epoch", epoch, minimum=0)
        m = m[m["epoch"] == e]
        if m.empty:
            raise ValueError(f"no moments rows at epoch={e}")
    laststep = m.groupby("run_id")["step"].transform("max")
    m = m[m["step"] == laststep]
    dup = m.duplicated(["run_id", "layer", "site"])
    if dup.any():
        raise ValueError(f"moments has several rows per (run_id, layer, site) at the chosen epoch/step, e.g. run_id "
                         f"{m.loc[dup, 'run_id'].iloc[:5].tolist()}; aggregate channels first")
    return m[["run_id", "layer", "site", moment]]


def correlation(x, y, *, method="pearson", confidence_level=0.95, alternative="two-sided"):
    """Correlation with a Fisher-z interval; returns ``(r, ci_low, ci_high, p, caveats)``.

    Pearson: :func:`scipy.stats.pearsonr` (t-test p, Fisher-z interval ``tanh(atanh r ± z/√(n−3))``,
    as R's ``cor.test``). Spearman: :func:`scipy.stats.spearmanr` (t-approximation p, as R's
    ``cor.test(method="spearman", exact=FALSE)``), interval ``tanh(atanh ρ ± z √((1 + ρ²/2)/(n−3)))``
    (Bonett & Wright 2000). NaN with a caveat when n < 3 or an input is constant; NaN interval when n < 4.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    n = x.size
    caveats: list[str] = []
    nan = float("nan")
    if n < 3:
        return nan, nan, nan, nan, [f"n={n} < 3 seeds: correlation not computed"]
    if np.all(x == x[0]) or np.all(y == y[0]):
        return nan, nan, nan, nan, ["constant input across seeds: correlation undefined"]
    a = 1 - confidence_level
    if method == "pearson":
        res = capture(lambda: sps.pearsonr(x, y, alternative=alternative), caveats, "pearsonr")
        r, p = float(res.statistic), float(res.pvalue)
        if n < 4:
            return r, nan, nan, p, caveats + ["n=3: Fisher-z interval undefined"]
        ci = capture(lambda: res.confidence_interval(confidence_level), caveats, "pearsonr CI")
        return r, float(ci.low), float(ci.high), p, caveats
    res = capture(lambda: sps.spearmanr(x, y, alternative=alternative), caveats, "spearmanr")
    r, p = float(res.statistic), float(res.pvalue)
    if n < 4 or abs(r) >= 1:
        return r, nan, nan, p, caveats + ["Fisher-z interval undefined (n < 4 or |rho| = 1)"]
    se = math.sqrt((1 + r * r / 2) / (n - 3))
    z = math.atanh(r)
    if alternative == "two-sided":
        q = sps.norm.ppf(1 - a / 2)
        lo, hi = math.tanh(z - q * se), math.tanh(z + q * se)
    elif alternative == "greater":
        lo, hi = math.tanh(z - sps.norm.ppf(1 - a) * se), 1.0
    else:
        lo, hi = -1.0, math.tanh(z + sps.norm.ppf(1 - a) * se)
    return r, lo, hi, p, caveats


def _finish(rows, p_adjust):
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["p_adj"] = adjust(out["p"].to_numpy(dtype=float), method=p_adjust)
    out["p_adjust_method"] = p_adjust
    return out


def _check_common(method, confidence_level, alternative, p_adjust, nan_policy):
    v.choice("method", method, CORR_METHODS)
    v.probability("confidence_level", confidence_level)
    v.choice("alternative", alternative, v.ALTERNATIVES)
    v.choice("p_adjust", p_adjust, v.P_ADJUST_METHODS)
    v.choice("nan_policy", nan_policy, v.NAN_POLICIES)


def _xy(x, y, nan_policy, where):
    bad = np.isnan(x) | np.isnan(y)
    if bad.any():
        if nan_policy == "raise":
            raise ValueError(f"{where}: NaN in {int(bad.sum())} seed(s); pass nan_policy='omit' to drop them")
        return x[~bad], y[~bad], [f"{int(bad.sum())} seed(s) with NaN omitted"]
    return x, y, []


def association(moments, runs, moment="skew", site="norm_in", metric="test_acc", factor="placement", *,
                by=None, factors=None, source="probe", epoch="last", method="pearson", confidence_level=0.95,
                alternative="two-sided", p_adjust="bh", nan_policy="raise") -> pd.DataFrame:
    """Correlation across seeds between a layer's moment and the run's metric, per cell × arm × layer × site.

    Parameters
    ----------
    moments : pandas.DataFrame
        Tidy moments: ``run_id``, ``epoch``, ``step``, ``source`` ("train" | "probe"), ``layer`` (int),
        ``site`` (str) and the statistic columns ``mean``, ``var``, ``skew``, ``exkurt``, ``frac_zero``
        (one row per run × epoch × step × source × layer × site).
    runs : pandas.DataFrame
        As in :func:`compare`; joined on ``run_id``.
    moment : {"mean", "var", "skew", "exkurt", "frac_zero"}
    site : str, list of str or None
        Site(s) to analyse; ``None``: all.
    metric, factor, by, factors
        As in :func:`compare`; each arm (level of ``factor``) is analysed separately.
    source : str
        ``"probe"`` (default) or ``"train"``.
    epoch : "last" or int
        ``"last"``: each run's final epoch; within it the last step.
    method : {"pearson", "spearman"}
    confidence_level, alternative
    p_adjust : {"bh", "holm", "bonferroni"}
        Over all rows returned (default Benjamini–Hochberg).
    nan_policy : {"raise", "omit"}

    Returns
    -------
    pandas.DataFrame
        Columns: the ``by`` columns, ``factor``, ``arm``, ``layer``, ``site``, ``moment``, ``metric``,
        ``source``, ``n``, ``r``, ``ci_low``, ``ci_high``, ``p``, ``method``, ``confidence_level``,
        ``alternative``, ``caveats`` (one per line: :func:`bnstats.stats.caveat_list`), ``p_adj``,
        ``p_adjust_method``.

    Notes
    -----
    Pearson r with the Fisher-z interval ``tanh(atanh(r) ± z_{1−α/2}/√(n−3))`` and the t-test p on n − 2
    df (:func:`scipy.stats.pearsonr`, equal to R's ``cor.test``); see :func:`correlation` for Spearman.
    A correlation across seeds is descriptive: it does not make the moment a cause of the outcome.

    References
    ----------
    Fisher, R. A. (1921). On the "probable error" of a coefficient of correlation. *Metron* 1, 3–32.
    Bonett, D. G., Wright, T. A. (2000). Sample size requirements for estimating Pearson, Kendall and
    Spearman correlations. *Psychometrika* 65(1), 23–28.
    Benjamini, Y., Hochberg, Y. (1995). *JRSS B* 57(1), 289–300.
    """
    _check_common(method, confidence_level, alternative, p_adjust, nan_policy)
    v.frame("runs", runs, ["run_id", factor, metric])
    mom = _final_moments(moments, moment, site, source, epoch)
    by = resolve_by(runs, by, factor, factors, [metric])
    rows = []
    for cell, sub in cells(runs, by):
        for arm in levels(sub[factor]):
            r_arm = sub[sub[factor] == arm][["run_id", metric]]
            j = mom.merge(r_arm, on="run_id", how="inner")
            for (layer, st), g in j.groupby(["layer", "site"], sort=True):
                where = f"cell {describe_cell(cell)}, {factor}={arm!r}, layer {layer}, site {st!r}"
                x, y, cav = _xy(g[moment].to_numpy(float), g[metric].to_numpy(float), nan_policy, where)
                r, lo, hi, p, c2 = correlation(x, y, method=method, confidence_level=confidence_level, alternative=alternative)
                rows.append({**cell, "factor": factor, "arm": arm, "layer": layer, "site": st, "moment": moment,
                             "metric": metric, "source": source, "n": int(x.size), "r": r, "ci_low": lo, "ci_high": hi,
                             "p": p, "method": method, "confidence_level": float(confidence_level),
                             "alternative": alternative, "caveats": join_caveats(cav + c2)})
    return _finish(rows, p_adjust)


def paired_association(moments, runs, moment="skew", site="norm_in", metric="test_acc", factor="placement",
                       baseline="before", *, by=None, factors=None, pair_on="seed", source="probe", epoch="last",
                       method="pearson", confidence_level=0.95, alternative="two-sided", p_adjust="bh",
                       drop_unpaired=False, nan_policy="raise") -> pd.DataFrame:
    """Does the between-arm difference in a moment track the between-arm difference in the metric?

    Per cell × arm (vs ``baseline``) × layer × site: the correlation across seeds between
    ``Δmoment = moment(arm) − moment(baseline)`` and ``Δmetric = metric(arm) − metric(baseline)``,
    paired on ``pair_on``.

    Parameters
    ----------
    moments, runs, moment, site, metric, factor, by, factors, source, epoch, method, confidence_level,
    alternative, p_adjust, nan_policy
        As in :func:`association`.
    baseline : str
        Reference arm.
    pair_on, drop_unpaired
        As in :func:`compare`: unpaired or duplicated seeds raise ``ValueError`` naming them unless
        ``drop_unpaired=True`` (then counted in ``n_dropped``).

    Returns
    -------
    pandas.DataFrame
        Columns: the ``by`` columns, ``factor``, ``arm``, ``baseline``, ``layer``, ``site``, ``moment``,
        ``metric``, ``source``, ``n``, ``n_dropped``, ``r``, ``ci_low``, ``ci_high``, ``p``, ``method``,
        ``confidence_level``, ``alternative``, ``caveats`` (one per line: :func:`bnstats.stats.caveat_list`),
        ``p_adj``, ``p_adjust_method``.
        A (layer, site) that either arm does not record (e.g. ``norm_in`` under ``placement="none"``)
        gives no row.

    Notes
    -----
    As :func:`association`, on the paired differences.

    References
    ----------
    Fisher, R. A. (1921). *Metron* 1, 3–32. Benjamini, Y., Hochberg, Y. (1995). *JRSS B* 57(1), 289–300.
    """
    _check_common(method, confidence_level, alternative, p_adjust, nan_policy)
    v.frame("runs", runs, ["run_id", pair_on, factor, metric])
    v.level("baseline", baseline, runs[factor].dropna().unique(), factor)
    mom = _final_moments(moments, moment, site, source, epoch)
    wide = mom.pivot(index="run_id", columns=["layer", "site"], values=moment)
    by = resolve_by(runs, by, factor, factors, [metric])
    rows = []
    for cell, sub in cells(runs, by):
        for arm in [lv for lv in levels(sub[factor]) if lv != baseline]:
            ctx = f"cell {describe_cell(cell)}, {factor}={arm!r} vs {baseline!r}"
            r0, r1, n_dropped = pair_up(sub, factor, baseline, arm, pair_on, drop_unpaired=drop_unpaired, where=ctx)
            w0 = wide.reindex(r0["run_id"].to_numpy())
            w1 = wide.reindex(r1["run_id"].to_numpy())
            dmetric = r1[metric].to_numpy(float) - r0[metric].to_numpy(float)
            for key in wide.columns:
                m0, m1 = w0[key].to_numpy(float), w1[key].to_numpy(float)
                if np.isnan(m0).all() or np.isnan(m1).all():
                    continue
                layer, st = key
                where = f"{ctx}, layer {layer}, site {st!r}"
                x, y, cav = _xy(m1 - m0, dmetric, nan_policy, where)
                r, lo, hi, p, c2 = correlation(x, y, method=method, confidence_level=confidence_level, alternative=alternative)
                if n_dropped:
                    cav = [f"{n_dropped} unpaired {pair_on}(s) dropped"] + cav
                rows.append({**cell, "factor": factor, "arm": arm, "baseline": baseline, "layer": layer, "site": st,
                             "moment": moment, "metric": metric, "source": source, "n": int(x.size),
                             "n_dropped": n_dropped, "r": r, "ci_low": lo, "ci_high": hi, "p": p, "method": method,
                             "confidence_level": float(confidence_level), "alternative": alternative,
                             "caveats": join_caveats(cav + c2)})
    out = _finish(rows, p_adjust)
    if not out.empty:
        out = out.sort_values([*by, "arm", "layer", "site"], kind="stable").reset_index(drop=True)
    return out
