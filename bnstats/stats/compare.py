"""Frame-level comparisons over a sweep: :func:`compare`, :func:`describe`, :func:`plan`."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from . import _validate as v
from ._frames import cells, describe_cell, infer_higher_is_better, levels, pair_up, resolve_by
from ._results import join_caveats, make_rng
from .decision import DECISION_INTERVAL_METHODS, family_intervals, verdict
from .multiplicity import adjust
from .paired import PairedResult, paired
from .power import (
    check_direction,
    halfwidth_at,
    min_p,
    min_p_wilcoxon,
    sd_interval,
    seeds_for_halfwidth,
    seeds_needed,
)
from .power import wilcoxon_method as auto_wilcoxon_method

#: Count metrics: metric column -> (correct-count column, denominator column). When a runs frame has
#: both count columns, paired differences of the metric are computed from integer count differences.
COUNT_COLUMNS = {
    "test_acc": ("test_correct", "n_test"),
    "val_acc": ("val_correct", "n_val"),
    "train_acc": ("train_correct", "n_train"),
}

#: Values of the ``differences`` column of :func:`compare` / :func:`plan` (how ``d`` was computed).
DIFFERENCE_SOURCES = ("counts", "counts recovered from the metric", "floats")

#: A count recovered as round(metric * n) must be this close to a whole number, else the metric is not
#: a fraction of n (accuracies stored as float64 are within ~1e-13 of c/n for n up to 10^6).
COUNT_TOLERANCE = 1e-6


#: Columns the rows of a tuned sweep carry (``bnstats.tune``): bookkeeping, never grid factors.
STAGE_COLUMNS = ("stage", "tune_keys", "tune_metric", "tune_rule", "tune_score", "tune_decided_by",
                 "tune_candidates", "tune_seeds")


def evaluation_runs(runs):
    """``(evaluation runs, tuning runs)`` of a runs frame.

    A sweep with a ``[tune]`` section stores its tuning runs beside the evaluation runs, with
    ``stage = "tune"``: they chose each arm's hyperparameters on the validation set, on seeds of their
    own, and are never compared. :func:`compare`, :func:`describe` and :func:`plan` call this first, so
    no caller can forget it. Rows without a ``stage`` column, or with any other value, are evaluation runs.
    """
    if not hasattr(runs, "columns") or "stage" not in runs.columns:
        return runs, None
    tune = runs["stage"].astype(object).eq("tune").to_numpy()
    if not tune.any():
        return runs, None
    ev, tr = runs[~tune], runs[tune]
    if ev.empty:
        raise ValueError(f"runs: all {len(tr)} rows are tuning runs (stage == 'tune'); the evaluation runs they "
                         "choose values for are not stored yet, and tuning runs are never compared")
    return ev, tr


def _stage_factors(runs, factors):
    """``factors`` for a frame with :data:`STAGE_COLUMNS`: when they would be inferred, infer them without
    those columns and without the tuned keys (``tune_keys``), whose values differ between arms by design."""
    present = [c for c in STAGE_COLUMNS if c in runs.columns]
    if factors is not None or "factors" in runs.attrs or not present:
        return factors
    tuned = set()
    if "tune_keys" in runs.columns:
        tuned = {k for text in runs["tune_keys"].dropna().unique() for k in str(text).split(",") if k}
    hidden = [c for c in (*present, *sorted(tuned)) if c in runs.columns]
    from ._frames import resolve_factors

    return resolve_factors(runs.drop(columns=hidden), None, [])


def _tuning_excluded(out, tuned, factor, by):
    """Per comparison row: the tuning runs of its cell, baseline and arm that were left out."""
    if tuned is None or out.empty:
        return 0
    counts = []
    for r in out.to_dict("records"):
        # np.array copies: a boolean column backed by Arrow converts to a read-only view
        m = np.array(tuned[factor].isin([r["arm"], r["baseline"]]), dtype=bool)
        for k in by:
            m &= np.array(tuned[k] == r[k], dtype=bool)
        counts.append(int(m.sum()))
    return counts


def _check_runs(runs, metric, factor, pair_on):
    v.frame("runs", runs, ["run_id", pair_on, factor, metric] if "run_id" in getattr(runs, "columns", []) else [pair_on, factor, metric])
    if not pd.api.types.is_numeric_dtype(runs[metric]) or pd.api.types.is_bool_dtype(runs[metric]):
        raise TypeError(f"metric column {metric!r} must be numeric; got dtype {runs[metric].dtype}")


def _ids(rows, pair_on, mask):
    key = "run_id" if "run_id" in rows.columns else pair_on
    return rows.loc[mask, key].tolist()


def _counts(r0, r1, metric, pair_on, ctx):
    """``(a, b, den, source, caveats)``: the values ``paired`` gets for one aligned comparison.

    Rule (documented in :func:`compare`): a count metric (:data:`COUNT_COLUMNS`) whose frame has both
    count columns, filled for every run of the comparison, is compared on the counts; with only the
    denominator column, counts are recovered as ``round(metric * n)`` after checking that the metric is
    a fraction of n; otherwise the metric's floats are used, with a caveat for a count metric.
    """
    x0, x1 = r0[metric].to_numpy(dtype=float), r1[metric].to_numpy(dtype=float)
    cols = COUNT_COLUMNS.get(metric)
    if cols is None:
        return x0, x1, None, "floats", []
    ccol, ncol = cols
    if ncol not in r0.columns or r0[ncol].isna().any() or r1[ncol].isna().any():
        return x0, x1, None, "floats", [
            f"{metric} differences computed from floats ({ccol!r} and {ncol!r} not stored for every run): "
            "equal count differences may differ in the last digits and split ties in the Wilcoxon ranks"
        ]
    n0, n1 = r0[ncol].to_numpy(dtype=float), r1[ncol].to_numpy(dtype=float)
    if not np.array_equal(n0, n1):
        bad = n0 != n1
        raise ValueError(f"{ctx}: {ncol} differs between the arms for {pair_on} {r0.loc[bad, pair_on].tolist()} "
                         f"({n0[bad].tolist()} vs {n1[bad].tolist()}): paired runs must share one test set")
    if ccol in r0.columns and not (r0[ccol].isna().any() or r1[ccol].isna().any()):
        c0, c1 = r0[ccol].to_numpy(dtype=float), r1[ccol].to_numpy(dtype=float)
        for rows, c, x in ((r0, c0, x0), (r1, c1, x1)):
            off = ~np.isnan(x) & (np.abs(x - c / n0) > 1e-9)
            if off.any():
                raise ValueError(f"{ctx}: {metric} disagrees with {ccol}/{ncol} for run(s) {_ids(rows, pair_on, off)}")
        # a NaN metric (kept under nan_policy="omit") stays NaN, so that pair is omitted like the metric's
        return np.where(np.isnan(x0), np.nan, c0), np.where(np.isnan(x1), np.nan, c1), n0, "counts", []
    rec = []
    for rows, x in ((r0, x0), (r1, x1)):
        c = np.round(x * n0)
        off = np.abs(x * n0 - c) > COUNT_TOLERANCE  # NaN compares False: a NaN metric stays NaN
        if off.any():
            raise ValueError(f"{ctx}: {metric} is not a multiple of 1/{ncol} for run(s) {_ids(rows, pair_on, off)} "
                             f"(values {x[off][:5].tolist()}): cannot recover correct counts")
        rec.append(c)
    return rec[0], rec[1], n0, "counts recovered from the metric", []


def _arm_pairs(runs, metric, factor, baseline, by, pair_on, drop_unpaired, diverged, nan_policy):
    """Yield one dict per (cell, arm) with aligned values, their source and bookkeeping counts.

    Never raises for an arm that cannot be compared (fewer than 2 usable pairs): it yields the item
    with ``estimable=False`` and a caveat saying why.
    """
    v.level("baseline", baseline, runs[factor].dropna().unique(), factor)
    for cell, sub in cells(runs, by):
        where = describe_cell(cell)
        arms = [lv for lv in levels(sub[factor]) if lv != baseline]
        if not (sub[factor] == baseline).any():
            raise ValueError(f"cell {where}: baseline {factor}={baseline!r} has no runs; arms present: {arms}")
        for arm in arms:
            ctx = f"cell {where}, {factor}={arm!r} vs {baseline!r}"
            r0, r1, n_dropped = pair_up(sub, factor, baseline, arm, pair_on, drop_unpaired=drop_unpaired, where=ctx)
            n_seeds = len(r0)
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
                    # "keep" keeps a diverged run's metric as recorded, when it has one. bnstats records
                    # NaN for a diverged run's final metrics: such a pair cannot be kept and is dropped.
                    no_metric = div & (r0[metric].isna().to_numpy() | r1[metric].isna().to_numpy())
                    k_nan = int(no_metric.sum())
                    parts = []
                    if n_div - k_nan:
                        parts.append(f"{n_div - k_nan} kept with {metric} as recorded")
                    if k_nan:
                        parts.append(f"{k_nan} dropped because the diverged run has no {metric} (NaN)")
                    caveats.append(f"{n_div} pair(s) include a diverged run (diverged='keep'): " + ", ".join(parts))
                    r0, r1 = r0[~no_metric].reset_index(drop=True), r1[~no_metric].reset_index(drop=True)
            nan = (r0[metric].isna() | r1[metric].isna()).to_numpy()
            if nan.any() and nan_policy == "raise":
                raise ValueError(
                    f"{ctx}: {metric} is NaN for {pair_on} {r0.loc[nan, pair_on].tolist()}; pass nan_policy='omit' to drop "
                    "those pairs"
                )
            a, b, den, source, cav = _counts(r0, r1, metric, pair_on, ctx)
            caveats += cav
            n_usable = int(r0.shape[0] - nan.sum())
            estimable = n_usable >= 2
            if not estimable:
                caveats.append(
                    f"not estimable: {n_usable} usable pair(s) of {n_seeds} {pair_on}(s) (2 needed), excluded from the "
                    "multiplicity family"
                )
            yield dict(cell=cell, arm=arm, a=a, b=b, den=den, source=source, n_dropped=n_dropped, n_diverged=n_div,
                       caveats=caveats, seeds=r0[pair_on].to_numpy(), estimable=estimable, n_usable=n_usable)


def _not_estimable(n, *, confidence_level, alternative, margin, n_resamples, higher_is_better, zero_method,
                   wilcoxon_correction) -> dict:
    """A :class:`PairedResult`-shaped row of NaN for a comparison without 2 usable pairs."""
    mg = v.margin(margin)
    row = {}
    for f in dataclasses.fields(PairedResult):
        row[f.name] = {"int": 0, "float": math.nan, "str": "none", "bool": False}.get(str(f.type), math.nan)
    row.update(
        n=int(n), confidence_level=float(confidence_level), alternative=alternative, method="not estimable",
        boot_method="BCa", n_resamples=int(n_resamples), zero_method=zero_method,
        wilcoxon_correction=bool(wilcoxon_correction), effect_size_name="d_z", higher_is_better=bool(higher_is_better),
        margin_low=math.nan if mg is None else mg[0], margin_high=math.nan if mg is None else mg[1],
        verdict="not estimable", caveats=(),
    )
    return row


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
        optionally ``diverged`` (bool), ``stage`` (rows with ``"tune"`` are dropped first:
        :func:`evaluation_runs`) and count columns (:data:`COUNT_COLUMNS`: ``test_correct`` and
        ``n_test`` for ``test_acc``, ``val_correct``/``n_val``, ``train_correct``/``n_train``).
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
        Adjustment of the primary ``p`` (and of ``p_tost``) over the family: every estimable row returned.
    confidence_level, alternative, margin, n_resamples, wilcoxon_method, zero_method, wilcoxon_correction
        As in :func:`paired`. ``alpha = 1 - confidence_level`` is also the family's level.
    rng : None, int or numpy.random.Generator
        ``np.random.default_rng(rng)`` (``None``: the fixed ``DEFAULT_SEED``); one independent child
        generator is spawned per row, in row order, so results are reproducible and independent of the
        global RNG.
    higher_is_better : bool or None
        ``None``: False when ``metric`` contains "loss" or "error", else True.
    drop_unpaired : bool
        The only way to proceed past unpaired seeds: drop them; ``n_dropped`` counts them.
    diverged : {"keep", "drop_pair"}
        Policy for runs with ``diverged=True``; ``n_diverged`` counts the pairs with a diverged run
        either way, and a caveat says what happened to them. ``"keep"`` (default): a diverged run's
        metric is used as recorded (a diverged run's accuracy is a real outcome of that arm) when it
        has one; a diverged run without one (NaN, as bnstats' training records it) cannot be kept,
        and its pair is dropped (whatever ``nan_policy`` says). ``"drop_pair"``: drop every seed where
        either arm diverged.
    nan_policy : {"raise", "omit"}
        A NaN metric of a run that did *not* diverge: ``ValueError`` naming cell, arm and seeds, or
        drop the pair.

    Returns
    -------
    pandas.DataFrame
        One row per cell × arm (arm != baseline). Columns, in order: the ``by`` columns, ``factor``,
        ``metric``, ``arm``, ``baseline``, every field of :class:`PairedResult` (``caveats`` as one
        string, one caveat per line: read it with :func:`bnstats.stats.caveat_list`; it includes the
        cell-level caveats), then:

        - ``n_dropped``, ``n_diverged``: seeds dropped as unpaired, pairs that include a diverged run.
        - ``p_adj``, ``p_adjust_method``: the adjusted primary ``p`` (NaN outside the family).
        - ``differences``: how ``d`` was computed, one of :data:`DIFFERENCE_SOURCES` (see Notes).
        - ``family_size``: m, the number of estimable rows adjusted together.
        - ``p_tost_adj``: ``p_tost`` adjusted over the family with the same method (NaN without margin).
        - ``ci_low_simultaneous``, ``ci_high_simultaneous``, ``simultaneous_method`` (``"bonferroni"``):
          the t intervals at level ``1 - alpha/m``, jointly covering all m differences with probability
          >= 1 - alpha.
        - ``n_tuning_excluded``: tuning runs of this cell's baseline and arm left out (a sweep with
          ``[tune]`` stores them with ``stage = "tune"``; they chose the arms' hyperparameters on the
          validation set and are never compared: :func:`evaluation_runs`). 0 without tuning.
        - ``ci_low_decision``, ``ci_high_decision``, ``decision_interval_method``: the intervals that
          agree with the verdict: on every row the decision interval excludes 0 exactly when the
          verdict is better or worse (an end exactly at 0 is open: ``[0, 0.4]`` reads "> 0 and at most
          0.4"). Bonferroni: the simultaneous intervals. Holm: the simultaneous intervals cut at 0 where
          Holm rejects (Strassburger & Bretz 2008). BH: FCR-adjusted intervals (Benjamini & Yekutieli
          2005). See :func:`bnstats.stats.decision.family_intervals` for the construction and what
          each guarantees.

        ``verdict`` is the family's decision, one of :data:`bnstats.stats.VERDICTS`: ``p_adj < alpha``
        with the direction of the estimate decides a difference, ``p_tost_adj < alpha`` decides
        equivalence within the margin (rules in :func:`bnstats.stats.decision.verdict`). It never
        follows the per-comparison interval ``ci_low``/``ci_high``.

        A comparison with fewer than 2 usable pairs (e.g. an arm that diverged on every seed) is a row
        with NaN estimates, ``verdict="not estimable"``, ``method="not estimable"``, its counts
        (``n`` usable pairs, ``n_diverged``) and a caveat; it is left out of the family.

    Notes
    -----
    Each estimable row is :func:`paired` on the seed-aligned values (``a`` = baseline, ``b`` = arm).
    ``p_adj`` adjusts the primary ``p`` of each row: the paired t-test's ``p_t``, or the exact
    sign-flip ``p_signflip`` on a row where every difference is equal (``method`` names it).

    **Count metrics** (``test_acc``, ``val_acc``, ``train_acc``): when ``runs`` has the count columns
    (:data:`COUNT_COLUMNS`) filled for every run of a comparison, the differences are
    ``(correct_arm - correct_baseline) / n`` from integer differences, so ties are exact
    (``differences="counts"``; the metric must equal correct/n within 1e-9, and both arms must share n).
    With only the denominator column (``n_test``), the counts are recovered as ``round(metric * n)``
    after checking the metric is within 1e-6/n of a multiple of 1/n (``"counts recovered from the
    metric"``). With neither, the floats are used as they are (``"floats"``) and a caveat says that ties
    may split. Other metrics always use floats, without a caveat.

    References
    ----------
    Holm, S. (1979). *Scand. J. Stat.* 6, 65–70. Benjamini, Y., Hochberg, Y. (1995). *JRSS B* 57(1).
    Strassburger, K., Bretz, F. (2008). *Stat. Med.* 27(24), 4914–4927. Benjamini, Y., Yekutieli, D.
    (2005). *JASA* 100(469), 71–81. See :func:`paired` for the tests.
    """
    v.choice("p_adjust", p_adjust, v.P_ADJUST_METHODS)
    v.choice("diverged", diverged, v.DIVERGED_POLICIES)
    v.choice("nan_policy", nan_policy, v.NAN_POLICIES)
    v.boolean("drop_unpaired", drop_unpaired)
    cl = v.probability("confidence_level", confidence_level)
    v.choice("alternative", alternative, v.ALTERNATIVES)
    mg = v.margin(margin)
    _check_runs(runs, metric, factor, pair_on)
    runs, tuned = evaluation_runs(runs)
    factors = _stage_factors(runs, factors)
    hib = infer_higher_is_better(metric, higher_is_better)
    by = resolve_by(runs, by, factor, factors, [metric])
    items = list(_arm_pairs(runs, metric, factor, baseline, by, pair_on, drop_unpaired, diverged, nan_policy))
    children = make_rng(rng).spawn(len(items))
    rows = []
    for it, child in zip(items, children, strict=True):
        if it["estimable"]:
            res = paired(
                it["a"], it["b"], confidence_level=cl, alternative=alternative, margin=margin,
                n_resamples=n_resamples, rng=child, higher_is_better=hib, wilcoxon_method=wilcoxon_method,
                zero_method=zero_method, wilcoxon_correction=wilcoxon_correction, nan_policy="omit",
                denominator=it["den"],
            )
            d = res.to_dict()
            # NaN pairs reached paired() only under nan_policy="omit" (raise stopped earlier): its caveat stands.
            d["caveats"] = tuple(it["caveats"]) + res.caveats
        else:
            d = _not_estimable(it["n_usable"], confidence_level=cl, alternative=alternative, margin=margin,
                               n_resamples=n_resamples, higher_is_better=hib, zero_method=zero_method,
                               wilcoxon_correction=wilcoxon_correction)
            d["caveats"] = tuple(it["caveats"])
        d["caveats"] = join_caveats(d["caveats"])
        rows.append({**it["cell"], "factor": factor, "metric": metric, "arm": it["arm"], "baseline": baseline, **d,
                     "n_dropped": it["n_dropped"], "n_diverged": it["n_diverged"], "_source": it["source"]})
    out = pd.DataFrame(rows)
    source = out.pop("_source")
    out = _family(out, source, cl=cl, p_adjust=p_adjust, alternative=alternative, margin=mg, hib=hib)
    out["n_tuning_excluded"] = _tuning_excluded(out, tuned, factor, by)
    return out


def _family(out, source, *, cl, p_adjust, alternative, margin, hib):
    """Adjust over the family, decide the verdicts and add the intervals that agree with them."""
    alpha = 1 - cl
    estimable = (out["method"] != "not estimable").to_numpy()
    p = np.where(estimable, out["p"].to_numpy(dtype=float), np.nan)
    out["p_adj"] = adjust(p, method=p_adjust)
    out["p_adjust_method"] = p_adjust
    out["differences"] = source.to_numpy()
    out["family_size"] = int(np.sum(~np.isnan(p)))
    if margin is None:
        out["p_tost_adj"] = np.nan
    else:
        out["p_tost_adj"] = adjust(np.where(estimable, out["p_tost"].to_numpy(dtype=float), np.nan), method=p_adjust)
    rejected = (out["p_adj"] < alpha).to_numpy()
    equivalent = (out["p_tost_adj"] < alpha).to_numpy()
    est = out["estimate"].to_numpy(dtype=float)
    out["verdict"] = [verdict(e, rejected=r, equivalent=q, higher_is_better=hib, estimable=ok)
                      for e, r, q, ok in zip(est, rejected, equivalent, estimable, strict=True)]
    n = out["n"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = out["sd_diff"].to_numpy(dtype=float) / np.sqrt(n)
    iv = family_intervals(np.where(estimable, est, np.nan), se, n - 1, rejected=rejected,
                          t_valid=(out["method"] == "paired t").to_numpy(), alpha=alpha, p_adjust=p_adjust,
                          alternative=alternative)
    out["ci_low_simultaneous"] = iv["ci_low_simultaneous"]
    out["ci_high_simultaneous"] = iv["ci_high_simultaneous"]
    out["simultaneous_method"] = "bonferroni"
    out["ci_low_decision"] = iv["ci_low_decision"]
    out["ci_high_decision"] = iv["ci_high_decision"]
    out["decision_interval_method"] = DECISION_INTERVAL_METHODS[p_adjust]
    return out


def describe(runs, metric="test_acc", factor="placement", *, by=None, factors=None) -> pd.DataFrame:
    """Per cell × arm summary of ``metric`` for tables.

    Parameters
    ----------
    runs : pandas.DataFrame
        As in :func:`compare` (tuning runs, ``stage == "tune"``, are left out).
    metric, factor, by, factors
        As in :func:`compare`.

    Returns
    -------
    pandas.DataFrame
        Columns: the ``by`` columns, ``factor``, ``metric``, ``arm``, ``n`` (non-NaN values), ``n_nan``,
        ``n_diverged``, ``mean``, ``sd`` (ddof=1; NaN when n < 2), ``min``, ``max``. Nothing is rounded.
    """
    v.frame("runs", runs, [factor, metric])
    runs, _ = evaluation_runs(runs)
    factors = _stage_factors(runs, factors)
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


#: Below this many pilot seeds ``plan`` warns that the pilot's sd_diff (and so every seed count) is uncertain.
PILOT_MIN = 10


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
    confidence_level=0.95,
    n_resamples=9999,
    by=None,
    factors=None,
    pair_on="seed",
    drop_unpaired=False,
    diverged="keep",
    nan_policy="raise",
) -> pd.DataFrame:
    """Seeds needed per comparison (cell × arm), from a pilot sweep, with the pilot's uncertainty.

    Parameters
    ----------
    runs : pandas.DataFrame
        Pilot runs, as in :func:`compare` (count metrics are differenced on counts the same way; tuning
        runs, ``stage == "tune"``, are left out).
    effect : float or None
        Mean difference to detect, in the metric's units (e.g. 0.002 accuracy), for
        :func:`seeds_needed` at ``power`` and ``alpha``. With a one-sided ``alternative`` its sign must
        be the side that alternative detects (else ``ValueError`` naming both).
    halfwidth : float or None
        Target half-width of the two-sided ``1 - alpha`` paired t interval, in the metric's units.
        At least one of ``effect`` and ``halfwidth`` is required.
    power, alpha, alternative
        As in :func:`seeds_needed`.
    confidence_level : float
        Of the chi-square interval for the pilot's sd_diff (default 0.95).
    n_resamples : int
        Permutation budget of the tests the planned sweep will run (as in :func:`paired`): it decides
        whether their attainable-p floors are exact or Monte Carlo.
    by, factors, pair_on, drop_unpaired, diverged, nan_policy
        As in :func:`compare`.

    Returns
    -------
    pandas.DataFrame
        Columns: the ``by`` columns, ``factor``, ``metric``, ``arm``, ``baseline``, ``n_pilot``,
        ``estimate``, ``sd_diff``, ``sd_diff_ci_low``, ``sd_diff_ci_high`` (chi-square interval),
        ``sd_confidence_level``, ``d_z``, ``alpha``, ``alternative``, ``power``, ``effect``,
        ``seeds_for_power`` (at the pilot's sd_diff), ``seeds_for_power_low``, ``seeds_for_power_high``
        (at the ends of its interval), ``halfwidth``, ``halfwidth_pilot`` (half-width at the pilot n
        and sd), ``seeds_for_halfwidth``, ``seeds_for_halfwidth_low``, ``seeds_for_halfwidth_high``,
        ``n_planned`` (the larger of the requested seed counts), ``n_planned_low``, ``n_planned_high``,
        ``min_p_signflip_pilot``, ``min_p_wilcoxon_pilot``, ``wilcoxon_method_pilot``,
        ``min_p_signflip_planned``, ``min_p_wilcoxon_planned``, ``wilcoxon_method_planned``,
        ``n_dropped``, ``n_diverged``, ``differences``, ``caveats`` (one per line; see
        :func:`bnstats.stats.caveat_list`). Seed counts are pandas ``Int64`` (``<NA>`` when not
        requested, when sd_diff = 0, or when the comparison is not estimable).

    Notes
    -----
    Power: :func:`seeds_needed` with ``sd_diff`` from the pilot (R's ``power.t.test(type="paired")``).
    Half-width: smallest n with ``t_{1-α/2, n-1} · sd_diff / √n <= halfwidth`` (:func:`seeds_for_halfwidth`).
    The pilot's sd_diff is itself an estimate: ``sd_diff_ci_low``/``_high`` is its chi-square interval
    (:func:`bnstats.stats.power.sd_interval`) and the ``_low``/``_high`` seed counts are what the same
    plan needs at its ends. Below :data:`PILOT_MIN` pilot seeds a caveat says so: a small pilot tends to
    under-plan (Browne 1995); plan from the upper end, or run a larger pilot.
    Attainable p: the floors of the tests :func:`paired` will run, resolved the way it resolves them:
    sign-flip ``2**(1 - n)`` (two-sided; nonzero differences only in the pilot), Monte Carlo floor
    ``2 / (n_resamples + 1)`` once ``n > floor(log2(n_resamples))``; Wilcoxon by
    :func:`bnstats.stats.power.wilcoxon_method` (planned: no ties assumed, so exact up to n = 50 and
    the normal approximation above; pilot: with the pilot's own zeros and ties).

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
    if effect is not None:
        check_direction(float(effect), alternative)
    cl = v.probability("confidence_level", confidence_level)
    n_resamples = v.integer("n_resamples", n_resamples, minimum=1)
    v.choice("diverged", diverged, v.DIVERGED_POLICIES)
    v.choice("nan_policy", nan_policy, v.NAN_POLICIES)
    _check_runs(runs, metric, factor, pair_on)
    runs, _ = evaluation_runs(runs)
    factors = _stage_factors(runs, factors)
    by = resolve_by(runs, by, factor, factors, [metric])
    nan = math.nan

    def seeds(sd):
        if not (sd > 0 and np.isfinite(sd)):
            return pd.NA, pd.NA
        n_pow = seeds_needed(sd, effect, power=power, alpha=alpha, alternative=alternative) if effect is not None else pd.NA
        n_hw = seeds_for_halfwidth(sd, halfwidth, confidence_level=1 - alpha) if halfwidth is not None else pd.NA
        return n_pow, n_hw

    def planned(n_pow, n_hw):
        got = [x for x in (n_pow, n_hw) if x is not pd.NA]
        return max(got) if got else pd.NA

    rows = []
    for it in _arm_pairs(runs, metric, factor, baseline, by, pair_on, drop_unpaired, diverged, nan_policy):
        a, b = it["a"], it["b"]
        keep = ~(np.isnan(a) | np.isnan(b))
        d = (b[keep] - a[keep]) / (it["den"][keep] if it["den"] is not None else 1.0)
        n = int(d.size)
        caveats = list(it["caveats"])
        row = {**it["cell"], "factor": factor, "metric": metric, "arm": it["arm"], "baseline": baseline, "n_pilot": n}
        if n >= 2:
            sd = float(np.std(d, ddof=1))
            sd_lo, sd_hi = sd_interval(sd, n, confidence_level=cl)
            est = float(d.mean())
        else:
            sd = sd_lo = sd_hi = est = nan
        n_pow, n_hw = seeds(sd)
        n_pow_lo, n_hw_lo = seeds(sd_lo)
        n_pow_hi, n_hw_hi = seeds(sd_hi)
        n_plan = planned(n_pow, n_hw)
        if n >= 2 and sd == 0:
            caveats.append("sd_diff = 0 in the pilot: seeds cannot be planned from it")
        elif 2 <= n < PILOT_MIN:
            span = ""
            if n_plan is not pd.NA:
                span = f": the seeds needed range from {planned(n_pow_lo, n_hw_lo)} to {planned(n_pow_hi, n_hw_hi)}"
            caveats.append(
                f"pilot of {n} seeds (< {PILOT_MIN}): its sd_diff is uncertain ({cl:.0%} CI {sd_lo:.3g} to {sd_hi:.3g})"
                f"{span}, plan from the upper end or run a larger pilot"
            )
        if n >= 1:
            nz = d[d != 0]
            absd = np.abs(nz)
            ties = bool(nz.size < n or absd.size != np.unique(absd).size)
            w_pilot = auto_wilcoxon_method(max(nz.size, 1), ties=ties, n_resamples=n_resamples) if nz.size else "none"
            mp_flip_pilot = min_p(nz.size, test="signflip", alternative=alternative, n_resamples=n_resamples) if nz.size else 1.0
            if w_pilot == "none":
                mp_wil_pilot = 1.0
            elif w_pilot == "approx":
                mp_wil_pilot = min_p(nz.size, test="wilcoxon", alternative=alternative, method="approx")
            else:
                mp_wil_pilot = min_p(nz.size, test="wilcoxon", alternative=alternative)
        else:
            w_pilot, mp_flip_pilot, mp_wil_pilot = "none", nan, nan
        if n_plan is pd.NA:
            w_plan, mp_flip_plan, mp_wil_plan = "", nan, nan
        else:
            w_plan = auto_wilcoxon_method(int(n_plan), ties=False, n_resamples=n_resamples)
            mp_flip_plan = min_p(int(n_plan), test="signflip", alternative=alternative, n_resamples=n_resamples)
            mp_wil_plan = min_p_wilcoxon(int(n_plan), ties=False, alternative=alternative, n_resamples=n_resamples)
        row.update({
            "estimate": est, "sd_diff": sd, "sd_diff_ci_low": sd_lo, "sd_diff_ci_high": sd_hi,
            "sd_confidence_level": cl, "d_z": est / sd if sd > 0 else nan,
            "alpha": float(alpha), "alternative": alternative, "power": float(power),
            "effect": nan if effect is None else float(effect),
            "seeds_for_power": n_pow, "seeds_for_power_low": n_pow_lo, "seeds_for_power_high": n_pow_hi,
            "halfwidth": nan if halfwidth is None else float(halfwidth),
            "halfwidth_pilot": halfwidth_at(n, sd, confidence_level=1 - alpha) if n >= 2 else nan,
            "seeds_for_halfwidth": n_hw, "seeds_for_halfwidth_low": n_hw_lo, "seeds_for_halfwidth_high": n_hw_hi,
            "n_planned": n_plan, "n_planned_low": planned(n_pow_lo, n_hw_lo), "n_planned_high": planned(n_pow_hi, n_hw_hi),
            "min_p_signflip_pilot": mp_flip_pilot, "min_p_wilcoxon_pilot": mp_wil_pilot,
            "wilcoxon_method_pilot": w_pilot, "min_p_signflip_planned": mp_flip_plan,
            "min_p_wilcoxon_planned": mp_wil_plan, "wilcoxon_method_planned": w_plan,
            "n_dropped": it["n_dropped"], "n_diverged": it["n_diverged"], "differences": it["source"],
            "caveats": join_caveats(caveats),
        })
        rows.append(row)
    out = pd.DataFrame(rows)
    for c in ("seeds_for_power", "seeds_for_power_low", "seeds_for_power_high", "seeds_for_halfwidth",
              "seeds_for_halfwidth_low", "seeds_for_halfwidth_high", "n_planned", "n_planned_low", "n_planned_high"):
        out[c] = out[c].astype("Int64")
    return out
