"""Plan → submit → skip what is done. The launcher is any ``concurrent.futures``-style executor.

``run_sweep`` expands the config into runs, drops those already in the store, packs the rest into
tasks and hands them to an executor (``executor.submit(fn, task) -> future``): the built-in local
process pool, submitit (Slurm), or anything with that shape (Dask, Ray, ...). Each task trains its
runs and commits each to the store itself, so results survive whatever happens to the launcher.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig, SweepConfig
from .store import Store


@dataclass(frozen=True)
class Task:
    """A unit of submission: one or more runs, trained one after another by one worker."""

    store: str
    runs: tuple[dict[str, Any], ...]
    device: str = "auto"
    git_commit: str = ""


@dataclass
class SweepSummary:
    planned: int
    already_done: int
    trained: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)   # (run_id, error)
    skipped: int = 0            # claimed by another live process, or stored by another writer meanwhile
    wall_time_s: float = 0.0

    @property
    def missing(self) -> int:
        return self.planned - self.already_done - self.trained


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"--device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device: {device!r} requested but torch sees no CUDA device")
    return device


def git_commit() -> str:
    """The commit of the bnstats source tree, with ``-dirty`` for uncommitted changes ("" if not git)."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return sha + ("-dirty" if dirty else "")


def execute_task(task: Task) -> list[dict[str, Any]]:
    """Train the runs of a task (in whatever process the executor chose) and commit each to the store.

    Returns one status dict per run: ``{"run_id", "status": "trained"|"skipped"|"failed", ...}``.
    A run that raises is recorded in the store as failed and the task goes on with the next run.
    """
    from .train import train  # imported here: the launcher process need not import the model code

    store = Store(task.store)
    device = resolve_device(task.device)
    out = []
    for raw in task.runs:
        run = RunConfig.from_dict(raw)
        if not store.claim(run.run_id):
            out.append({"run_id": run.run_id, "status": "skipped"})
            continue
        stop = threading.Event()
        beat = threading.Thread(target=_heartbeat, args=(store, run.run_id, stop), daemon=True)
        beat.start()
        try:
            result = train(run, device=device, git_commit=task.git_commit)
            stored = store.write(result)
            out.append({"run_id": run.run_id, "status": "trained" if stored else "skipped",
                        "test_acc": result.run["test_acc"], "wall_time_s": result.run["wall_time_s"]})
        except Exception as exc:  # recorded, retried on the next launch; never stops the sweep
            store.record_failure(run, exc)
            out.append({"run_id": run.run_id, "status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        finally:
            stop.set()
            store.release(run.run_id)
    return out


def _heartbeat(store: Store, run_id: str, stop: threading.Event, every_s: float = 30.0) -> None:
    while not stop.wait(every_s):
        store.heartbeat(run_id)


# ---------------------------------------------------------------------------------------------------
# Executors


def _init_worker(threads: int, gpu_counter: Any, n_gpus: int) -> None:
    torch.set_num_threads(threads)
    if n_gpus:
        with gpu_counter.get_lock():
            index = gpu_counter.value
            gpu_counter.value += 1
        torch.cuda.set_device(index % n_gpus)


def local_executor(workers: int, *, device: str = "cpu", threads_per_worker: int = 1) -> Executor:
    """N worker processes (spawned), one torch thread each; on CUDA one worker per visible GPU by default."""
    ctx = mp.get_context("spawn")
    n_gpus = torch.cuda.device_count() if device.startswith("cuda") and device == "cuda" else 0
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                  initargs=(threads_per_worker, ctx.Value("i", 0), n_gpus))


class InlineExecutor(Executor):
    """Runs each task in this process when submitted (like submitit's DebugExecutor): for tests and debugging."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            fut.set_exception(exc)
        return fut


def default_workers(device: str) -> int:
    if device.startswith("cuda"):
        return max(1, torch.cuda.device_count()) if device == "cuda" else 1
    return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------------


def plan(config: SweepConfig, store: Store) -> tuple[list[RunConfig], int]:
    """The runs still to train (in config order) and how many are already stored."""
    runs = config.runs()
    done = store.done_ids()
    todo = [r for r in runs if r.run_id not in done]
    return todo, len(runs) - len(todo)


def pack(runs: list[RunConfig], runs_per_task: int, store: Store, device: str, commit: str) -> list[Task]:
    return [Task(str(store.path), tuple(r.to_dict() for r in runs[i:i + runs_per_task]), device, commit)
            for i in range(0, len(runs), runs_per_task)]


def run_sweep(config: SweepConfig, out: str | Path, *, executor: Executor | None = None,
              workers: int | None = None, device: str = "auto", progress: bool | None = None,
              log: Callable[[str], None] | None = None) -> SweepSummary:
    """Train every run of ``config`` that ``out`` does not hold yet, then compact the store.

    ``executor``: any object with ``submit(fn, task) -> future`` (default: local worker processes,
    ``workers`` of them, one torch thread each). Interrupted sweeps resume: finished runs are kept,
    the rest train on the next call.
    """
    t0 = time.perf_counter()
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    store = Store.open(out, config)
    device = resolve_device(device)
    todo, done = plan(config, store)
    summary = SweepSummary(planned=len(todo) + done, already_done=done)
    if not todo:
        log(f"{config.name}: all {done} runs are already stored in {out}; nothing to train")
        store.compact()
        return summary
    log(f"{config.name}: {len(todo)} runs to train ({done} already stored) on {device} -> {out}")
    lc = config.launcher
    tasks = pack(todo, lc.runs_per_task, store, device, git_commit())
    own = executor is None
    if own:
        workers = workers or lc.workers or default_workers(device)
        workers = min(workers, len(tasks))
        executor = InlineExecutor() if workers == 1 and device == "cpu" and _single_thread() \
            else local_executor(workers, device=device)
    bar = Progress(len(todo), enabled=progress, log=log)
    try:
        futures = [executor.submit(execute_task, t) for t in tasks]
        for fut in _as_completed(futures):
            try:
                statuses = fut.result()
            except Exception as exc:  # the worker itself died (e.g. killed): its runs stay missing
                log(f"a worker failed ({type(exc).__name__}: {exc}); its runs will train on the next launch")
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
    finally:
        bar.close()
        if own:
            executor.shutdown(wait=True, cancel_futures=True)
        store.compact()
    summary.wall_time_s = time.perf_counter() - t0
    log(f"{config.name}: trained {summary.trained}, failed {len(summary.failed)}, skipped {summary.skipped}"
        f", already stored {done}; {summary.wall_time_s:.1f} s")
    return summary


def _single_thread() -> bool:
    return torch.get_num_threads() == 1


def _as_completed(futures: Iterable[Future]) -> Iterable[Future]:
    """``concurrent.futures.as_completed`` for real futures; submit order for anything else with .result()."""
    futures = list(futures)
    if all(isinstance(f, Future) for f in futures):
        return cf.as_completed(futures)
    return futures


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

    def advance(self) -> None:
        self.done += 1
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
