"""The report: execute ``reports/report.ipynb`` with papermill, export HTML and PDF, write tables and figures.

::

    render(results, out)        -> Path   execute the notebook, then report.html, report.pdf, report.ipynb
    cite_sentence(row, ...)     -> str    one ready sentence per comparison ("How to cite")
    pairing_certificate(runs, factor)     do all arms of a seed share init_hash / order_hash?
    store_hash(runs)            -> str    sha256 of the runs table contents

The notebook only reads the store and calls :mod:`bnstats.stats`; this module holds what it needs
besides: number formatting (rounding happens only here, where a person reads), tables (CSV with
every digit, booktabs TeX for ``\\input``), figures (PNG + PDF without timestamps) and the text
blocks (design, How to cite, Methods, caveats, provenance). Its parameters are :data:`PARAMETERS`,
the same names as the notebook's ``parameters`` cell and ``bnstats report --set NAME=VALUE``.

Where the notebook lives: ``reports/report.ipynb`` in the source tree, shipped inside the package as
``bnstats/reports/report.ipynb`` (``bnstats/reports`` is a symlink to ``../reports``, so the
package-data glob copies the file into wheels). :func:`notebook_path` looks in the package first,
then in the source tree, so editable and non-editable installs both find it.

Same store and parameters give the same bytes of ``report.pdf``, ``report.html``, ``report.ipynb``,
``tables/*``, ``figures/*`` and ``summary.json``, in any output folder: the bootstrap uses an explicit ``rng``, figures are saved without
dates or software stamps, the executed notebook is stripped of timestamps and random cell ids, and
the PDF's subset fonts get a fixed timestamp (``SOURCE_DATE_EPOCH``, see :func:`write_pdf`).
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import importlib.metadata
import json
import logging
import math
import multiprocessing
import os
import platform
import re
import sys
import time
import tomllib
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import __version__
from .stats._results import DEFAULT_SEED
from .store import git_commit

DEFAULT_RESULTS = "data/reference/placement-mnist1d"  # the shipped 30-seed reference study
NOTEBOOK = "report.ipynb"

#: The notebook's parameters (its ``parameters`` cell), with their defaults. ``out`` empty means
#: ``<results>/report``; ``title`` empty means one made from the sweep's name.
PARAMETERS: dict[str, Any] = {
    "results": DEFAULT_RESULTS,   # the sweep directory (a bnstats store)
    "out": "",                    # where tables/, figures/ and summary.json go
    "metric": "test_acc",         # a numeric column of the runs table
    "factor": "placement",        # the grid factor whose levels are the arms
    "baseline": "before",         # differences are arm - baseline
    "confidence_level": 0.95,     # of every interval
    "margin": None,               # equivalence margin in the metric's units (0.005 = 0.5 pp), or [low, high]
    "p_adjust": "holm",           # holm | bh | bonferroni, over all comparisons
    "diverged": "drop_pair",      # drop_pair | keep: seeds where an arm diverged (its metric is NaN)
    "n_resamples": 9999,          # bootstrap resamples (BCa) and the sign-flip budget
    "rng": DEFAULT_SEED,          # seed of every random draw (bootstrap, permutations)
    "title": "",                  # the report's title
}
P_ADJUST_NAMES = {"holm": "Holm (1979)", "bh": "Benjamini–Hochberg (1995)", "bonferroni": "Bonferroni"}
ARM_LABELS = {
    "placement": {"before": "BN before the activation", "after": "BN after the activation",
                  "none": "no normalization"},
}
METRIC_LABELS = {"test_acc": "test accuracy", "train_acc": "training accuracy", "test_loss": "test loss",
                 "train_loss": "training loss", "val_acc": "validation accuracy", "val_loss": "validation loss"}
MOMENT_LABELS = {"skew": "skewness", "exkurt": "excess kurtosis", "frac_zero": "fraction of zeros",
                 "mean": "mean", "var": "variance"}
SITE_LABELS = {"norm_in": "input of the norm", "norm_out": "output of the norm",
               "act_in": "input of the activation", "act_out": "output of the activation"}
MINUS = "\u2212"
NBSP = "\u00a0"
FIG_WIDTH = 7.0      # inches: the text width of an A4 page with 15 mm margins
FIG_DPI = 150       # PNG resolution (the PDF figures are vector)
PX_PER_IN = 96       # CSS pixels per inch: figures are shown at their physical size


# -------------------------------------------------------------------------------------------------
# Parameters


def notebook_path() -> Path:
    """The report notebook: package data (``bnstats/reports/``) first, else the source tree's ``reports/``."""
    candidates = []
    with contextlib.suppress(ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        candidates.append(Path(str(resources.files("bnstats").joinpath("reports", NOTEBOOK))))
    candidates.append(Path(__file__).resolve().parents[1] / "reports" / NOTEBOOK)
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"report notebook {NOTEBOOK!r} not found in: {[str(c) for c in candidates]}")


def parse_sets(items: Iterable[str]) -> dict[str, Any]:
    """``["metric=test_loss", "margin=0.005"]`` -> ``{"metric": "test_loss", "margin": 0.005}``.

    Values are TOML (``0.005``, ``[-0.003, 0.005]``, ``"007"``, ``true``); anything that is not valid
    TOML is taken as a string, so bare words need no quotes. Unknown names raise ``ValueError`` listing
    the valid ones.
    """
    out: dict[str, Any] = {}
    for text in items:
        if "=" not in text:
            raise ValueError(f"--set: expected NAME=VALUE, got {text!r}")
        name, value = (s.strip() for s in text.split("=", 1))
        if name not in PARAMETERS:
            raise ValueError(f"--set {name}: unknown parameter; valid names are: {', '.join(PARAMETERS)}")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"] if value else ""
        except tomllib.TOMLDecodeError:
            parsed = value
        if name == "margin" and isinstance(parsed, str) and parsed.lower() in ("", "none", "null"):
            parsed = None
        out[name] = parsed
    return out


def check_parameters(params: dict[str, Any], runs: pd.DataFrame, factors: Sequence[str]) -> dict[str, Any]:
    """Validate the report parameters against a store; ``ValueError`` naming the field (a wrong type too)."""
    try:
        return _check_parameters(params, runs, factors)
    except TypeError as e:  # e.g. --set confidence_level=true: a usage error like any other
        raise ValueError(str(e)) from None


def _check_parameters(params: dict[str, Any], runs: pd.DataFrame, factors: Sequence[str]) -> dict[str, Any]:
    from .stats import _validate as v

    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise ValueError(f"unknown report parameter(s) {unknown}; valid names are: {', '.join(PARAMETERS)}")
    p = {**PARAMETERS, **params}
    for name in ("metric", "factor", "baseline", "p_adjust", "diverged", "title", "out", "results"):
        if not isinstance(p[name], str):
            raise TypeError(f"{name} must be a string; got {p[name]!r} ({type(p[name]).__name__})")
    if p["metric"] not in runs.columns or not pd.api.types.is_numeric_dtype(runs[p["metric"]]) \
            or pd.api.types.is_bool_dtype(runs[p["metric"]]):
        numeric = [c for c in runs.columns if pd.api.types.is_float_dtype(runs[c])]
        raise ValueError(f"metric={p['metric']!r} is not a numeric column of the runs table; choose one of {numeric}")
    if p["factor"] not in factors:
        raise ValueError(f"factor={p['factor']!r} is not a grid factor of this sweep; factors: {list(factors)}")
    levels = sorted(map(str, runs[p["factor"]].dropna().unique()))
    if str(p["baseline"]) not in levels:
        raise ValueError(f"baseline={p['baseline']!r} is not a level of factor {p['factor']!r}; levels: {levels}")
    if len(levels) < 2:
        raise ValueError(f"factor={p['factor']!r} has a single level {levels}; nothing to compare")
    v.probability("confidence_level", p["confidence_level"])
    v.margin(p["margin"])
    v.choice("p_adjust", p["p_adjust"], v.P_ADJUST_METHODS)
    v.choice("diverged", p["diverged"], v.DIVERGED_POLICIES)
    v.integer("n_resamples", p["n_resamples"], minimum=1)
    v.integer("rng", p["rng"], minimum=0)
    return p


# -------------------------------------------------------------------------------------------------
# Formatting: the only place where numbers are rounded


@dataclass(frozen=True)
class MetricDisplay:
    """How a metric is shown: accuracies (fractions in the store) in percent, their differences in pp."""

    metric: str
    label: str        # "test accuracy"
    scale: float      # 100 for accuracies
    unit: str         # unit of a level: "%" (or "")
    diff_unit: str    # unit of a difference: "pp" (or "")
    digits: int       # decimals of levels and differences

    @classmethod
    def of(cls, metric: str) -> MetricDisplay:
        label = METRIC_LABELS.get(metric, metric.replace("_", " "))
        if metric.endswith("acc") or metric.endswith("accuracy"):
            return cls(metric, label, 100.0, "%", "pp", 2)
        return cls(metric, label, 1.0, "", "", 4)

    def with_unit(self, what: str, diff: bool = False) -> str:
        u = self.diff_unit if diff else self.unit
        return f"{what} ({u})" if u else what


def num(x: float, digits: int = 2, *, sign: bool = False, style: str = "text") -> str:
    """A rounded number for reading; Unicode minus (``style="tex"``: ``$-$``); NaN -> "n/a"."""
    if x is None or (isinstance(x, float) and math.isnan(x)) or pd.isna(x):
        return "n/a"
    x = float(x)
    if math.isinf(x):
        s = "\u221e" if style == "text" else r"$\infty$"
        return (("+" if sign else "") + s) if x > 0 else (MINUS if style == "text" else "$-$") + s
    s = f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"
    if s.lstrip("+-").strip("0.") == "":       # rounds to zero: no sign
        s = s.lstrip("+-")
        if sign:
            s = "\u00b1" + s if style == "text" else s
    return s.replace("-", MINUS if style == "text" else "$-$")


def fmt_p(p: float, style: str = "text") -> str:
    """Two significant digits, never scientific; below 0.0001: "< 0.0001"."""
    if p is None or pd.isna(p):
        return "n/a"
    p = float(p)
    if p < 1e-4:
        return "< 0.0001" if style == "text" else "$<$ 0.0001"
    decimals = max(2, 1 - math.floor(math.log10(p)))
    return f"{p:.{decimals}f}"


def p_clause(p: float, name: str = "p") -> str:
    s = fmt_p(p)
    return f"{name} {s}" if s.startswith("<") else f"{name} = {s}"


def ci(lo: float, hi: float, digits: int = 2, style: str = "text") -> str:
    """An interval as "low to high" (plain text, no TeX)."""
    return f"{num(lo, digits, style=style)} to {num(hi, digits, style=style)}"


def level_label(factor: str, level: Any) -> str:
    return ARM_LABELS.get(factor, {}).get(str(level), f"{factor} = {level}")


def cell_label(cell: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in cell.items()) or "all runs"


def cite_sentence(row: dict[str, Any] | pd.Series, *, by: Sequence[str] = (), factor: str | None = None,
                  metric: str | None = None, digits: int | None = None) -> str:
    """One sentence a paper can quote for one comparison (a row of :func:`bnstats.stats.compare`).

    Example: "With arch = mlp, activation = relu, BN after the activation (vs. BN before the
    activation) changed test accuracy by +0.42 pp (95% CI 0.21 to 0.63; paired t(29) = 4.10,
    p = 0.00031, Holm-adjusted p = 0.0012; d_z = 0.75; 30 seeds)."

    Accuracies (fractions in the store) are written in percentage points; the interval is the
    paired t interval (the primary one); p is the paired t-test's, with the family-adjusted p beside it.
    """
    row = dict(row)
    factor = factor or row["factor"]
    metric = metric or row["metric"]
    disp = MetricDisplay.of(metric)
    dg = disp.digits if digits is None else digits
    s = disp.scale
    unit = f" {disp.diff_unit}" if disp.diff_unit else ""
    cell = {k: row[k] for k in by if k in row}
    lead = f"With {cell_label(cell)}, " if cell else ""
    arm = level_label(factor, row["arm"])
    base = level_label(factor, row["baseline"])
    first = lead + arm if lead else arm[0].upper() + arm[1:]
    level = round(100 * float(row["confidence_level"]), 6)
    lvl = f"{level:g}%"
    n = int(row["n"])
    est = float(row["estimate"]) * s
    adj_name = {"holm": "Holm", "bh": "BH", "bonferroni": "Bonferroni"}.get(row.get("p_adjust_method", ""), "adjusted")
    p_adj = row.get("p_adj", float("nan"))
    adj = f", {adj_name}-adjusted {p_clause(p_adj)}" if not pd.isna(p_adj) else ""
    if not math.isfinite(float(row["t"])):   # all differences equal: no test statistic
        stats_part = f"all {n} differences equal; no t statistic, {p_clause(row['p'])}{adj}"
    else:
        stats_part = (f"paired t({int(round(float(row['df'])))}) = {num(row['t'], 2)}, {p_clause(row['p'])}{adj}; "
                      f"d_z = {num(row['d_z'], 2)}")
    interval = f"{lvl} CI {ci(float(row['ci_low']) * s, float(row['ci_high']) * s, dg)}"
    return (f"{first} (vs. {base}) changed {disp.label} by {num(est, dg, sign=True)}{unit} "
            f"({interval}; {stats_part}; {n} seeds).")


def headline_markdown(results: Any, *, metric: str = "test_acc", factor: str = "placement",
                      baseline: str = "before", diverged: str = "drop_pair") -> str:
    """The headline comparison as a Markdown table (README), from :func:`bnstats.stats.compare`.

    One row per cell × arm: baseline and arm mean ± sd, the difference with its paired-t and BCa 95%
    intervals, d_z with its interval, Holm-adjusted p and the verdict (accuracies in % and pp).
    """
    from . import stats

    runs = results.runs
    cmp = stats.compare(runs, metric=metric, factor=factor, baseline=baseline, diverged=diverged,
                        nan_policy="omit" if diverged == "keep" else "raise")
    desc = stats.describe(runs, metric=metric, factor=factor)
    disp = MetricDisplay.of(metric)
    sc, dg = disp.scale, disp.digits
    by = [c for c in cmp.columns[: list(cmp.columns).index("factor")]]
    lookup = desc.set_index([*by, "arm"]) if "arm" in desc else desc.set_index([*by, factor])

    def level(cell: tuple, arm: str) -> str:
        r = lookup.loc[(*cell, arm)]
        return f"{num(r['mean'] * sc, dg)} ± {num(r['sd'] * sc, dg)}"

    head = [*by, f"{baseline} ({disp.unit})", f"arm ({disp.unit})", f"difference ({disp.diff_unit}), 95% CI",
            "BCa 95% CI", "d_z (95% CI)", "p_adj (Holm)", "verdict", "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in cmp.iterrows():
        cell = tuple(r[b] for b in by)
        row = [*map(str, cell), level(cell, baseline), f"{r['arm']}: {level(cell, r['arm'])}",
               f"{num(r['estimate'] * sc, dg, sign=True)} [{ci(r['ci_low'] * sc, r['ci_high'] * sc, dg)}]",
               f"[{ci(r['boot_ci_low'] * sc, r['boot_ci_high'] * sc, dg)}]",
               f"{num(r['d_z'], 2)} [{ci(r['d_z_ci_low'], r['d_z_ci_high'], 2)}]",
               fmt_p(r["p_adj"]), r["verdict"], str(int(r["n"]))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------
# Data checks and provenance


def pairing_certificate(runs: pd.DataFrame, factor: str, factors: Sequence[str] | None = None) -> pd.DataFrame:
    """Per seed and every grid factor except ``factor``: do all arms share ``init_hash`` and ``order_hash``?

    Returns one row per group: the group keys, ``n_arms``, ``n_init_hash``, ``n_order_hash``, ``ok``.
    """
    factors = list(factors if factors is not None else runs.attrs.get("factors", []))
    keys = ["seed", *[f for f in factors if f != factor]]
    g = runs.groupby(keys, sort=True, observed=True, dropna=False)
    out = g.agg(n_arms=(factor, "nunique"), n_init_hash=("init_hash", "nunique"),
                n_order_hash=("order_hash", "nunique")).reset_index()
    out["ok"] = (out["n_init_hash"] == 1) & (out["n_order_hash"] == 1)
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def store_hash(runs: pd.DataFrame) -> str:
    """sha256 of the runs table's contents (rows sorted by ``run_id``, columns by name; order-free)."""
    df = runs.sort_values("run_id", kind="stable")[sorted(runs.columns)]
    recs = [{k: (repr(v) if isinstance(v, float) else _plain(v)) for k, v in r.items()}
            for r in df.to_dict("records")]
    return hashlib.sha256(json.dumps(recs, sort_keys=True, default=str).encode()).hexdigest()


REPORT_PACKAGES = ("numpy", "scipy", "statsmodels", "pandas", "pyarrow", "matplotlib", "seaborn",
                   "papermill", "nbconvert", "weasyprint")


def software_versions() -> dict[str, str]:
    """Versions of the software that computed and rendered this report."""
    out = {"python": platform.python_version(), "bnstats": __version__}
    for pkg in REPORT_PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _uniq(runs: pd.DataFrame, col: str) -> list[str]:
    return sorted(map(str, runs[col].dropna().unique())) if col in runs else []


# -------------------------------------------------------------------------------------------------
# HTML helpers (tables are written by hand: deterministic, no random ids)


def esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def html_table(df: pd.DataFrame, *, cls: str = "", right: Iterable[str] = ()) -> str:
    right = set(right)
    head = "".join(f"<th{' class=r' if c in right else ''}>{esc(c)}</th>" for c in df.columns)
    rows = []
    for r in df.itertuples(index=False):
        tds = "".join(f"<td{' class=r' if c in right else ''}>{_cell_html(v)}</td>" for c, v in zip(df.columns, r, strict=True))
        rows.append(f"<tr>{tds}</tr>")
    return f'<table class="bn {cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _cell_html(v: Any) -> str:
    """A table cell; a second line (after "\\n") is set smaller, for a secondary number."""
    first, *rest = str(v).split("\n")
    return esc(first) + "".join(f'<br/><span class="sub">{esc(x)}</span>' for x in rest)


_TEX_UNICODE = {"\u2212": "$-$", "\u00b1": r"$\pm$", "\u0394": r"$\Delta$", "\u2013": "--", "\u00d7": r"$\times$",
                "\u2264": r"$\leq$", "\u2265": r"$\geq$", "\u221e": r"$\infty$", "\u00b7": r"$\cdot$",
                "\u00a0": "~"}


def _tex_escape(s: Any) -> str:
    """Text for a TeX table cell: special characters escaped, the Unicode we print mapped to TeX (pdflatex-safe)."""
    s = str(s)
    if "$" in s:  # already TeX (formatted numbers)
        return s
    rep = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
           "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", **_TEX_UNICODE}
    return "".join(rep.get(ch, ch) for ch in s)


def tex_table(df: pd.DataFrame, *, right: Iterable[str] = (), caption: str = "") -> str:
    """A booktabs tabular for ``\\input`` (needs ``\\usepackage{booktabs}``)."""
    right = set(right)
    cols = "".join("r" if c in right else "l" for c in df.columns)
    lines = ["% generated by bnstats report; needs \\usepackage{booktabs}"]
    if caption:
        lines.append("% " + caption.replace("\n", " "))
    lines += [f"\\begin{{tabular}}{{{cols}}}", "\\toprule",
              " & ".join(_tex_escape(c) for c in df.columns) + r" \\", "\\midrule"]
    for r in df.itertuples(index=False):
        lines.append(" & ".join(_tex_escape(v) for v in r) + r" \\")
    lines += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(lines)


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    path.write_text(df.to_csv(index=False, lineterminator="\n"))


# -------------------------------------------------------------------------------------------------
# The report's pieces, called by the notebook


class Report:
    """State shared by the notebook's cells: the parameters, the output folder, figure/table counters.

    ``Report(results, out, **params)`` validates the parameters against the store, loads it, and
    makes ``out/tables`` and ``out/figures``.
    """

    def __init__(self, results: str | os.PathLike, out: str | os.PathLike = "", **params: Any):
        from . import store

        self.res = store.load(results)
        self.runs = self.res.runs
        p = check_parameters({**params, "results": str(results), "out": str(out)}, self.runs, self.res.factors)
        self.params = p
        self.results = str(results)
        self.out = Path(out) if out else Path(results) / "report"
        self.metric, self.factor, self.baseline = p["metric"], p["factor"], p["baseline"]
        self.by = [f for f in self.res.factors if f != self.factor]
        self.disp = MetricDisplay.of(self.metric)
        self.level = round(100 * float(p["confidence_level"]), 6)
        self.files: list[str] = []
        self._n_fig = 0
        self._n_tab = 0
        for d in ("tables", "figures"):
            (self.out / d).mkdir(parents=True, exist_ok=True)
        arms = [lv for lv in sorted(map(str, self.runs[self.factor].dropna().unique())) if lv != self.baseline]
        order = [str(x) for x in self.res.config.get("grid", {}).get(self.factor, [])]
        arms.sort(key=lambda a: (order.index(a) if a in order else len(order), a))
        self.arms = [self.baseline, *arms]
        import seaborn as sns

        self.palette = dict(zip(self.arms, sns.color_palette("colorblind", len(self.arms)).as_hex(), strict=True))

    # --- output -----------------------------------------------------------------------------------
    def _record(self, path: Path) -> None:
        self.files.append(path.relative_to(self.out).as_posix())

    def table(self, name: str, raw: pd.DataFrame, shown: pd.DataFrame | None = None, *, caption: str,
              tex: pd.DataFrame | None = None, right: Iterable[str] = (), tex_right: Iterable[str] | None = None,
              cls: str = "", display: bool = True, write_tex: bool = True):
        """Write ``tables/<name>.csv`` (``raw``, every digit) and, with ``write_tex``, ``tables/<name>.tex``
        (``tex`` or ``shown``, rounded); return the HTML of ``shown`` with a numbered caption."""
        right = list(right)
        csv = self.out / "tables" / f"{name}.csv"
        _write_csv(raw, csv)
        self._record(csv)
        shown = raw if shown is None else shown
        if write_tex:
            texdf = tex if tex is not None else shown
            texp = self.out / "tables" / f"{name}.tex"
            plain = html.unescape(re.sub(r"<[^>]+>", "", caption))
            texp.write_text(tex_table(texdf, right=right if tex_right is None else tex_right, caption=plain))
            self._record(texp)
        if not display:
            return None
        self._n_tab += 1
        files = f"tables/{esc(name)}.csv" + (", .tex" if write_tex else "")
        return _HTML(f'<p class="caption"><b>Table {self._n_tab}.</b> {caption} '
                     f'<span class="files">[{files}]</span></p>' + html_table(shown, cls=cls, right=right))

    def _save_figure(self, fig, name: str) -> float:
        """Write ``figures/<name>.png`` and ``.pdf`` (no dates, no software stamps); return the width in inches."""
        import matplotlib.pyplot as plt

        png = self.out / "figures" / f"{name}.png"
        pdf = self.out / "figures" / f"{name}.pdf"
        fig.set_dpi(FIG_DPI)  # text extents (hinting) depend on dpi: lay out at the dpi of the PNG
        if fig.get_layout_engine() is not None:  # lay out once, not once per file
            fig.draw_without_rendering()
            fig.set_layout_engine("none")
        _save_png_rgb(fig, png)
        fig.savefig(pdf, metadata={"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None})
        w_in = float(fig.get_size_inches()[0])
        plt.close(fig)
        return w_in

    def _figure_html(self, name: str, caption: str, w_in: float) -> _HTML:
        import base64

        png = self.out / "figures" / f"{name}.png"
        self._record(png)
        self._record(self.out / "figures" / f"{name}.pdf")
        self._n_fig += 1
        data = base64.b64encode(png.read_bytes()).decode()
        return _HTML(f'<figure><img src="data:image/png;base64,{data}" width="{round(w_in * PX_PER_IN)}" '
                     f'alt="{esc(name)}"/><figcaption><b>Figure {self._n_fig}.</b> {caption} '
                     f'<span class="files">[figures/{esc(name)}.png, .pdf]</span></figcaption></figure>')

    def figure(self, fig, name: str, caption: str) -> _HTML:
        """Save one figure (PNG + PDF) and return it, numbered and captioned, for display."""
        return self._figure_html(name, caption, self._save_figure(fig, name))

    def figures(self, jobs: Sequence[tuple[str, str, Any, tuple]]) -> list[_HTML | None]:
        """Build and save several figures; return their HTML in the order of ``jobs`` (None where a
        builder had nothing to plot).

        ``jobs``: ``(name, caption, builder, args)`` with ``builder(report, *args) -> Figure | None``.
        Figures are independent, so they are drawn in two forked worker processes where the platform
        forks (drawing dominates the report's time); each file's bytes do not depend on where it was drawn.
        """
        global _FIGURE_JOBS
        _FIGURE_JOBS = [(self, builder, args, name) for name, _, builder, args in jobs]
        try:
            workers = min(int(os.environ.get("BNSTATS_REPORT_WORKERS", FIGURE_WORKERS)), len(jobs), os.cpu_count() or 1)
            widths = None
            if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
                import concurrent.futures as cf
                from concurrent.futures.process import BrokenProcessPool

                with warnings.catch_warnings():  # Python 3.12+: fork of a multi-threaded process (the kernel)
                    warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
                    ctx = multiprocessing.get_context("fork")
                    with contextlib.suppress(BrokenProcessPool, OSError), \
                            cf.ProcessPoolExecutor(workers, mp_context=ctx) as ex:
                        widths = list(ex.map(_figure_job, range(len(jobs))))
            if widths is None:  # one process (or the pool could not run): draw here
                widths = [_figure_job(i) for i in range(len(jobs))]
        finally:
            _FIGURE_JOBS = []
        return [None if w is None else self._figure_html(name, caption, w)
                for (name, caption, _, _), w in zip(jobs, widths, strict=True)]

    def cells(self) -> list[dict[str, Any]]:
        """The cells (values of every grid factor except ``factor``), in the order of ``stats.compare``."""
        return [cell for cell, _ in _cells(self, self.runs)]

    @staticmethod
    def name(prefix: str, cell: dict[str, Any]) -> str:
        """A file name for a cell's figure: ``moments_cnn_relu``."""
        parts = [prefix, *(str(v) for v in cell.values())]
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join(parts))

    @property
    def title(self) -> str:
        cfg = self.res.config
        return self.params["title"] or f"{cfg.get('name', 'sweep')}: {self.factor} and {self.disp.label}"

    def headline_table(self, raw: pd.DataFrame, shown: pd.DataFrame, tex: pd.DataFrame, cmp: pd.DataFrame):
        lvl = f"{self.level:g}%"
        d = self.disp
        u = f" ({d.unit})" if d.unit else ""
        du = f" ({d.diff_unit})" if d.diff_unit else ""
        cap = (f"Headline: one row per comparison (cell × arm vs. {esc(self.baseline)}). Baseline and arm: mean ± SD "
               f"over seeds{u}. Δ: mean of the per-seed differences arm − baseline{du}, with its {lvl} paired t interval "
               f"(primary) and BCa bootstrap interval. d_z: mean / SD of the differences, with its noncentral-t "
               f"interval. p: two-sided paired t-test; p_adj: {P_ADJUST_NAMES[self.params['p_adjust']]} over the "
               f"{len(cmp)} comparisons. Verdict: better / worse when the t interval excludes 0"
               + (", equivalent when TOST rejects within the margin" if self.params["margin"] is not None else "")
               + ", else inconclusive.")
        right = [c for c in shown.columns if c not in (*self.by, self.factor, "verdict")]
        tex_right = [c for c in tex.columns if c not in (*self.by, self.factor, "verdict")]
        return self.table("headline", raw, shown, tex=tex, caption=cap, right=right, tex_right=tex_right, cls="wide")

    def arms_block(self, desc: pd.DataFrame):
        """Table of ``stats.describe`` per cell and arm (rounded), written as arms.csv / arms.tex."""
        shown = self.arms_table(desc)
        return self.table("arms", desc, shown, right=shown.columns[len(self.by) + 1:], caption=self.arms_caption())

    def arms_caption(self) -> str:
        d = self.disp
        return (f"{esc(d.label[0].upper() + d.label[1:])} per cell and arm over seeds{f' ({d.unit})' if d.unit else ''} "
                "(stats.describe): n finite values, NaN values, diverged runs, mean, SD (ddof = 1), min, max.")

    def caption(self, kind: str, **kw: Any) -> str:
        d = self.disp
        lvl = f"{self.level:g}%"
        lab = d.label
        cells = ", ".join(self.by) or "all runs"
        du = f" ({d.diff_unit})" if d.diff_unit else ""
        margin = " Green band: equivalence margin." if self.params["margin"] is not None else ""
        if kind == "paired_seeds":
            return (f"{esc(lab[0].upper() + lab[1:])}{f' ({d.unit})' if d.unit else ''} per arm, one panel per cell "
                    f"({esc(cells)}). Grey lines join the arms of one seed (the pairing); large dots: arm means.")
        if kind == "differences":
            return (f"Per-seed differences arm − baseline in {esc(lab)}{du}, one row per comparison; small dots: seeds. "
                    f"Black: mean with its {lvl} paired t interval; purple bar: {lvl} BCa bootstrap interval; "
                    f"dashed line: no difference.{margin}")
        if kind == "forest":
            return (f"Effects across cells. Left: mean difference{du} with its {lvl} paired t interval (dotted: BCa). "
                    f"Right: d_z with its {lvl} noncentral-t interval. Colour: verdict.{margin}")
        if kind == "learning_curves":
            return ("Learning curves per cell: test-set metric and training loss (mean cross-entropy) per epoch, per arm; "
                    "line: mean over seeds; band: ± 1 SD across seeds.")
        if kind == "moments":
            probe = self.res.config.get("moments", {}).get("probe_size", "?")
            return (f"Activation moments per layer over training, {esc(cell_label(kw['cell']))}: channel-mean "
                    "skewness, excess kurtosis (0 for a Gaussian) and fraction of exact zeros at <b>norm_in</b> "
                    "(the input of the norm: the linear output when placement = before, the activation's output when "
                    "after) and <b>act_out</b> (the activation's output), on the fixed probe batch "
                    f"({probe} test inputs, eval mode) at initialization (epoch 0) and after each epoch. Line: mean "
                    "over seeds; band: ± 1 SD. placement = none has no norm_in.")
        if kind == "association":
            return (f"Does the between-arm difference of a moment at norm_in track the difference in {esc(lab)}? "
                    f"Pearson r across seeds (stats.paired_association; final epoch, probe batch) with its {lvl} "
                    "Fisher-z interval, per cell, arm and layer; 'undefined': constant or too few seeds. "
                    "Benjamini–Hochberg-adjusted p in tables/paired_association.csv.")
        raise ValueError(f"caption: unknown kind {kind!r}")

    def association_shown(self, a: pd.DataFrame) -> pd.DataFrame:
        keep = [c for c in (*self.by, "arm", "baseline", "layer", "site", "moment", "n") if c in a]
        shown = a[keep].copy()
        shown["r"] = a["r"].map(lambda x: num(x, 2))
        shown["CI"] = [ci(lo, hi, 2) for lo, hi in zip(a["ci_low"], a["ci_high"], strict=True)]
        shown["p"] = a["p"].map(fmt_p)
        shown["p_adj"] = a["p_adj"].map(fmt_p)
        return shown

    # --- text blocks ------------------------------------------------------------------------------
    def title_block(self) -> _HTML:
        desc = self.res.config.get("description", "")
        return _HTML(f"<h1>{esc(self.title)}</h1>" + (f'<p class="lead">{esc(desc)}</p>' if desc else ""))

    def design_block(self, cert: pd.DataFrame) -> _HTML:
        cfg, runs = self.res.config, self.runs
        tr, md = cfg.get("train", {}), cfg.get("model", {})
        grid = cfg.get("grid", {})
        seeds = sorted(int(s) for s in runs["seed"].unique())
        items = [
            ("Question", f"Does {self.disp.label} differ between the levels of <b>{esc(self.factor)}</b>? "
                         f"Every arm is compared with the baseline <b>{esc(self.baseline)}</b> "
                         f"({esc(level_label(self.factor, self.baseline))}); a difference is arm − baseline, "
                         f"paired on seed, within each cell ({esc(', '.join(self.by)) or 'a single cell'} held fixed)."),
            ("Dataset", esc(", ".join(_uniq(runs, "dataset")) or cfg.get("dataset", "?"))
             + (f" (data hash {esc(', '.join(_uniq(runs, 'data_hash')))})" if "data_hash" in runs else "")),
        ]
        for f in self.res.factors:
            levels = [str(x) for x in grid.get(f, _uniq(runs, f))]
            items.append((f, esc(", ".join(levels))))
        fixed = {k: v for k, v in md.items() if k not in grid}
        items.append(("Seeds", f"{len(seeds)}: " + esc(_seed_ranges(seeds))))
        items.append(("Training", esc(_training_text(tr, grid))))
        model = [f"{k} = {'arch default' if k in ('width', 'depth') and v == 0 else v}" for k, v in fixed.items()
                 if k in ("norm", "affine", "width", "depth", "kernel_size", "dropout")]
        if "arch" in runs and "n_params" in runs:
            sizes = runs.groupby("arch", sort=True)["n_params"].agg(["min", "max"])
            model.append("parameters: " + ", ".join(
                f"{a} {lo:,}" + (f"–{hi:,}" if hi != lo else "") for a, (lo, hi) in sizes.iterrows()))
        items.append(("Model", esc("; ".join(model))))
        bad = cert[~cert["ok"]]
        if bad.empty:
            pc = (f"<b>yes</b>: in each of the {len(cert)} groups of runs with the same seed and the same "
                  f"{esc(', '.join(self.by)) or 'settings'}, all arms share init_hash (initial weights) and "
                  "order_hash (batch order).")
        else:
            pc = (f"<b>no</b>: {len(bad)} of {len(cert)} groups have arms with different init_hash or order_hash; "
                  f"seeds {esc(', '.join(map(str, sorted(bad['seed'].unique()))))}.")
        items.append(("Pairing certificate", pc))
        n_runs = len(runs)
        n_div = int(runs["diverged"].fillna(False).astype(bool).sum()) if "diverged" in runs else 0
        items.append(("Runs", f"{n_runs} stored, {n_div} diverged"))
        return _HTML('<dl class="design">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>")

    def headline(self, cmp: pd.DataFrame, desc: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """(raw, shown, tex): the headline table, one row per comparison."""
        d = self.disp
        s, dg = d.scale, d.digits
        key = [*self.by, "arm"]
        st = desc.set_index(key)
        raw_rows, shown, tex = [], [], []
        lvl = f"{self.level:g}%"
        for r in cmp.to_dict("records"):
            cell = tuple(r[k] for k in self.by)
            a = st.loc[(*cell, r["baseline"])] if self.by else st.loc[r["baseline"]]
            b = st.loc[(*cell, r["arm"])] if self.by else st.loc[r["arm"]]
            raw_rows.append({**{k: r[k] for k in self.by}, "arm": r["arm"], "baseline": r["baseline"], "n": r["n"],
                             "mean_baseline": a["mean"], "sd_baseline": a["sd"], "mean_arm": b["mean"], "sd_arm": b["sd"],
                             "estimate": r["estimate"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                             "boot_ci_low": r["boot_ci_low"], "boot_ci_high": r["boot_ci_high"], "d_z": r["d_z"],
                             "d_z_ci_low": r["d_z_ci_low"], "d_z_ci_high": r["d_z_ci_high"], "t": r["t"], "df": r["df"],
                             "p": r["p"], "p_adj": r["p_adj"], "p_tost": r["p_tost"], "verdict": r["verdict"],
                             "n_diverged": r["n_diverged"], "scale": s})
            cells = {k: r[k] for k in self.by}
            # the page: two-line cells (t over BCa; d_z over its interval) keep the table within A4 width
            shown.append({
                **cells, self.factor: r["arm"], "n": str(r["n"]),
                d.with_unit(str(r["baseline"])): f"{num(a['mean'] * s, dg)} ± {num(a['sd'] * s, dg)}",
                d.with_unit("arm"): f"{num(b['mean'] * s, dg)} ± {num(b['sd'] * s, dg)}",
                d.with_unit("Δ", True): num(r["estimate"] * s, dg, sign=True),
                d.with_unit(f"{lvl} CI", True): (f"t: {ci(r['ci_low'] * s, r['ci_high'] * s, dg)}\n"
                                                 f"BCa: {ci(r['boot_ci_low'] * s, r['boot_ci_high'] * s, dg)}"),
                f"d_z ({lvl} CI)": f"{num(r['d_z'], 2)}\n{ci(r['d_z_ci_low'], r['d_z_ci_high'], 2)}",
                "p": fmt_p(r["p"]), "p_adj": fmt_p(r["p_adj"]), "verdict": r["verdict"],
            })
            # the .tex file: one number per column
            pm = r" $\pm$ "
            tex.append({
                **cells, self.factor: r["arm"], "n": str(r["n"]),
                d.with_unit(str(r["baseline"])): num(a["mean"] * s, dg, style="tex") + pm + num(a["sd"] * s, dg, style="tex"),
                d.with_unit("arm"): num(b["mean"] * s, dg, style="tex") + pm + num(b["sd"] * s, dg, style="tex"),
                d.with_unit(r"$\Delta$", True): num(r["estimate"] * s, dg, sign=True, style="tex"),
                f"{lvl} CI (t)": ci(r["ci_low"] * s, r["ci_high"] * s, dg, "tex"),
                f"{lvl} CI (BCa)": ci(r["boot_ci_low"] * s, r["boot_ci_high"] * s, dg, "tex"),
                "$d_z$": num(r["d_z"], 2, style="tex"),
                f"$d_z$ {lvl} CI".replace("%", r"\%"): ci(r["d_z_ci_low"], r["d_z_ci_high"], 2, "tex"),
                "$p$": fmt_p(r["p"], "tex"), r"$p_\mathrm{adj}$": fmt_p(r["p_adj"], "tex"), "verdict": r["verdict"],
            })
        return pd.DataFrame(raw_rows), pd.DataFrame(shown), pd.DataFrame(tex)

    def arms_table(self, desc: pd.DataFrame):
        d = self.disp
        s, dg = d.scale, d.digits
        rows = []
        for r in desc.to_dict("records"):
            rows.append({**{k: r[k] for k in self.by}, self.factor: r["arm"], "n": r["n"], "NaN": r["n_nan"],
                         "diverged": r["n_diverged"], d.with_unit("mean"): num(r["mean"] * s, dg),
                         d.with_unit("sd"): num(r["sd"] * s, dg), d.with_unit("min"): num(r["min"] * s, dg),
                         d.with_unit("max"): num(r["max"] * s, dg)})
        return pd.DataFrame(rows)

    def summary(self, cmp: pd.DataFrame, raw_headline: pd.DataFrame, cert: pd.DataFrame, sentences: list[str]) -> dict:
        """Every number of the headline table, unrounded, in the metric's units (``scale`` converts)."""
        p = self.params
        comps = []
        cols = [c for c in raw_headline.columns if c != "scale"]
        for (_, h), (_, c), sent in zip(raw_headline.iterrows(), cmp.iterrows(), sentences, strict=True):
            row = {k: _plain(h[k]) for k in cols}
            row.update({"ci_method": c["method"], "boot_method": c["boot_method"], "confidence_level": _plain(c["confidence_level"]),
                        "p_adjust_method": c["p_adjust_method"], "effect_size_name": c["effect_size_name"],
                        "margin_low": _plain(c["margin_low"]), "margin_high": _plain(c["margin_high"]),
                        "caveats": c["caveats"], "sentence": sent})
            comps.append(row)
        params = {k: v for k, v in p.items() if k not in ("out",)}
        return {
            "title": self.title, "bnstats_version": __version__, "store_hash": store_hash(self.runs), "parameters": params,
            "metric": self.metric, "factor": self.factor, "baseline": self.baseline, "by": self.by,
            "display": {"scale": self.disp.scale, "unit": self.disp.unit, "diff_unit": self.disp.diff_unit},
            "pairing_certificate": {"ok": bool(cert["ok"].all()),
                                    "failing_seeds": sorted(int(s) for s in cert.loc[~cert["ok"], "seed"].unique())},
            "comparisons": comps,
        }

    def write_summary(self, summary: dict) -> None:
        summary = {**summary, "files": sorted([*self.files, "summary.json"])}
        path = self.out / "summary.json"
        path.write_text(json.dumps(summary, indent=2, sort_keys=False, allow_nan=False) + "\n")

    def cite_block(self, cmp: pd.DataFrame) -> tuple[_HTML, list[str]]:
        sentences = [cite_sentence(r, by=self.by) for r in cmp.to_dict("records")]
        # no line break inside "t(9) = 4.10" and the like (the sentences themselves keep plain spaces)
        items = "".join(f"<li>{esc(s).replace(' = ', NBSP + '=' + NBSP)}</li>" for s in sentences)
        note = (f"The interval is the paired t interval at {self.level:g}%; p is the two-sided paired t-test's "
                f"(adjusted over the {len(cmp)} comparisons by {P_ADJUST_NAMES[self.params['p_adjust']]}); "
                "d_z is the mean difference divided by the SD of the differences. "
                "Cite the sweep by its store hash (Provenance).")
        return _HTML(f'<ol class="cite">{items}</ol><p class="note">{esc(note)}</p>'), sentences

    def methods_block(self, cmp: pd.DataFrame) -> _HTML:
        p = self.params
        cfg = self.res.config
        n_min, n_max = int(cmp["n"].min()), int(cmp["n"].max())
        n_txt = f"{n_min}" if n_min == n_max else f"{n_min} to {n_max}"
        wil = ", ".join(sorted(set(cmp["wilcoxon_method"])))
        flip = ", ".join(sorted(set(cmp["signflip_method"])))
        v = software_versions()
        torch_v = ", ".join(_uniq(self.runs, "torch_version")) or "?"
        lvl = f"{self.level:g}%"
        margin = p["margin"]
        parts = [
            f"We trained {len(self.runs)} runs ({esc(cfg.get('dataset', ''))}; {esc(_training_text(cfg.get('train', {}), cfg.get('grid', {})))}) "
            f"on a grid of {esc(', '.join(self.res.factors))}, replicated over seeds; all arms of a seed share their "
            "initial weights (where shapes agree) and their data order, so each comparison is paired on seed.",
            f"For each cell ({esc(', '.join(self.by)) or 'one cell'}) and each arm of {esc(self.factor)} we computed the "
            f"per-seed difference in {esc(self.disp.label)} (arm − {esc(self.baseline)}; n = {n_txt} seeds per comparison) "
            f"and report its mean with a {lvl} paired t interval (primary) and a {lvl} BCa bootstrap interval "
            f"({p['n_resamples']} resamples; Efron 1987), the two-sided paired t-test, the standardized effect "
            f"d_z = mean / SD of the differences with a noncentral-t interval (Steiger & Fouladi 1997), "
            f"the Wilcoxon signed-rank test ({esc(wil)}; zeros dropped) and a sign-flip permutation test ({esc(flip)}).",
            f"p-values of the t-tests are adjusted over the family of {len(cmp)} comparisons by "
            f"{P_ADJUST_NAMES[p['p_adjust']]}.",
        ]
        if margin is not None:
            lo, hi = (-margin, margin) if not isinstance(margin, list | tuple) else margin
            s, u = self.disp.scale, self.disp.diff_unit
            parts.append(f"Equivalence within ({num(lo * s, 2)}, {num(hi * s, 2)}) {u} is tested by two one-sided "
                         f"paired t-tests (TOST; Schuirmann 1987).")
        parts.append("A comparison is called better or worse when the t interval excludes zero, equivalent when "
                     "TOST rejects, else inconclusive.")
        if p["diverged"] == "drop_pair":
            parts.append("Seeds where either arm diverged (non-finite loss) are dropped from that comparison and counted.")
        else:
            parts.append("Diverged runs are kept as recorded; their NaN metric drops the pair, counted.")
        if n_min < 15:
            parts.append("With fewer than 15 seeds the BCa interval under-covers (about 83% at n = 5, 90% at n = 10 "
                         "for a nominal 95%); the t interval is the one to cite.")
        parts.append(f"All random draws come from the seed {p['rng']}, so the same store gives the same numbers. "
                     f"Software: bnstats {v['bnstats']}, Python {v['python']}, PyTorch {esc(torch_v)}, NumPy {v['numpy']}, "
                     f"SciPy {v['scipy']}, statsmodels {v['statsmodels']}, pandas {v['pandas']}, "
                     f"matplotlib {v['matplotlib']}, seaborn {v['seaborn']}.")
        return _HTML('<p class="methods">' + " ".join(parts) + "</p>")

    def caveats_block(self, cmp: pd.DataFrame, desc: pd.DataFrame, cert: pd.DataFrame, extra: Sequence[str] = ()) -> _HTML:
        by_text: dict[str, list[str]] = {}
        for r in cmp.to_dict("records"):
            label = ", ".join([*(str(r[k]) for k in self.by), f"{r['arm']} − {r['baseline']}"])
            for c in split_caveats(r["caveats"]):
                by_text.setdefault(c, []).append(label)
        items = []
        n_div = int(desc["n_diverged"].sum())
        if n_div:
            per = desc[desc["n_diverged"] > 0]
            where = "; ".join(f"{', '.join(str(r[k]) for k in [*self.by, 'arm'])}: {r['n_diverged']}"
                              for r in per.to_dict("records"))
            how = ("dropped with their pair from the comparison (diverged='drop_pair')"
                   if self.params["diverged"] == "drop_pair" else "kept; their NaN metric drops the pair")
            items.append(f"{n_div} diverged run(s), {how}: {where}.")
        else:
            items.append("No run diverged.")
        if not cert["ok"].all():
            bad = sorted(cert.loc[~cert["ok"], "seed"].unique())
            items.append(f"Pairing certificate fails for seed(s) {', '.join(map(str, bad))}: their arms did not share "
                         "initial weights or data order; the comparison is paired on seed regardless.")
        for text, where in by_text.items():
            scope = "all comparisons" if len(where) == len(cmp) else "; ".join(where)
            items.append(f"{text} ({scope}).")
        items.extend(extra)
        items.append("Correlations between moments and accuracy across seeds are descriptive, not causal.")
        return _HTML('<ul class="caveats">' + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>")

    def provenance_block(self, cert: pd.DataFrame) -> _HTML:
        runs = self.runs
        v = software_versions()
        seeds = sorted(int(s) for s in runs["seed"].unique())
        rows = [
            ("store", self.results),
            ("store hash (sha256 of the runs table)", store_hash(runs)),
            ("runs", str(len(runs))),
            ("seeds", ", ".join(map(str, seeds))),
            ("git commit of the runs", ", ".join(_uniq(runs, "git_commit")) or "not recorded"),
            ("git commit of this report", git_commit() or "not a git checkout"),
            ("devices", ", ".join(_uniq(runs, "device"))),
        ]
        trained = [f"{c.removesuffix('_version')} {'/'.join(_uniq(runs, c))}"
                   for c in sorted(c for c in runs.columns if c.endswith("_version"))]
        rows.append(("software (training)", ", ".join(trained)))
        rows.append(("software (this report)", ", ".join(f"{k} {val}" for k, val in v.items())))
        rows.append(("report parameters", json.dumps({k: x for k, x in self.params.items() if k != "out"}, sort_keys=True)))
        table = "".join(f"<tr><th>{esc(k)}</th><td>{esc(x)}</td></tr>" for k, x in rows)
        config = "\n".join(f"{k} = {json.dumps(v)}" for k, v in _flatten(self.res.config))
        return _HTML(f'<table class="prov">{table}</table><h3>Sweep configuration (sweep.json)</h3>'
                     f'<pre class="config">{esc(config)}</pre>')


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``{"train": {"lr": 0.05}}`` -> ``[("train.lr", 0.05)]``, keys sorted."""
    out: list[tuple[str, Any]] = []
    for k in sorted(d):
        v = d[k]
        if isinstance(v, dict) and v:
            out.extend(_flatten(v, f"{prefix}{k}."))
        else:
            out.append((f"{prefix}{k}", v))
    return out


def split_caveats(text: Any) -> list[str]:
    """The "; "-joined ``caveats`` of a compare() row as a list (rejoining a caveat that contains "; ")."""
    out: list[str] = []
    for part in (x.strip() for x in str(text or "").split("; ")):
        if not part:
            continue
        if out and part.startswith(_CONTINUED):
            out[-1] = f"{out[-1]}; {part}"
        else:
            out.append(part)
    return out


# caveats of bnstats.stats that contain "; " themselves continue with these words (tested)
_CONTINUED = ("the paired t interval is primary", "n used =", "their ")


def _save_png_rgb(fig, path: Path) -> None:
    """The figure as an opaque RGB PNG at ``FIG_DPI``: no alpha channel (WeasyPrint would split it off
    and re-encode it), no metadata (no software stamp), so the bytes depend only on the figure."""
    from PIL import Image

    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    Image.fromarray(np.ascontiguousarray(rgba[..., :3])).save(path, format="PNG")


FIGURE_WORKERS = 2  # processes drawing figures (BNSTATS_REPORT_WORKERS overrides; 1 = draw in the kernel)
_FIGURE_JOBS: list = []


def _figure_job(i: int) -> float | None:
    """Worker: build figure ``i`` of :meth:`Report.figures` (inherited through fork) and save it."""
    rep, builder, args, name = _FIGURE_JOBS[i]
    fig = builder(rep, *args)
    return None if fig is None else rep._save_figure(fig, name)


class _HTML:
    """Rich display of an HTML string (what ``IPython.display.HTML`` does, without importing IPython)."""

    def __init__(self, data: str):
        self.data = data

    def _repr_html_(self) -> str:
        return self.data

    def __repr__(self) -> str:
        return f"<HTML {len(self.data)} chars>"


def _seed_ranges(seeds: Sequence[int]) -> str:
    out, start, prev = [], None, None
    for s in seeds:
        if start is None:
            start = prev = s
        elif s == prev + 1:
            prev = s
        else:
            out.append(f"{start}–{prev}" if prev != start else str(start))
            start = prev = s
    if start is not None:
        out.append(f"{start}–{prev}" if prev != start else str(start))
    return ", ".join(out)


def _training_text(tr: dict[str, Any], grid: dict[str, Any]) -> str:
    def g(k, default="?"):
        return "/".join(map(str, grid[k])) if k in grid else tr.get(k, default)

    parts = [f"{g('epochs')} epochs", f"{g('optimizer')}", f"lr {g('lr')}", f"{g('schedule')} schedule",
             f"batch {g('batch_size')}"]
    if tr.get("optimizer") == "sgd" or "momentum" in grid:
        parts.append(f"momentum {g('momentum')}")
    if tr.get("weight_decay") or "weight_decay" in grid:
        parts.append(f"weight decay {g('weight_decay')}")
    return ", ".join(str(p) for p in parts)


# -------------------------------------------------------------------------------------------------
# Figures (seaborn / matplotlib; every axis has its unit, every figure a legend)


def setup_plotting() -> None:
    """A readable, deterministic style: Agg, 8-pt text, no timestamps in saved files."""
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    sns.set_theme(context="paper", style="whitegrid", font_scale=1.0)
    matplotlib.rcParams.update({
        "font.size": 8, "axes.titlesize": 8.5, "axes.labelsize": 8, "xtick.labelsize": 7.5, "ytick.labelsize": 7.5,
        "legend.fontsize": 7.5, "legend.title_fontsize": 8, "figure.dpi": 100, "savefig.dpi": FIG_DPI,
        "pdf.fonttype": 3, "svg.hashsalt": "bnstats", "figure.constrained_layout.use": True,
        "axes.titleweight": "bold",
    })


def _grid(n: int, ncols_max: int = 4, *, panel_h: float = 2.2, width: float = FIG_WIDTH, sharey=False):
    import matplotlib.pyplot as plt

    ncols = max(1, min(ncols_max, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, panel_h * nrows + 0.5), squeeze=False, sharey=sharey)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _cells(rep: Report, frame: pd.DataFrame) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    from .stats._frames import cells

    return list(cells(frame, rep.by))


def paired_seed_figure(rep: Report):
    """Per cell: the metric per arm, one grey line per seed (the pairing), arm means as coloured dots."""
    d = rep.disp
    runs = rep.runs
    cl = _cells(rep, runs)
    ncols = 2 if len(cl) <= 6 else 3
    fig, axes = _grid(len(cl), ncols_max=ncols, panel_h=2.1)
    for ax, (cell, sub) in zip(axes, cl, strict=True):
        arms = [a for a in rep.arms if (sub[rep.factor] == a).any()]
        wide = sub.pivot_table(index="seed", columns=rep.factor, values=rep.metric, aggfunc="first", dropna=False)
        wide = wide.reindex(columns=arms) * d.scale
        xs = np.arange(len(arms))
        for _, row in wide.iterrows():
            ax.plot(xs, row.to_numpy(float), color="0.55", lw=0.7, alpha=0.6, marker="o", ms=2.2, zorder=1)
        means = wide.mean(axis=0)
        for x, a in zip(xs, arms, strict=True):
            ax.scatter([x], [means[a]], s=36, color=rep.palette[a], edgecolor="black", lw=0.6, zorder=3)
        ax.set_xticks(xs, arms)
        ax.set_xlim(-0.4, len(arms) - 0.6)
        # a third of the page is too narrow for "arch = cnn, activation = tanh" on one line
        ax.set_title(cell_label(cell) if ncols == 2 else cell_label(cell).replace(", ", ",\n"))
        ax.set_xlabel(rep.factor)
        ax.set_ylabel(d.with_unit(d.label))
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="0.55", lw=0.7, marker="o", ms=2.2, label="one seed"),
               Line2D([], [], lw=0, marker="o", ms=6, markerfacecolor="white", markeredgecolor="black",
                      label="arm mean (colour = arm)")]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
    return fig


def _diff_frame(rep: Report, cmp: pd.DataFrame) -> pd.DataFrame:
    """Per-seed differences arm − baseline, paired on seed as ``stats.compare`` pairs them."""
    from .stats._frames import pair_up

    rows = []
    for cell, sub in _cells(rep, rep.runs):
        for arm in rep.arms[1:]:
            if not (sub[rep.factor] == arm).any():
                continue
            r0, r1, _ = pair_up(sub, rep.factor, rep.baseline, arm, "seed", drop_unpaired=True, where="")
            dlt = (r1[rep.metric].to_numpy(float) - r0[rep.metric].to_numpy(float)) * rep.disp.scale
            for seed, x in zip(r0["seed"], dlt, strict=True):
                rows.append({**cell, "arm": arm, "seed": int(seed), "diff": x})
    return pd.DataFrame(rows)


def comparison_labels(rep: Report, cmp: pd.DataFrame) -> list[str]:
    return [" · ".join([*(str(r[k]) for k in rep.by), f"{r['arm']} − {r['baseline']}"]) for r in cmp.to_dict("records")]


def _margin_band(ax, rep: Report, horizontal=True):
    m = rep.params["margin"]
    if m is None:
        return None
    lo, hi = (-m, m) if not isinstance(m, list | tuple) else m
    return ax.axvspan(lo * rep.disp.scale, hi * rep.disp.scale, color="tab:green", alpha=0.12, lw=0,
                      label="equivalence margin")


def differences_figure(rep: Report, cmp: pd.DataFrame):
    """Per comparison: every seed's difference, the mean with its t interval and the BCa interval."""
    import matplotlib.pyplot as plt

    d = rep.disp
    diffs = _diff_frame(rep, cmp)
    labels = comparison_labels(rep, cmp)
    n = len(cmp)
    fig, ax = plt.subplots(figsize=(FIG_WIDTH, 0.45 * n + 1.3))
    _margin_band(ax, rep)
    ax.axvline(0, color="black", lw=0.8, ls="--", label="no difference")
    for i, r in enumerate(cmp.to_dict("records")):
        y = n - 1 - i
        mask = diffs["arm"] == r["arm"]
        for k in rep.by:
            mask &= diffs[k] == r[k]
        x = diffs.loc[mask, "diff"].to_numpy(float)
        jit = np.linspace(-0.18, 0.18, x.size) if x.size > 1 else np.zeros(x.size)
        ax.scatter(x, y + jit, s=9, color=rep.palette[r["arm"]], alpha=0.75, lw=0, zorder=2,
                   label="one seed (colour = arm)" if i == 0 else None)
        s = d.scale
        ax.errorbar(r["estimate"] * s, y + 0.3, xerr=[[r["estimate"] * s - r["ci_low"] * s], [r["ci_high"] * s - r["estimate"] * s]],
                    fmt="o", color="black", ms=4, capsize=2.5, lw=1.2, zorder=3,
                    label=f"mean, {rep.level:g}% t CI" if i == 0 else None)
        if np.isfinite(r["boot_ci_low"]) and np.isfinite(r["boot_ci_high"]):
            ax.plot([r["boot_ci_low"] * s, r["boot_ci_high"] * s], [y - 0.3, y - 0.3], color="tab:purple", lw=2.2,
                    solid_capstyle="butt", zorder=3, label=f"{rep.level:g}% BCa CI" if i == 0 else None)
    ax.set_yticks(range(n), labels[::-1])
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel(d.with_unit(f"difference in {d.label}, arm − baseline", diff=True))
    ax.grid(axis="y", visible=False)
    fig.legend(loc="outside lower center", ncols=4, frameon=False)
    return fig


VERDICT_COLORS = {"better": "#1b7837", "worse": "#b2182b", "equivalent": "#2166ac", "inconclusive": "#636363"}


def forest_figure(rep: Report, cmp: pd.DataFrame):
    """Effects across cells: the mean difference and d_z, each with its interval, coloured by verdict."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    d = rep.disp
    labels = comparison_labels(rep, cmp)
    n = len(cmp)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(FIG_WIDTH, 0.42 * n + 1.3), sharey=True,
                                 gridspec_kw={"width_ratios": [1.4, 1]})
    _margin_band(a1, rep)
    ys = np.arange(n)[::-1]
    s = d.scale
    for y, r in zip(ys, cmp.to_dict("records"), strict=True):
        c = VERDICT_COLORS.get(r["verdict"], "black")
        a1.errorbar(r["estimate"] * s, y, xerr=[[(r["estimate"] - r["ci_low"]) * s], [(r["ci_high"] - r["estimate"]) * s]],
                    fmt="s", color=c, ms=4, capsize=2.5, lw=1.2)
        if np.isfinite(r["boot_ci_low"]):
            a1.plot([r["boot_ci_low"] * s, r["boot_ci_high"] * s], [y - 0.22] * 2, color=c, lw=1, ls=":")
        if np.isfinite(r["d_z"]) and np.isfinite(r["d_z_ci_low"]):
            a2.errorbar(r["d_z"], y, xerr=[[r["d_z"] - r["d_z_ci_low"]], [r["d_z_ci_high"] - r["d_z"]]],
                        fmt="o", color=c, ms=4, capsize=2.5, lw=1.2)
    for ax in (a1, a2):
        ax.axvline(0, color="black", lw=0.8, ls="--")
        ax.grid(axis="y", visible=False)
    a1.set_yticks(ys, labels)
    a1.set_xlabel(d.with_unit("mean difference, arm − baseline", diff=True))
    a2.set_xlabel("d_z (mean / SD of differences, unitless)")
    a1.set_title(f"difference with {rep.level:g}% t CI (dotted: BCa)")
    a2.set_title(f"d_z with {rep.level:g}% CI")
    present = [v for v in VERDICT_COLORS if v in set(cmp["verdict"])]
    handles = [Line2D([], [], color=VERDICT_COLORS[v], marker="s", lw=1.2, label=v) for v in present]
    fig.legend(handles=handles, title="verdict", loc="outside lower center", ncols=len(handles) + 1, frameon=False)
    return fig


def mean_sd_lines(ax, df: pd.DataFrame, x: str, y: str, hue: str, order: Sequence[str], palette: dict) -> None:
    """One line per ``hue`` level: the mean of ``y`` over seeds at each ``x``, with a ± 1 SD band."""
    g = df.groupby([hue, x], observed=True, sort=True)[y].agg(["mean", "std"])
    present = set(g.index.get_level_values(0))
    for arm in order:
        if arm not in present:
            continue
        s = g.xs(arm, level=0)
        xs, m, sd = s.index.to_numpy(float), s["mean"].to_numpy(float), s["std"].fillna(0).to_numpy(float)
        ax.plot(xs, m, color=palette[arm], lw=1.1, label=arm)
        ax.fill_between(xs, m - sd, m + sd, color=palette[arm], alpha=0.2, lw=0)


def learning_curves_figure(rep: Report):
    """Per cell: test metric and training loss per epoch, one line per arm (mean over seeds, band ± 1 SD)."""
    from matplotlib.ticker import MaxNLocator

    curves = rep.res.curves
    cols = ["run_id", "seed", rep.factor, *rep.by]
    cv = curves.merge(rep.runs[cols], on="run_id", how="inner")
    ymetric = rep.metric if rep.metric in cv else "test_acc"
    ydisp = MetricDisplay.of(ymetric)
    cv = cv.assign(**{ymetric: cv[ymetric] * ydisp.scale})
    cl = _cells(rep, cv)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(cl), 2, figsize=(FIG_WIDTH, 1.75 * len(cl) + 0.6), squeeze=False)
    for i, (cell, sub) in enumerate(cl):
        for j, (col, lab) in enumerate(((ymetric, ydisp.with_unit(ydisp.label)),
                                        ("train_loss", "training loss (nats)"))):
            ax = axes[i, j]
            mean_sd_lines(ax, sub, "epoch", col, rep.factor, rep.arms, rep.palette)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(lab)
            ax.set_xlabel("epoch" if i == len(cl) - 1 else "")
            ax.set_title(cell_label(cell))
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, title=f"{rep.factor} (line: mean over seeds; band: ± 1 SD)",
               loc="outside lower center", ncols=len(labels), frameon=False)
    return fig


MOMENTS = ("skew", "exkurt", "frac_zero")
SITES = ("norm_in", "act_out")


def probe_moments(rep: Report) -> pd.DataFrame:
    m = rep.res.moments
    if m.empty or "source" not in m:
        return pd.DataFrame()
    m = m[m["source"] == "probe"]
    cols = ["run_id", "seed", rep.factor, *rep.by]
    return m.merge(rep.runs[cols], on="run_id", how="inner")


def moments_figure(rep: Report, mom: pd.DataFrame, cell: dict[str, Any], sites: Sequence[str] = SITES):
    """One cell: skewness, excess kurtosis and fraction of zeros at each site and layer over training, per arm."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    sub = mom[mom["site"].isin(list(sites))]
    for k, val in cell.items():
        sub = sub[sub[k] == val]
    layers = sorted(sub["layer"].unique())
    sites = [st for st in sites if (sub["site"] == st).any()]
    if not layers or not sites:
        return None
    rows = [(st, mo) for st in sites for mo in MOMENTS]
    # many panels: a fixed layout (in inches) instead of constrained layout, which costs seconds here
    height = 1.05 * len(rows) + 1.35
    fig, axes = plt.subplots(len(rows), len(layers), figsize=(FIG_WIDTH, height), squeeze=False, sharex=True,
                             layout="none")
    _fixed_layout(fig, left=0.85, right=0.1, top=0.5, bottom=0.95, wspace=0.3, hspace=0.22)
    arms = [a for a in rep.arms if (sub[rep.factor] == a).any()]
    for j, layer in enumerate(layers):
        sl = sub[sub["layer"] == layer]
        for i, (st, mo) in enumerate(rows):
            ax = axes[i, j]
            mean_sd_lines(ax, sl[sl["site"] == st], "epoch", mo, rep.factor, arms, rep.palette)
            ax.set_ylabel(f"{st}\n{MOMENT_LABELS[mo]}" if j == 0 else "")
            ax.set_xlabel("epoch (0 = initialization)" if i == len(rows) - 1 else "")
            if i == 0:
                ax.set_title(f"layer {layer}")
            ax.yaxis.set_major_locator(MaxNLocator(nbins=3))
    handles = [Line2D([], [], color=rep.palette[a], lw=1.5, label=a) for a in arms]
    fig.legend(handles=handles, title=f"{rep.factor} (line: mean over seeds; band: ± 1 SD)",
               loc="lower center", bbox_to_anchor=(0.5, 0.0), ncols=len(handles), frameon=False)
    fig.suptitle(cell_label(cell), fontsize=9, fontweight="bold", y=1 - 0.08 / height, va="top")
    return fig


def _fixed_layout(fig, *, left: float, right: float, top: float, bottom: float, wspace: float, hspace: float) -> None:
    """Margins in inches (not fractions), so they do not change with the figure's size."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, right=1 - right / w, top=1 - top / h, bottom=bottom / h,
                        wspace=wspace, hspace=hspace)


def association_frames(rep: Report, moments: Sequence[str] = MOMENTS, site: str = "norm_in"):
    """``stats.paired_association`` (Δmoment vs Δmetric) and ``stats.association`` (per arm), stacked over moments."""
    from . import stats

    m = rep.res.moments
    kw = dict(metric=rep.metric, factor=rep.factor, source="probe", confidence_level=rep.params["confidence_level"],
              nan_policy="omit")
    pa, a = [], []
    for mo in moments:
        pa.append(stats.paired_association(m, rep.runs, moment=mo, site=site, baseline=rep.baseline, drop_unpaired=True, **kw))
        a.append(stats.association(m, rep.runs, moment=mo, site=site, **kw))
    pa = [x for x in pa if not x.empty]
    a = [x for x in a if not x.empty]
    return (pd.concat(pa, ignore_index=True) if pa else pd.DataFrame(),
            pd.concat(a, ignore_index=True) if a else pd.DataFrame())


def association_figure(rep: Report, pa: pd.DataFrame):
    """Forest of the correlation across seeds between Δmoment and Δmetric, one panel per moment."""
    import matplotlib.pyplot as plt

    mos = [mo for mo in MOMENTS if (pa["moment"] == mo).any()]
    fig, axes = plt.subplots(1, len(mos), figsize=(FIG_WIDTH, 0.3 * pa.groupby("moment").size().max() + 1.4),
                             sharey=True, squeeze=False)
    first = pa[pa["moment"] == mos[0]]
    labels = [" · ".join([*(str(r[k]) for k in rep.by), f"{r['arm']} − {r['baseline']}", f"layer {r['layer']}"])
              for r in first.to_dict("records")]
    ys = np.arange(len(labels))[::-1]
    for ax, mo in zip(axes[0], mos, strict=True):
        sub = pa[pa["moment"] == mo].reset_index(drop=True)
        for y, r in zip(ys, sub.to_dict("records"), strict=False):
            c = rep.palette.get(r["arm"], "black")
            if np.isfinite(r["r"]):
                lo = r["r"] - r["ci_low"] if np.isfinite(r["ci_low"]) else 0
                hi = r["ci_high"] - r["r"] if np.isfinite(r["ci_high"]) else 0
                ax.errorbar(r["r"], y, xerr=[[lo], [hi]], fmt="o", color=c, ms=3.5, capsize=2, lw=1)
            else:
                ax.text(0, y, "undefined", ha="center", va="center", fontsize=6.5, color="0.35", style="italic",
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
        ax.axvline(0, color="black", lw=0.8, ls="--")
        ax.set_xlim(-1.05, 1.05)
        ax.set_xticks([-1, -0.5, 0, 0.5, 1], ["−1", "", "0", "", "1"])
        ax.set_xlabel("Pearson r")
        ax.set_title(MOMENT_LABELS[mo])
        ax.grid(axis="y", visible=False)
    axes[0][0].set_yticks(ys, labels)
    return fig


# -------------------------------------------------------------------------------------------------
# Rendering: papermill -> nbconvert HTML -> WeasyPrint PDF

CSS = """
@page { size: A4; margin: 15mm 15mm 16mm 15mm;
        @bottom-center { content: counter(page) " / " counter(pages); font-size: 8pt; color: #555; } }
html { font-family: "DejaVu Sans Condensed", "DejaVu Sans", sans-serif; font-size: 9.5pt; line-height: 1.38;
       color: #111; }
body { margin: 0 auto; max-width: 180mm; padding: 0 4mm; }
h1 { font-size: 17pt; margin: 0 0 4pt 0; }
h2 { font-size: 13pt; margin: 16pt 0 5pt 0; border-bottom: 1px solid #bbb; padding-bottom: 2pt; page-break-after: avoid; }
h3 { font-size: 10.5pt; margin: 10pt 0 4pt 0; page-break-after: avoid; }
p { margin: 4pt 0; }
p.lead { font-size: 10.5pt; color: #333; }
.anchor-link { display: none; }
dl.design { display: grid; grid-template-columns: 32mm auto; gap: 2pt 8pt; margin: 4pt 0; }
dl.design dt { font-weight: bold; } dl.design dd { margin: 0; }
table.bn { border-collapse: collapse; margin: 4pt 0 10pt 0; font-size: 7.8pt; width: 100%; page-break-inside: auto; }
table.bn th { border-top: 1.2px solid #000; border-bottom: 0.8px solid #000; text-align: left; padding: 2pt 3pt;
              vertical-align: bottom; }
table.bn td { padding: 1.6pt 3pt; border-bottom: 0.4px solid #ddd; vertical-align: top; }
table.bn tr:last-child td { border-bottom: 1.2px solid #000; }
table.bn .r { text-align: right; white-space: nowrap; }
table.bn tr { page-break-inside: avoid; }
table.bn.wide { font-size: 7.2pt; }
table.bn .sub { color: #555; font-size: 92%; }
table.prov { border-collapse: collapse; font-size: 7.8pt; width: 100%; }
table.prov th { text-align: left; font-weight: normal; color: #444; padding: 1.2pt 6pt 1.2pt 0; width: 45mm; vertical-align: top; }
table.prov td { overflow-wrap: anywhere; padding: 1.2pt 0; }
pre.config { font-family: inherit; font-size: 6.8pt; line-height: 1.25; white-space: pre-wrap; background: #f6f6f6;
             padding: 4pt; columns: 2; }
.caption, figcaption { font-size: 8.2pt; color: #222; margin: 2pt 0 4pt 0; }
.files { color: #777; font-size: 7pt; }
figure { margin: 8pt 0 12pt 0; page-break-inside: avoid; }
img { max-width: 100%; height: auto; }
ol.cite li, ul.caveats li { margin: 3pt 0; }
p.note { font-size: 8pt; color: #444; }
"""


class _InterpreterKernel:
    """Factory for a jupyter KernelManager that runs ``sys.executable -m ipykernel_launcher``.

    Whatever kernel specs are installed (a user-level ``python3`` may point at another interpreter),
    the notebook runs in this interpreter, the one bnstats is installed in.
    """

    @staticmethod
    def manager_class():
        from jupyter_client.kernelspec import KernelSpec
        from jupyter_client.manager import AsyncKernelManager

        class ThisInterpreterKernelManager(AsyncKernelManager):
            @property
            def kernel_spec(self):
                if self._kernel_spec is None:
                    self._kernel_spec = KernelSpec(
                        # quiet kernel logs (TCP without encryption, interrupt at shutdown); errors reach the notebook
                        argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                              "--IPKernelApp.log_level=CRITICAL"],
                        display_name=f"Python {platform.python_version()} (bnstats)", language="python",
                        resource_dir=str(Path(__file__).parent))
                return self._kernel_spec

        return ThisInterpreterKernelManager


def _sanitize(nb) -> None:
    """Strip what changes from run to run: timestamps, durations, random cell ids, out paths."""
    nb.metadata.pop("widgets", None)
    pm = nb.metadata.get("papermill", {})
    for k in ("start_time", "end_time", "duration", "input_path", "output_path", "environment_variables"):
        pm.pop(k, None)
    if "parameters" in pm:
        pm["parameters"].pop("out", None)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:03d}"
        cell.metadata.pop("execution", None)
        cpm = cell.metadata.get("papermill", {})
        for k in ("start_time", "end_time", "duration", "status"):
            cpm.pop(k, None)
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell["source"] = re.sub(r'(?m)^out = .*$', 'out = "<out>"', cell["source"])


def export_html(nb, title: str) -> str:
    """The executed notebook as one self-contained HTML page, code cells hidden, no scripts."""
    from nbconvert import HTMLExporter

    exp = HTMLExporter(template_name="basic", exclude_input=True, exclude_input_prompt=True,
                       exclude_output_prompt=True, anchor_link_text="")
    body, _ = exp.from_notebook_node(nb)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n"
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def write_pdf(html_text: str, path: Path, base_url: Path) -> None:
    """HTML -> PDF with WeasyPrint (offline; its CSS warnings silenced)."""
    logger = logging.getLogger("weasyprint")
    old = logger.level
    logger.setLevel(logging.ERROR)
    # fontTools (WeasyPrint's font subsetter) stamps the subset fonts with the current time unless
    # SOURCE_DATE_EPOCH is set: fix it, so the same HTML gives the same PDF bytes
    old_epoch = os.environ.get("SOURCE_DATE_EPOCH")
    os.environ["SOURCE_DATE_EPOCH"] = old_epoch or "0"
    try:
        with warnings.catch_warnings():
            # without libharfbuzz-subset, WeasyPrint 63+ warns (DeprecationWarning) and subsets fonts
            # with fontTools instead (slower, same result)
            warnings.filterwarnings("ignore", message="HarfBuzz-Subset", category=DeprecationWarning)
            import weasyprint

            weasyprint.HTML(string=html_text, base_url=str(base_url)).write_pdf(path)
    finally:
        logger.setLevel(old)
        if old_epoch is None:
            os.environ.pop("SOURCE_DATE_EPOCH", None)


def _remove_stale(out: Path) -> None:
    """Remove the tables/figures a previous render listed in its summary.json (and nothing else)."""
    old = out / "summary.json"
    if not old.is_file():
        return
    with contextlib.suppress(json.JSONDecodeError, OSError, KeyError, TypeError):
        for rel in json.loads(old.read_text()).get("files", []):
            p = (out / rel).resolve()
            if p.parent.parent == out.resolve() and p.parent.name in ("tables", "figures") and p.is_file():
                p.unlink()


def render(results: str | os.PathLike = DEFAULT_RESULTS, out: str | os.PathLike | None = None, *,
           parameters: dict[str, Any] | None = None, log: bool = False) -> Path:
    """Execute the report notebook on a sweep and write ``report.{ipynb,html,pdf}``, ``tables/``,
    ``figures/`` and ``summary.json`` into ``out`` (default ``<results>/report``). Returns ``out``.

    Raises ``FileNotFoundError`` (no sweep), ``ValueError``/``TypeError`` (a bad parameter, named) before
    anything runs, and :class:`papermill.PapermillExecutionError` if a cell fails (the executed
    notebook is still written, with the traceback).
    """
    from . import store

    results = Path(results).resolve()
    params = dict(parameters or {})
    for k in ("results", "out"):
        if k in params:
            raise ValueError(f"--set {k}: give the sweep directory and the output folder as arguments, not parameters")
    res = store.load(results)
    check_parameters(params, res.runs, res.factors)
    if not len(res.runs):
        raise ValueError(f"results: {str(results)!r} holds no finished runs yet")
    out = Path(out).resolve() if out else results / "report"
    if out == results or (out / "sweep.json").exists():
        raise ValueError(f"--out: {str(out)!r} is a sweep directory; write the report elsewhere (default: <sweep>/report)")
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)

    import nbformat
    import papermill as pm

    nb_out = out / "report.ipynb"
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Kernel is running over TCP")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        nb = None
        try:
            nb = pm.execute_notebook(str(notebook_path()), str(nb_out),
                                     parameters={**params, "results": str(results), "out": str(out)},
                                     kernel_name="python3", language="python", progress_bar=False,
                                     request_save_on_cell_execute=False,  # write once, not after every cell
                                     cwd=str(out), kernel_manager_class=_InterpreterKernel.manager_class())
        finally:
            if nb is None and nb_out.is_file():  # failed: keep the traceback, without timestamps
                nb = nbformat.read(nb_out, as_version=4)
            if nb is not None:
                _sanitize(nb)
                nbformat.write(nb, nb_out)
    t1 = time.perf_counter()
    summary = json.loads((out / "summary.json").read_text())
    title = summary.get("title", "bnstats report")
    page = export_html(nb, title)
    (out / "report.html").write_text(page)
    t2 = time.perf_counter()
    write_pdf(page, out / "report.pdf", out)
    t3 = time.perf_counter()
    if log:
        print(f"report: notebook {t1 - t0:.1f} s, HTML {t2 - t1:.1f} s, PDF {t3 - t2:.1f} s -> {out}", file=sys.stderr)
    return out


def format_for_reading(df: pd.DataFrame, *, digits: int = 4) -> str:
    """A comparison or plan table as text for the terminal (rounded here only)."""
    shown = df.copy()
    for c in shown.columns:
        if c.startswith("p") and pd.api.types.is_float_dtype(shown[c]) and c in ("p", "p_adj", "p_t", "p_wilcoxon",
                                                                                 "p_signflip", "p_tost"):
            shown[c] = shown[c].map(fmt_p)
        elif pd.api.types.is_float_dtype(shown[c]):
            shown[c] = shown[c].map(lambda x: "n/a" if pd.isna(x) else f"{x:.{digits}g}" if abs(x) >= 1e4 else f"{x:.{digits}f}")
    with pd.option_context("display.width", 250, "display.max_columns", 50, "display.max_colwidth", 60):
        return shown.to_string(index=False)


__all__ = ["PARAMETERS", "MetricDisplay", "Report", "check_parameters", "cite_sentence", "fmt_p", "notebook_path",
           "num", "pairing_certificate", "parse_sets", "render", "store_hash"]
