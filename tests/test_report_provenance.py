"""The report's provenance: no absolute path of the machine anywhere, dirty trees as visible warnings,
what decides the bits and the user's code; the report of an imported store; the README's reference
section generated from the numbers (issue 19 items 8, 9; issue 21 item 5; issues 18.1 and 24.2).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from bnstats import cli, cpu, report, store
from bnstats.report import document
from tests.conftest import REPO
from tests.test_import import ARMS, TB_STEPS, _runs, _tb_value
from tests.test_report import report_sweep_dir

pypdf = pytest.importorskip("pypdf")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_root) -> Path:
    """The tiny sweep of tests/test_report.py (built once per session, shared with that module)."""
    return report_sweep_dir(tmp_path_factory, data_root)


CLEAN = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def clean_checkout(monkeypatch):
    """This checkout as a clean commit, whatever state the tree running the tests is in."""
    monkeypatch.setattr(document, "git_commit", lambda: CLEAN)


def _copy(sweep: Path, dest: Path, edit=None) -> Path:
    """A compacted copy of ``sweep``, its runs trained from a clean commit, whose runs table ``edit(df)``
    may change in place."""
    shutil.copytree(sweep, dest)
    store.Store(dest).compact()
    path = dest / "tables" / "runs.parquet"
    df = pd.read_parquet(path)
    df["git_commit"] = CLEAN
    if edit is not None:
        edit(df)
    df.to_parquet(path, index=False)
    return dest


def _pdf_text(path: Path) -> str:
    return "\n".join(page.extract_text() for page in pypdf.PdfReader(path).pages)


def _machine_paths(*extra: Path) -> list[str]:
    """Absolute paths of this machine a report must not record: the temporary directory, the working
    directory, the home directory, the checkout, and the test's own folders."""
    tmp = str(Path(tempfile.gettempdir()).resolve()) + os.sep
    return sorted({tmp, str(Path.cwd()), str(Path.home()), str(REPO), *(str(p.resolve()) for p in extra)})


def _leaks(out: Path, paths: list[str]) -> dict[str, list[str]]:
    """{file: [absolute paths found in it]} over every file of a rendered report (the PDF by its text,
    blanks removed, since text extraction breaks long lines)."""
    found = {}
    for f in sorted(p for p in out.rglob("*") if p.is_file()):
        texts = [f.read_bytes().decode("latin-1")]
        if f.suffix == ".pdf" and f.name == "report.pdf":
            texts.append("".join(_pdf_text(f).split()))
        hit = [p for p in paths if any(p in t or "".join(p.split()) in t for t in texts)]
        if hit:
            found[f.relative_to(out).as_posix()] = hit
    return found


# --- 19.9: no absolute path, the store as given, dirty trees visible -------------------------------------


def test_display_path_is_never_absolute():
    from bnstats.report.rendering import display_path, scrub_paths

    assert display_path("data/reference/placement-mnist1d/") == "data/reference/placement-mnist1d"
    assert display_path("../sweeps/a") == "../sweeps/a"
    assert display_path("/work/repo/data/s", cwd="/work/repo", home="/root") == "data/s"
    assert display_path("/root/runs/s", cwd="/work/repo", home="/root") == "~/runs/s"
    assert display_path("/tmp/pytest-of-x/s0/sweep", cwd="/work/repo", home="/root") == "sweep"
    assert display_path("/work/repo", cwd="/work/repo", home="/root") == "."
    # what a config may hold: data roots, dataset files, model factories (file.py:function)
    assert scrub_paths('"/tmp/a/cache"', cwd="/w", home="/root") == '"cache"'
    assert scrub_paths("file:/w/data/x.npz", cwd="/w", home="/root") == "file:data/x.npz"
    assert scrub_paths("/w/models/net.py:build", cwd="/w", home="/root") == "models/net.py:build"
    assert scrub_paths(r"C:\Users\me\net.py:build", cwd="/w", home="/root") == "net.py:build"
    # relative paths, metric names with "/" and ratios stay as they are
    assert scrub_paths("test/acc, a/b, 1/2, models/net.py:build") == "test/acc, a/b, 1/2, models/net.py:build"


def test_report_records_no_absolute_path_and_names_the_store_as_given(sweep, data_root, tmp_path, monkeypatch):
    monkeypatch.chdir(sweep.parent)  # the user names the store relative to where they are
    out = tmp_path / "out"
    assert cli.main(["report", sweep.name, "--out", str(out), "--quiet"]) == 0
    paths = _machine_paths(sweep, out, tmp_path, data_root)
    assert paths and all(os.path.isabs(p) for p in paths)
    assert _leaks(out, paths) == {}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["store"] == summary["parameters"]["results"] == summary["provenance"]["store"] == sweep.name
    assert summary["store_hash"] == summary["provenance"]["store_hash"] == report.store_hash(store.load(sweep).runs)
    nb = nbformat.read(out / "report.ipynb", as_version=4)
    injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert f'results = "{sweep.name}"' in injected.source and 'out = "<out>"' in injected.source
    assert nb.metadata["papermill"]["parameters"]["results"] == sweep.name
    html = (out / "report.html").read_text()
    assert f"<th>store</th><td>{sweep.name}</td>" in html
    # the sweep's config named the data cache by its absolute path: shown relative, by its name here
    assert f'data.root = "{data_root.name}"' in html


def test_a_dirty_tree_is_a_visible_warning(sweep, tmp_path, monkeypatch):
    def dirty_runs(df):
        df.loc[df["arch"] == "mlp", "git_commit"] = "0123456789abcdef-dirty"

    copy = _copy(sweep, tmp_path / "sweep", dirty_runs)
    monkeypatch.setattr(document, "git_commit", lambda: "fedcba9876543210-dirty")
    rep = report.Report(copy, tmp_path / "out")
    warnings = rep.provenance()["warnings"]
    assert len(warnings) == 2
    assert warnings[0].startswith("12 of 24 runs were trained by bnstats from a source tree with uncommitted changes "
                                  "(git commit 0123456789abcdef-dirty)")
    assert warnings[1].startswith("This report was rendered by bnstats from a source tree with uncommitted changes "
                                  "(git commit fedcba9876543210-dirty)")
    cert = report.pairing_certificate(rep.runs, "placement")
    prov = rep.provenance_block(cert)._repr_html_()
    assert prov.startswith('<div class="warning"><b>Warning</b><ul>')
    assert all(report.esc(w) in prov for w in warnings)
    assert all(report.esc(w) in rep.design_block(cert)._repr_html_() for w in warnings)
    assert rep.provenance_caveats()[:2] == warnings  # and in the caveats list
    # clean trees: no warning anywhere
    monkeypatch.setattr(document, "git_commit", lambda: "fedcba9876543210")
    clean = report.Report(_copy(sweep, tmp_path / "clean"), tmp_path / "out2")
    assert clean.provenance()["warnings"] == [] and clean.provenance_caveats() == []
    assert "warning" not in clean.provenance_block(cert)._repr_html_().lower()


# --- 24.2 and 18.1: what decides the bits, the user's code and data -------------------------------------------


def test_provenance_lists_what_decides_the_bits_and_which_fields_must_match(sweep, tmp_path, clean_checkout):
    rep = report.Report(_copy(sweep, tmp_path / "sweep"), tmp_path / "out")
    runs = rep.runs
    bits = rep.provenance()["bits"]
    assert list(bits) == ["torch_version", "device", "cpu_isa", *cpu.BITWISE_FIELDS]
    for field, values in bits.items():  # every distinct value with its number of runs
        assert values == {str(k): int(n) for k, n in runs[field].astype(str).value_counts().sort_index().items()}
    assert rep.provenance()["bitwise_fields"] == ["torch_version", *cpu.BITWISE_FIELDS]
    html = rep.provenance_block(report.pairing_certificate(runs, "placement"))._repr_html_()
    table = html[html.index("<h3>What decides the bits</h3>"):]
    state = cpu.state()
    for field in cpu.BITWISE_FIELDS:  # recorded by this process's sweep: the same kernels as here
        assert f"<td>{field}</td><td>{state[field]} (24 runs)</td><td>yes</td>" in table
    assert "<td>cpu_isa</td><td>avx2 (24 runs)</td><td>no (sets the three fields below it)</td>" in table
    assert "A run reproduces bit for bit only where every field marked yes is the same" in table
    assert rep.provenance_caveats() == []  # one setting: nothing to caveat


@pytest.mark.parametrize(("mix", "want"), [
    ("by seed", "within every seed and cell the arms share one setting, so the pairing is unaffected"),
    ("by arm", "in 8 of 8 seed × cell groups the arms themselves were computed differently"),
])
def test_runs_that_mix_kernel_settings_get_a_caveat(sweep, tmp_path, mix, want, clean_checkout):
    def edit(df):
        hit = df["seed"] == 0 if mix == "by seed" else df["placement"] == "after"
        df.loc[hit, "cpu_capability"] = "AVX512"

    rep = report.Report(_copy(sweep, tmp_path / "sweep", edit), tmp_path / "out")
    assert rep.provenance()["bits"]["cpu_capability"] == {
        "AVX2": 18 if mix == "by seed" else 16, "AVX512": 6 if mix == "by seed" else 8}
    caveats = rep.provenance_caveats()
    assert len(caveats) == 1
    assert caveats[0].startswith("The runs were computed with 2 different settings of what decides their bits "
                                 "(torch_version, cpu_capability, onednn_max_isa, mkl_branch, torch_threads; see "
                                 "Provenance): a run reproduces bitwise only under its own setting")
    assert want in caveats[0]


def test_provenance_names_the_model_factory_and_user_dataset(sweep, tmp_path, clean_checkout):
    """A factory's spec, source sha256 and repository commit, and a dataset file's sha256, per distinct value."""
    sha_a, sha_b, sha_d = "a" * 64, "b" * 64, "d" * 64
    factory_file = Path(tempfile.gettempdir()).resolve() / "elsewhere" / "net.py"

    def edit(df):
        df["model_sha256"] = [sha_a if s < 2 else sha_b for s in df["seed"]]
        df["model_git_commit"] = ["1111111-dirty" if s < 2 else "" for s in df["seed"]]
        df["dataset_sha256"] = sha_d
        df["dataset_git_commit"] = ""
        df["dataset"] = "file:data/x.npz"
        df["arch"] = df["arch"].map({"mlp": f"{factory_file}:mlp", "cnn": "models/net.py:cnn"})

    rep = report.Report(_copy(sweep, tmp_path / "sweep", edit), tmp_path / "out")
    prov = rep.provenance()
    assert prov["model_factories"] == [  # the factory given by an absolute path: shown by its file's name
        {"spec": "models/net.py:cnn", "sha256": sha_a, "git_commit": "1111111-dirty", "runs": 6},
        {"spec": "models/net.py:cnn", "sha256": sha_b, "git_commit": "", "runs": 6},
        {"spec": "net.py:mlp", "sha256": sha_a, "git_commit": "1111111-dirty", "runs": 6},
        {"spec": "net.py:mlp", "sha256": sha_b, "git_commit": "", "runs": 6},
    ]
    assert prov["user_datasets"] == [{"dataset": "file:data/x.npz", "sha256": sha_d, "git_commit": "", "runs": 24}]
    assert sum("model factory models/net.py:cnn had uncommitted changes when its 6 runs trained" in w
               for w in prov["warnings"]) == 1
    html = rep.provenance_block(report.pairing_certificate(rep.runs, "placement"))._repr_html_()
    code = html[html.index("<h3>User code and data</h3>"):]
    assert f"<td>model factory</td><td>models/net.py:cnn</td><td>{sha_a}</td><td>1111111-dirty</td><td>6</td>" in code
    assert f"<td>dataset</td><td>file:data/x.npz</td><td>{sha_d}</td><td>not in a git repository</td><td>24</td>" in code
    assert f"<td>model factory</td><td>net.py:mlp</td><td>{sha_b}</td>" in code  # shown without its absolute path
    assert str(factory_file) not in code and str(factory_file) not in json.dumps(prov)


# --- 21.5: the report of an imported store ---------------------------------------------------------------------


def test_pairing_certificate_checks_only_the_hashes_the_runs_have():
    runs = _runs()
    runs.attrs["factors"] = ["placement", "activation"]
    cert = report.pairing_certificate(runs, "placement")
    assert cert.attrs["checked"] == [] and cert["ok"].all() and len(cert) == 8
    assert cert["n_init_hash"].isna().all() and cert["n_order_hash"].isna().all()
    runs["init_hash"] = ["x" if s != 2 or p == "before" else "y" for s, p in zip(runs["seed"], runs["placement"], strict=True)]
    cert = report.pairing_certificate(runs, "placement")
    assert cert.attrs["checked"] == ["init_hash"] and sorted(cert.loc[~cert["ok"], "seed"]) == [2, 2]


def _import(tmp_path: Path, src: Path, *flags: str) -> Path:
    out = tmp_path / "store"
    assert cli.main(["import", str(src), "--out", str(out), *flags]) == 0
    return out


def _check_rendered_import(out: Path, paths: list[str]) -> tuple[dict, str, str]:
    for name in ("report.html", "report.pdf", "report.ipynb", "summary.json"):
        assert (out / name).is_file(), name
    assert (out / "report.pdf").read_bytes().startswith(b"%PDF")
    assert _leaks(out, paths) == {}
    summary = json.loads((out / "summary.json").read_text())
    text = " ".join(_pdf_text(out / "report.pdf").split())
    html = (out / "report.html").read_text()
    # what the pairing of imported runs rests on, both ways, in the design and as a caveat
    assert "Pairing certificate verified: seed identity: in every cell all arms have the same seeds" in text
    assert ("not verified: initial weights: the source records no hash of them (--init-hash not mapped), so arms "
            "with the same seed may not share their initial weights; data order:") in text
    assert "The pairing of these imported runs was not verified for: initial weights; data order" in text
    assert summary["pairing_certificate"]["checked"] == []
    assert summary["pairing_certificate"]["not_verified"][0].startswith("initial weights: the source records no hash")
    assert "No moment figures: the runs were imported from" in text and "sources outside bnstats hold no activation moments" in text
    assert not list((out / "figures").glob("moments_*")) and not (out / "figures" / "association.png").exists()
    assert summary["design"]["imported"] is True and summary["design"]["training"] is None
    return summary, text, html


def test_report_of_an_imported_csv(tmp_path, monkeypatch):
    src = tmp_path / "results.csv"
    _runs().to_csv(src, index=False)
    st = _import(tmp_path, src, "--metric", "test_acc,test_loss", "--by", "activation", "--baseline", "before")
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    assert cli.main(["report", "store", "--out", str(out), "--quiet"]) == 0
    summary, text, html = _check_rendered_import(out, _machine_paths(tmp_path, out, st))
    sha = json.loads((st / "sweep.json").read_text())["import"]["sha256"]
    # the design names the source (kind, file, sha256) and the mapping
    assert f"Source a CSV file results.csv, sha256 {sha}; imported by bnstats import" in text
    assert ("Mapping seed = 'seed'; factor (arms) = 'placement'; metric = 'test_acc', 'test_loss'; by (cells) = "
            "'activation'; baseline = 'before'; init_hash = not mapped; order_hash = not mapped") in text
    assert "No learning curves: the source (a CSV file) holds one value per run, no values per step." in text
    assert not (out / "figures" / "learning_curves.png").exists()
    assert summary["provenance"]["source"]["path"] == "results.csv" and summary["provenance"]["source"]["sha256"] == sha
    assert [(c["activation"], c["arm"]) for c in summary["comparisons"]] == [("relu", "after"), ("tanh", "after")]
    # the paired differences of the source's table (tests/test_import.py: DIFF), in the metric's units
    assert [round(c["estimate"], 12) for c in summary["comparisons"]] == [0.002, -0.011]
    assert "We analysed 16 runs trained outside bnstats and imported from a CSV file (results.csv" in text


def test_report_of_an_imported_tensorboard_folder(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    tb = tmp_path / "tb"
    for arm in ARMS:
        for s in range(3):
            w = SummaryWriter(str(tb / f"placement={arm},seed={s}"))
            for step in range(TB_STEPS):
                w.add_scalar("test/acc", _tb_value(arm, s, step), step)
                w.add_scalar("train/loss", 1.0 / (step + 1), step)
            w.close()
    st = _import(tmp_path, tb, "--metric", "test/acc", "--baseline", "before")
    out = tmp_path / "out"
    report.render(st, out)  # metric, factor and baseline: the import's mapping
    summary, text, html = _check_rendered_import(out, _machine_paths(tmp_path, out, st, tb))
    assert summary["metric"] == "test/acc" and summary["parameters"]["metric"] == "test/acc"
    assert "Source TensorBoard event files tb (6 files), sha256" in text
    # learning curves by step, the metric named as in the source
    assert (out / "figures" / "learning_curves.png").is_file()
    assert ("Learning curves per cell: test/acc per step as the source logged it (its column 'test/acc'), per arm"
            in text)
    assert summary["comparisons"][0]["n"] == 3


def test_an_imported_accuracy_in_percent_is_refused_with_the_way_out(tmp_path):
    src = tmp_path / "pct.csv"
    _runs().assign(test_acc=lambda d: d["test_acc"] * 100).to_csv(src, index=False)
    st = _import(tmp_path, src, "--by", "activation", "--baseline", "before")
    with pytest.raises(ValueError, match=r"metric='test_acc': values outside \[0, 1\] \(from 84 to 91.4\) .* "
                                         r"\(e\.g\. test_acc_pct\)"):
        report.Report(st, tmp_path / "out")


# --- 19.8: the README's reference section from the numbers ------------------------------------------------------


SHIPPED = REPO / "reports" / "examples" / "reference-mnist1d" / "summary.json"
STORE = REPO / "data" / "reference" / "placement-mnist1d"


TUNED_SUMMARY = REPO / "reports" / "examples" / "reference-mnist1d-tuned" / "summary.json"
TUNED_STORE = REPO / "data" / "reference" / "placement-mnist1d-tuned"


def test_readme_generated_sections_are_what_the_generator_gives_on_the_shipped_studies():
    from bnstats.report import readme

    for summ, st in ((SHIPPED, STORE), (TUNED_SUMMARY, TUNED_STORE)):  # each report rendered from its store
        assert json.loads(summ.read_text())["store_hash"] == report.store_hash(store.load(st).runs)
    text = (REPO / "README.md").read_text()
    for begin, end in ((readme.BEGIN, readme.END), (readme.TUNED_BEGIN, readme.TUNED_END),
                       (readme.HEAD_BEGIN, readme.HEAD_END)):
        assert text.count(begin) == 1 and text.count(end) == 1
    assert text == readme.readme_text(text), \
        "README's generated sections differ: run `python -m bnstats.report.readme --write README.md`"
    section = readme.section_text(SHIPPED, STORE)
    assert section in text
    # the one hand-written number of the README's statistics section: the MLP's interaction in the shipped report
    inter = pd.read_csv(SHIPPED.parent / "tables" / "interactions.csv")
    row = inter[(inter["arch"] == "mlp") & (inter["arm"] == "after") & (inter["level"] == "tanh")].iloc[0]
    assert row["converged"] and f"MLP: {100 * row['estimate']:.2f} pp ({100 * row['ci_low']:.2f} to " \
        f"{100 * row['ci_high']:.2f})".replace("-", "−") in " ".join(text.split())
    # the two misstatements of issue 19.8 stay gone: the findings give the inconclusive cells' widest bounds
    # as "their intervals reach from ... to ...", and the baselines' range per arch lists every activation
    assert "their intervals reach from" in section and "below about half a point" not in section
    assert re.search(r"per arch: cnn \d+\.\d\d to \d+\.\d\d% \(\w+ [\d.]+, \w+ [\d.]+, \w+ [\d.]+\)",
                     " ".join(section.split()))


def _row(arch, act, arm, est, lo, hi, verdict, base):
    return {"arch": arch, "activation": act, "arm": arm, "baseline": "before", "estimate": est, "ci_low": lo,
            "ci_high": hi, "verdict": verdict, "mean_baseline": base, "confidence_level": 0.9}


def test_findings_markdown_states_every_cell_and_what_inconclusive_leaves_open():
    from bnstats.report import readme

    summary = {"factor": "placement", "baseline": "before", "by": ["arch", "activation"],
               "parameters": {"p_adjust": "bh"}, "metric": "test_acc",
               "display": {"scale": 100.0, "unit": "%", "diff_unit": "pp", "label": "test accuracy"},
               "comparisons": [_row("cnn", "relu", "after", 0.0011, -0.0018, 0.0040, "inconclusive", 0.948),
                               _row("cnn", "tanh", "after", -0.0214, -0.0277, -0.0151, "worse", 0.905),
                               _row("mlp", "relu", "after", 0.0027, -0.0019, 0.0074, "inconclusive", 0.674),
                               _row("mlp", "tanh", "after", 0.0030, 0.0010, 0.0050, "better", 0.709)]}
    want = "\n".join([
        "Findings (generated from the report's `summary.json`): differences arm − before in test accuracy (pp), "
        "with the 90% paired t interval; verdicts as in the table (Benjamini–Hochberg-adjusted over the 4 "
        "comparisons). Cells are arch, activation.",
        "",
        "- **BN after the activation** vs. BN before the activation: worse in 1 of 4 cells (cnn, tanh −2.14 "
        "[−2.77 to −1.51]); better in 1 of 4 cells (mlp, tanh +0.30 [0.10 to 0.50]); no detectable difference in "
        "2 of 4 cells (cnn, relu +0.11 [−0.18 to 0.40]; mlp, relu +0.27 [−0.19 to 0.74]); their intervals reach "
        "from −0.19 to +0.74 pp, so effects anywhere in that range are not excluded.",
        "- **BN before the activation** (the baseline), mean test accuracy per arch: cnn 90.50 to 94.80% "
        "(tanh 90.50, relu 94.80); mlp 67.40 to 70.90% (relu 67.40, tanh 70.90).",
    ])
    assert readme.findings_markdown(summary) == want
    assert report.findings_markdown is readme.findings_markdown


def test_replace_section_needs_both_markers():
    from bnstats.report import readme

    text = f"intro\n{readme.BEGIN}\nold\n{readme.END}\ntail\n"
    assert readme.replace_section(text, "NEW") == "intro\nNEW\ntail\n"
    with pytest.raises(ValueError, match="no section between the markers"):
        readme.replace_section("intro\n", "NEW")


def _summary(rows, by=("arch", "activation"), **extra):
    return {"factor": "placement", "baseline": "before", "by": list(by), "parameters": {"p_adjust": "holm"},
            "metric": "test_acc", "display": {"scale": 100.0, "unit": "%", "diff_unit": "pp", "label": "test accuracy"},
            "design": {"training": "30 epochs, sgd, lr 0.05"}, "comparisons": rows, **extra}


def test_brief_counts_cells_per_verdict_with_ranges_and_the_inconclusive_bounds():
    from bnstats.report import readme

    s = _summary([_row("cnn", "relu", "after", 0.0011, -0.0018, 0.0040, "inconclusive", 0.948),
                  _row("cnn", "tanh", "after", -0.0214, -0.0277, -0.0151, "worse", 0.905),
                  _row("mlp", "tanh", "after", -0.0187, -0.0248, -0.0125, "worse", 0.709),
                  _row("mlp", "relu", "after", 0.0027, -0.0019, 0.0074, "inconclusive", 0.674),
                  _row("cnn", "relu", "none", -0.0720, -0.0756, -0.0684, "worse", 0.948),
                  _row("cnn", "tanh", "none", -0.1372, -0.1430, -0.1314, "worse", 0.905)])
    assert readme.brief_markdown(s) == (
        "BN after the activation vs. BN before the activation: worse in 2 of 4 cells (−2.14 to −1.87 pp), "
        "no detectable difference in 2 of 4 cells (intervals from −0.19 to +0.74 pp); no normalization vs. "
        "BN before the activation: worse in all 2 cells (−13.72 to −7.20 pp)")


def test_changes_list_each_comparison_whose_verdict_tuning_changed_with_both_differences():
    from bnstats.report import readme

    fixed = _summary([_row("cnn", "relu", "after", 0.0011, -0.0018, 0.0040, "inconclusive", 0.948),
                      _row("cnn", "tanh", "after", -0.0214, -0.0277, -0.0151, "worse", 0.905),
                      _row("mlp", "relu", "after", 0.0027, -0.0019, 0.0074, "inconclusive", 0.674)])
    tuned = _summary([_row("cnn", "relu", "after", -0.0050, -0.0080, -0.0020, "worse", 0.951),
                      _row("cnn", "tanh", "after", -0.0100, -0.0150, -0.0050, "worse", 0.915),
                      _row("mlp", "relu", "after", 0.0001, -0.0040, 0.0042, "inconclusive", 0.69),
                      _row("mlp", "gelu", "after", 0.0001, -0.0040, 0.0042, "inconclusive", 0.69)],  # not in fixed
                     tuning={"keys": {"lr": [0.025, 0.05, 0.1]}, "seeds": [1000, 1001], "metric": "val_acc",
                             "rule": "best_mean", "tuning_runs": 36,
                             "arms": [{"arch": "cnn", "activation": "relu", "placement": p, "chosen": {"lr": lr}}
                                      for p, lr in (("before", 0.1), ("after", 0.025))]})
    assert readme.changes_markdown(fixed, tuned) == (
        "Against the fixed-lr study (the same cells, seeds and test set), tuning changed the verdict of 1 of 3 "
        "comparisons: cnn, relu, after: inconclusive +0.11 [−0.18 to 0.40] → worse −0.50 [−0.80 to −0.20].")
    assert readme.chosen_markdown(tuned) == (
        "Chosen per arm (lr from 0.025, 0.05, 0.1; 2 tuning seeds, val_acc, best_mean; 36 tuning runs, not "
        "compared): cnn, relu: before 0.1, after 0.025.")
    # a choice at the edge of its grid is said where the choices are listed (the report's caveat)
    edged = {**tuned, "tuning": {**tuned["tuning"], "arms": [{**a, "edge": ["lr"]} for a in tuned["tuning"]["arms"]]}}
    assert readme.chosen_markdown(edged).endswith(
        "2 of 2 choices lie at an edge of the grid (1 at lr = 0.1, the largest candidate; 1 at lr = 0.025, the "
        "smallest candidate): a value beyond it might have suited those arms better.")
    head = readme.headline_section(fixed, tuned)
    assert " ".join(head.split()).startswith(
        " ".join(readme.HEAD_BEGIN.split()) + " - **One learning rate for every arm** (30 epochs, sgd, lr 0.05): BN "
        "after the activation vs. BN before the activation: worse in 1 of 3 cells (−2.14 pp)")
    assert "Tuning changed the verdict of 1 of 3 comparisons (cnn, relu, after;" in " ".join(head.split())
    assert head.endswith(readme.HEAD_END)
    same = readme.changes_markdown(fixed, fixed)
    assert same.endswith("tuning changed the verdict of 0 of 3 comparisons.")


def test_readme_text_replaces_the_three_sections_and_refuses_a_summary_of_other_runs(tmp_path):
    from bnstats.report import readme

    text = "\n".join(["top", readme.HEAD_BEGIN, "old", readme.HEAD_END, readme.BEGIN, "old", readme.END,
                      readme.TUNED_BEGIN, "old", readme.TUNED_END, ""])
    out = readme.readme_text(text, summary=SHIPPED, store=STORE, tuned_summary=SHIPPED, tuned_store=STORE)
    assert "old" not in out and out.count(readme.TUNED_BEGIN) == 1 and out.startswith("top\n" + readme.HEAD_BEGIN)
    assert "tuning changed the verdict of 0 of" in " ".join(out.split())
    bad = tmp_path / "summary.json"
    bad.write_text(json.dumps({**json.loads(SHIPPED.read_text()), "store_hash": "0" * 64}))
    with pytest.raises(ValueError, match="store_hash 0000000000000000… is not that of"):
        readme.readme_text(text, summary=bad, store=STORE, tuned_summary=SHIPPED, tuned_store=STORE)
