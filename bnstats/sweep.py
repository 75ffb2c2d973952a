"""Plan → submit → skip what is done. The launcher is any ``concurrent.futures``-style executor.

``run_sweep`` expands the config into runs, drops those already in the store (or being trained by a
live process), packs the rest into tasks and hands them to an executor: the built-in local process
pool, submitit (Slurm job arrays), or anything with ``submit(fn, task) -> future`` (Dask, Ray, ...);
see :mod:`bnstats.launch`. Each task trains its runs and commits each to the store itself, so results
survive whatever happens to the launcher, and a run that raises is recorded as failed without stopping
the others. A worker or job that dies leaves its runs missing: the next launch trains them.

While tasks run, :class:`Progress` shows runs done / running / failed, elapsed time and an ETA
(:class:`Eta`: a model of the pool fed with each arch's measured run times). Each stored run is also fed
to the ``[log]`` sinks (:mod:`bnstats.sinks`) by the worker that stored it. :func:`dry_run` says what a
launch would train, where and for how long, writing nothing.

A sweep with a ``[tune]`` section trains in two stages, tuning then evaluation, planned and decided by
:mod:`bnstats.tune`: its tasks are submitted together, and an evaluation task decides its arm's values
from the stored tuning runs when it runs (``Task.tune``), so an arm's evaluation starts when its own
tuning is complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import json
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import cpu
from .config import ConfigError, RunConfig, SweepConfig
from .launch import (  # noqa: F401 - re-exported: sweep.InlineExecutor etc. are public
    InlineExecutor,
    as_completed,
    default_workers,
    is_submitit,
    local_executor,
    submit_all,
    submitit_executor,
)
from .sinks import feed, open_sinks
from .store import Store, git_commit


@dataclass(frozen=True)
class Task:
    """A unit of submission: runs trained one after another by one worker, or (``stack``) the seeds of
    one arm trained together as one stacked model (:mod:`bnstats.engine`).

    Plain data (picklable by value), so any executor can ship it to another process or machine.
    """

    store: str
    runs: tuple[dict[str, Any], ...]
    device: str = "auto"        # resolved in the worker ("auto": CUDA where the worker sees a GPU)
    git_commit: str = ""
    threads: int = 0            # torch threads in the worker (0: leave the process's setting)
    stack: bool = False         # train the runs (seeds of one arm) as one stacked model
    engine: dict[str, Any] = field(default_factory=dict)  # precision, deterministic, compile
    sweep_identity: str = ""    # written into each run row (store.Store.write); "" = read sweep.json
    sinks: dict[str, dict[str, Any]] = field(default_factory=dict)  # [log] sinks fed after each store (sinks.sink_specs)
    tune: dict[str, Any] = field(default_factory=dict)  # [tune] sweeps: the stage and its columns (bnstats.tune)


@dataclass
class SweepSummary:
    planned: int
    already_done: int
    trained: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)   # (run_id, error)
    repaired: list[str] = field(default_factory=list)  # damaged units/tables moved to quarantine/, one line each
    skipped: int = 0            # claimed by another live process, or stored by another writer meanwhile
    running_elsewhere: int = 0  # at the end: not stored, but claimed by another live process
    missing: int = 0            # at the end: not stored and not running anywhere (failed ones included)
    errors: list[str] = field(default_factory=list)  # workers or jobs that died, taking their runs along
    wall_time_s: float = 0.0
    sink_errors: dict[str, str] = field(default_factory=dict)  # [log] sink -> its first error (runs stored regardless)

    @property
    def ok(self) -> bool:
        """Every planned run is stored or being trained by another live process; nothing died."""
        return not self.failed and not self.missing and not self.errors


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` if torch sees a GPU, else ``cpu``; checks that a CUDA request can be met."""
    check_device_name(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device: {device!r} requested but torch sees no CUDA device")
    return device


def check_device_name(device: str) -> str:
    """Validate the spelling only (for devices resolved later, on the machine that trains)."""
    if device not in ("auto", "cpu", "cuda") and not (
            device.startswith("cuda:") and device[5:].isdigit()):
        raise ConfigError(f"--device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return device


def execute_task(task: Task) -> list[dict[str, Any]]:
    """Train the runs of a task (in whatever process the executor chose) and commit each to the store.

    Returns one status dict per run: ``{"run_id", "status": "trained"|"skipped"|"failed", ...}``; a
    trained run's also carries ``seconds`` (this process's time for it, from claim to stored and logged:
    what the launcher's ETA learns from), ``cold`` (the first run of this process) and ``sink_errors``
    (``{sink: error}``, usually empty).
    A run that raises is recorded in the store as failed and the task goes on with the next run.
    Each stored run is then fed to the task's ``[log]`` sinks (:mod:`bnstats.sinks`); a sink that fails
    is reported in the status and fed no further runs of this task, and the run stays stored.
    """
    from .train import train_runs  # imported here: the launcher process need not import the model code

    global _process_runs

    if task.tune.get("defer"):  # an evaluation task whose arm was not decided when it was planned
        from .tune import execute_deferred

        return execute_deferred(task, execute_task)
    engine = dict(task.engine)
    cpu.apply(engine.pop("cpu_isa", "avx2"))  # before this process's first torch op (bnstats/cpu.py)
    if task.threads:
        torch.set_num_threads(task.threads)
    store = Store(task.store, identity_hash=task.sweep_identity or None)
    device = resolve_device(task.device)
    runs = [RunConfig.from_dict(raw) for raw in task.runs]
    if task.stack:  # claim the arm's seeds, train those claimed together; the others are someone else's
        claimed = [r for r in runs if store.claim(r.run_id)]
        out = [{"run_id": r.run_id, "status": "skipped"} for r in runs if r not in claimed]
        groups = [claimed] if claimed else []
    else:  # one at a time, each claimed just before it trains
        out, groups = [], [[r] for r in runs]
    log_to = open_sinks(task.sinks)
    for group in groups:
        if not task.stack and not store.claim(group[0].run_id):
            out.append({"run_id": group[0].run_id, "status": "skipped"})
            continue
        ids = [r.run_id for r in group]
        stop = threading.Event()
        beat = threading.Thread(target=_heartbeat, args=(store, ids, stop), daemon=True)
        beat.start()
        written: set[str] = set()
        t0, cold = time.perf_counter(), _process_runs == 0
        try:
            results = train_runs(group, device, stack=task.stack, git_commit=task.git_commit, **engine)
            by_id = {r.run_id: r for r in group}
            for run, result in zip(group, results, strict=True):
                result.run.update(_stage_columns(task, run))
                stored = store.write(result)
                written.add(result.run["run_id"])
                status = {"run_id": result.run["run_id"], "status": "trained" if stored else "skipped",
                          "test_acc": result.run["test_acc"], "wall_time_s": result.run["wall_time_s"]}
                if stored:  # stored first, then logged: a sink cannot lose a run (bnstats/sinks.py)
                    status["sink_errors"] = feed(log_to, result, by_id[result.run["run_id"]]).errors
                out.append(status)
            # a stack's seeds train together: each costs its share of the stack's time
            share = (time.perf_counter() - t0) / max(1, len(group))
            for status in out[-len(results):] if results else []:
                status["seconds"], status["cold"] = share, cold
        except Exception as exc:  # recorded, retried on the next launch; never stops the sweep
            for run in group:  # a stack that raises takes its seeds not yet stored with it
                if run.run_id not in written:
                    store.record_failure(run, exc)
                    out.append({"run_id": run.run_id, "status": "failed",
                                "error": f"{type(exc).__name__}: {exc}"})
        finally:
            stop.set()
            for run_id in ids:
                store.release(run_id)
            _process_runs += len(group)
    return out


# Runs this process has trained: its first pays for the process's first kernels and reads (class Eta).
_process_runs = 0


def _stage_columns(task: Task, run: RunConfig) -> dict[str, Any]:
    """``stage`` and the tuned values a [tune] sweep's run row records (bnstats.tune); none otherwise."""
    if not task.tune:
        return {}
    from .tune import row_columns

    return row_columns(task.tune, run)


def _heartbeat(store: Store, run_ids: list[str], stop: threading.Event, every_s: float = 30.0) -> None:
    while not stop.wait(every_s):
        for run_id in run_ids:
            store.heartbeat(run_id)


# ---------------------------------------------------------------------------------------------------


def _completed(executor: Any, tasks: list[Task], log: Callable[[str], None]) -> Iterator[tuple[int, Any]]:
    """``(task index, finished future)`` as the tasks finish.

    An :class:`InlineExecutor` trains a task when it is submitted, so its tasks are submitted one at a
    time here: the progress moves after each (``--workers 1`` on a CPU trains in this process).
    """
    if isinstance(executor, InlineExecutor):
        for i, task in enumerate(tasks):
            yield i, executor.submit(execute_task, task)
        return
    futures = submit_all(executor, execute_task, tasks)
    index_of = {id(f): i for i, f in enumerate(futures)}
    if is_submitit(executor) and futures:
        log(f"submitted job {str(getattr(futures[0], 'job_id', '?')).split('_')[0]}: logs in "
            f"{executor.folder}; Ctrl-C leaves the jobs running (they store their runs themselves)")
    for fut in as_completed(futures):
        yield index_of[id(fut)], fut


def check_sinks(log: Any) -> None:
    """``[log]`` sinks whose package is missing: a ConfigError naming the extra (bnstats/sinks.py)."""
    from . import sinks

    sinks.check(log)


def _prepared_sinks(config: SweepConfig, out: str | Path, summary: SweepSummary,
                    log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """The ``[log]`` sinks' specs for the tasks, set up once here; one that cannot be set up is reported
    once and left out of this launch (the runs still train and are stored)."""
    from . import sinks

    specs = sinks.sink_specs(config.log, out, config.name)
    if not specs:
        return specs
    for sink, err in sinks.prepare(specs).items():
        summary.sink_errors[sink] = err
        log(f"log.{sink}: cannot log to it ({err}); the runs train and are stored without it")
        specs.pop(sink)
    for line in sinks.where(specs):
        log(f"logging each stored run to {line}")
    return specs


def _slots(executor: Any, own: bool, lc: Any, workers: int | None, n_tasks: int) -> int | None:
    """How many tasks run at once, for the ETA (None: unknown, the ETA estimates it)."""
    if isinstance(executor, InlineExecutor):
        return 1
    if own and lc.kind == "local":
        return workers
    if own:  # submitit: a Slurm array runs at most array_parallelism tasks at once
        return min(lc.array_parallelism, n_tasks)
    return getattr(executor, "_max_workers", None)  # concurrent.futures pools; None for others


# A sweep plans every run in memory (its config, its run_id: a hash, its task) before it submits them
# all: 0.33 ms and 2.4 kB per run measured (60,000 runs: 20 s and 146 MB, on 2 cores shared with other
# jobs; 1.2M runs, `--seeds 100000` of a 12-cell grid, took 150 s and 950 MB before this bound). More
# runs than this in one sweep is a typo far more often than a plan: each run is a training.
MAX_RUNS = 100_000
LOG_PLANNING_ABOVE = 10_000  # runs: planning takes seconds, so say what is happening


def plan(config: SweepConfig, store: Store, runs: list[RunConfig] | None = None, ids: list[str] | None = None
         ) -> tuple[list[RunConfig], int, int]:
    """The runs still to train (in config order), how many are stored, and how many other live
    processes are training now (those are left to them). ``runs`` and their ``ids``: the config's,
    if already expanded (each ``run_id`` is a hash: computed once per sweep)."""
    runs = config.runs() if runs is None else runs
    ids = [r.run_id for r in runs] if ids is None else ids
    done = store.done_ids()
    claimed = set(store.active_claims())
    todo = [r for r, rid in zip(runs, ids, strict=True) if rid not in done and rid not in claimed]
    elsewhere = sum(rid not in done and rid in claimed for rid in ids)
    return todo, len(runs) - len(todo) - elsewhere, elsewhere


def pack(runs: list[RunConfig], runs_per_task: int, store: Store, device: str, commit: str,
         threads: int = 0, *, stack: bool = False, max_stack: int = 0,
         engine: dict[str, Any] | None = None, sinks: dict[str, dict[str, Any]] | None = None) -> list[Task]:
    """Tasks of ``runs_per_task`` runs, or (``stack``) one task per arm: its seeds still to train, at
    most ``max_stack`` (0: all) per task."""
    identity = store.identity_hash or ""

    def task(chunk: list[RunConfig], stacked: bool) -> Task:
        return Task(str(store.path), tuple(r.to_dict() for r in chunk), device, commit, threads, stacked,
                    dict(engine or {}), identity, dict(sinks or {}))

    if not stack:
        return [task(runs[i:i + runs_per_task], False) for i in range(0, len(runs), runs_per_task)]
    from .train import stacks_of

    return [task(chunk, True) for chunk in stacks_of(runs, max_stack)]


def stacks(config: SweepConfig, device: str) -> bool:
    """Whether the sweep trains the seeds of an arm as one stacked model (``engine.stack``; ``auto``:
    on GPUs, where it is 8-10x a per-seed DataLoader loop, and not on CPUs, where the convs dominate)."""
    mode = config.engine.stack
    if mode != "auto":
        return mode == "on"
    if device == "auto":  # resolved later, on the machine that trains: judge by what the launcher asks for
        return config.launcher.kind == "submitit" and config.launcher.gpus_per_task > 0
    return device.startswith("cuda")


# ---------------------------------------------------------------------------------------------------
# Preflight: what can fail before anything is written


def preflight(config: SweepConfig, out: str | Path, *, workers: int | None = None) -> Any:
    """Check a sweep before its output directory is opened (or created); returns the dataset.

    Raises :class:`ConfigError` naming the key (and the arm) for: ``--workers`` below 0; more than
    :data:`MAX_RUNS` runs; ``--out`` that is a file or cannot be written; a dataset whose files are
    damaged (``FileNotFoundError`` for missing ones) or a ``data.val_split`` it cannot take; a
    ``batch_size`` larger than the training set (after the validation split); an arm whose model does not
    build for the dataset's inputs or fails on them (``models.create`` as training calls it, a built-in
    arch or a user's factory, then one forward pass of two examples on the CPU, per distinct model
    config: a kernel larger than its input, say). Without it each of these would fail every run at train
    time, after the directory was created.
    """
    from . import data as data_mod
    from . import models

    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise ConfigError(f"--workers: expected a number of worker processes >= 1 (0 or none: one per core or "
                          f"GPU), got {workers!r}")
    cells = math.prod(len(v) for _, v in config.grid)
    if _n_runs(config) > MAX_RUNS:
        raise ConfigError(
            f"--seeds: {len(config.seeds)} seeds x {cells} cells{' (and their tuning runs)' if config.tune.enabled else ''}"
            f" = {_n_runs(config):,} runs; one sweep "
            f"plans at most {MAX_RUNS:,} (each costs ~0.3 ms and 2.4 kB to plan before anything trains). Use fewer "
            "seeds (`bnstats plan` on a pilot says how many a comparison needs) or split the grid into sweeps")
    _check_out(Path(out))
    try:
        ds = data_mod.load(config.dataset, config.data.root)
    except data_mod.DatasetFileError as exc:
        raise ConfigError(f"dataset: {exc}") from None
    n_train = len(data_mod.split_validation(ds, config.data.val_split).x_train)
    if config.tune.enabled and config.data.val_split == 0 and ds.x_val is None:
        raise ConfigError(f"data.val_split: [tune] chooses each arm's {', '.join(config.tune.keys)} on a validation "
                          f"set, and {config.dataset!r} brings none; set data.val_split (e.g. 0.1, held out of the "
                          "training set), got 0")
    x = ds.x_train[:2].float()
    tried: set[str] = set()
    for run in _preflight_runs(config):  # one run per cell (per candidate of a tuned sweep)
        arm = _arm_text(run)
        bs = run.train.batch_size
        if bs > n_train:
            key = "grid.batch_size" if "batch_size" in run.factors else "train.batch_size"
            raise ConfigError(f"{key}: {bs} exceeds the {n_train} training examples of {config.dataset!r} ({arm}); "
                              "an epoch takes only full batches")
        if repr(run.model) in tried:
            continue
        tried.add(repr(run.model))
        try:  # fork_rng: building may draw default initial weights from torch's global generator
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                model = models.create(run.model, run.seed, ds.input_shape, ds.num_classes).model
                model(x)
                paired = _has_pair(model, x) if run.model.is_factory and "placement" in run.factors else True
        except ConfigError as exc:  # a user's factory that cannot be had or called: it names the key
            raise ConfigError(f"{exc} ({arm})") from None
        except Exception as exc:  # whatever a model (a user's too) raises: it would fail every run
            text = " ".join(str(exc).split()) or type(exc).__name__
            key = m.group(1) if (m := re.match(r"((?:model|grid)\.\w+):", text)) else "model"
            raise ConfigError(f"{key}: {arm} does not run on {config.dataset!r} inputs of shape "
                              f"{tuple(ds.input_shape)}: {type(exc).__name__}: {text}") from None
        if not paired and run.model.placement != "none":
            raise ConfigError(f"model.arch: {run.model.arch} builds a model with no norm→activation pair ({arm}); "
                              "sweeping placement compares where a norm sits next to an activation")
    return ds


def _has_pair(model: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether the model has a layer with both a norm and an activation (``moments.find_sites``)."""
    from . import moments

    sites = moments.find_sites(model, example=lambda: model(x))
    kinds: dict[int, set[str]] = {}
    for layer, kind in sites.layers.values():
        kinds.setdefault(layer, set()).add(kind)
    return any(k == {"norm", "act"} for k in kinds.values())


def _n_runs(config: SweepConfig) -> int:
    n_tune = len(config.tune.seeds) * math.prod(len(v) for _, v in config.tune.candidates) if config.tune.enabled else 0
    return (len(config.seeds) + n_tune) * math.prod(len(v) for _, v in config.grid)


def _preflight_runs(config: SweepConfig) -> list[RunConfig]:
    if config.tune.enabled:
        from .tune import preflight_runs

        return preflight_runs(config)
    return dataclasses.replace(config, seeds=config.seeds[:1]).runs()


def _arm_text(run: RunConfig) -> str:
    """``arm arch='cnn', placement='before' (model.kernel_size=43)``: its factors and the model keys set."""
    factors = ", ".join(f"{k}={v!r}" for k, v in run.factor_values().items())
    mine = run.model.to_toml()
    if run.model.is_factory:  # its spec and every option it is called with
        shown = {k: v for k, v in mine.items() if k != "placement" and (k, v) != ("place", "off")}
    else:  # the keys set away from their defaults
        base = type(run.model)().to_toml()
        shown = {k: v for k, v in mine.items() if v != base[k]}
    set_keys = ", ".join(f"model.{k}={v!r}" for k, v in shown.items() if k not in run.factors)
    return f"arm {factors or '(no grid)'}" + (f" ({set_keys})" if set_keys else "")


def _check_out(out: Path) -> None:
    """``--out`` must be a directory, or creatable, and writable (checked before anything is written)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {str(out)!r} is a file, not a directory")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--out: {str(existing)!r} is a file, so {str(out)!r} cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out: {str(existing)!r} is not writable"
                          + (f", so {str(out)!r} cannot be created" if existing != out else ""))


def run_sweep(config: SweepConfig, out: str | Path, *, executor: Any = None,
              workers: int | None = None, device: str = "auto", progress: bool | None = None,
              log: Callable[[str], None] | None = None) -> SweepSummary:
    """Train every run of ``config`` that ``out`` does not hold yet, then compact the store.

    ``executor``: any object with ``submit(fn, task) -> future`` whose futures have ``result()``
    (and, for progress in completion order, ``done()``). Default: the config's ``[launcher]``:
    ``kind = "local"`` starts ``workers`` local processes (default ``launcher.workers``, else one
    per core or per GPU), one torch thread each; ``kind = "submitit"`` submits job arrays to Slurm
    (see :mod:`bnstats.launch`). ``device`` is resolved by each worker, except for the local pool,
    which needs it to place workers on GPUs.

    Interrupted sweeps resume: finished runs are kept, the rest train on the next call. A worker or
    job that dies (killed, out of memory, time limit) is reported in ``summary.errors`` and its runs
    stay missing; ``summary.ok`` is False then, or when a run failed.

    Before anything is written, :func:`preflight` checks the input (dataset, every arm's model, ``out``).
    Before planning, damaged units are moved to ``DIR/quarantine/`` (their runs train again) and
    damaged tables rebuilt (``summary.repaired``; see :mod:`bnstats.store`).
    """
    t0 = time.perf_counter()
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    lc = config.launcher
    own = executor is None
    local_pool = own and lc.kind == "local"
    device = resolve_device(device) if local_pool else check_device_name(device)
    if own and lc.kind == "submitit" and device.startswith("cuda") and lc.gpus_per_task == 0:
        raise ConfigError(f"launcher.gpus_per_task: expected >= 1 with --device {device}, got 0")
    ec = config.engine
    if ec.precision == "bf16" and device == "cpu":
        raise ConfigError("engine.precision: 'bf16' is autocast on CUDA; with --device cpu use 'fp32'")
    check_sinks(config.log)  # a missing package: refused here, before anything is written or trained
    # Also builds the dataset cache once, here, before any worker starts: workers then read it instead
    # of all generating (or downloading) it at once.
    preflight(config, out, workers=workers)
    store = Store.open(out, config, log=log)
    store.repair()
    if _n_runs(config) > LOG_PLANNING_ABOVE:
        log(f"{config.name}: planning {_n_runs(config):,} runs (about {_n_runs(config) * 0.33e-3:.0f} s)")
    staged = _stages(config, store, log)  # a [tune] sweep: both stages (bnstats.tune); None otherwise
    if staged is None:
        runs = config.runs()
        ids = [r.run_id for r in runs]
        todo, done, elsewhere = plan(config, store, runs, ids)
    else:
        ids, todo, done, elsewhere = [], staged.todo, staged.done, staged.elsewhere
    summary = SweepSummary(planned=len(todo) + done + elsewhere, already_done=done, repaired=list(store.repairs))
    busy = f"; {elsewhere} being trained by other processes" if elsewhere else ""
    if not todo:
        log(f"{config.name}: all {done} runs are already stored in {out}{busy}; nothing to train")
        store.compact()
        summary.repaired = list(store.repairs)
        summary.running_elsewhere = elsewhere
        return summary
    threads = lc.cpus_per_task if own and lc.kind == "submitit" else 0
    stacked = stacks(config, device)
    specs = _prepared_sinks(config, out, summary, log)
    prior = cost_prior(config, out, device)  # before this launch's runs land in the store
    commit = git_commit()

    def packed(chunk: list[RunConfig]) -> list[Task]:
        return pack(chunk, lc.runs_per_task, store, device, commit, threads, stack=stacked, max_stack=ec.max_stack,
                    engine={"precision": ec.precision, "deterministic": ec.deterministic, "compile": ec.compile,
                            "cpu_isa": ec.cpu_isa}, sinks=specs)

    tasks = packed(todo) if staged is None else _stage_tasks(staged, config, packed, executor, workers, device)
    if own:
        if lc.kind == "submitit":
            if workers:
                log(f"--workers {workers} applies to the local launcher; submitit runs "
                    f"launcher.array_parallelism = {lc.array_parallelism} tasks at once")
            executor = submitit_executor(lc, lc.folder or Path(out) / "submitit", name=f"bnstats-{config.name}")
            where = f"submitit/{executor.cluster}" + (f" partition {lc.partition}" if lc.partition else "")
        else:
            workers = min(workers or lc.workers or default_workers(device), len(tasks))
            # In this process only where it computes as the workers would: one thread, the same CPU kernels.
            inline = (workers == 1 and device == "cpu" and torch.get_num_threads() == 1
                      and cpu.state()["cpu_isa"] == ec.cpu_isa)
            executor = InlineExecutor() if inline else local_executor(workers, device=device, cpu_isa=ec.cpu_isa)
            where = "this process" if inline else f"{workers} local worker processes"
    else:
        where = type(executor).__name__
    slots = _slots(executor, own, lc, workers, len(tasks))
    how = f", seeds of an arm stacked ({ec.precision})" if stacked else ""
    log(f"{config.name}: {len(todo)} runs to train ({done} already stored{busy}) in {len(tasks)} tasks "
        f"on {where}, device {device}{how} -> {out}")
    bar = Progress([[RunConfig.from_dict(raw) for raw in t.runs] for t in tasks], slots=slots, enabled=progress,
                   log=log, prior=prior, fresh_processes=is_submitit(executor))
    broken = False
    blocked: set[str] = set()
    try:
        for index, fut in _completed(executor, tasks, log):
            task = tasks[index]
            try:
                statuses = fut.result()
            except BrokenProcessPool as exc:  # a local worker died: the pool stops every task
                if not broken:
                    broken = True
                    msg = ("a worker process died unexpectedly (killed, or out of memory?) and the local "
                           f"pool stopped ({exc}); the unfinished runs train on the next launch")
                    summary.errors.append(msg)
                    bar.note(msg)
                bar.task_lost(index)
                continue
            except Exception as exc:  # the task's process died or the job failed: its runs stay missing
                msg = (f"a task of {len(task.runs)} run(s) died ({type(exc).__name__}: "
                       f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); "
                       "its unfinished runs train on the next launch")
                summary.errors.append(msg)
                bar.note(msg)
                bar.task_lost(index)
                continue
            for s in statuses:
                if s["status"] == "trained":
                    summary.trained += 1
                elif s["status"] == "failed":
                    summary.failed.append((s["run_id"], s["error"]))
                    bar.note(f"run {s['run_id']} failed: {s['error']}")
                elif s["status"] == "blocked":  # an arm's evaluation waits for its tuning (bnstats.tune)
                    if s["error"] not in blocked:
                        blocked.add(s["error"])
                        bar.note(f"evaluation waits: {s['error']}")
                else:
                    summary.skipped += 1
                for sink, err in (s.get("sink_errors") or {}).items():
                    if sink not in summary.sink_errors:  # each sink's first error, once
                        summary.sink_errors[sink] = err
                        bar.note(f"log.{sink}: {err}; the run is stored, and this sink is fed no further runs of "
                                 "that task (the store stays complete: bnstats compare / report read it)")
            # a tuning run that an evaluation task trained for its arm (bnstats.tune) is not one of its runs
            bar.task_done(index, [s for s in statuses if not s.get("stolen")])
    except KeyboardInterrupt:
        if is_submitit(executor):
            log("interrupted: the submitted jobs keep running and store their runs; "
                "`bnstats status` shows them, and the same command again trains whatever is missing")
        raise
    finally:
        bar.close()
        if own and hasattr(executor, "shutdown"):
            executor.shutdown(wait=True, cancel_futures=True)
        store.compact()
    summary.repaired = list(store.repairs)  # and what the final compaction moved aside
    if staged is None:
        stored = store.done_ids()
        claimed = set(store.active_claims())
        left = [rid for rid in ids if rid not in stored]
        summary.running_elsewhere = sum(rid in claimed for rid in left)
        summary.missing = len(left) - summary.running_elsewhere
    else:
        from .tune import plan as plan_stages

        final = plan_stages(config, store, staged.arms)
        summary.running_elsewhere = final.elsewhere
        summary.missing = final.total - final.done - final.elsewhere
    summary.wall_time_s = time.perf_counter() - t0
    tail = ""
    if summary.running_elsewhere:
        tail += f", {summary.running_elsewhere} still being trained by other processes"
    if summary.missing:
        tail += f"; {summary.missing} not stored (failed or lost): run the same command again to train them"
    if summary.sink_errors:
        tail += f"; not logged to {', '.join(summary.sink_errors)} (see above)"
    log(f"{config.name}: trained {summary.trained}, failed {len(summary.failed)}, skipped {summary.skipped}"
        f", already stored {done}; {summary.wall_time_s:.1f} s{tail}")
    return summary


def _all_runs(config: SweepConfig, store: Store | None) -> list[RunConfig]:
    """Every run of a sweep; a [tune] sweep: its tuning runs, then its evaluation runs, with the values
    chosen from ``store``'s tuning runs where an arm is decided (else at the config's values, as placeholders
    of the runs its evaluation will train)."""
    if not config.tune.enabled:
        return config.runs()
    from .tune import arms, plan

    if store is None:
        arm_list = arms(config)
        return [r for a in arm_list for c in a.tune_runs for r in c] + [r for a in arm_list for r in a.eval_runs]
    staged = plan(config, store)
    evals = [r for a, c in zip(staged.arms, staged.choices, strict=True) for r in (a.eval_runs if c is None else
                                                                                  a.resolved(c))]
    return [r for a in staged.arms for c in a.tune_runs for r in c] + evals


def _stages(config: SweepConfig, store: Store, log: Callable[[str], None]) -> Any:
    """The stages of a [tune] sweep against the store (:func:`bnstats.tune.plan`), with one line saying
    where they stand; None for a sweep without [tune]."""
    if not config.tune.enabled:
        return None
    from .tune import plan as plan_stages

    staged = plan_stages(config, store)
    decided = sum(c is not None for c in staged.choices)
    n_tune = sum(len(t) for t in staged.tune_todo)
    log(f"{config.name}: [tune] {', '.join(config.tune.keys)} per arm on {config.tune.metric}: {n_tune} tuning runs to "
        f"train; {decided} of {len(staged.arms)} arms decided, the others' evaluation runs start as soon as their "
        "tuning is complete")
    return staged


def _stage_tasks(staged: Any, config: SweepConfig, packed: Callable[[list[RunConfig]], list[Task]],
                 executor: Any, workers: int | None, device: str) -> list[Task]:
    """The tasks of both stages in submission order (:func:`bnstats.tune.tasks`), spaced by the number of
    tasks that run at once: the local pool's workers, submitit's ``array_parallelism``, an executor's
    ``_max_workers`` (1 if it has none)."""
    from .tune import tasks as stage_tasks

    lc = config.launcher
    if executor is not None:
        slots = 1 if isinstance(executor, InlineExecutor) else int(getattr(executor, "_max_workers", 1) or 1)
    elif lc.kind == "submitit":
        slots = lc.array_parallelism
    else:
        slots = workers or lc.workers or default_workers(device)
    return stage_tasks(staged, config, packed, slots)


# ---------------------------------------------------------------------------------------------------
# Progress: runs done / running / failed / total, elapsed, and an ETA from measured run times per arch


def cost_key(run: RunConfig) -> str:
    """What a run's cost is learned per: its arch (an MNIST-1D CNN run costs ~4x an MLP run on a CPU,
    a VGG on CIFAR ~100x); costs are per epoch, so a grid over ``train.epochs`` shares them."""
    return run.model.arch


@dataclass(frozen=True)
class CostPrior:
    """Seconds per epoch of one run, per arch, known before this launch measures any, and from where."""

    per_epoch: dict[str, float]
    source: str


#: Measured per-run cost on CPU, seconds per epoch of one run (1 torch thread, the arch's default width
#: and depth, moments every 10 steps): the ``single`` case of benchmarks/bench_cpu.py, benchmarks/cpu-mnist1d.json
#: (2-core VM, 2026-11-27: mlp 65.3 and cnn 284.1 s per 1000 run-epochs). A machine shared with other
#: jobs took 3-4x longer (the reference study's own wall times: mlp 0.27, cnn 0.95 s per epoch).
BENCHMARK_S_PER_EPOCH = {("mnist1d", "mlp"): 0.0653, ("mnist1d", "cnn"): 0.2841}
BENCHMARK_SOURCE = "the benchmarks (benchmarks/cpu-mnist1d.json: a quiet 2-core CPU VM, default widths)"


def cost_prior(config: SweepConfig, out: str | Path, device: str = "cpu") -> CostPrior | None:
    """Seconds per epoch per arch for ``config``'s runs, before any of this launch's runs finished.

    Per arch: the store's own wall times if it holds runs of that arch (median of ``wall_time_s /
    epochs_completed``: this machine, this config); else, for a CPU run of the default MNIST-1D archs,
    the benchmarks' measured cost (:data:`BENCHMARK_S_PER_EPOCH`); else nothing (an arch, dataset or
    device never measured). None when no arch has a cost. Reads only.
    """
    per: dict[str, float] = {}
    sources = []
    out = Path(out) if str(out) else None
    if out is not None and (out / "sweep.json").is_file() and _same_config(config, out):
        from . import store as store_mod

        with contextlib.suppress(FileNotFoundError, OSError, KeyError, ValueError):
            runs = store_mod.load(out).runs
            if len(runs):
                ok = runs[(runs["epochs_completed"] > 0) & runs["wall_time_s"].notna()]
                rate = ok["wall_time_s"] / ok["epochs_completed"]
                arch = ok["arch"] if "arch" in ok else [config.model.arch] * len(ok)  # arch not swept
                per = {str(k): float(v) for k, v in rate.groupby(arch).median().items()}
                if per:
                    sources.append(f"this store's own wall times ({len(ok)} runs: {', '.join(sorted(per))})")
    if device == "cpu" and not stacks(config, device):
        bench = {a: BENCHMARK_S_PER_EPOCH[(config.dataset, a)] for a in {r.model.arch for r in config.runs()}
                 if a not in per and (config.dataset, a) in BENCHMARK_S_PER_EPOCH}
        if bench:
            per.update(bench)
            sources.append(f"{BENCHMARK_SOURCE} for {', '.join(sorted(bench))}")
    return CostPrior(per, "; ".join(sources)) if per else None


def _same_config(config: SweepConfig, out: Path) -> bool:
    from .config import stable_hash

    try:
        return json.loads((out / "sweep.json").read_text())["identity_hash"] == stable_hash(config.identity())
    except (OSError, ValueError, KeyError):
        return False


class Eta:
    """When the launched tasks will have finished, from measured run times per arch.

    The launcher sees only completions (a future's result), so it models what it launched on: a pool of
    ``slots`` workers that start tasks in submission order, each as soon as a slot frees (a local process
    pool; a Slurm array under ``array_parallelism``). Then the k-th task (0-based, k >= slots) started when
    the (k - slots + 1)-th completion arrived, which gives every running task its start time.

    A run's cost is ``rate[arch] * epochs``. The rates come from the seconds each worker measured for its
    runs (from claim to stored; a pool's start-up is not a run's cost). The first run in a process is
    *cold*: it also pays for the process's first torch kernels, allocations and dataset read, measured
    here at 7 s against 0.2 s for the same MNIST-1D MLP run warm (35x; this is what put the first ETA 8x
    off). So warm runs give the rates, and the cold overhead (cold seconds minus the warm cost of the
    same arch, median) is added only to the tasks that start in a fresh process, the pool's first wave
    (where every task is a new process, ``fresh_processes``: submitit jobs, cold runs are the rates). An
    arch not measured warm yet takes, in this order: its cold runs minus that overhead; its prior's rate,
    scaled by how far the warm archs are from their priors (geometric mean of measured / prior) once there
    are some; its cold runs as they are; the mean warm rate; and never less than what its running tasks
    have already taken.

    The finish time is then simulated: running tasks end at start + cost (not before now), pending tasks
    take the earliest free slot in order. This keeps the tail right (the last long runs on few slots) and
    needs no smoothing. ``slots=None`` (an executor of unknown width): estimated as measured busy time /
    elapsed time.
    """

    def __init__(self, tasks: Sequence[Sequence[RunConfig]], *, slots: int | None, t0: float,
                 prior: CostPrior | None = None, fresh_processes: bool = False):
        self.tasks = [list(t) for t in tasks]
        self.slots_given = slots
        self.t0 = t0
        self.prior = prior
        self.fresh_processes = fresh_processes
        self.finished: dict[int, float] = {}       # task index -> completion time (launcher's clock)
        self.order: list[int] = []                 # task indices in completion order
        self.samples: list[tuple[str, float, int, bool]] = []  # (arch, seconds, epochs, cold) per trained run
        self.busy = 0.0                            # sum of measured seconds

    def task_done(self, index: int, now: float, statuses: Sequence[dict[str, Any]] = ()) -> None:
        self.finished[index] = now
        self.order.append(index)
        runs = {r.run_id: r for r in self.tasks[index]}
        for st in statuses:
            run = runs.get(st.get("run_id"))
            sec = st.get("seconds")
            if run is not None and st.get("status") == "trained" and isinstance(sec, int | float) and sec > 0:
                self.samples.append((cost_key(run), float(sec), run.train.epochs, bool(st.get("cold", False))))
                self.busy += float(sec)

    @property
    def slots(self) -> int:
        if self.slots_given:
            return max(1, min(self.slots_given, len(self.tasks)))
        if not self.order or self.busy <= 0:
            return 1
        span = max(self.finished[self.order[-1]] - self.t0, 1e-9)
        return max(1, min(len(self.tasks), round(self.busy / span)))

    def starts(self) -> dict[int, float]:
        """Start times of the tasks that have started (FIFO in submission order, see the class docstring)."""
        n_started = min(len(self.tasks), self.slots + len(self.order))
        times = [self.t0] * self.slots + [self.finished[i] for i in self.order]
        return {k: times[k] for k in range(n_started)}

    def running(self) -> list[int]:
        return [k for k in self.starts() if k not in self.finished]

    def measured(self) -> set[str]:
        """The archs with at least one finished run."""
        return {a for a, *_ in self.samples}

    def overhead(self) -> float | None:
        """Seconds a run pays for being the first in its process (median over cold runs of an arch also
        measured warm); None: no such pair yet. With ``fresh_processes`` every run is cold, and the rates
        include it: 0."""
        if self.fresh_processes:
            return 0.0
        warm = self._warm()
        diffs = sorted(sec - warm[a] * ep for a, sec, ep, cold in self.samples if cold and a in warm)
        return max(0.0, diffs[len(diffs) // 2]) if diffs else None

    def _warm(self) -> dict[str, float]:
        by: dict[str, list[float]] = {}
        for a, sec, ep, cold in self.samples:
            if not cold or self.fresh_processes:  # every task a new process: cold is what a run costs
                by.setdefault(a, []).append(sec / ep)
        return {a: sum(v) / len(v) for a, v in by.items()}

    def rates(self, now: float) -> dict[str, float] | None:
        """Seconds per epoch per arch (see the class docstring); None: no basis for some arch yet."""
        warm = self._warm()
        over = self.overhead()
        prior = self.prior.per_epoch if self.prior else {}
        ratios = [warm[a] / prior[a] for a in warm if prior.get(a)]
        scale = math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else None
        cold: dict[str, list[float]] = {}
        for a, sec, ep, is_cold in self.samples:
            if is_cold:
                cold.setdefault(a, []).append((sec - (over or 0.0)) / ep)
        fallback = sum(warm.values()) / len(warm) if warm else None
        out = {}
        starts = self.starts()
        for key in {cost_key(r) for t in self.tasks for r in t}:
            if key in warm:
                out[key] = warm[key]
                continue
            if key in cold and over is not None:
                est = max(sum(cold[key]) / len(cold[key]), 1e-6)
            elif key in prior:
                est = prior[key] * (scale if scale is not None else 1.0)
            elif key in cold:
                est = sum(cold[key]) / len(cold[key])
            else:
                est = fallback
            # a running task of this arch alone has taken at least its elapsed time (a warm one: a cold one's
            # time is mostly the process's start, not the arch's rate)
            floor = max(((now - starts[k]) / sum(r.train.epochs for r in self.tasks[k])
                         for k in self.running() if {cost_key(r) for r in self.tasks[k]} == {key}
                         and (self.fresh_processes or k >= self.slots)), default=0.0)
            if est is None and floor <= 0:
                return None
            out[key] = max(est or 0.0, floor)
        return out

    def cost(self, index: int, rates: dict[str, float]) -> float:
        """Predicted seconds of task ``index``: its runs warm, plus the cold overhead if it starts a process."""
        fresh = self.fresh_processes or index < self.slots
        return sum(rates[cost_key(r)] * r.train.epochs for r in self.tasks[index]) + (
            (self.overhead() or 0.0) if fresh else 0.0)

    def finish_time(self, now: float) -> float | None:
        """The predicted time (launcher's clock) when every task has finished; None: no basis yet."""
        if len(self.finished) == len(self.tasks):
            return now
        rates = self.rates(now)
        if rates is None:
            return None
        starts = self.starts()
        free = [max(starts[k] + self.cost(k, rates), now) for k in self.running()]
        free += [now] * (self.slots - len(free))
        heapq.heapify(free)
        for k in range(len(starts), len(self.tasks)):
            heapq.heappush(free, heapq.heappop(free) + self.cost(k, rates))
        return max(free)

    def eta(self, now: float) -> float | None:
        """Seconds left, or None before there is any basis for an estimate."""
        end = self.finish_time(now)
        return None if end is None else max(0.0, end - now)


class Progress:
    """runs done / running / failed / total, elapsed and ETA (:class:`Eta`) while a sweep trains.

    On a terminal (``enabled=None`` and stderr is a TTY, or ``enabled=True``): a tqdm bar on ``stream``,
    redrawn every second so elapsed and ETA move between completions. Otherwise (a log file, a pipe, a
    Slurm output file): plain lines through ``log``, no carriage returns, at most one per ``interval_s``
    and always the last. ``clock`` is injectable (tests drive a simulated pool with a fake clock).
    """

    def __init__(self, tasks: Sequence[Sequence[RunConfig]], *, slots: int | None, enabled: bool | None,
                 log: Callable[[str], None], prior: CostPrior | None = None, fresh_processes: bool = False,
                 clock: Callable[[], float] = time.monotonic, stream: Any = None, interval_s: float = 10.0):
        self.clock, self.log = clock, log
        self.stream = stream if stream is not None else sys.stderr
        self.tty = _isatty(self.stream) if enabled is None else enabled
        self.t0 = clock()
        self.eta_model = Eta(tasks, slots=slots, t0=self.t0, prior=prior, fresh_processes=fresh_processes)
        self.total = sum(len(t) for t in tasks)
        self.done = self.failed = 0
        self.interval_s = interval_s
        self.last_logged: float | None = None
        self._lock = threading.Lock()
        self._bar = None
        self._stop = threading.Event()
        if self.tty:
            from tqdm import tqdm

            # the counts and times go in {desc} (tqdm prefixes a postfix with ", ")
            self._bar = tqdm(total=self.total, file=self.stream, leave=True, dynamic_ncols=True,
                             bar_format="runs {percentage:3.0f}%|{bar}| {desc}", mininterval=0)
            self._draw()
            threading.Thread(target=self._tick, daemon=True).start()

    # --- what the launcher tells it -------------------------------------------------------------
    def task_done(self, index: int, statuses: Sequence[dict[str, Any]]) -> None:
        """Task ``index`` (submission order) returned ``statuses`` (one per run, from execute_task)."""
        with self._lock:
            self.eta_model.task_done(index, self.clock(), statuses)
            n_failed = sum(s.get("status") == "failed" for s in statuses)
            self._advance(len(statuses) - n_failed, n_failed)

    def task_lost(self, index: int) -> None:
        """Task ``index`` died (its process or job): its runs count as failed."""
        with self._lock:
            self.eta_model.task_done(index, self.clock())
            self._advance(0, len(self.eta_model.tasks[index]))

    def note(self, message: str) -> None:
        """A message while the bar is shown (printed above it on a terminal, so the bar is not torn)."""
        with self._lock:
            if self._bar is not None:
                self._bar.write(message, file=self.stream)
            else:
                self.log(message)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            if self._bar is not None:
                self._draw()
                self._bar.close()
                self._bar = None

    # --- what it shows ----------------------------------------------------------------------------
    @property
    def running(self) -> int:
        return sum(len(self.eta_model.tasks[k]) for k in self.eta_model.running())

    def counts(self) -> str:
        return f"{self.done}/{self.total} runs done, {self.running} running, {self.failed} failed"

    def times(self) -> str:
        now = self.clock()
        eta = self.eta_model.eta(now)
        return f"elapsed {fmt_s(now - self.t0)}, ETA {'?' if eta is None else fmt_s(eta)}"

    def costs(self) -> str:
        """``per run: mlp 1.1 s, cnn 4.9 s (est.)`` and the slots the ETA assumes."""
        m = self.eta_model
        rates = m.rates(self.clock())
        if not rates:
            return ""
        epochs: dict[str, list[int]] = {}
        for t in m.tasks:
            for r in t:
                epochs.setdefault(cost_key(r), []).append(r.train.epochs)
        measured = m.measured()
        parts = [f"{k} {fmt_run_s(v * sorted(epochs[k])[len(epochs[k]) // 2])}"
                 + ("" if k in measured else " (est.)") for k, v in sorted(rates.items())]
        return f"per run: {', '.join(parts)}; {m.slots} at once"

    def line(self) -> str:
        extra = self.costs()
        return f"{self.counts()}; {self.times()}" + (f" ({extra})" if extra else "")

    def _advance(self, done: int, failed: int) -> None:
        self.done += done
        self.failed += failed
        if self._bar is not None:
            self._bar.update(done + failed)
            self._draw()
            return
        now = self.clock()
        last = self.done + self.failed >= self.total
        if last or self.last_logged is None or now - self.last_logged >= self.interval_s:
            self.last_logged = now
            self.log(self.line())

    def _draw(self) -> None:
        self._bar.set_description_str(f"{self.counts()}; {self.times()}", refresh=False)
        self._bar.refresh()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                if self._bar is not None:
                    self._draw()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def fmt_s(seconds: float) -> str:
    """``75`` -> ``1:15``; ``3725`` -> ``1:02:05``."""
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def fmt_run_s(seconds: float) -> str:
    """A run's cost for reading: ``0.42 s``, ``8.1 s``, ``2:05``."""
    if seconds < 1:
        return f"{seconds:.2f} s"
    return f"{seconds:.1f} s" if seconds < 60 else fmt_s(seconds)


# ---------------------------------------------------------------------------------------------------
# Dry run: what `bnstats sweep` would do, writing nothing


@dataclass(frozen=True)
class DryRun:
    """What :func:`run_sweep` would do with ``config`` and ``out`` (``bnstats sweep --dry-run``).

    ``cells``: one row per cell (every grid factor), with ``runs``, ``stored``, ``running`` (claimed by
    another live process) and ``to_train``. ``estimate_s``: the predicted wall time of the runs to
    train (None: no measured cost for some arch), from ``cost_source``.
    """

    name: str
    out: str
    state: str                      # new | resumes | done | other config | not a sweep
    factors: tuple[str, ...]
    seeds: tuple[int, ...]
    cells: tuple[dict[str, Any], ...]
    n_runs: int
    n_stored: int
    n_running: int
    n_to_train: int
    where: str                      # the launcher, e.g. "2 local worker processes, device cpu"
    slots: int
    per_run_s: dict[str, float]     # arch -> predicted seconds per run
    estimate_s: float | None
    cost_source: str
    sinks: tuple[str, ...]
    warnings: tuple[str, ...]

    def text(self) -> str:
        """The plan for reading (what ``bnstats sweep --dry-run`` prints)."""
        lines = [f"{self.name}: dry run, nothing trained or written"]
        lines += [f"WARNING: {w}" for w in self.warnings]
        lines.append(f"output folder: {self.out} ({self.state})")
        grid = " × ".join(self.factors) or "no grid"
        lines.append(f"cells: {len(self.cells)} ({grid}) × {len(self.seeds)} seeds ({_seed_text(self.seeds)}) "
                     f"= {self.n_runs} runs")
        keys = list(self.factors)
        head = [*keys, "runs", "stored", "running", "to_train"]
        rows = [[str(c.get(k, "")) for k in keys] + [str(c[k]) for k in head[len(keys):]] for c in self.cells]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        for r in [head, *rows]:
            lines.append("  " + "  ".join(v.rjust(w) if i >= len(keys) else v.ljust(w)
                                          for i, (v, w) in enumerate(zip(r, widths, strict=True))).rstrip())
        busy = f", {self.n_running} being trained by other processes" if self.n_running else ""
        lines.append(f"runs to train: {self.n_to_train} of {self.n_runs} ({self.n_stored} stored{busy})")
        lines.append(f"launcher: {self.where}")
        if not self.n_to_train:
            lines.append("estimated time: none (nothing to train)")
        elif self.estimate_s is None:
            lines.append(f"estimated time: unknown ({self.cost_source}); the progress line gives an ETA once "
                         "the first runs of each arch have finished")
        else:
            per = ", ".join(f"{k} {fmt_run_s(v)}" for k, v in sorted(self.per_run_s.items()))
            lines.append(f"estimated time: {fmt_s(self.estimate_s)} with {self.slots} at once "
                         f"(per run: {per}; from {self.cost_source})")
        lines += [f"would log each stored run to {s}" for s in self.sinks]
        return "\n".join(lines)


def dry_run(config: SweepConfig, out: str | Path, *, workers: int | None = None, device: str = "auto") -> DryRun:
    """What ``run_sweep(config, out, workers=..., device=...)`` would train, where, and for how long.

    Reads the output folder (if any) and writes nothing: no store, no dataset cache, no sink set-up.
    The estimate simulates the launcher's pool (:class:`Eta`, with nothing finished yet) on the cost
    per arch from :func:`cost_prior`: the store's own wall times, else the benchmarks' (CPU, MNIST-1D).
    """
    import importlib.util

    from . import sinks
    from .config import stable_hash
    from .store import _first_difference

    lc = config.launcher
    check_device_name(device)
    out = Path(out)
    warnings_: list[str] = []
    meta_path = out / "sweep.json"
    stored_ids: set[str] = set()
    running_ids: set[str] = set()
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            same = meta["identity_hash"] == stable_hash(config.identity())
        except (OSError, ValueError, KeyError):
            meta, same = {}, False
        if same:
            store = Store(out)
            stored_ids = store.done_ids()
            running_ids = set(store.active_claims()) - stored_ids
            state = "resumes" if stored_ids else "new"
        else:
            diff = (_first_difference(meta["identity"], config.identity()) if "identity" in meta
                    else "not a bnstats sweep's sweep.json")
            warnings_.append(f"{out} belongs to another config ({diff}): `bnstats sweep` would refuse it "
                             "(exit 2); use another --out or the original config")
            state = "other config"
    elif out.exists() and any(out.iterdir()):
        warnings_.append(f"{out} exists, is not empty and is not a bnstats sweep: `bnstats sweep` would refuse it")
        state = "not a sweep"
    else:
        state = "new"
    runs = _all_runs(config, Store(out) if stored_ids or running_ids else None)
    todo = [r for r in runs if r.run_id not in stored_ids and r.run_id not in running_ids]
    if runs and not todo and not running_ids:
        state = "done"
    cells: dict[tuple, dict[str, Any]] = {}
    for r in runs:
        fv = r.factor_values()
        c = cells.setdefault(tuple(fv.values()), {**fv, "runs": 0, "stored": 0, "running": 0, "to_train": 0})
        c["runs"] += 1
        c["stored"] += r.run_id in stored_ids
        c["running"] += r.run_id in running_ids
        c["to_train"] += r.run_id not in stored_ids and r.run_id not in running_ids
    # where the runs would train (as run_sweep decides it, without starting anything)
    resolved = resolve_device(device) if lc.kind == "local" else device
    stacked = stacks(config, resolved)
    tasks: list[list[RunConfig]]
    if stacked:
        from .train import stacks_of

        tasks = [list(t) for t in stacks_of(todo, config.engine.max_stack)]
    else:
        tasks = [todo[i:i + lc.runs_per_task] for i in range(0, len(todo), lc.runs_per_task)]
    if lc.kind == "submitit":
        slots = max(1, min(lc.array_parallelism, len(tasks) or 1))
        where = f"submitit ({lc.cluster or 'slurm'}), {slots} array tasks at once, device {device}"
    else:
        slots = max(1, min(workers or lc.workers or default_workers(resolved), len(tasks) or 1))
        where = (f"{slots} local worker process{'es' if slots > 1 else ''}, device {resolved}"
                 + (f", seeds of an arm stacked ({config.engine.precision})" if stacked else ""))
    where += f", {len(tasks)} tasks"
    prior = cost_prior(config, out if state != "other config" else "", resolved)
    eta = Eta(tasks, slots=slots, t0=0.0, prior=prior)
    estimate = (eta.eta(0.0) if tasks else 0.0) if prior else None
    per_run: dict[str, float] = {}
    if estimate is not None and tasks:
        for k, v in (eta.rates(0.0) or {}).items():
            per_run[k] = v * _median([r.train.epochs for r in todo if cost_key(r) == k])
    unknown = sorted({cost_key(r) for r in todo} - set(prior.per_epoch if prior else ()))
    source = prior.source if prior and not unknown else (
        f"no measured cost for {', '.join(unknown)} on {config.dataset} with device {resolved}: the benchmarks "
        "cover the MNIST-1D mlp and cnn on CPUs, and this store holds no run of it")
    spec_lines = tuple(sinks.where(sinks.sink_specs(config.log, out, config.name)))
    for name in config.log.enabled:
        if importlib.util.find_spec(sinks.PACKAGES[name][0]) is None:
            warnings_.append(f"log.{name}: the package {sinks.PACKAGES[name][1]!r} is not installed: "
                             f"`bnstats sweep` would refuse to start (install it with {sinks.INSTALL})")
    return DryRun(
        name=config.name, out=str(out), state=state, factors=config.factors, seeds=config.seeds,
        cells=tuple(cells.values()), n_runs=len(runs), n_stored=len(stored_ids & {r.run_id for r in runs}),
        n_running=len(running_ids & {r.run_id for r in runs}), n_to_train=len(todo), where=where, slots=slots,
        per_run_s=per_run, estimate_s=estimate, cost_source=source, sinks=spec_lines, warnings=tuple(warnings_))


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


def _seed_text(seeds: Sequence[int]) -> str:
    s = sorted(seeds)
    if s == list(range(s[0], s[-1] + 1)) and len(s) > 2:
        return f"{s[0]}..{s[-1]}"
    return ", ".join(map(str, s))
