"""Launchers: where a sweep's tasks run. Each is a ``concurrent.futures``-style executor.

- ``local``: N worker processes on this machine (one torch thread each; on CUDA one worker per visible
  GPU by default, workers beyond that share the GPUs round-robin).
- ``submitit``: Slurm through ``submitit.AutoExecutor`` (one job array per launch), or submitit's own
  ``local`` / ``debug`` executors (``launcher.cluster``). Parameters come from the config's ``[launcher]``
  section: ``partition``, ``time_min``, ``gpus_per_task``, ``cpus_per_task`` (also the torch threads of
  each task), ``mem_gb``, ``array_parallelism``, ``folder`` (logs), ``runs_per_task``.
- anything else with ``submit(fn, arg) -> future`` (Dask, Ray, ...), passed to ``run_sweep(executor=...)``.

Futures need only ``result()``; ``done()`` gives progress while jobs finish in any order (submitit
Jobs are not ``concurrent.futures.Future`` objects: :func:`as_completed` polls them).

The local pool's processes die with the launcher, however it dies (kill -9 included): left alone they
would finish the tasks already queued and then block forever on the pool's pipe (each worker holds its
write end), ~1 GB each, and the fork server would wait for them. On Linux the kernel kills the fork
server when the launcher dies and each worker when the fork server (or, with ``spawn``, the launcher)
does (``prctl(PR_SET_PDEATHSIG)``); everywhere a watchdog thread in each worker kills it within
``WATCHDOG_S`` of the launcher's pid going. Slurm jobs are meant to outlive the launcher and do.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import multiprocessing as mp
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

import torch

from . import cpu
from .config import ConfigError, LauncherConfig

SLURM_MAX_ARRAY = 1000  # Slurm's default MaxArraySize is 1001: submit larger sweeps as several arrays


# ---------------------------------------------------------------------------------------------------
# local worker processes


WATCHDOG_S = 0.5  # how often a worker checks that the launcher still runs
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> bool:
    """Ask Linux to SIGKILL this process when the thread that created it exits (False elsewhere)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_launcher(pid: int, every_s: float = WATCHDOG_S) -> None:
    from .store import _pid_alive  # a zombie launcher (killed, not yet reaped) counts as gone

    while True:
        time.sleep(every_s)
        if not _pid_alive(pid):
            os.kill(os.getpid(), signal.SIGKILL)


def _exit_with_launcher(launcher_pid: int) -> None:
    """Make this worker die when the launcher does (see the module doc)."""
    if not launcher_pid:
        return
    _die_with_parent()  # the fork server (which dies with the launcher), or the launcher itself (spawn)
    threading.Thread(target=_watch_launcher, args=(launcher_pid,), daemon=True,
                     name="bnstats-launcher-watchdog").start()


def _in_fork_server() -> bool:
    """Whether this code runs while multiprocessing's fork server imports its preloaded modules."""
    try:
        from multiprocessing import forkserver

        frame = sys._getframe()
    except (ImportError, AttributeError):
        return False
    while frame is not None:
        if frame.f_code is forkserver.main.__code__:
            return True
        frame = frame.f_back
    return False


if _in_fork_server():  # imported (through bnstats.sweep) by the local pool's fork server: die with the launcher
    _die_with_parent()


def _init_worker(threads: int, gpu_counter: Any, n_gpus: int, cpu_isa: str = "avx2", launcher_pid: int = 0
                 ) -> None:
    """Runs once in each worker process: dies with the launcher, its CPU kernels, torch threads, and its
    GPU (round-robin)."""
    _exit_with_launcher(launcher_pid)
    cpu.apply(cpu_isa)  # before the worker's first torch op, which fixes its kernels (bnstats/cpu.py)
    torch.set_num_threads(threads)
    if n_gpus:
        with gpu_counter.get_lock():
            index = gpu_counter.value
            gpu_counter.value += 1
        # Before any CUDA call in this process, so "cuda" (the current device) means this GPU.
        torch.cuda.set_device(index % n_gpus)


def local_executor(workers: int, *, device: str = "cpu", threads_per_worker: int = 1,
                   start_method: str | None = None, cpu_isa: str = "avx2") -> Executor:
    """``workers`` local processes, ``threads_per_worker`` torch threads each, CPU kernels per ``cpu_isa``
    (``"avx2"``: pinned; ``"native"``: the CPU's best; see :mod:`bnstats.cpu`).

    With ``device="cuda"`` the workers take the visible GPUs in turn (worker i uses GPU i mod n), so the
    default of one worker per GPU gives each its own; ``cuda:N`` puts every worker on GPU N.

    Workers are forked from a fork server that has imported torch and bnstats once (``forkserver``,
    where the platform has it), so N workers cost one torch import, not N; ``spawn`` elsewhere. Neither
    forks a process that has touched CUDA or torch's thread pools. The workers and the fork server die
    with this process (see the module doc).
    """
    method = start_method or ("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(["bnstats.sweep", "bnstats.train"])
    n_gpus = torch.cuda.device_count() if device == "cuda" else 0
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                  initargs=(threads_per_worker, ctx.Value("i", 0), n_gpus, cpu_isa, os.getpid()))


def default_workers(device: str) -> int:
    """One worker per visible GPU on ``cuda``, one on ``cuda:N``, one per CPU core on ``cpu``."""
    if device.startswith("cuda"):
        return max(1, torch.cuda.device_count()) if device == "cuda" else 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class InlineExecutor(Executor):
    """Runs each task in this process when submitted (like submitit's DebugExecutor): for tests and debugging."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            fut.set_exception(exc)
        return fut


# ---------------------------------------------------------------------------------------------------
# submitit (Slurm)


def submitit_executor(lc: LauncherConfig, folder: str | Path, *, name: str = "bnstats") -> Any:
    """A ``submitit.AutoExecutor`` configured from ``[launcher]``: one Slurm task per bnstats task.

    ``lc.cluster`` "" picks Slurm when ``sbatch`` is on the PATH (an error otherwise); ``"local"`` runs
    each task as a subprocess of this machine (all at once: size ``runs_per_task`` accordingly),
    ``"debug"`` runs them in this process when their result is asked for.
    """
    import submitit

    if lc.cluster in ("", "slurm") and shutil.which("sbatch") is None:
        raise ConfigError(
            f"launcher.cluster: {lc.cluster or 'auto'!r} needs Slurm, but sbatch is not on the PATH; "
            "use launcher.cluster = \"local\" to run submitit jobs on this machine")
    executor = submitit.AutoExecutor(folder=str(folder), cluster=lc.cluster or None)
    params: dict[str, Any] = {
        "name": name, "timeout_min": lc.time_min, "nodes": 1, "tasks_per_node": 1,
        "cpus_per_task": lc.cpus_per_task, "gpus_per_node": lc.gpus_per_task, "mem_gb": lc.mem_gb,
        "slurm_array_parallelism": lc.array_parallelism,
    }
    if lc.partition:
        params["slurm_partition"] = lc.partition
    executor.update_parameters(**params)
    return executor


def is_submitit(executor: Any) -> bool:
    return type(executor).__module__.startswith("submitit")


# ---------------------------------------------------------------------------------------------------
# submitting and collecting


def submit_all(executor: Any, fn: Callable[[Any], Any], args: Sequence[Any]) -> list[Any]:
    """Submit ``fn(arg)`` for each arg: a submitit executor gets job arrays (``map_array``), anything
    else one ``submit`` per arg. Returns the futures (or submitit Jobs) in the order of ``args``."""
    if is_submitit(executor) and hasattr(executor, "map_array"):
        jobs: list[Any] = []
        for i in range(0, len(args), SLURM_MAX_ARRAY):
            jobs += executor.map_array(fn, list(args[i:i + SLURM_MAX_ARRAY]))
        return jobs
    return [executor.submit(fn, a) for a in args]


def as_completed(futures: Iterable[Any], *, poll_s: float = 0.25, max_poll_s: float = 10.0) -> Iterator[Any]:
    """Yield futures as they finish.

    ``concurrent.futures.Future`` objects go through :func:`concurrent.futures.as_completed`. Other
    future-likes with ``done()`` (submitit Jobs, Ray/Dask wrappers) are polled, from every ``poll_s``
    seconds up to every ``max_poll_s`` (``1 + pending / 100`` s, if less) while nothing finishes. Objects with only ``result()`` are
    yielded in submission order (``result()`` then waits for each).
    """
    futures = list(futures)
    if all(isinstance(f, Future) for f in futures):
        yield from cf.as_completed(futures)
        return
    if not all(callable(getattr(f, "done", None)) for f in futures):
        yield from futures
        return
    pending = list(range(len(futures)))
    delay = poll_s
    while pending:
        ready = [i for i in pending if futures[i].done()]
        if ready:
            pending = [i for i in pending if i not in ready]
            delay = poll_s
            for i in ready:
                yield futures[i]
        else:
            time.sleep(delay)
            # a poll costs a file check per job (submitit): back off further for large arrays
            delay = min(delay * 1.5, max_poll_s, 1.0 + len(pending) / 100)
