"""Helpers shared by the frame-level functions: factors, cells, pairing on seed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import _validate as v

#: Columns that are never grid factors when factors are inferred.
BOOKKEEPING = frozenset(
    {
        "run_id", "seed", "diverged", "status", "error", "device", "hostname", "path", "config",
        "git_commit", "git_dirty", "git_state", "torch_version", "bnstats_version", "python_version",
        "started_at", "finished_at", "created_at", "duration_s", "epoch", "step", "source", "layer", "site",
    }
)
METRIC_COLUMNS = frozenset({"test_acc", "test_loss", "train_loss", "train_acc", "val_acc", "val_loss"})


def resolve_factors(runs: pd.DataFrame, factors, metric_cols) -> list[str]:
    """Grid factor columns: ``factors=`` if given, else ``runs.attrs["factors"]``, else inferred.

    Inference keeps columns of object, string or category dtype (not bool, not numeric) other than
    ``run_id``, ``seed``, the metric columns, the bookkeeping columns in :data:`BOOKKEEPING` and the
    bit-packed per-example columns (names ending in ``_bits``, e.g. ``test_correct_bits``).
    Numeric factors (e.g. a width) are therefore never inferred: pass ``factors=`` for them.
    """
    if factors is not None:
        return v.column_names("factors", factors, list(runs.columns))
    attr = runs.attrs.get("factors")
    if attr is not None:
        return v.column_names('runs.attrs["factors"]', list(attr), list(runs.columns))
    skip = set(BOOKKEEPING) | set(METRIC_COLUMNS) | set(metric_cols)
    out = []
    for c in runs.columns:
        if c in skip or str(c).endswith("_bits"):  # bit-packed per-example results (bytes), never a factor
            continue
        dt = runs[c].dtype
        if isinstance(dt, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dt) or pd.api.types.is_object_dtype(dt):
            if pd.api.types.is_object_dtype(dt) and runs[c].map(lambda x: isinstance(x, bool | np.bool_)).any():
                continue
            out.append(c)
    return out


def resolve_by(runs, by, factor, factors, metric_cols) -> list[str]:
    """``by`` if given (validated), else every factor except ``factor``."""
    if by is not None:
        out = v.column_names("by", by, list(runs.columns))
        if factor in out:
            raise ValueError(f"by must not contain the compared factor {factor!r}; got {out}")
        return out
    return [f for f in resolve_factors(runs, factors, metric_cols) if f != factor]


def levels(series: pd.Series) -> list:
    """Levels in a stable order: categories order for categoricals, else sorted."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        present = set(series.dropna().unique())
        return [c for c in series.cat.categories if c in present]
    return sorted(series.dropna().unique(), key=lambda x: (str(type(x)), x))


def cells(runs: pd.DataFrame, by: list[str]):
    """Yield ``(cell_dict, sub_frame)`` in sorted order."""
    if not by:
        yield {}, runs
        return
    for key, sub in runs.groupby(by, sort=True, dropna=False, observed=True):
        key = key if isinstance(key, tuple) else (key,)
        yield dict(zip(by, key, strict=True)), sub


def describe_cell(cell: dict) -> str:
    return ", ".join(f"{k}={val!r}" for k, val in cell.items()) or "(single cell)"


def pair_up(sub, factor, baseline, arm, pair_on, *, drop_unpaired, where):
    """Align the baseline and arm rows of one cell on ``pair_on``.

    Returns ``(base_rows, arm_rows, n_dropped)``: two frames sorted by ``pair_on`` with equal keys.
    Missing or duplicated keys raise ``ValueError`` naming them unless ``drop_unpaired``; then they are
    dropped and ``n_dropped`` counts the distinct keys lost.
    """
    b0 = sub[sub[factor] == baseline]
    b1 = sub[sub[factor] == arm]
    c0 = b0[pair_on].value_counts()
    c1 = b1[pair_on].value_counts()
    dup = sorted(set(c0[c0 > 1].index) | set(c1[c1 > 1].index))
    only_base = sorted(set(c0.index) - set(c1.index))
    only_arm = sorted(set(c1.index) - set(c0.index))
    bad = sorted(set(dup) | set(only_base) | set(only_arm))
    if bad and not drop_unpaired:
        parts = []
        if only_base:
            parts.append(f"{pair_on} {only_base} present for {factor}={baseline!r} but missing for {factor}={arm!r}")
        if only_arm:
            parts.append(f"{pair_on} {only_arm} present for {factor}={arm!r} but missing for {factor}={baseline!r}")
        if dup:
            parts.append(f"{pair_on} {dup} duplicated")
        raise ValueError(f"{where}: unpaired runs: " + "; ".join(parts) + ". Pass drop_unpaired=True to drop them.")
    if bad:
        b0 = b0[~b0[pair_on].isin(bad)]
        b1 = b1[~b1[pair_on].isin(bad)]
    b0 = b0.sort_values(pair_on, kind="stable").reset_index(drop=True)
    b1 = b1.sort_values(pair_on, kind="stable").reset_index(drop=True)
    return b0, b1, len(bad)


def infer_higher_is_better(metric: str, value) -> bool:
    """``None`` -> False when the metric name contains "loss" or "error", else True."""
    if value is None:
        return not ("loss" in metric or "error" in metric)
    return v.boolean("higher_is_better", value)
