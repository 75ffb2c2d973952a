"""Lazy, column-projected reads of large stores (issue 26 item 2): ``Results.read``, ``.count``, ``.aggregate``.

The eager tables (``.curves``, ``.moments``) must be the frames they were before the change; ``read``
must return the rows and columns of the eager frame that its filters select; ``aggregate`` must equal
pandas' ``groupby`` on the eager frame merged with the runs, and give the same bits every time.

The store used here mixes everything ``load`` meets: a compacted table, units not compacted yet, a late
unit of a run the table already holds (compacted rows win), rows of a run that is not stored (a
compaction in progress: not visible), NaN moments, and a unit whose moments file is missing.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bnstats import store

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference" / "placement-mnist1d"


def eager_before(path: Path, table: str) -> pd.DataFrame:
    """``store.load(path).<table>`` as bnstats computed it before lazy reads (17b208f), written out: each
    file read whole with pandas, compacted rows first, units the table does not hold after them, rows of
    stored runs only, sorted, ``source`` and ``site`` categorical."""
    runs_ids = set(pd.read_parquet(path / "tables" / "runs.parquet")["run_id"])
    units = sorted(p for p in (path / "units").iterdir() if p.is_dir()) if (path / "units").is_dir() else []
    runs_ids |= {u.name for u in units}
    frames = [pd.read_parquet(path / "tables" / f"{table}.parquet")]
    seen = set(frames[0]["run_id"].unique())
    for u in units:
        f = u / f"{table}.parquet"
        if u.name not in seen and f.is_file():
            frames.append(pd.read_parquet(f))
    df = pd.concat([f for f in frames if len(f)], ignore_index=True)
    df = df[df["run_id"].isin(runs_ids)]
    sort = [c for c in ("run_id", "epoch", "step", "source", "layer", "site", "channel") if c in df]
    df = df.sort_values(sort, kind="stable").reset_index(drop=True)
    for c in ("source", "site"):
        if c in df:
            df[c] = df[c].astype("category")
    return df


def _unit(path: Path, run_id: str, tables: dict[str, pd.DataFrame]) -> None:
    u = path / "units" / run_id
    u.mkdir(parents=True)
    files = {}
    for table, df in tables.items():
        name = "run.parquet" if table == "runs" else f"{table}.parquet"
        df.to_parquet(u / name, index=False)
        files[name] = len(df)
    (u / "manifest.json").write_text(json.dumps({"files": files}))


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory):
    """The reference study with 6 runs (a seed's arms of one cell, and three more) as units instead of
    compacted, a late unit duplicating a compacted run, moment rows of a run that is not stored, NaNs."""
    path = tmp_path_factory.mktemp("mixed") / "store"
    (path / "tables").mkdir(parents=True)
    shutil.copy(REFERENCE / "sweep.json", path / "sweep.json")
    runs = pd.read_parquet(REFERENCE / "tables" / "runs.parquet")
    curves = pd.read_parquet(REFERENCE / "tables" / "curves.parquet")
    moments = pd.read_parquet(REFERENCE / "tables" / "moments.parquet")
    g = np.random.default_rng(0)
    nan = g.random(len(moments)) < 0.02  # some channel means NaN: every statistic leaves them out
    moments.loc[nan, "skew"] = np.nan
    moments.loc[g.random(len(moments)) < 0.01, "frac_zero"] = np.nan
    in_units = runs["run_id"].iloc[[0, 1, 2, 100, 200, 300]].tolist()
    late = runs["run_id"].iloc[5]  # compacted, and again in a unit whose rows must not count
    compacted = ~runs["run_id"].isin(in_units)
    runs[compacted].to_parquet(path / "tables" / "runs.parquet", index=False)
    curves[curves["run_id"].isin(runs["run_id"][compacted])].to_parquet(path / "tables" / "curves.parquet", index=False)
    orphan = moments[moments["run_id"] == late].assign(run_id="0123456789abcdef")  # no such run is stored
    pd.concat([moments[~moments["run_id"].isin(in_units)], orphan]).to_parquet(
        path / "tables" / "moments.parquet", index=False)
    for i, rid in enumerate(in_units):
        tables = {"runs": runs[runs["run_id"] == rid], "curves": curves[curves["run_id"] == rid]}
        if i != 3:  # a run stored without moment rows
            tables["moments"] = moments[moments["run_id"] == rid]
        _unit(path, rid, tables)
    shifted = moments[moments["run_id"] == late].assign(skew=99.0)
    _unit(path, late, {"runs": runs[runs["run_id"] == late], "curves": curves[curves["run_id"] == late].assign(
        test_acc=-1.0), "moments": shifted})
    return path


@pytest.mark.parametrize("where", ["reference", "mixed"])
@pytest.mark.parametrize("table", ["curves", "moments"])
def test_eager_tables_are_the_frames_they_were(where, table, mixed_store):
    path = REFERENCE if where == "reference" else mixed_store
    got = getattr(store.load(path), table)
    pd.testing.assert_frame_equal(got, eager_before(path, table), check_exact=True)
    if where == "mixed":
        assert "0123456789abcdef" not in set(got["run_id"]) and not (got.get("skew", pd.Series()) == 99.0).any()


def test_read_returns_the_eager_rows_and_columns_it_selects(mixed_store):
    res = store.load(mixed_store)
    m = res.moments
    after = set(res.runs.loc[res.runs["placement"] == "after", "run_id"])
    got = res.read("moments", ["epoch", "layer", "site", "skew"],
                   where={"source": "probe", "site": ["norm_in", "act_out"], "epoch": [0, 30], "placement": "after"})
    want = m[(m["source"] == "probe") & m["site"].isin(["norm_in", "act_out"]) & m["epoch"].isin([0, 30])
             & m["run_id"].isin(after)][["epoch", "layer", "site", "skew", "run_id"]].reset_index(drop=True)
    want["site"] = want["site"].cat.remove_unused_categories()
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    pd.testing.assert_frame_equal(res.read("curves"), res.curves, check_exact=True)
    assert res.count("moments", where={"source": "probe", "site": ["norm_in", "act_out"], "epoch": [0, 30],
                                       "placement": "after"}) == len(got)
    assert res.count("curves") == len(res.curves) and res.count("moments_channel") == 0
    assert res.columns("moments")[-1] == "run_id" and "skew" in res.columns("moments")


def test_aggregate_equals_pandas_groupby_on_the_eager_rows(mixed_store):
    res = store.load(mixed_store)
    keys = ["placement", "arch", "activation", "epoch", "layer", "site"]
    values = ["skew", "exkurt", "frac_zero"]
    got = res.aggregate("moments", keys, values, where={"source": "probe", "site": ["norm_in", "act_out"]})
    m = res.moments
    m = m[(m["source"] == "probe") & m["site"].isin(["norm_in", "act_out"])].merge(
        res.runs[["run_id", "placement", "arch", "activation"]], on="run_id")
    want = m.groupby(keys, observed=True, sort=True)[values].agg(["count", "mean", "std"])
    want.columns = [f"{v}_{ {'count': 'n', 'mean': 'mean', 'std': 'sd'}[s]}" for v, s in want.columns]
    want = want.reset_index()
    want["site"] = want["site"].astype(str).astype("category")
    # 31 epochs x 3 activations x (2 placements x 2 sites + "none", without norm_in) x (2 mlp + 3 cnn layers)
    assert len(got) == 31 * 3 * (2 * 2 + 1) * (2 + 3)
    pd.testing.assert_frame_equal(got, want, rtol=1e-12, check_dtype=False)
    assert (got["skew_n"] < got["exkurt_n"]).any()  # the NaNs were left out, as pandas leaves them out
    # the same bits every time: Acero adds in file order on one thread
    pd.testing.assert_frame_equal(got, res.aggregate("moments", keys, values, where={
        "source": "probe", "site": ["norm_in", "act_out"]}), check_exact=True)


def test_aggregate_by_run_with_min_and_max_and_a_runs_filter(mixed_store):
    res = store.load(mixed_store)
    got = res.aggregate("curves", ["run_id"], ["epoch", "test_acc"], where={"arch": "mlp"}, stats=("min", "max", "n"))
    c = res.curves.merge(res.runs[["run_id", "arch"]], on="run_id")
    want = c[c["arch"] == "mlp"].groupby("run_id", sort=True)[["epoch", "test_acc"]].agg(["min", "max", "count"])
    assert list(got["run_id"]) == list(want.index)
    for v in ("epoch", "test_acc"):
        np.testing.assert_array_equal(got[f"{v}_min"], want[(v, "min")].to_numpy(float))
        np.testing.assert_array_equal(got[f"{v}_max"], want[(v, "max")].to_numpy(float))
        np.testing.assert_array_equal(got[f"{v}_n"], want[(v, "count")].to_numpy())
    assert got["test_acc_min"].min() >= 0  # not the late unit's -1


def test_bad_tables_columns_and_stats_are_named(mixed_store):
    res = store.load(mixed_store)
    with pytest.raises(ValueError, match=r"table: 'moment' is not one of curves, moments, moments_channel"):
        res.read("moment")
    with pytest.raises(ValueError, match=r"columns: 'kurtosis' not in the moments table \(its columns: epoch, step"):
        res.read("moments", ["kurtosis"])
    with pytest.raises(ValueError, match=r"by and values: 'skw' not in the moments table"):
        res.aggregate("moments", ["epoch"], ["skw"])
    with pytest.raises(ValueError, match=r"values: 'site' of moments is not numeric"):
        res.aggregate("moments", ["epoch"], ["site"])
    with pytest.raises(ValueError, match=r"stats: \['median'\] is not a tuple of n, mean, sd, min, max"):
        res.aggregate("moments", ["epoch"], ["skew"], stats=("mean", "median"))
    with pytest.raises(ValueError, match=r"by and values: 'epoch', 'skew' not in the moments_channel table \(the store "
                                         r"holds no such rows\)"):
        res.aggregate("moments_channel", ["epoch"], ["skew"])
    assert res.read("moments_channel").empty


@pytest.mark.slow
def test_aggregate_holds_a_batch_not_the_table(tmp_path):
    # 10^4 runs (2.6 M moment rows, 0.4 GB as a pandas frame): the report's aggregate in a fresh process
    # stays near the interpreter's own footprint, the eager frame does not
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.bench_scale import make_store

    make_store(tmp_path / "s", 10_000, seed=1)
    code = ("import resource, sys; from bnstats import store; r = store.load(sys.argv[1]); "
            "{}; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    lazy = code.format("r.aggregate('moments', ['placement', 'arch', 'activation', 'epoch', 'layer', 'site'], "
                       "['skew', 'exkurt', 'frac_zero'], where={'source': 'probe'})")
    eager = code.format("r.moments")
    mb = {k: float(subprocess.run([sys.executable, "-c", c, str(tmp_path / "s")], capture_output=True, text=True,
                                  check=True).stdout) for k, c in (("lazy", lazy), ("eager", eager))}
    assert mb["lazy"] < 450 and mb["eager"] > mb["lazy"] + 300, mb
