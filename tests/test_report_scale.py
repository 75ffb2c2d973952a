"""The report at the scale of real seed studies (issue 26 items 2 and 3).

- Its moment figures, learning curves and association statistics come from aggregates and small reads
  (``Results.aggregate`` / ``Results.read``): they must draw and compute what the whole tables gave.
- With more than ``SEEDS_DRAWN_MAX`` seeds per panel the two seed plots draw densities and a stated
  random subsample of seed lines; every statistic they show is still over all seeds, and the captions
  say which.
- ``store_hash`` is computed column by column: the same hash as the record-by-record definition.
"""

import hashlib
import json
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest

from benchmarks.bench_scale import REFERENCE, make_store
from bnstats import report, stats, store
from bnstats.report import document, figures

matplotlib.use("Agg")


def store_hash_by_records(runs: pd.DataFrame) -> str:
    """The definition of ``store_hash`` (bnstats 17b208f): rows as ``to_dict("records")``, floats by repr."""
    df = runs.sort_values("run_id", kind="stable")[sorted(runs.columns)]
    recs = [{k: (repr(v) if isinstance(v, float) else document._plain(v)) for k, v in r.items()}
            for r in df.to_dict("records")]
    return hashlib.sha256(json.dumps(recs, sort_keys=True, default=str).encode()).hexdigest()


def test_store_hash_is_the_record_by_record_hash():
    runs = pd.DataFrame({
        "run_id": ["b", "a", "c"], "seed": [2, 1, 3], "test_acc": [0.1, float("nan"), -0.0],
        "big": [2**62, -1, 0], "loss": [math.inf, 1e-300, 1 / 3], "diverged": [True, False, False],
        "name": ["é\"x", "tab\there", "π"], "maybe": pd.Series(["x", None, "z"], dtype="str"),
        "mixed": pd.Series([np.float64(0.5), 3, None], dtype=object), "f32": np.array([0.1, 2, 3], np.float32),
        "when": pd.to_datetime(["2026-01-01", "2026-01-02", None]),
    })
    assert document.store_hash(runs) == store_hash_by_records(runs)
    ref = store.load(REFERENCE).runs
    assert document.store_hash(ref) == store_hash_by_records(ref)
    assert document.store_hash(runs.iloc[:0]) == store_hash_by_records(runs.iloc[:0])


@pytest.fixture(scope="module")
def reference_report(tmp_path_factory):
    return report.Report(REFERENCE, tmp_path_factory.mktemp("ref"))


def test_moment_figure_from_the_aggregate_draws_what_the_rows_drew(reference_report):
    import matplotlib.pyplot as plt

    rep = reference_report
    mom = report.probe_moments(rep)
    raw = rep.res.moments
    raw = raw[raw["source"] == "probe"].merge(rep.runs[["run_id", rep.factor, *rep.by]], on="run_id")
    for cell in rep.cells()[:2]:
        fig = report.moments_figure(rep, mom, cell)
        sub = raw
        for k, v in cell.items():
            sub = sub[sub[k] == v]
        # every line: its y data is the pandas mean over seeds of the rows it stands for
        lines = [(ax, ln) for ax in fig.axes for ln in ax.lines]
        assert lines
        checked = 0
        for ax, ln in lines:
            row, col = ax.get_subplotspec().rowspan.start, ax.get_subplotspec().colspan.start
            site, mo = [(st, m) for st in figures.SITES for m in figures.MOMENTS if (sub["site"] == st).any()][row]
            layer = sorted(sub["layer"].unique())[col]
            arm = ln.get_label()
            want = sub[(sub["site"] == site) & (sub["layer"] == layer) & (sub[rep.factor] == arm)]
            want = want.groupby("epoch")[mo].mean()
            np.testing.assert_allclose(ln.get_xdata(), want.index.to_numpy(float))
            np.testing.assert_allclose(ln.get_ydata(), want.to_numpy(float), rtol=1e-12, atol=1e-15)
            checked += 1
        plt.close(fig)
        assert checked >= 12


def test_association_from_the_last_epoch_rows_equals_it_from_the_whole_table(reference_report):
    rep = reference_report
    small = figures.association_moments(rep)
    assert len(small) == len(rep.runs[rep.runs["placement"] != "none"]) * 2.5  # mlp 2, cnn 3 layers with norm_in
    kw = dict(metric=rep.metric, factor=rep.factor, source="probe", nan_policy="omit")
    for mo in figures.MOMENTS:
        pd.testing.assert_frame_equal(
            stats.paired_association(small, rep.runs, moment=mo, baseline=rep.baseline, drop_unpaired=True, **kw),
            stats.paired_association(rep.res.moments, rep.runs, moment=mo, baseline=rep.baseline, drop_unpaired=True,
                                     **kw), check_exact=True)
        pd.testing.assert_frame_equal(stats.association(small, rep.runs, moment=mo, **kw),
                                      stats.association(rep.res.moments, rep.runs, moment=mo, **kw), check_exact=True)


def test_small_studies_keep_their_seed_plots_and_captions(reference_report):
    rep = reference_report
    assert not figures.dense(rep)
    assert rep.caption("paired_seeds").endswith("Grey lines join the arms of one seed (the pairing); large dots: arm means.")
    assert "small dots: seeds." in rep.caption("differences")


@pytest.fixture(scope="module")
def many_seeds(tmp_path_factory):
    """One cell of the reference study (mlp, relu: 3 arms) with 300 seeds per arm."""
    path = tmp_path_factory.mktemp("many") / "store"
    make_store(path, 900, seed=3, cells=("arch=mlp", "activation=relu"))
    return report.Report(path, tmp_path_factory.mktemp("many-report"))


def test_seed_plots_of_many_seeds_draw_densities_a_stated_subsample_and_all_seed_means(many_seeds):
    import matplotlib.pyplot as plt
    from matplotlib.collections import PathCollection, PolyCollection

    rep = many_seeds
    assert figures.dense(rep)
    fig = report.paired_seed_figure(rep)
    ax = fig.axes[0]
    seed_lines = [ln for ln in ax.lines if ln.get_color() == "0.55"]
    assert len(seed_lines) == figures.SEEDS_DRAWN_MAX  # of 300
    assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 3  # a density per arm
    wide = rep.runs.pivot_table(index="seed", columns="placement", values="test_acc", aggfunc="first") * 100
    means = sorted(float(c.get_offsets()[0][1]) for c in ax.collections if isinstance(c, PathCollection))
    np.testing.assert_allclose(means, sorted(wide.mean(axis=0)), rtol=1e-12)  # over all 300 seeds
    # the drawn seeds: a random draw from the report's rng, the same every time
    again = report.paired_seed_figure(rep)
    assert [ln.get_ydata().tolist() for ln in seed_lines] == \
        [ln.get_ydata().tolist() for ln in again.axes[0].lines if ln.get_color() == "0.55"]
    plt.close(fig)
    plt.close(again)

    cmp = stats.compare(rep.runs, factors=rep.res.factors, n_resamples=99)
    fig = report.differences_figure(rep, cmp)
    ax = fig.axes[0]
    assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 2  # a density per comparison
    assert not any(len(c.get_offsets()) > 1 for c in ax.collections if isinstance(c, PathCollection))  # no seed dots
    plt.close(fig)
    cap = rep.caption("paired_seeds")
    assert f"for {figures.SEEDS_DRAWN_MAX} seeds drawn at random (seed {rep.params['rng']})" in cap
    assert "density of the metric over all seeds" in cap and "arm means over all seeds" in cap
    assert "density over all seeds" in rep.caption("differences") and "both over all seeds" in rep.caption("differences")


def test_provenance_writes_many_seeds_as_ranges(many_seeds):
    html = many_seeds.provenance_block(pd.DataFrame({"ok": [True], "seed": [0]})).data
    assert "<td>300 seeds: 0–299</td>" in html and "seeds = 300 seeds: 0–299" in html
    assert document._seeds_text([0, 2, 4]) == "0, 2, 4"
    assert document._seeds_text(list(range(0, 200, 2))) == (
        "100 seeds: " + ", ".join(map(str, range(0, 40, 2))) + ", … (80 more ranges)")


@pytest.mark.slow
def test_report_of_two_thousand_seeds_per_arm_renders(tmp_path):
    # 2,000 seeds x 9 runs (mlp: 3 activations x 3 placements) = 18,000 runs, 3.7 M moment rows
    path = tmp_path / "store"
    make_store(path, 18_000, seed=5, cells=("arch=mlp",))
    out = report.render(path, tmp_path / "report")
    summary = json.loads((out / "summary.json").read_text())
    assert [c["n"] for c in summary["comparisons"]] == [2000] * 6
    assert all(math.isfinite(c["boot_ci_low"]) and math.isfinite(c["ci_low"]) for c in summary["comparisons"])
    assert (out / "report.pdf").stat().st_size > 100_000 and (out / "figures" / "paired_seeds.png").is_file()
