"""Streaming, exact, on-device per-channel activation moments.

A :class:`MomentAccumulator` keeps, per channel, the count ``n``, the mean and the central sums
``M_p = sum_i (x_i - mean)^p`` for ``p = 2, 3, 4`` (plus the count of exact zeros), all in float64 on
the device of the activations. Each ``update`` reduces one batch to those quantities (per-batch sums
in float32, float64 for float64 input, about the batch's own mean: see :func:`_central_sums`) and
merges them into the running state with the pairwise formulas of Chan, Golub & LeVeque and Pébay in
float64; raw power sums are never formed, so a large offset (``1e4 + N(0, 1)``) costs no precision.
A large batch on a CUDA device goes through the same arithmetic compiled into fused kernels
(:func:`_block_sums`, ``FUSED_CUDA``), which read each value twice instead of ~13 times.
Accuracy against scipy on the same values: ~1e-7 relative for float32 (and 16-bit) input, ~1e-13 for
float64. Nothing in ``update`` or ``merge`` reads a tensor value on the host (no ``.item()``, no
``.cpu()``, no ``if`` on a tensor), so the calls can sit inside a training step.
:func:`summarize` / :func:`summarize_many` are the only places a host transfer happens.

Moments are population moments (the ``bias=True`` estimators of scipy)::

    var    = M2 / n
    skew   = sqrt(n) * M3 / M2**1.5      == scipy.stats.skew(x, bias=True)
    exkurt = n * M4 / M2**2 - 3          == scipy.stats.kurtosis(x, fisher=True, bias=True)

A channel whose variance is zero (relative standard deviation ``sqrt(var) / |mean| <= 32 eps``,
``eps`` = float64 machine epsilon; scipy uses ``eps`` without the margin, which streaming merges of a
constant channel can exceed by a few ulps) has NaN ``skew`` and ``exkurt``; an empty accumulator has
``count == 0`` and NaN everywhere else. Neither raises nor warns.

Merge formulas
--------------
For two disjoint parts ``A`` and ``B`` with ``n = n_A + n_B`` and ``delta = mean_B - mean_A``
(Chan, Golub & LeVeque 1979, 1983 for ``M2``; Pébay 2008 for ``M3``, ``M4`` and arbitrary order)::

    mean = mean_A + delta * n_B / n
    M2   = M2_A + M2_B + delta**2 * n_A * n_B / n
    M3   = M3_A + M3_B + delta**3 * n_A * n_B * (n_A - n_B) / n**2
                       + 3 * delta * (n_A * M2_B - n_B * M2_A) / n
    M4   = M4_A + M4_B + delta**4 * n_A * n_B * (n_A**2 - n_A * n_B + n_B**2) / n**3
                       + 6 * delta**2 * (n_A**2 * M2_B + n_B**2 * M2_A) / n**2
                       + 4 * delta * (n_A * M3_B - n_B * M3_A) / n

Pooling ``K`` parts at once (all channels of a layer, :meth:`MomentAccumulator.pooled`) applies the
same algebra to every part against the pooled mean ``mean = sum_k n_k mean_k / n``, with
``d_k = mean_k - mean``::

    M2 = sum_k  M2_k + n_k d_k**2
    M3 = sum_k  M3_k + 3 d_k M2_k + n_k d_k**3
    M4 = sum_k  M4_k + 4 d_k M3_k + 6 d_k**2 M2_k + n_k d_k**4

which is the pairwise formula folded over the parts (Pébay 2008), vectorised over channels.

Layout
------
``channel_dim`` names the channel axis of the tensors given to ``update``; the axis just before it is
the batch (reduced, together with every axis after the channel), and the axes before the batch are
*group* axes that are kept, e.g. several seeds stacked along a leading axis: with ``channel_dim=2`` an
input ``[G, N, C, H, W]`` gives per-(group, channel) results of shape ``[G, C]``.

References
----------
T. F. Chan, G. H. Golub, R. J. LeVeque (1979). Updating formulae and a pairwise algorithm for
computing sample variances. Stanford CS report STAN-CS-79-773.
T. F. Chan, G. H. Golub, R. J. LeVeque (1983). Algorithms for computing the sample variance: analysis
and recommendations. The American Statistician 37(3), 242-247.
P. Pébay (2008). Formulas for robust, one-pass parallel computation of covariances and
arbitrary-order statistical moments. Sandia report SAND2008-6212.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["STAT_NAMES", "SUMMARY_KEYS", "MomentAccumulator", "MomentResult", "summarize", "summarize_many"]

STAT_NAMES = ("count", "mean", "var", "skew", "exkurt", "frac_zero")
"""Keys of a :class:`MomentResult`, in order."""

SUMMARY_KEYS = (
    "count",
    "n_channels",
    "n_nan_channels",
    "mean",
    "var",
    "skew",
    "exkurt",
    "frac_zero",
    "pooled_mean",
    "pooled_var",
    "pooled_skew",
    "pooled_exkurt",
    "pooled_frac_zero",
)
"""Keys of the dicts returned by :func:`summarize`, in order."""

_F64 = torch.float64
_STATS = ("mean", "var", "skew", "exkurt", "frac_zero")
# Zero variance: var <= (_ZERO_VAR_RTOL * mean)**2 (scipy's test, eps, with a margin for merges).
_ZERO_VAR_RTOL = 32.0 * torch.finfo(_F64).eps


@dataclass(frozen=True, eq=False)
class MomentResult(Mapping):
    """Per-channel population moments; a frozen dataclass that also reads as a mapping.

    ``result["skew"]`` and ``result.skew`` are the same float64 tensor of shape ``[*groups, C]``
    (``[C]`` for the default layout). Iterating yields the keys of :data:`STAT_NAMES`.

    Attributes
    ----------
    count : number of values per channel.
    mean, var : population mean and variance (``M2 / n``).
    skew : ``sqrt(n) M3 / M2**1.5`` (``scipy.stats.skew(bias=True)``); NaN at zero variance.
    exkurt : ``n M4 / M2**2 - 3`` (``scipy.stats.kurtosis(fisher=True, bias=True)``); NaN at zero variance.
    frac_zero : fraction of values exactly equal to zero (``-0.0`` included, NaN not).
    pooled : the same statistics with all channels pooled into one distribution (shape ``[*groups]``),
        or ``None`` on a result that is itself pooled. Not one of the mapping's keys.
    """

    count: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor
    skew: torch.Tensor
    exkurt: torch.Tensor
    frac_zero: torch.Tensor
    pooled: MomentResult | None = field(default=None, repr=False)

    __eq__ = object.__eq__  # Mapping's value comparison would be ambiguous on tensors
    __hash__ = object.__hash__

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in STAT_NAMES:
            raise KeyError(f"{key!r} is not a moment statistic; valid keys: {', '.join(STAT_NAMES)}")
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(STAT_NAMES)

    def __len__(self) -> int:
        return len(STAT_NAMES)

    def to_dict(self) -> dict[str, torch.Tensor]:
        """The six statistics as a plain ``dict`` of tensors (``pooled`` left out)."""
        return {k: getattr(self, k) for k in STAT_NAMES}


def _combine(na, mean_a, m2a, m3a, m4a, nb, mean_b, m2b, m3b, m4b):
    """Pébay's pairwise update of ``(n, mean, M2, M3, M4)``; ``nb`` may be a Python number.

    Written so that merging into an empty part (``n_A = 0``, ``mean_A = 0``) returns ``B`` exactly and
    two empty parts give an empty part (no 0/0).
    """
    n = na + nb
    n_safe = n.clamp_min(1.0)
    delta = mean_b - mean_a
    mean = mean_a + delta * (nb / n_safe)  # nb / n is exactly 1 when na == 0
    dn = delta / n_safe
    dn2 = dn * dn
    nanb = na * nb
    t2 = nanb * delta * dn  # delta^2 na nb / n
    m2 = m2a + m2b + t2
    m3 = m3a + m3b + t2 * dn * (na - nb) + 3.0 * dn * (na * m2b - nb * m2a)
    m4 = (
        m4a
        + m4b
        + t2 * dn2 * (na * na - nanb + nb * nb)
        + 6.0 * dn2 * (na * na * m2b + nb * nb * m2a)
        + 4.0 * dn * (na * m3b - nb * m3a)
    )
    return n, mean, m2, m3, m4


def _statistics(n, mean, m2, m3, m4, zeros, xp=torch) -> dict:
    """Central sums to population statistics, NaN where undefined, without warnings.

    Written for torch tensors (``xp=torch``) and numpy arrays (``xp=numpy``) alike: summaries of
    CPU accumulators are computed in numpy, whose small ops cost a fraction of torch's.
    """
    nan = math.nan
    empty = n == 0
    n1 = n.clip(1.0)
    var = m2 / n1
    degenerate = empty | (var <= (_ZERO_VAR_RTOL * mean) ** 2)
    m2_safe = xp.where(degenerate, 1.0, m2)
    return {
        "count": n,
        "mean": xp.where(empty, nan, mean),
        "var": xp.where(empty, nan, var),
        "skew": xp.where(degenerate, nan, xp.sqrt(n) * m3 / (m2_safe * xp.sqrt(m2_safe))),  # not **1.5: slow
        "exkurt": xp.where(degenerate, nan, n * m4 / (m2_safe * m2_safe) - 3.0),
        "frac_zero": xp.where(empty, nan, zeros / n1),
    }


def _finish(n, mean, m2, m3, m4, zeros) -> MomentResult:
    """Turn central sums (torch tensors) into a :class:`MomentResult`."""
    return MomentResult(**_statistics(n, mean, m2, m3, m4, zeros))


def _pool(state) -> tuple:
    """Fold the per-channel parts of ``state`` (n, mean, M2, M3, M4, zeros; channels on the last axis,
    torch tensors or numpy arrays) into one part per group. An empty channel has n = mean = M_p = 0 and
    so adds nothing.
    """
    n_c, mean_c, m2_c, m3_c, m4_c, z_c = state
    n = n_c.sum(-1)
    mean = (n_c * mean_c).sum(-1) / n.clip(1.0)
    d = mean_c - mean[..., None]
    d2 = d * d
    m2 = (m2_c + n_c * d2).sum(-1)
    m3 = (m3_c + 3.0 * d * m2_c + n_c * d2 * d).sum(-1)
    m4 = (m4_c + 4.0 * d * m3_c + 6.0 * d2 * m2_c + n_c * d2 * d2).sum(-1)
    return n, mean, m2, m3, m4, z_c.sum(-1)


# Values per piece of a batch. CPU: its two buffers (see _workspace) stay in the last-level cache.
# GPU: a launch costs ~5 us whatever its size, so pieces are large (a 64-seed stack's site tensor of
# ~5e8 values in ~8 pieces, not ~1000); two 256 MB buffers are small beside such activations.
_PIECE = 2**19
_PIECE_GPU = 2**26


_WORKSPACE = threading.local()


def _workspace(size: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Two buffers of at least ``size`` values, kept per thread, dtype and device between calls.

    A fresh megabyte-sized allocation is a fresh mapping: its page faults cost more than the
    arithmetic done in it. Each buffer holds a piece (``_PIECE`` values, 2 MB in float32, on a CPU;
    ``_PIECE_GPU`` on a GPU), more only when a single channel of one batch is larger.
    """
    cache = _WORKSPACE.__dict__.setdefault("buffers", {})
    key = (dtype, device)
    bufs = cache.get(key)
    if bufs is None or bufs[0].numel() < size:
        bufs = cache[key] = (torch.empty(size, dtype=dtype, device=device),
                             torch.empty(size, dtype=dtype, device=device))
    return bufs[0][:size], bufs[1][:size]


def _central_sums(parts: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Per-(group, channel) mean, ``M2``, ``M3``, ``M4`` and zero count of a batch, float64, ``[G * C]``.

    ``parts`` holds one ``[N, C, S]`` tensor per group. Pieces of at most ``_PIECE`` (GPU: ``_PIECE_GPU``) values are copied
    into one reused buffer (float32, or float64 for float64 input) and reduced there, per channel:
    shifted by one of the channel's values (so a constant channel's deviations are exactly zero), then
    by the mean of what is left, giving deviations ``d`` and their sums ``S_p``. The float64 central
    sums follow exactly, with ``delta = S1 / m`` (only a rounding error is left to remove)::

        M2 = S2 - delta S1,  M3 = S3 - 3 delta S2 + 2 m delta^3,
        M4 = S4 - 4 delta S3 + 6 delta^2 S2 - 3 m delta^4

    Nothing cancels: these are central moments, not raw power sums. Error: the buffer's rounding of
    the deviations and of ``S_p`` (relative ~1e-7 in float32, more when the channel's first value is far
    out in a heavy tail).
    """
    n, c, s = parts[0].shape
    m = n * s
    dtype = _F64 if parts[0].dtype == _F64 else torch.float32
    dev = parts[0].device
    count_dtype = dtype if m < 2**24 else _F64  # a float sum of ones is exact below 2**24
    piece = _PIECE if dev.type == "cpu" else _PIECE_GPU
    if m * c <= piece:  # whole groups per piece
        k = max(1, piece // (m * c))
        pieces = [(parts[i : i + k], 0, c) for i in range(0, len(parts), k)]
    else:  # a big group: slices of its channels
        kc = max(1, piece // m)
        pieces = [([p], c0, min(c, c0 + kc)) for p in parts for c0 in range(0, c, kc)]
    buf, sq = _workspace(max(len(ps) * (c1 - c0) * m for ps, c0, c1 in pieces), dtype, dev)

    def total(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:  # [k, N, C, S] -> [k, C]
        t = t.sum(1, dtype=dtype)
        return t.squeeze(-1) if s == 1 else t.sum(-1)

    def per_value(t: torch.Tensor) -> torch.Tensor:  # [k, C] -> [k, 1, C, S]
        k, cs = t.shape
        t = t.view(k, 1, cs, 1)  # broadcast over N only: along a short S axis it is not vectorised
        return t if s == 1 else t.expand(k, 1, cs, s).contiguous()

    sums = []  # per piece: [7, k * C] = first, c2, S1..S4, zeros
    for ps, c0, c1 in pieces:
        k, cs = len(ps), c1 - c0
        used = k * n * cs * s
        # Layout [k, N, C, S] as given: sums over N run along contiguous memory (no transposed copy),
        # then the small [k, C, S] results over S. Few ops: at these sizes each costs more than its
        # arithmetic.
        y = buf[:used].view(k, n, cs, s)
        if cs == c:
            torch.stack(ps, out=y)
        else:
            y[0].copy_(ps[0][:, c0:c1])
        d2 = sq[:used].view(y.shape)
        zeros = total(torch.ne(y, 0, out=d2), count_dtype)  # nonzeros (NaN != 0)
        # Shift by a value of the channel (exact zeros for a constant channel), then by the mean of the rest.
        first = y[:, 0, :, 0].clone()
        c2 = total(y.sub_(per_value(first))).div_(m)
        d = y.sub_(per_value(c2))
        torch.mul(d, d, out=d2)
        s1, s2 = total(d), total(d2)
        s3, s4 = total(d.mul_(d2)), total(d2.square_())
        sums.append(torch.stack([first, c2, s1, s2, s3, s4, m - zeros]).view(7, -1))
    return _from_shifted(*(torch.cat(sums, 1).to(_F64) if len(sums) > 1 else sums[0].to(_F64)), m)


def _from_shifted(first, c2, s1, s2, s3, s4, zeros, m):
    """float64 ``mean, M2, M3, M4, zeros`` from the sums ``S_p`` of the deviations ``d`` left after the
    two shifts (``first``, then ``c2``), ``m`` values per channel (formulas: :func:`_central_sums`)."""
    delta = s1 / m  # what is left of the mean after the shifts: a rounding error
    mean = first + c2 + delta
    m2 = torch.addcmul(s2, delta, s1, value=-1.0)
    d2m = m * delta * delta
    m3 = s3 - delta * (3.0 * s2 - 2.0 * d2m)
    m4 = s4 - delta * (4.0 * s3 - 6.0 * delta * s2 + 3.0 * d2m * delta)
    return mean, m2, m3, m4, zeros


def _block_sums(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What :func:`_central_sums` computes, for one ``[G, N, C, S]`` block, written as one expression
    for ``torch.compile`` (:func:`_fused`): the same shifts, deviations (float32, float64 for float64
    input) and formulas, but the compiled kernels read each value twice (shift, then the sums of ``d``,
    ``d^2``, ``d^3``, ``d^4`` and the zero count) instead of making ~13 passes through memory, and they
    accumulate the sums in float64 (free in a kernel bound by memory; a float32 accumulator loses
    ~1e-5 over the 5e5 values of a stacked CNN's channel). Returns ``[G, C]`` float64 tensors."""
    m = x.shape[1] * x.shape[3]
    y = x.to(_F64 if x.dtype == _F64 else torch.float32)
    first = y[:, :1, :, :1]
    c2 = ((y - first).sum((1, 3), keepdim=True, dtype=_F64) / m).to(y.dtype)
    d = y - first - c2
    d2 = d * d
    s1, s2, s3, s4 = (t.sum((1, 3), dtype=_F64) for t in (d, d2, d2 * d, d2 * d2))
    zeros = m - (x != 0).sum((1, 3)).to(_F64)  # NaN != 0
    return _from_shifted(first[:, 0, :, 0].to(_F64), c2[:, 0, :, 0].to(_F64), s1, s2, s3, s4, zeros, m)


# On CUDA, a batch of at least this many values is reduced by the compiled :func:`_block_sums`
# (Triton kernels: 2 reads of each value instead of ~13 float32 passes, ~20 with the copies; 4-5x
# faster on an H100, benchmarks/README.md). It compiles once per process, input dtype and a few shape
# variants (dynamic shapes: 12-16 s the first time, ~3 s for a later variant; cached on disk by
# Inductor), so small batches, whose eager reduction costs mostly launches, never pay for it.
# ``FUSED_CUDA = False`` reduces everything eagerly (the bench's comparison); on CPUs it is never used
# (compiling takes ~20 s per process, more than the eager passes of a whole small run).
FUSED_CUDA = True
_FUSED_MIN = 2**24
_FUSED_DEVICES = frozenset({"cuda"})
# Variants it may compile in one process (dtypes x size-1 axes, which dynamo specialises) before it
# gives up; dynamo's default (8) is shared with the whole program, so it is raised for these calls only.
_FUSED_VARIANTS = 64


@functools.cache
def _fused():
    """The compiled :func:`_block_sums`, made on first use."""
    return torch.compile(_block_sums, dynamic=True, fullgraph=True)


def _batch_sums(blocks: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Per-(group, channel) float64 ``mean, M2, M3, M4, zeros`` (``[G * C]``, groups in order) of a
    batch given as ``[G_i, N, C, S]`` (or ``[N, C, S]``: one group) blocks: compiled and fused on a
    large CUDA batch, else eager."""
    global FUSED_CUDA
    if FUSED_CUDA and blocks[0].device.type in _FUSED_DEVICES and sum(b.numel() for b in blocks) >= _FUSED_MIN:
        try:
            import torch._dynamo  # noqa: F401  (loaded by the first compile anyway)

            with warnings.catch_warnings(), torch._dynamo.config.patch(recompile_limit=_FUSED_VARIANTS):
                warnings.simplefilter("ignore", DeprecationWarning)  # Inductor's, when it compiles
                outs = [_fused()(b if b.dim() == 4 else b[None]) for b in blocks]
        except Exception as e:  # no Triton / no compiler: say so once, then reduce eagerly
            warnings.warn(f"bnstats.moments: the compiled reduction failed ({type(e).__name__}: {e}); "
                          "reducing eagerly from now on", RuntimeWarning, stacklevel=2)
            FUSED_CUDA = False
        else:
            return tuple(torch.cat(t).reshape(-1) if len(t) > 1 else t[0].reshape(-1) for t in zip(*outs, strict=True))
    return _central_sums([p for b in blocks for p in (b.unbind(0) if b.dim() == 4 else (b,))])


def _split_groups(x: torch.Tensor, cd: int, what: str) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``[*groups, N, C, *spatial]`` (channel axis ``cd``) -> a ``[G, N, C, S]`` view (``G`` = the
    groups flattened), and the per-channel shape ``(*groups, C)``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{what} must have a floating dtype (float16, bfloat16, float32, float64), got {x.dtype}"
        )
    if x.dim() <= cd:
        raise ValueError(
            f"{what} must have at least {cd + 1} dims ([*groups, N, C, ...] with channel_dim={cd}), "
            f"got shape {tuple(x.shape)}"
        )
    groups = tuple(x.shape[: cd - 1])
    n, c = x.shape[cd - 1], x.shape[cd]
    xg = x.reshape(math.prod(groups), n, c, math.prod(x.shape[cd + 1 :]))  # a view for contiguous input
    return xg, (*groups, c)


class MomentAccumulator:
    """Streaming per-channel moments (count, mean, M2, M3, M4, zeros) in float64 on the device.

    Parameters
    ----------
    channel_dim : int, default 1
        Axis of the channels in the tensors given to :meth:`update`. The axis before it is the batch;
        axes before the batch are group axes kept in the result (``channel_dim=2`` with inputs
        ``[G, N, C, ...]`` gives results of shape ``[G, C]``). Must be ``>= 1``.

    Notes
    -----
    The state is allocated on the first :meth:`update` (shape ``[*groups, C]``, float64, on the input's
    device). ``update`` and ``merge`` never synchronise with the host. See the module docstring for
    the formulas and references (Chan, Golub & LeVeque 1979/1983; Pébay 2008).
    """

    __slots__ = ("channel_dim", "_n", "_mean", "_m2", "_m3", "_m4", "_zeros")

    def __init__(self, channel_dim: int = 1) -> None:
        if isinstance(channel_dim, bool) or not isinstance(channel_dim, int):
            raise TypeError(
                f"channel_dim must be an int >= 1, got {type(channel_dim).__name__} {channel_dim!r}"
            )
        if channel_dim < 1:
            raise ValueError(
                f"channel_dim must be >= 1 (axis channel_dim - 1 is the batch), got {channel_dim}"
            )
        self.channel_dim = channel_dim
        self._n: torch.Tensor | None = None
        self._mean = self._m2 = self._m3 = self._m4 = self._zeros = None

    # ------------------------------------------------------------------ state
    @property
    def shape(self) -> tuple[int, ...] | None:
        """``(*groups, C)`` once the first batch has been seen, else ``None``."""
        return None if self._n is None else tuple(self._n.shape)

    @property
    def device(self) -> torch.device | None:
        return None if self._n is None else self._n.device

    def _state(self) -> tuple[torch.Tensor, ...]:
        return (self._n, self._mean, self._m2, self._m3, self._m4, self._zeros)

    def _allocate(self, shape: tuple[int, ...], device: torch.device) -> None:
        self._n, self._mean, self._m2, self._m3, self._m4, self._zeros = (
            torch.zeros(shape, dtype=_F64, device=device) for _ in range(6)
        )

    def _check_compatible(self, shape: tuple[int, ...], device: torch.device, what: str) -> None:
        if tuple(shape) != self.shape:
            raise ValueError(
                f"{what} has per-channel shape (*groups, C) = {tuple(shape)}, but this accumulator holds "
                f"{self.shape}"
            )
        if device != self.device:
            raise ValueError(f"{what} is on {device}, but this accumulator's state is on {self.device}")

    def _assign(self, n, mean, m2, m3, m4, zeros) -> None:
        for dst, src in zip(self._state(), (n, mean, m2, m3, m4, zeros), strict=True):
            dst.copy_(src)

    def reset(self) -> MomentAccumulator:
        """Zero the state in place (shape and device kept); returns ``self``."""
        if self._n is not None:
            for t in self._state():
                t.zero_()
        return self

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        """The raw state: ``n, mean, m2, m3, m4, zeros`` (float64 tensors) and ``channel_dim``."""
        if self._n is None:
            return {"channel_dim": self.channel_dim}
        names = ("n", "mean", "m2", "m3", "m4", "zeros")
        return {
            "channel_dim": self.channel_dim,
            **{k: v.clone() for k, v in zip(names, self._state(), strict=True)},
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor | int]) -> MomentAccumulator:
        """Inverse of :meth:`state_dict`."""
        acc = cls(channel_dim=int(state["channel_dim"]))
        if "n" in state:
            n = state["n"]
            acc._allocate(tuple(n.shape), n.device)
            acc._assign(*(state[k] for k in ("n", "mean", "m2", "m3", "m4", "zeros")))
        return acc

    # ------------------------------------------------------------------ updates
    def update(self, x: torch.Tensor) -> MomentAccumulator:
        """Add one batch ``x`` (``[*groups, N, C, *spatial]``, any float dtype, any device); returns ``self``.

        Cost: about thirteen passes over ``x`` in float32 (float64 for float64 input), in cache-sized
        pieces, plus ~40 small ops on ``[*groups, C]`` tensors; a large batch on a CUDA device is read
        twice by compiled kernels instead (see ``FUSED_CUDA``). No host synchronisation.
        """
        block, shape = _split_groups(x, self.channel_dim, "x")
        self._add_batch([block], shape, x.device)
        return self

    @classmethod
    def from_tensors(cls, tensors: Sequence[torch.Tensor], channel_dim: int = 1) -> MomentAccumulator:
        """Moments of each of ``tensors`` (same shape, dtype and device), grouped along a new leading axis.

        Equals ``MomentAccumulator(channel_dim + 1).update(torch.stack(tensors))`` without
        materialising the stack (the recorder of a training loop hands over many site tensors at once).
        """
        cls(channel_dim)  # validates channel_dim
        tensors = list(tensors)
        if not tensors:
            raise ValueError("from_tensors needs at least one tensor")
        t0 = tensors[0]
        block, shape = _split_groups(t0, channel_dim, "tensors[0]")
        view = block.shape  # [groups, N, C, S]
        if view[0] == 1:  # one group per tensor (a training loop's sites): [N, C, S] parts, no unbind
            view, block = view[1:], block[0]
        blocks = [block]
        for i, t in enumerate(tensors[1:], 1):  # checked against the first: cheap for many tensors
            if not isinstance(t, torch.Tensor) or t.shape != t0.shape or t.dtype != t0.dtype or t.device != t0.device:
                _split_groups(t, channel_dim, f"tensors[{i}]")  # a type or dtype problem says so
                raise ValueError(
                    f"tensors must share shape, dtype and device: tensors[0] is {tuple(t0.shape)} "
                    f"{t0.dtype} {t0.device}, tensors[{i}] is {tuple(t.shape)} {t.dtype} {t.device}"
                )
            blocks.append(t.reshape(view))
        acc = cls(channel_dim=channel_dim + 1)
        acc._add_batch(blocks, (len(tensors), *shape), t0.device)
        return acc

    def _add_batch(self, blocks: list[torch.Tensor], shape: tuple[int, ...], device: torch.device) -> None:
        """Merge one batch given as ``[G_i, N, C, S]`` blocks, or ``[N, C, S]`` for one group (their
        groups: ``shape[:-1]`` flattened)."""
        fresh = self._n is None
        if not fresh:
            self._check_compatible(shape, device, "x")
        m = blocks[0].shape[-3] * blocks[0].shape[-1]
        if m == 0 or shape[-1] == 0:  # an empty batch (a shape, not a tensor value: no sync) adds nothing
            if fresh:
                self._allocate(shape, device)
            return
        mean_b, m2b, m3b, m4b, zeros_b = (t.view(shape) for t in _batch_sums(blocks))
        if fresh:  # known on the host: the batch is the state (fresh tensors, ours)
            n = torch.full(shape, float(m), dtype=_F64, device=device)
            self._n, self._mean, self._m2, self._m3, self._m4, self._zeros = n, mean_b, m2b, m3b, m4b, zeros_b
            return
        n, mean, m2, m3, m4 = _combine(
            self._n, self._mean, self._m2, self._m3, self._m4, float(m), mean_b, m2b, m3b, m4b
        )
        self._assign(n, mean, m2, m3, m4, self._zeros + zeros_b)

    def merge(self, other: MomentAccumulator) -> MomentAccumulator:
        """Merge ``other`` into ``self`` in place (Pébay's pairwise formulas); returns ``self``.

        ``a.merge(b)`` and ``b.merge(a)`` agree up to rounding. ``other`` is unchanged. An accumulator that
        has not seen data merges as the identity from either side.
        """
        if not isinstance(other, MomentAccumulator):
            raise TypeError(f"other must be a MomentAccumulator, got {type(other).__name__}")
        if other.channel_dim != self.channel_dim:
            raise ValueError(
                f"cannot merge accumulators with channel_dim {self.channel_dim} and {other.channel_dim}"
            )
        if other._n is None:
            return self
        if self._n is None:
            self._allocate(other.shape, other.device)
            self._assign(*other._state())
            return self
        self._check_compatible(other.shape, other.device, "other")
        n, mean, m2, m3, m4 = _combine(*self._state()[:5], *other._state()[:5])
        self._assign(n, mean, m2, m3, m4, self._zeros + other._zeros)
        return self

    # ------------------------------------------------------------------ results
    def _pooled_state(self) -> tuple[torch.Tensor, ...]:
        """All channels folded into one part per group (vectorised K-way Pébay update)."""
        return _pool(self._state())

    def pooled(self) -> MomentResult:
        """Statistics of all channels pooled into one distribution: 0-d tensors (``[*groups]`` if grouped).

        An accumulator that has seen no data gives 0-d tensors with ``count == 0`` and NaN statistics.
        """
        if self._n is None:
            return _empty_result()
        return _finish(*self._pooled_state())

    def result(self) -> MomentResult:
        """Per-channel statistics (shape ``[*groups, C]``), with ``.pooled`` attached.

        An accumulator that has seen no data (shape unknown) gives 0-d tensors with ``count == 0`` and NaN
        statistics; after :meth:`reset` the per-channel shape is kept.
        """
        if self._n is None:
            return _empty_result(with_pooled=True)
        per_channel = _finish(*self._state())
        return MomentResult(**per_channel.to_dict(), pooled=_finish(*self._pooled_state()))

    def __repr__(self) -> str:
        return f"MomentAccumulator(channel_dim={self.channel_dim}, shape={self.shape}, device={self.device})"


def _empty_result(with_pooled: bool = False) -> MomentResult:
    z = torch.zeros((), dtype=_F64)
    res = _finish(z, z, z, z, z, z)
    if with_pooled:
        res = MomentResult(**res.to_dict(), pooled=res)
    return res


# ---------------------------------------------------------------------- summaries
def _summary_table(accs: list[MomentAccumulator], xp=None) -> np.ndarray | torch.Tensor:
    """``[groups of all accs, len(SUMMARY_KEYS)]`` float64; the accs share device and channel count.

    The groups of all accumulators are stacked into one ``[G, C]`` state and reduced together (a fixed
    number of ops whatever the number of sites: small ops cost more than their arithmetic here). On a
    GPU this runs there (a tensor); CPU states are read in place by numpy (an array).
    """
    c = accs[0].shape[-1]
    if xp is None:
        xp = np if accs[0].device.type == "cpu" else torch
    if xp is np:  # numpy's concatenate and small ops cost a fraction of torch's
        state = [np.concatenate([a._state()[j].reshape(-1, c).numpy() for a in accs]) for j in range(6)]
    else:
        state = [torch.cat([a._state()[j].reshape(-1, c) for a in accs]) for j in range(6)]
    with np.errstate(all="ignore"):  # NaN from NaN data or 0/0 is the answer, not a problem
        per_ch = _statistics(*state, xp=xp)
        pooled = _statistics(*_pool(state), xp=xp)
        nan_any = None  # [G, C]: a channel with any NaN statistic
        nanmeans = []
        for k in _STATS:
            nan = xp.isnan(per_ch[k])
            nan_any = nan if nan_any is None else nan_any | nan
            nanmeans.append(xp.where(nan, 0.0, per_ch[k]).sum(-1) / (~nan).sum(-1))  # all NaN: 0/0 = NaN
        count = state[0][:, 0]  # the same for every channel of a group
        table = xp.stack(
            [count, count * 0.0 + c, nan_any.sum(-1) + count * 0.0, *nanmeans, *(pooled[k] for k in _STATS)], 1
        )
    return table


def summarize_many(accs: Sequence[MomentAccumulator]) -> list[dict[str, float | list[float]]]:
    """:func:`summarize` for many accumulators at once: vectorised, one host transfer per device.

    Returns one dict per accumulator, in order, each with the keys of :data:`SUMMARY_KEYS`.
    """
    accs = list(accs)
    for a in accs:
        if not isinstance(a, MomentAccumulator):
            raise TypeError(f"summarize needs MomentAccumulators, got {type(a).__name__}")
    by_device: dict[torch.device, dict[int, list[int]]] = {}  # device -> channels -> accumulators
    for i, a in enumerate(accs):
        if a.shape is not None and a.shape[-1] > 0:
            by_device.setdefault(a.device, {}).setdefault(a.shape[-1], []).append(i)
    tables: dict[int, np.ndarray] = {}  # accumulator index -> [groups, len(SUMMARY_KEYS)] on the host
    for buckets in by_device.values():
        parts = [_summary_table([accs[i] for i in idx]) for idx in buckets.values()]
        table = np.concatenate(parts) if isinstance(parts[0], np.ndarray) else torch.cat(parts).cpu().numpy()
        start = 0
        for i in (i for idx in buckets.values() for i in idx):
            g = math.prod(accs[i].shape[:-1])
            tables[i], start = table[start : start + g], start + g
    out = []
    for i, a in enumerate(accs):
        group_shape = () if a.shape is None else a.shape[:-1]
        table = tables.get(i)
        if table is None:  # no data seen, or no channels
            table = np.full((max(1, math.prod(group_shape)), len(SUMMARY_KEYS)), math.nan)
            table[:, :3] = 0.0
        cols = table.T.tolist()
        d: dict[str, float | list[float]] = {}
        for j, k in enumerate(SUMMARY_KEYS):
            d[k] = cols[j][0] if group_shape == () else cols[j]
        for k in ("count", "n_channels", "n_nan_channels"):
            d[k] = int(d[k]) if isinstance(d[k], float) else [int(v) for v in d[k]]
        out.append(d)
    return out


def summarize(acc: MomentAccumulator) -> dict[str, float | int | list]:
    """Per-layer summary of one accumulator as a plain dict of Python numbers (one host transfer).

    Keys (:data:`SUMMARY_KEYS`):

    - ``count`` (int): values per channel; ``n_channels`` (int); ``n_nan_channels`` (int): channels with
      any NaN statistic (zero variance, or NaN/inf data);
    - ``mean``, ``var``, ``skew``, ``exkurt``, ``frac_zero``: the mean over channels of the per-channel
      statistic, NaN channels left out (``nanmean``; NaN when every channel is NaN);
    - ``pooled_mean``, ``pooled_var``, ``pooled_skew``, ``pooled_exkurt``, ``pooled_frac_zero``: the
      statistics of all channels pooled into one distribution (:meth:`MomentAccumulator.pooled`).

    For a grouped layout (``channel_dim >= 2``) every value is a list with one entry per group (group
    axes flattened in C order), so ``pandas.DataFrame(summary)`` has one row per group.
    """
    return summarize_many([acc])[0]


# ---------------------------------------------------------------------- recording sites of a model
#
# A model's *sites* are the inputs and outputs of its norm and activation modules: ``norm_in``,
# ``norm_out``, ``act_in``, ``act_out``. A *layer* is a norm/activation pair (a ``models.Block``, a
# ``bnstats.nn.NormAct``, or a norm and an activation that feed each other directly), or a norm or an
# activation on its own; layers are numbered in forward order. Sites are read by forward hooks, so
# any ``nn.Module`` can be recorded, and a module called twice in one pass (a shared ``nn.ReLU``) gives
# one site per call.

NORM_TYPES = (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm, torch.nn.GroupNorm)
ACT_TYPES = (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.LeakyReLU, torch.nn.ELU, torch.nn.SELU, torch.nn.CELU,
             torch.nn.GELU, torch.nn.SiLU, torch.nn.Mish, torch.nn.Hardswish, torch.nn.Hardtanh,
             torch.nn.Tanh, torch.nn.Sigmoid, torch.nn.Softplus, torch.nn.PReLU)
SITE_NAMES = {"norm": ("norm_in", "norm_out"), "act": ("act_in", "act_out")}


@dataclass(frozen=True)
class SiteMap:
    """Where a model's sites are: ``(module, call)`` → ``(layer, kind)``, ``kind`` "norm" or "act",
    ``call`` counting the module's calls within one forward pass."""

    modules: tuple[torch.nn.Module, ...]
    layers: dict[tuple[int, int], tuple[int, str]]

    @property
    def n_layers(self) -> int:
        return len({layer for layer, _ in self.layers.values()})


def _kind(m: torch.nn.Module) -> str | None:
    return "norm" if isinstance(m, NORM_TYPES) else "act" if isinstance(m, ACT_TYPES) else None


def find_sites(model: torch.nn.Module, example: Callable[[], Any] | None = None) -> SiteMap:
    """The :class:`SiteMap` of ``model``.

    Layers are, first, the pairs the model declares, numbered in forward order: a ``models.Block`` (its
    ``index``) or a ``bnstats.nn.NormAct`` (a module with ``norm``, ``act`` and ``placement``), and the
    pairs ``bnstats.nn.place`` rewrote (its result's ``meta["bnstats.pairs"]``). Then every other norm or
    activation module, numbered after them in forward order, paired by the data it passes: a norm whose
    output object is an activation's input (``before``), or an activation whose output object is a norm's
    input (``after``); a residual added in place between them (``out += identity``) keeps the object, an
    out-of-place add does not (``place`` makes such pairs explicit). So the declared pairs carry the same
    numbers in every arm of a sweep, whatever order the placement puts their modules in. ``example()``
    runs one forward pass (in eval mode, without gradients) to see the order and the data. In bnstats'
    own models every pair is a block with its index, and only the blocks are sites (no pass is needed).
    """
    declared: dict[int, tuple[Any, int | None]] = {}  # id(member) -> (its pair, the pair's index)
    owners: list[torch.nn.Module] = []
    for m in model.modules():
        if all(hasattr(m, a) for a in ("norm", "act", "placement")) and isinstance(m.act, torch.nn.Module):
            owners.append(m)
            for member in (m.norm, m.act):
                if member is not None:
                    declared[id(member)] = (m, getattr(m, "index", None))
    for i, pair in enumerate(getattr(model, "meta", {}).get("bnstats.pairs", ())):
        for path in (pair.norm, pair.activation):
            try:
                member = model.get_submodule(path)
            except AttributeError:  # placement "none" removed the norm
                continue
            declared.setdefault(id(member), (("placed", i), None))
    indexed = bool(declared) and all(index is not None for _, index in declared.values())
    if indexed:  # bnstats' models: the blocks, numbered in forward order (a shortcut's norm is no site)
        layers = {}
        modules = []
        for owner in sorted(owners, key=lambda b: b.index):
            for member, kind in ((owner.norm, "norm"), (owner.act, "act")):
                if member is not None:
                    layers[(id(member), 0)] = (owner.index, kind)
                    modules.append(member)
        return SiteMap(tuple(modules), layers)
    if example is None:
        raise ValueError("find_sites: this model's pairs are not numbered; pass example= to run one pass")
    calls: list[tuple[torch.nn.Module, int, int, int]] = []  # module, call, id(input), id(output)
    count: dict[int, int] = {}
    handles = []

    def hook(m, args, out):
        k = count.get(id(m), 0)
        count[id(m)] = k + 1
        x = args[0] if args else None
        calls.append((m, k, id(x), id(out)))

    candidates = [m for m in model.modules() if _kind(m) is not None]
    for m in candidates:
        handles.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            example()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    unit_of: dict[tuple[int, int], tuple[Any, str]] = {}  # (id, call) -> (unit key, kind)
    for i, (m, k, x_id, _) in enumerate(calls):
        kind = _kind(m)
        if id(m) in declared:
            owner = declared[id(m)][0]
            unit_of[(id(m), k)] = (("declared", id(owner) if isinstance(owner, torch.nn.Module) else owner, k), kind)
            continue
        unit = (id(m), k, i)
        for j in range(i - 1, -1, -1):  # the loose module of the other kind whose data this one continues
            pm, pk, px, py = calls[j]
            if _kind(pm) != kind and id(pm) not in declared and py == x_id and (id(pm), pk) in unit_of:
                other = unit_of[(id(pm), pk)][0]
                if sum(u == other for u, _ in unit_of.values()) == 1:  # not paired yet
                    unit = other
                break
        unit_of[(id(m), k)] = (unit, kind)
    order: dict[Any, int] = {}
    for first in (True, False):  # declared pairs first, then the others, each in forward order
        for m, k, _, _ in calls:
            unit = unit_of[(id(m), k)][0]
            if (unit[0] == "declared") == first:
                order.setdefault(unit, len(order))
    layers = {key: (order[unit], kind) for key, (unit, kind) in unit_of.items()}
    modules = tuple(dict.fromkeys(m for m, _, _, _ in calls))
    return SiteMap(modules, layers)


# Recorded site tensors are reduced to moment sums once they hold this many bytes (and before rows
# are made): small models batch several passes into a few large ops (each op costs ~5 us whatever its
# size), large ones reduce every pass or two, from the last-level cache rather than from memory, and
# no run holds more than this in activations.
REDUCE_BYTES = 4 * 2**20

# Within a pass, pending site tensors are reduced once they exceed this (a 64-seed stack's site tensor
# is 1-8 GB: each is reduced when the next arrives); small models wait for the pass's end (above).
PASS_BYTES = 64 * 2**20


class SiteRecorder:
    """Collects the site tensors of forward passes of ``model``; :meth:`rows` turns them into moment rows.

    Use :meth:`recording` around a forward pass: hooks on the modules of ``sites`` (:func:`find_sites`)
    hand each site tensor over as it is computed. Recorded tensors are reduced to per-channel moment
    sums, all tensors of one shape in one grouped update, once they reach ``REDUCE_BYTES`` and at
    :meth:`rows`, then dropped; only ``[tensors, C]`` float64 sums stay until :meth:`rows` summarises
    everything with one host transfer. When one tensor is two sites (``before``: ``norm_out`` is
    ``act_in``; ``after``: ``act_out`` is ``norm_in``) it is reduced once and reported for both.

    ``seeds > 1``: the model is a stack (``engine.StackedNet``) whose sites are packed ``[N, S*C, ...]``
    with seed-major channels; they are viewed as ``[S, N, C, ...]`` and reduced per seed
    (:meth:`seed_rows`). ``copy=True`` copies each site tensor when it is handed over: a model whose
    forward modifies tensors in place afterwards (``out += identity``, ``ReLU(inplace=True)``) would
    otherwise change what was recorded. bnstats' own models do not, and are recorded without copies.
    """

    def __init__(self, model: torch.nn.Module, sites: SiteMap, *, seeds: int = 1, copy: bool = False) -> None:
        self.model, self.sites, self.seeds, self.copy = model, sites, seeds, copy
        self.channel_dim = 1 if seeds == 1 else 2  # of the site tensors as reduced: [N, C, ...] / [S, N, C, ...]
        self.items: list[tuple[tuple, torch.Tensor]] = []  # ((keys, layer, site), tensor), not yet reduced
        self.nbytes = 0  # of self.items
        self.keys: dict[str, Any] = {}
        self._rows: int | None = None
        self._last: torch.Tensor | None = None  # the last tensor handed over (as given), for aliases
        self._last_version = 0
        self._calls: dict[int, int] = {}
        self._accs: list[MomentAccumulator] = []
        self._labels: list[tuple[tuple, int, int]] = []  # (keys, layer, site), accumulator, index in it

    @contextlib.contextmanager
    def recording(self, *, rows: int | None = None, **keys: Any) -> Iterator[None]:
        """Record the sites of the forward pass run inside the block, labelled with ``keys`` (epoch, step,
        source). ``rows``: record only the first ``rows`` inputs (the probe inside an evaluation batch)."""
        self.keys, self._rows, self._last, self._calls = keys, rows, None, {}
        handles = []
        for m in self.sites.modules:
            handles.append(m.register_forward_pre_hook(self._pre_hook))
            handles.append(m.register_forward_hook(self._hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()
        if self.nbytes >= REDUCE_BYTES:
            self.reduce()

    def _site(self, m: torch.nn.Module, which: int, x: Any, call: int) -> None:
        where = self.sites.layers.get((id(m), call))
        if where is None or not isinstance(x, torch.Tensor):
            return
        layer, kind = where
        self(layer, SITE_NAMES[kind][which], x)

    def _pre_hook(self, m: torch.nn.Module, args: tuple) -> None:
        call = self._calls.get(id(m), 0)
        self._site(m, 0, args[0] if args else None, call)

    def _hook(self, m: torch.nn.Module, args: tuple, out: Any) -> None:
        call = self._calls.get(id(m), 0)
        self._calls[id(m)] = call + 1
        self._site(m, 1, out, call)

    def __call__(self, layer: int, site: str, x: torch.Tensor) -> None:
        keys = (self.keys, layer, site)  # made a row's dict in rows(): most recordings never need one
        # One tensor as two sites, unmodified in between (an in-place op, e.g. ReLU(inplace=True), bumps
        # the tensor's version: its output is the same object with other values).
        if self._last is not None and x is self._last and x._version == self._last_version:
            self.items.append((keys, self.items[-1][1]))
            return
        if self.nbytes >= PASS_BYTES:  # no alias of the pending tensors can follow: reduce them now,
            self.reduce()              # so a large model's pass never holds all its site tensors
        t = x.detach() if self._rows is None else x.detach()[: self._rows]
        if self.copy:
            t = t.clone()
        if self.seeds > 1:  # packed [N, S*C, ...], seed-major -> [S, N, C, ...] (a view)
            n, sc = t.shape[:2]
            t = t.view(n, self.seeds, sc // self.seeds, *t.shape[2:]).transpose(0, 1)
        self.items.append((keys, t))
        self._last, self._last_version = x, x._version
        self.nbytes += t.numel() * t.element_size()

    def reduce(self) -> None:
        """Reduce the tensors recorded so far to moment sums and let them go."""
        members: dict[tuple, list[torch.Tensor]] = {}  # (shape, dtype, device) -> its tensors
        seen: dict[int, tuple[int, int]] = {}  # id(tensor) -> (group, index in it): aliases share it
        for keys, t in self.items:
            if id(t) not in seen:
                g = (tuple(t.shape), t.dtype, t.device)
                group = members.setdefault(g, [])
                seen[id(t)] = (list(members).index(g), len(group))
                group.append(t)
            a, i = seen[id(t)]
            self._labels.append((keys, len(self._accs) + a, i))
        self._accs += [MomentAccumulator.from_tensors(ts, channel_dim=self.channel_dim) for ts in members.values()]
        self.items, self._last, self.nbytes = [], None, 0

    @property
    def state_bytes(self) -> int:
        """Bytes held: site tensors not yet reduced and the moment sums of those that were."""
        return self.nbytes + sum(6 * 8 * math.prod(a.shape) for a in self._accs if a.shape is not None)

    def rows(self, per_channel: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Summary rows and per-channel rows of everything recorded (a model of one seed); then forget it."""
        return self.seed_rows(per_channel)[0]

    def seed_rows(self, per_channel: bool) -> list[tuple[list[dict], list[dict]]]:
        """For each seed, its summary rows and per-channel rows, in recording order; then forget
        everything."""
        seeds = self.seeds
        self.reduce()
        labels, accs = self._labels, self._accs
        self._labels, self._accs = [], []
        summaries = summarize_many(accs) if accs else []  # one host transfer
        # per accumulator: its summary as one tuple per group (tensor i, seed j: group i * seeds + j)
        columns = [(list(summ), list(zip(*summ.values(), strict=True))) for summ in summaries]
        results = ([{k: v.cpu().numpy().reshape(-1, v.shape[-1]) for k, v in a.result().items()} for a in accs]
                   if per_channel else None)  # per accumulator: [groups, C] arrays
        out: list[tuple[list[dict], list[dict]]] = [([], []) for _ in range(seeds)]
        for (keys, layer, site), a, i in labels:
            keys = {**keys, "layer": layer, "site": site}
            names, values = columns[a]
            for seed, (rows, channel_rows) in enumerate(out):
                g = i * seeds + seed
                rows.append({**keys, **dict(zip(names, values[g], strict=True))})
                if results is not None:
                    res = results[a]
                    channel_rows += [{**keys, "channel": c, **{k: float(v[g, c]) for k, v in res.items()}}
                                     for c in range(res["mean"].shape[-1])]
        return out


@contextlib.contextmanager
def record(model: torch.nn.Module, callback: Callable[[int, str, torch.Tensor], None],
           sites: SiteMap | None = None, example: Callable[[], Any] | None = None) -> Iterator[None]:
    """Within the block, every site of ``model`` is handed to ``callback(layer, site, tensor)`` as the
    forward pass computes it (for inspection and tests; training records through :class:`SiteRecorder`)."""
    sites = sites or find_sites(model, example)

    class _Callback(SiteRecorder):
        def __call__(self, layer: int, site: str, x: torch.Tensor) -> None:
            callback(layer, site, x)

    with _Callback(model, sites).recording():
        yield
