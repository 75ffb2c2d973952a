"""Figures (seaborn / matplotlib; every axis has its unit, every figure a legend), their files and the
forked processes that draw them.

A figure function takes the :class:`~bnstats.report.document.Report` (``rep``: runs, parameters,
arms, palette) and the frames it plots, and returns a matplotlib ``Figure`` (or None: nothing to plot).
:func:`save_figure` writes it as PNG and PDF whose bytes depend only on the figure;
:func:`draw_figures` runs several builders in forked workers.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .text import MOMENT_LABELS, MetricDisplay, cell_label

if TYPE_CHECKING:
    from .document import Report

FIG_WIDTH = 7.0      # inches: the text width of an A4 page with 15 mm margins
FIG_DPI = 150       # PNG resolution (the PDF figures are vector)
PX_PER_IN = 96       # CSS pixels per inch: figures are shown at their physical size


def _save_png_rgb(fig, path: Path) -> None:
    """The figure as an opaque RGB PNG at ``FIG_DPI``: no alpha channel (WeasyPrint would split it off
    and re-encode it), no metadata (no software stamp), so the bytes depend only on the figure."""
    from PIL import Image

    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    Image.fromarray(np.ascontiguousarray(rgba[..., :3])).save(path, format="PNG")


def save_figure(fig, folder: Path, name: str) -> float:
    """Write ``<folder>/<name>.png`` and ``.pdf`` (no dates, no software stamps); return the width in inches."""
    import matplotlib.pyplot as plt

    png = folder / f"{name}.png"
    pdf = folder / f"{name}.pdf"
    fig.set_dpi(FIG_DPI)  # text extents (hinting) depend on dpi: lay out at the dpi of the PNG
    if fig.get_layout_engine() is not None:  # lay out once, not once per file
        fig.draw_without_rendering()
        fig.set_layout_engine("none")
    _save_png_rgb(fig, png)
    fig.savefig(pdf, metadata={"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None})
    w_in = float(fig.get_size_inches()[0])
    plt.close(fig)
    return w_in


FIGURE_WORKERS = 2  # processes drawing figures (BNSTATS_REPORT_WORKERS overrides; 1 = draw in the kernel)
_FIGURE_JOBS: list = []


def _figure_job(i: int) -> float | None:
    """Worker: build figure ``i`` of :func:`draw_figures` (inherited through fork) and save it."""
    rep, builder, args, name = _FIGURE_JOBS[i]
    fig = builder(rep, *args)
    return None if fig is None else save_figure(fig, rep.out / "figures", name)


def draw_figures(rep: Report, jobs: Sequence[tuple[str, Callable[..., Any], tuple]]) -> list[float | None]:
    """Build and save several figures; return their widths in inches in the order of ``jobs`` (None where
    a builder had nothing to plot).

    ``jobs``: ``(name, builder, args)`` with ``builder(rep, *args) -> Figure | None``, saved by
    :func:`save_figure` into ``rep.out / "figures"``. Figures are independent, so they are drawn in
    :data:`FIGURE_WORKERS` forked worker processes where the platform forks (drawing dominates the
    report's time); each file's bytes do not depend on where it was drawn. The jobs reach the workers
    through fork (a module global), not through pickling: only ``_figure_job`` and an index are sent.
    """
    global _FIGURE_JOBS
    _FIGURE_JOBS = [(rep, builder, args, name) for name, builder, args in jobs]
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
    return widths


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
    from ..stats._frames import cells

    return list(cells(frame, rep.by))


#: Above this many seeds in a panel, the seed plots draw densities (and a stated random subsample of
#: seeds as lines) instead of one line or dot per seed: 10^4 overlapping lines are a grey block. Every
#: summary statistic drawn (arm means, intervals) is computed on all seeds whatever the count.
SEEDS_DRAWN_MAX = 200


def dense(rep: Report) -> bool:
    """Whether some comparison has more than :data:`SEEDS_DRAWN_MAX` seeds (densities are drawn)."""
    if not len(rep.runs):
        return False
    return bool(rep.runs.groupby([*rep.by, rep.factor], observed=True, dropna=False)["seed"].nunique().max()
                > SEEDS_DRAWN_MAX)


def _seed_subsample(rep: Report, seeds: np.ndarray) -> np.ndarray:
    """:data:`SEEDS_DRAWN_MAX` of ``seeds`` drawn at random, from the report's ``rng`` (the same store and
    parameters draw the same seeds), in their order."""
    if len(seeds) <= SEEDS_DRAWN_MAX:
        return seeds
    gen = np.random.default_rng(rep.params["rng"])
    return np.sort(gen.choice(seeds, size=SEEDS_DRAWN_MAX, replace=False))


def _violins(ax, data: list[np.ndarray], positions, colors: list, *, vert: bool, width: float) -> list:
    """Kernel densities (matplotlib's violins, Scott's bandwidth) of each array of ``data``, filled in
    its colour, no extrema or medians drawn (the means and intervals are drawn on top); returns them."""
    keep = [(d[np.isfinite(d)], p, c) for d, p, c in zip(data, positions, colors, strict=True)]
    keep = [(d, p, c) for d, p, c in keep if d.size > 1 and np.ptp(d) > 0]
    if not keep:
        return []
    import inspect

    # matplotlib 3.10 replaced vert= by orientation= (and warns about vert=); older ones know only vert=
    way = {"orientation": "vertical" if vert else "horizontal"} \
        if "orientation" in inspect.signature(ax.violinplot).parameters else {"vert": vert}
    parts = ax.violinplot([d for d, _, _ in keep], positions=[p for _, p, _ in keep], widths=width,
                          showextrema=False, **way)
    for body, (_, _, c) in zip(parts["bodies"], keep, strict=True):
        body.set_facecolor(c)
        body.set_edgecolor("none")
        body.set_alpha(0.35)
        body.set_zorder(0)
    return parts["bodies"]


def paired_seed_figure(rep: Report):
    """Per cell: the metric per arm, one grey line per seed (the pairing), arm means as coloured dots.

    With more than :data:`SEEDS_DRAWN_MAX` seeds in a cell: the density of the metric over all seeds per
    arm (violins), lines for :data:`SEEDS_DRAWN_MAX` seeds drawn at random (:func:`_seed_subsample`), and
    the arm means over all seeds.
    """
    d = rep.disp
    runs = rep.runs
    cl = _cells(rep, runs)
    ncols = 2 if len(cl) <= 6 else 3
    fig, axes = _grid(len(cl), ncols_max=ncols, panel_h=2.1)
    many = False
    for ax, (cell, sub) in zip(axes, cl, strict=True):
        arms = [a for a in rep.arms if (sub[rep.factor] == a).any()]
        wide = sub.pivot_table(index="seed", columns=rep.factor, values=rep.metric, aggfunc="first", dropna=False)
        wide = wide.reindex(columns=arms) * d.scale
        xs = np.arange(len(arms))
        means = wide.mean(axis=0)  # over every seed
        shown = wide
        if len(wide) > SEEDS_DRAWN_MAX:
            many = True
            _violins(ax, [wide[a].to_numpy(float) for a in arms], xs, [rep.palette[a] for a in arms], vert=True,
                     width=0.7)
            shown = wide.loc[_seed_subsample(rep, wide.index.to_numpy())]
        for _, row in shown.iterrows():
            ax.plot(xs, row.to_numpy(float), color="0.55", lw=0.7, alpha=0.6, marker="o", ms=2.2, zorder=1)
        for x, a in zip(xs, arms, strict=True):
            ax.scatter([x], [means[a]], s=36, color=rep.palette[a], edgecolor="black", lw=0.6, zorder=3)
        ax.set_xticks(xs, arms)
        ax.set_xlim(-0.4, len(arms) - 0.6)
        # a third of the page is too narrow for "arch = cnn, activation = tanh" on one line
        ax.set_title(cell_label(cell) if ncols == 2 else cell_label(cell).replace(", ", ",\n"))
        ax.set_xlabel(rep.factor)
        ax.set_ylabel(d.with_unit(d.label))
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], color="0.55", lw=0.7, marker="o", ms=2.2,
                      label=f"one seed ({SEEDS_DRAWN_MAX} drawn at random)" if many else "one seed"),
               Line2D([], [], lw=0, marker="o", ms=6, markerfacecolor="white", markeredgecolor="black",
                      label="arm mean (colour = arm)")]
    if many:
        handles.append(Patch(facecolor="0.7", edgecolor="none", label="density over all seeds"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    return fig


def _diff_frame(rep: Report) -> pd.DataFrame:
    """Per-seed differences arm − baseline, paired on seed as ``stats.compare`` pairs them."""
    from ..stats._frames import pair_up

    frames = []
    for cell, sub in _cells(rep, rep.runs):
        for arm in rep.arms[1:]:
            if not (sub[rep.factor] == arm).any():
                continue
            r0, r1, _ = pair_up(sub, rep.factor, rep.baseline, arm, "seed", drop_unpaired=True, where="")
            dlt = (r1[rep.metric].to_numpy(float) - r0[rep.metric].to_numpy(float)) * rep.disp.scale
            frames.append(pd.DataFrame({**{k: [v] * len(dlt) for k, v in cell.items()}, "arm": arm,
                                        "seed": r0["seed"].to_numpy(int), "diff": dlt}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def comparison_labels(rep: Report, cmp: pd.DataFrame) -> list[str]:
    return [" · ".join([*(str(r[k]) for k in rep.by), f"{r['arm']} − {r['baseline']}"]) for r in cmp.to_dict("records")]


def _margin_band(ax, rep: Report):
    m = rep.params["margin"]
    if m is None:
        return None
    lo, hi = (-m, m) if not isinstance(m, list | tuple) else m
    return ax.axvspan(lo * rep.disp.scale, hi * rep.disp.scale, color="tab:green", alpha=0.12, lw=0,
                      label="equivalence margin")


def differences_figure(rep: Report, cmp: pd.DataFrame):
    """Per comparison: every seed's difference, the mean with its t interval and the BCa interval.

    A comparison of more than :data:`SEEDS_DRAWN_MAX` seeds shows the density of its differences over all
    seeds (a violin) instead of one dot per seed; the mean and both intervals are ``cmp``'s (all seeds).
    """
    import matplotlib.pyplot as plt

    d = rep.disp
    diffs = _diff_frame(rep)
    labels = comparison_labels(rep, cmp)
    n = len(cmp)
    fig, ax = plt.subplots(figsize=(FIG_WIDTH, 0.45 * n + 1.3))
    _margin_band(ax, rep)
    ax.axvline(0, color="black", lw=0.8, ls="--", label="no difference")
    dot_label = density_label = True
    for i, r in enumerate(cmp.to_dict("records")):
        y = n - 1 - i
        mask = diffs["arm"] == r["arm"]
        for k in rep.by:
            mask &= diffs[k] == r[k]
        x = diffs.loc[mask, "diff"].to_numpy(float)
        if x.size > SEEDS_DRAWN_MAX:
            bodies = _violins(ax, [x], [y], [rep.palette[r["arm"]]], vert=False, width=0.5)
            if density_label and bodies:
                bodies[0].set_label("density over all seeds (colour = arm)")
                density_label = False
        else:
            jit = np.linspace(-0.18, 0.18, x.size) if x.size > 1 else np.zeros(x.size)
            ax.scatter(x, y + jit, s=9, color=rep.palette[r["arm"]], alpha=0.75, lw=0, zorder=2,
                       label="one seed (colour = arm)" if dot_label else None)
            dot_label = False
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


#: One colour per label of :data:`bnstats.stats.VERDICTS` (every label has one; tested), in its legend order.
#: A difference within the margin is the lighter shade of its direction (ColorBrewer PRGn / RdBu).
VERDICT_COLORS = {
    "better": "#1b7837",
    "worse": "#b2182b",
    "better, within margin": "#7fbf7b",
    "worse, within margin": "#ef8a62",
    "equivalent": "#2166ac",
    "inconclusive": "#636363",
    "not estimable": "#bdbdbd",
}


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


#: Where each plotted quantity can lie. Its ± 1 SD band is clipped to this range (mean ± SD of a fraction
#: of zeros that are all near 0 reaches below 0, which no run can): the captions say so. Excess kurtosis is
#: at least skew² − 2 >= −2 (Pearson 1916), a variance and a loss at least 0.
RANGES: dict[str, tuple[float, float]] = {
    "frac_zero": (0.0, 1.0), "var": (0.0, math.inf), "exkurt": (-2.0, math.inf),
    "mean": (-math.inf, math.inf), "skew": (-math.inf, math.inf),
    "train_loss": (0.0, math.inf), "test_loss": (0.0, math.inf),
}


def value_range(name: str, scale: float = 1.0) -> tuple[float, float]:
    """The range of a plotted column (``*_acc``: [0, 1] times the display ``scale``); unbounded if unknown."""
    if name.endswith("acc") or name.endswith("accuracy"):
        return 0.0, 1.0 * scale
    return RANGES.get(name, (-math.inf, math.inf))


def mean_sd_lines(ax, df: pd.DataFrame, x: str, y: str, hue: str, order: Sequence[str], palette: dict,
                  bounds: tuple[float, float] = (-math.inf, math.inf)) -> None:
    """:func:`band_lines` of per-seed rows ``df``: the mean and SD of ``y`` per ``hue`` and ``x`` by pandas."""
    g = df.groupby([hue, x], observed=True, sort=True)[y].agg(["mean", "std"]).reset_index()
    band_lines(ax, g.rename(columns={"mean": f"{y}_mean", "std": f"{y}_sd"}), x, y, hue, order, palette, bounds)


def report_results(rep: Report):
    """The store as the report sees it: its tables read for the report's runs only (``rep.runs``: a
    [tune] sweep's evaluation runs), as the figures merged them with ``rep.runs`` before."""
    return rep.res.with_runs(rep.runs)


def band_lines(ax, agg: pd.DataFrame, x: str, y: str, hue: str, order: Sequence[str], palette: dict,
               bounds: tuple[float, float] = (-math.inf, math.inf)) -> None:
    """One line per ``hue`` level: the mean of ``y`` over seeds at each ``x``, with a ± 1 SD band clipped
    to ``bounds`` (the quantity's range, :func:`value_range`).

    ``agg`` holds one row per (``hue``, ``x``) with ``<y>_mean`` and ``<y>_sd`` (ddof = 1), as
    :meth:`bnstats.store.Results.aggregate` returns them; an SD that is undefined (one seed) draws no band.
    """
    present = set(agg[hue])
    lo, hi = bounds
    for arm in order:
        if arm not in present:
            continue
        s = agg[agg[hue] == arm].sort_values(x, kind="stable")
        xs, m = s[x].to_numpy(float), s[f"{y}_mean"].to_numpy(float)
        sd = np.nan_to_num(s[f"{y}_sd"].to_numpy(float), nan=0.0)
        ax.plot(xs, m, color=palette[arm], lw=1.1, label=arm)
        ax.fill_between(xs, np.clip(m - sd, lo, hi), np.clip(m + sd, lo, hi), color=palette[arm], alpha=0.2, lw=0)


def learning_curves_figure(rep: Report):
    """Per cell: test metric and training loss per epoch (an imported store: the metric per step, as its
    source logged it), one line per arm (mean over seeds, band ± 1 SD); None without the metric's curves.

    The curves are aggregated while the table is read (:meth:`~bnstats.store.Results.aggregate`: only
    the columns plotted, one row per arm, cell and epoch), whatever the number of runs.
    """
    from matplotlib.ticker import MaxNLocator

    res = report_results(rep)
    have = res.columns("curves")
    ymetric = rep.metric if rep.metric in have else "test_acc"
    if ymetric not in have:  # runs imported with values per step, but not of this metric
        return None
    # a sweep's curves are per epoch; imported ones per step, as the source logged them
    x = "epoch" if "epoch" in have else "step"
    ydisp = MetricDisplay.of(ymetric)
    panels = [(ymetric, ydisp.with_unit(ydisp.label))]
    if "train_loss" in have:
        panels.append(("train_loss", "training loss (nats)"))
    cv = res.aggregate("curves", [rep.factor, *rep.by, x], [c for c, _ in panels], stats=("mean", "sd"))
    cv[f"{ymetric}_mean"] *= ydisp.scale
    cv[f"{ymetric}_sd"] *= ydisp.scale
    cl = _cells(rep, cv)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(cl), len(panels), figsize=(FIG_WIDTH, 1.75 * len(cl) + 0.6), squeeze=False)
    for i, (cell, sub) in enumerate(cl):
        for j, (col, lab) in enumerate(panels):
            ax = axes[i, j]
            band_lines(ax, sub, x, col, rep.factor, rep.arms, rep.palette,
                       bounds=value_range(col, ydisp.scale if col == ymetric else 1.0))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(lab)
            ax.set_xlabel(x if i == len(cl) - 1 else "")
            ax.set_title(cell_label(cell))
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, title=f"{rep.factor} (line: mean over seeds; band: ± 1 SD)",
               loc="outside lower center", ncols=len(labels), frameon=False)
    return fig


MOMENTS = ("skew", "exkurt", "frac_zero")  # the shape of a distribution: what the placement argument is about
SITES = ("norm_in", "act_out")


def probe_moments(rep: Report, sites: Sequence[str] = SITES, moments: Sequence[str] | None = None) -> pd.DataFrame:
    """The moments of the probe batch at ``sites``, aggregated over seeds: one row per arm, cell, epoch,
    layer and site with ``n``, ``mean`` and ``sd`` of each moment (``skew_mean``, ...; default: the
    report's ``moments`` parameter).

    Computed while the moments table is scanned (:meth:`~bnstats.store.Results.aggregate`): a store of
    10^5 runs (25 M moment rows) gives ~2,300 rows here without ever holding its rows. Empty when the
    store has no probe moments.
    """
    moments = list(moments if moments is not None else rep.params.get("moments", MOMENTS))
    res = report_results(rep)
    if not {"source", "site", "epoch", "layer", *moments} <= set(res.columns("moments")):
        return pd.DataFrame()
    return res.aggregate("moments", [rep.factor, *rep.by, "epoch", "layer", "site"], moments,
                             where={"source": "probe", "site": list(sites)})


def moments_figure(rep: Report, mom: pd.DataFrame, cell: dict[str, Any], sites: Sequence[str] = SITES,
                   moments: Sequence[str] | None = None):
    """One cell: the moments (default: the report's ``moments`` parameter, skewness, excess kurtosis and
    fraction of zeros; ``mean`` and ``var`` too where asked) at each site and layer over training, per arm
    (``mom``: :func:`probe_moments`, mean and SD over seeds)."""
    moments = list(moments if moments is not None else rep.params.get("moments", MOMENTS))
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
    rows = [(st, mo) for st in sites for mo in moments]
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
            band_lines(ax, sl[sl["site"] == st], "epoch", mo, rep.factor, arms, rep.palette, bounds=value_range(mo))
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


def association_moments(rep: Report, moments: Sequence[str] = MOMENTS, site: str = "norm_in") -> pd.DataFrame:
    """What ``stats.association`` and ``stats.paired_association`` read of the moments table (probe batch,
    ``site``, each run's last epoch): one row per run and layer, read as such, not filtered from all rows.

    Each run's last epoch at ``site`` comes from an aggregate (max epoch per run); then only the rows
    at those epochs are read (a handful of distinct epochs: the planned one, and those where diverged
    runs stopped). ``stats`` picks each run's last epoch from them, so it sees the rows it would pick
    from the whole table.
    """
    res = report_results(rep)
    if not {"source", "site", "epoch", "step", "layer", *moments} <= set(res.columns("moments")):
        return pd.DataFrame()
    where = {"source": "probe", "site": site}
    last = res.aggregate("moments", ["run_id"], ["epoch"], where=where, stats=("max",))
    if last.empty:
        return pd.DataFrame()
    epochs = sorted({int(e) for e in last["epoch_max"]})
    return res.read("moments", ["epoch", "step", "source", "layer", "site", *moments],
                        where={**where, "epoch": epochs})


def association_frames(rep: Report, moments: Sequence[str] = MOMENTS, site: str = "norm_in"):
    """``stats.paired_association`` (Δmoment vs Δmetric) and ``stats.association`` (per arm), stacked over moments."""
    from .. import stats

    m = association_moments(rep, moments, site)
    if m.empty:
        return pd.DataFrame(), pd.DataFrame()
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
