"""``bnstats status DIR``: runs done, running, failed and missing, per cell."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import config as config_mod
from .store import Store


def status_frame(path: str | Path, *, config_path: str | None = None) -> tuple[pd.DataFrame, dict]:
    """One row per cell (grid combination) with counts ``done``, ``running``, ``failed``, ``missing``.

    Also returns the failures: ``{run_id: {"error", "traceback", "seed", "factors", ...}}``.
    """
    store = Store(path)
    meta = store.meta()
    if config_path:
        sweep = config_mod.load(config_path)
    else:
        sweep = config_mod.from_dict(meta["config"])
    done = store.done_ids()
    running = store.active_claims()
    failed = store.failures()
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
    return counts.reset_index() if factors else counts.reset_index(drop=True), failed


def status_table(path: str | Path, *, config_path: str | None = None) -> str:
    counts, failed = status_frame(path, config_path=config_path)
    total = counts[["done", "running", "failed", "missing"]].sum()
    lines = [f"{path}: {int(total.sum())} runs: " + ", ".join(f"{int(total[c])} {c}" for c in total.index),
             "", counts.to_string(index=False)]
    if failed:
        lines += ["", f"failed runs ({len(failed)}), retried on the next launch:"]
        for rid, info in sorted(failed.items()):
            lines.append(f"  {rid} seed={info.get('seed')} {info.get('factors')}: {info.get('error')}")
    return "\n".join(lines)

