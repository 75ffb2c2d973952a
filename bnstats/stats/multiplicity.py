"""Multiplicity adjustment: :func:`adjust`."""

from __future__ import annotations

import numpy as np

from . import _validate as v


def adjust(pvalues, method="holm"):
    """Adjusted p-values for a family of tests; equals R's ``p.adjust(p, method)``.

    Parameters
    ----------
    pvalues : array_like, 1-D
        p-values in [0, 1]; NaN entries are left NaN and excluded from the family (as R does).
    method : {"holm", "bh", "bonferroni"}
        Holm's step-down (family-wise error), Benjamini–Hochberg step-up (false discovery rate), or
        Bonferroni.

    Returns
    -------
    numpy.ndarray
        Adjusted p-values, same order and length, float64.

    Notes
    -----
    With m non-missing p-values sorted ascending ``p_(1) <= ... <= p_(m)``:

    - Bonferroni: ``min(1, m p_i)``.
    - Holm: ``p̃_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``.
    - BH: ``p̃_(i) = min_{j >= i} min(1, m p_(j) / j)``.

    Computed here with R's ``p.adjust`` algorithm (a stable sort, then a running max for Holm and a
    running min from the largest p for BH): ``statsmodels.stats.multitest.multipletests`` gives the
    same numbers but calls ``gc.collect()`` on every call (~0.15 s in a process with torch loaded).

    References
    ----------
    Holm, S. (1979). A simple sequentially rejective multiple test procedure. *Scand. J. Stat.* 6, 65–70.
    Benjamini, Y., Hochberg, Y. (1995). Controlling the false discovery rate. *JRSS B* 57(1), 289–300.
    """
    v.choice("method", method, v.P_ADJUST_METHODS)
    p = v.vector("pvalues", pvalues)
    ok = ~np.isnan(p)
    if ((p[ok] < 0) | (p[ok] > 1)).any():
        raise ValueError(f"pvalues must lie in [0, 1]; got values outside at positions {np.flatnonzero(ok & ((p < 0) | (p > 1))).tolist()}")
    out = np.full(p.shape, np.nan)
    if ok.any():
        out[ok] = _adjusted(p[ok], method)
    return out


def _adjusted(p: np.ndarray, method: str) -> np.ndarray:
    m = p.size
    if method == "bonferroni":
        return np.minimum(1.0, m * p)
    order = np.argsort(p, kind="stable")
    ps = p[order]
    rank = np.arange(1, m + 1)
    if method == "holm":
        adj = np.minimum(1.0, np.maximum.accumulate((m - rank + 1) * ps))
    else:  # bh
        adj = np.minimum(1.0, np.minimum.accumulate((m * ps / rank)[::-1])[::-1])
    out = np.empty(m)
    out[order] = adj
    return out
