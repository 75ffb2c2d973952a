"""Sessions: sweep (the main job), tests, slow, lint, report, bench.

    nox -s sweep                      # embedded MNIST-1D placement sweep on CPU, then its report
    nox -s sweep -- my.toml --seeds 30 --device cuda
    nox -s tests                      # the test suite (what CI runs)

Each session installs the project into its own virtualenv (torch first, see ``install``).
"""

from __future__ import annotations

import os
import shutil

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.default_venv_backend = "venv"
nox.options.download_python = "never"  # use the interpreter nox runs under; never fetch one
nox.options.reuse_venv = "yes"         # a second `nox -s sweep` starts at once


def has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None


def torch_requirement() -> str:
    """CPU build where there is no GPU, the default (CUDA) build where there is one.

    ``torch==2.13.0`` resolves to a local CPU wheel on our machines (pip's find-links); elsewhere set
    ``PIP_EXTRA_INDEX_URL`` to PyTorch's CPU index to avoid the CUDA download. ``BNSTATS_TORCH``
    overrides the requirement (e.g. ``BNSTATS_TORCH="torch==2.11.*"``).
    """
    if "BNSTATS_TORCH" in os.environ:
        return os.environ["BNSTATS_TORCH"]
    return "torch>=2.4" if has_gpu() else "torch==2.13.0"


def install(session: nox.Session, extras: str = "") -> None:
    session.install(torch_requirement())
    session.install("-e", f".[{extras}]" if extras else ".")


@nox.session
def sweep(session: nox.Session) -> None:
    """Train a sweep (arguments go to `bnstats sweep`), then render its report."""
    install(session)
    session.run("bnstats", "sweep", *session.posargs)
    out = session.run("python", "-c", SWEEP_OUT, *session.posargs, silent=True).strip().splitlines()[-1]
    session.run("bnstats", "report", out)


# The directory `bnstats sweep ARGS` writes to: its --out, else data/sweeps/<config name>.
SWEEP_OUT = (
    "import sys; from pathlib import Path; from bnstats import cli, config; "
    "a = cli.build_parser().parse_args(['sweep', *sys.argv[1:]]); "
    "print(a.out or Path('data/sweeps') / config.load(a.config, overrides=a.set, seeds=a.seeds).name)"
)


@nox.session
def report(session: nox.Session) -> None:
    """Render a sweep's report: HTML, PDF, tables, figures (arguments go to `bnstats report`)."""
    install(session)
    session.run("bnstats", "report", *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite: everything but the slow simulations (`nox -s slow`)."""
    install(session, "test")
    session.run("pytest", "-m", "not slow", *session.posargs, env={"OMP_NUM_THREADS": "1"})


@nox.session
def slow(session: nox.Session) -> None:
    """Coverage and type-I error simulations, the default sweep end to end."""
    install(session, "test")
    session.run("pytest", "-m", "slow", "-s", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Throughput: bnstats engine vs a per-seed DataLoader loop (args go to `python benchmarks/bench_cpu.py`).

    Two versions of the code in one invocation: ``nox -s bench -- --ref main --cases single --no-sweep
    --rounds 20`` also runs the cases with main's bnstats and reports current / ref with 95% intervals.

    ``nox -s bench -- scale [ARGS]`` runs ``benchmarks/bench_scale.py`` instead: load, compare and report
    on synthetic stores of 10^3 to 10^5 runs, time and peak memory (see benchmarks/README.md).
    """
    install(session)
    script, args = "benchmarks/bench_cpu.py", list(session.posargs)
    if args[:1] == ["scale"]:
        script, args = "benchmarks/bench_scale.py", args[1:]
    session.run("python", script, *args, env={"OMP_NUM_THREADS": "1"})


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", "bnstats", "tests", "benchmarks", "noxfile.py")
