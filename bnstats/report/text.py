"""Words and numbers for reading: labels, rounding, the "How to cite" sentence, caveats, design phrases.

The only place where numbers are rounded (STYLE.md: round only where a person reads). Everything here is
a pure function of its arguments: no store, no files, no plotting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

P_ADJUST_NAMES = {"holm": "Holm (1979)", "bh": "Benjamini–Hochberg (1995)", "bonferroni": "Bonferroni"}
ARM_LABELS = {
    "placement": {"before": "BN before the activation", "after": "BN after the activation",
                  "none": "no normalization"},
}
METRIC_LABELS = {"test_acc": "test accuracy", "train_acc": "training accuracy", "test_loss": "test loss",
                 "train_loss": "training loss", "val_acc": "validation accuracy", "val_loss": "validation loss"}
MOMENT_LABELS = {"skew": "skewness", "exkurt": "excess kurtosis", "frac_zero": "fraction of zeros",
                 "mean": "mean", "var": "variance"}
MINUS = "\u2212"
NBSP = "\u00a0"


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


def seed_ranges(seeds: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> "0–2, 5, 7–8" (sorted seeds)."""
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


def training_text(tr: dict[str, Any], grid: dict[str, Any], tuned: Sequence[tuple[str, Sequence[Any]]] = ()) -> str:
    """The training protocol as a phrase ("30 epochs, sgd, lr 0.05, ..."); a grid factor lists its levels,
    a key tuned per arm (``[tune]``: ``(key, candidates)`` pairs) says so with its candidates."""
    tuned = dict(tuned)

    def g(k, default="?"):
        if k in tuned:
            return "tuned per arm from " + "/".join(map(str, tuned[k]))
        return "/".join(map(str, grid[k])) if k in grid else tr.get(k, default)

    parts = [f"{g('epochs')} epochs", f"{g('optimizer')}", f"lr {g('lr')}", f"{g('schedule')} schedule",
             f"batch {g('batch_size')}"]
    if tr.get("optimizer") == "sgd" or "momentum" in grid:
        parts.append(f"momentum {g('momentum')}")
    if tr.get("weight_decay") or "weight_decay" in grid or "weight_decay" in tuned:
        parts.append(f"weight decay {g('weight_decay')}")
    return ", ".join(str(p) for p in parts)
