"""``bnstats sweep / status / compare / plan / report``: each a thin call of one library function.

Bad input (unknown key, bad value, missing file, an output directory of another config) prints one
line naming the field and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import config as config_mod
from .config import ConfigError

EXIT_USAGE = 2


def _sweep(args: argparse.Namespace) -> int:
    from .sweep import run_sweep

    overrides = list(args.set) + ([f'launcher.kind="{args.launcher}"'] if args.launcher else [])
    cfg = config_mod.load(args.config, overrides=overrides, seeds=args.seeds)
    out = Path(args.out) if args.out else Path("data/sweeps") / cfg.name
    summary = run_sweep(cfg, out, workers=args.workers, device=args.device)
    print(out)
    return 0 if summary.ok else 1  # a failed run, or a worker/job that died: run again to finish


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
    """A ValueError (a bad option or column, named by bnstats.stats) -> one line on stderr, exit 2."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except ValueError as e:
            print(f"bnstats {args.command}: error: {e}", file=sys.stderr)
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


def _loaded_runs(path: str):
    from . import store

    runs = store.load(path).runs
    if not len(runs):
        raise ValueError(f"DIR: {path!r} holds no finished runs yet")
    return runs


def _by(args: argparse.Namespace) -> list[str] | None:
    by = [b.strip() for item in (args.by or []) for b in item.split(",") if b.strip()]
    return by or None


def _print_table(table, columns: list[str], csv: str | None) -> None:
    from .report import format_for_reading

    if csv:
        table.to_csv(csv, index=False)
    by = list(table.columns[: list(table.columns).index("factor")])
    print(format_for_reading(table[[*by, *[c for c in columns if c in table]]]))


@_value_errors_are_usage
def _compare(args: argparse.Namespace) -> int:
    from . import stats

    table = stats.compare(
        _loaded_runs(args.dir), metric=args.metric, factor=args.factor, baseline=args.baseline, by=_by(args),
        margin=_margin(args.margin), confidence_level=args.confidence_level, p_adjust=args.p_adjust,
        diverged=args.diverged, nan_policy="omit" if args.diverged == "keep" else "raise", rng=args.rng)
    _print_table(table, ["arm", "baseline", "n", "estimate", "ci_low", "ci_high", "boot_ci_low", "boot_ci_high",
                         "d_z", "p", "p_adj", "verdict"], args.csv)
    return 0


@_value_errors_are_usage
def _plan(args: argparse.Namespace) -> int:
    from . import stats

    if args.effect is None and args.halfwidth is None:
        raise ValueError("plan needs --effect (for --power) or --halfwidth (CI half-width), or both")
    table = stats.plan(
        _loaded_runs(args.dir), metric=args.metric, factor=args.factor, baseline=args.baseline, by=_by(args),
        effect=args.effect, halfwidth=args.halfwidth, power=args.power, alpha=args.alpha,
        nan_policy=args.nan_policy)
    _print_table(table, ["arm", "baseline", "n_pilot", "estimate", "sd_diff", "d_z", "seeds_for_power",
                         "seeds_for_halfwidth", "n_planned", "caveats"], args.csv)
    return 0


@_value_errors_are_usage
def _report(args: argparse.Namespace) -> int:
    import papermill

    from .report import parse_sets, render

    params = parse_sets(args.set)
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
        q.add_argument("--metric", default="test_acc", help="metric column (default: test_acc, a fraction)")
        q.add_argument("--factor", default="placement", help="the factor whose levels are the arms (default: placement)")
        q.add_argument("--baseline", default="before", help="the arm every other arm is compared with (default: before)")
        q.add_argument("--by", action="append", metavar="COL[,COL]",
                       help="columns defining a cell (default: every grid factor except --factor)")
        q.add_argument("--csv", metavar="FILE", help="also write the full table, unrounded, as CSV")

    c = sub.add_parser("compare", help="paired comparison of every arm with the baseline, per cell (stats.compare)")
    c.add_argument("dir", metavar="DIR", help="sweep directory")
    common(c)
    c.add_argument("--margin", metavar="M|LOW,HIGH",
                   help="equivalence margin in the metric's units (0.005 = 0.5 pp of accuracy); enables TOST")
    c.add_argument("--confidence-level", type=float, default=0.95, help="of every interval (default 0.95)")
    c.add_argument("--p-adjust", default="holm", help="holm | bh | bonferroni (default holm)")
    c.add_argument("--diverged", default="drop_pair",
                   help="drop_pair (default: drop seeds where either arm diverged) | keep")
    c.add_argument("--rng", type=int, default=None, help="seed of the bootstrap and permutations (default: fixed)")
    c.set_defaults(func=_compare)

    pl = sub.add_parser("plan", help="seeds each comparison needs, from a pilot sweep (stats.plan)")
    pl.add_argument("dir", metavar="DIR", help="pilot sweep directory")
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
                        "diverged, n_resamples, rng, title), e.g. --set margin=0.005 (repeatable)")
    r.add_argument("--quiet", action="store_true", help="do not print the render time")
    r.set_defaults(func=_report)


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
    s.set_defaults(func=_sweep)

    st = sub.add_parser("status", help="runs done, running, failed and missing, per cell")
    st.add_argument("dir", help="sweep directory")
    st.add_argument("--config", help="count missing runs against this config (default: the stored one)")
    st.add_argument("--json", action="store_true", help="print counts, failures and running runs as JSON")
    st.set_defaults(func=_status)
    _add_stats_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError) as e:
        print(f"bnstats {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; finished runs are stored, run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
