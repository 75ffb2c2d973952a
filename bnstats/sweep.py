"""Plan → submit → skip what is done. The launcher is any ``concurrent.futures``-style executor.

``run_sweep`` expands the config into runs, drops those already in the store (or being trained by a
live process), packs the rest into tasks and hands them to an executor: the built-in local process
pool, submitit (Slurm job arrays), or anything with ``submit(fn, task) -> future`` (Dask, Ray, ...);
see :mod:`bnstats.launch`. Each task trains its runs and commits each to the store itself, so results
survive whatever happens to the launcher, and a run that raises is recorded as failed without stopping
the others. A worker or job that dies leaves its runs missing: the next launch trains them.
"""

from __future__ import annotations

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


@dataclass
class SweepSummary:
    planned: int
    already_done: int
    trained: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)   # (run_id, error)
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
    store = Store(task.store)
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


def plan(config: SweepConfig, store: Store) -> tuple[list[RunConfig], int, int]:
    """The runs still to train (in config order), how many are stored, and how many other live
    processes are training now (those are left to them)."""
    runs = config.runs()
    done = store.done_ids()
    claimed = set(store.active_claims())
    todo = [r for r in runs if r.run_id not in done and r.run_id not in claimed]
    elsewhere = sum(r.run_id not in done and r.run_id in claimed for r in runs)
    return todo, len(runs) - len(todo) - elsewhere, elsewhere


def pack(runs: list[RunConfig], runs_per_task: int, store: Store, device: str, commit: str,
         threads: int = 0, *, stack: bool = False, max_stack: int = 0,
         engine: dict[str, Any] | None = None) -> list[Task]:
    """Tasks of ``runs_per_task`` runs, or (``stack``) one task per arm: its seeds still to train, at
    most ``max_stack`` (0: all) per task."""
    def task(chunk: list[RunConfig], stacked: bool) -> Task:
        return Task(str(store.path), tuple(r.to_dict() for r in chunk), device, commit, threads, stacked,
                    dict(engine or {}))

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
    store = Store.open(out, config)
    todo, done, elsewhere = plan(config, store)
    summary = SweepSummary(planned=len(todo) + done + elsewhere, already_done=done)
    busy = f"; {elsewhere} being trained by other processes" if elsewhere else ""
    if not todo:
        log(f"{config.name}: all {done} runs are already stored in {out}{busy}; nothing to train")
        store.compact()
        summary.running_elsewhere = elsewhere
        return summary
    # Build the dataset cache once, here, before any worker starts: workers then read it instead of
    # all generating (or downloading) it at once. It also fails early on a missing dataset.
    from . import data as data_mod

    data_mod.load(config.dataset, config.data.root)
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
    stored = store.done_ids()
    claimed = set(store.active_claims())
    left = [r.run_id for r in config.runs() if r.run_id not in stored]
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
