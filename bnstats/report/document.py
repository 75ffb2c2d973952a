"""The :class:`Report` the notebook's cells share: it reads the store, checks the pairing, writes the
tables and figures it is handed and composes the text blocks (design, headline, How to cite, Methods,
caveats, provenance) as HTML; and what it certifies about its inputs (:func:`pairing_certificate`,
:func:`store_hash`, :func:`software_versions`).
"""

from __future__ import annotations

import functools
import hashlib
import html
import importlib.metadata
import json
import math
import os
import platform
import re
from collections.abc import Iterable, Sequence
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import __version__
from ..cpu import BITWISE_FIELDS
from ..stats import caveat_list
from ..stats.compare import evaluation_runs
from ..stats.decision import DIFFERENCE_VERDICTS
from ..store import git_commit
from .figures import PX_PER_IN, SEEDS_DRAWN_MAX, dense, draw_figures, save_figure
from .rendering import check_parameters, display_path, import_defaults, scrub_paths
from .tables import esc, html_table, tex_table, write_csv
from .text import (
    CROSSED_MUCH_WIDER,
    DECISION_INTERVAL_NAMES,
    MISSING,
    MOMENT_LABELS,
    NBSP,
    P_ADJUST_NAMES,
    P_ADJUST_SHORT,
    MetricDisplay,
    cell_label,
    ci,
    cite_sentence,
    comparison_cells,
    design_caveats,
    fewest_seeds,
    fmt_p,
    grouped_caveats,
    headline_note,
    is_degenerate,
    level_label,
    mean_sd,
    n_test_text,
    num,
    seed_ranges,
    training_text,
)

HASHES = ("init_hash", "order_hash")


def pairing_certificate(runs: pd.DataFrame, factor: str, factors: Sequence[str] | None = None) -> pd.DataFrame:
    """Per seed and every grid factor except ``factor``: do all arms share ``init_hash`` and ``order_hash``?

    Returns one row per group: the group keys, ``n_arms``, ``n_init_hash``, ``n_order_hash``, ``ok``.
    Only the hashes the runs table has are checked (runs imported without them have none); the frame's
    ``attrs["checked"]`` lists them, and a hash not checked has ``n_<hash>`` <NA>. With none checked,
    ``ok`` is vacuously true: what the pairing of such runs rests on is the imported store's
    ``pairing`` record, which the report shows instead.
    A diverged run stops drawing batches after the epoch it diverged in, so its ``order_hash`` covers a
    prefix of the order and cannot equal its arms': its order is left out of ``n_order_hash`` (its
    ``init_hash`` is checked), and ``n_diverged`` counts such runs per group.
    Evaluation runs only (tuning runs, ``stage == "tune"``, are left out: ``stats.evaluation_runs``).
    """
    factors = list(factors if factors is not None else runs.attrs.get("factors", []))
    runs, _ = evaluation_runs(runs)  # a [tune] sweep's tuning runs are not compared: not certified here
    keys = ["seed", *[f for f in factors if f != factor]]
    checked = [h for h in HASHES if h in runs]
    diverged = (runs["diverged"].fillna(False).astype(bool) if "diverged" in runs
                else pd.Series(False, index=runs.index))
    if "order_hash" in checked:  # a prefix of the order: not comparable (nunique skips the NA)
        runs = runs.assign(order_hash=runs["order_hash"].where(~diverged.to_numpy()))
    runs = runs.assign(_diverged=diverged.to_numpy())
    g = runs.groupby(keys, sort=True, observed=True, dropna=False)
    out = g.agg(n_arms=(factor, "nunique"), **{f"n_{h}": (h, "nunique") for h in checked}).reset_index()
    n_div = g["_diverged"].sum().to_numpy().astype(int)
    out["ok"] = np.ones(len(out), dtype=bool)
    for h in HASHES:
        if h in checked:
            # every arm diverged: no order to compare, which is no failure of the pairing
            out["ok"] &= (out[f"n_{h}"] == 1) | ((out[f"n_{h}"] == 0) & (h == "order_hash"))
        else:
            out.insert(len(out.columns) - 1, f"n_{h}", pd.array([pd.NA] * len(out), dtype="Int64"))
    out.insert(len(out.columns) - 1, "n_diverged", n_div)
    out.attrs["checked"] = checked
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def store_hash(runs: pd.DataFrame) -> str:
    """sha256 of the runs table's contents (rows sorted by ``run_id``, columns by name; order-free).

    The hashed text is ``json.dumps(records, sort_keys=True, default=str)`` of the rows as
    ``to_dict("records")`` gives them, floats written by ``repr`` (every digit), other values plain
    (:func:`_plain`). It is written here one column at a time (:func:`_json_column`), the same bytes
    in a tenth of the time: 10^5 runs took 10 s per call (tests/test_report_scale.py checks the equality).
    """
    df = runs.sort_values("run_id", kind="stable")[sorted(runs.columns)]
    cols = []
    for c in df.columns:
        key = json.dumps(str(c))
        cols.append([f"{key}: {frag}" for frag in _json_column(df[c])])
    rows = ("{" + ", ".join(parts) + "}" for parts in zip(*cols, strict=True)) if cols else ()
    return hashlib.sha256(("[" + ", ".join(rows) + "]").encode()).hexdigest()


def _json_column(col: pd.Series) -> list[str]:
    """The JSON of each value of ``col`` as :func:`store_hash` writes it (see there)."""
    if col.dtype == np.float64:  # repr of a float is ASCII: its JSON string needs no escapes
        return [f'"{v!r}"' for v in col.tolist()]
    if col.dtype == np.int64:
        return [str(v) for v in col.tolist()]
    if col.dtype == np.bool_:
        return ["true" if v else "false" for v in col.tolist()]
    if isinstance(col.dtype, pd.StringDtype) and not col.isna().any():
        # json.dumps(str) is encode_basestring_ascii(str); each distinct value encoded once
        codes, uniques = pd.factorize(col)
        enc = [encode_basestring_ascii(u) for u in uniques]
        return [enc[i] for i in codes.tolist()]
    values = [r[col.name] for r in col.to_frame().to_dict("records")]  # to_dict's own boxing of this dtype
    return [json.dumps(repr(v) if isinstance(v, float) else _plain(v), default=str) for v in values]


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


class _HTML:
    """Rich display of an HTML string (what ``IPython.display.HTML`` does, without importing IPython)."""

    def __init__(self, data: str):
        self.data = data

    def _repr_html_(self) -> str:
        return self.data

    def __repr__(self) -> str:
        return f"<HTML {len(self.data)} chars>"


class Report:
    """State shared by the notebook's cells: the parameters, the output folder, figure/table counters.

    ``Report(results, out, **params)`` validates the parameters against the store, loads it, and
    makes ``out/tables`` and ``out/figures``.
    """

    def __init__(self, results: str | os.PathLike, out: str | os.PathLike = "", **params: Any):
        from .. import store
        from ..tune import tune_config_of

        self.res = store.load(results)
        # A [tune] sweep's tuning runs chose the arms' hyperparameters: the report compares, describes,
        # certifies and plots the evaluation runs (self.runs); the tuning section reads self.tune_runs.
        self.runs, tuned = evaluation_runs(self.res.runs)
        self.tune_runs = tuned if tuned is not None else self.res.runs.iloc[:0]
        self.tune = tune_config_of(self.res.meta)
        #: runs imported by ``bnstats import`` (sweep.json has an ``import`` block and no config)
        self.imported = self.res.meta.get("source") == "import"
        #: the sweep's config; empty for an imported store (its runs were trained elsewhere)
        self.config: dict[str, Any] = self.res.meta.get("config") or {}
        params = {**import_defaults(self.res.meta), **params}
        p = check_parameters({**params, "results": str(results), "out": str(out)}, self.runs, self.res.factors)
        #: the store as the report names it: as given when relative, never an absolute path
        self.store_name = display_path(results)
        p["results"] = self.store_name
        self.params = p
        self.results = str(results)
        self.out = Path(out) if out else Path(results) / "report"
        self.metric, self.factor, self.baseline = p["metric"], p["factor"], p["baseline"]
        self.by = [f for f in self.res.factors if f != self.factor]
        self.disp = MetricDisplay.of(self.metric)
        if self.imported and self.disp.scale != 1:
            vals = pd.to_numeric(self.runs[self.metric], errors="coerce")
            if ((vals < 0) | (vals > 1)).any():
                # shown in % and pp, a percentage would read 100 times too large: refuse, with the way out
                raise ValueError(f"metric={self.metric!r}: values outside [0, 1] (from {vals.min():g} to {vals.max():g}) "
                                 "in a metric named like an accuracy; the report shows such a metric as a fraction "
                                 f"in % and pp: import fractions, or a column named otherwise (e.g. {self.metric}_pct) "
                                 "to show it in the source's units")
        self.level = round(100 * float(p["confidence_level"]), 6)
        self.files: list[str] = []
        self._n_fig = 0
        self._n_tab = 0
        for d in ("tables", "figures"):
            (self.out / d).mkdir(parents=True, exist_ok=True)
        arms = [lv for lv in sorted(map(str, self.runs[self.factor].dropna().unique())) if lv != self.baseline]
        order = [str(x) for x in self.config.get("grid", {}).get(self.factor, [])]
        arms.sort(key=lambda a: (order.index(a) if a in order else len(order), a))
        self.arms = [self.baseline, *arms]
        import seaborn as sns

        self.palette = dict(zip(self.arms, sns.color_palette("colorblind", len(self.arms)).as_hex(), strict=True))

    @functools.cached_property
    def store_hash(self) -> str:
        """:func:`store_hash` of every stored run (a [tune] sweep's tuning runs too), computed once (2.5 s at
        10^5 runs)."""
        return store_hash(self.res.runs)

    @functools.cached_property
    def tuning_frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """A [tune] sweep's ``(candidates, choices)`` (:func:`bnstats.report.tuning.frames`), computed once: the
        headline, the tuning section, Methods, caveats and summary.json read them (0.8 s each on the tuned
        reference store). Read, never modified."""
        from . import tuning

        return tuning.frames(self)

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
        write_csv(raw, csv)
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
        return self._figure_html(name, caption, save_figure(fig, self.out / "figures", name))

    def figures(self, jobs: Sequence[tuple[str, str, Any, tuple]]) -> list[_HTML | None]:
        """Build and save several figures; return their HTML in the order of ``jobs`` (None where a
        builder had nothing to plot).

        ``jobs``: ``(name, caption, builder, args)`` with ``builder(report, *args) -> Figure | None``.
        :func:`~bnstats.report.figures.draw_figures` draws them (in forked workers where the platform forks).
        """
        widths = draw_figures(self, [(name, builder, args) for name, _, builder, args in jobs])
        return [None if w is None else self._figure_html(name, caption, w)
                for (name, caption, _, _), w in zip(jobs, widths, strict=True)]

    def cells(self) -> list[dict[str, Any]]:
        """The cells (values of every grid factor except ``factor``), in the order of ``stats.compare``."""
        from ..stats._frames import cells

        return [cell for cell, _ in cells(self.runs, self.by)]

    @staticmethod
    def name(prefix: str, cell: dict[str, Any]) -> str:
        """A file name for a cell's figure: ``moments_cnn_relu``."""
        parts = [prefix, *(str(v) for v in cell.values())]
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join(parts))

    @property
    def title(self) -> str:
        name = self.config.get("name", "sweep")
        if self.imported:
            name = "runs imported from " + Path(display_path(self.res.meta["import"].get("path", "?"))).name
        return self.params["title"] or f"{name}: {self.factor} and {self.disp.label}"

    def headline_table(self, raw: pd.DataFrame, shown: pd.DataFrame, tex: pd.DataFrame, cmp: pd.DataFrame):
        d = self.disp
        u = f" ({d.unit})" if d.unit else ""
        du = f" ({d.diff_unit})" if d.diff_unit else ""
        cap = (f"Headline: one row per comparison (cell × arm vs. {esc(self.baseline)}). Baseline and arm: mean ± SD "
               f"over seeds{u}"
               + (f", under it the {esc(', '.join(self.tune.keys))} the arm trained with, chosen on the validation "
                  "set (Hyperparameters tuned per arm)" if self.tune.enabled else "")
               + f". Δ: mean of the per-seed differences arm − baseline{du}. d_z: mean / SD of the "
               "differences, with its noncentral-t interval. p: the comparison's own test (the paired t-test; the "
               "exact sign-flip test where every seed's difference is equal, which leaves the t interval undefined). "
               + esc(self.headline_note(cmp)))
        # right-aligned columns do not wrap (CSS): the interval columns stay left-aligned so their headers wrap
        lvl = f"{self.level:g}%"
        wrap = (*self.by, self.factor, "verdict", d.with_unit(f"{lvl} decision interval", True),
                d.with_unit(f"{lvl} CI per comparison", True))
        right = [c for c in shown.columns if c not in wrap]
        tex_right = [c for c in tex.columns if c not in (*self.by, self.factor, "verdict")]
        return self.table("headline", raw, shown, tex=tex, caption=cap, right=right, tex_right=tex_right, cls="wide")

    def headline_note(self, cmp: pd.DataFrame) -> str:
        """The headline's footnote: what decides the verdict, which interval is which, what the family is."""
        return headline_note(p_adjust=self.params["p_adjust"], family_size=_family_size(cmp),
                             confidence_level=self.params["confidence_level"], margin=self.params["margin"] is not None)

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
            head = (f"{esc(lab[0].upper() + lab[1:])}{f' ({d.unit})' if d.unit else ''} per arm, one panel per cell "
                    f"({esc(cells)}). ")
            if not dense(self):
                return head + "Grey lines join the arms of one seed (the pairing); large dots: arm means."
            return head + (f"Shaded: the density of the metric over all seeds of each arm (kernel density). Grey lines "
                           f"join the arms of one seed (the pairing) for {SEEDS_DRAWN_MAX} seeds drawn at random "
                           f"(seed {self.params['rng']}) in each panel with more; every seed in the others. Large dots: "
                           "arm means over all seeds.")
        if kind == "differences":
            if not dense(self):
                return (f"Per-seed differences arm − baseline in {esc(lab)}{du}, one row per comparison; small dots: "
                        f"seeds. Black: mean with its {lvl} paired t interval; purple bar: {lvl} BCa bootstrap interval; "
                        f"dashed line: no difference.{margin}")
            return (f"Per-seed differences arm − baseline in {esc(lab)}{du}, one row per comparison; shaded: their "
                    f"density over all seeds (kernel density; a comparison of at most {SEEDS_DRAWN_MAX} seeds shows "
                    f"each seed as a small dot). Black: mean with its {lvl} paired t interval; purple bar: {lvl} BCa "
                    f"bootstrap interval, both over all seeds; dashed line: no difference.{margin}")
        if kind == "forest":
            return (f"Effects across cells. Left: mean difference{du} with its {lvl} paired t interval (dotted: BCa). "
                    f"Right: d_z with its {lvl} noncentral-t interval. Colour: verdict.{margin}")
        if kind == "learning_curves":
            if self.imported:
                return (f"Learning curves per cell: {esc(self.metric)} per step as the source logged it (its column "
                        f"{esc(repr(self.metric))}), per arm; line: mean over seeds; band: ± 1 SD across seeds"
                        + (f", clipped to [0, {num(d.scale, 0)}]{' ' + d.unit if d.unit else ''}."
                           if self.metric.endswith("acc") or self.metric.endswith("accuracy") else "."))
            rng = (f"{esc(lab)} to [0, {num(d.scale, 0)}]{' ' + d.unit if d.unit else ''}"
                   if self.metric.endswith("acc") else f"{esc(lab)} to its range")
            return ("Learning curves per cell: test-set metric and training loss (mean cross-entropy) per epoch, per arm; "
                    f"line: mean over seeds; band: ± 1 SD across seeds, clipped to the quantity's range ({rng}, "
                    "loss to ≥ 0).")
        if kind == "moments":
            probe = self.config.get("moments", {}).get("probe_size", "?")
            moments = list(self.params["moments"])
            names = [MOMENT_LABELS[m] + (" (0 for a Gaussian)" if m == "exkurt" else "") for m in moments]
            named = ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1]
            clipped = [t for m, t in (("frac_zero", "fraction of zeros to [0, 1]"), ("exkurt", "excess kurtosis to ≥ −2"),
                                      ("var", "variance to ≥ 0")) if m in moments]
            clip = f", clipped to the quantity's range ({', '.join(clipped)})" if clipped else ""
            return (f"Activation moments per layer over training, {esc(cell_label(kw['cell']))}: channel-mean "
                    f"{named} at <b>norm_in</b> "
                    "(the input of the norm: the linear output when placement = before, the activation's output when "
                    "after) and <b>act_out</b> (the activation's output), on the fixed probe batch "
                    f"({probe} test inputs, eval mode) at initialization (epoch 0) and after each epoch. Line: mean "
                    f"over seeds; band: ± 1 SD{clip}. placement = none has no norm_in.")
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

    # --- beyond the headline: interactions with the other factors, seed variance ---------------------
    def interactions(self) -> pd.DataFrame:
        """:func:`~bnstats.report.factorial.interaction_table` on this store; empty when no other grid
        factor has two levels (a one-factor grid has no interaction to estimate)."""
        from .factorial import interaction_table, other_factors

        if not other_factors(self.runs, self.res.factors, self.factor):
            return pd.DataFrame()
        return interaction_table(self.runs, metric=self.metric, factor=self.factor, baseline=self.baseline,
                                 factors=self.res.factors, levels=self.config.get("grid", {}),
                                 confidence_level=self.params["confidence_level"], p_adjust=self.params["p_adjust"])

    def seed_variance(self) -> pd.DataFrame:
        """:func:`~bnstats.report.factorial.seed_variance_table` per cell and arm (Pitman–Morgan)."""
        from .factorial import seed_variance_table

        return seed_variance_table(self.runs, metric=self.metric, factor=self.factor, baseline=self.baseline,
                                   by=self.by, arms=self.arms[1:], confidence_level=self.params["confidence_level"],
                                   p_adjust=self.params["p_adjust"])

    @staticmethod
    def _fit_note(row: dict[str, Any]) -> str:
        if not math.isfinite(row["estimate"]):
            return "failed"
        if not row["converged"]:
            return "not converged"
        return "seed var. 0" if "boundary of the parameter space" in row["warnings"] else "ok"

    def interaction_block(self, table: pd.DataFrame):
        """The interaction table (``tables/interactions.csv``, ``.tex``), or None for a one-factor grid."""
        if table.empty:
            return None
        d = self.disp
        s, dg = d.scale, d.digits
        cell_cols = [c for c in table.columns[: list(table.columns).index("factor")]]
        lvl = f"{self.level:g}%"
        shown, tex = [], []
        for r in table.to_dict("records"):
            cell = cell_label({k: r[k] for k in cell_cols if r[k] != ""})
            common = {"cell": cell, "contrast": f"{r['arm']} − {r['baseline']}",
                      "changes with": f"{r['other']}: {r['level']} vs {r['reference']}"}
            shown.append({**common, d.with_unit("Δ of Δ", True): num(r["estimate"] * s, dg, sign=True),
                          d.with_unit(f"{lvl} CI", True): ci(r["ci_low"] * s, r["ci_high"] * s, dg),
                          "p": fmt_p(r["p"]), "p_adj": fmt_p(r["p_adj"]), "seeds": str(r["n_seeds"]),
                          "fit": self._fit_note(r)})
            tex.append({**common,
                        d.with_unit(r"$\Delta$ of $\Delta$", True): num(r["estimate"] * s, dg, sign=True, style="tex"),
                        f"{lvl} CI": ci(r["ci_low"] * s, r["ci_high"] * s, dg, "tex"),
                        "$p$": fmt_p(r["p"], "tex"), r"$p_\mathrm{adj}$": fmt_p(r["p_adj"], "tex"),
                        "seeds": str(r["n_seeds"]), "fit": self._fit_note(r)})
        shown_df, tex_df = pd.DataFrame(shown), pd.DataFrame(tex)
        n_models = len(table.drop_duplicates([*cell_cols, "other"]))
        cap = (f"Interactions: does the difference arm − {esc(self.baseline)} in {esc(d.label)} change with the level "
               f"of another factor? One linear mixed model per other factor and cell ({n_models} model"
               f"{'s' if n_models != 1 else ''}): "
               f"{esc(self.metric)} ~ {esc(self.factor)} × other factor, random intercept per seed (REML; stats.mixed; "
               "runs with a non-finite metric left out). Δ of Δ: the arm − baseline difference at the level minus "
               f"the same difference at the reference level{f' ({d.diff_unit})' if d.diff_unit else ''}, with its "
               f"{lvl} Wald interval (anti-conservative with few seeds: the paired t of the headline stays primary); "
               f"p: Wald; p_adj: {P_ADJUST_NAMES[self.params['p_adjust']]} over the {len(table)} rows. Fit: ok; "
               "seed var. 0 (the seed variance was estimated on its boundary, 0: the runs of a seed do not move "
               "together, and the model is that of independent runs); not converged; failed.")
        right = [c for c in shown_df.columns if c not in ("cell", "contrast", "changes with", "fit")]
        tex_right = [c for c in tex_df.columns if c not in ("cell", "contrast", "changes with", "fit")]
        return self.table("interactions", table, shown_df, tex=tex_df, caption=cap, right=right, tex_right=tex_right)

    def variance_block(self, table: pd.DataFrame):
        """The seed-variance table (``tables/seed_variance.csv``, ``.tex``), or None if it is empty."""
        if table.empty:
            return None
        d = self.disp
        s, dg = d.scale, d.digits
        lvl = f"{self.level:g}%"
        shown, tex = [], []
        for r in table.to_dict("records"):
            cells = {k: r[k] for k in self.by}
            shown.append({**cells, self.factor: r["arm"], "n": str(r["n"]),
                          d.with_unit(f"SD {r['baseline']}"): num(r["sd_baseline"] * s, dg),
                          d.with_unit("SD arm"): num(r["sd_arm"] * s, dg),
                          "var ratio": num(r["ratio"], 2), f"{lvl} CI": ci(r["ci_low"], r["ci_high"], 2),
                          "p": fmt_p(r["p"]), "p_adj": fmt_p(r["p_adj"])})
            tex.append({**cells, self.factor: r["arm"], "n": str(r["n"]),
                        d.with_unit(f"SD {r['baseline']}"): num(r["sd_baseline"] * s, dg, style="tex"),
                        d.with_unit("SD arm"): num(r["sd_arm"] * s, dg, style="tex"),
                        "var ratio": num(r["ratio"], 2, style="tex"),
                        f"{lvl} CI": ci(r["ci_low"], r["ci_high"], 2, "tex"),
                        "$p$": fmt_p(r["p"], "tex"), r"$p_\mathrm{adj}$": fmt_p(r["p_adj"], "tex")})
        shown_df, tex_df = pd.DataFrame(shown), pd.DataFrame(tex)
        cap = (f"Seed variance: does an arm change how much {esc(d.label)} varies over seeds? SD over seeds of the "
               f"baseline and the arm{f' ({d.unit})' if d.unit else ''} on the n seed pairs, the variance ratio "
               f"var(arm) / var({esc(self.baseline)}) with Pitman's {lvl} interval, and the Pitman–Morgan test (the "
               "t-test of corr(arm − baseline, arm + baseline), paired on seed; stats.variance_ratio). A ratio above 1: "
               f"the arm is more sensitive to the seed. p_adj: {P_ADJUST_NAMES[self.params['p_adjust']]} over the "
               f"{len(table)} rows.")
        right = [c for c in shown_df.columns if c not in (*self.by, self.factor)]
        tex_right = [c for c in tex_df.columns if c not in (*self.by, self.factor)]
        return self.table("seed_variance", table, shown_df, tex=tex_df, caption=cap, right=right, tex_right=tex_right)

    # --- text blocks ------------------------------------------------------------------------------
    def title_block(self) -> _HTML:
        desc = self.config.get("description", "")
        return _HTML(f"<h1>{esc(self.title)}</h1>" + (f'<p class="lead">{esc(desc)}</p>' if desc else ""))

    def design_block(self, cert: pd.DataFrame) -> _HTML:
        """The question and the design: what was compared, on what, how it was trained (or where the runs
        were imported from, with the mapping), the pairing certificate, the runs and the store."""
        cfg, runs = self.config, self.runs
        tr, md = cfg.get("train", {}), cfg.get("model", {})
        grid = cfg.get("grid", {})
        seeds = _seeds(runs)
        items = [
            ("Question", f"Does {esc(self.disp.label)} differ between the levels of <b>{esc(self.factor)}</b>? "
                         f"Every arm is compared with the baseline <b>{esc(self.baseline)}</b> "
                         f"({esc(level_label(self.factor, self.baseline))}); a difference is arm − baseline, "
                         "paired on seed" + (f", within each cell ({esc(', '.join(self.by))} held fixed)." if self.by
                                             else ".")),
        ]
        if self.imported:
            items += self._import_items()
        else:
            datasets = [scrub_paths(d) for d in _uniq(runs, "dataset")]
            items.append(("Dataset", esc(", ".join(datasets) or scrub_paths(cfg.get("dataset", "?")))
                          + (f" (data hash {esc(', '.join(_uniq(runs, 'data_hash')))})" if "data_hash" in runs else "")))
        for f in self.res.factors:
            levels = [scrub_paths(x) for x in (self.arms if f == self.factor else grid.get(f, _uniq(runs, f)))]
            items.append((f, esc(", ".join(levels))))
        items.append(("Seeds", f"{len(seeds)}: " + esc(seed_ranges(seeds) if _all_int(seeds) else ", ".join(map(str, seeds)))))
        if not self.imported:
            fixed = {k: v for k, v in md.items() if k not in grid}
            items.append(("Training", esc(training_text(tr, grid, self.tune.candidates))))
            model = [f"{k} = {'arch default' if k in ('width', 'depth') and v == 0 else v}" for k, v in fixed.items()
                     if k in ("norm", "affine", "width", "depth", "kernel_size", "dropout")]
            if "arch" in runs and "n_params" in runs:
                sizes = runs.groupby("arch", sort=True)["n_params"].agg(["min", "max"])
                model.append("parameters: " + ", ".join(
                    f"{scrub_paths(a)} {lo:,}" + (f"–{hi:,}" if hi != lo else "") for a, (lo, hi) in sizes.iterrows()))
            items.append(("Model", esc("; ".join(model))))
        items.append(("Pairing certificate", self._pairing_text(cert)))
        n_runs = len(runs)
        n_div = int(runs["diverged"].fillna(False).astype(bool).sum()) if "diverged" in runs else 0
        items.append(("Runs", f"{n_runs} imported" if self.imported else f"{n_runs} stored, {n_div} diverged"))
        prov = self.provenance()
        store = (f"{esc(prov['store'])} (sha256 of its runs table {esc(prov['store_hash'][:16])}…; "
                 "in full with the software, commits and CPU kernels under Provenance)")
        if prov["warnings"]:
            store += "".join(f'<br/><span class="warning">Warning: {esc(w)}</span>' for w in prov["warnings"])
        items.append(("Store", store))
        return _HTML('<dl class="design">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>")

    def _import_items(self) -> list[tuple[str, str]]:
        """Design items of an imported store: the source (kind, file, sha256) and the mapping."""
        imp = self.res.meta["import"]
        m = imp.get("mapping", {})
        kind = imp.get("kind", "?")
        n_files = len(imp.get("files", []))
        source = (f"{esc(SOURCE_KINDS.get(kind, kind))} <b>{esc(display_path(imp.get('path', '?')))}</b>"
                  + (f" ({n_files} files)" if n_files > 1 else "")
                  + f", sha256 {esc(imp.get('sha256', '?'))}; imported by <code>bnstats import</code>"
                  + (f" (bnstats {esc(imp['bnstats_version'])})" if imp.get("bnstats_version") else "")
                  + ": the runs were trained outside bnstats, so their training is not recorded here.")

        def col(v: Any) -> str:
            return esc(repr(v)) if v is not None else "not mapped"

        metrics = m.get("metric") or []
        mapping = [f"seed = {col(m.get('seed'))}", f"factor (arms) = {col(m.get('factor'))}",
                   "metric = " + (", ".join(col(x) for x in metrics) or "none"),
                   "by (cells) = " + (", ".join(col(x) for x in m.get("by") or []) or "none"),
                   f"baseline = {col(m.get('baseline'))}",
                   f"init_hash = {col(m.get('init_hash'))}", f"order_hash = {col(m.get('order_hash'))}"]
        items = [("Source", source), ("Mapping", "; ".join(mapping)),
                 ("Units", esc(f"{self.metric}: " + imp.get("metric_units", "as given in the source")))]
        notes = imp.get("notes") or []
        if notes:
            items.append(("Import notes", "<br/>".join(esc(n) for n in notes)))
        return items

    def _pairing_text(self, cert: pd.DataFrame) -> str:
        """The pairing certificate: the hashes of a sweep, or what an import verified and what it did not."""
        if self.imported:
            pairing = self.res.meta.get("pairing", {})
            ver = pairing.get("verified") or []
            not_ver = pairing.get("not_verified") or []
            text = ("<b>verified</b>: " + ("; ".join(esc(v) for v in ver) if ver else "nothing")
                    + ". <br/><b>not verified</b>: " + ("; ".join(esc(v) for v in not_ver) if not_ver else "nothing")
                    + ".")
            if not_ver:
                text += (" The comparison is paired on seed regardless; a difference between arms may include "
                         "differences in what was not verified.")
            return text
        bad = cert[~cert["ok"]]
        n_div = int(cert["n_diverged"].sum())
        # A diverged run stops drawing batches: its order_hash covers a prefix and is not compared (its init is).
        diverged = (f" {n_div} {'run' if n_div == 1 else 'runs'} diverged and stopped drawing batches: for "
                    f"{'it' if n_div == 1 else 'them'} only init_hash is compared (an order_hash covers the batches "
                    "drawn until divergence)." if n_div else "")
        if bad.empty:
            return (f"<b>yes</b>: in each of the {len(cert)} groups of runs with the same seed and the same "
                    f"{esc(', '.join(self.by)) or 'settings'}, all arms share init_hash (initial weights) and "
                    f"order_hash (batch order).{diverged}")
        return (f"<b>no</b>: {len(bad)} of {len(cert)} groups have arms with different init_hash or order_hash; "
                f"seeds {esc(', '.join(map(str, sorted(bad['seed'].unique()))))}.{diverged}")

    def absent(self, kind: str) -> _HTML:
        """One line saying why a figure is not in the report (``"moments"``, ``"association"``,
        ``"learning_curves"``)."""
        source = SOURCE_KINDS.get(self.res.meta.get("import", {}).get("kind", ""), "a source outside bnstats")
        if kind in ("moments", "association"):
            if self.imported:
                why = (f"the runs were imported from {source} (bnstats import); sources outside bnstats hold no "
                       "activation moments, which bnstats records while it trains")
            elif kind == "association" and self.res.count("moments"):
                why = (f"no arm has moments at the norm_in site paired with the baseline {self.baseline!r} "
                       "(final epoch, probe batch)")
            elif not self.config.get("moments", {}).get("enabled", True):
                why = "the sweep ran with moments.enabled = false"
            else:
                why = "the store holds no moments recorded on the probe batch"
            what = ("No moment figures" if kind == "moments"
                    else f"No moment–{self.disp.label} association")
            return _HTML(f'<p class="absent">{esc(what)}: {esc(why)}.</p>')
        if kind == "learning_curves":
            if self.imported and not self.res.count("curves"):
                why = f"the source ({source}) holds one value per run, no values per step"
            elif self.imported:
                why = f"the source's values per step do not include the metric {self.metric!r}"
            else:
                why = "the store holds no learning curves"
            return _HTML(f'<p class="absent">No learning curves: {esc(why)}.</p>')
        raise ValueError(f"absent: unknown kind {kind!r}; expected 'moments', 'association' or 'learning_curves'")

    def has_curves(self) -> bool:
        """Whether there are learning curves to draw: a sweep's (per epoch), or an import's per-step values
        of the metric."""
        have = self.res.columns("curves")  # read without the rows: 10^5 runs hold 3 M of them
        if not (self.metric in have if self.imported else "epoch" in have):
            return False
        return self.res.count("curves") > 0

    def headline(self, cmp: pd.DataFrame, desc: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """(raw, shown, tex): the headline table, one row per comparison.

        The verdict stands beside the interval that agrees with it (the decision interval) and the
        adjusted p; the per-comparison paired t and BCa intervals come after, labelled as such.
        """
        d = self.disp
        s = d.scale
        key = [*self.by, "arm"]
        st = desc.set_index(key)
        raw_rows, shown, tex = [], [], []
        lvl = f"{self.level:g}%"
        margin = self.params["margin"] is not None
        chosen = self._chosen_values()
        for r in cmp.to_dict("records"):
            cell = tuple(r[k] for k in self.by)
            a = st.loc[(*cell, r["baseline"])] if self.by else st.loc[r["baseline"]]
            b = st.loc[(*cell, r["arm"])] if self.by else st.loc[r["arm"]]
            # a [tune] sweep: each arm's own values beside its mean (what it trained with)
            va, vb = chosen.get((*cell, r["baseline"]), ""), chosen.get((*cell, r["arm"]), "")
            tuned = {"tuned_baseline": va, "tuned_arm": vb} if chosen else {}
            raw_rows.append({**{k: r[k] for k in self.by}, "arm": r["arm"], "baseline": r["baseline"], **tuned, "n": r["n"],
                             "mean_baseline": a["mean"], "sd_baseline": a["sd"], "mean_arm": b["mean"], "sd_arm": b["sd"],
                             "estimate": r["estimate"], "verdict": r["verdict"],
                             "ci_low_decision": r["ci_low_decision"], "ci_high_decision": r["ci_high_decision"],
                             "decision_interval_method": r["decision_interval_method"], "p_adj": r["p_adj"],
                             "p_tost_adj": r["p_tost_adj"], "family_size": r["family_size"],
                             "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                             "boot_ci_low": r["boot_ci_low"], "boot_ci_high": r["boot_ci_high"], "d_z": r["d_z"],
                             "d_z_ci_low": r["d_z_ci_low"], "d_z_ci_high": r["d_z_ci_high"], "t": r["t"], "df": r["df"],
                             "p": r["p"], "method": r["method"], "p_tost": r["p_tost"],
                             "ci_low_simultaneous": r["ci_low_simultaneous"],
                             "ci_high_simultaneous": r["ci_high_simultaneous"],
                             "simultaneous_method": r["simultaneous_method"], "n_nonzero": r["n_nonzero"],
                             "differences": r["differences"], "n_diverged": r["n_diverged"], "scale": s})
            cells = {k: r[k] for k in self.by}
            c = comparison_cells(r, d)
            # the page: multi-line cells keep the table within A4 width. The verdict, then its decision interval
            # over the adjusted p(s); the per-comparison t interval with its p over BCa; d_z over its interval.
            decision = [c["decision"]]
            if r["verdict"] != "not estimable":
                decision.append(f"p_adj {c['p_adj']}" + (f"\np_tost_adj {c['p_tost_adj']}" if margin else ""))
            if r["verdict"] == "not estimable":
                per = MISSING
            elif is_degenerate(r):
                per = f"t: {c['t_ci']}\nexact sign-flip p {fmt_p(r['p'])}"
            else:
                per = f"t: {c['t_ci']}, p {c['p']}\nBCa: {c['boot_ci']}"
            shown.append({
                **cells, self.factor: r["arm"], "n": str(r["n"]),
                d.with_unit(str(r["baseline"])): mean_sd(a["mean"], a["sd"], d) + (f"\n{va}" if va else ""),
                d.with_unit("arm"): mean_sd(b["mean"], b["sd"], d) + (f"\n{vb}" if vb else ""),
                d.with_unit("Δ", True): c["delta"], "verdict": c["verdict"],
                d.with_unit(f"{lvl} decision interval", True): "\n".join(decision),
                d.with_unit(f"{lvl} CI per comparison", True): per,
                f"d_z ({lvl} CI)": f"{c['d_z']}\n{c['d_z_ci']}" if r["verdict"] != "not estimable" else MISSING,
            })
            # the .tex file: one number per column
            t = comparison_cells(r, d, style="tex")
            trow = {
                **cells, self.factor: r["arm"], "n": str(r["n"]),
                d.with_unit(str(r["baseline"])): mean_sd(a["mean"], a["sd"], d, style="tex") + (f" ({va})" if va else ""),
                d.with_unit("arm"): mean_sd(b["mean"], b["sd"], d, style="tex") + (f" ({vb})" if vb else ""),
                d.with_unit(r"$\Delta$", True): t["delta"], "verdict": t["verdict"],
                d.with_unit(f"{lvl} decision interval", True): t["decision"],
                r"$p_\mathrm{adj}$": t["p_adj"],
            }
            if margin:
                trow[r"$p_\mathrm{TOST,adj}$"] = t["p_tost_adj"]
            trow.update({
                f"{lvl} CI (t)": t["t_ci"], f"{lvl} CI (BCa)": t["boot_ci"], "$d_z$": t["d_z"],
                f"$d_z$ {lvl} CI".replace("%", r"\%"): t["d_z_ci"], "$p$": t["p"],
            })
            tex.append(trow)
        return pd.DataFrame(raw_rows), pd.DataFrame(shown), pd.DataFrame(tex)

    def _chosen_values(self) -> dict[tuple, str]:
        """A [tune] sweep's chosen values per arm, ``{(*cell, arm): "lr = 0.1"}`` (recomputed from the stored
        tuning runs, as the tuning section shows them); empty for a sweep without [tune]."""
        if not self.tune.enabled:
            return {}
        from . import tuning

        _, choices = self.tuning_frames
        return {(*(r[k] for k in self.by), r[self.factor]): tuning._values_text(self.tune, r)
                for r in choices.to_dict("records")}

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

    def summary(self, cmp: pd.DataFrame, raw_headline: pd.DataFrame, cert: pd.DataFrame, sentences: list[str],
                crossed: pd.DataFrame | None = None) -> dict:
        """Every number of the headline table, unrounded, in the metric's units (``scale`` converts).

        Caveats are lists: each comparison's own (``caveats``), and the report's (``caveats`` at the top:
        the design's, then the test set's). ``headline_note`` is the headline's footnote; ``test_set``
        holds :func:`bnstats.stats.compare_crossed`'s rows (every number unrounded), or None where the
        runs store no per-example results.
        """
        p = self.params
        comps = []
        cols = [c for c in raw_headline.columns if c != "scale"]
        for (_, h), (_, c), sent in zip(raw_headline.iterrows(), cmp.iterrows(), sentences, strict=True):
            row = {k: _plain(h[k]) for k in cols}
            row.update({"ci_method": c["method"], "boot_method": c["boot_method"], "confidence_level": _plain(c["confidence_level"]),
                        "p_adjust_method": c["p_adjust_method"], "effect_size_name": c["effect_size_name"],
                        "margin_low": _plain(c["margin_low"]), "margin_high": _plain(c["margin_high"]),
                        "caveats": caveat_list(c["caveats"]), "sentence": sent})
            comps.append(row)
        params = {k: v for k, v in p.items() if k not in ("out",)}
        pairing = {"ok": bool(cert["ok"].all()),
                   "failing_seeds": sorted(_plain(s) for s in cert.loc[~cert["ok"], "seed"].unique()),
                   "checked": list(cert.attrs.get("checked", HASHES))}
        if self.imported:
            pairing.update({k: list(self.res.meta.get("pairing", {}).get(k, [])) for k in ("verified", "not_verified")})
        return {
            "title": self.title, "bnstats_version": __version__, "store": self.store_name,
            "store_hash": self.store_hash, "parameters": params,
            "metric": self.metric, "factor": self.factor, "baseline": self.baseline, "by": self.by,
            "display": {"scale": self.disp.scale, "unit": self.disp.unit, "diff_unit": self.disp.diff_unit,
                        "label": self.disp.label},
            "design": self.design_summary(cert),
            "pairing_certificate": pairing,
            "comparisons": comps,
            "provenance": self.provenance(),
            "headline_note": self.headline_note(cmp),
            "caveats": [*self.design_caveats(cmp, crossed), *self.test_set_caveats(cmp, crossed)],
            "test_set": None if crossed is None else [
                {k: (caveat_list(v) if k == "caveats" else _plain(v)) for k, v in r.items()}
                for r in self.test_set_raw(crossed).to_dict("records")],
        }

    def design_summary(self, cert: pd.DataFrame) -> dict[str, Any]:
        """The design in numbers (``summary.json``'s ``design``): runs, seeds, factor levels, diverged runs,
        groups of the pairing certificate, dataset(s) and training protocol (None for imported runs)."""
        runs, cfg = self.runs, self.config
        grid = cfg.get("grid", {})
        n_div = int(runs["diverged"].fillna(False).astype(bool).sum()) if "diverged" in runs else 0
        return {
            "imported": self.imported, "n_runs": len(runs), "n_seeds": len(_seeds(runs)),
            "factors": {f: [scrub_paths(x) for x in grid.get(f, _uniq(runs, f))] for f in self.res.factors},
            "n_diverged": n_div, "pairing_groups": len(cert),
            "dataset": [scrub_paths(d) for d in _uniq(runs, "dataset")],
            "training": None if self.imported else training_text(cfg.get("train", {}), grid, self.tune.candidates),
        }

    def write_summary(self, summary: dict) -> None:
        summary = {**summary, "files": sorted([*self.files, "summary.json"])}
        path = self.out / "summary.json"
        path.write_text(json.dumps(summary, indent=2, sort_keys=False, allow_nan=False) + "\n")

    def cite_block(self, cmp: pd.DataFrame) -> tuple[_HTML, list[str]]:
        sentences = [cite_sentence(r, by=self.by) for r in cmp.to_dict("records")]
        # no line break inside "t(9) = 4.10" and the like (the sentences themselves keep plain spaces)
        items = "".join(f"<li>{esc(s).replace(' = ', NBSP + '=' + NBSP)}</li>" for s in sentences)
        p = self.params
        m = _family_size(cmp)
        note = (f"Each claim follows the verdict, the decision for the family of {m} comparison{'s' if m != 1 else ''}: "
                f"the adjusted p ({P_ADJUST_NAMES[p['p_adjust']]}) and, for a difference, the {self.level:g}% decision "
                f"interval ({DECISION_INTERVAL_NAMES[p['p_adjust']]}; an end at 0 is open). The numbers after "
                f"'per comparison' are the comparison's own: its {self.level:g}% paired t interval and two-sided "
                "paired t-test (the exact sign-flip test where every difference is equal), not adjusted. d_z is the "
                "mean difference divided by the SD of the differences. These intervals are over seeds, for this test "
                "set; see 'The test set' for new data. Cite the sweep by its store hash (Provenance).")
        return _HTML(f'<ol class="cite">{items}</ol><p class="note">{esc(note)}</p>'), sentences

    def methods_block(self, cmp: pd.DataFrame, interactions: pd.DataFrame | None = None,
                      variance: pd.DataFrame | None = None, crossed: pd.DataFrame | None = None) -> _HTML:
        p = self.params
        cfg = self.config
        n_min, n_max = int(cmp["n"].min()), int(cmp["n"].max())
        n_txt = f"{n_min}" if n_min == n_max else f"{n_min} to {n_max}"
        wil = ", ".join(sorted(set(cmp["wilcoxon_method"]) - {"none"}) or ["not run"])
        flip = ", ".join(sorted(set(cmp["signflip_method"]) - {"none"}) or ["not run"])
        v = software_versions()
        torch_v = ", ".join(_uniq(self.runs, "torch_version")) or "not recorded"
        lvl = f"{self.level:g}%"
        alpha = f"{1 - float(p['confidence_level']):.6g}"
        margin = p["margin"]
        if self.imported:  # trained elsewhere: say where they come from, and what their pairing rests on
            src = self.provenance()["source"]
            first = (f"We analysed {len(self.runs)} runs trained outside bnstats and imported from "
                     f"{esc(SOURCE_KINDS.get(src['kind'], src['kind']))} ({esc(src['path'])}, sha256 "
                     f"{esc(str(src['sha256'])[:16])}…), with arms {esc(self.factor)} and cells "
                     f"{esc(', '.join(self.by)) or 'none'}; each comparison is paired on seed (what the pairing "
                     "was verified on is stated in the design).")
        else:
            first = (f"We trained {len(self.runs)} runs ({esc(scrub_paths(cfg.get('dataset', '')))}; "
                     f"{esc(training_text(cfg.get('train', {}), cfg.get('grid', {}), self.tune.candidates))}) "
                     f"on a grid of {esc(', '.join(self.res.factors))}, replicated over seeds; all arms of a seed share "
                     "their initial weights (where shapes agree) and their data order, so each comparison is paired on seed.")
        m = _family_size(cmp)
        parts = [
            first,
            f"For each cell ({esc(', '.join(self.by)) or 'one cell'}) and each arm of {esc(self.factor)} we computed the "
            f"per-seed difference in {esc(self.disp.label)} (arm − {esc(self.baseline)}; n = {n_txt} seeds per comparison) "
            f"and report its mean with a {lvl} paired t interval and a {lvl} BCa bootstrap interval "
            f"({p['n_resamples']} resamples; Efron 1987), the two-sided paired t-test, the standardized effect "
            f"d_z = mean / SD of the differences with a noncentral-t interval (Steiger & Fouladi 1997), "
            f"the Wilcoxon signed-rank test ({esc(wil)}; zeros dropped) and a sign-flip permutation test ({esc(flip)}).",
        ]
        sources = set(cmp["differences"]) if "differences" in cmp else set()
        if sources == {"counts"}:
            parts.append("Accuracy differences are computed from the integer counts of correct test examples, so "
                         "equal differences are exact ties.")
        elif sources == {"counts recovered from the metric"}:
            parts.append("Accuracy differences are computed from integer counts of correct test examples, recovered "
                         "from the stored accuracies and test-set size, so equal differences are exact ties.")
        if (cmp["method"].astype(str).str.startswith("sign-flip")).any():
            parts.append("Where every seed's difference is equal, the t-test, its interval, BCa and d_z are undefined; "
                         "such a comparison is decided by the exact sign-flip test instead.")
        parts.append(
            f"The verdicts are decisions for the family of {m} comparison{'s' if m != 1 else ''}: each comparison's p "
            f"(the paired t-test's, or the sign-flip test's where it decides) is adjusted by "
            f"{P_ADJUST_NAMES[p['p_adjust']]}, and a comparison is better or worse when the adjusted p is below "
            f"{alpha}.")
        if margin is not None:
            lo, hi = (-margin, margin) if not isinstance(margin, list | tuple) else margin
            s, u = self.disp.scale, self.disp.diff_unit
            parts.append(f"Equivalence within ({num(lo * s, 2)}, {num(hi * s, 2)}) {u} is tested by two one-sided "
                         f"paired t-tests (TOST; Schuirmann 1987) whose p-values are adjusted the same way: a comparison "
                         "is equivalent when the adjusted TOST p is below the level and no difference is decided, and "
                         "'better (or worse), within margin' when both are decided.")
        parts.append("Otherwise it is inconclusive: no detectable difference.")
        parts.append(
            f"Beside each verdict the headline shows the interval that agrees with it: the {lvl} "
            f"{DECISION_INTERVAL_NAMES[p['p_adjust']]}, which excludes 0 exactly when the verdict is better or worse. "
            f"The paired t and BCa intervals are per comparison ({lvl} each, not adjusted).")
        if crossed is not None and len(crossed):
            parts.append(
                "For the test set's own uncertainty, the per-example results of every run give an interval over seeds "
                "and test examples: a two-way crossed random-effects analysis of variance of the per-seed, per-example "
                "differences with a Satterthwaite t interval (Searle, Casella & McCulloch 1992; Bouthillier et al. "
                f"2021), with Owen's (2007) pigeonhole bootstrap beside it ({p['n_resamples']} resamples).")
        if interactions is not None and len(interactions):
            parts.append(f"Whether a difference changes with another grid factor was estimated by a linear mixed model "
                         f"per other factor and cell, {esc(self.metric)} ~ {esc(self.factor)} × factor with a random "
                         "intercept per seed, fitted by REML (statsmodels MixedLM; Laird & Ware 1982); its interaction "
                         f"coefficients are reported with {lvl} Wald intervals, adjusted over the "
                         f"{len(interactions)} coefficients by {P_ADJUST_NAMES[p['p_adjust']]}.")
        if variance is not None and len(variance):
            parts.append(f"Whether an arm changes the spread over seeds was tested by the Pitman–Morgan test of the paired "
                         f"variance ratio, with Pitman's {lvl} interval (Pitman 1939; Morgan 1939), adjusted over the "
                         f"{len(variance)} comparisons by {P_ADJUST_NAMES[p['p_adjust']]}.")
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

    def factorial_caveats(self, interactions: pd.DataFrame | None, variance: pd.DataFrame | None) -> list[str]:
        """Caveats of the interaction and seed-variance tables, for :meth:`caveats_block`'s ``extra``."""
        out = []
        if interactions is not None and len(interactions):
            notes = [self._fit_note(r) for r in interactions.to_dict("records")]
            bad = sorted({n for n in notes if n != "ok"})
            if bad:
                out.append(f"Interaction models: {', '.join(f'{notes.count(n)} of {len(notes)} rows {n}' for n in bad)} "
                           "(statsmodels' messages in tables/interactions.csv).")
            n_min = int(interactions["n_seeds"].min())
            if n_min < 15:
                out.append(f"Interaction intervals are Wald intervals from {n_min} seeds: too narrow at this n.")
        if variance is not None and len(variance):
            texts = sorted({c for cell in variance["caveats"] for c in caveat_list(cell)})
            out.extend(f"Seed variance: {t}." for t in texts)
        return out

    # --- caveats ----------------------------------------------------------------------------------
    def design_caveats(self, cmp: pd.DataFrame, crossed: pd.DataFrame | None = None) -> list[str]:
        """The design's limits, from the config and the runs (:func:`~bnstats.report.text.design_caveats`)."""
        return design_caveats(self.runs, config=None if self.imported else self.config, metric=self.metric,
                              factor=self.factor, by=self.by, n_seeds=fewest_seeds(cmp),
                              diverged=self.params["diverged"], crossed=crossed is not None and len(crossed) > 0,
                              tuned=bool(self.tune.enabled) or len(self.tune_runs) > 0)

    def caveats_block(self, cmp: pd.DataFrame, desc: pd.DataFrame, cert: pd.DataFrame, extra: Sequence[str] = (),
                      crossed: pd.DataFrame | None = None) -> _HTML:
        """The caveats, one per item: the design's, the pairing's, the test set's, each comparison's (once, with
        where it applies), then ``extra``."""
        items = [f"{c}." for c in self.design_caveats(cmp, crossed)]
        if not int(desc["n_diverged"].sum()):
            items.append("No run diverged.")
        if not cert["ok"].all():
            bad = sorted(cert.loc[~cert["ok"], "seed"].unique())
            items.append(f"Pairing certificate fails for seed(s) {', '.join(map(str, bad))}: their arms did not share "
                         "initial weights or data order; the comparison is paired on seed regardless.")
        items += [f"{c}." for c in self.test_set_caveats(cmp, crossed)]
        items += [f"{c}." for c in grouped_caveats(cmp, self.by)]
        items.extend(extra)
        items.append("Correlations between moments and accuracy across seeds are descriptive, not causal.")
        return _HTML('<ul class="caveats">' + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>")

    # --- tuning (a sweep with [tune]: bnstats/report/tuning.py) ---------------------------------------
    def tuning_block(self) -> list[Any]:
        """The tuning section beside the headline: the values chosen per arm, the validation metric per
        candidate (figure), tables ``tuned`` and ``tuning``. Nothing for a sweep without [tune]."""
        from . import tuning

        return tuning.block(self) if self.tune.enabled else []

    def tuning_methods(self) -> list[_HTML]:
        """The Methods paragraph stating the tuning protocol and its budget per arm (none without [tune])."""
        from . import tuning

        if not self.tune.enabled:
            return []
        return [_HTML('<p class="methods">' + esc(tuning.methods_text(self, self.tuning_frames[1])) + "</p>")]

    def tuning_caveats(self) -> list[str]:
        """Caveats of the tuning (a choice at the edge of its grid, ...): ``caveats_block(extra=...)``."""
        from . import tuning

        if not self.tune.enabled:
            return []
        cand, choices = self.tuning_frames
        return tuning.caveats(self, choices, cand)

    def tuning_summary(self) -> dict[str, Any]:
        """``{"tuning": ...}`` for ``summary.json`` (empty without [tune], so such reports keep their bytes)."""
        from . import tuning

        return tuning.summary(self) if self.tune.enabled else {}

    # --- the test set's uncertainty (seeds and test examples) -------------------------------------
    def test_set(self) -> pd.DataFrame | None:
        """:func:`bnstats.stats.compare_crossed` for the report's comparisons, or None where the runs store no
        per-example results for the metric (``test_correct_bits``)."""
        from .. import stats
        from ..stats.crossed import BITS_COLUMNS

        cols = BITS_COLUMNS.get(self.metric)
        if cols is None or cols[0] not in self.runs.columns or not self.runs[cols[0]].notna().any():
            return None
        p = self.params
        return stats.compare_crossed(self.runs, metric=self.metric, factor=self.factor, baseline=self.baseline,
                                     p_adjust=p["p_adjust"], confidence_level=p["confidence_level"],
                                     n_resamples=p["n_resamples"], rng=p["rng"], diverged=p["diverged"])

    def test_set_raw(self, crossed: pd.DataFrame) -> pd.DataFrame:
        """``crossed`` with the width ratio (crossed / seeds-only interval) and the variance shares of Δ."""
        out = crossed.copy()
        with np.errstate(invalid="ignore", divide="ignore"):
            out["width_ratio"] = ((out["ci_high"] - out["ci_low"]) / (out["ci_high_seeds"] - out["ci_low_seeds"])).astype(float)
            var = out["se"] ** 2
            s, e = out["n_seeds"].astype(float), out["n_examples"].astype(float)
            out["share_seed"] = out["var_seed"] / s / var
            out["share_example"] = out["var_example"] / e / var
            out["share_interaction"] = out["var_interaction"] / (s * e) / var
        return out

    def test_set_block(self, crossed: pd.DataFrame | None, cmp: pd.DataFrame) -> _HTML:
        """The table of intervals over seeds and test examples beside the seeds-only ones, and what they say."""
        d = self.disp
        s, dg = d.scale, d.digits
        lvl = f"{self.level:g}%"
        size = n_test_text(self.runs)
        if crossed is None or not len(crossed):
            return _HTML(f'<p class="note">Per-example results (test_correct_bits) are not stored with these runs, so '
                         f"the test set's own uncertainty cannot be shown here: every interval in this report covers "
                         f"the training randomness over seeds on this one test set{esc(size)}, and holds for it only."
                         "</p>")
        raw = self.test_set_raw(crossed)
        new, this = f"{lvl} CI, seeds + test examples: new data", f"{lvl} CI, seeds only: this test set"
        shares_col = "variance of Δ from seeds / examples / interaction"
        p_col = f"p_adj ({P_ADJUST_SHORT[self.params['p_adjust']]}), new data"
        shown, tex = [], []
        for r in raw.to_dict("records"):
            ok = r["method"] != "not estimable"
            shares = (" / ".join(f"{100 * r[k]:.0f}%" for k in ("share_seed", "share_example", "share_interaction"))
                      if ok and np.isfinite(r["share_example"]) else MISSING)
            ratio = f"{r['width_ratio']:.2f}×" if ok and np.isfinite(r["width_ratio"]) else MISSING
            dims = f"{r['n_seeds']} × {int(r['n_examples']):,}" if ok else f"{r['n_seeds']} × {MISSING}"
            cells = {k: r[k] for k in self.by}

            def whole(text: str) -> str:  # the page: an interval or a set of shares never breaks across lines
                return text.replace(" ", NBSP)

            shown.append({
                **cells, self.factor: r["arm"], "seeds × test examples": whole(dims),
                d.with_unit("Δ", True): num(r["estimate"] * s, dg, sign=True) if ok else MISSING,
                d.with_unit(new, True): (whole(f"t: {ci(r['ci_low'] * s, r['ci_high'] * s, dg)}") + "\n"
                                         + whole(f"pigeonhole: {ci(r['boot_ci_low'] * s, r['boot_ci_high'] * s, dg)}"))
                if ok else MISSING,
                d.with_unit(this, True): whole(ci(r["ci_low_seeds"] * s, r["ci_high_seeds"] * s, dg)) if ok else MISSING,
                "width ratio": ratio, shares_col: whole(shares), p_col: fmt_p(r["p_adj"]) if ok else MISSING,
            })
            tex.append({
                **cells, self.factor: r["arm"], "seeds": str(r["n_seeds"]),
                "examples": str(int(r["n_examples"])) if ok else MISSING,
                d.with_unit(r"$\Delta$", True): num(r["estimate"] * s, dg, sign=True, style="tex") if ok else MISSING,
                d.with_unit(f"{lvl} CI, new data (t)", True):
                    ci(r["ci_low"] * s, r["ci_high"] * s, dg, "tex") if ok else MISSING,
                d.with_unit(f"{lvl} CI, new data (pigeonhole)", True):
                    ci(r["boot_ci_low"] * s, r["boot_ci_high"] * s, dg, "tex") if ok else MISSING,
                d.with_unit(f"{lvl} CI, this test set", True):
                    ci(r["ci_low_seeds"] * s, r["ci_high_seeds"] * s, dg, "tex") if ok else MISSING,
                "width ratio": f"{r['width_ratio']:.2f}" if ratio != MISSING else MISSING,
                "variance shares (seed/example/interaction)": shares, r"$p_\mathrm{adj}$, new data": (
                    fmt_p(r["p_adj"], "tex") if ok else MISSING),
            })
        shown = pd.DataFrame(shown)
        cap = (f"The test set's uncertainty, one row per comparison{esc(' (test set' + size + ')') if size else ''}. "
               f"Seeds + test examples: the {lvl} interval for a new draw of seeds <i>and</i> of test examples from the "
               "same distribution (two-way crossed random-effects ANOVA with a Satterthwaite t; Owen's pigeonhole "
               "bootstrap below it): it generalises to new data. Seeds only: the training randomness with this test "
               "set held fixed (the headline's paired t interval): it holds for this test set only. Width ratio: "
               "crossed / seeds-only width. Variance of Δ: the shares of the variance of the mean difference that "
               "come from seed-to-seed variation, from example-to-example variation, and from their interaction. "
               "p_adj: the crossed test's p adjusted over the comparisons, for new data.")
        right = [d.with_unit("Δ", True), "width ratio"]  # right-aligned headers do not wrap (CSS): the others do
        tex = pd.DataFrame(tex)
        table_html = self.table("test_set", raw, shown, tex=tex, caption=cap, right=right, cls="wide",
                                tex_right=[c for c in tex.columns if c not in (*self.by, self.factor)])
        return _HTML(table_html.data + f'<p class="note">{esc(self.test_set_sentence(raw, cmp))}</p>')

    def test_set_sentence(self, raw: pd.DataFrame, cmp: pd.DataFrame) -> str:
        """One paragraph: which interval generalises, how much wider it is, and which verdicts survive it."""
        lvl = f"{self.level:g}%"
        ok = raw[(raw["method"] != "not estimable") & np.isfinite(raw["width_ratio"])]
        text = ("The seeds-only interval (the headline's) holds for this test set only; the interval over seeds and "
                "test examples is the one that generalises to new data from the same distribution.")
        if len(ok):
            lo, hi, med = ok["width_ratio"].min(), ok["width_ratio"].max(), ok["width_ratio"].median()
            sh_lo, sh_hi = 100 * ok["share_example"].min(), 100 * ok["share_example"].max()
            span = f"{lo:.2f}×" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}× to {hi:.2f}× (median {med:.2f}×)"
            shares = f"{sh_lo:.0f}%" if f"{sh_lo:.0f}" == f"{sh_hi:.0f}" else f"{sh_lo:.0f}% to {sh_hi:.0f}%"
            text += (f" Here it is {span} as wide as the seeds-only {lvl} interval; sampling the test examples "
                     f"contributes {shares} of the variance of the mean difference.")
        lost = self._verdicts_lost(raw, cmp)
        decided = int(cmp["verdict"].isin(DIFFERENCE_VERDICTS).sum())
        if decided and not lost:
            text += (f" Every difference verdict ({decided}) stays decided over seeds and test examples "
                     f"(adjusted p below {1 - float(self.params['confidence_level']):.6g}).")
        elif lost:
            text += (f" {len(lost)} of the {decided} difference verdicts do not ({'; '.join(lost)}): those differences "
                     "are shown for these test examples, not for new data.")
        return text

    def _verdicts_lost(self, raw: pd.DataFrame, cmp: pd.DataFrame) -> list[str]:
        """Comparisons the family calls better/worse whose crossed adjusted p does not reach the level."""
        alpha = 1 - float(self.params["confidence_level"])
        key = [*self.by, "arm"]
        crossed_p = {tuple(r[k] for k in key): r["p_adj"] for r in raw.to_dict("records")}
        lost = []
        for r in cmp.to_dict("records"):
            if r["verdict"] not in DIFFERENCE_VERDICTS:
                continue
            p = crossed_p.get(tuple(r[k] for k in key), math.nan)
            if not (p < alpha):
                lost.append(", ".join([*(str(r[k]) for k in self.by), f"{r['arm']} − {r['baseline']}"]))
        return lost

    def test_set_caveats(self, cmp: pd.DataFrame, crossed: pd.DataFrame | None) -> list[str]:
        """Caveats of the test-set section: a crossed interval much wider than the seeds-only one, verdicts that
        do not hold for new data, and the crossed analysis' own caveats."""
        if crossed is None or not len(crossed):
            return []
        raw = self.test_set_raw(crossed)
        out = []
        wide = raw[np.isfinite(raw["width_ratio"]) & (raw["width_ratio"] >= CROSSED_MUCH_WIDER)]
        if len(wide):
            where = "; ".join(f"{', '.join([*(str(r[k]) for k in self.by), str(r['arm'])])}: {r['width_ratio']:.2f}×"
                              for r in wide.to_dict("records"))
            out.append(f"The fixed test set hides uncertainty: over seeds and test examples the interval is at least "
                       f"{CROSSED_MUCH_WIDER:g}× as wide as over seeds alone ({where}); a claim about new data should "
                       "use the wider interval (section 'The test set')")
        lost = self._verdicts_lost(raw, cmp)
        if lost:
            out.append(f"{len(lost)} difference verdict(s) hold for this test set only: over seeds and test examples "
                       f"the adjusted p does not reach the level ({'; '.join(lost)})")
        out += [f"Test-set interval: {c}" for c in grouped_caveats(crossed, self.by)]
        return out

    # --- provenance -------------------------------------------------------------------------------
    def provenance(self) -> dict[str, Any]:
        """What the numbers rest on, as plain data (``summary.json``'s ``provenance``; the appendix shows it).

        ``store`` (as the report names it, never an absolute path) and ``store_hash`` (sha256 of its runs
        table); the git commits of the runs and of the code rendering this report; ``bits``: per field
        that decides a run's floating-point results (torch version, device, CPU kernels: see
        :mod:`bnstats.cpu`), each distinct value with its number of runs, and ``bitwise_fields``, those
        that must match for a bitwise reproduction; ``model_factories`` and ``user_datasets``: each
        distinct user model factory (its spec, the sha256 of its source file, the git commit of its
        repository) and user dataset; ``warnings``: trees with uncommitted changes; ``source``: for an
        imported store, what it was imported from.
        """
        if getattr(self, "_provenance", None) is not None:
            return self._provenance
        runs = self.res.runs  # every stored run: a [tune] sweep's tuning runs chose its values, so they count here
        report_commit = git_commit()
        out: dict[str, Any] = {
            "store": self.store_name, "store_hash": self.store_hash, "runs": len(runs),
            "git_commit_runs": _uniq(runs, "git_commit"), "git_commit_report": report_commit or None,
            "bits": {f: _counts(runs, f) for f in BITS_FIELDS if f in runs},
            "bitwise_fields": ["torch_version", *BITWISE_FIELDS],
            "model_factories": _distinct(runs, {"spec": "arch", "sha256": "model_sha256",
                                                "git_commit": "model_git_commit"}, need="model_sha256"),
            "user_datasets": _distinct(runs, {"dataset": "dataset", "sha256": "dataset_sha256",
                                              "git_commit": "dataset_git_commit"}, need="dataset_sha256"),
        }
        warnings = []
        dirty = runs["git_commit"].astype(str).str.endswith("-dirty") if "git_commit" in runs else pd.Series([], dtype=bool)
        if dirty.any():
            commits = ", ".join(c for c in out["git_commit_runs"] if c.endswith("-dirty"))
            warnings.append(f"{int(dirty.sum())} of {len(runs)} runs were trained by bnstats from a source tree with "
                            f"uncommitted changes (git commit {commits}): the code that trained them is that commit "
                            "plus changes that were not recorded.")
        if report_commit.endswith("-dirty"):
            warnings.append(f"This report was rendered by bnstats from a source tree with uncommitted changes "
                            f"(git commit {report_commit}): render it from a clean commit before citing it.")
        for what, rows, key in (("model factory", out["model_factories"], "spec"),
                                ("dataset loader", out["user_datasets"], "dataset")):
            for r in rows:
                if str(r["git_commit"] or "").endswith("-dirty"):
                    warnings.append(f"The repository of the {what} {r[key]} had uncommitted changes when its "
                                    f"{r['runs']} runs trained (git commit {r['git_commit']}); the sha256 of its "
                                    f"file ({r['sha256'][:16]}…) is recorded, its repository's other files are not.")
        out["warnings"] = warnings
        if self.imported:
            imp = self.res.meta["import"]
            out["source"] = {"kind": imp.get("kind"), "path": display_path(imp.get("path", "?")),
                             "sha256": imp.get("sha256"), "files": len(imp.get("files", [])),
                             "mapping": imp.get("mapping"), "pairing": self.res.meta.get("pairing")}
        self._provenance = out
        return out

    def provenance_caveats(self) -> list[str]:
        """Caveats from provenance, for the caveats list: trees with uncommitted changes, what the pairing of
        imported runs was not verified for, and runs computed with different settings of what decides their bits."""
        items = list(self.provenance()["warnings"])
        not_verified = self.res.meta.get("pairing", {}).get("not_verified") or [] if self.imported else []
        if not_verified:
            what = "; ".join(x.split(":")[0] for x in not_verified)
            items.append(f"The pairing of these imported runs was not verified for: {what} (see the design's pairing "
                         "certificate); arms of a seed may differ in it, and their paired differences include that.")
        runs = self.runs
        fields = [f for f in ("torch_version", *BITWISE_FIELDS) if f in runs]
        if not fields or len(runs) == 0:
            return items
        setting = runs[fields].astype("string").fillna("not recorded").agg(" | ".join, axis=1)
        n = setting.nunique()
        if n > 1:
            groups = setting.groupby([runs[k] for k in ["seed", *self.by]], sort=False, dropna=False).nunique()
            mixed = int((groups > 1).sum())
            text = (f"The runs were computed with {n} different settings of what decides their bits "
                    f"({', '.join(fields)}; see Provenance): a run reproduces bitwise only under its own setting")
            if mixed:
                text += (f"; in {mixed} of {len(groups)} seed × cell groups the arms themselves were computed "
                         "differently, so those paired differences include the kernels' numerical differences")
            else:
                text += "; within every seed and cell the arms share one setting, so the pairing is unaffected"
            items.append(text + ".")
        return items

    def provenance_block(self, cert: pd.DataFrame) -> _HTML:
        """The appendix: store, commits, software, what decides the bits, user code and data, the config."""
        runs = self.runs
        prov = self.provenance()
        v = software_versions()
        seeds = _seeds(runs)
        parts = []
        if prov["warnings"]:
            parts.append('<div class="warning"><b>Warning</b><ul>'
                         + "".join(f"<li>{esc(w)}</li>" for w in prov["warnings"]) + "</ul></div>")
        if self.imported:
            commits_runs = "not recorded (imported runs, trained outside bnstats)"
        else:
            commits_runs = ", ".join(prov["git_commit_runs"]) or "not recorded"
        rows = [
            ("store", prov["store"]),
            ("store hash (sha256 of the runs table)", prov["store_hash"]),
            ("runs", str(len(runs))),
            ("seeds", _seeds_text(seeds) if _all_int(seeds) else ", ".join(map(str, seeds))),
            ("git commit of the runs", commits_runs),
            ("git commit of this report", prov["git_commit_report"] or "not a git checkout"),
        ]
        trained = [f"{c.removesuffix('_version')} {'/'.join(_uniq(runs, c))}"
                   for c in sorted(c for c in runs.columns if c.endswith("_version"))]
        if trained:
            rows.append(("software (training)", ", ".join(trained)))
        rows.append(("software (this report)", ", ".join(f"{k} {val}" for k, val in v.items())))
        rows.append(("report parameters", json.dumps({k: x for k, x in self.params.items() if k != "out"}, sort_keys=True)))
        parts.append(_prov_table(rows))
        parts.append("<h3>What decides the bits</h3>" + self._bits_html())
        code = self._code_html()
        if code:
            parts.append("<h3>User code and data</h3>" + code)
        if self.imported:
            record = {k: x for k, x in self.res.meta["import"].items() if k not in ("files", "columns")}
            record["files"] = [f"{f['path']} {f['sha256']}" for f in self.res.meta["import"].get("files", [])]
            record["columns"] = len(self.res.meta["import"].get("columns", []))
            record["pairing"] = self.res.meta.get("pairing", {})
            title, flat = "Import record (sweep.json)", _flatten(record)
        else:
            title, flat = "Sweep configuration (sweep.json)", _flatten(self.config)
        config = "\n".join(f"{k} = {_seeds_text(v) if k == 'seeds' and _many_seeds(v) else scrub_paths(json.dumps(v))}"
                           for k, v in flat)
        parts.append(f'<h3>{title}</h3><pre class="config">{esc(config)}</pre>')
        return _HTML("".join(parts))

    def _bits_html(self) -> str:
        runs, prov = self.runs, self.provenance()
        must = set(prov["bitwise_fields"]) | {"device"}
        rows = []
        for f in BITS_FIELDS:
            counts = prov["bits"].get(f)
            shown = ("; ".join(f"{val} ({n} run{'s' if n != 1 else ''})" for val, n in counts.items()) if counts
                     else "not recorded" + (" (imported runs)" if self.imported else " (runs stored before bnstats recorded it)"))
            rows.append({"field": f, "values (runs)": shown, "must match for a bitwise reproduction":
                         "yes" if f in must else "no (sets the three fields below it)" if f == "cpu_isa" else "no"})
        note = ("A run reproduces bit for bit only where every field marked yes is the same: the same torch "
                "version on the same kind of device and, on a CPU, the same CPU kernels (cpu_capability: PyTorch's "
                "own; onednn_max_isa: convolutions; mkl_branch: matrix products) and thread count "
                "(bnstats.cpu.BITWISE_FIELDS). cpu_isa = avx2, bnstats' default, pins the kernels so that every "
                "x86-64 CPU computes alike; native uses each CPU's best. Runs that differ in any of these fields, "
                "and runs on GPUs, agree only to a tolerance.")
        if not len(runs) or not any(f in runs for f in BITWISE_FIELDS):
            note += " The kernels of these runs were not recorded, so a bitwise reproduction cannot be checked."
        return html_table(pd.DataFrame(rows), cls="prov-bits") + f'<p class="note">{esc(note)}</p>'

    def _code_html(self) -> str:
        prov = self.provenance()
        rows = ([{"what": "model factory", "spec": scrub_paths(r["spec"]), "sha256": r["sha256"],
                  "git commit": r["git_commit"] or "not in a git repository", "runs": r["runs"]}
                 for r in prov["model_factories"]]
                + [{"what": "dataset", "spec": scrub_paths(r["dataset"]), "sha256": r["sha256"],
                    "git commit": r["git_commit"] or "not in a git repository", "runs": r["runs"]}
                   for r in prov["user_datasets"]])
        if not rows:
            return ""
        note = ("The results depend on this code and data: a model factory's sha256 is that of its source file "
                "(its git commit that of the file's repository, if any); a dataset file's sha256 is that of the "
                "file, a dataset loader's that of its source file.")
        return html_table(pd.DataFrame(rows), cls="prov-code") + f'<p class="note">{esc(note)}</p>'


SOURCE_KINDS = {"csv": "a CSV file", "wandb_csv": "a W&B runs table (CSV export)", "parquet": "a Parquet file",
                "jsonl": "a JSON lines file", "wandb": "W&B run folders", "tensorboard": "TensorBoard event files"}
#: Run-row fields that decide a run's floating-point results (bnstats.cpu.state, torch's version, the device).
BITS_FIELDS = ("torch_version", "device", "cpu_isa", *BITWISE_FIELDS)


def _prov_table(rows: list[tuple[str, str]]) -> str:
    return '<table class="prov">' + "".join(f"<tr><th>{esc(k)}</th><td>{esc(x)}</td></tr>" for k, x in rows) + "</table>"


def _counts(runs: pd.DataFrame, col: str) -> dict[str, int]:
    """Distinct values of a column (a missing value: "not recorded") with their numbers of runs, by value."""
    s = runs[col].astype("string").fillna("not recorded")
    return {str(k): int(n) for k, n in sorted(s.value_counts(sort=False).items(), key=lambda kv: str(kv[0]))}


def _distinct(runs: pd.DataFrame, cols: dict[str, str], *, need: str) -> list[dict[str, Any]]:
    """Distinct combinations of ``cols`` (name -> column) over the runs where ``need`` is recorded, with counts."""
    if need not in runs:
        return []
    have = runs[runs[need].astype("string").fillna("").str.len() > 0]
    if not len(have):
        return []
    present = {k: c for k, c in cols.items() if c in have}
    # specs may name files by absolute paths (a factory given as /src/net.py:build): shown without them
    frame = have[list(present.values())].astype("string").fillna("").map(scrub_paths)
    out = []
    for key, n in frame.value_counts(sort=False).sort_index().items():
        key = key if isinstance(key, tuple) else (key,)
        row = {k: str(v) for k, v in zip(present, key, strict=True)}
        out.append({**{k: row.get(k, "") for k in cols}, "runs": int(n)})
    return out


def _seeds(runs: pd.DataFrame) -> list[Any]:
    """The seeds, sorted: integers where they are (an imported seed may be any text)."""
    vals = [_plain(s) for s in runs["seed"].dropna().unique()]
    return sorted(vals) if _all_int(vals) else sorted(vals, key=str)


def _all_int(vals: Sequence[Any]) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in vals)


SEEDS_LISTED_MAX = 30  # seeds the provenance lists one by one; more are written as ranges


def _seeds_text(seeds: Sequence[int]) -> str:
    """Up to :data:`SEEDS_LISTED_MAX` seeds as a JSON list; more as their count and ranges ("5556 seeds:
    0–5555"), the first 20 ranges where even those are many. (A list of 10^4 seeds in one table cell takes
    WeasyPrint more than 6 minutes to lay out; the full list is in the runs table and sweep.json.)"""
    seeds = sorted(int(x) for x in seeds)
    if len(seeds) <= SEEDS_LISTED_MAX:
        return json.dumps(seeds)[1:-1] if seeds else ""
    ranges = seed_ranges(seeds).split(", ")
    shown = ", ".join(ranges[:20]) + (f", … ({len(ranges) - 20} more ranges)" if len(ranges) > 20 else "")
    return f"{len(seeds)} seeds: {shown}"


def _many_seeds(v: Any) -> bool:
    return isinstance(v, list) and len(v) > SEEDS_LISTED_MAX and all(isinstance(x, int) for x in v)


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


def _family_size(cmp: pd.DataFrame) -> int:
    """m, the number of comparisons in the family (estimable rows), as compare() records it."""
    if "family_size" in cmp and len(cmp):
        return int(cmp["family_size"].iloc[0])
    return int((cmp["verdict"] != "not estimable").sum())
