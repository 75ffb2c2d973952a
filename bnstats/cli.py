"""``bnstats sweep / status / verify / compare / plan / report / import``: each a thin call of one library function.

Bad input (unknown key, bad value, missing or damaged file, an output directory of another config or
that cannot be written) prints one line naming the field or the file and exits with status 2, before
anything is written. Output piped into a reader that stops early (``bnstats status DIR | head``) ends
quietly with status 141 (128 + SIGPIPE, as a program killed by SIGPIPE).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from . import config as config_mod
from .config import ConfigError

EXIT_USAGE = 2


def _sweep(args: argparse.Namespace) -> int:
    from .sweep import dry_run, run_sweep

    overrides = list(args.set) + ([f'launcher.kind="{args.launcher}"'] if args.launcher else [])
    cfg = config_mod.load(args.config, overrides=overrides, seeds=args.seeds)
    out = Path(args.out) if args.out else Path("data/sweeps") / cfg.name
    if args.dry_run:
        print(dry_run(cfg, out, workers=args.workers, device=args.device).text())
        return 0
    summary = run_sweep(cfg, out, workers=args.workers, device=args.device)
    _sweep_result(cfg, out, summary)
    print(out)
    return 0 if summary.ok else 1  # a failed run, or a worker/job that died: run again to finish


def headline_factor(cfg) -> tuple[str, str] | None:
    """The factor and baseline of the end-of-sweep headline: ``compare``'s defaults (placement, before) where
    the grid has them, else the first grid factor with two levels and its first level; None: no such factor."""
    grid = dict(cfg.grid)
    if len(grid.get("placement", ())) >= 2:
        levels = [str(v) for v in grid["placement"]]
        return "placement", "before" if "before" in levels else levels[0]
    for name, values in grid.items():
        if len(values) >= 2:
            return name, str(values[0])
    return None


def _sweep_result(cfg, out: Path, summary) -> None:
    """The end of ``bnstats sweep`` (stdout): the headline comparison, printed by the function that prints
    ``bnstats compare``, and where the report goes."""
    choice = headline_factor(cfg)
    print()
    if choice is None:
        print("No headline: the grid has no factor with two levels to compare.")
    elif summary.missing or summary.running_elsewhere:
        print(f"No headline yet: {summary.missing + summary.running_elsewhere} runs are not stored; once they are, "
              f"`bnstats compare {out}` prints it.")
    else:
        factor, baseline = choice
        flags = "" if (factor, baseline) == ("placement", "before") else f" --factor {factor} --baseline {baseline}"
        print(f"Headline (bnstats compare {out}{flags}):")
        from . import store

        try:
            res = store.load(out)
            print_comparison(res.runs, factor=factor, baseline=baseline, config=res.config)
        except ValueError as e:  # e.g. a single seed: no paired comparison yet
            print(f"(no comparison: {e})")
    print(f"Report: bnstats report {out}   (writes {out / 'report'}/: report.pdf, report.html, tables/, figures/)")


def _status(args: argparse.Namespace) -> int:
    from .status import status_dict, status_table

    if args.json:
        import json

        print(json.dumps(status_dict(args.dir, config_path=args.config), indent=2))
    else:
        print(status_table(args.dir, config_path=args.config))
    return 0


# --- compare / plan / report: thin calls of bnstats.stats and bnstats.report ---------------------------


def _value_errors_are_usage(fn):
    """A ValueError (a bad option or column, named by bnstats.stats or bnstats.importers) or a missing
    optional dependency -> one line on stderr, exit 2."""

    def wrapper(args: argparse.Namespace) -> int:
        from .importers import MissingExtra

        try:
            return fn(args)
        except (ValueError, MissingExtra) as e:
            print(f"bnstats {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
            return EXIT_USAGE

    return wrapper


def _margin(text: str | None):
    """``--margin 0.005`` (symmetric) or ``--margin=-0.003,0.005`` (low,high), in the metric's units."""
    if text is None:
        return None
    try:
        parts = [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--margin: expected a number or LOW,HIGH, got {text!r}") from None
    if len(parts) not in (1, 2):
        raise ValueError(f"--margin: expected a number or LOW,HIGH, got {text!r}")
    return parts[0] if len(parts) == 1 else tuple(parts)


def _by(args: argparse.Namespace) -> list[str] | None:
    by = [b.strip() for item in (args.by or []) for b in item.split(",") if b.strip()]
    return by or None


# --- what compare and plan read: a sweep, an imported store, or a runs file or folder read directly ----


_SWEEP_DEFAULTS = {"metric": "test_acc", "factor": "placement", "baseline": "before"}
_MAPPING_ONLY = ("seed", "init_hash", "order_hash", "mapping")


def _analysis(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The runs, and the ``metric``, ``factor``, ``baseline`` and ``by`` that compare/plan use, and ``config``
    (the sweep's, for the caveats the design implies; None for imported runs).

    A sweep: the flags, else the sweep defaults. An imported store: the flags, else its mapping. Any other
    path is a source read by ``bnstats.importers`` with the mapping flags (``--mapping TOML``, ``--seed``,
    ...), nothing written.
    """
    from . import importers

    path = Path(args.dir)
    if (path / "sweep.json").is_file():
        return _store_analysis(args, path)
    mapping = importers.mapping(
        args.mapping, seed=args.seed, factor=args.factor, metric=args.metric, by=_by(args),
        baseline=args.baseline, init_hash=args.init_hash, order_hash=args.order_hash)
    if args.metric is not None and len(mapping.metric) > 1:
        raise ValueError(f"--metric: {args.command} takes one metric, got {list(mapping.metric)}; run it once per metric")
    if mapping.baseline is None:
        mapping = dataclasses.replace(mapping, baseline=_SWEEP_DEFAULTS["baseline"])
    imp = importers.read(path, mapping)
    m = imp.meta["import"]["mapping"]
    return imp.runs, {"metric": m["metric"][0], "factor": m["factor"], "baseline": m["baseline"], "by": m["by"],
                      "config": None}


def _store_analysis(args: argparse.Namespace, path: Path) -> tuple[Any, dict[str, Any]]:
    from . import importers, store

    given = [f"--{k.replace('_', '-')}" for k in _MAPPING_ONLY if getattr(args, k) is not None]
    if given:
        raise ValueError(f"{', '.join(given)}: for a runs file or folder; {str(path)!r} is a store, read with the "
                         "mapping it was made with")
    res = store.load(path)
    runs = res.runs
    if not len(runs):
        raise ValueError(f"DIR: {str(path)!r} holds no finished runs yet")
    if not importers.is_imported(res.meta):
        return runs, {k: getattr(args, k) or v for k, v in _SWEEP_DEFAULTS.items()} | {"by": _by(args),
                                                                                        "config": res.config}
    m = importers.stored_mapping(res.meta)
    metric = args.metric or m.metric[0]
    factor = args.factor or m.factor
    importers.check_metric(runs, metric)
    text = args.baseline or m.baseline or _SWEEP_DEFAULTS["baseline"]
    baseline = importers.level_of(runs, factor, text) if factor in runs else text
    return runs, {"metric": metric, "factor": factor, "baseline": baseline, "by": _by(args) or list(m.by),
                  "config": None}


def _stored_runs(path: str):
    """The runs of the store ``path``; one line (ValueError, or StoreError naming a damaged file) if none."""
    from . import store

    runs = store.load(path).runs
    if not len(runs):
        raise ValueError(f"DIR: {path!r} holds no finished runs yet")
    return runs


def _numeric_metric(runs, metric: str) -> None:
    """``--metric`` must name a numeric (not boolean) column of the runs table; the error lists them."""
    import pandas as pd

    def numeric(c: str) -> bool:
        return pd.api.types.is_numeric_dtype(runs[c]) and not pd.api.types.is_bool_dtype(runs[c])

    if metric not in runs.columns or not numeric(metric):
        allowed = ", ".join(c for c in runs.columns if numeric(c) and c != "seed")
        what = "is not a column of the runs table" if metric not in runs.columns else \
            f"is not numeric (dtype {runs[metric].dtype})"
        raise ValueError(f"--metric: {metric!r} {what}; numeric columns: {allowed}")


def _write_csv(table, csv: str | None) -> None:
    """``--csv FILE``: the whole frame with every digit (pandas writes the shortest repr that round-trips)."""
    if csv:
        table.to_csv(csv, index=False)


MIXED_COLUMNS = ["factor", "arm", "baseline", "other", "level", "reference", "estimate", "ci_low", "ci_high", "p",
                 "p_adj", "n_seeds", "converged"]


def print_comparison(runs, *, metric: str = "test_acc", factor: str = "placement", baseline: str = "before",
                     by: list[str] | None = None, margin=None, confidence_level: float = 0.95, p_adjust: str = "holm",
                     diverged: str = "drop_pair", rng: int | None = None, csv: str | None = None,
                     config: dict | None = None) -> None:
    """Print ``stats.compare`` as the report reads it (what ``bnstats compare`` and the end of ``bnstats sweep``
    print: ``bnstats.report.compare_text``, with the caveats of the design, from ``config``, the sweep's;
    None for imported runs); ``csv``: also write the full table, unrounded."""
    from . import stats
    from .report import compare_text

    table = stats.compare(
        runs, metric=metric, factor=factor, baseline=baseline, by=by, margin=margin,
        confidence_level=confidence_level, p_adjust=p_adjust, diverged=diverged,
        nan_policy="omit" if diverged == "keep" else "raise", rng=rng)
    _write_csv(table, csv)
    print(compare_text(table, runs=runs, config=config, diverged=diverged))


@_value_errors_are_usage
def _compare(args: argparse.Namespace) -> int:
    if args.model == "mixed":
        return _compare_mixed(args)
    if args.interaction:
        raise ValueError("--interaction: only with --model mixed")
    runs, a = _analysis(args)
    _numeric_metric(runs, a["metric"])
    print_comparison(
        runs, metric=a["metric"], factor=a["factor"], baseline=a["baseline"], by=a["by"],
        margin=_margin(args.margin), confidence_level=args.confidence_level, p_adjust=args.p_adjust,
        diverged=args.diverged, rng=args.rng, csv=args.csv, config=a["config"])
    return 0


def _compare_mixed(args: argparse.Namespace) -> int:
    """``compare --model mixed``: the interaction of --factor with each other grid factor (a mixed model with a
    random intercept per seed per cell of the rest; bnstats.report.factorial.interaction_table)."""
    from .report.factorial import interaction_table

    for flag, value, default in (("--margin", args.margin, None), ("--by", args.by, None), ("--rng", args.rng, None),
                                 ("--diverged", args.diverged, "drop_pair")):
        if value != default:
            raise ValueError(f"{flag}: not used by --model mixed (its cells are the factors not crossed; "
                             "runs with a non-finite metric are left out)")
    runs, a = _analysis(args)  # a sweep, an imported store, or a runs file or folder
    _numeric_metric(runs, a["metric"])
    factors = list(runs.attrs.get("factors") or [a["factor"], *(a["by"] or [])])
    meta = Path(args.dir) / "sweep.json"
    levels = json.loads(meta.read_text()).get("config", {}).get("grid", {}) if meta.is_file() else None
    others = [g.strip() for item in (args.interaction or []) for g in item.split(",") if g.strip()] or None
    table = interaction_table(runs, metric=a["metric"], factor=a["factor"], baseline=a["baseline"],
                              factors=factors, others=others, levels=levels,
                              confidence_level=args.confidence_level, p_adjust=args.p_adjust)
    if table.empty:
        raise ValueError(f"--model mixed: no other factor with two levels to cross with {a['factor']!r} "
                         f"(factors: {factors})")
    if args.csv:
        table.to_csv(args.csv, index=False)
    from .report import format_for_reading
    from .report.text import MetricDisplay

    cells = list(table.columns[: list(table.columns).index("factor")])
    # Read as `compare` prints: an accuracy's difference in pp, its unit in the column names (the CSV keeps the
    # store's fractions, unrounded).
    disp = MetricDisplay.of(a["metric"])
    shown = table[[*cells, *MIXED_COLUMNS]].copy()
    for c in ("estimate", "ci_low", "ci_high"):
        shown[c] = shown[c] * disp.scale
    shown = shown.rename(columns={c: disp.with_unit(c, diff=True) for c in ("estimate", "ci_low", "ci_high")})
    print(f"Interaction: {a['metric']} ~ {a['factor']} × other factor, random intercept per seed (REML), per cell; "
          f"estimate = (arm − {a['baseline']} at level) − (arm − {a['baseline']} at reference)"
          f"{f' in {disp.diff_unit}' if disp.diff_unit else ''}, Wald {args.confidence_level:g} CI, "
          f"p_adj {args.p_adjust}")
    print(format_for_reading(shown, digits=disp.digits))
    warned = sorted({w for w in table["warnings"] if w})
    for w in warned:
        print(f"statsmodels: {w}")
    return 0


@_value_errors_are_usage
def _plan(args: argparse.Namespace) -> int:
    from . import stats
    from .report import plan_text

    if args.effect is None and args.halfwidth is None:
        raise ValueError("plan needs --effect (for --power) or --halfwidth (CI half-width), or both")
    runs, a = _analysis(args)
    _numeric_metric(runs, a["metric"])
    table = stats.plan(
        runs, metric=a["metric"], factor=a["factor"], baseline=a["baseline"], by=a["by"], effect=args.effect,
        halfwidth=args.halfwidth, power=args.power, alpha=args.alpha, nan_policy=args.nan_policy)
    _write_csv(table, args.csv)
    print(plan_text(table))
    return 0


@_value_errors_are_usage
def _report(args: argparse.Namespace) -> int:
    import papermill

    from .report import parse_sets, render

    params = parse_sets(args.set)
    _stored_runs(args.dir)  # a store without runs, or with a damaged file: one line, before anything is written
    try:
        out = render(args.dir, args.out, parameters=params, log=not args.quiet)
    except papermill.PapermillExecutionError as e:
        nb = Path(args.out) if args.out else Path(args.dir) / "report"
        print(f"bnstats report: error: the report notebook failed in cell {e.cell_index}: {e.ename}: {e.evalue} "
              f"(traceback in {nb / 'report.ipynb'})", file=sys.stderr)
        return 1
    print(out)
    return 0


def _add_stats_parsers(sub) -> None:
    """The ``compare``, ``plan`` and ``report`` subcommands."""

    def common(q):
        q.add_argument("--metric", help="metric column (default: test_acc, a fraction; an imported store: its first "
                                        "mapped metric)")
        q.add_argument("--factor", help="the factor whose levels are the arms (default: placement, or the mapping's)")
        q.add_argument("--baseline", help="the arm every other arm is compared with (default: before, or the mapping's)")
        q.add_argument("--by", action="append", metavar="COL[,COL]",
                       help="columns defining a cell (default: every grid factor except --factor; an imported "
                            "store or a runs file: the mapping's, else none)")
        q.add_argument("--csv", metavar="FILE", help="also write the full table, unrounded, as CSV")
        _add_mapping_flags(q, extra=False)

    c = sub.add_parser("compare", help="paired comparison of every arm with the baseline, per cell (stats.compare)")
    c.add_argument("dir", metavar="DIR|FILE", help="sweep or imported store, or a runs file or folder (CSV, Parquet, "
                                                    "JSON lines, W&B runs, TensorBoard logs; see `bnstats import`)")
    common(c)
    c.add_argument("--margin", metavar="M|LOW,HIGH",
                   help="equivalence margin in the metric's units (0.005 = 0.5 pp of accuracy); enables TOST")
    c.add_argument("--confidence-level", type=float, default=0.95, help="of every interval (default 0.95)")
    c.add_argument("--p-adjust", default="holm", help="holm | bh | bonferroni (default holm)")
    c.add_argument("--diverged", default="drop_pair",
                   help="drop_pair (default: drop seeds where either arm diverged) | keep")
    c.add_argument("--rng", type=int, default=None, help="seed of the bootstrap and permutations (default: fixed)")
    c.add_argument("--model", choices=("paired", "mixed"), default="paired",
                   help="paired (default): stats.compare per cell; mixed: the interaction of --factor with each "
                        "other grid factor, a mixed model with a random intercept per seed (stats.mixed)")
    c.add_argument("--interaction", action="append", metavar="COL[,COL]",
                   help="--model mixed: the factor(s) to cross with --factor (default: every other grid factor "
                        "with two levels)")
    c.set_defaults(func=_compare)

    pl = sub.add_parser("plan", help="seeds each comparison needs, from a pilot sweep (stats.plan)")
    pl.add_argument("dir", metavar="DIR|FILE", help="pilot sweep or imported store, or a runs file or folder")
    common(pl)
    pl.add_argument("--effect", type=float, help="mean difference to detect, in the metric's units (0.002 = 0.2 pp)")
    pl.add_argument("--power", type=float, default=0.8, help="target power for --effect (default 0.8)")
    pl.add_argument("--halfwidth", type=float, help="target half-width of the CI, in the metric's units")
    pl.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    pl.add_argument("--nan-policy", default="raise", help="raise (default) | omit: pairs with a NaN metric")
    pl.set_defaults(func=_plan)

    r = sub.add_parser("report", help="render the HTML + PDF report of a sweep (papermill notebook)")
    r.add_argument("dir", metavar="SWEEP_DIR", nargs="?", default="data/reference/placement-mnist1d",
                   help="sweep directory (default: the shipped reference study, data/reference/placement-mnist1d)")
    r.add_argument("--out", help="output folder (default: SWEEP_DIR/report)")
    r.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a notebook parameter (metric, factor, baseline, confidence_level, margin, p_adjust, "
                        "diverged, n_resamples, rng, title, moments), e.g. --set margin=0.005 (repeatable)")
    r.add_argument("--quiet", action="store_true", help="do not print the render time")
    r.set_defaults(func=_report)


# --- import: runs trained anywhere -> a store that compare, plan and status read --------------------


def _add_mapping_flags(q, *, extra: bool) -> None:
    """The column mapping of a runs file or folder (``extra``: also --factor/--metric/--by/--baseline)."""
    if extra:
        q.add_argument("--factor", metavar="COL", help="column whose levels are the arms (default: placement)")
        q.add_argument("--metric", action="append", metavar="COL[,COL]",
                       help="metric column(s), numeric, kept in the source's units (default: test_acc)")
        q.add_argument("--by", action="append", metavar="COL[,COL]", help="columns defining a cell (default: none)")
        q.add_argument("--baseline", metavar="LEVEL", help="the arm every other arm is compared with")
    q.add_argument("--seed", metavar="COL", help="runs file or folder: the seed column, the unit of pairing "
                                                 "(default: seed)")
    q.add_argument("--init-hash", metavar="COL", help="runs file or folder: column with a hash of each run's "
                                                      "initial weights (checked across the arms of a seed)")
    q.add_argument("--order-hash", metavar="COL", help="runs file or folder: column with a hash of each run's "
                                                       "data order (checked across the arms of a seed)")
    q.add_argument("--mapping", metavar="TOML", help="runs file or folder: a TOML file whose [import] section maps "
                                                     "the columns (keys as these flags: seed, factor, metric, by, "
                                                     "baseline, init_hash, order_hash); flags override it")


@_value_errors_are_usage
def _import(args: argparse.Namespace) -> int:
    from . import importers

    metric = [x for item in (args.metric or []) for x in item.split(",") if x.strip()] or None
    mapping = importers.mapping(
        args.mapping, seed=args.seed, factor=args.factor, metric=metric, by=_by(args), baseline=args.baseline,
        init_hash=args.init_hash, order_hash=args.order_hash)
    imp = importers.read(args.src, mapping)
    written = importers.write_store(imp, args.out)
    print(args.out)
    print(importers.describe(imp) if written
          else "already imported: the directory holds this source (same sha256) with this mapping; nothing written")
    return 0


def _add_import_parser(sub) -> None:
    i = sub.add_parser("import", help="store runs trained anywhere (CSV, Parquet, JSON lines, W&B, TensorBoard) "
                                      "for compare, plan and status")
    i.add_argument("src", metavar="SRC", help="a .csv, .parquet or .jsonl file (one row per run; the W&B UI's runs "
                                              "export too), a W&B folder (wandb/ or a run-*/ folder, offline runs "
                                              "included) or a folder of TensorBoard event files (one run per folder)")
    i.add_argument("--out", required=True, help="the store to create (refused if it holds anything else)")
    _add_mapping_flags(i, extra=True)
    i.set_defaults(func=_import)


# --- verify: the store's self-check ---------------------------------------------------------------


def _verify(args: argparse.Namespace) -> int:
    """Exit 0 if the store is whole (after repairing, with --repair), 1 if anything is wrong."""
    from .store import verify

    result = verify(args.dir, repair=args.repair)
    for line in result.repaired:
        print(f"repaired {line}")
    for p in result.problems:
        print(f"{p}" + (f" [--repair: {p.repair}]" if p.repair and not args.repair else ""))
    print(result.summary())
    return 0 if result.ok else 1


def _add_verify_parser(sub) -> None:
    v = sub.add_parser("verify", help="check a sweep directory against the store's invariants (and --repair)")
    v.add_argument("dir", metavar="DIR", help="sweep directory")
    v.add_argument("--repair", action="store_true",
                   help="move damaged units and tables, runs of another config and stray rows to DIR/quarantine/ "
                        "(tables rebuilt from what remains; moved runs train again on the next sweep), drop "
                        "duplicate rows, delete leftovers of dead writers; then check again")
    v.set_defaults(func=_verify)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bnstats", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sweep", help="train a seeded, paired sweep and store every run")
    s.add_argument("config", nargs="?", help="sweep TOML (default: the embedded MNIST-1D placement sweep)")
    s.add_argument("--out", help="sweep directory (default: data/sweeps/<name>)")
    s.add_argument("--seeds", type=int, help="use seeds 0..N-1 instead of the config's seeds")
    s.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (TOML syntax), e.g. --set train.epochs=5 (repeatable)")
    s.add_argument("--workers", type=int, help="worker processes (default: [launcher] workers, else one per core/GPU)")
    s.add_argument("--device", default="auto",
                   help="auto | cpu | cuda | cuda:N (auto picks CUDA where the worker sees a GPU)")
    s.add_argument("--launcher", choices=("local", "submitit"),
                   help="local worker processes, or Slurm through submitit (shortcut for "
                        "--set launcher.kind=...; other [launcher] keys via --set launcher.KEY=VALUE)")
    s.add_argument("--dry-run", action="store_true",
                   help="print the cells, the runs still to train, an estimated time and the output folder; "
                        "train and write nothing")
    s.set_defaults(func=_sweep)

    st = sub.add_parser("status", help="runs done, running, failed and missing, per cell")
    st.add_argument("dir", help="sweep directory")
    st.add_argument("--config", help="count missing runs against this config (default: the stored one)")
    st.add_argument("--json", action="store_true", help="print counts, failures and running runs as JSON")
    st.set_defaults(func=_status)
    _add_verify_parser(sub)
    _add_stats_parsers(sub)
    _add_import_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from .store import StoreError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # inside the try: a reader that went away is found here, not at exit
        return code
    except BrokenPipeError:
        return _reader_gone()
    except (ConfigError, FileNotFoundError, StoreError) as e:
        print(f"bnstats {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; finished runs are stored, run the same command again to resume", file=sys.stderr)
        return 130


def _reader_gone() -> int:
    """stdout's reader stopped reading (``| head``): drop what is left to print, quietly.

    Python ignores SIGPIPE and raises BrokenPipeError instead; the buffered rest would raise again at
    exit, so stdout is pointed at /dev/null first (the recipe of Python's ``signal`` documentation).
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
