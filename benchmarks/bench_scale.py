"""Analysis at the scale of real seed studies: ``python benchmarks/bench_scale.py`` (``nox -s bench -- scale``).

Makes seeded synthetic stores of 10^3, 10^4 and 10^5 runs and records, in one invocation, the wall time
and peak memory of what a user runs on them, each in a fresh process:

- ``load``: ``bnstats.store.load(DIR)`` and ``len(results.runs)`` (what every command starts with);
- ``compare``: ``bnstats compare DIR`` (every arm against the baseline in every cell, default options:
  paired t, BCa with 9,999 resamples, Wilcoxon, sign-flip, Holm);
- ``report``: ``bnstats report DIR --out TMP`` (papermill notebook, figures, HTML and PDF).

**The stores** replicate the shipped reference study (``data/reference/placement-mnist1d``: 540 runs,
30 seeds × 18 cells and arms, 30 epochs, moments at 4 sites of 2–3 layers on the probe batch, ~258
moment rows per run) as the issue did: new seed ``s`` (0, 1, 2, ...) copies every run, curve row and
moment row of one reference seed, drawn with a seeded ``numpy`` generator (``--seed``), under a new
``run_id`` (and new ``init_hash`` / ``order_hash``, shared by the arms of a seed as in a
real sweep, so the pairing certificate holds). The tables are written as a compaction writes them
(``tables/*.parquet``, zstd, row groups of at most 2^20 rows; curves and moments grouped by run). A
store of N runs has round(N / 18) seeds per arm (``--cells arch=mlp`` keeps 9 runs per seed, so 10^5
runs have ~1.1·10^4 seeds per arm). Stores are cached under ``--stores`` (default: a folder in the
system's temporary directory), keyed by their size, cells and seed; they are never part of the
repository.

**Time**: ``wall_s`` from start to exit; ``cpu_s``, the user + system CPU time of the command and every
process it waited for (``wait4``), which a shared machine's other jobs slow far less than the wall
clock; ``load_avg``, the machine's 1-minute load average when the command ended (2 cores: above 2,
the command shared them).

**Memory**: ``max_rss_mb`` is the kernel's peak resident set of the largest process of the command's
process tree (``ru_maxrss`` of ``wait4``: the command, papermill's kernel, the figure workers);
``tree_pss_mb`` is the peak of the summed proportional set size (PSS) of every process of the tree,
sampled every 0.1 s (``psutil``; a page shared by a forked figure worker and the kernel counts once in
the sum, unlike RSS, which would count it in both): the memory the command needs from the machine.

``--ref GIT_REV`` also runs every command with the ``bnstats`` of another revision (checked out into a
temporary git worktree, as ``bench_cpu.py --ref`` does), right after its current-code twin on the same
store: before and after a change in one invocation. ``--timeout S`` kills a command (its whole process
tree) after S seconds and ``--max-mb M`` as soon as its tree holds more than M MB, recording which.

Output: a Markdown table on stdout and a JSON record (``--out``) with the machine, the commit of each
code and every measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "data" / "reference" / "placement-mnist1d"
COMMANDS = ("load", "compare", "report")
ROW_GROUP = 2**20  # rows per Parquet row group: pyarrow's default, what a compaction's to_parquet writes
FORMAT = 3  # of the generated stores; a cached store of another format is made again


# --- the stores -----------------------------------------------------------------------------------


def _hash16(*parts: Any) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:16]


def _cells_filter(runs: pa.Table, cells: list[str]) -> pa.Table:
    """The reference runs whose grid factors match every ``KEY=VALUE`` of ``cells``."""
    for item in cells:
        key, sep, value = item.partition("=")
        if not sep or key not in runs.column_names:
            raise ValueError(f"--cells: {item!r} is not KEY=VALUE with KEY a column of the runs table "
                             f"({', '.join(runs.column_names)})")
        runs = runs.filter(pc.equal(runs[key], value))
        if not len(runs):
            raise ValueError(f"--cells: no reference run has {item!r}")
    return runs


def make_store(path: Path, n_runs: int, *, seed: int = 0, cells: tuple[str, ...] = (),
               reference: Path = REFERENCE) -> dict[str, Any]:
    """Write a store of about ``n_runs`` runs at ``path`` (see the module doc); return what it holds."""
    ref_runs = _cells_filter(pq.read_table(reference / "tables" / "runs.parquet"), list(cells))
    ref_ids = ref_runs["run_id"].to_pylist()
    ref_seeds = np.asarray(ref_runs["seed"].to_numpy())
    seeds = np.unique(ref_seeds)
    per_seed = len(ref_ids) // len(seeds)
    n_seeds = max(2, round(n_runs / per_seed))
    rng = np.random.default_rng(seed)
    source = seeds[rng.integers(0, len(seeds), size=n_seeds)]  # the reference seed new seed s copies

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "tables").mkdir(parents=True)
    meta = json.loads((reference / "sweep.json").read_text())
    meta["config"]["seeds"] = list(range(n_seeds))  # the seeds are not part of the identity
    if cells:
        for item in cells:
            key, _, value = item.partition("=")
            meta["config"]["grid"][key] = [value]
    (tmp / "sweep.json").write_text(json.dumps(meta, indent=2, sort_keys=True))

    rows_of_seed = {s: np.flatnonzero(ref_seeds == s) for s in seeds}
    # the new runs in seed order: runs row i of seed s copies reference row rows_of_seed[source[s]][j]
    src_rows = np.concatenate([rows_of_seed[source[s]] for s in range(n_seeds)])
    new_seed = np.repeat(np.arange(n_seeds), per_seed)
    new_ids = [_hash16(ref_ids[r], s) for r, s in zip(src_rows, new_seed, strict=True)]
    runs = ref_runs.take(pa.array(src_rows))
    for col in ("init_hash", "order_hash"):  # shared by the arms of a seed; data_hash is the dataset's, kept
        old = runs[col].to_pylist()
        runs = runs.set_column(runs.schema.get_field_index(col), col,
                               pa.array([_hash16(h, s) for h, s in zip(old, new_seed, strict=True)], pa.large_string()))
    runs = runs.set_column(runs.schema.get_field_index("run_id"), "run_id", pa.array(new_ids, pa.large_string()))
    runs = runs.set_column(runs.schema.get_field_index("seed"), "seed", pa.array(new_seed, pa.int64()))
    pq.write_table(runs, tmp / "tables" / "runs.parquet", compression="zstd", row_group_size=ROW_GROUP)

    held = {"runs": len(runs), "seeds_per_arm": n_seeds, "runs_per_seed": per_seed}
    for table in ("curves", "moments"):
        held[table] = _write_copies(reference / "tables" / f"{table}.parquet", tmp / "tables" / f"{table}.parquet",
                                    ref_ids, src_rows, new_ids)
    (tmp / "STORE.json").write_text(json.dumps({"format": FORMAT, "seed": seed, "cells": list(cells), **held}))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return held


def _write_copies(source: Path, dest: Path, ref_ids: list[str], src_rows: np.ndarray, new_ids: list[str]) -> int:
    """Write to ``dest`` the rows of ``source`` of reference run ``ref_ids[src_rows[i]]`` under run id
    ``new_ids[i]``, for every i in order, in row groups of whole runs; return the rows written."""
    ref = pq.read_table(source)
    ref = ref.filter(pc.is_in(ref["run_id"], value_set=pa.array(ref_ids, pa.large_string())))
    ref = ref.sort_by("run_id")  # each reference run's rows contiguous: start[i], count[i]
    ids = ref["run_id"].to_numpy(zero_copy_only=False)
    index = {rid: i for i, rid in enumerate(ref_ids)}
    order = np.array([index[r] for r in ids])
    count = np.bincount(order, minlength=len(ref_ids))
    start = np.zeros(len(ref_ids), np.int64)
    first = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    start[order[first]] = first
    new_ids_arr = np.array(new_ids, dtype=object)
    per_group = max(1, ROW_GROUP // max(1, int(count.mean())))  # runs per row group
    n_rows = 0
    with contextlib.ExitStack() as stack:
        writer = None
        for lo in range(0, len(new_ids), per_group):
            chunk = np.arange(lo, min(lo + per_group, len(new_ids)))
            r = src_rows[chunk]
            take = np.concatenate([np.arange(start[i], start[i] + count[i]) for i in r])
            part = ref.take(pa.array(take))
            rid = pa.array(np.repeat(new_ids_arr[chunk], count[r]), pa.large_string())
            part = part.set_column(part.schema.get_field_index("run_id"), "run_id", rid)
            if writer is None:
                writer = stack.enter_context(pq.ParquetWriter(dest, part.schema, compression="zstd"))
            writer.write_table(part, row_group_size=ROW_GROUP)
            n_rows += len(part)
    return n_rows


def cached_store(root: Path, n_runs: int, *, seed: int, cells: tuple[str, ...]) -> tuple[Path, dict[str, Any]]:
    name = f"runs{n_runs}-seed{seed}" + "".join(f"-{c.replace('=', '_')}" for c in cells)
    path = root / name
    info = path / "STORE.json"
    if info.is_file():
        held = json.loads(info.read_text())
        if held.get("format") == FORMAT:
            return path, held
    t0 = time.perf_counter()
    held = make_store(path, n_runs, seed=seed, cells=cells)
    print(f"  made {path} in {time.perf_counter() - t0:.0f} s: {held}", file=sys.stderr, flush=True)
    return path, json.loads(info.read_text())


# --- one command in a fresh process -------------------------------------------------------------


def _tree_pss(proc) -> int:
    """Summed proportional set size of ``proc`` and its descendants: a page shared by k processes
    (a forked figure worker and the kernel it came from) counts 1/k in each."""
    import psutil

    total = 0
    with contextlib.suppress(psutil.Error):
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_full_info().pss
    return total


def _kill_tree(pid: int) -> None:
    import psutil

    with contextlib.suppress(psutil.Error):
        parent = psutil.Process(pid)
        for p in [*parent.children(recursive=True), parent]:
            with contextlib.suppress(psutil.Error):
                p.kill()


def measure(argv: list[str], *, code: Path, timeout: float, max_mb: float) -> dict[str, Any]:
    """Run ``argv`` with ``bnstats`` imported from ``code``; wall time, peak RSS (largest process and
    sampled tree PSS), exit status, and the last lines of its stderr."""
    import psutil

    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=str(code), stdout=subprocess.DEVNULL, stderr=err)
        ps = psutil.Process(proc.pid)
        peak = [0]
        stopped = threading.Event()
        killed: list[str] = []

        def watch() -> None:
            while not stopped.wait(0.1):
                rss = _tree_pss(ps)
                peak[0] = max(peak[0], rss)
                if rss > max_mb * 2**20 and not killed:
                    killed.append(f"killed: more than {max_mb:.0f} MB")
                    _kill_tree(proc.pid)
                elif time.perf_counter() - t0 > timeout and not killed:
                    killed.append(f"killed: more than {timeout:.0f} s")
                    _kill_tree(proc.pid)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        stopped.set()
        watcher.join()
        err.seek(0)
        tail = err.read().decode(errors="replace").strip().splitlines()[-3:]
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "load_avg": round(os.getloadavg()[0], 2), "max_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "tree_pss_mb": round(peak[0] / 2**20, 1), "rc": proc.returncode,
            "note": killed[0] if killed else "", "stderr_tail": tail}


def command(name: str, store: Path, out: Path) -> list[str]:
    py = sys.executable
    if name == "load":
        return [py, "-c", "import sys; from bnstats import store; r = store.load(sys.argv[1]); print(len(r.runs))",
                str(store)]
    if name == "compare":
        return [py, "-m", "bnstats.cli", "compare", str(store)]
    if name == "report":
        return [py, "-m", "bnstats.cli", "report", str(store), "--out", str(out), "--quiet"]
    raise ValueError(f"--commands: {name!r} is not one of {', '.join(COMMANDS)}")


# --- the record -----------------------------------------------------------------------------------


def _git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _code_info(root: Path) -> dict[str, Any] | None:
    try:
        return {"commit": _git("rev-parse", "HEAD", cwd=root),
                "dirty": bool(_git("status", "--porcelain", "--untracked-files=no", cwd=root))}
    except (OSError, subprocess.CalledProcessError):
        return None


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 2**20:.0f} GiB"
    versions = {}
    for pkg in ("numpy", "scipy", "pandas", "pyarrow", "matplotlib"):
        with contextlib.suppress(Exception):
            import importlib.metadata as md

            versions[pkg] = md.version(pkg)
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": mem, "python": platform.python_version(),
            "platform": platform.platform(), **versions}


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| code | runs | seeds per arm | moment rows | command | wall s | CPU s | load | peak RSS MB (largest "
             "process) | peak PSS MB (process tree) | note |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        note = r["note"] or ("" if r["rc"] == 0 else f"exit {r['rc']}: {' '.join(r['stderr_tail'][-1:])[:120]}")
        lines.append(f"| {r['code']} | {r['runs']:,} | {r['seeds_per_arm']:,} | {r['moment_rows']:,} | {r['command']} "
                     f"| {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['load_avg']:.1f} | {r['max_rss_mb']:,.0f} "
                     f"| {r['tree_pss_mb']:,.0f} | {note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, nargs="+", default=[1000, 10_000, 100_000], help="store sizes (runs)")
    p.add_argument("--commands", nargs="+", default=list(COMMANDS), choices=COMMANDS)
    p.add_argument("--cells", nargs="*", default=[], metavar="KEY=VALUE",
                   help="replicate only these cells of the reference study (e.g. arch=mlp: 9 runs per seed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generator of the stores")
    p.add_argument("--stores", type=Path, default=Path(tempfile.gettempdir()) / "bnstats-scale-stores",
                   help="where the generated stores are kept between invocations")
    p.add_argument("--ref", default="", metavar="GIT_REV", help="also run every command with this revision's bnstats")
    p.add_argument("--timeout", type=float, default=1800, help="seconds before a command is killed")
    p.add_argument("--max-mb", type=float, default=12_000, help="MB of the process tree before a command is killed")
    p.add_argument("--out", type=Path, help="write the JSON record here")
    a = p.parse_args(argv)

    a.stores.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "command": "python benchmarks/bench_scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
        "code": _code_info(REPO), "results": []}
    with contextlib.ExitStack() as stack:
        codes = {"current": REPO}
        if a.ref:
            sys.path.insert(0, str(REPO))
            from benchmarks.bench_cpu import ref_checkout

            root, commit = stack.enter_context(ref_checkout(a.ref))
            codes[f"ref {a.ref}"] = root
            record["ref"] = {"rev": a.ref, "commit": commit}
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bnstats-scale-")))
        for n in a.runs:
            store, held = cached_store(a.stores, n, seed=a.seed, cells=tuple(a.cells))
            for name in a.commands:
                for label, root in codes.items():
                    out = work / f"report-{n}-{len(record['results'])}"
                    r = measure(command(name, store, out), code=root, timeout=a.timeout, max_mb=a.max_mb)
                    shutil.rmtree(out, ignore_errors=True)
                    row = {"code": label, "runs": held["runs"], "seeds_per_arm": held["seeds_per_arm"],
                           "moment_rows": held["moments"], "curve_rows": held["curves"], "command": name, **r}
                    record["results"].append(row)
                    print(f"  {label} {held['runs']} runs {name}: {r['wall_s']} s (CPU {r['cpu_s']} s, load "
                          f"{r['load_avg']}), {r['max_rss_mb']} MB, "
                          f"tree PSS {r['tree_pss_mb']} MB, rc {r['rc']} {r['note']}", file=sys.stderr, flush=True)
                    if a.out:
                        a.out.write_text(json.dumps(record, indent=2) + "\n")
    print(markdown(record["results"]))
    if a.out:
        a.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0 if all(r["rc"] == 0 for r in record["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
