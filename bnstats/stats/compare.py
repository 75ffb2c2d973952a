"""Frame-level comparisons over a sweep: :func:`compare`, :func:`describe`, :func:`plan`."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import _validate as v
from ._frames import cells, describe_cell, infer_higher_is_better, levels, pair_up, resolve_by
from ._results import join_caveats, make_rng
from .multiplicity import adjust
from .paired import paired
from .power import halfwidth_at, min_p, seeds_for_halfwidth, seeds_needed


def _check_runs(runs, metric, factor, pair_on):
    v.frame("runs", runs, ["run_id", pair_on, factor, metric] if "run_id" in getattr(runs, "columns", []) else [pair_on, factor, metric])
    if not pd.api.types.is_numeric_dtype(runs[metric]) or pd.api.types.is_bool_dtype(runs[metric]):
        raise TypeError(f"metric column {metric!r} must be numeric; got dtype {runs[metric].dtype}")


def _arm_pairs(runs, metric, factor, baseline, by, pair_on, drop_unpaired, diverged, nan_policy):
    """Yield one dict per (cell, arm) with aligned arrays and bookkeeping counts."""
    v.level("baseline", baseline, runs[factor].dropna().unique(), factor)
    for cell, sub in cells(runs, by):
        where = describe_cell(cell)
        arms = [lv for lv in levels(sub[factor]) if lv != baseline]
        if not (sub[factor] == baseline).any():
            raise ValueError(f"cell {where}: baseline {factor}={baseline!r} has no runs; arms present: {arms}")
        for arm in arms:
            ctx = f"cell {where}, {factor}={arm!r} vs {baseline!r}"
            r0, r1, n_dropped = pair_up(sub, factor, baseline, arm, pair_on, drop_unpaired=drop_unpaired, where=ctx)
            caveats = []
            if n_dropped:
                caveats.append(f"{n_dropped} unpaired or duplicated {pair_on}(s) dropped (drop_unpaired=True)")
            n_div = 0
            if "diverged" in runs.columns:
                div = r0["diverged"].fillna(False).astype(bool).to_numpy() | r1["diverged"].fillna(False).astype(bool).to_numpy()
                n_div = int(div.sum())
                if n_div and diverged == "drop_pair":
                    caveats.append(f"{n_div} pair(s) with a diverged run dropped (diverged='drop_pair')")
                    r0, r1 = r0[~div].reset_index(drop=True), r1[~div].reset_index(drop=True)
                elif n_div:
                    caveats.append(f"{n_div} pair(s) include a diverged run; their {metric} is kept as recorded (diverged='keep')")
            x0 = r0[metric].to_numpy(dtype=float)
            x1 = r1[metric].to_numpy(dtype=float)
            nan = np.isnan(x0) | np.isnan(x1)
            if nan.any() and nan_policy == "raise":
                seeds = r0.loc[nan, pair_on].tolist()
                extra = ""
                if "diverged" in runs.columns:
                    extra = " (diverged runs among them)" if (r0.loc[nan, "diverged"].astype(bool) | r1.loc[nan, "diverged"].astype(bool)).any() else ""
                raise ValueError(
                    f"{ctx}: {metric} is NaN for {pair_on} {seeds}{extra}; pass nan_policy='omit' to drop those pairs"
                    + (" or diverged='drop_pair'" if extra else "")
                )
            if x0.size - int(nan.sum()) < 2:
                raise ValueError(f"{ctx}: fewer than 2 complete pairs (got {x0.size - int(nan.sum())}); cannot compare")
            yield dict(cell=cell, arm=arm, a=x0, b=x1, n_dropped=n_dropped, n_diverged=n_div, caveats=caveats,
                       seeds=r0[pair_on].to_numpy())


def compare(
    runs,
    metric="test_acc",
    factor="placement",
    baseline="before",
    *,
    by=None,
    factors=None,
    pair_on="seed",
    p_adjust="holm",
    confidence_level=0.95,
    alternative="two-sided",
    margin=None,
    n_resamples=9999,
    rng=None,
    higher_is_better=None,
    wilcoxon_method="auto",
    zero_method="wilcox",
    wilcoxon_correction=False,
    drop_unpaired=False,
    diverged="keep",
    nan_policy="raise",
) -> pd.DataFrame:
    """Paired comparison of every arm of ``factor`` against ``baseline``, in every cell, on seed.

    Parameters
    ----------
    runs : pandas.DataFrame
        One row per run: ``run_id``, ``seed``, the grid factor columns, the metric columns and
        optionally ``diverged`` (bool).
    metric : str
        Metric column (e.g. ``"test_acc"``, a fraction in [0, 1]).
    factor : str
        Column whose levels are the arms.
    baseline : str
        Level of ``factor`` every other arm is compared with; differences are ``arm - baseline``.
    by : str, list of str or None
        Columns defining a cell. Default: every grid factor except ``factor``, where the factors are
        ``factors=`` if given, else ``runs.attrs["factors"]`` (set by the store), else inferred as the
        object/string/category columns other than ``run_id``, ``seed``, metric and bookkeeping columns
        (``bnstats.stats._frames.BOOKKEEPING``; bool and numeric columns are never inferred).
    factors : list of str or None
        The sweep's grid factors (see ``by``).
    pair_on : str
        Pairing key (default ``"seed"``). Missing or duplicated keys raise ``ValueError`` naming them.
    p_adjust : {"holm", "bh", "bonferroni"}
        Adjustment of ``p_t`` over the whole family of returned rows (:func:`adjust`).
    confidence_level, alternative, margin, n_resamples, wilcoxon_method, zero_method, wilcoxon_correction
        As in :func:`paired`.
    rng : None, int or numpy.random.Generator
        ``np.random.default_rng(rng)`` (``None``: the fixed ``DEFAULT_SEED``); one independent child
        generator is spawned per row, in row order, so results are reproducible and independent of the
        global RNG.
    higher_is_better : bool or None
        ``None``: False when ``metric`` contains "loss" or "error", else True.
    drop_unpaired : bool
        The only way to proceed past unpaired seeds: drop them; ``n_dropped`` counts them.
    diverged : {"keep", "drop_pair"}
        Policy for runs with ``diverged=True``. ``"keep"`` (default): their metric is used as recorded
        (a diverged run's accuracy is a real outcome of that arm), ``n_diverged`` counts the pairs
        touched and a caveat says so; a NaN metric still needs ``nan_policy="omit"``. ``"drop_pair"``:
        drop the seeds where either arm diverged (counted in ``n_diverged``, with a caveat).
    nan_policy : {"raise", "omit"}
        NaN metric: ``ValueError`` naming cell, arm and seeds, or drop the pair.

    Returns
    -------
    pandas.DataFrame
        One row per cell × arm (arm != baseline). Columns, in order: the ``by`` columns, ``factor``,
        ``metric``, ``arm``, ``baseline``, every field of :class:`PairedResult` (``caveats`` as one
        "; "-joined string, including the cell-level caveats), ``n_dropped``, ``n_diverged``,
        ``p_adj``, ``p_adjust_method``.

    Notes
    -----
    Each row is :func:`paired` on the seed-aligned metric (``a`` = baseline, ``b`` = arm). ``p_adj`` is
    the ``p_adjust`` adjustment of ``p_t`` over all rows returned.

    References
    ----------
    Holm, S. (1979). *Scand. J. Stat.* 6, 65–70. See :func:`paired` for the tests.
    """
    v.choice("p_adjust", p_adjust, v.P_ADJUST_METHODS)
    v.choice("diverged", diverged, v.DIVERGED_POLICIES)
    v.choice("nan_policy", nan_policy, v.NAN_POLICIES)
    v.boolean("drop_unpaired", drop_unpaired)
    _check_runs(runs, metric, factor, pair_on)
    hib = infer_higher_is_better(metric, higher_is_better)
    by = resolve_by(runs, by, factor, factors, [metric])
    items = list(_arm_pairs(runs, metric, factor, baseline, by, pair_on, drop_unpaired, diverged, nan_policy))
    children = make_rng(rng).spawn(len(items))
    rows = []
    for it, child in zip(items, children, strict=True):
        res = paired(
            it["a"], it["b"], confidence_level=confidence_level, alternative=alternative, margin=margin,
            n_resamples=n_resamples, rng=child, higher_is_better=hib, wilcoxon_method=wilcoxon_method,
            zero_method=zero_method, wilcoxon_correction=wilcoxon_correction, nan_policy=nan_policy,
        )
        d = res.to_dict()
        d["caveats"] = join_caveats(tuple(it["caveats"]) + res.caveats)
        rows.append({**it["cell"], "factor": factor, "metric": metric, "arm": it["arm"], "baseline": baseline, **d,
                     "n_dropped": it["n_dropped"], "n_diverged": it["n_diverged"]})
    out = pd.DataFrame(rows)
    out["p_adj"] = adjust(out["p_t"].to_numpy(), method=p_adjust)
    out["p_adjust_method"] = p_adjust
    return out


def describe(runs, metric="test_acc", factor="placement", *, by=None, factors=None) -> pd.DataFrame:
    """Per cell × arm summary of ``metric`` for tables.

    Parameters
    ----------
    runs : pandas.DataFrame
        As in :func:`compare`.
    metric, factor, by, factors
        As in :func:`compare`.

    Returns
    -------
    pandas.DataFrame
        Columns: the ``by`` columns, ``factor``, ``metric``, ``arm``, ``n`` (non-NaN values), ``n_nan``,
        ``n_diverged``, ``mean``, ``sd`` (ddof=1; NaN when n < 2), ``min``, ``max``. Nothing is rounded.
    """
    v.frame("runs", runs, [factor, metric])
    by = resolve_by(runs, by, factor, factors, [metric])
    rows = []
    for cell, sub in cells(runs, by):
        for arm in levels(sub[factor]):
            x = sub.loc[sub[factor] == arm, metric].to_numpy(dtype=float)
            ok = x[~np.isnan(x)]
            n_div = int(sub.loc[sub[factor] == arm, "diverged"].fillna(False).astype(bool).sum()) if "diverged" in sub else 0
            rows.append({
                **cell, "factor": factor, "metric": metric, "arm": arm, "n": int(ok.size), "n_nan": int(x.size - ok.size),
                "n_diverged": n_div,
                "mean": float(ok.mean()) if ok.size else np.nan,
                "sd": float(ok.std(ddof=1)) if ok.size > 1 else np.nan,
                "min": float(ok.min()) if ok.size else np.nan,
                "max": float(ok.max()) if ok.size else np.nan,
            })
    return pd.DataFrame(rows)


def plan(
    runs,
    metric="test_acc",
    factor="placement",
    baseline="before",
    *,
    effect=None,
    halfwidth=None,
    power=0.8,
    alpha=0.05,
    alternative="two-sided",
    by=None,
    factors=None,
    pair_on="seed",
    drop_unpaired=False,
    nan_policy="raise",
) -> pd.DataFrame:
    """Seeds needed per comparison (cell × arm), from a pilot sweep.

    Parameters
    ----------
    runs : pandas.DataFrame
        Pilot runs, as in :func:`compare`.
    effect : float or None
        Mean difference to detect, in the metric's units (e.g. 0.002 accuracy), for
        :func:`seeds_needed` at ``power`` and ``alpha``.
    halfwidth : float or None
        Target half-width of the two-sided ``1 - alpha`` paired t interval, in the metric's units.
        At least one of ``effect`` and ``halfwidth`` is required.
    power, alpha, alternative
        As in :func:`seeds_needed`.
    by, factors, pair_on, drop_unpaired, nan_policy
        As in :func:`compare`.

    Returns
    -------
    pandas.DataFrame
        Columns: the ``by`` columns, ``factor``, ``metric``, ``arm``, ``baseline``, ``n_pilot``,
        ``estimate``, ``sd_diff``, ``d_z``, ``alpha``, ``alternative``, ``power``, ``effect``,
        ``seeds_for_power``, ``halfwidth``, ``halfwidth_pilot`` (half-width at the pilot n and sd),
        ``seeds_for_halfwidth``, ``n_planned`` (the larger of the requested seed counts),
        ``min_p_signflip_pilot``, ``min_p_wilcoxon_pilot``, ``min_p_signflip_planned``,
        ``min_p_wilcoxon_planned`` (exact tests, no ties), ``n_dropped``, ``caveats``.
        Seed counts are pandas ``Int64`` (``<NA>`` when not requested or when sd_diff = 0).

    Notes
    -----
    Power: :func:`seeds_needed` with ``sd_diff`` from the pilot (R's ``power.t.test(type="paired")``).
    Half-width: smallest n with ``t_{1-α/2, n-1} · sd_diff / √n <= halfwidth`` (:func:`seeds_for_halfwidth`).
    Attainable p: :func:`min_p` (exact sign-flip / exact Wilcoxon: ``2**(1-n)`` two-sided).
    The pilot sd is itself uncertain; a small pilot tends to under-plan (Browne 1995).

    References
    ----------
    Browne, R. H. (1995). On the use of a pilot sample for sample size determination. *Stat. Med.* 14(17).
    """
    if effect is None and halfwidth is None:
        raise ValueError("plan needs effect= (for power) or halfwidth= (for CI width), or both; got neither")
    if effect is not None:
        v.nonzero("effect", effect)
    v.positive("halfwidth", halfwidth, allow_none=True)
    v.probability("power", power)
    v.probability("alpha", alpha)
    v.choice("alternative", alternative, v.ALTERNATIVES)
    v.choice("nan_policy", nan_policy, v.NAN_POLICIES)
    _check_runs(runs, metric, factor, pair_on)
    by = resolve_by(runs, by, factor, factors, [metric])
    rows = []
    for it in _arm_pairs(runs, metric, factor, baseline, by, pair_on, drop_unpaired, "keep", nan_policy):
        a, b = it["a"], it["b"]
        keep = ~(np.isnan(a) | np.isnan(b))
        d = b[keep] - a[keep]
        n = int(d.size)
        sd = float(np.std(d, ddof=1))
        caveats = list(it["caveats"])
        n_pow = n_hw = pd.NA
        if sd == 0:
            caveats.append("sd_diff = 0 in the pilot: seeds cannot be planned from it")
        else:
            if effect is not None:
                n_pow = seeds_needed(sd, effect, power=power, alpha=alpha, alternative=alternative)
            if halfwidth is not None:
                n_hw = seeds_for_halfwidth(sd, halfwidth, confidence_level=1 - alpha)
        planned = [x for x in (n_pow, n_hw) if x is not pd.NA]
        n_plan = max(planned) if planned else pd.NA

        def mp(k, test):
            return np.nan if k is pd.NA else min_p(int(k), test=test, alternative=alternative)

        rows.append({
            **it["cell"], "factor": factor, "metric": metric, "arm": it["arm"], "baseline": baseline,
            "n_pilot": n, "estimate": float(d.mean()), "sd_diff": sd, "d_z": float(d.mean() / sd) if sd > 0 else np.nan,
            "alpha": float(alpha), "alternative": alternative, "power": float(power),
            "effect": np.nan if effect is None else float(effect), "seeds_for_power": n_pow,
            "halfwidth": np.nan if halfwidth is None else float(halfwidth),
            "halfwidth_pilot": halfwidth_at(n, sd, confidence_level=1 - alpha),
            "seeds_for_halfwidth": n_hw, "n_planned": n_plan,
            "min_p_signflip_pilot": mp(n, "signflip"), "min_p_wilcoxon_pilot": mp(n, "wilcoxon"),
            "min_p_signflip_planned": mp(n_plan, "signflip"), "min_p_wilcoxon_planned": mp(n_plan, "wilcoxon"),
            "n_dropped": it["n_dropped"], "caveats": join_caveats(caveats),
        })
    out = pd.DataFrame(rows)
    for c in ("seeds_for_power", "seeds_for_halfwidth", "n_planned"):
        out[c] = out[c].astype("Int64")
    return out
