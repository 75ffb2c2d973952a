"""The report: a papermill notebook rendered to HTML and PDF, its tables, figures and summary.json.

One fixture sweep and one render per session (``rendered``); the byte-identity test renders a second
time, through the CLI.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from bnstats import cli, config, report, stats, store
from bnstats.sweep import InlineExecutor, run_sweep
from tests.conftest import tiny_toml

pypdf = pytest.importorskip("pypdf")

REPO = Path(__file__).resolve().parents[1]
_SWEEPS: dict[str, Path] = {}


def _toml(data_root: Path) -> str:
    return tiny_toml(data_root, name="report-tiny", seeds=4, epochs=2)


def report_sweep_dir(tmp_path_factory, data_root) -> Path:
    """A tiny real sweep (2 archs x 3 placements x 4 seeds, 2 epochs), built once per session."""
    if "tiny" not in _SWEEPS:
        root = tmp_path_factory.mktemp("report-sweep")
        cfg = root / "tiny.toml"
        cfg.write_text(_toml(data_root))
        out = root / "sweep"
        run_sweep(config.load(cfg), out, executor=InlineExecutor(), progress=False)
        _SWEEPS["tiny"] = out
    return _SWEEPS["tiny"]


@pytest.fixture(scope="session")
def report_sweep(tmp_path_factory, data_root) -> Path:
    return report_sweep_dir(tmp_path_factory, data_root)


def rendered_dir(tmp_path_factory, sweep: Path) -> Path:
    """The fixture sweep's report, rendered once per session (shared with test_report_claims.py)."""
    if "rendered" not in _SWEEPS:
        _SWEEPS["rendered"] = report.render(sweep, tmp_path_factory.mktemp("report") / "out")
    return _SWEEPS["rendered"]


@pytest.fixture(scope="session")
def rendered(report_sweep, tmp_path_factory) -> Path:
    return rendered_dir(tmp_path_factory, report_sweep)


FIGURES = ("paired_seeds", "differences", "forest", "learning_curves", "moments_cnn", "moments_mlp", "association")
TABLES = ("headline", "arms", "comparisons", "pairing", "interactions", "seed_variance", "paired_association",
          "association")
TEX_TABLES = ("headline", "arms", "interactions", "seed_variance", "paired_association", "association")
SECTIONS = ("Question and design", "Headline", "Interactions and seed variance", "Figures", "How to cite", "Methods",
            "Caveats", "provenance")


def _pdf_text(path: Path) -> str:
    return "\n".join(page.extract_text() for page in pypdf.PdfReader(path).pages)


# --- the rendered report --------------------------------------------------------------------------


def test_render_writes_every_file(rendered):
    for name in ("report.html", "report.pdf", "report.ipynb", "summary.json"):
        assert (rendered / name).is_file(), name
    for name in TABLES:
        assert (rendered / "tables" / f"{name}.csv").is_file(), name
    for name in TEX_TABLES:
        tex = (rendered / "tables" / f"{name}.tex").read_text()
        assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex and "\\begin{tabular}" in tex
        body = [line for line in tex.splitlines() if not line.startswith("%")]
        assert all(line.isascii() for line in body), name  # pdflatex-safe: no Unicode minus, ±, Δ
    for name in FIGURES:
        png = (rendered / "figures" / f"{name}.png").read_bytes()
        pdf = (rendered / "figures" / f"{name}.pdf").read_bytes()
        assert png.startswith(b"\x89PNG") and pdf.startswith(b"%PDF"), name
        assert b"CreationDate" not in pdf and b"Matplotlib" not in png
    summary = json.loads((rendered / "summary.json").read_text())
    on_disk = sorted(p.relative_to(rendered).as_posix() for p in rendered.rglob("*")
                     if p.is_file() and p.parent.name in ("tables", "figures"))
    assert sorted(f for f in summary["files"] if f != "summary.json") == on_disk


def test_pdf_is_a4_and_has_the_sections_in_order(rendered):
    reader = pypdf.PdfReader(rendered / "report.pdf")
    box = reader.pages[0].mediabox
    assert (round(float(box.width)), round(float(box.height))) == (595, 842)  # A4 in points
    text = _pdf_text(rendered / "report.pdf")
    where = [text.find(s) for s in SECTIONS]
    assert all(i >= 0 for i in where), dict(zip(SECTIONS, where, strict=True))
    assert where == sorted(where)
    # no TeX for offline readers; intervals in plain text
    assert "\\pm" not in text and "$" not in text
    assert "95% CI" in text and "paired t(3)" in text and "store hash" in text


def test_pdf_and_html_carry_the_cite_sentences(rendered):
    summary = json.loads((rendered / "summary.json").read_text())
    html = (rendered / "report.html").read_text()
    text = " ".join(_pdf_text(rendered / "report.pdf").split())
    for c in summary["comparisons"]:
        assert report.esc(c["sentence"]).replace(" = ", "\u00a0=\u00a0") in html
        assert c["sentence"][-30:] in text.replace("\u00a0", " ")


def test_html_is_offline_and_shows_no_code(rendered):
    html = (rendered / "report.html").read_text()
    assert "<script" not in html.lower()
    assert "mathjax" not in html.lower()
    assert "stats.compare(runs" not in html and "report.setup_plotting" not in html
    assert "data:image/png;base64," in html


def test_executed_notebook_ran_clean(rendered):
    nb = nbformat.read(rendered / "report.ipynb", as_version=4)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", out
            assert not (out["output_type"] == "stream" and out["name"] == "stderr"), out["text"]
    assert [c["id"] for c in nb.cells] == [f"cell-{i:03d}" for i in range(len(nb.cells))]
    assert "start_time" not in json.dumps(nb.metadata)


def test_summary_equals_stats_compare_on_the_same_store(rendered, report_sweep):
    summary = json.loads((rendered / "summary.json").read_text())
    p = summary["parameters"]
    runs = store.load(report_sweep).runs
    cmp = stats.compare(runs, metric=p["metric"], factor=p["factor"], baseline=p["baseline"],
                        confidence_level=p["confidence_level"], margin=p["margin"], p_adjust=p["p_adjust"],
                        n_resamples=p["n_resamples"], rng=p["rng"], diverged=p["diverged"])
    desc = stats.describe(runs, metric=p["metric"], factor=p["factor"]).set_index(["arch", "arm"])
    assert len(summary["comparisons"]) == len(cmp) == 4
    assert summary["store_hash"] == report.store_hash(runs)
    checked = 0
    for row, (_, ref) in zip(summary["comparisons"], cmp.iterrows(), strict=True):
        assert (row["arch"], row["arm"], row["baseline"]) == (ref["arch"], ref["arm"], ref["baseline"])
        for key, value in row.items():
            if key == "caveats":  # a list in summary.json, one caveat per line in the frame
                assert value == stats.caveat_list(ref[key]) and value
                checked += 1
            elif key in ref.index:
                want = ref[key]
                if isinstance(want, float) and math.isnan(want):
                    assert value is None, key
                else:
                    assert value == (want.item() if isinstance(want, np.generic) else want), key
                checked += 1
        for side, arm in (("baseline", row["baseline"]), ("arm", row["arm"])):
            assert row[f"mean_{side}"] == desc.loc[(row["arch"], arm), "mean"]
            assert row[f"sd_{side}"] == desc.loc[(row["arch"], arm), "sd"]
        assert row["sentence"] == report.cite_sentence(ref, by=["arch"])
    assert checked >= 4 * 20


def test_headline_csv_has_every_digit_and_tex_is_rounded(rendered, report_sweep):
    head = pd.read_csv(rendered / "tables" / "headline.csv")
    summary = json.loads((rendered / "summary.json").read_text())
    assert head["estimate"].tolist() == [c["estimate"] for c in summary["comparisons"]]
    tex = (rendered / "tables" / "headline.tex").read_text()
    est = summary["comparisons"][0]["estimate"] * 100
    assert f"{est:+.2f}".replace("-", "$-$") in tex
    assert "\\_" in tex or "_" not in tex.split("\\midrule")[1]


def test_rendering_twice_gives_identical_bytes(rendered, report_sweep, tmp_path):
    second = tmp_path / "again"
    assert cli.main(["report", str(report_sweep), "--out", str(second), "--quiet"]) == 0
    files = ["report.pdf", "report.html", "report.ipynb", "summary.json",
             *(p.relative_to(rendered).as_posix() for p in sorted((rendered / "tables").iterdir())),
             *(p.relative_to(rendered).as_posix() for p in sorted((rendered / "figures").iterdir()))]
    differ = [f for f in files if (rendered / f).read_bytes() != (second / f).read_bytes()]
    assert differ == []


# --- parameters -------------------------------------------------------------------------------------


def test_notebook_parameters_match_the_module(tmp_path):
    import papermill

    nb = report.notebook_path()
    assert nb.resolve() == (REPO / "reports" / "report.ipynb").resolve()
    found = papermill.inspect_notebook(str(nb))
    assert list(found) == list(report.PARAMETERS)
    for name, info in found.items():
        assert eval(info["default"]) == report.PARAMETERS[name], name  # noqa: S307 - our own literals


def test_packaged_notebook_is_the_source_one():
    packaged = REPO / "bnstats" / "reports" / "report.ipynb"
    assert packaged.read_bytes() == (REPO / "reports" / "report.ipynb").read_bytes()


def test_parse_sets_reads_toml_values_and_bare_words():
    got = report.parse_sets(["metric=test_loss", "margin=0.005", "title=007", 'baseline="after"',
                             "confidence_level=0.9", "margin=[-0.003, 0.005]", "rng=7"])
    assert got == {"metric": "test_loss", "margin": [-0.003, 0.005], "title": "007", "baseline": "after",
                   "confidence_level": 0.9, "rng": 7}
    assert report.parse_sets(["margin=none"]) == {"margin": None}
    with pytest.raises(ValueError, match="--set colour: unknown parameter; valid names are: results, out"):
        report.parse_sets(["colour=red"])
    with pytest.raises(ValueError, match="NAME=VALUE"):
        report.parse_sets(["metric"])


@pytest.mark.parametrize(("params", "match"), [
    ({"baseline": "sideways"}, "baseline='sideways' is not a level of factor 'placement'"),
    ({"metric": "nope"}, "metric='nope' is not a numeric column"),
    ({"factor": "seed"}, "factor='seed' is not a grid factor"),
    ({"confidence_level": 95}, "confidence_level must be in the open interval"),
    ({"confidence_level": True}, "confidence_level must be a real number"),
    ({"p_adjust": "fdr"}, "p_adjust must be one of"),
    ({"margin": -1}, "margin must be a finite number > 0"),
    ({"colour": "red"}, "unknown report parameter"),
    ({"out": "x"}, "--set out: give the sweep directory and the output folder as arguments"),
])
def test_render_refuses_bad_parameters_before_running(report_sweep, tmp_path, params, match):
    with pytest.raises(ValueError, match=match):
        report.render(report_sweep, tmp_path / "r", parameters=params)
    assert not (tmp_path / "r").exists()


def test_render_refuses_to_write_into_the_sweep(report_sweep):
    with pytest.raises(ValueError, match="is a sweep directory"):
        report.render(report_sweep, report_sweep)


def test_render_of_a_missing_sweep_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a bnstats sweep"):
        report.render(tmp_path / "nothing")


# --- pieces ----------------------------------------------------------------------------------------


ROW = {"factor": "placement", "metric": "test_acc", "arm": "after", "baseline": "before", "arch": "mlp",
       "activation": "relu", "n": 30, "estimate": 0.0042, "ci_low": 0.0021, "ci_high": 0.0063, "t": 4.1, "df": 29.0,
       "p": 0.0003, "p_adj": 0.0012, "p_adjust_method": "holm", "d_z": 0.75, "confidence_level": 0.95,
       "verdict": "better", "method": "paired t", "family_size": 12, "ci_low_decision": 0.0,
       "ci_high_decision": 0.0071, "p_tost_adj": float("nan")}


def test_cite_sentence():
    assert report.cite_sentence(ROW, by=["arch", "activation"]) == (
        "With arch = mlp, activation = relu, BN after the activation had higher test accuracy than BN before the "
        "activation: +0.42 pp (Holm-adjusted p = 0.0012 over 12 comparisons, 95% decision interval (0, 0.71] pp; "
        "per comparison: 95% CI 0.21 to 0.63, paired t(29) = 4.10, p = 0.00030; d_z = 0.75; 30 seeds).")


def test_cite_sentence_negative_tiny_p_other_factor_and_loss():
    row = {**ROW, "factor": "norm", "metric": "test_loss", "arm": "layer", "baseline": "batch", "estimate": -0.0123,
           "ci_low": -0.02, "ci_high": -0.0046, "t": -7.25, "p": 3e-8, "p_adj": 1e-7, "p_adjust_method": "bh",
           "d_z": -1.3, "confidence_level": 0.9, "ci_low_decision": -0.0215, "ci_high_decision": -0.0031}
    assert report.cite_sentence(row) == (
        "Norm = layer had lower test loss than norm = batch: \u22120.0123 (BH-adjusted p < 0.0001 over 12 comparisons, "
        "90% decision interval [\u22120.0215, \u22120.0031]; per comparison: 90% CI \u22120.0200 to \u22120.0046, "
        "paired t(29) = \u22127.25, p < 0.0001; d_z = \u22121.30; 30 seeds).")


def test_cite_sentence_when_every_difference_is_equal():
    row = {**ROW, "estimate": 0.01, "ci_low": float("nan"), "ci_high": float("nan"), "t": float("nan"), "p": 0.03125,
           "p_adj": 0.03125, "d_z": float("nan"), "n": 6, "method": "sign-flip (exact)", "family_size": 1,
           "ci_low_decision": 0.0, "ci_high_decision": float("inf")}
    s = report.cite_sentence(row)
    assert s == ("BN after the activation had higher test accuracy than BN before the activation: +1.00 pp on every one "
                 "of the 6 seeds (exact sign-flip test p = 0.031, Holm-adjusted p = 0.031 over 1 comparison; the t "
                 "interval is undefined: every difference is equal; 6 seeds).")


@pytest.mark.parametrize(("p", "text"), [(0.75, "0.75"), (0.05, "0.050"), (0.032, "0.032"), (0.00031, "0.00031"),
                                         (1.0, "1.00"), (1e-5, "< 0.0001"), (0.0, "< 0.0001"), (float("nan"), "n/a")])
def test_fmt_p(p, text):
    assert report.fmt_p(p) == text


def test_num_uses_a_real_minus_and_drops_the_sign_of_zero():
    assert report.num(-1.234, 2) == "\u22121.23"
    assert report.num(1.234, 2, sign=True) == "+1.23"
    assert report.num(-0.001, 2) == "0.00"
    assert report.num(-1.5, 1, style="tex") == "$-$1.5"
    assert report.num(float("nan")) == "n/a"
    assert report.ci(-0.5, 0.25) == "\u22120.50 to 0.25"


def test_stats_caveats_are_one_line_each_and_listed_whole_by_the_report():
    """A caveat that contains "; " stays one item (caveats are "\\n"-joined in frames, no "; " splitting)."""
    a = np.array([0.90, 0.91, 0.92, 0.93, 0.94, 0.95])
    b = a + np.array([0.0, 0.01, 0.02, -0.01, 0.03, 0.01])
    cav = stats.paired(a, b).caveats
    frame = pd.DataFrame([{"arm": "after", "baseline": "before", "caveats": "\n".join(cav)}])
    assert report.grouped_caveats(frame, []) == [f"{c} (after \u2212 before)" for c in cav]


def test_pairing_certificate_names_the_seed_that_breaks_it(report_sweep):
    runs = store.load(report_sweep).runs
    cert = report.pairing_certificate(runs, "placement")
    assert cert["ok"].all() and len(cert) == 4 * 2
    bad = runs.copy()
    bad.loc[(bad["seed"] == 2) & (bad["placement"] == "after") & (bad["arch"] == "mlp"), "init_hash"] = "0" * 16
    cert = report.pairing_certificate(bad, "placement", factors=["arch", "placement"])
    assert sorted(cert.loc[~cert["ok"], "seed"]) == [2]


def test_a_diverged_runs_order_prefix_does_not_break_the_certificate_but_its_init_still_counts(report_sweep):
    """A run that diverged stops drawing batches, so its order_hash covers a prefix (the tuned reference study
    has 4 such runs): its order is left out and counted, its initial weights are still checked."""
    runs = store.load(report_sweep).runs
    sel = (runs["seed"] == 1) & (runs["placement"] == "none") & (runs["arch"] == "cnn")
    div = runs.copy()
    div.loc[sel, ["diverged", "order_hash"]] = [True, "f" * 16]
    cert = report.pairing_certificate(div, "placement", factors=["arch", "placement"])
    assert cert["ok"].all() and cert.loc[cert["n_diverged"] > 0, ["seed", "arch"]].values.tolist() == [[1, "cnn"]]
    assert cert["n_diverged"].sum() == 1 and (cert["n_order_hash"] == 1).all()
    div.loc[sel, "init_hash"] = "0" * 16  # a diverged run that did not start from its arms' weights: not paired
    cert = report.pairing_certificate(div, "placement", factors=["arch", "placement"])
    assert cert.loc[~cert["ok"], ["seed", "arch"]].values.tolist() == [[1, "cnn"]]
    div.loc[sel, "diverged"] = False  # the same order mismatch without divergence breaks the certificate
    div.loc[sel, "init_hash"] = runs.loc[sel, "init_hash"]
    cert = report.pairing_certificate(div, "placement", factors=["arch", "placement"])
    assert cert.loc[~cert["ok"], ["seed", "arch"]].values.tolist() == [[1, "cnn"]]


def test_store_hash_ignores_row_and_column_order_but_not_content(report_sweep):
    runs = store.load(report_sweep).runs
    h = report.store_hash(runs)
    assert report.store_hash(runs.sample(frac=1, random_state=1)[runs.columns[::-1]]) == h
    changed = runs.copy()
    changed.loc[0, "test_acc"] = np.nextafter(changed.loc[0, "test_acc"], 1)
    assert report.store_hash(changed) != h


def test_diverged_runs_are_dropped_counted_and_named(report_sweep, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(report_sweep, copy)
    store.Store(copy).compact()
    path = copy / "tables" / "runs.parquet"
    df = pd.read_parquet(path)
    hit = (df["seed"] == 1) & (df["arch"] == "cnn") & (df["placement"] == "after")
    df.loc[hit, ["diverged", "test_acc"]] = [True, np.nan]
    df.to_parquet(path, index=False)
    rep = report.Report(copy, tmp_path / "out")
    cmp = stats.compare(rep.runs, diverged="drop_pair")
    desc = stats.describe(rep.runs)
    text = rep.caveats_block(cmp, desc, report.pairing_certificate(rep.runs, "placement"))._repr_html_()
    assert ("1 of 24 runs diverged (non-finite loss), dropped with their pair from the comparison "
            "(diverged=&#x27;drop_pair&#x27;): cnn, after: 1") in text
    assert "1 pair(s) with a diverged run dropped" in text
    assert cmp.loc[(cmp["arch"] == "cnn") & (cmp["arm"] == "after"), "n"].item() == 3
    # the certificate's sentence says what it compared for the diverged run (its init, not its order prefix)
    cert = report.pairing_certificate(rep.runs, "placement")
    said = rep._pairing_text(cert)
    assert said.startswith("<b>yes</b>") and ("1 run diverged and stopped drawing batches: for it only init_hash "
                                              "is compared") in said
    assert "diverged" not in report.Report(report_sweep, tmp_path / "out2")._pairing_text(
        report.pairing_certificate(store.load(report_sweep).runs, "placement"))


# --- interactions and seed variance (report/factorial.py) ----------------------------------------------

# R 4.2.2, nlme 3.1.162, on the data of tests/stats/test_stats_models.py with the report's references:
#   d <- data.frame(seed=factor(seed), placement=relevel(factor(placement), "before"),
#                   activation=relevel(factor(activation), "relu"), acc)
#   f <- lme(acc ~ placement * activation, random = ~1 | seed, data = d, method = "REML")
#   b <- fixef(f)[4]; se <- sqrt(diag(vcov(f)))[4]
#   sprintf("%.17g", c(b, se, b - qnorm(0.975)*se, b + qnorm(0.975)*se, 2*pnorm(-abs(b/se))))
R_INTERACTION = (0.0021500000000000091, 0.0013528228377844495, -0.0005014840395207833, 0.0048014840395208015,
                 0.11199957404362007)
#   x0 <- acc[placement=="before" & activation=="relu"]; x1 <- acc[placement=="after" & activation=="relu"]
#   ct <- cor.test(x1 - x0, x1 + x0)       # Pitman-Morgan: the correlation of difference and sum
#   sprintf("%.17g", c(var(x1)/var(x0), ct$estimate, ct$statistic, ct$p.value))
R_PITMAN = (2.2609008038079623, 0.51600139214037621, 1.2047835045647992, 0.29469251578952765)


def _nlme_frame() -> pd.DataFrame:
    from tests.stats.test_stats_models import ACC, ACTIVATION, PLACEMENT, SEED

    runs = pd.DataFrame({"seed": SEED, "placement": PLACEMENT, "activation": ACTIVATION, "test_acc": ACC})
    runs.attrs["factors"] = ["placement", "activation"]
    return runs


def test_interaction_table_matches_nlme_and_the_difference_in_differences():
    from bnstats.report.factorial import interaction_table

    runs = _nlme_frame()
    t = interaction_table(runs, levels={"placement": ["before", "after"], "activation": ["relu", "tanh"]})
    assert len(t) == 1
    row = t.iloc[0]
    assert (row["arm"], row["baseline"], row["other"], row["level"], row["reference"]) == (
        "after", "before", "activation", "tanh", "relu")
    b, se, lo, hi, p = R_INTERACTION
    assert row["estimate"] == pytest.approx(b, rel=1e-9)
    # variance components from different optimisers (nlme vs statsmodels): ~1e-5 relative, as in test_stats_models
    assert row["ci_low"] == pytest.approx(lo, rel=1e-4) and row["ci_high"] == pytest.approx(hi, rel=1e-4)
    assert row["p"] == pytest.approx(p, rel=1e-4) and row["p_adj"] == row["p"]
    assert (row["n_obs"], row["n_seeds"], row["n_dropped"], row["method"]) == (24, 6, 0, "REML")
    # balanced design: the coefficient is the difference in differences of the cell means
    m = runs.groupby(["placement", "activation"])["test_acc"].mean()
    did = (m["after", "tanh"] - m["before", "tanh"]) - (m["after", "relu"] - m["before", "relu"])
    assert row["estimate"] == pytest.approx(did, abs=1e-15)


def test_interaction_table_leaves_out_diverged_runs_and_names_an_unknown_factor():
    from bnstats.report.factorial import interaction_table

    runs = _nlme_frame()
    runs.loc[3, "test_acc"] = float("nan")
    t = interaction_table(runs)
    assert t.iloc[0]["n_dropped"] == 1 and t.iloc[0]["n_obs"] == 23 and np.isfinite(t.iloc[0]["estimate"])
    with pytest.raises(ValueError, match="--interaction: 'arch' is not another grid factor"):
        interaction_table(runs, others=["arch"])
    runs.attrs["factors"] = ["placement"]
    assert interaction_table(runs).empty


def test_seed_variance_table_is_pitman_morgan_as_r_computes_it():
    from bnstats.report.factorial import seed_variance_table

    t = seed_variance_table(_nlme_frame(), by=["activation"])
    row = t[t["activation"] == "relu"].iloc[0]
    ratio, r, tstat, p = R_PITMAN
    assert row["ratio"] == pytest.approx(ratio, rel=1e-12) and row["r"] == pytest.approx(r, rel=1e-12)
    assert row["t"] == pytest.approx(tstat, rel=1e-12) and row["p"] == pytest.approx(p, rel=1e-10)
    assert (row["n"], row["df"], row["method"]) == (6, 4.0, "Pitman-Morgan") and "n=6" in row["caveats"]
    assert row["ci_low"] < ratio < row["ci_high"]
    assert list(t["p_adj"]) == list(stats.adjust(t["p"].to_numpy(), method="holm"))
    few = seed_variance_table(_nlme_frame()[lambda d: d.seed < 2], by=["activation"])
    assert few["ratio"].isna().all() and few["caveats"].str.contains("at least 3 pairs").all()


def test_report_shows_interactions_and_seed_variance_of_the_store(rendered, report_sweep):
    from bnstats.report.factorial import interaction_table, seed_variance_table

    res = store.load(report_sweep)
    inter = pd.read_csv(rendered / "tables" / "interactions.csv", keep_default_na=False)
    want = interaction_table(res.runs, factors=res.factors, levels=res.config["grid"])
    assert len(inter) == 2 and list(inter["level"]) == ["cnn", "cnn"] and list(inter["arm"]) == ["after", "none"]
    np.testing.assert_array_equal(inter["estimate"].to_numpy(float), want["estimate"].to_numpy(float))
    var = pd.read_csv(rendered / "tables" / "seed_variance.csv")
    want_var = seed_variance_table(res.runs, arms=["after", "none"])
    assert len(var) == 4
    np.testing.assert_array_equal(var["ratio"].to_numpy(float), want_var["ratio"].to_numpy(float))
    text = " ".join(_pdf_text(rendered / "report.pdf").split())
    assert "Interactions: does the difference arm − before" in text and "Seed variance: does an arm change" in text
    assert "Pitman–Morgan test of the paired variance ratio" in text  # Methods
    assert "Interaction intervals are Wald intervals from 4 seeds" in text  # Caveats


def test_bands_stay_inside_the_quantitys_range_and_moment_figures_take_mean_and_var():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bnstats.report import figures

    # a fraction of zeros near 0 with a large spread: mean - SD < 0, and near 1: mean + SD > 1
    df = pd.DataFrame({"arm": ["a"] * 6 + ["b"] * 6, "epoch": [1, 1, 1, 2, 2, 2] * 2,
                       "frac_zero": [0.0, 0.0, 0.3, 0.0, 0.01, 0.4, 1.0, 0.6, 1.0, 0.99, 1.0, 0.5]})
    fig, ax = plt.subplots()
    figures.mean_sd_lines(ax, df, "epoch", "frac_zero", "arm", ["a", "b"], {"a": "C0", "b": "C1"},
                          bounds=figures.value_range("frac_zero"))
    ys = np.concatenate([p.get_paths()[0].vertices[:, 1] for p in ax.collections])
    plt.close(fig)
    m, sd = df.groupby(["arm", "epoch"])["frac_zero"].mean(), df.groupby(["arm", "epoch"])["frac_zero"].std()
    assert (m - sd).min() < 0 and (m + sd).max() > 1  # unclipped, the band would leave [0, 1]
    assert ys.min() == 0.0 and ys.max() == 1.0
    assert figures.value_range("test_acc", 100.0) == (0.0, 100.0) and figures.value_range("exkurt")[0] == -2.0
    assert figures.value_range("skew") == (-math.inf, math.inf)


def test_moments_parameter_is_validated_and_draws_the_rows_asked_for(report_sweep, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rep = report.Report(report_sweep, tmp_path / "r", moments=["mean", "var", "frac_zero"])
    mom = report.probe_moments(rep)
    cell = rep.cells()[0]
    fig = report.moments_figure(rep, mom, cell)
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    plt.close(fig)
    assert labels == [f"{site}\n{m}" for site in ("norm_in", "act_out") for m in ("mean", "variance", "fraction of zeros")]
    assert "clipped to the quantity's range (fraction of zeros to [0, 1], variance to ≥ 0)" in rep.caption(
        "moments", cell=cell)
    assert report.parse_sets(['moments=["mean", "var"]']) == {"moments": ["mean", "var"]}
    with pytest.raises(ValueError, match="moments must be a non-empty list of distinct names from"):
        report.Report(report_sweep, tmp_path / "r2", moments=["kurtosis"])
