"""Streaming, exact, on-device per-channel activation moments.

A :class:`MomentAccumulator` keeps, per channel, the count ``n``, the mean and the central sums
``M_p = sum_i (x_i - mean)^p`` for ``p = 2, 3, 4`` (plus the count of exact zeros), all in float64 on
the device of the activations. Each ``update`` reduces one batch to those quantities and merges them
into the running state with the pairwise formulas of Chan, Golub & LeVeque and Pébay; raw power sums
are never formed, so a large offset (``1e4 + N(0, 1)``) costs no precision. Nothing in ``update`` or
``merge`` reads a tensor value on the host (no ``.item()``, no ``.cpu()``, no ``if`` on a tensor) and the
state is updated in place, so the calls can sit inside a training step, a CUDA graph included.
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

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

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


def _finish(n, mean, m2, m3, m4, zeros) -> MomentResult:
    """Turn central sums into population statistics (NaN where undefined, no warnings)."""
    nan = torch.full((), math.nan, dtype=_F64, device=n.device)
    empty = n == 0
    var = m2 / n.clamp_min(1.0)
    degenerate = empty | (var <= (_ZERO_VAR_RTOL * mean).square())
    m2_safe = torch.where(degenerate, 1.0, m2)
    skew = torch.where(degenerate, nan, n.sqrt() * m3 / (m2_safe * m2_safe.sqrt()))
    exkurt = torch.where(degenerate, nan, n * m4 / m2_safe.square() - 3.0)
    return MomentResult(
        count=n,
        mean=torch.where(empty, nan, mean),
        var=torch.where(empty, nan, var),
        skew=skew,
        exkurt=exkurt,
        frac_zero=torch.where(empty, nan, zeros / n.clamp_min(1.0)),
    )


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
    device) and afterwards modified in place only. ``update`` and ``merge`` never synchronise with the
    host. See the module docstring for the formulas and references (Chan, Golub & LeVeque 1979/1983;
    Pébay 2008).
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

        Cost: one float64 transposed copy of ``x``, one more float64 buffer and about nine passes over
        them, plus ~40 small ops on ``[*groups, C]`` tensors for the merge; no host synchronisation. The
        state is written in place, so after a first (allocating) call ``update`` can be captured in a
        CUDA graph.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(
                f"x must have a floating dtype (float16, bfloat16, float32, float64), got {x.dtype}"
            )
        cd = self.channel_dim
        if x.dim() <= cd:
            raise ValueError(
                f"x must have at least {cd + 1} dims ([*groups, N, C, ...] with channel_dim={cd}), "
                f"got shape {tuple(x.shape)}"
            )
        shape = tuple(x.shape[: cd - 1]) + (x.shape[cd],)
        m = x.shape[cd - 1] * math.prod(x.shape[cd + 1 :])  # values per (group, channel) in this batch
        if self._n is None:
            self._allocate(shape, x.device)
        else:
            self._check_compatible(shape, x.device, "x")
        if m == 0:  # an empty batch (a shape, not a tensor value: no sync) adds nothing
            return self
        # One copy (never an alias of x, which is modified below): channel axis moved before the batch,
        # cast to float64, made contiguous -> [*groups, C, M].
        y = x.movedim(cd, cd - 1).to(_F64, memory_format=torch.contiguous_format, copy=True).view(*shape, m)
        nb = float(m)
        sum_dtype = torch.int32 if m < 2**31 else torch.int64
        zeros_b = m - y.bool().sum(-1, dtype=sum_dtype)  # NaN counts as nonzero
        mean_b = y.mean(-1, keepdim=True)
        # In place where possible: two float64 buffers of x's size in all (allocations are not free).
        d = y.sub_(mean_b)  # y's buffer is ours: reuse it for the deviations
        d2 = d * d
        m2b = d2.sum(-1)
        m3b = d.mul_(d2).sum(-1)  # d now holds d**3
        m4b = d2.square_().sum(-1)
        n, mean, m2, m3, m4 = _combine(
            self._n, self._mean, self._m2, self._m3, self._m4, nb, mean_b.squeeze(-1), m2b, m3b, m4b
        )
        self._assign(n, mean, m2, m3, m4, self._zeros + zeros_b)
        return self

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
        n_c, mean_c, m2_c, m3_c, m4_c, z_c = self._state()
        n = n_c.sum(-1, keepdim=True)
        mean = (n_c * mean_c).sum(-1, keepdim=True) / n.clamp_min(1.0)
        d = mean_c - mean  # an empty channel has n = mean = M_p = 0 and so adds nothing
        d2 = d * d
        m2 = m2_c + n_c * d2
        m3 = m3_c + 3.0 * d * m2_c + n_c * d2 * d
        m4 = m4_c + 4.0 * d * m3_c + 6.0 * d2 * m2_c + n_c * d2 * d2
        return (n.squeeze(-1), mean.squeeze(-1), m2.sum(-1), m3.sum(-1), m4.sum(-1), z_c.sum(-1))

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
def _summary_tensors(obj: MomentAccumulator | MomentResult) -> dict[str, torch.Tensor]:
    """Per-layer summaries as float64 tensors of shape ``[*groups]`` (still on the device)."""
    if isinstance(obj, MomentAccumulator):
        res = obj.result()
    elif isinstance(obj, MomentResult):
        res = obj
        if res.pooled is None:
            raise ValueError(
                "summarize needs the pooled statistics: pass the MomentAccumulator or the result of its "
                ".result() (which carries .pooled), not a pooled result"
            )
    else:
        raise TypeError(f"expected a MomentAccumulator or MomentResult, got {type(obj).__name__}")
    per_ch = res.to_dict()
    if res.count.dim() == 0:  # never updated: no channels
        group_shape: tuple[int, ...] = ()
        n_channels = 0
    else:
        group_shape = tuple(res.count.shape[:-1])
        n_channels = res.count.shape[-1]
    stats = ("mean", "var", "skew", "exkurt", "frac_zero")
    dev = res.count.device
    out: dict[str, torch.Tensor] = {}
    if n_channels == 0:
        nan = torch.full(group_shape, math.nan, dtype=_F64, device=dev)
        out["count"] = torch.zeros(group_shape, dtype=_F64, device=dev)
        out["n_channels"] = torch.zeros(group_shape, dtype=_F64, device=dev)
        out["n_nan_channels"] = torch.zeros(group_shape, dtype=_F64, device=dev)
        for k in stats:
            out[k] = nan
    else:
        out["count"] = res.count.amax(-1)
        out["n_channels"] = torch.full(group_shape, float(n_channels), dtype=_F64, device=dev)
        any_nan = torch.stack([per_ch[k].isnan() for k in stats]).any(0)
        out["n_nan_channels"] = any_nan.sum(-1).to(_F64)
        for k in stats:
            out[k] = per_ch[k].nanmean(-1)
    for k in stats:
        out["pooled_" + k] = res.pooled[k]
    return {k: out[k] for k in SUMMARY_KEYS}


def summarize_many(objs: Sequence[MomentAccumulator | MomentResult]) -> list[dict[str, float | list[float]]]:
    """:func:`summarize` for many sites with one host transfer per device (stack, then ``.cpu()`` once).

    Returns one dict per input, in order, each with the keys of :data:`SUMMARY_KEYS`.
    """
    objs = list(objs)
    tensors = [_summary_tensors(o) for o in objs]
    # One flat float64 vector per device, holding every key of every site.
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    where: list[tuple[torch.device, int, int, tuple[int, ...]]] = []
    for summ in tensors:
        group_shape = tuple(summ["count"].shape)
        size = math.prod(group_shape)
        dev = summ["count"].device
        chunks = by_device.setdefault(dev, [])
        start = sum(c.numel() for c in chunks)
        chunks.extend(summ[k].reshape(-1) for k in SUMMARY_KEYS)
        where.append((dev, start, size, group_shape))
    host = {dev: torch.cat(chunks).cpu() for dev, chunks in by_device.items()}
    out = []
    for dev, start, size, group_shape in where:
        flat = host[dev]
        d: dict[str, float | list[float]] = {}
        for i, k in enumerate(SUMMARY_KEYS):
            vals = flat[start + i * size : start + (i + 1) * size].reshape(group_shape)
            d[k] = vals.item() if group_shape == () else vals.reshape(-1).tolist()
        for k in ("count", "n_channels", "n_nan_channels"):
            d[k] = int(d[k]) if isinstance(d[k], float) else [int(v) for v in d[k]]
        out.append(d)
    return out


def summarize(obj: MomentAccumulator | MomentResult) -> dict[str, float | int | list]:
    """Per-layer summary of one site as a plain dict of Python numbers (one host transfer).

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
    return summarize_many([obj])[0]
