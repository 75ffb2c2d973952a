"""Claims a reviewer accepts, in the report and the CLI (issue 19 items 1, 2, 3, 6, 7, 10; issue 22 item 8).

What a reader takes away must follow the family's decision (``stats.compare``'s verdict), with the
interval that agrees with it beside it; sentences name what they rest on; the test set's own
uncertainty is shown; the design's limits are listed; ``bnstats compare`` reads like the report; and a
sweep with a ``[train]`` key in ``[grid]`` renders.

Synthetic runs are integer counts of correct test examples out of 1000, so every number below is
exact. The p-values that place a comparison on each side of a threshold were computed with scipy and
agree with R (``t.test(d)$p.value``):

    d_none = c(3,-1,2,4,0,1,5,-1,2,1)   # t.test(d_none)$p.value = 0.03299  (Holm rejects at 0.05, Bonferroni does not)
    d_after = c(5,6,7,5,6,7,5,6,7,6)    # t.test(d_after)$p.value < 1e-8
"""

from __future__ import annotations

import html as htmllib
import json
import math
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from test_report import rendered_dir, report_sweep_dir

from bnstats import cli, config, report, stats, store
from bnstats.report import figures
from bnstats.sweep import InlineExecutor, run_sweep
from tests.conftest import tiny_toml

BASE = [900, 905, 898, 910, 902, 899, 907, 903, 901, 904]
HOLM_ARMS = {"after": [5, 6, 7, 5, 6, 7, 5, 6, 7, 6], "none": [3, -1, 2, 4, 0, 1, 5, -1, 2, 1]}
MARGIN_ARMS = {"after": [2, 3, 2, 1, 2, 3, 2, 2, 1, 3], "none": [1, -1, 0, 2, -2, 1, -1, 0, 1, -1]}


def runs_of(base, arms, *, n_test=1000, dataset="mnist1d"):
    """A runs table: one baseline run per seed and one run per arm, as counts out of ``n_test``."""
    rows = []
    for s, b in enumerate(base):
        rows.append(dict(run_id=f"before-{s}", seed=s, placement="before", dataset=dataset, test_correct=b,
                         n_test=n_test, test_acc=b / n_test, diverged=False))
        for arm, d in arms.items():
            c = b + d[s]
            rows.append(dict(run_id=f"{arm}-{s}", seed=s, placement=arm, dataset=dataset, test_correct=c,
                             n_test=n_test, test_acc=c / n_test, diverged=False))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def holm():
    return stats.compare(runs_of(BASE, HOLM_ARMS))


@pytest.fixture(scope="module")
def with_margin():
    return stats.compare(runs_of(BASE, MARGIN_ARMS), margin=0.01)


def _row(cmp, arm):
    return cmp[cmp["arm"] == arm].iloc[0].to_dict()


@pytest.fixture(scope="session")
def sweep(tmp_path_factory, data_root):
    return report_sweep_dir(tmp_path_factory, data_root)


@pytest.fixture(scope="session")
def rendered_sweep(sweep, tmp_path_factory):
    return rendered_dir(tmp_path_factory, sweep)


# --- 1. the verdict beside the interval that agrees with it ------------------------------------------


def test_the_synthetic_family_has_a_row_holm_rejects_and_bonferroni_does_not(holm):
    none = _row(holm, "none")
    assert none["p"] == pytest.approx(0.03299072530617586, rel=1e-9)
    assert none["verdict"] == "better" and none["ci_low_simultaneous"] < 0 and none["ci_low_decision"] == 0


@pytest.mark.parametrize(("lo", "hi", "text"), [
    (0.0, 0.4, "(0, 0.40]"),
    (-0.5, 0.0, "[\u22120.50, 0)"),
    (0.1, 0.4, "[0.10, 0.40]"),
    (-0.18, 0.4, "[\u22120.18, 0.40]"),
    (0.0, math.inf, "(0, \u221e)"),
    (-math.inf, -0.12, "(\u2212\u221e, \u22120.12]"),
    (math.nan, math.nan, "\u2014"),
])
def test_a_decision_interval_end_at_zero_is_open(lo, hi, text):
    assert report.decision_interval(lo, hi) == text


def test_every_verdict_has_a_colour_and_a_meaning():
    assert list(report.VERDICT_COLORS) == list(stats.VERDICTS)
    assert list(report.VERDICT_MEANINGS) == list(stats.VERDICTS)
    assert len(set(report.VERDICT_COLORS.values())) == len(stats.VERDICTS)


def test_headline_markdown_puts_the_verdict_beside_its_decision_interval():
    md = report.headline_markdown(SimpleNamespace(runs=runs_of(BASE, HOLM_ARMS)))
    table, note = md.split("\n\n")
    head, _, *rows = table.splitlines()
    cols = [c.strip() for c in head.strip("|").split("|")]
    assert cols[3:7] == ["difference (pp)", "verdict", "95% decision interval (pp)", "p_adj (Holm)"]
    assert "95% CI per comparison (t) (pp)" in cols and "BCa 95% CI (pp)" in cols
    cells = {r.split("|")[3].strip().split(":")[0]: [c.strip() for c in r.strip("|").split("|")] for r in rows}
    # Holm's decision for 'none' is "better" at p_adj = 0.033; its Bonferroni interval (t quantile at
    # 1 - 0.05/(2*2)) reaches below 0, so the decision interval is cut at 0, open there; the per-comparison
    # t interval (which excludes 0) stays beside it
    d = np.array(HOLM_ARMS["none"]) / 10  # pp
    half = sps.t.ppf(1 - 0.05 / 4, 9) * d.std(ddof=1) / math.sqrt(10)
    assert (d.mean() - half < 0) and f"{d.mean() + half:.2f}" == "0.33"
    assert cells["none"][4:7] == ["better", "(0, 0.33]", "0.033"]
    assert cells["none"][7] == "0.02 to 0.30"
    assert cells["after"][4:6] == ["better", "[0.53, 0.67]"]
    assert "Holm (1979) over the 2 comparisons" in note and "an end at 0 is open" in note
    assert "Per comparison: the 95% paired t interval and the BCa bootstrap interval" in note


def test_rendered_headline_has_decision_intervals_and_says_which_interval_is_which(rendered_sweep, sweep):
    runs = store.load(sweep).runs
    cmp = stats.compare(runs, diverged="drop_pair")
    head = pd.read_csv(rendered_sweep / "tables" / "headline.csv")
    for col in ("ci_low_decision", "ci_high_decision", "ci_low_simultaneous", "ci_high_simultaneous", "p_adj",
                "family_size", "n_nonzero"):
        np.testing.assert_array_equal(head[col].to_numpy(), cmp[col].to_numpy(), err_msg=col)
    assert head["decision_interval_method"].tolist() == cmp["decision_interval_method"].tolist()
    assert head["verdict"].tolist() == cmp["verdict"].tolist()
    summary = json.loads((rendered_sweep / "summary.json").read_text())
    note = summary["headline_note"]
    assert "over the 4 comparisons" in note and "Decision interval: the 95% Bonferroni simultaneous interval" in note
    html = (rendered_sweep / "report.html").read_text()
    assert note in htmllib.unescape(html) and "95% decision interval (pp)" in html
    tex = (rendered_sweep / "tables" / "headline.tex").read_text()
    assert "decision interval" in tex and "verdict" in tex
    for c, (_, r) in zip(summary["comparisons"], cmp.iterrows(), strict=True):
        shown = report.decision_interval(r["ci_low_decision"] * 100, r["ci_high_decision"] * 100)
        assert c["ci_low_decision"] == r["ci_low_decision"] and shown in html


# --- 2. sentences that say what the verdict is ------------------------------------------------------------


def test_a_difference_names_the_adjusted_p_and_the_decision_interval(holm):
    assert report.cite_sentence(_row(holm, "none")) == (
        "No normalization had higher test accuracy than BN before the activation: +0.16 pp (Holm-adjusted "
        "p = 0.033 over 2 comparisons, 95% decision interval (0, 0.33] pp; per comparison: 95% CI 0.02 to 0.30, "
        "paired t(9) = 2.52, p = 0.033; d_z = 0.80; 10 seeds).")


def test_an_inconclusive_comparison_is_no_detectable_difference_never_changed_by():
    cmp = stats.compare(runs_of(BASE, {"after": HOLM_ARMS["after"], "none": [3, -1, 2, 4, 0, 1, 5, -2, 2, 1]}))
    row = _row(cmp, "none")
    assert row["verdict"] == "inconclusive" and row["ci_low"] < 0 < row["ci_high"]
    s = report.cite_sentence(row)
    assert s == ("No normalization showed no detectable difference in test accuracy from BN before the activation: "
                 "+0.15 pp (95% CI \u22120.01 to 0.31; paired t(9) = 2.18, p = 0.057, Holm-adjusted p = 0.057 over 2 "
                 "comparisons; d_z = 0.69; 10 seeds).")
    assert "changed" not in s


def test_within_margin_and_equivalent_say_both_facts(with_margin):
    within, equiv = _row(with_margin, "after"), _row(with_margin, "none")
    assert (within["verdict"], equiv["verdict"]) == ("better, within margin", "equivalent")
    s = report.cite_sentence(within)
    assert s.startswith("BN after the activation had higher test accuracy than BN before the activation, by less than "
                        "the equivalence margin (\u00b11.00 pp): +0.21 pp (Holm-adjusted p < 0.0001 over 2 comparisons, "
                        "95% decision interval [0.15, 0.27] pp; equivalence: TOST Holm-adjusted p < 0.0001; ")
    s = report.cite_sentence(equiv)
    assert s.startswith("No normalization was equivalent to BN before the activation in test accuracy within the margin "
                        "(\u00b11.00 pp), with no detectable difference: \u00b10.00 pp (TOST Holm-adjusted p < 0.0001 "
                        "over 2 comparisons; difference: Holm-adjusted p = 1.00; per comparison: 95% CI")


def test_not_estimable_says_why_with_counts():
    runs = runs_of(BASE[:4], {"after": [1, 2, 3, 4], "none": [1, 1, 1, 1]})
    hit = (runs["placement"] == "none") & (runs["seed"] > 0)
    runs.loc[hit, ["diverged", "test_acc", "test_correct"]] = [True, np.nan, np.nan]
    cmp = stats.compare(runs, diverged="drop_pair")
    row = _row(cmp, "none")
    assert row["verdict"] == "not estimable"
    assert report.cite_sentence(row) == (
        "No normalization could not be compared with BN before the activation in test accuracy: not estimable, "
        "1 usable pair of seeds where 2 are needed (3 pairs with a diverged run).")


@pytest.mark.parametrize(("n", "verdict", "p"), [(3, "inconclusive", "0.25"), (6, "better", "0.031")])
def test_a_degenerate_comparison_says_the_t_interval_is_undefined_and_gives_the_exact_test(n, verdict, p):
    cmp = stats.compare(runs_of(BASE[:n], {"after": [2] * n}))  # every seed gains 2 of 1000 examples
    row = _row(cmp, "after")
    assert row["verdict"] == verdict and row["method"] == "sign-flip (exact)" and math.isnan(row["ci_low"])
    s = report.cite_sentence(row)
    assert f"+0.20 pp on every one of the {n} seeds" in s
    assert "the t interval is undefined: every difference is equal" in s and f"exact sign-flip test p = {p}" in s
    assert "n/a" not in s and "nan" not in s.lower() and "inf" not in s
    cells = report.text.comparison_cells(row, report.MetricDisplay.of("test_acc"))
    assert cells["t_ci"] == "undefined (all differences equal)" and cells["p"] == f"{p} (sign-flip (exact))"


def test_ci_of_missing_ends_is_undefined_never_n_a_to_n_a():
    assert report.ci(math.nan, math.nan) == "undefined"


# --- 3. the test set's uncertainty -----------------------------------------------------------------------


def test_report_shows_the_interval_over_seeds_and_test_examples(rendered_sweep, sweep):
    runs = store.load(sweep).runs
    want = stats.compare_crossed(runs, rng=report.PARAMETERS["rng"], diverged="drop_pair")
    got = pd.read_csv(rendered_sweep / "tables" / "test_set.csv")
    for col in ("estimate", "ci_low", "ci_high", "boot_ci_low", "boot_ci_high", "ci_low_seeds", "ci_high_seeds",
                "var_seed", "var_example", "var_interaction", "p_adj"):
        np.testing.assert_array_equal(got[col].to_numpy(), want[col].to_numpy(), err_msg=col)
    np.testing.assert_allclose(got["share_seed"] + got["share_example"] + got["share_interaction"], 1, rtol=1e-12)
    np.testing.assert_allclose(got["width_ratio"], (want["ci_high"] - want["ci_low"])
                               / (want["ci_high_seeds"] - want["ci_low_seeds"]), rtol=1e-12)
    summary = json.loads((rendered_sweep / "summary.json").read_text())
    assert [r["ci_low"] for r in summary["test_set"]] == want["ci_low"].tolist()
    html = (rendered_sweep / "report.html").read_text()
    assert "The test set" in html and "it generalises to new data" in html and "it holds for this test set only" in html
    assert "seeds + test examples: new data" in html and "seeds only: this test set" in html


def test_a_crossed_interval_much_wider_than_the_seeds_only_one_gets_a_caveat(sweep, tmp_path):
    rep = report.Report(sweep, tmp_path / "out")
    cmp = stats.compare(rep.runs, diverged="drop_pair")
    crossed = rep.test_set()
    plain = rep.test_set_caveats(cmp, crossed)
    ratio = rep.test_set_raw(crossed)["width_ratio"]
    assert any("hides uncertainty" in c for c in plain) == bool((ratio >= report.text.CROSSED_MUCH_WIDER).any())
    wide = crossed.copy()
    half = (wide["ci_high_seeds"] - wide["ci_low_seeds"]).iloc[0]  # twice the seeds-only width on row 0
    wide.loc[0, ["ci_low", "ci_high"]] = [wide.loc[0, "estimate"] - half, wide.loc[0, "estimate"] + half]
    cav = rep.test_set_caveats(cmp, wide)
    hit = [c for c in cav if c.startswith("The fixed test set hides uncertainty")]
    assert len(hit) == 1 and f"{wide.loc[0, 'arch']}, {wide.loc[0, 'arm']}: 2.00\u00d7" in hit[0]


def test_a_verdict_that_does_not_hold_for_new_data_is_named(sweep, tmp_path):
    rep = report.Report(sweep, tmp_path / "out")
    cmp = stats.compare(rep.runs, diverged="drop_pair")
    decided = cmp[cmp["verdict"].isin(["better", "worse"])]
    assert len(decided), "the fixture sweep decides at least one difference"
    crossed = rep.test_set()
    first = decided.iloc[0]
    at = (crossed["arch"] == first["arch"]) & (crossed["arm"] == first["arm"])
    crossed.loc[at, "p_adj"] = 0.2
    cav = rep.test_set_caveats(cmp, crossed)
    name = f"{first['arch']}, {first['arm']} \u2212 before"
    assert any(c.startswith("1 difference verdict(s) hold for this test set only") and name in c for c in cav)
    assert "do not (" + name in rep.test_set_sentence(rep.test_set_raw(crossed), cmp)


def test_without_per_example_results_the_report_says_which_interval_it_lacks(sweep, tmp_path):
    rep = report.Report(sweep, tmp_path / "out")
    rep.runs = rep.runs.drop(columns=["test_correct_bits"])
    assert rep.test_set() is None
    html = rep.test_set_block(None, stats.compare(rep.runs, diverged="drop_pair"))._repr_html_()
    assert "Per-example results (test_correct_bits) are not stored" in html and "holds for it only" in html


# --- 4. caveats from the design, as a list everywhere --------------------------------------------------------


CONFIG = {"dataset": "mnist1d", "grid": {"arch": ["mlp"], "placement": ["before", "after", "none"]},
          "train": {"epochs": 30, "optimizer": "sgd", "lr": 0.05, "schedule": "cosine", "batch_size": 128,
                    "momentum": 0.9, "weight_decay": 0.0005}}


def test_design_caveats_name_the_limits_of_the_design():
    runs = runs_of(BASE[:4], {"after": [1, 2, 3, 4]})
    runs.loc[runs["run_id"] == "after-3", "diverged"] = True
    cav = report.design_caveats(runs, config=CONFIG, n_seeds=4, by=[])
    assert cav == [
        "Every arm was trained with the same hyperparameters (30 epochs, sgd, lr 0.05, cosine schedule, batch 128, "
        "momentum 0.9, weight decay 0.0005), none tuned per arm: a difference between arms may come from how well this "
        "one setting suits each arm (a tuning effect), not from the arms themselves",
        "One dataset (mnist1d): the differences may not carry over to other data",
        "One fixed test set of 1,000 examples: every interval over seeds (headline, How to cite) holds for this test "
        "set only; no interval covers the sampling of the test examples (per-example results are not stored with "
        "these runs)",
        "Only 4 seeds per comparison (fewer than 10): the intervals are wide, the SD of the differences is itself "
        "uncertain, and the exact sign-flip test cannot go below p = 0.12 (two-sided)",
        "1 of 8 runs diverged (non-finite loss), dropped with their pair from the comparison (diverged='drop_pair'): "
        "after: 1",
    ]


def test_the_test_set_caveat_says_where_the_interval_over_test_examples_is():
    runs = runs_of(BASE, {"after": HOLM_ARMS["after"]})

    def tail(metric="test_acc", **kw):
        return next(c for c in report.design_caveats(runs, config=CONFIG, metric=metric, **kw)
                    if c.startswith("One fixed test set")).split("; ", 1)[1]

    assert tail() == ("no interval covers the sampling of the test examples (per-example results are not stored "
                      "with these runs)")
    assert tail(crossed=True) == "the interval over seeds and test examples (section 'The test set') also covers new test data"
    runs["test_correct_bits"] = b"\x00" * 125
    assert tail().endswith("is in the report (bnstats report, section 'The test set')")
    assert tail("test_loss").endswith("(the interval over seeds and test examples is computed for accuracies only)")
    assert not any(c.startswith("One fixed test set") for c in report.design_caveats(runs, config=CONFIG,
                                                                                      metric="train_loss"))


def test_no_tuning_caveat_when_the_store_holds_per_arm_tuning_runs():
    runs = runs_of(BASE, {"after": HOLM_ARMS["after"]})
    runs["stage"] = np.where(runs["seed"] < 2, "tune", "evaluate")
    cav = report.design_caveats(runs, config=CONFIG, n_seeds=10)
    assert not any("hyperparameters" in c for c in cav) and any(c.startswith("One dataset") for c in cav)
    runs["stage"] = "evaluate"
    assert report.design_caveats(runs, config=CONFIG, n_seeds=10)[0].startswith("Every arm was trained with the same")
    # the evaluation runs alone (what the report holds) with the sweep's word that it tuned
    assert not any("hyperparameters" in c for c in report.design_caveats(runs, config=CONFIG, n_seeds=10, tuned=True))
    # a diverged tuning run is not a diverged run of the comparison
    runs["stage"] = np.where(runs["seed"] < 2, "tune", "evaluate")
    runs.loc[runs["stage"] == "tune", "diverged"] = True
    assert not any("diverged" in c for c in report.design_caveats(runs, config=CONFIG, n_seeds=8))


def test_a_train_key_in_the_grid_is_named_as_a_cell_factor_and_imports_are_not_assumed_untuned():
    cfg = {**CONFIG, "grid": {**CONFIG["grid"], "lr": [0.05, 0.1]}}
    runs = runs_of(BASE, {"after": HOLM_ARMS["after"]})
    first = report.design_caveats(runs, config=cfg, n_seeds=10)[0]
    assert "lr 0.05/0.1" in first and first.endswith("lr varies over the grid as a cell factor, each value shared by "
                                                       "every arm")
    first = report.design_caveats(runs, config=None, n_seeds=10)[0]
    assert first.startswith("Imported runs: whether each arm's hyperparameters were tuned for it is not recorded")


def test_rendered_caveats_are_lists_with_the_design_limits(rendered_sweep):
    summary = json.loads((rendered_sweep / "summary.json").read_text())
    assert isinstance(summary["caveats"], list) and all(isinstance(c, str) and "\n" not in c for c in summary["caveats"])
    assert summary["caveats"][0].startswith("Every arm was trained with the same hyperparameters (2 epochs, sgd, lr 0.05")
    assert any(c.startswith("One fixed test set of 1,000 examples") and "section 'The test set'" in c
               for c in summary["caveats"])
    assert any(c.startswith("Only 4 seeds per comparison") for c in summary["caveats"])
    for comp in summary["comparisons"]:
        assert isinstance(comp["caveats"], list) and comp["caveats"]
        assert all("\n" not in c for c in comp["caveats"])
    html = (rendered_sweep / "report.html").read_text()
    items = html.split('<ul class="caveats">')[1].split("</ul>")[0]
    assert items.count("<li>") >= len(summary["caveats"]) + 2
    assert "<li>One dataset (mnist1d): the differences may not carry over to other data.</li>" in items


def test_grouped_caveats_keep_a_caveat_that_contains_a_semicolon_whole():
    cmp = pd.DataFrame([{"arm": "after", "baseline": "before", "caveats": "a; b\nc"},
                        {"arm": "none", "baseline": "before", "caveats": "a; b"}])
    assert report.grouped_caveats(cmp, []) == ["a; b (all comparisons)", "c (after \u2212 before)"]


# --- 5. bnstats compare reads like the report ------------------------------------------------------------


def _run(capsys, *args):
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_compare_prints_percentage_points_the_decision_interval_and_the_caveats(sweep, capsys):
    rc, out, err = _run(capsys, "compare", sweep)
    assert rc == 0, err
    want = stats.compare(store.load(sweep).runs, diverged="drop_pair")
    header = " ".join(out.split("\n\n")[0].split())  # prose is wrapped for the terminal
    assert header == ("Test accuracy (test_acc) by placement: each arm \u2212 before, paired on seed; levels in %, "
                      "differences in percentage points (pp); 95% intervals; verdicts from p adjusted by Holm over 4 "
                      "comparisons.")
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("arch"))
    assert lines[head].split()[:3] == ["arch", "arm", "n"]
    for col in ("before (%)", "arm (%)", "\u0394 (pp)", "verdict", "decision interval (pp)", "p_adj", "95% CI (pp)"):
        assert col in lines[head], col
    assert "p_tost_adj" not in out
    for r, line in zip(want.to_dict("records"), lines[head + 1:head + 5], strict=True):
        assert report.num(r["estimate"] * 100, 2, sign=True) in line and r["verdict"] in line
        assert report.decision_interval(r["ci_low_decision"] * 100, r["ci_high_decision"] * 100) in line
    tail = "\n".join(lines[head + 5:])
    assert "\nCaveats:\n  - Every arm was trained with the same hyperparameters" in tail
    assert "  - One dataset (mnist1d)" in tail and "(bnstats report, section 'The test set')" in out.replace("\n    ", " ")


def test_compare_with_a_margin_shows_the_adjusted_tost_p(sweep, capsys, tmp_path):
    csv = tmp_path / "c.csv"
    rc, out, _ = _run(capsys, "compare", sweep, "--margin", "0.05", "--csv", csv)
    assert rc == 0 and "p_tost_adj" in out
    full = pd.read_csv(csv)
    shown = [report.fmt_p(p) for p in full["p_tost_adj"]]
    head = next(line for line in out.splitlines() if line.startswith("arch"))
    rows = out.splitlines()[out.splitlines().index(head) + 1:][:4]
    at = head.index("p_tost_adj") + len("p_tost_adj")
    assert [r[:at].split()[-1] for r in rows] == shown
    assert full["p_tost_adj"].tolist() == stats.compare(store.load(sweep).runs, diverged="drop_pair",
                                                        margin=0.05)["p_tost_adj"].tolist()  # every digit


def test_plan_prints_its_caveats_one_per_line_under_the_table(sweep, capsys):
    rc, out, err = _run(capsys, "plan", sweep, "--effect", "0.01")
    assert rc == 0, err
    table, caveats = out.split("\nCaveats:\n")
    assert "\\n" not in out and "pilot of 4 seeds" not in table
    items = [line for line in caveats.splitlines() if line.startswith("  - ")]
    assert items and items[0].startswith("  - pilot of 4 seeds (< 10): its sd_diff is uncertain")
    assert "seeds_for_power" in table and "range" in table and "95% CI of SD (pp)" in table


# --- 6. a [train] key in [grid] (issue 22 item 8) --------------------------------------------------------------


@pytest.fixture(scope="module")
def lr_sweep(tmp_path_factory, data_root):
    """2 placements x lr 0.05/0.1 x 2 seeds, 1 epoch: the curves have their own per-epoch ``lr`` column."""
    root = tmp_path_factory.mktemp("lr-sweep")
    toml = tiny_toml(data_root, name="lr-grid", seeds=2, epochs=1).replace(
        'arch = ["mlp", "cnn"]', 'arch = ["mlp"]\nlr = [0.05, 0.1]').replace('placement = ["before", "after", "none"]',
                                                                         'placement = ["before", "after"]')
    (root / "lr.toml").write_text(toml)
    run_sweep(config.load(root / "lr.toml"), root / "sweep", executor=InlineExecutor(), progress=False)
    return root / "sweep"


def test_a_grid_over_lr_keeps_each_runs_lr_in_curves_and_moments(lr_sweep, tmp_path):
    rep = report.Report(lr_sweep, tmp_path / "out")
    assert rep.by == ["arch", "lr"] and "lr" in rep.res.curves.columns
    fig = figures.learning_curves_figure(rep)
    assert [ax.get_title() for ax in fig.axes[::2]] == ["arch = mlp, lr = 0.05", "arch = mlp, lr = 0.1"]
    # the moments are grouped by each run's own lr, not by the curves' or moments' per-epoch columns
    mom = figures.probe_moments(rep, moments=["skew"])
    raw = rep.res.moments
    raw = raw[(raw["source"] == "probe") & raw["site"].isin(figures.SITES)].drop(columns=["lr"], errors="ignore")
    raw = raw.merge(rep.runs[["run_id", "lr", "placement", "arch"]], on="run_id")
    keys = ["placement", "arch", "lr", "epoch", "layer", "site"]
    want = raw.groupby(keys, observed=True)["skew"].mean().rename("skew_mean").reset_index()
    got = mom.merge(want, on=keys, suffixes=("", "_want"))
    assert len(mom) and len(got) == len(mom) == len(want) and sorted(mom["lr"].unique()) == [0.05, 0.1]
    np.testing.assert_allclose(got["skew_mean"], got["skew_mean_want"], rtol=1e-12)


@pytest.mark.slow
def test_report_of_a_sweep_with_a_grid_over_lr_renders_end_to_end(lr_sweep, tmp_path, capsys):
    out = tmp_path / "report"
    rc, _, err = _run(capsys, "report", lr_sweep, "--out", out, "--quiet")
    assert rc == 0, err
    assert (out / "report.pdf").read_bytes().startswith(b"%PDF") and (out / "figures" / "learning_curves.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert [(c["lr"], c["arm"]) for c in summary["comparisons"]] == [(0.05, "after"), (0.1, "after")]
    shutil.rmtree(out)


def test_degenerate_and_not_estimable_rows_read_without_nan_in_every_block(sweep, tmp_path):
    """A comparison where every seed gains the same 2 examples, and one with 1 usable pair, through the
    headline, How to cite, the test set, Methods, caveats and summary: no "nan", no "n/a to n/a"."""
    rep = report.Report(sweep, tmp_path / "out")
    runs = rep.runs.copy()
    base = runs[(runs["arch"] == "cnn") & (runs["placement"] == "before")].set_index("seed")["test_correct"]
    after = (runs["arch"] == "cnn") & (runs["placement"] == "after")
    runs.loc[after, "test_correct"] = runs.loc[after, "seed"].map(base + 2).to_numpy()
    runs.loc[after, "test_acc"] = runs.loc[after, "test_correct"] / runs.loc[after, "n_test"]
    none = (runs["arch"] == "mlp") & (runs["placement"] == "none") & (runs["seed"] > 0)
    runs.loc[none, ["diverged", "test_acc", "test_correct", "test_correct_bits"]] = [True, np.nan, np.nan, None]
    rep.runs = runs
    cmp = stats.compare(runs, diverged="drop_pair")
    assert cmp["verdict"].tolist()[0] == "inconclusive" and cmp["method"].tolist()[0] == "sign-flip (exact)"
    assert cmp["verdict"].tolist()[3] == "not estimable"
    desc = stats.describe(runs)
    cert = report.pairing_certificate(runs, "placement")
    raw, shown, tex = rep.headline(cmp, desc)
    crossed = rep.test_set()
    cite, sentences = rep.cite_block(cmp)
    blocks = [rep.headline_table(raw, shown, tex, cmp), cite, rep.test_set_block(crossed, cmp),
              rep.methods_block(cmp, crossed)]
    text = "\n".join(b._repr_html_() for b in blocks)
    assert not re.search(r"\b(nan|inf|n/a)\b", text, flags=re.IGNORECASE), re.findall(r".{60}\b(?:nan|inf|n/a)\b.{20}", text)
    caveats = rep.caveats_block(cmp, desc, cert, crossed=crossed)._repr_html_()  # stats' caveats may name NaN values
    assert not re.search(r"\b(nan|inf|n/a)\b", caveats) and "not estimable: 1 usable pair(s) of 4 seed(s)" in caveats
    assert "t: undefined (all differences equal)" in text and "decided by the exact sign-flip test" in text
    assert "+0.20 pp on every one of the 4 seeds" in sentences[0] and "not estimable, 1 usable pair" in sentences[3]
    assert tex.iloc[3].tolist().count("---") == 0 and "\u2014" in tex.iloc[3].tolist()
    summary = rep.summary(cmp, raw, cert, sentences, crossed)
    json.dumps(summary, allow_nan=False)  # NaN becomes null, never "NaN"
    assert summary["test_set"][3]["method"] == "not estimable"
