"""``bnstats compare``, ``bnstats plan`` and the argument handling of ``bnstats report``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_report import report_sweep_dir  # the same session-wide fixture sweep

from bnstats import cli, stats, store


@pytest.fixture(scope="session")
def sweep(tmp_path_factory, data_root):
    return report_sweep_dir(tmp_path_factory, data_root)


def _run(capsys, *args):
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_compare_prints_the_table_and_writes_the_same_numbers_as_csv(sweep, tmp_path, capsys):
    csv = tmp_path / "cmp.csv"
    rc, out, err = _run(capsys, "compare", sweep, "--csv", csv)
    assert rc == 0, err
    lines = out.strip().splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("arch"))
    assert lines[head].split()[:3] == ["arch", "arm", "n"] and "verdict" in lines[head]
    got = pd.read_csv(csv)
    want = stats.compare(store.load(sweep).runs, diverged="drop_pair")
    assert list(got.columns) == list(want.columns)
    np.testing.assert_array_equal(got["estimate"].to_numpy(), want["estimate"].to_numpy())
    np.testing.assert_array_equal(got["p_adj"].to_numpy(), want["p_adj"].to_numpy())
    # rounded for reading only, accuracy in percentage points
    first = want.iloc[0]
    assert f"{100 * first['estimate']:+.2f}".replace("-", "\u2212") in lines[head + 1]
    assert repr(first["estimate"]) not in out


def test_compare_options_reach_stats(sweep, capsys, tmp_path):
    csv = tmp_path / "c.csv"
    rc, out, _ = _run(capsys, "compare", sweep, "--baseline", "none", "--margin", "0.5", "--p-adjust", "bh",
                      "--by", "arch", "--confidence-level", "0.9", "--csv", csv)
    assert rc == 0
    got = pd.read_csv(csv)
    assert set(got["baseline"]) == {"none"} and set(got["p_adjust_method"]) == {"bh"}
    assert set(got["confidence_level"]) == {0.9} and set(got["margin_high"]) == {0.5}
    rc, _, _ = _run(capsys, "compare", sweep, "--margin=-0.01,0.02", "--csv", csv)
    assert rc == 0 and pd.read_csv(csv)["margin_low"].eq(-0.01).all()


@pytest.mark.parametrize(("args", "names"), [
    (["--baseline", "sideways"], "baseline='sideways'"),
    (["--metric", "accuracy"], "'accuracy'"),
    (["--factor", "colour"], "colour"),
    (["--by", "nope"], "by names unknown column(s) ['nope']"),
    (["--margin", "wide"], "--margin: expected a number or LOW,HIGH"),
    (["--p-adjust", "fdr"], "p_adjust must be one of"),
    (["--confidence-level", "95"], "confidence_level must be in the open interval"),
])
def test_compare_bad_input_is_one_line_naming_the_field_and_exit_2(sweep, capsys, args, names):
    rc, out, err = _run(capsys, "compare", sweep, *args)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("bnstats compare: error: ") and names in err


def test_compare_of_a_missing_directory_exits_2(tmp_path, capsys):
    rc, _, err = _run(capsys, "compare", tmp_path / "nowhere")
    assert rc == 2 and "not a bnstats sweep" in err


def test_plan_prints_seeds_per_comparison(sweep, capsys, tmp_path):
    csv = tmp_path / "plan.csv"
    rc, out, err = _run(capsys, "plan", sweep, "--power", "0.8", "--effect", "0.002", "--csv", csv)
    assert rc == 0, err
    assert "seeds_for_power" in out and "n_planned" in out
    got = pd.read_csv(csv)
    want = stats.plan(store.load(sweep).runs, effect=0.002, power=0.8)
    assert got["seeds_for_power"].tolist() == want["seeds_for_power"].astype(int).tolist()
    rc, out, _ = _run(capsys, "plan", sweep, "--halfwidth", "0.01", "--csv", csv)
    assert rc == 0 and pd.read_csv(csv)["seeds_for_halfwidth"].notna().all()


@pytest.mark.parametrize(("args", "names"), [
    ([], "plan needs --effect"),
    (["--effect", "0"], "effect must be a finite nonzero number"),
    (["--effect", "0.01", "--power", "1.5"], "power must be in the open interval"),
])
def test_plan_bad_input_exits_2(sweep, capsys, args, names):
    rc, _, err = _run(capsys, "plan", sweep, *args)
    assert rc == 2 and names in err and err.count("\n") == 1


@pytest.mark.parametrize(("args", "names"), [
    (["--set", "colour=red"], "--set colour: unknown parameter"),
    (["--set", "baseline=sideways"], "baseline='sideways'"),
    (["--set", "metric"], "expected NAME=VALUE"),
    (["--set", "results=/tmp"], "--set results: give the sweep directory"),
])
def test_report_bad_input_exits_2_before_running(sweep, tmp_path, capsys, args, names):
    rc, out, err = _run(capsys, "report", sweep, "--out", tmp_path / "r", *args)
    assert rc == 2 and names in err and err.count("\n") == 1 and out == ""
    assert not (tmp_path / "r").exists()


def test_report_of_a_missing_sweep_exits_2(tmp_path, capsys):
    rc, _, err = _run(capsys, "report", tmp_path / "nowhere")
    assert rc == 2 and "not a bnstats sweep" in err


def test_report_default_directory_is_the_shipped_reference_study():
    args = cli.build_parser().parse_args(["report"])
    assert args.dir == "data/reference/placement-mnist1d" and args.out is None


def test_report_notebook_failure_is_one_line_and_keeps_the_traceback(sweep, tmp_path, capsys, monkeypatch):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    from bnstats.report import rendering as report  # render() looks notebook_path up in its own module

    real = nbformat.read(report.notebook_path(), as_version=4)
    nb = new_notebook(cells=[real.cells[0], new_code_cell('raise RuntimeError("boom in the notebook")')],
                      metadata=real.metadata)
    path = tmp_path / "failing.ipynb"
    nbformat.write(nb, path)
    monkeypatch.setattr(report, "notebook_path", lambda: path)
    rc, out, err = _run(capsys, "report", sweep, "--out", tmp_path / "r", "--quiet")
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and "failed in cell" in err and "RuntimeError: boom in the notebook" in err
    executed = nbformat.read(tmp_path / "r" / "report.ipynb", as_version=4)
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert errors and errors[0]["evalue"] == "boom in the notebook"
    assert not (tmp_path / "r" / "report.pdf").exists()


def test_compare_model_mixed_prints_the_interaction_table(sweep, capsys, tmp_path):
    from bnstats.report.factorial import interaction_table

    csv = tmp_path / "mixed.csv"
    rc, out, err = _run(capsys, "compare", sweep, "--model", "mixed", "--csv", csv)
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("Interaction: test_acc ~ placement × other factor, random intercept per seed")
    assert lines[1].split()[:5] == ["factor", "arm", "baseline", "other", "level"]
    assert len([line for line in lines if line.split()[:1] == ["placement"]]) == 2  # after, none x arch cnn
    res = store.load(sweep)
    want = interaction_table(res.runs, factors=res.factors, levels=res.config["grid"])
    got = pd.read_csv(csv, keep_default_na=False)
    np.testing.assert_array_equal(got["estimate"].to_numpy(float), want["estimate"].to_numpy(float))
    np.testing.assert_array_equal(got["p_adj"].to_numpy(float), want["p_adj"].to_numpy(float))
    # printed as `compare` prints accuracy differences: in pp, the unit in the header, 2 decimals
    assert "estimate = (arm − before at level) − (arm − before at reference) in pp" in lines[0]
    assert "estimate (pp)" in lines[1] and "ci_low (pp)" in lines[1] and "ci_high (pp)" in lines[1]
    rows = [line for line in lines if line.split()[:1] == ["placement"]]
    for row, (_, w) in zip(rows, want.iterrows(), strict=True):
        assert f"{100 * w['estimate']:.2f}" in row and f"{100 * w['ci_low']:.2f}" in row
        assert f"{w['estimate']:.4f}" not in row  # not the store's fraction


@pytest.mark.parametrize("args, names", [
    (["--model", "mixed", "--interaction", "colour"], "--interaction: 'colour' is not another grid factor"),
    (["--interaction", "arch"], "--interaction: only with --model mixed"),
    (["--model", "mixed", "--margin", "0.01"], "--margin: not used by --model mixed"),
])
def test_compare_model_mixed_bad_input_exits_2(sweep, capsys, args, names):
    rc, out, err = _run(capsys, "compare", sweep, *args)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and names in err
    with pytest.raises(SystemExit) as e:  # argparse's own choices
        cli.main(["compare", str(sweep), "--model", "bayes"])
    assert e.value.code == 2 and "argument --model: invalid choice" in capsys.readouterr().err
