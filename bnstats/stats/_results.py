"""Frozen result dataclasses with flat ``to_dict()`` / ``to_frame()``."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd

#: Seed used when ``rng=None`` so that reports are byte-reproducible (Ioffe & Szegedy's arXiv date).
DEFAULT_SEED = 20150211


def make_rng(rng) -> np.random.Generator:
    """``np.random.default_rng(rng)``, with :data:`DEFAULT_SEED` when ``rng is None``.

    Never reads or writes the global numpy/random state.
    """
    return np.random.default_rng(DEFAULT_SEED if rng is None else rng)


#: Separator of caveats inside one frame cell: one caveat per line. A caveat never contains a line
#: break (:func:`clean_caveat` folds any into spaces), so :func:`caveat_list` recovers the list exactly.
CAVEAT_SEPARATOR = "\n"


def clean_caveat(text) -> str:
    """One caveat as a single line: runs of whitespace (line breaks included) become one space."""
    return " ".join(str(text).split())


def join_caveats(caveats) -> str:
    """Caveats (an iterable of str) as one frame cell: one caveat per line, ``""`` when there are none."""
    return CAVEAT_SEPARATOR.join(clean_caveat(c) for c in caveats)


def caveat_list(value) -> list[str]:
    r"""The caveats of a frame cell (or of a result) as a list of str.

    Frames returned by :mod:`bnstats.stats` hold the caveats of a row in one string column, one caveat
    per line (``"\n"``-joined; no caveat contains a line break). This helper inverts that: it accepts
    such a string, a tuple/list of caveats (as on the result dataclasses), or a missing value
    (``None``, NaN, ``""``), and returns the list, without empty entries.

    Examples
    --------
    >>> caveat_list("n=3 < 15: the BCa interval under-covers\nWilcoxon: 1 zero difference(s) dropped")
    ['n=3 < 15: the BCa interval under-covers', 'Wilcoxon: 1 zero difference(s) dropped']
    >>> caveat_list(float("nan"))
    []
    """
    if value is None:
        return []
    if isinstance(value, float) and np.isnan(value):
        return []
    if isinstance(value, tuple | list):
        return [clean_caveat(c) for c in value if str(c).strip()]
    if not isinstance(value, str):
        raise TypeError(f"caveat_list expects a str, a tuple/list of str or a missing value; got {type(value).__name__}")
    return [line.strip() for line in value.split(CAVEAT_SEPARATOR) if line.strip()]


class ResultMixin:
    """``to_dict()``: flat scalars (tuples of str are joined one per line only in frames)."""

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, pd.DataFrame):
                continue
            if isinstance(v, np.generic):
                v = v.item()
            out[f.name] = v
        return out

    def to_frame(self) -> pd.DataFrame:
        """One-row DataFrame; tuple fields (``caveats``, ``warnings``) become one string, one item per line
        (see :func:`caveat_list`)."""
        row = {k: (join_caveats(v) if isinstance(v, tuple) else v) for k, v in self.to_dict().items()}
        return pd.DataFrame([row])


def capture(fn: Callable, caveats: list[str], label: str):
    """Call ``fn()`` recording any warning as a caveat ``"label: message"`` (never let it escape)."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = fn()
    for w in rec:
        msg = clean_caveat(f"{label}: {w.category.__name__}: {w.message}")
        if msg not in caveats:
            caveats.append(msg)
    return out
