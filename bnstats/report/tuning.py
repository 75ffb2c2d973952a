"""The report's tuning section, for a sweep with ``[tune]`` (each arm's hyperparameters chosen on the
validation set, :mod:`bnstats.tune`): the values chosen per arm (beside the headline), the validation
metric against each candidate per arm with seed bands and the choice marked, the Methods sentence with
the protocol and budget, and the caveats (a choice at the edge of its grid, an evaluation run that did
not use the values its arm's tuning runs choose).

The choice is recomputed here from the stored tuning runs' validation columns
(:func:`bnstats.tune.choices_frame`), never read from the evaluation runs, and checked against what the
evaluation runs recorded. A sweep without ``[tune]`` gets nothing from this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .tables import esc
from .text import MetricDisplay, cell_label, num, seed_ranges

if TYPE_CHECKING:
    from .document import Report


def frames(rep: Report) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(candidates, choices)``: :func:`bnstats.tune.candidates_frame` and :func:`~bnstats.tune.choices_frame`
    of the report's store (tuning and evaluation runs)."""
    from ..tune import candidates_frame, choices_frame

    runs = rep.res.runs
    return candidates_frame(runs, rep.tune, rep.res.factors), choices_frame(runs, rep.tune, rep.res.factors)


def _value_text(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _values_text(tune, row: dict[str, Any], prefix: str = "chosen_") -> str:
    return ", ".join(f"{k} = {_value_text(row[prefix + k])}" for k in tune.keys if row.get(prefix + k) is not None)


def chosen_table(rep: Report, choices: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(raw, shown)``: per arm the chosen values, the validation score and what decided it (rounded
    for reading in ``shown``; ``raw`` is :func:`bnstats.tune.choices_frame`)."""
    d = MetricDisplay.of(rep.tune.metric)
    rows = []
    for r in choices.to_dict("records"):
        row = {k: r[k] for k in rep.res.factors}
        for k in rep.tune.keys:
            row[k] = "not chosen yet" if r[f"chosen_{k}"] is None else _value_text(r[f"chosen_{k}"])
        row[d.with_unit(f"mean {d.label}")] = num(r["score"] * d.scale, d.digits)
        row["decided by"] = r["decided_by"] or "n/a"
        row["at grid edge"] = r["edge"] or "no"
        row["evaluation runs"] = str(r["n_eval"])
        rows.append(row)
    return choices, pd.DataFrame(rows)


def tuning_figure(rep: Report, cand: pd.DataFrame, tune_runs: pd.DataFrame):
    """Per cell: the validation metric of every candidate per arm (line: mean over tuning seeds; band:
    ± 1 SD; dots: seeds), the chosen candidate ringed. The x axis is the first tuned key (log scale for
    positive numbers spanning 4x or more), or the candidates in [tune] order when several keys are tuned."""
    from matplotlib.lines import Line2D

    from .figures import FIG_WIDTH, _cells, _grid

    t = rep.tune
    metric = t.metric
    d = MetricDisplay.of(metric)
    combos = t.combos()
    one_key = len(t.keys) == 1
    key = t.keys[0]
    numeric = one_key and all(isinstance(c[key], int | float) and not isinstance(c[key], bool) for c in combos)
    if numeric:
        xs_of = {i: float(c[key]) for i, c in enumerate(combos)}
    else:
        xs_of = {i: float(i) for i in range(len(combos))}
    cl = _cells(rep, cand)
    ncols = 2 if len(cl) <= 6 else 3
    fig, axes = _grid(len(cl), ncols_max=ncols, panel_h=2.0, width=FIG_WIDTH)
    mean_col = f"mean_{metric}"
    sd_col = f"sd_{metric}"
    for ax, (cell, sub) in zip(axes, cl, strict=True):
        for arm in rep.arms:
            a = sub[sub[rep.factor] == arm]
            if a.empty:
                continue
            idx = [_combo_index(combos, r) for r in a.to_dict("records")]
            order = np.argsort([xs_of[i] for i in idx], kind="stable")
            x = np.array([xs_of[idx[j]] for j in order])
            m = a[mean_col].to_numpy(float)[order] * d.scale
            sd = np.nan_to_num(a[sd_col].to_numpy(float)[order]) * d.scale
            color = rep.palette[arm]
            ax.plot(x, m, color=color, lw=1.1, marker="o", ms=2.5, label=arm)
            ax.fill_between(x, m - sd, m + sd, color=color, alpha=0.18, lw=0)
            tr = tune_runs[tune_runs[rep.factor] == arm]
            for k, v in cell.items():
                tr = tr[tr[k] == v]
            for r in tr.to_dict("records"):
                i = _combo_index(combos, r)
                if i is not None and not bool(r.get("diverged", False)):
                    ax.scatter([xs_of[i]], [r[metric] * d.scale], s=5, color=color, alpha=0.55, lw=0, zorder=2)
            ch = a[a["chosen"]]
            if len(ch):
                i = _combo_index(combos, ch.iloc[0].to_dict())
                ax.scatter([xs_of[i]], [ch.iloc[0][mean_col] * d.scale], s=70, facecolor="none", edgecolor="black",
                           lw=1.1, zorder=4)
        if numeric:
            vals = sorted(set(xs_of.values()))
            if vals[0] > 0 and vals[-1] / vals[0] >= 4:
                ax.set_xscale("log")
            ax.set_xticks(vals, [_value_text(v) for v in vals])
            ax.minorticks_off()
            ax.set_xlabel(key)
        else:
            ax.set_xticks(range(len(combos)), ["\n".join(f"{k}={_value_text(v)}" for k, v in c.items()) for c in combos])
            ax.set_xlabel("candidate")
        ax.set_title(cell_label(cell) if ncols == 2 else cell_label(cell).replace(", ", ",\n"))
        ax.set_ylabel(d.with_unit(d.label))
    handles = [Line2D([], [], color=rep.palette[a], lw=1.1, marker="o", ms=2.5, label=a) for a in rep.arms]
    handles.append(Line2D([], [], lw=0, marker="o", ms=8, markerfacecolor="none", markeredgecolor="black",
                          label="chosen"))
    fig.legend(handles=handles, title=f"{rep.factor} (line: mean over tuning seeds; band: ± 1 SD; dots: seeds)",
               loc="outside lower center", ncols=len(handles), frameon=False)
    return fig


def _combo_index(combos: list[dict[str, Any]], row: dict[str, Any]) -> int | None:
    for i, c in enumerate(combos):
        if all(row.get(k) == v for k, v in c.items()):
            return i
    return None


def _n_val(rep: Report) -> int | None:
    runs = rep.res.runs
    if "n_val" not in runs or runs["n_val"].dropna().empty:
        return None
    return int(runs["n_val"].dropna().iloc[0])


def budget(rep: Report) -> tuple[int, int]:
    """``(runs, epochs)`` of tuning per arm: every candidate on every tuning seed (an ``epochs`` candidate
    counts its own epochs)."""
    epochs = int(rep.res.config.get("train", {}).get("epochs", 0))
    n_seeds = len(rep.tune.seeds)
    combos = rep.tune.combos()
    return len(combos) * n_seeds, sum(int(c.get("epochs", epochs)) * n_seeds for c in combos)


def methods_text(rep: Report, choices: pd.DataFrame) -> str:
    """The protocol and budget, as Methods sentences (plain text)."""
    t = rep.tune
    runs_per_arm, epochs_per_arm = budget(rep)
    grid = "; ".join(f"{k} in {{{', '.join(_value_text(v) for v in vals)}}}" for k, vals in t.candidates)
    n_arms = len(choices)
    n_tune = len(rep.tune_runs)
    n_eval_seeds = len(sorted(rep.runs["seed"].unique())) if len(rep.runs) else 0
    val_split = rep.res.config.get("data", {}).get("val_split", 0)
    n_val = _n_val(rep)
    where = (f"a validation set of {n_val} examples held out of the training set by one stratified split with a "
             f"fixed seed (data.val_split = {val_split:g}), the same for every arm and seed"
             if val_split else f"the dataset's own validation set ({n_val} examples)")
    better = "highest mean validation accuracy" if t.metric == "val_acc" else "lowest mean validation loss"
    other = "validation loss" if t.metric == "val_acc" else "validation accuracy"
    return (
        f"Hyperparameters were tuned per arm on {where}; the test set took no part in the choice. For each of the "
        f"{n_arms} arms (every combination of {', '.join(rep.res.factors)}), every candidate of {grid} "
        f"({len(t.combos())} candidates) was trained on {len(t.seeds)} tuning seeds ({seed_ranges(sorted(t.seeds))}), "
        f"disjoint from the {n_eval_seeds} evaluation seeds: a budget of {runs_per_arm} runs "
        f"({epochs_per_arm} epochs) per arm, {n_tune} tuning runs in all. Each arm took the candidate with the "
        f"{better} at the final epoch over its tuning seeds (a candidate that diverged on a tuning seed ranks "
        f"below those that did not; ties go to the better mean {other}, then to the first candidate listed). "
        f"The evaluation seeds then trained with the chosen values, and every comparison, the headline and the "
        f"pairing certificate use those evaluation runs only."
    )


def caveats(rep: Report, choices: pd.DataFrame, cand: pd.DataFrame) -> list[str]:
    """Caveats of the tuning: choices at the edge of their grid, arms not decided, evaluation runs that
    did not use the values their arm's tuning runs choose, diverged tuning runs."""
    out = []
    t = rep.tune
    for key, values in t.candidates:
        nums = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(set(nums)) < 2:
            continue
        lo, hi = min(nums), max(nums)
        for side, v in (("smallest", lo), ("largest", hi)):
            at = choices[choices[f"chosen_{key}"].map(lambda x, v=v: x is not None and x == v)]
            if len(at):
                arms = "; ".join(", ".join(str(r[k]) for k in rep.res.factors) for r in at.to_dict("records"))
                out.append(f"{key} = {_value_text(v)}, the {side} candidate, was chosen for {len(at)} of {len(choices)} "
                           f"arm(s) ({arms}): its best value may lie outside the tuned grid, and a wider grid could "
                           "change that arm's result.")
    undecided = choices[~choices["complete"]]
    if len(undecided):
        arms = "; ".join(", ".join(str(r[k]) for k in rep.res.factors) for r in undecided.to_dict("records"))
        out.append(f"{len(undecided)} arm(s) have tuning runs missing ({arms}): no value is chosen for them yet.")
    wrong = choices[~choices["agrees"]]
    if len(wrong):
        parts = [f"{', '.join(str(r[k]) for k in rep.res.factors)} used {_values_text(t, r, 'used_')}, its tuning runs "
                 f"choose {_values_text(t, r) or 'nothing yet'}" for r in wrong.to_dict("records")]
        out.append("Evaluation runs that did not use the values their arm's stored tuning runs choose: "
                   + "; ".join(parts) + ".")
    n_div = int(cand["n_diverged"].sum()) if len(cand) else 0
    if n_div:
        out.append(f"{n_div} tuning run(s) diverged; a candidate that diverged on a tuning seed ranks below those "
                   "that did not.")
    return out


def block(rep: Report) -> list[Any]:
    """The tuning section's displays (heading and protocol, the chosen-values table, the figure); the
    tables ``tuned`` (per arm) and ``tuning`` (per arm and candidate) are written as CSV and TeX."""
    from .document import _HTML

    cand, choices = rep.tuning_frames
    runs_per_arm, epochs_per_arm = budget(rep)
    d = MetricDisplay.of(rep.tune.metric)
    intro = _HTML(
        "<h3>Hyperparameters tuned per arm</h3>"
        f'<p class="note">{esc(", ".join(rep.tune.keys))} chosen per arm on the validation set '
        f"({esc(d.label)}, best mean over {len(rep.tune.seeds)} tuning seeds; {runs_per_arm} runs, "
        f"{epochs_per_arm} epochs per arm). The table gives the values each arm's evaluation runs trained with, "
        "recomputed from the stored tuning runs; the comparisons above use the evaluation runs only.</p>")
    raw, shown = chosen_table(rep, choices)
    right = [c for c in shown.columns if c not in (*rep.res.factors, "decided by", "at grid edge")]
    out = [intro, rep.table("tuned", raw, shown, right=right,
                            caption=f"Values chosen per arm (evaluation runs), {esc(d.label)} of the chosen "
                                    "candidate (mean over tuning seeds), what separated it from the runner-up, and "
                                    "whether it lies at the edge of its grid.")]
    rep.table("tuning", cand, display=False, write_tex=False,
              caption="every arm x candidate: validation metrics over the tuning seeds, rank, chosen")
    if len(cand):
        tr = rep.tune_runs
        out.append(rep.figure(tuning_figure(rep, cand, tr), "tuning",
                              f"Tuning: {esc(d.label)} of each candidate per arm on the validation set at the final "
                              "epoch; line: mean over the tuning seeds, band: ± 1 SD, dots: seeds (diverged runs "
                              "left out); ring: the chosen candidate."))
    return out


def summary(rep: Report) -> dict[str, Any]:
    """The tuning protocol and each arm's choice, unrounded, for ``summary.json``."""
    cand, choices = rep.tuning_frames
    runs_per_arm, epochs_per_arm = budget(rep)
    t = rep.tune
    arms = []
    for r in choices.to_dict("records"):
        arms.append({**{k: _plain(r[k]) for k in rep.res.factors},
                     "chosen": {k: _plain(r[f"chosen_{k}"]) for k in t.keys}, "score": _plain(r["score"]),
                     "decided_by": r["decided_by"], "edge": [e for e in r["edge"].split(", ") if e],
                     "agrees_with_evaluation_runs": bool(r["agrees"])})
    return {"tuning": {"keys": {k: [_plain(v) for v in vals] for k, vals in t.candidates},
                       "seeds": list(t.seeds), "metric": t.metric, "rule": t.rule,
                       "runs_per_arm": runs_per_arm, "epochs_per_arm": epochs_per_arm,
                       "tuning_runs": len(rep.tune_runs), "arms": arms}}


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v
