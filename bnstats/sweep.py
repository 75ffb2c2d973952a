"""Plan → submit → skip what is done. The launcher is any ``concurrent.futures``-style executor.

``run_sweep`` expands the config into runs, drops those already in the store (or being trained by a
live process), packs the rest into tasks and hands them to an executor: the built-in local process
pool, submitit (Slurm job arrays), or anything with ``submit(fn, task) -> future`` (Dask, Ray, ...);
see :mod:`bnstats.launch`. Each task trains its runs and commits each to the store itself, so results
survive whatever happens to the launcher, and a run that raises is recorded as failed without stopping
the others. A worker or job that dies leaves its runs missing: the next launch trains them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable
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

    Returns one status dict per run: ``{"run_id", "status": "trained"|"skipped"|"failed", ...}``.
    A run that raises is recorded in the store as failed and the task goes on with the next run.
    """
    from .train import train_runs  # imported here: the launcher process need not import the model code

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
    for group in groups:
        if not task.stack and not store.claim(group[0].run_id):
            out.append({"run_id": group[0].run_id, "status": "skipped"})
            continue
        ids = [r.run_id for r in group]
        stop = threading.Event()
        beat = threading.Thread(target=_heartbeat, args=(store, ids, stop), daemon=True)
        beat.start()
        written: set[str] = set()
        try:
            results = train_runs(group, device, stack=task.stack, git_commit=task.git_commit, **engine)
            for result in results:
                stored = store.write(result)
                written.add(result.run["run_id"])
                out.append({"run_id": result.run["run_id"], "status": "trained" if stored else "skipped",
                            "test_acc": result.run["test_acc"], "wall_time_s": result.run["wall_time_s"]})
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
    return out


def _heartbeat(store: Store, run_ids: list[str], stop: threading.Event, every_s: float = 30.0) -> None:
    while not stop.wait(every_s):
        for run_id in run_ids:
            store.heartbeat(run_id)


# ---------------------------------------------------------------------------------------------------


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
         engine: dict[str, Any] | None = None) -> list[Task]:
    """Tasks of ``runs_per_task`` runs, or (``stack``) one task per arm: its seeds still to train, at
    most ``max_stack`` (0: all) per task."""
    identity = store.identity_hash or ""

    def task(chunk: list[RunConfig], stacked: bool) -> Task:
        return Task(str(store.path), tuple(r.to_dict() for r in chunk), device, commit, threads, stacked,
                    dict(engine or {}), identity)

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
            f"--seeds: {len(config.seeds)} seeds x {cells} cells = {_n_runs(config):,} runs; one sweep "
            f"plans at most {MAX_RUNS:,} (each costs ~0.3 ms and 2.4 kB to plan before anything trains). Use fewer "
            "seeds (`bnstats plan` on a pilot says how many a comparison needs) or split the grid into sweeps")
    _check_out(Path(out))
    try:
        ds = data_mod.load(config.dataset, config.data.root)
    except data_mod.DatasetFileError as exc:
        raise ConfigError(f"dataset: {exc}") from None
    n_train = len(data_mod.split_validation(ds, config.data.val_split).x_train)
    x = ds.x_train[:2].float()
    tried: set[str] = set()
    for run in dataclasses.replace(config, seeds=config.seeds[:1]).runs():  # one run per cell
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
    return len(config.seeds) * math.prod(len(v) for _, v in config.grid)


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
    # Also builds the dataset cache once, here, before any worker starts: workers then read it instead
    # of all generating (or downloading) it at once.
    preflight(config, out, workers=workers)
    store = Store.open(out, config, log=log)
    store.repair()
    if _n_runs(config) > LOG_PLANNING_ABOVE:
        log(f"{config.name}: planning {_n_runs(config):,} runs (about {_n_runs(config) * 0.33e-3:.0f} s)")
    runs = config.runs()
    ids = [r.run_id for r in runs]
    todo, done, elsewhere = plan(config, store, runs, ids)
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
    tasks = pack(todo, lc.runs_per_task, store, device, git_commit(), threads, stack=stacked,
                 max_stack=ec.max_stack,
                 engine={"precision": ec.precision, "deterministic": ec.deterministic, "compile": ec.compile,
                         "cpu_isa": ec.cpu_isa})
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
    how = f", seeds of an arm stacked ({ec.precision})" if stacked else ""
    log(f"{config.name}: {len(todo)} runs to train ({done} already stored{busy}) in {len(tasks)} tasks "
        f"on {where}, device {device}{how} -> {out}")
    bar = Progress(len(todo), enabled=progress, log=log)
    broken = False
    try:
        futures = submit_all(executor, execute_task, tasks)
        task_of = {id(f): t for f, t in zip(futures, tasks, strict=True)}
        if is_submitit(executor) and futures:
            log(f"submitted job {str(getattr(futures[0], 'job_id', '?')).split('_')[0]}: logs in "
                f"{executor.folder}; Ctrl-C leaves the jobs running (they store their runs themselves)")
        for fut in as_completed(futures):
            task = task_of[id(fut)]
            try:
                statuses = fut.result()
            except BrokenProcessPool as exc:  # a local worker died: the pool stops every task
                if not broken:
                    broken = True
                    msg = ("a worker process died unexpectedly (killed, or out of memory?) and the local "
                           f"pool stopped ({exc}); the unfinished runs train on the next launch")
                    summary.errors.append(msg)
                    log(msg)
                bar.advance(len(task.runs))
                continue
            except Exception as exc:  # the task's process died or the job failed: its runs stay missing
                msg = (f"a task of {len(task.runs)} run(s) died ({type(exc).__name__}: "
                       f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); "
                       "its unfinished runs train on the next launch")
                summary.errors.append(msg)
                log(msg)
                bar.advance(len(task.runs))
                continue
            for s in statuses:
                if s["status"] == "trained":
                    summary.trained += 1
                elif s["status"] == "failed":
                    summary.failed.append((s["run_id"], s["error"]))
                    log(f"run {s['run_id']} failed: {s['error']}")
                else:
                    summary.skipped += 1
                bar.advance()
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
    stored = store.done_ids()
    claimed = set(store.active_claims())
    left = [rid for rid in ids if rid not in stored]
    summary.running_elsewhere = sum(rid in claimed for rid in left)
    summary.missing = len(left) - summary.running_elsewhere
    summary.wall_time_s = time.perf_counter() - t0
    tail = ""
    if summary.running_elsewhere:
        tail += f", {summary.running_elsewhere} still being trained by other processes"
    if summary.missing:
        tail += f"; {summary.missing} not stored (failed or lost): run the same command again to train them"
    log(f"{config.name}: trained {summary.trained}, failed {len(summary.failed)}, skipped {summary.skipped}"
        f", already stored {done}; {summary.wall_time_s:.1f} s{tail}")
    return summary


class Progress:
    """runs done / total with ETA: a redrawn line on a terminal, plain log lines otherwise."""

    def __init__(self, total: int, *, enabled: bool | None, log: Callable[[str], None]):
        self.total, self.done, self.log = total, 0, log
        self.tty = sys.stderr.isatty() if enabled is None else enabled
        self.t0 = time.perf_counter()
        self.last_logged = -1.0

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
        pct = 100 * self.done / self.total
        width = 30
        filled = int(width * self.done / self.total)
        bar = "#" * filled + "." * (width - filled)
        eta_s = "?" if eta != eta else _fmt_s(eta)
        return f"[{bar}] {self.done}/{self.total} runs ({pct:.0f}%) elapsed {_fmt_s(elapsed)} ETA {eta_s}"

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.tty:
            sys.stderr.write("\r" + self._line())
            sys.stderr.flush()
        else:
            now = time.perf_counter()
            if now - self.last_logged >= 10 or self.done == self.total:  # at most one line per 10 s
                self.last_logged = now
                self.log(self._line().split("] ", 1)[1])

    def close(self) -> None:
        if self.tty and self.done:
            sys.stderr.write("\n")


def _fmt_s(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
