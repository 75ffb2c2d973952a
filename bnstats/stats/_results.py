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


def join_caveats(caveats) -> str:
    return "; ".join(caveats)


class ResultMixin:
    """``to_dict()``: flat scalars (tuples of str joined by "; " only in frames)."""

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
        """One-row DataFrame; tuple fields (``caveats``, ``warnings``) become one "; "-joined string."""
        row = {k: (join_caveats(v) if isinstance(v, tuple) else v) for k, v in self.to_dict().items()}
        return pd.DataFrame([row])


def capture(fn: Callable, caveats: list[str], label: str):
    """Call ``fn()`` recording any warning as a caveat ``"label: message"`` (never let it escape)."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = fn()
    for w in rec:
        msg = f"{label}: {w.category.__name__}: {str(w.message).strip()}"
        if msg not in caveats:
            caveats.append(msg)
    return out
