"""Input validation for :mod:`bnstats.stats`, in one place.

Every check raises ``ValueError`` or ``TypeError`` whose message names the argument, the allowed
values and what was received.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import pandas as pd

ALTERNATIVES = ("two-sided", "less", "greater")
NAN_POLICIES = ("raise", "omit")
P_ADJUST_METHODS = ("holm", "bh", "bonferroni")
WILCOXON_METHODS = ("auto", "exact", "approx", "permutation")
ZERO_METHODS = ("wilcox", "pratt", "zsplit")
DIVERGED_POLICIES = ("keep", "drop_pair")


def choice(name: str, value, allowed: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise naming ``name``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {list(allowed)}; got {value!r} ({type(value).__name__})")
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}; got {value!r}")
    return value


def probability(name: str, value, *, open_interval: bool = True) -> float:
    """A float strictly inside (0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number in (0, 1); got {value!r} ({type(value).__name__})")
    v = float(value)
    if not (0.0 < v < 1.0) or not np.isfinite(v):
        raise ValueError(f"{name} must be in the open interval (0, 1); got {value!r}")
    return v


def positive(name: str, value, *, allow_none: bool = False) -> float | None:
    """A finite float > 0 (or ``None`` if allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive real number; got {value!r} ({type(value).__name__})")
    v = float(value)
    if not (np.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
    return v


def nonzero(name: str, value) -> float:
    """A finite float != 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a nonzero real number; got {value!r} ({type(value).__name__})")
    v = float(value)
    if not (np.isfinite(v) and v != 0):
        raise ValueError(f"{name} must be a finite nonzero number; got {value!r}")
    return v


def integer(name: str, value, *, minimum: int) -> int:
    """An int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}; got {value!r} ({type(value).__name__})")
    if int(value) < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")
    return int(value)


def boolean(name: str, value) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False; got {value!r} ({type(value).__name__})")
    return bool(value)


def margin(value) -> tuple[float, float] | None:
    """``None``, a positive number ``m`` (meaning ``(-m, m)``) or a pair ``(low, high)`` with low < 0 < high."""
    if value is None:
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        m = positive("margin", value)
        return (-m, m)
    if isinstance(value, Sequence) and len(value) == 2 and not isinstance(value, str):
        low, high = value
        for v in (low, high):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(v):
                raise TypeError(f"margin must be None, a number > 0, or a pair (low, high) of finite numbers; got {value!r}")
        if not (low < 0 < high):
            raise ValueError(f"margin=(low, high) must satisfy low < 0 < high; got {value!r}")
        return (float(low), float(high))
    raise TypeError(f"margin must be None, a number > 0, or a pair (low, high); got {value!r} ({type(value).__name__})")


def vector(name: str, value) -> np.ndarray:
    """A 1-D float64 array from a numeric array-like (bools are rejected); NaN allowed, inf not."""
    if isinstance(value, str | bytes):
        raise TypeError(f"{name} must be a 1-D numeric array-like; got a {type(value).__name__}")
    arr = np.asarray(value)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.number)):
        raise TypeError(f"{name} must be a 1-D numeric array-like; got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name} must be real-valued; got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {arr.shape}")
    if np.isinf(arr).any():
        raise ValueError(f"{name} contains infinite values at positions {np.flatnonzero(np.isinf(arr)).tolist()}")
    return arr


def pair_of_vectors(a, b, *, nan_policy: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate paired samples; return ``(a, b, n_omitted)`` after the NaN policy."""
    a = vector("a", a)
    b = vector("b", b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same length (paired by position); got {a.size} and {b.size}")
    choice("nan_policy", nan_policy, NAN_POLICIES)
    bad = np.isnan(a) | np.isnan(b)
    n_omitted = int(bad.sum())
    if n_omitted:
        if nan_policy == "raise":
            raise ValueError(
                f"a or b contains NaN at positions {np.flatnonzero(bad).tolist()}; "
                "pass nan_policy='omit' to drop those pairs"
            )
        a, b = a[~bad], b[~bad]
    if a.size < 2:
        raise ValueError(f"at least 2 pairs are needed; got n={a.size}" + (f" after omitting {n_omitted} NaN pairs" if n_omitted else ""))
    return a, b, n_omitted


def frame(name: str, value, columns: Sequence[str]) -> pd.DataFrame:
    """A DataFrame holding ``columns``."""
    if not isinstance(value, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame; got {type(value).__name__}")
    missing = [c for c in columns if c not in value.columns]
    if missing:
        raise ValueError(f"{name} is missing column(s) {missing}; it has {list(value.columns)}")
    return value


def column_names(name: str, value, available: Sequence[str]) -> list[str]:
    """``None`` -> ``[]``; a str or a list of str, each one of ``available``."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{name} must be a column name or a list of column names; got {value!r}")
    unknown = [v for v in value if v not in available]
    if unknown:
        raise ValueError(f"{name} names unknown column(s) {unknown}; available columns: {list(available)}")
    return list(value)


def level(name: str, value, levels: Sequence, column: str):
    if value not in set(levels):
        raise ValueError(f"{name}={value!r} is not a level of column {column!r}; levels present: {sorted(map(str, set(levels)))}")
    return value
