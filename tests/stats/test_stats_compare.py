"""compare / describe / plan on a synthetic sweep with known shifts (see stats_synthetic.py)."""

import numpy as np
import pandas as pd
import pytest

from bnstats import stats
from bnstats.stats.paired import PairedResult

PAIRED_KEYS = [f for f in PairedResult.__dataclass_fields__]


def test_one_row_per_cell_and_arm(runs):
    out = stats.compare(runs, n_resamples=999)
    assert len(out) == 2 * 2 * 2  # arch x activation x {after, none}
    expected = ["dataset", "arch", "activation", "factor", "metric", "arm", "baseline", *PAIRED_KEYS,
                "n_dropped", "n_diverged", "p_adj", "p_adjust_method", "differences", "family_size", "p_tost_adj",
                "ci_low_simultaneous", "ci_high_simultaneous", "simultaneous_method", "ci_low_decision",
                "ci_high_decision", "decision_interval_method", "n_tuning_excluded"]
    assert list(out.columns) == expected
    assert set(out["arm"]) == {"after", "none"} and (out["baseline"] == "before").all()
    num = out[["estimate", "ci_low", "ci_high", "p_t", "p_adj", "d_z", "boot_ci_low", "p_wilcoxon", "p_signflip"]]
    assert np.isfinite(num.to_numpy(float)).all()
    # known shifts: after +0.01, none -0.02
    after = out[out.arm == "after"]
    none = out[out.arm == "none"]
    assert (after.verdict == "better").all() and (none.verdict == "worse").all()
    assert np.allclose(after.estimate, 0.01, atol=0.003) and np.allclose(none.estimate, -0.02, atol=0.003)
    assert (out.n == 10).all() and (out.n_dropped == 0).all()
    assert out["caveats"].map(type).eq(str).all()


def test_holm_applied_across_family(runs):
    out = stats.compare(runs, n_resamples=999)
    assert (out.p == out.p_t).all() and (out.method == "paired t").all()  # no degenerate row here
    np.testing.assert_array_equal(out.p_adj, stats.adjust(out.p.to_numpy(), "holm"))
    assert (out.p_adjust_method == "holm").all() and (out.family_size == 8).all()
    bh = stats.compare(runs, n_resamples=999, p_adjust="bh")
    np.testing.assert_array_equal(bh.p_adj, stats.adjust(out.p.to_numpy(), "bh"))


def test_missing_pair_names_the_seeds(runs):
    broken = runs.drop(runs.index[(runs.placement == "after") & (runs.seed.isin([3, 7])) & (runs.arch == "cnn")])
    with pytest.raises(ValueError, match=r"seed \[3, 7\].*missing") as ei:
        stats.compare(broken, n_resamples=999)
    assert "drop_unpaired=True" in str(ei.value)
    out = stats.compare(broken, n_resamples=999, drop_unpaired=True)
    hit = (out.arch == "cnn") & (out.arm == "after")
    assert (out.loc[hit, "n_dropped"] == 2).all() and (out.loc[hit, "n"] == 8).all()
    assert (out.loc[~hit, "n_dropped"] == 0).all()
    assert out.loc[hit, "caveats"].str.contains("dropped").all()


def test_duplicated_pair_names_the_seed(runs):
    dup = pd.concat([runs, runs[(runs.seed == 4) & (runs.placement == "before")]], ignore_index=True)
    with pytest.raises(ValueError, match=r"seed \[4\] duplicated"):
        stats.compare(dup, n_resamples=999)
    out = stats.compare(dup, n_resamples=999, drop_unpaired=True)
    assert (out.n_dropped == 1).all()


def test_factors_from_attrs_and_argument(runs):
    r = runs.copy()
    r.attrs["factors"] = ["arch", "placement", "activation"]
    out = stats.compare(r, n_resamples=999)
    assert list(out.columns[:3]) == ["arch", "activation", "factor"]
    out2 = stats.compare(runs, factors=["arch", "activation", "placement"], n_resamples=999)
    assert list(out2.columns[:3]) == ["arch", "activation", "factor"]


def test_pooling_two_runs_per_seed_is_an_error(runs):
    # by=["arch"] pools activations: two runs per seed and arm, which is never silently averaged
    with pytest.raises(ValueError, match="duplicated"):
        stats.compare(runs, by=["arch"], n_resamples=999)


def test_diverged_policy(runs):
    r = runs.copy()
    hit = (r.seed == 2) & (r.placement == "after")
    r.loc[hit, "diverged"] = True
    out = stats.compare(r, n_resamples=999)
    assert (out.loc[out.arm == "after", "n_diverged"] == 1).all()
    assert out.loc[out.arm == "after", "caveats"].str.contains("diverged").all()
    assert out.loc[out.arm == "after", "caveats"].map(stats.caveat_list).map(
        lambda c: "1 pair(s) include a diverged run (diverged='keep'): 1 kept with test_acc as recorded" in c).all()
    # a diverged run without a metric (NaN, as training records it) cannot be kept: its pair is dropped
    # under "keep" too, whatever nan_policy says, and the caveat says exactly that
    r.loc[hit, "test_acc"] = np.nan
    for policy in ("raise", "omit"):
        out = stats.compare(r, n_resamples=999, nan_policy=policy)
        after = out[out.arm == "after"]
        assert (after.n == 9).all() and (after.n_diverged == 1).all()
        assert after.caveats.map(stats.caveat_list).map(
            lambda c: "1 pair(s) include a diverged run (diverged='keep'): 1 dropped because the diverged run has no "
                      "test_acc (NaN)" in c).all()
    out = stats.compare(r, n_resamples=999, diverged="drop_pair")
    assert (out.loc[out.arm == "after", "n"] == 9).all()
    # a NaN metric of a run that did not diverge is still an error unless nan_policy="omit"
    r.loc[hit, "diverged"] = False
    with pytest.raises(ValueError, match=r"NaN for seed \[2\]; pass nan_policy='omit'"):
        stats.compare(r, n_resamples=999)


def test_loss_metric_lower_is_better(runs):
    out = stats.compare(runs, metric="test_loss", n_resamples=999)
    assert (out.loc[out.arm == "after", "verdict"] == "better").all()
    assert (out.higher_is_better == False).all()  # noqa: E712


def test_reproducible_and_rng_explicit(runs):
    a = stats.compare(runs, n_resamples=999)
    b = stats.compare(runs, n_resamples=999)
    pd.testing.assert_frame_equal(a, b)
    c = stats.compare(runs, n_resamples=999, rng=1)
    assert not np.array_equal(a.boot_ci_low, c.boot_ci_low)


def test_frames_round_trip_csv(runs, tmp_path):
    out = stats.compare(runs, n_resamples=999)
    out.to_csv(tmp_path / "c.csv", index=False)
    back = pd.read_csv(tmp_path / "c.csv", keep_default_na=False, na_values=[""])
    assert list(back.columns) == list(out.columns)


def test_validation_messages(runs):
    with pytest.raises(ValueError, match=r"baseline='middle' is not a level of column 'placement'"):
        stats.compare(runs, baseline="middle")
    with pytest.raises(ValueError, match=r"p_adjust must be one of \['holm', 'bh', 'bonferroni'\]; got 'fdr'"):
        stats.compare(runs, p_adjust="fdr")
    with pytest.raises(ValueError, match="missing column"):
        stats.compare(runs, metric="val_acc")


def test_describe(runs):
    d = stats.describe(runs)
    assert len(d) == 12
    assert list(d.columns) == ["dataset", "arch", "activation", "factor", "metric", "arm", "n", "n_nan",
                               "n_diverged", "mean", "sd", "min", "max"]
    row = d[(d.arch == "cnn") & (d.activation == "relu") & (d.arm == "after")].iloc[0]
    x = runs[(runs.arch == "cnn") & (runs.activation == "relu") & (runs.placement == "after")].test_acc
    assert row["mean"] == x.mean() and row["sd"] == x.std(ddof=1) and row["n"] == 10


def test_plan(runs):
    p = stats.plan(runs, effect=0.002, halfwidth=0.001)
    assert len(p) == 8
    for row in p.itertuples():
        assert row.seeds_for_power == stats.seeds_needed(row.sd_diff, 0.002)
        assert row.seeds_for_halfwidth == stats.seeds_for_halfwidth(row.sd_diff, 0.001)
        n = row.seeds_for_halfwidth
        assert stats.power.halfwidth_at(n, row.sd_diff) <= 0.001 < stats.power.halfwidth_at(n - 1, row.sd_diff)
        assert row.n_planned == max(row.seeds_for_power, row.seeds_for_halfwidth)
        assert row.min_p_signflip_pilot == 2.0**-9
    only = stats.plan(runs, effect=0.002)
    assert only.seeds_for_halfwidth.isna().all() and list(only.columns) == list(p.columns)
    with pytest.raises(ValueError, match="effect= .* or halfwidth="):
        stats.plan(runs)
