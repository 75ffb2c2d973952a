"""Words and numbers for reading: labels, rounding, the "How to cite" sentence, caveats, design phrases.

The only place where numbers are rounded (STYLE.md: round only where a person reads). Everything here is
a pure function of its arguments: no store, no files, no plotting.

What a sentence may claim follows the verdict of :func:`bnstats.stats.compare`, which is the family's
decision (``p_adj``, and ``p_tost_adj`` with a margin), never a per-comparison interval:

- better / worse: the direction, the adjusted p and the decision interval (the interval that agrees
  with the verdict), then the per-comparison numbers, labelled as such;
- "…, within margin" and equivalent: both facts, each with its adjusted p;
- inconclusive: "no detectable difference", never "changed … by";
- not estimable: why, with counts;
- degenerate rows (every seed differs by the same amount): the t interval is undefined, the exact
  sign-flip test decides, and the sentence says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..stats import caveat_list, evaluation_runs, min_p
from ..stats.crossed import BITS_COLUMNS

P_ADJUST_NAMES = {"holm": "Holm (1979)", "bh": "Benjamini–Hochberg (1995)", "bonferroni": "Bonferroni"}
#: The adjustment's name as a prefix: "Holm-adjusted p".
P_ADJUST_SHORT = {"holm": "Holm", "bh": "BH", "bonferroni": "Bonferroni"}
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
#: A table cell with no number (a comparison that is not estimable).
MISSING = "\u2014"

#: What each label of :data:`bnstats.stats.VERDICTS` means, in the words of a legend (every label has one;
#: tested). The rules are :func:`bnstats.stats.decision.verdict`'s.
VERDICT_MEANINGS = {
    "better": "a difference, in the better direction, decided by the family's adjusted test (p_adj < α)",
    "worse": "a difference, in the worse direction, decided by the family's adjusted test (p_adj < α)",
    "better, within margin": "better (p_adj < α), and inside the equivalence margin by the adjusted TOST "
                             "(p_tost_adj < α): a real but small improvement",
    "worse, within margin": "worse (p_adj < α), and inside the equivalence margin by the adjusted TOST "
                            "(p_tost_adj < α): a real but small loss",
    "equivalent": "inside the equivalence margin by the adjusted TOST (p_tost_adj < α); no difference decided",
    "inconclusive": "no detectable difference (p_adj ≥ α), and not shown equivalent",
    "not estimable": "fewer than 2 usable pairs of seeds (e.g. an arm diverged on every seed)",
}

#: The decision interval of each ``p_adjust`` method, for readers (``stats.compare``'s
#: ``decision_interval_method`` names the same construction; see :func:`bnstats.stats.decision.family_intervals`).
DECISION_INTERVAL_NAMES = {
    "bonferroni": "Bonferroni simultaneous interval",
    "holm": "Bonferroni simultaneous interval, cut at 0 where Holm rejects (Strassburger & Bretz 2008)",
    "bh": "FCR-adjusted interval (Benjamini & Yekutieli 2005)",
}

#: Fewer seeds per comparison than this get a design caveat (intervals wide, the exact tests' floors high).
FEW_SEEDS = 10

#: A crossed interval (seeds and test examples) at least this many times as wide as the seeds-only one
#: gets a caveat: the fixed test set hides that much of the uncertainty about new data. 1.5 means the
#: test examples add more than the seeds' own variance again (1.5² ≈ 2.25× the variance).
CROSSED_MUCH_WIDER = 1.5


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


def _missing(x: Any) -> bool:
    return x is None or bool(pd.isna(x))


def percent(confidence_level: float) -> str:
    """A confidence level as a reader sees it: 0.95 -> "95%" (0.999 -> "99.9%")."""
    return f"{round(100 * float(confidence_level), 6):g}%"


def fewest_seeds(cmp: pd.DataFrame) -> int | None:
    """The smallest ``n`` (pairs of seeds) of a compare() frame's estimable comparisons; None if there is none."""
    n = cmp.loc[cmp["verdict"] != "not estimable", "n"]
    return int(n.min()) if len(n) else None


def n_test_text(runs: pd.DataFrame) -> str:
    """" of 1,000 examples" when every run has the same stored ``n_test``, else ""."""
    sizes = runs["n_test"].dropna().unique() if "n_test" in runs.columns else []
    return f" of {int(sizes[0]):,} examples" if len(sizes) == 1 else ""


def ci(lo: float, hi: float, digits: int = 2, style: str = "text") -> str:
    """An interval as "low to high" (plain text, no TeX); "undefined" when an end is NaN (never "n/a to n/a")."""
    if _missing(lo) or _missing(hi):
        return "undefined"
    return f"{num(lo, digits, style=style)} to {num(hi, digits, style=style)}"


def decision_interval(lo: float, hi: float, digits: int = 2, style: str = "text", missing: str = MISSING) -> str:
    """A decision interval in bracket notation: ``[a, b]``; an end exactly at 0, or infinite, is open.

    ``stats.compare`` cuts a decision interval at 0 where the family rejects but the simultaneous
    interval still reaches 0 (Holm); that end is open: ``(0, 0.40]`` reads "greater than 0, at most
    0.40", which "0.00 to 0.40" would misstate. Missing ends (not estimable): ``missing``.
    """
    if _missing(lo) or _missing(hi):
        return missing
    lo, hi = float(lo), float(hi)

    def end(x: float) -> str:
        return "0" if x == 0 else num(x, digits, style=style)

    left = "(" if lo == 0 or math.isinf(lo) else "["
    right = ")" if hi == 0 or math.isinf(hi) else "]"
    return f"{left}{end(lo)}, {end(hi)}{right}"


def level_label(factor: str, level: Any) -> str:
    return ARM_LABELS.get(factor, {}).get(str(level), f"{factor} = {level}")


def cell_label(cell: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in cell.items()) or "all runs"


def is_degenerate(row: dict[str, Any] | pd.Series) -> bool:
    """Whether a compare() row was decided by the exact sign-flip test (every difference equal: no t interval)."""
    return str(row.get("method", "")).startswith("sign-flip")


def margin_text(row: dict[str, Any] | pd.Series, disp: MetricDisplay, digits: int | None = None) -> str:
    """The row's equivalence margin for reading: "±0.50 pp" or "−0.30 to 0.50 pp"; "" without one."""
    lo, hi = row.get("margin_low", math.nan), row.get("margin_high", math.nan)
    if _missing(lo) or _missing(hi):
        return ""
    dg = disp.digits if digits is None else digits
    unit = f" {disp.diff_unit}" if disp.diff_unit else ""
    lo, hi = float(lo) * disp.scale, float(hi) * disp.scale
    if lo == -hi:
        return f"\u00b1{num(hi, dg)}{unit}"
    return f"{num(lo, dg)} to {num(hi, dg)}{unit}"


def comparison_cells(row: dict[str, Any] | pd.Series, disp: MetricDisplay, style: str = "text") -> dict[str, str]:
    """Every number of one compare() row as the text a table cell shows (tables, TeX, README, terminal).

    Keys: ``delta``, ``verdict``, ``decision`` (the decision interval, bracket notation), ``p_adj``,
    ``p_tost_adj``, ``t_ci``, ``boot_ci``, ``d_z``, ``d_z_ci``, ``p`` (with the test's name when it is
    not the paired t). A degenerate row says "undefined" where the t-based numbers would be; a row
    that is not estimable shows a dash everywhere but its verdict.
    """
    s, dg = disp.scale, disp.digits
    if row["verdict"] == "not estimable":
        out = dict.fromkeys(("delta", "decision", "p_adj", "p_tost_adj", "t_ci", "boot_ci", "d_z", "d_z_ci", "p"),
                            MISSING)
        out["verdict"] = "not estimable"
        return out
    undefined = "undefined (all differences equal)" if is_degenerate(row) else MISSING
    p = fmt_p(row["p"], style)
    if is_degenerate(row):
        p = f"{p} ({row['method']})"
    return {
        "delta": num(row["estimate"] * s, dg, sign=True, style=style),
        "verdict": str(row["verdict"]),
        "decision": decision_interval(row.get("ci_low_decision", math.nan) * s, row.get("ci_high_decision", math.nan) * s,
                                      dg, style),
        "p_adj": fmt_p(row.get("p_adj", math.nan), style),
        "p_tost_adj": fmt_p(row.get("p_tost_adj", math.nan), style) if not _missing(row.get("p_tost_adj")) else MISSING,
        "t_ci": undefined if _missing(row["ci_low"]) else ci(row["ci_low"] * s, row["ci_high"] * s, dg, style),
        "boot_ci": undefined if _missing(row["boot_ci_low"]) else ci(row["boot_ci_low"] * s, row["boot_ci_high"] * s, dg, style),
        "d_z": undefined if _missing(row["d_z"]) else num(row["d_z"], 2, style=style),
        "d_z_ci": undefined if _missing(row["d_z_ci_low"]) else ci(row["d_z_ci_low"], row["d_z_ci_high"], 2, style),
        "p": p,
    }


def mean_sd(mean: float, sd: float, disp: MetricDisplay, style: str = "text") -> str:
    """An arm's level, "90.45 ± 0.48" (scaled); "18.30 (SD undefined)" from a single run; a dash from none."""
    if _missing(mean):
        return MISSING
    m = num(mean * disp.scale, disp.digits, style=style)
    if _missing(sd):
        return f"{m} (SD undefined)"
    pm = " \u00b1 " if style == "text" else r" $\pm$ "
    return m + pm + num(sd * disp.scale, disp.digits, style=style)


def _plural(k: int, one: str, many: str | None = None) -> str:
    return f"{k} {one if k == 1 else (many or one + 's')}"


def cite_sentence(row: dict[str, Any] | pd.Series, *, by: Sequence[str] = (), factor: str | None = None,
                  metric: str | None = None, digits: int | None = None) -> str:
    """One sentence a paper can quote for one comparison (a row of :func:`bnstats.stats.compare`).

    The claim follows the row's ``verdict`` (the family's decision), and every number is named:

    - better: "With arch = mlp, BN after the activation had higher test accuracy than BN before the
      activation: +0.42 pp (Holm-adjusted p = 0.0012 over 12 comparisons, 95% decision interval
      (0, 0.63] pp; per comparison: 95% CI 0.21 to 0.63, paired t(29) = 4.10, p = 0.00030;
      d_z = 0.75; 30 seeds)."
    - inconclusive: "… showed no detectable difference in test accuracy from …: +0.11 pp (95% CI −0.18
      to 0.40; paired t(29) = 0.78, p = 0.44, Holm-adjusted p = 0.48 over 12 comparisons; …)."
    - "better, within margin" / equivalent: the difference decision and the equivalence decision
      (TOST, adjusted the same way), both stated.
    - not estimable: why, with the counts of usable, diverged and dropped pairs.
    - degenerate rows: "+0.20 pp on every one of the 6 seeds (the t interval is undefined: every
      difference is equal; exact sign-flip test p = 0.031, …)".

    Accuracies (fractions in the store) are written in percentage points. Rows without the family
    columns (``p_adj``, ``family_size``, decision interval) leave those parts out.
    """
    row = dict(row)
    factor = factor or row["factor"]
    metric = metric or row["metric"]
    disp = MetricDisplay.of(metric)
    dg = disp.digits if digits is None else digits
    s = disp.scale
    unit = f" {disp.diff_unit}" if disp.diff_unit else ""
    cell = {k: row[k] for k in by if k in row}
    arm = level_label(factor, row["arm"])
    base = level_label(factor, row["baseline"])
    subject = f"With {cell_label(cell)}, {arm}" if cell else arm[0].upper() + arm[1:]
    label = disp.label
    n = int(row["n"])
    verdict = str(row["verdict"])
    if verdict == "not estimable":
        why = []
        if int(row.get("n_diverged", 0) or 0):
            why.append(f"{_plural(int(row['n_diverged']), 'pair')} with a diverged run")
        if int(row.get("n_dropped", 0) or 0):
            why.append(f"{_plural(int(row['n_dropped']), 'unpaired seed')} dropped")
        tail = f" ({'; '.join(why)})" if why else ""
        return (f"{subject} could not be compared with {base} in {label}: not estimable, "
                f"{_plural(n, 'usable pair')} of seeds where 2 are needed{tail}.")

    lvl = percent(row["confidence_level"])
    est = float(row["estimate"]) * s
    adj = f"{P_ADJUST_SHORT.get(row.get('p_adjust_method', ''), 'family')}-adjusted p"
    m = row.get("family_size")
    over = "" if _missing(m) else f" over {_plural(int(m), 'comparison')}"
    p_adj = row.get("p_adj", math.nan)
    fam_diff = "" if _missing(p_adj) else p_clause(p_adj, adj) + over
    p_tost_adj = row.get("p_tost_adj", math.nan)
    fam_tost = "" if _missing(p_tost_adj) else "TOST " + p_clause(p_tost_adj, adj)
    margin = margin_text(row, disp, dg)
    degenerate = is_degenerate(row)
    direction = "higher" if est > 0 else "lower"

    if verdict in ("better", "worse"):
        clause = f"had {direction} {label} than {base}"
    elif verdict.endswith("within margin"):
        clause = f"had {direction} {label} than {base}, by less than the equivalence margin ({margin})"
    elif verdict == "equivalent":
        clause = f"was equivalent to {base} in {label} within the margin ({margin}), with no detectable difference"
    else:
        clause = f"showed no detectable difference in {label} from {base}"

    # per-comparison numbers: the t test and its interval; or, where every difference is equal, the exact
    # test that decided (with the family's adjusted p beside it) and why there is no t interval
    undefined = "the t interval is undefined: every difference is equal"
    exact = p_clause(row["p"], "exact sign-flip test p")
    if degenerate:
        head = f"{num(est, dg, sign=True)}{unit} on every one of the {n} seeds"
    else:
        head = f"{num(est, dg, sign=True)}{unit}"
    t_ci = f"{lvl} CI {ci(float(row['ci_low']) * s, float(row['ci_high']) * s, dg)}"
    t_test = f"paired t({int(round(float(row['df'])))}) = {num(row['t'], 2)}, {p_clause(row['p'])}"
    d_z = row.get("d_z", math.nan)
    tail = ([] if degenerate or _missing(d_z) else [f"d_z = {num(d_z, 2)}"]) + [_plural(n, "seed")]

    def with_family(text: str) -> str:
        return f"{text}, {fam_diff}" if fam_diff else text

    parts: list[str] = []
    if verdict in ("better", "worse") or verdict.endswith("within margin"):
        if degenerate:
            parts.append(with_family(exact))
        else:
            decision = ("" if _missing(row.get("ci_low_decision")) else f"{lvl} decision interval "
                        f"{decision_interval(row['ci_low_decision'] * s, row['ci_high_decision'] * s, dg)}{unit}")
            parts.append(", ".join(x for x in (fam_diff, decision) if x))
        if verdict.endswith("within margin") and fam_tost:
            parts.append(f"equivalence: {fam_tost}")
        parts.append(undefined if degenerate else f"per comparison: {t_ci}, {t_test}")
    elif verdict == "equivalent":
        if fam_tost:
            parts.append(fam_tost + over)
        if degenerate:
            parts += [f"difference: {exact}" + (f", {fam_diff.removesuffix(over)}" if fam_diff else ""), undefined]
        else:
            if fam_diff:
                parts.append(f"difference: {fam_diff.removesuffix(over)}")
            parts.append(f"per comparison: {t_ci}, {t_test}")
    else:  # inconclusive: the per-comparison interval first, as "no detectable difference: +0.11 pp (95% CI ...)"
        parts += [with_family(exact), undefined] if degenerate else [t_ci, with_family(t_test)]
        if fam_tost:
            parts.append(f"not shown equivalent within {margin}: {fam_tost}")
    parts.extend(tail)
    return f"{subject} {clause}: {head} ({'; '.join(p for p in parts if p)})."


def headline_note(*, p_adjust: str, family_size: int, confidence_level: float, margin: bool) -> str:
    """The footnote of every headline table: what decides the verdict, and which interval is which."""
    lvl = percent(confidence_level)
    alpha = f"{1 - float(confidence_level):.6g}"
    fam = _plural(int(family_size), "comparison")
    tost = (", and the TOST p-values against the equivalence margin adjusted the same way (p_tost_adj)"
            if margin else "")
    return (f"Verdict: the family's decision, from p-values adjusted by {P_ADJUST_NAMES[p_adjust]} over the {fam} "
            f"(p_adj < {alpha}){tost}; inconclusive means no detectable difference. "
            f"Decision interval: the {lvl} {DECISION_INTERVAL_NAMES[p_adjust]}; it excludes 0 exactly when the "
            "verdict is better or worse, and an end at 0 is open ('(0, 0.40]': above 0, at most 0.40). "
            f"Per comparison: the {lvl} paired t interval and the BCa bootstrap interval of each comparison on its "
            f"own, not adjusted for the {fam}, so one of them may exclude 0 where the verdict is inconclusive.")


def grouped_caveats(cmp: pd.DataFrame, by: Sequence[str]) -> list[str]:
    """The per-comparison caveats of a compare() frame, each once, with the comparisons it applies to.

    "n=4 < 15: the BCa interval under-covers … (all comparisons)", or "(mlp, after − before; …)".
    Caveats are read with :func:`bnstats.stats.caveat_list` (one per line in the frame).
    """
    where: dict[str, list[str]] = {}
    for r in cmp.to_dict("records"):
        label = ", ".join([*(str(r[k]) for k in by if k in r), f"{r['arm']} − {r['baseline']}"])
        for c in caveat_list(r.get("caveats")):
            where.setdefault(c, []).append(label)
    return [f"{text} ({'all comparisons' if len(w) == len(cmp) and len(cmp) > 1 else '; '.join(w)})"
            for text, w in where.items()]


def design_caveats(runs: pd.DataFrame, *, config: dict[str, Any] | None = None, metric: str = "test_acc",
                   factor: str = "placement", by: Sequence[str] = (), n_seeds: int | None = None,
                   diverged: str = "drop_pair", crossed: bool = False, tuned: bool | None = None) -> list[str]:
    """The limits the design has, from the sweep config and the runs: one caveat (a str) per limit.

    Parameters
    ----------
    runs : pandas.DataFrame
        The runs table (``dataset``, ``n_test``, ``diverged``, ``stage`` are read where present).
    config : dict or None
        The sweep's config (``Results.config``); None or empty for imported runs.
    metric, factor, by
        The analysis: the compared metric, the factor whose levels are the arms, the cell columns.
    n_seeds : int or None
        The smallest number of seeds in a comparison (``compare``'s ``n``); None: not checked.
    diverged : {"drop_pair", "keep"}
        How the comparison counted diverged runs (said in the diverged-runs caveat).
    tuned : bool or None
        Whether the arms' hyperparameters were tuned per arm (a ``[tune]`` sweep); None: whether
        ``runs`` holds tuning runs (``stage == "tune"``, ``stats.evaluation_runs``). Pass it when
        ``runs`` holds the evaluation runs only.
    crossed : bool
        Whether the output this caveat goes into shows the interval over seeds and test examples
        (``stats.compare_crossed``); if not, the caveat says where it is, or that the runs lack the
        per-example results it needs.

    Returns
    -------
    list of str
        In this order, each only where it applies: every arm trained with one setting of the
        hyperparameters (left out when they were tuned per arm), one dataset, one fixed test set (with
        its size), few seeds (fewer than :data:`FEW_SEEDS`), diverged runs (how many, where, and how
        they were counted). Tuning runs are not counted: they are never compared.
    """
    out: list[str] = []
    cfg = config or {}
    try:
        runs, tune_runs = evaluation_runs(runs)
    except ValueError:  # only tuning runs so far: their limits are still the design's
        tune_runs = runs
    if tuned is None:
        tuned = tune_runs is not None and len(tune_runs) > 0
    if not tuned:
        tr, grid = cfg.get("train", {}), cfg.get("grid", {})
        if tr:
            shared = training_text({k: v for k, v in tr.items() if k != factor}, {k: v for k, v in grid.items() if k != factor})
            swept = [k for k in grid if k in tr and k != factor]
            what = (f"Arms differ in {factor} only; every other hyperparameter" if factor in tr
                    else "Every arm was trained with the same hyperparameters")
            text = (f"{what} ({shared}), none tuned per arm: a difference between arms may come from how well this "
                    "one setting suits each arm (a tuning effect), not from the arms themselves")
            if swept:
                text += (f"; {', '.join(swept)} {'varies' if len(swept) == 1 else 'vary'} over the grid as a cell "
                         "factor, each value shared by every arm")
            out.append(text)
        elif not cfg:
            out.append("Imported runs: whether each arm's hyperparameters were tuned for it is not recorded; if every "
                       "arm shares one setting, a difference between arms may be a tuning effect")
    datasets = (sorted(map(str, runs["dataset"].dropna().unique())) if "dataset" in runs.columns
                else [str(cfg["dataset"])] if cfg.get("dataset") else [])
    if len(datasets) == 1:
        out.append(f"One dataset ({datasets[0]}): the differences may not carry over to other data")
    if metric.startswith("test"):
        size = n_test_text(runs)
        bits = BITS_COLUMNS.get(metric, (None,))[0]
        if crossed:
            tail = "the interval over seeds and test examples (section 'The test set') also covers new test data"
        elif bits is None:
            tail = ("no interval here covers the sampling of the test examples (the interval over seeds and test "
                    "examples is computed for accuracies only)")
        elif bits in runs.columns and runs[bits].notna().any():
            tail = ("the interval over seeds and test examples, which also covers new test data, is in the report "
                    "(bnstats report, section 'The test set')")
        else:
            tail = ("no interval covers the sampling of the test examples (per-example results are not stored with "
                    "these runs)")
        out.append(f"One fixed test set{size}: every interval over seeds (headline, How to cite) holds for this test "
                   f"set only; {tail}")
    if n_seeds is not None and 2 <= n_seeds < FEW_SEEDS:
        out.append(f"Only {n_seeds} seeds per comparison (fewer than {FEW_SEEDS}): the intervals are wide, the SD of "
                   "the differences is itself uncertain, and the exact sign-flip test cannot go below "
                   f"p = {min_p(n_seeds, test='signflip'):.2g} (two-sided)")
    if "diverged" in runs.columns:
        div = runs[runs["diverged"].fillna(False).astype(bool)]
        if len(div):
            keys = [k for k in (*by, factor) if k in div.columns]
            per = div.groupby(keys, sort=True, observed=True, dropna=False).size()
            where = "; ".join(f"{', '.join(map(str, k if isinstance(k, tuple) else (k,)))}: {c}" for k, c in per.items())
            how = ("dropped with their pair from the comparison (diverged='drop_pair')" if diverged == "drop_pair"
                   else "kept as recorded, and a pair whose metric is NaN is dropped (diverged='keep')")
            out.append(f"{len(div)} of {len(runs)} runs diverged (non-finite loss), {how}: {where}")
    return out


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
