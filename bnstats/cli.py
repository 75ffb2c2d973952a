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

    cfg = config_mod.load(args.config, overrides=args.set, seeds=args.seeds)
    out = Path(args.out) if args.out else Path("data/sweeps") / cfg.name
    summary = run_sweep(cfg, out, workers=args.workers, device=args.device)
    print(out)
    return 1 if summary.failed else 0


def _status(args: argparse.Namespace) -> int:
    from .status import status_table

    print(status_table(args.dir, config_path=args.config))
    return 0


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
    s.add_argument("--device", default="auto", help="auto | cpu | cuda (auto picks CUDA when present)")
    s.set_defaults(func=_sweep)

    st = sub.add_parser("status", help="runs done, running, failed and missing, per cell")
    st.add_argument("dir", help="sweep directory")
    st.add_argument("--config", help="count missing runs against this config (default: the stored one)")
    st.set_defaults(func=_status)
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
