"""``bnstats status DIR``: runs done, running, failed and missing, per cell.

``done``: stored; ``running``: claimed by a live process (on another host: heartbeat younger than
``store.STALE_CLAIM_S``); ``failed``: raised on its last attempt (error and traceback in
``DIR/failed/<run_id>.json``), retried by the next launch; ``missing``: none of these (not launched yet,
or its worker died). A damaged unit does not count as done: it is listed (the file and what is wrong)
and its run counts as missing, since the next sweep moves it to ``quarantine/`` and trains it again.
Reads only: works on a sweep being trained, and on a read-only copy.
An imported store (``bnstats import``) has no grid to count against: its runs per cell, all done.
A sweep with ``[tune]``: one row per stage (``tune``, ``eval``) and cell, with ``waiting`` (evaluation
runs of an arm whose tuning is not complete, so their values are not chosen yet) and ``tuned`` (the
values chosen for the arm, recomputed from its stored tuning runs).
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from . import config as config_mod
from .store import Store, stored_config


def status_frame(path: str | Path, *, config_path: str | None = None) -> tuple[pd.DataFrame, dict]:
    """One row per cell (grid combination) with counts ``done``, ``running``, ``failed``, ``missing``.

    Also returns the failures: ``{run_id: {"error", "traceback", "seed", "factors", ...}}``.
    """
    counts, failed, _ = _status(path, config_path=config_path)
    return counts, failed


def _status(path: str | Path, *, config_path: str | None) -> tuple[pd.DataFrame, dict, dict[Path, str]]:
    store = Store(path)
    meta = store.meta()
    if meta.get("source") == "import":
        return _imported_counts(store, meta, config_path), {}, {}
    if config_path:
        sweep = config_mod.load(config_path)
    else:
        sweep = stored_config(meta)
    running = store.active_claims()  # before done_ids: a run finishing meanwhile counts as done
    done = store.done_ids()
    damaged = store.damaged_units()
    done -= {u.name for u in damaged}
    failed = {rid: info for rid, info in store.failures().items() if rid not in running}
    if sweep.tune.enabled:
        return _stage_counts(sweep, store, done, set(running), set(failed)), failed, damaged
    rows = []
    for run in sweep.runs():
        rid = run.run_id
        state = ("done" if rid in done else "running" if rid in running
                 else "failed" if rid in failed else "missing")
        rows.append({**run.factor_values(), "state": state})
    df = pd.DataFrame(rows)
    factors = list(sweep.factors)
    counts = (df.assign(n=1).pivot_table(index=factors or None, columns="state", values="n",
                                         aggfunc="sum", fill_value=0)
              if factors else df["state"].value_counts().to_frame().T)
    for c in ("done", "running", "failed", "missing"):
        if c not in counts:
            counts[c] = 0
    counts = counts[["done", "running", "failed", "missing"]]
    counts.columns.name = None
    return counts.reset_index() if factors else counts.reset_index(drop=True), failed, damaged


def _stage_counts(sweep: config_mod.SweepConfig, store: Store, done: set[str], running: set[str],
                  failed: set[str]) -> pd.DataFrame:
    """A [tune] sweep: one row per stage and cell (tuning first), with ``waiting`` (evaluation runs of an
    arm whose tuning is not complete: their values are not chosen yet) and ``tuned`` (the tuning grid, or
    the values chosen for the arm, recomputed from its stored tuning runs: bnstats.tune)."""
    from .tune import status_rows

    df = pd.DataFrame(status_rows(sweep, store, done, running, failed))
    index = ["stage", *sweep.factors, "tuned"]
    counts = df.assign(n=1).pivot_table(index=index, columns="state", values="n", aggfunc="sum", fill_value=0)
    states = [*_STATES, "waiting"]
    for c in states:
        if c not in counts:
            counts[c] = 0
    counts = counts[states]
    counts.columns.name = None
    counts = counts.reset_index()
    order = {"tune": 0, "eval": 1}
    counts = counts.sort_values("stage", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
    return counts[["stage", *sweep.factors, *states, "tuned"]]


def _imported_counts(store: Store, meta: dict, config_path: str | None) -> pd.DataFrame:
    """Runs per cell (the mapped factor and cell columns) of an imported store: every one is done."""
    from .store import load

    if config_path:
        raise config_mod.ConfigError(f"--config: {str(store.path)!r} holds imported runs (bnstats import); "
                                     "there is no grid to count missing runs against")
    factors = list(meta["factors"])
    counts = load(store.path).runs.groupby(factors, sort=True).size().rename("done").reset_index()
    for c in ("running", "failed", "missing"):
        counts[c] = 0
    return counts


def status_dict(path: str | Path, *, config_path: str | None = None) -> dict[str, Any]:
    """Everything ``bnstats status`` shows, as plain JSON-able data (``bnstats status --json``).

    Keys: ``dir``, ``total`` (counts), ``cells`` (one dict per cell: factors and counts), ``failed``
    (``run_id``, ``seed``, ``factors``, ``error``, ``traceback``, ``host``, ``time``, ``file``),
    ``running`` (``run_id``, ``host``, ``pid``, ``heartbeat_age_s``) and ``damaged`` (``path`` of the
    unit, ``problem``: the file and what is wrong with it).
    """
    counts, failed, damaged = _status(path, config_path=config_path)
    store = Store(path)
    now = time.time()
    running = []
    for rid, info in sorted(store.active_claims().items()):
        try:
            age = now - (store.claims / f"{rid}.json").stat().st_mtime
        except FileNotFoundError:
            continue
        running.append({"run_id": rid, "host": info.get("host"), "pid": info.get("pid"),
                        "heartbeat_age_s": round(age, 1)})
    total = {c: int(counts[c].sum()) for c in (*_STATES, "waiting") if c in counts}
    cells = [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
             for row in counts.to_dict(orient="records")]
    failures = [{"run_id": rid, "seed": info.get("seed"), "factors": info.get("factors"),
                 "error": info.get("error"), "traceback": info.get("traceback"), "host": info.get("host"),
                 "time": info.get("time"), "file": str(store.failed / f"{rid}.json")}
                for rid, info in sorted(failed.items())]
    return {"dir": str(path), "total": total, "cells": cells, "failed": failures, "running": running,
            "damaged": [{"path": str(u), "problem": why} for u, why in sorted(damaged.items())]}


_STATES = ("done", "running", "failed", "missing")


def status_table(path: str | Path, *, config_path: str | None = None) -> str:
    """The text ``bnstats status`` prints: totals, counts per cell, who runs what, failed runs."""
    d = status_dict(path, config_path=config_path)
    total = d["total"]
    lines = [f"{path}: {sum(total.values())} runs: " + ", ".join(f"{n} {c}" for c, n in total.items()),
             "", _cells_text(d["cells"])]
    if d["running"]:
        here = socket.gethostname()
        hosts = Counter(r["host"] for r in d["running"])
        lines += ["", "running on: " + ", ".join(f"{h}{' (this host)' if h == here else ''}: {n}"
                                                 for h, n in sorted(hosts.items()))]
    if d["failed"]:
        lines += ["", f"failed runs ({len(d['failed'])}), retried on the next launch "
                      f"(tracebacks in {Path(path) / 'failed'}/):"]
        for f in d["failed"]:
            factors = " ".join(f"{k}={v}" for k, v in (f["factors"] or {}).items())
            lines.append(f"  {f['run_id']} seed={f['seed']} {factors}: {f['error']}")
    if d["damaged"]:
        lines += ["", f"damaged units ({len(d['damaged'])}), counted as missing: the next `bnstats sweep` moves "
                      f"them to quarantine/ and trains their runs again (`bnstats verify {path} --repair` "
                      "moves them now):"]
        lines += [f"  units/{Path(x['path']).name}/{x['problem']}" for x in d["damaged"]]
    return "\n".join(lines)


def _cells_text(cells: list[dict[str, Any]]) -> str:
    return pd.DataFrame(cells).to_string(index=False)
