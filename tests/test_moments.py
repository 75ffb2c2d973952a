"""Tests for bnstats.moments: streaming Chan/Pébay moments against scipy on the concatenated data.

Independent reference: scipy.stats.skew(bias=True), scipy.stats.kurtosis(fisher=True, bias=True),
np.mean, np.var (two-pass float64) on the same values the accumulator saw (after rounding to the
input dtype), channel by channel.
"""

from __future__ import annotations

import math
import warnings

import hypothesis.strategies as st
import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings

import bnstats.moments as moments_mod
from bnstats.moments import (
    STAT_NAMES,
    SUMMARY_KEYS,
    MomentAccumulator,
    MomentResult,
    summarize,
    summarize_many,
)

SHAPES = {  # spatial part of [N, C, *spatial]
    "NC": (),
    "NCL": (5,),
    "NCHW": (3, 4),
}
N_BATCH = 96
# Float64 input is reduced in float64; narrower input in float32, merged in float64 (the task's bounds:
# 1e-10 and 1e-4; we hold float32 to 1e-6 so that a loss of precision shows long before the bound).
RTOL = {torch.float64: 1e-10, torch.float32: 1e-6, torch.bfloat16: 1e-6, torch.float16: 1e-6}
CONSTANT_CHANNELS = (4, 5)  # see make_data


def make_data(rng: np.random.Generator, n: int, spatial: tuple[int, ...]) -> np.ndarray:
    """[n, 6, *spatial] float64; one distribution per channel.

    0: 1e4 + N(0, 1) (large offset)      1: Student t, 3 df (heavy tails)
    2: lognormal(0, 1) (skewed, heavy)   3: ReLU(N(0.1, 1)) (about half exact zeros)
    4: constant 0.1 (zero variance)      5: all zeros (a dead ReLU channel)
    """
    size = (n, *spatial)
    chans = [
        1e4 + rng.standard_normal(size),
        rng.standard_t(3, size=size),
        rng.lognormal(0.0, 1.0, size=size),
        np.maximum(rng.normal(0.1, 1.0, size=size), 0.0),
        np.full(size, 0.1),
        np.zeros(size),
    ]
    return np.stack(chans, axis=1)


def per_channel(x: np.ndarray, channel_dim: int = 1) -> np.ndarray:
    """[..., C] x values -> [C, M] (groups not supported here)."""
    return np.moveaxis(x, channel_dim, 0).reshape(x.shape[channel_dim], -1)


def reference(values: np.ndarray) -> dict[str, float]:
    """scipy/numpy statistics of one 1-D float64 sample; NaN skew/exkurt when it is constant."""
    constant = bool(np.all(values == values[0]))
    return {
        "count": float(values.size),
        "mean": float(np.mean(values)),
        "var": float(np.var(values)),
        "skew": math.nan if constant else float(scipy.stats.skew(values, bias=True)),
        "exkurt": math.nan if constant else float(scipy.stats.kurtosis(values, fisher=True, bias=True)),
        "frac_zero": float(np.mean(values == 0)),
    }


def assert_matches(res: dict[str, torch.Tensor], ref: dict[str, float], rtol: float, where: str = "") -> None:
    """Relative error <= rtol, with an absolute floor on a natural scale for each statistic.

    A relative error is undefined at zero, so: mean within rtol * (|mean| + sd); var within
    rtol * (var + mean^2) (cancellation at a large offset); skew and exkurt are dimensionless and
    compared with atol = rtol; frac_zero and count exactly.
    """
    got = {k: float(res[k]) for k in STAT_NAMES}
    sd = math.sqrt(ref["var"])
    assert got["count"] == ref["count"], where
    assert got["frac_zero"] == ref["frac_zero"], where
    assert abs(got["mean"] - ref["mean"]) <= rtol * (abs(ref["mean"]) + sd), (where, got, ref)
    assert abs(got["var"] - ref["var"]) <= rtol * (ref["var"] + ref["mean"] ** 2), (where, got, ref)
    for k in ("skew", "exkurt"):
        if math.isnan(ref[k]):
            assert math.isnan(got[k]), (where, k, got, ref)
        else:
            assert abs(got[k] - ref[k]) <= rtol * (abs(ref[k]) + 1.0), (where, k, got, ref)


def assert_result_matches(result: MomentResult, x64: np.ndarray, rtol: float) -> None:
    cols = per_channel(x64)
    for c in range(cols.shape[0]):
        assert_matches({k: result[k][c] for k in STAT_NAMES}, reference(cols[c]), rtol, f"channel {c}")


@pytest.fixture(params=["eager", "fused"])
def reduction(request, monkeypatch):
    """Both batch reductions: the eager passes (CPU, small CUDA batches) and the fused expression that
    is compiled for large CUDA batches, run here uncompiled on the CPU for every batch size."""
    calls = []
    if request.param == "fused":
        monkeypatch.setattr(moments_mod, "_FUSED_DEVICES", frozenset({"cpu"}))
        monkeypatch.setattr(moments_mod, "_FUSED_MIN", 0)
        monkeypatch.setattr(moments_mod, "_fused", lambda: lambda x: calls.append(x.shape) or moments_mod._block_sums(x))
    yield request.param
    assert bool(calls) == (request.param == "fused")  # the path under test is the one that ran


def stream(x: torch.Tensor, cuts: list[int], acc: MomentAccumulator | None = None) -> MomentAccumulator:
    acc = MomentAccumulator() if acc is None else acc
    bounds = [0, *cuts, x.shape[0]]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        acc.update(x[lo:hi])
    return acc


UNEVEN_CUTS = [1, 3, 3, 10, 41, 90]  # includes an empty chunk (3:3) and a single-row chunk


# --------------------------------------------------------------------------- exactness against scipy
@pytest.mark.parametrize("layout", list(SHAPES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_streaming_uneven_chunks_matches_scipy(layout, dtype, reduction):
    rng = np.random.default_rng(20240601)
    data = make_data(rng, N_BATCH, SHAPES[layout])
    x = torch.from_numpy(data).to(dtype)
    x64 = x.double().numpy()  # the values the accumulator actually saw
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a constant channel must not warn
        res = stream(x, UNEVEN_CUTS).result()
    assert res.count.dtype == torch.float64 and res.count.shape == (6,)
    assert_result_matches(res, x64, rtol=RTOL[dtype])
    for c in CONSTANT_CHANNELS:
        assert math.isnan(res.skew[c]) and math.isnan(res.exkurt[c])
        assert res.var[c] <= 1e-30
    if dtype == torch.float32:  # the task's looser bound, against the unrounded float64 data
        cols = per_channel(data)
        for c in (1, 2, 3):  # offset channel: float32 quantisation (ulp 1e-3 at 1e4) is the data's, not ours
            ref = reference(cols[c])
            for k in ("mean", "var", "skew", "exkurt"):
                assert abs(float(res[k][c]) - ref[k]) <= 1e-4 * abs(ref[k]), (c, k)


@pytest.mark.parametrize("layout", list(SHAPES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_merge_of_disjoint_halves_matches_scipy(layout, dtype, reduction):
    rng = np.random.default_rng(7)
    data = make_data(rng, N_BATCH, SHAPES[layout])
    x = torch.from_numpy(data).to(dtype)
    a = stream(x[:37], [5, 20])
    b = stream(x[37:], [1])
    ab = MomentAccumulator().merge(a).merge(b)
    ba = MomentAccumulator().merge(b).merge(a)
    assert_result_matches(ab.result(), x.double().numpy(), rtol=RTOL[dtype])
    r_ab, r_ba = ab.result(), ba.result()
    for k in STAT_NAMES:  # order invariance up to rounding
        torch.testing.assert_close(r_ab[k], r_ba[k], rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_inputs_are_accumulated_in_float64(dtype, reduction):
    rng = np.random.default_rng(11)
    data = make_data(rng, N_BATCH, (5,))
    x = torch.from_numpy(data).to(dtype)
    res = stream(x, [17, 50]).result()
    assert res.mean.dtype == torch.float64
    assert_result_matches(res, x.double().numpy(), rtol=RTOL[dtype])


def test_pooled_matches_scipy_on_all_channels_flattened():
    rng = np.random.default_rng(3)
    data = make_data(rng, N_BATCH, (3, 4))
    data[:, 0] -= 1e4  # keep the pooled distribution interesting rather than dominated by one channel
    x = torch.from_numpy(data)
    acc = stream(x, [10, 11, 60])
    ref = reference(data.ravel())
    pooled = acc.pooled()
    assert pooled.mean.dim() == 0
    assert_matches(pooled, ref, rtol=1e-10)
    assert_matches(acc.result().pooled, ref, rtol=1e-10)
    # with the large offset kept, too
    data2 = make_data(rng, N_BATCH, ())
    assert_matches(stream(torch.from_numpy(data2), [7]).pooled(), reference(data2.ravel()), rtol=1e-10)


def test_single_element(reduction):
    acc = MomentAccumulator().update(torch.tensor([[2.5]]))
    res = acc.result()
    assert res.count.tolist() == [1.0] and res.mean.tolist() == [2.5] and res.var.tolist() == [0.0]
    assert math.isnan(res.skew[0]) and math.isnan(res.exkurt[0])
    assert res.frac_zero.tolist() == [0.0]
    zero = MomentAccumulator().update(torch.zeros(1, 1, dtype=torch.float16)).result()
    assert zero.frac_zero.tolist() == [1.0]


def test_frac_zero_counts_signed_zero_and_not_nan(reduction):
    x = torch.tensor([[0.0], [-0.0], [1.0], [math.nan]])
    res = MomentAccumulator().update(x).result()
    assert res.frac_zero.tolist() == [0.5]
    assert math.isnan(res.mean[0])  # divergence shows as NaN, not an exception


# --------------------------------------------------------------------------- empty, merge, state
def test_empty_accumulator_result_is_count_zero_and_nan():
    acc = MomentAccumulator()
    for res in (acc.result(), acc.pooled(), acc.result().pooled):
        assert float(res.count) == 0.0
        for k in ("mean", "var", "skew", "exkurt", "frac_zero"):
            assert math.isnan(res[k])
    acc.update(torch.ones(0, 4))  # an empty batch fixes the shape but adds nothing
    res = acc.result()
    assert res.count.tolist() == [0.0] * 4 and torch.isnan(res.mean).all()


def test_empty_merges_are_identities():
    rng = np.random.default_rng(5)
    x = torch.from_numpy(make_data(rng, 20, (2,)))
    full = MomentAccumulator().update(x)
    expected = full.result()
    for acc in (
        MomentAccumulator().merge(full),
        MomentAccumulator().update(x).merge(MomentAccumulator()),
        MomentAccumulator().update(x).merge(MomentAccumulator().update(x[:0])),
        MomentAccumulator().update(x[:0]).merge(full),
    ):
        res = acc.result()
        for k in STAT_NAMES:
            torch.testing.assert_close(res[k], expected[k], rtol=0, atol=0, equal_nan=True)
    both = MomentAccumulator().merge(MomentAccumulator())
    assert both.shape is None and float(both.result().count) == 0.0
    assert (
        float(MomentAccumulator().update(x[:0]).merge(MomentAccumulator().update(x[:0])).pooled().count) == 0
    )


def test_merge_leaves_other_unchanged_and_reset_state_dict_roundtrip():
    rng = np.random.default_rng(9)
    x = torch.from_numpy(make_data(rng, 30, ()))
    a, b = MomentAccumulator().update(x[:10]), MomentAccumulator().update(x[10:])
    before = b.state_dict()
    a.merge(b)
    after = b.state_dict()
    for k in ("n", "mean", "m2", "m3", "m4", "zeros"):
        assert torch.equal(before[k], after[k])
    clone = MomentAccumulator.from_state_dict(a.state_dict())
    torch.testing.assert_close(clone.result().exkurt, a.result().exkurt, equal_nan=True)
    a.reset()
    assert a.shape == (6,) and a.result().count.tolist() == [0.0] * 6
    assert_result_matches(a.update(x).result(), x.numpy(), rtol=1e-10)


def test_update_does_not_modify_its_input():
    x = torch.randn(8, 1, 5, dtype=torch.float64)  # movedim result is contiguous: copy must be forced
    x0 = x.clone()
    MomentAccumulator().update(x)
    assert torch.equal(x, x0)


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(0, 50), max_size=6).map(sorted), seed=st.integers(0, 2**32 - 1))
def test_any_chunking_gives_the_same_moments(cuts, seed):
    rng = np.random.default_rng(seed)
    data = rng.standard_t(4, size=(50, 3, 2)) * rng.uniform(0.1, 10) + rng.uniform(-100, 100)
    x = torch.from_numpy(data)
    whole = MomentAccumulator().update(x).result()
    chunked = stream(x, cuts).result()
    for k in STAT_NAMES:
        torch.testing.assert_close(chunked[k], whole[k], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("piece", [7, 40, 2**19])  # channel slices of one group; several groups; one piece
@pytest.mark.parametrize("layout", list(SHAPES))
def test_pieces_of_any_size_give_the_same_moments(monkeypatch, layout, piece):
    import bnstats.moments as mod

    rng = np.random.default_rng(29)
    data = np.stack([make_data(rng, 33, SHAPES[layout]) for _ in range(5)])  # [G, N, C, ...]
    x = torch.from_numpy(data)
    monkeypatch.setattr(mod, "_PIECE", piece)
    res = MomentAccumulator(channel_dim=2).update(x).result()
    for g in range(5):
        assert_result_matches(MomentResult(**{k: res[k][g] for k in STAT_NAMES}), data[g], rtol=1e-10)
    stacked = MomentAccumulator.from_tensors(list(x.unbind(0))).result()
    for k in STAT_NAMES:
        torch.testing.assert_close(stacked[k], res[k], rtol=1e-12, atol=1e-12, equal_nan=True)


def test_from_tensors_equals_update_of_the_stack_and_checks_its_input(reduction):
    rng = np.random.default_rng(31)
    ts = [torch.from_numpy(make_data(rng, 20, (3,))).float() for _ in range(4)]
    a = MomentAccumulator.from_tensors(ts).result()
    b = MomentAccumulator(channel_dim=2).update(torch.stack(ts)).result()
    for k in STAT_NAMES:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, equal_nan=True)
    with pytest.raises(ValueError, match="at least one"):
        MomentAccumulator.from_tensors([])
    with pytest.raises(ValueError, match=r"tensors\[1\] is \(20, 6, 2\)"):
        MomentAccumulator.from_tensors([ts[0], ts[1][..., :2]])
    with pytest.raises(TypeError, match=r"tensors\[1\] must have a floating dtype"):
        MomentAccumulator.from_tensors([ts[0], ts[1].long()])
    with pytest.raises(ValueError, match="channel_dim must be >= 1"):
        MomentAccumulator.from_tensors(ts, channel_dim=0)


# --------------------------------------------------------------------------- grouped layout
def test_grouped_layout_equals_separate_accumulators(reduction):
    rng = np.random.default_rng(13)
    g = 3
    data = np.stack([make_data(rng, 40, (2, 2)) for _ in range(g)])  # [G, N, C, H, W]
    x = torch.from_numpy(data).float()
    grouped = MomentAccumulator(channel_dim=2)
    for lo, hi in ((0, 7), (7, 8), (8, 40)):
        grouped.update(x[:, lo:hi])
    res, pooled = grouped.result(), grouped.pooled()
    assert res.mean.shape == (g, 6) and pooled.mean.shape == (g,)
    sep = [stream(x[i], [7, 8]) for i in range(g)]
    for i in range(g):
        r_i, p_i = sep[i].result(), sep[i].pooled()
        for k in STAT_NAMES:
            torch.testing.assert_close(res[k][i], r_i[k], rtol=1e-12, atol=1e-12, equal_nan=True)
            torch.testing.assert_close(pooled[k][i], p_i[k], rtol=1e-12, atol=1e-12, equal_nan=True)
        assert_result_matches(
            MomentResult(**{k: res[k][i] for k in STAT_NAMES}), x[i].double().numpy(), RTOL[torch.float32]
        )
    summ = summarize(grouped)
    assert set(summ) == set(SUMMARY_KEYS)
    for i in range(g):
        s_i = summarize(sep[i])
        for k in SUMMARY_KEYS:
            assert summ[k][i] == pytest.approx(s_i[k], rel=1e-12, nan_ok=True), k
    # merging grouped accumulators works the same way
    half = (
        MomentAccumulator(channel_dim=2)
        .update(x[:, :20])
        .merge(MomentAccumulator(channel_dim=2).update(x[:, 20:]))
    )
    torch.testing.assert_close(half.result().exkurt, res.exkurt, rtol=1e-6, atol=1e-6, equal_nan=True)


# --------------------------------------------------------------------------- summaries
def test_summarize_keys_nanmean_and_pooled():
    rng = np.random.default_rng(17)
    data = make_data(rng, N_BATCH, (5,))
    acc = stream(torch.from_numpy(data), [30])
    summ = summarize(acc)
    assert list(summ) == list(SUMMARY_KEYS)
    assert all(
        type(v) is float for k, v in summ.items() if k not in ("count", "n_channels", "n_nan_channels")
    )
    assert summ["count"] == N_BATCH * 5 and summ["n_channels"] == 6
    assert summ["n_nan_channels"] == len(CONSTANT_CHANNELS)
    refs = [reference(col) for col in per_channel(data)]
    for k in ("mean", "var", "skew", "exkurt", "frac_zero"):
        expected = float(np.nanmean([r[k] for r in refs]))
        assert summ[k] == pytest.approx(expected, rel=1e-10, abs=1e-10), k
    pooled_ref = reference(data.ravel())
    for k in ("mean", "var", "skew", "exkurt", "frac_zero"):
        assert summ["pooled_" + k] == pytest.approx(pooled_ref[k], rel=1e-10), k
    with pytest.raises(TypeError, match="MomentAccumulator.*MomentResult"):
        summarize(acc.result())


def test_summarize_empty():
    summ = summarize(MomentAccumulator())
    assert summ["count"] == 0 and summ["n_channels"] == 0 and summ["n_nan_channels"] == 0
    assert math.isnan(summ["mean"]) and math.isnan(summ["pooled_exkurt"])


def test_summarize_many_one_host_transfer(monkeypatch):
    rng = np.random.default_rng(19)
    accs = [stream(torch.from_numpy(make_data(rng, 20 + i, (i + 1,))), [3]) for i in range(12)]
    accs.append(MomentAccumulator(channel_dim=2).update(torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(1))))
    accs.append(MomentAccumulator())
    accs.append(MomentAccumulator().update(torch.ones(0, 3)))  # shape known, no data

    def expected_summary(acc):  # from the per-channel results, with numpy: independent of summarize
        if acc.shape is None:
            return {k: (0 if k in ("count", "n_channels", "n_nan_channels") else math.nan) for k in SUMMARY_KEYS}
        res, pooled = acc.result(), acc.pooled()
        g = math.prod(acc.shape[:-1])
        per = {k: res[k].numpy().reshape(g, -1) for k in STAT_NAMES}
        stats = ("mean", "var", "skew", "exkurt", "frac_zero")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-NaN
            rows = [{"count": int(per["count"][i].max()), "n_channels": per["mean"].shape[1],
                     "n_nan_channels": int(np.isnan(np.stack([per[k][i] for k in stats])).any(0).sum()),
                     **{k: float(np.nanmean(per[k][i])) for k in stats},
                     **{"pooled_" + k: float(pooled[k].reshape(-1)[i]) for k in stats}} for i in range(g)]
        if acc.shape[:-1] == ():
            return rows[0]
        return {k: [r[k] for r in rows] for k in SUMMARY_KEYS}

    expected = [expected_summary(a) for a in accs]
    calls = []
    real_cpu = torch.Tensor.cpu

    def counting_cpu(self, *args, **kwargs):
        calls.append(tuple(self.shape))
        return real_cpu(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", counting_cpu)
    got = summarize_many(accs)
    assert len(calls) <= 1  # at most one transfer for all sites of a device (none on the CPU)
    assert len(got) == len(accs)
    for g_, e in zip(got, expected, strict=True):
        assert g_.keys() == e.keys()
        for k in SUMMARY_KEYS:
            assert g_[k] == pytest.approx(e[k], rel=1e-12, abs=1e-14, nan_ok=True), k


def test_summary_table_torch_path_equals_numpy_path():
    # On a GPU the summary table is computed by torch on the device; here the same code runs on CPU.
    from bnstats.moments import _summary_table

    rng = np.random.default_rng(23)
    accs = [stream(torch.from_numpy(make_data(rng, 30 + i, (2,))), [5]) for i in range(3)]
    gen = torch.Generator().manual_seed(1)  # seed 1 of the global RNG once gave a pooled exkurt of -0.008
    accs.append(MomentAccumulator(channel_dim=2).update(torch.randn(4, 9, 6, dtype=torch.float64, generator=gen)))
    via_numpy = _summary_table(accs, xp=np)
    via_torch = _summary_table(accs, xp=torch)
    assert isinstance(via_torch, torch.Tensor) and via_torch.dtype == torch.float64
    # numpy and torch sum in different orders: last-bit differences, so an absolute floor for the
    # dimensionless statistics near zero (exkurt = n M4 / M2^2 - 3 cancels)
    np.testing.assert_allclose(via_torch.numpy(), via_numpy, rtol=1e-13, atol=1e-13, equal_nan=True)
    assert via_numpy.shape == (3 + 4, len(SUMMARY_KEYS))


# --------------------------------------------------------------------------- no host sync
def _forbid(name):
    def raiser(self, *args, **kwargs):
        raise AssertionError(f"host sync: Tensor.{name} called inside update/merge")

    return raiser


def test_update_and_merge_make_no_host_sync(monkeypatch, reduction):
    x = torch.randn(16, 4, 3, 3)
    a = MomentAccumulator().update(x)  # the first update allocates; test it too below
    b = MomentAccumulator()
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, _forbid(name))
    b.update(x)
    b.update(x.bfloat16())
    a.merge(b)
    b.merge(a)
    MomentAccumulator().merge(a)
    MomentAccumulator(channel_dim=2).update(torch.randn(2, 5, 4, 3)).update(torch.randn(2, 1, 4, 3))
    monkeypatch.undo()
    assert a.result().count.tolist() == [16 * 9 * 3] * 4  # a: one update, then b's two
    assert b.result().count.tolist() == [16 * 9 * 5] * 4  # b: two updates, then a's three


def test_failed_compilation_falls_back_to_eager_and_says_so_once(monkeypatch):
    def broken(x):
        raise RuntimeError("no Triton here")

    monkeypatch.setattr(moments_mod, "_FUSED_DEVICES", frozenset({"cpu"}))
    monkeypatch.setattr(moments_mod, "_FUSED_MIN", 0)
    monkeypatch.setattr(moments_mod, "_fused", lambda: broken)
    monkeypatch.setattr(moments_mod, "FUSED_CUDA", True)
    x = torch.from_numpy(make_data(np.random.default_rng(5), 30, (2,)))
    with pytest.warns(RuntimeWarning, match="compiled reduction failed .RuntimeError: no Triton here"):
        a = MomentAccumulator().update(x)
    assert moments_mod.FUSED_CUDA is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        a.update(x)
    assert_result_matches(a.result(), torch.cat([x, x]).numpy(), RTOL[torch.float64])


@pytest.mark.slow
def test_compiled_fused_reduction_equals_eager():
    """torch.compile of the fused expression (as on CUDA; here Inductor's CPU backend, ~20 s) gives the
    eager reduction's moments, across shapes and dtypes without a recompile per shape."""
    rng = np.random.default_rng(17)
    fused = torch.compile(moments_mod._block_sums, dynamic=True, fullgraph=True)
    for spatial, g, dtype in (((), 1, torch.float32), ((3, 4), 5, torch.float32), ((7,), 3, torch.float32),
                              ((5,), 2, torch.bfloat16), ((2, 3), 4, torch.float64)):
        x = torch.from_numpy(np.stack([make_data(rng, 50, spatial) for _ in range(g)])).to(dtype)
        block = x.reshape(g, 50, 6, -1)
        eager = moments_mod._central_sums(list(block.unbind(0)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # Inductor's (moments.py ignores them too)
            got = fused(block)
        for name, e, c in zip(("mean", "M2", "M3", "M4", "zeros"), eager, got, strict=True):
            torch.testing.assert_close(c.reshape(-1), e, rtol=1e-5 if dtype != torch.float64 else 1e-12,
                                       atol=1e-5 if name != "mean" else 1e-3, equal_nan=True, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_fused_reduction_on_cuda_matches_scipy_and_eager(monkeypatch):
    """The path large CUDA batches take (compiled, fused) against scipy, and against the eager passes
    on a batch above the threshold; repeated, it is bitwise the same (no atomics)."""
    dev = torch.device("cuda")
    rng = np.random.default_rng(23)
    monkeypatch.setattr(moments_mod, "_FUSED_MIN", 0)
    monkeypatch.setattr(moments_mod, "FUSED_CUDA", True)
    for spatial in SHAPES.values():
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            x = torch.from_numpy(make_data(rng, N_BATCH, spatial)).to(dtype)
            res = stream(x.to(dev), UNEVEN_CUTS).result()
            assert_result_matches(MomentResult(**{k: res[k].cpu() for k in STAT_NAMES}), x.double().numpy(),
                                  rtol=RTOL[dtype])
    monkeypatch.setattr(moments_mod, "_FUSED_MIN", 2**24)
    # 2**25 values, 2**18 per channel: a float32 accumulator would be off by ~1e-5 here
    big = torch.randn(8, 1024, 16, 16, 16, device=dev).relu_().to(torch.bfloat16) * 3 + 1
    fused = [MomentAccumulator(channel_dim=2).update(big).result() for _ in range(2)]
    monkeypatch.setattr(moments_mod, "FUSED_CUDA", False)
    exact = MomentAccumulator(channel_dim=2).update(big.double()).result()  # eager, float64 throughout
    for k in STAT_NAMES:
        assert torch.equal(fused[0][k], fused[1][k]), k
        torch.testing.assert_close(fused[0][k], exact[k], rtol=1e-6, atol=0, msg=k)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fused_min", [2**24, 0])  # eager and compiled reductions
def test_update_and_merge_make_no_cuda_sync(monkeypatch, fused_min):
    monkeypatch.setattr(moments_mod, "_FUSED_MIN", fused_min)
    monkeypatch.setattr(moments_mod, "FUSED_CUDA", True)
    dev = torch.device("cuda")
    x = torch.randn(32, 8, 5, device=dev)
    a = MomentAccumulator().update(x)  # allocation happens outside sync-debug mode
    b = MomentAccumulator().update(x)
    a.update(x.half()).merge(b)  # compiles outside sync-debug mode (dynamo's guards may read the host)
    a, b = MomentAccumulator().update(x), MomentAccumulator().update(x)
    torch.cuda.synchronize()
    with warnings.catch_warnings():  # setting the mode warns that it is a prototype; a sync raises
        warnings.filterwarnings("ignore", "Synchronization debug mode is a prototype")
        torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            a.update(x)
            a.update(x.half())
        a.merge(b)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    xs = x.cpu().double()  # a saw x five times (one update, three more, b's) and x.half() three times
    ref = stream(torch.cat([xs] * 5 + [x.half().cpu().double()] * 3), []).result()
    torch.testing.assert_close(a.result().mean.cpu(), ref.mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a.result().var.cpu(), ref.var, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- validation
def test_validation_errors_name_the_argument():
    with pytest.raises(ValueError, match="channel_dim"):
        MomentAccumulator(channel_dim=0)
    with pytest.raises(TypeError, match="channel_dim"):
        MomentAccumulator(channel_dim=1.0)
    acc = MomentAccumulator()
    with pytest.raises(TypeError, match="floating"):
        acc.update(torch.ones(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="at least 2 dims"):
        acc.update(torch.ones(3))
    acc.update(torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"\(2,\)"):
        acc.update(torch.ones(3, 5))
    with pytest.raises(ValueError, match="channel_dim"):
        acc.merge(MomentAccumulator(channel_dim=2).update(torch.ones(1, 3, 2)))
    with pytest.raises(KeyError, match="valid keys"):
        acc.result()["kurtosis"]
