"""Uncertainty over seeds *and* test examples: :func:`crossed`, :func:`compare_crossed`.

Every interval of :func:`bnstats.stats.paired` treats the test set as fixed: it answers "how much would
the mean difference on *these* test examples move with other seeds?". A claim about the arms, though,
is a claim about new data too. When the training side stores, for every run, which test examples the
final model got right (a bool vector, bit-packed: :func:`pack_correct`), the paired difference is a
table ``D[s, e] = correct_b[s, e] - correct_a[s, e]`` crossed by seed and example, and the mean
difference has three sources of variance:

- **seed**: training randomness that shifts a whole run (what the seeds-only interval sees);
- **example**: some test examples favour one arm (what a fixed test set hides);
- **interaction**: the rest (seed × example, confounded with noise: one observation per cell).

:func:`crossed` estimates them (two-way crossed random-effects ANOVA) and gives the interval over
seeds and examples beside the seeds-only one, plus Owen's (2007) pigeonhole bootstrap, which resamples
seeds and examples independently. :func:`compare_crossed` does this for every comparison of a runs frame,
paired on seed like :func:`bnstats.stats.compare`.

Bit layout of ``test_correct_bits`` (chosen here, used by :func:`pack_correct` and :func:`unpack_correct`):
``numpy.packbits(correct, bitorder="little")``: example ``e`` is bit ``e % 8`` (least significant first)
of byte ``e // 8``; ``ceil(n_test / 8)`` bytes; the unused high bits of the last byte are 0. Example
order is the test set's own order, the same for every run of a sweep.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
from scipy import stats as sps

from . import _validate as v
from ._frames import cells, describe_cell, infer_higher_is_better, levels, pair_up, resolve_by
from ._results import ResultMixin, join_caveats, make_rng
from .multiplicity import adjust

#: Resampling works in batches of at most this many values (8 MB of float64).
BATCH_VALUES = 2**20

#: Bit-packed per-example correctness columns and the denominator column that gives their length.
BITS_COLUMNS = {"test_acc": ("test_correct_bits", "n_test"), "val_acc": ("val_correct_bits", "n_val")}


def pack_correct(correct) -> bytes:
    """Per-example correctness (1-D bool or 0/1) as bytes: ``np.packbits(correct, bitorder="little")``."""
    arr = np.asarray(correct)
    if arr.ndim != 1 or not (arr.dtype == bool or np.isin(arr, (0, 1)).all()):
        raise ValueError(f"correct must be a 1-D array of bools or 0/1; got shape {arr.shape}, dtype {arr.dtype}")
    return np.packbits(arr.astype(bool), bitorder="little").tobytes()


def unpack_correct(bits, n) -> np.ndarray:
    """The bool vector of length ``n`` packed by :func:`pack_correct`; checks the length and the padding bits."""
    n = v.integer("n", n, minimum=1)
    if isinstance(bits, np.ndarray):
        raw = bits.astype(np.uint8, copy=False).ravel()
    elif isinstance(bits, bytes | bytearray | memoryview):
        raw = np.frombuffer(bytes(bits), dtype=np.uint8)
    else:
        raise TypeError(f"bits must be bytes (np.packbits(correct, bitorder='little')); got {type(bits).__name__}")
    if raw.size != (n + 7) // 8:
        raise ValueError(f"bits hold {raw.size} byte(s); {n} examples need ceil({n}/8) = {(n + 7) // 8}")
    out = np.unpackbits(raw, bitorder="little")
    if out[n:].any():
        raise ValueError(f"bits have nonzero padding beyond example {n}: not packed with bitorder='little' for n={n}?")
    return out[:n].astype(bool)


@dataclasses.dataclass(frozen=True)
class CrossedResult(ResultMixin):
    """Result of :func:`crossed` (flat scalars, ``caveats`` a tuple of str); see :func:`crossed`."""

    n_seeds: int
    n_examples: int
    mean_a: float
    mean_b: float
    estimate: float
    confidence_level: float
    se: float
    df: float
    t: float
    p: float
    ci_low: float
    ci_high: float
    method: str
    boot_se: float
    boot_ci_low: float
    boot_ci_high: float
    boot_method: str
    n_resamples: int
    se_seeds: float
    df_seeds: float
    p_seeds: float
    ci_low_seeds: float
    ci_high_seeds: float
    var_seed: float
    var_example: float
    var_interaction: float
    ms_seed: float
    ms_example: float
    ms_interaction: float
    share_example: float
    caveats: tuple[str, ...]


def _matrix(name, value):
    arr = np.asarray(value)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [seeds, examples]; got shape {arr.shape}")
    if arr.dtype != bool:
        if not np.issubdtype(arr.dtype, np.number) or not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must hold 0/1 or bools (correct or not, per seed and example)")
    return arr.astype(np.float64)


def _pigeonhole(D, n_resamples, rng):
    """Grand means of ``D`` over ``n_resamples`` pigeonhole resamples (rows and columns drawn independently)."""
    S, E = D.shape
    out = np.empty(n_resamples)
    batch = max(1, BATCH_VALUES // max(S, E))
    for k in range(0, n_resamples, batch):
        b = min(batch, n_resamples - k)
        rows = rng.integers(0, S, size=(b, S))
        cols = rng.integers(0, E, size=(b, E))
        # W[b, s] = how often seed s was drawn; (W @ D)[b, e] sums the drawn seeds' rows for example e.
        W = np.bincount((np.arange(b)[:, None] * S + rows).ravel(), minlength=b * S).reshape(b, S).astype(np.float64)
        M = W @ D
        out[k:k + b] = np.take_along_axis(M, cols, axis=1).sum(axis=1) / (S * E)
    return out


def crossed(correct_a, correct_b, *, confidence_level=0.95, n_resamples=9999, rng=None) -> CrossedResult:
    """Mean difference in accuracy with intervals over seeds and test examples, and its variance components.

    Parameters
    ----------
    correct_a, correct_b : array_like, shape (n_seeds, n_examples)
        1/0 (or bool): whether the baseline's (a) and the arm's (b) final model of seed s got test
        example e right. Paired on seed (row s of both is seed s) and on example (column e is example e).
    confidence_level : float
        Of every interval (two-sided).
    n_resamples : int
        Pigeonhole bootstrap resamples.
    rng : None, int, numpy.random.Generator or SeedSequence
        Source of the bootstrap draws (``None``: ``bnstats.stats.DEFAULT_SEED``); global state is never used.

    Returns
    -------
    CrossedResult
        - ``n_seeds`` (S), ``n_examples`` (E), ``mean_a``, ``mean_b`` (accuracies), ``estimate`` =
          ``mean_b - mean_a`` (the mean of D).
        - Over seeds **and** examples (primary; ``method`` = ``"crossed anova, satterthwaite t"``):
          ``se``, ``df``, ``t``, ``p`` (two-sided, H0: no difference in the population of seeds and
          examples), ``ci_low``, ``ci_high``.
        - Owen's pigeonhole bootstrap: ``boot_se``, ``boot_ci_low``, ``boot_ci_high`` (percentile),
          ``boot_method`` (``"pigeonhole percentile"``), ``n_resamples``.
        - Over seeds only (this test set held fixed; the paired t of per-seed mean differences, what
          :func:`bnstats.stats.paired` reports): ``se_seeds``, ``df_seeds``, ``p_seeds``,
          ``ci_low_seeds``, ``ci_high_seeds``.
        - Variance components of D (ANOVA estimates, negative ones reported as 0 with a caveat):
          ``var_seed``, ``var_example``, ``var_interaction`` (seed × example, with noise), their mean
          squares ``ms_seed``, ``ms_example``, ``ms_interaction``, and ``share_example``: the share of
          the estimate's variance that comes from sampling test examples, ``(var_example / E) / se²``
          (what the seeds-only interval leaves out).
        - ``caveats``.

    Notes
    -----
    Model (two-way crossed random effects, one observation per cell):
    ``D[s, e] = μ + α_s + β_e + ε_se`` with ``α ~ (0, σ²_seed)``, ``β ~ (0, σ²_example)``,
    ``ε ~ (0, σ²_interaction)``; μ is the population difference. With row means ``D̄_s.``, column means
    ``D̄_.e`` and grand mean ``D̄``:
    ``MS_seed = E Σ_s (D̄_s. − D̄)² / (S − 1)``, ``MS_example = S Σ_e (D̄_.e − D̄)² / (E − 1)``,
    ``MS_int = Σ (D − D̄_s. − D̄_.e + D̄)² / ((S − 1)(E − 1))``; the ANOVA estimators are
    ``σ̂²_int = MS_int``, ``σ̂²_seed = (MS_seed − MS_int) / E``, ``σ̂²_example = (MS_example − MS_int) / S``
    (Searle, Casella & McCulloch 1992, §4.5; for balanced data they equal REML when positive), and
    ``Var(D̄) = σ²_seed / S + σ²_example / E + σ²_int / (S E)``, estimated with the components
    truncated at 0: ``se² = (max(MS_seed, MS_int) + max(MS_example, MS_int) − MS_int) / (S E)``, a
    linear combination of mean squares whose t reference has Satterthwaite's (1946) degrees of freedom
    ``df = (Σ c_k MS_k)² / Σ (c_k MS_k)² / df_k``. The seeds-only interval uses ``MS_seed / (S E)``
    on S − 1 df: it covers the mean difference *on this test set*, and misses the population
    difference whenever the test set's examples favour one arm.

    The pigeonhole bootstrap (Owen 2007) draws S seeds and E examples with replacement, independently,
    and takes the grand mean of the drawn sub-table. Its variance is exactly
    ``μ_seed / S + μ_example / E + μ_int / (S E)`` with the empirical (divide-by-count) variances of row
    means, column means and residuals, which counts the interaction once more in each margin: it is
    conservative by about ``2 σ²_int / (S E)`` (Owen 2007, §3). The variance decomposition follows the
    view of Bouthillier et al. (2021): the test set is a sample, and its sampling variance sits beside
    the seeds' in every benchmark comparison.

    References
    ----------
    Owen, A. B. (2007). The pigeonhole bootstrap. *Ann. Appl. Stat.* 1(2), 386–411.
    Bouthillier, X., Delaunay, P., Bronzi, M., et al. (2021). Accounting for variance in machine
    learning benchmarks. *Proc. MLSys* 3.
    Searle, S. R., Casella, G., McCulloch, C. E. (1992). *Variance Components*. Wiley, §4.5.
    Satterthwaite, F. E. (1946). An approximate distribution of estimates of variance components.
    *Biometrics Bulletin* 2(6), 110–114.
    """
    A = _matrix("correct_a", correct_a)
    B = _matrix("correct_b", correct_b)
    if A.shape != B.shape:
        raise ValueError(f"correct_a and correct_b must have the same shape [seeds, examples]; got {A.shape} and {B.shape}")
    S, E = A.shape
    if S < 2 or E < 2:
        raise ValueError(f"crossed needs at least 2 seeds and 2 examples; got {S} seed(s) x {E} example(s)")
    cl = v.probability("confidence_level", confidence_level)
    n_resamples = v.integer("n_resamples", n_resamples, minimum=1)
    gen = make_rng(rng)
    caveats: list[str] = []
    alpha = 1 - cl
    D = B - A
    grand = float(D.mean())
    rmean, cmean = D.mean(axis=1), D.mean(axis=0)
    df_s, df_e, df_r = S - 1, E - 1, (S - 1) * (E - 1)
    ms_s = float(E * np.sum((rmean - grand) ** 2) / df_s)
    ms_e = float(S * np.sum((cmean - grand) ** 2) / df_e)
    ms_r = float(np.sum((D - rmean[:, None] - cmean[None, :] + grand) ** 2) / df_r)
    var_s, var_e = (ms_s - ms_r) / E, (ms_e - ms_r) / S
    for name, val in (("seed", var_s), ("example", var_e)):
        if val < 0:
            caveats.append(f"the {name} variance component's ANOVA estimate is negative ({val:.3g}): reported as 0")
    # S E se^2 = E max(var_s, 0) + S max(var_e, 0) + MS_int = c_s MS_seed + c_e MS_example + c_r MS_int, with
    # c = 1 for a component kept, 0 for one truncated, and c_r = 1 - c_s - c_e (see Notes).
    c_s, c_e = float(ms_s >= ms_r), float(ms_e >= ms_r)
    terms = [(c * ms, k) for c, ms, k in ((c_s, ms_s, df_s), (c_e, ms_e, df_e), (1 - c_s - c_e, ms_r, df_r)) if c]
    var_mean = sum(t for t, _ in terms) / (S * E)
    nan = math.nan
    if var_mean > 0:
        se = math.sqrt(var_mean)
        df = (var_mean * S * E) ** 2 / sum(t * t / k for t, k in terms)
        t = grand / se
        p = float(2 * sps.t.sf(abs(t), df))
        h = float(sps.t.ppf(1 - alpha / 2, df)) * se
        lo, hi = grand - h, grand + h
    else:
        se = df = t = p = lo = hi = nan
        caveats.append("every paired difference is equal: the crossed interval is undefined (NaN)")
    if ms_s > 0:
        se_seeds = math.sqrt(ms_s / (S * E))
        t_seeds = grand / se_seeds
        p_seeds = float(2 * sps.t.sf(abs(t_seeds), df_s))
        h = float(sps.t.ppf(1 - alpha / 2, df_s)) * se_seeds
        lo_s, hi_s = grand - h, grand + h
    else:
        se_seeds = p_seeds = lo_s = hi_s = nan
        caveats.append("every seed has the same mean difference: the seeds-only interval is undefined (NaN)")
    boot = _pigeonhole(D, n_resamples, gen)
    b_lo, b_hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    if S < 10:
        caveats.append(f"{S} seeds: the seed variance component rests on {S - 1} df, so the crossed interval is wide")
    share = (max(var_e, 0.0) / E) / var_mean if var_mean > 0 else nan
    return CrossedResult(
        n_seeds=S, n_examples=E, mean_a=float(A.mean()), mean_b=float(B.mean()), estimate=grand, confidence_level=cl,
        se=se, df=df, t=t, p=p, ci_low=lo, ci_high=hi, method="crossed anova, satterthwaite t",
        boot_se=float(np.std(boot, ddof=1)) if n_resamples > 1 else nan, boot_ci_low=float(b_lo),
        boot_ci_high=float(b_hi), boot_method="pigeonhole percentile", n_resamples=n_resamples,
        se_seeds=se_seeds, df_seeds=float(df_s), p_seeds=p_seeds, ci_low_seeds=lo_s, ci_high_seeds=hi_s,
        var_seed=max(var_s, 0.0), var_example=max(var_e, 0.0), var_interaction=ms_r,
        ms_seed=ms_s, ms_example=ms_e, ms_interaction=ms_r, share_example=share, caveats=tuple(caveats),
    )


def _unpack_runs(rows, bits_col, n_col, where, pair_on):
    out = []
    for r in rows.itertuples(index=False):
        rec = r._asdict()
        try:
            out.append(unpack_correct(rec[bits_col], int(rec[n_col])))
        except (TypeError, ValueError) as e:
            who = rec.get("run_id", rec.get(pair_on))
            raise ValueError(f"{where}: {bits_col} of run {who!r}: {e}") from None
    return np.vstack(out)


def compare_crossed(
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
    n_resamples=9999,
    rng=None,
    higher_is_better=None,
    drop_unpaired=False,
    diverged="drop_pair",
) -> pd.DataFrame:
    """:func:`crossed` for every arm of ``factor`` against ``baseline``, in every cell, paired on seed.

    Parameters
    ----------
    runs : pandas.DataFrame
        One row per run with ``run_id``, ``seed``, the factor columns and, for ``metric="test_acc"``,
        ``test_correct_bits`` (bytes from :func:`pack_correct`) and ``n_test`` (int); for
        ``"val_acc"``, ``val_correct_bits`` and ``n_val`` (:data:`BITS_COLUMNS`).
    metric, factor, baseline, by, factors, pair_on, drop_unpaired
        As in :func:`bnstats.stats.compare`.
    p_adjust : {"holm", "bh", "bonferroni"}
        Adjustment of the crossed ``p`` over the rows returned (``p_adj``).
    confidence_level, n_resamples
        As in :func:`crossed`.
    rng : None, int or numpy.random.Generator
        One child generator is spawned per row, in row order.
    higher_is_better : bool or None
        Recorded for the reader (accuracy: True); the verdict stays with :func:`bnstats.stats.compare`.
    diverged : {"drop_pair", "keep"}
        A pair with a diverged run is dropped (default; a diverged run's predictions are not a trained
        model's), or kept when its bits are stored. A pair whose bits are missing is always dropped and
        counted in ``n_missing``.

    Returns
    -------
    pandas.DataFrame
        One row per cell × arm: the ``by`` columns, ``factor``, ``metric``, ``arm``, ``baseline``, every
        field of :class:`CrossedResult` (``caveats`` one per line), ``n_dropped``, ``n_diverged``,
        ``n_missing``, ``higher_is_better``, ``p_adj``, ``p_adjust_method``. A comparison with fewer
        than 2 usable seeds has NaN numbers, ``method="not estimable"`` and a caveat, and is left out
        of the adjustment.

    Notes
    -----
    Every run of a comparison must have the same ``n_test`` (one test set); the estimate equals
    :func:`bnstats.stats.compare`'s on the counts. See :func:`crossed` for the statistics.

    References
    ----------
    Owen, A. B. (2007). *Ann. Appl. Stat.* 1(2), 386–411. Bouthillier, X., et al. (2021). *Proc. MLSys* 3.
    """
    if metric not in BITS_COLUMNS:
        raise ValueError(f"metric must be one of {list(BITS_COLUMNS)} (a metric with per-example bits); got {metric!r}")
    bits_col, n_col = BITS_COLUMNS[metric]
    v.frame("runs", runs, [pair_on, factor, bits_col, n_col])
    v.choice("p_adjust", p_adjust, v.P_ADJUST_METHODS)
    v.choice("diverged", diverged, v.DIVERGED_POLICIES)
    v.boolean("drop_unpaired", drop_unpaired)
    cl = v.probability("confidence_level", confidence_level)
    n_resamples = v.integer("n_resamples", n_resamples, minimum=1)
    hib = infer_higher_is_better(metric, higher_is_better)
    v.level("baseline", baseline, runs[factor].dropna().unique(), factor)
    by = resolve_by(runs, by, factor, factors, [metric, bits_col])
    jobs = []
    for cell, sub in cells(runs, by):
        where = describe_cell(cell)
        for arm in [lv for lv in levels(sub[factor]) if lv != baseline]:
            ctx = f"cell {where}, {factor}={arm!r} vs {baseline!r}"
            r0, r1, n_dropped = pair_up(sub, factor, baseline, arm, pair_on, drop_unpaired=drop_unpaired, where=ctx)
            caveats = [f"{n_dropped} unpaired or duplicated {pair_on}(s) dropped (drop_unpaired=True)"] if n_dropped else []
            n_seeds = len(r0)
            keep = np.ones(n_seeds, bool)
            n_div = 0
            if "diverged" in runs.columns:
                div = r0["diverged"].fillna(False).astype(bool).to_numpy() | r1["diverged"].fillna(False).astype(bool).to_numpy()
                n_div = int(div.sum())
                if n_div and diverged == "drop_pair":
                    keep &= ~div
                    caveats.append(f"{n_div} pair(s) with a diverged run dropped (diverged='drop_pair')")
            missing = keep & (r0[bits_col].isna() | r1[bits_col].isna() | r0[n_col].isna() | r1[n_col].isna()).to_numpy()
            if missing.any():
                caveats.append(f"{int(missing.sum())} pair(s) without stored {bits_col} dropped")
            keep &= ~missing
            r0, r1 = r0[keep].reset_index(drop=True), r1[keep].reset_index(drop=True)
            if len(r0) and not (np.array_equal(r0[n_col].to_numpy(), r1[n_col].to_numpy())
                                and (r0[n_col] == r0[n_col].iloc[0]).all()):
                raise ValueError(f"{ctx}: {n_col} differs between runs ({sorted(set(r0[n_col]) | set(r1[n_col]))}): "
                                 "crossing on examples needs one test set")
            jobs.append(dict(cell=cell, arm=arm, r0=r0, r1=r1, ctx=ctx, caveats=caveats, n_dropped=n_dropped,
                             n_diverged=n_div, n_missing=int(missing.sum())))
    children = make_rng(rng).spawn(len(jobs))
    fields = [f.name for f in dataclasses.fields(CrossedResult)]
    rows = []
    for job, child in zip(jobs, children, strict=True):
        r0, r1 = job["r0"], job["r1"]
        if len(r0) >= 2:
            A = _unpack_runs(r0, bits_col, n_col, job["ctx"], pair_on)
            B = _unpack_runs(r1, bits_col, n_col, job["ctx"], pair_on)
            res = crossed(A, B, confidence_level=cl, n_resamples=n_resamples, rng=child).to_dict()
            res["caveats"] = tuple(job["caveats"]) + res["caveats"]
        else:
            res = {f: math.nan for f in fields}
            res.update(n_seeds=len(r0), n_examples=int(r0[n_col].iloc[0]) if len(r0) else 0, confidence_level=cl,
                       method="not estimable", boot_method="pigeonhole percentile", n_resamples=n_resamples,
                       caveats=tuple(job["caveats"]) + (f"not estimable: {len(r0)} usable pair(s) (2 needed), "
                                                        "excluded from the multiplicity family",))
        res["caveats"] = join_caveats(res["caveats"])
        rows.append({**job["cell"], "factor": factor, "metric": metric, "arm": job["arm"], "baseline": baseline, **res,
                     "n_dropped": job["n_dropped"], "n_diverged": job["n_diverged"], "n_missing": job["n_missing"],
                     "higher_is_better": hib})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["p_adj"] = adjust(out["p"].to_numpy(dtype=float), method=p_adjust)
    out["p_adjust_method"] = p_adjust
    return out


__all__ = ["BITS_COLUMNS", "CrossedResult", "compare_crossed", "crossed", "pack_correct", "unpack_correct"]
