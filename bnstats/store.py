"""The on-disk layout of a sweep and ``load()`` into tidy DataFrames.

::

    DIR/sweep.json                  the sweep's config and identity (which configs may write here)
    DIR/units/<run_id>/             one finished run, committed by one atomic directory rename:
        run.parquet curves.parquet moments.parquet [moments_channel.parquet]
    DIR/tables/<table>.parquet      compacted tables (``compact()`` merges units into these)
    DIR/claims/<run_id>.json        a run being trained (host, pid; heartbeat by mtime)
    DIR/failed/<run_id>.json        a run that raised: its error and traceback (retried next launch)
    DIR/tmp/                        units being written

Writers never modify a file a reader may be reading: a unit appears whole (rename) or not at all,
and a run is stored once (the rename of a second copy fails and is discarded). Any number of
processes, on any number of machines sharing the filesystem, may write at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .config import ConfigError, RunConfig, SweepConfig, stable_hash

TABLES = ("runs", "curves", "moments", "moments_channel")
_UNIT_FILE = {"runs": "run.parquet", "curves": "curves.parquet", "moments": "moments.parquet",
              "moments_channel": "moments_channel.parquet"}
STALE_CLAIM_S = 300.0  # a claim whose heartbeat is older than this (and whose pid is gone) is abandoned


def _write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path, compression="zstd")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    """A sweep directory. ``Store.open(path, sweep)`` binds it to a config (creating it if new)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # --- layout ---------------------------------------------------------------------------------
    @property
    def units(self) -> Path:
        return self.path / "units"

    @property
    def tables(self) -> Path:
        return self.path / "tables"

    @property
    def claims(self) -> Path:
        return self.path / "claims"

    @property
    def failed(self) -> Path:
        return self.path / "failed"

    @classmethod
    def open(cls, path: str | Path, sweep: SweepConfig) -> Store:
        """Open (or create) the sweep directory for ``sweep``.

        Raises :class:`ConfigError` if the directory holds a different sweep (any difference other
        than the seeds or the launcher), naming the first differing field.
        """
        store = cls(path)
        meta_path = store.path / "sweep.json"
        identity = sweep.identity()
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            if meta["identity_hash"] != stable_hash(identity):
                diff = _first_difference(meta["identity"], identity)
                raise ConfigError(
                    f"--out: {str(store.path)!r} belongs to a different config ({diff}); "
                    "use another --out directory or the original config")
            if set(sweep.seeds) - set(meta["config"]["seeds"]):  # record seeds added later
                meta["config"]["seeds"] = sorted(set(meta["config"]["seeds"]) | set(sweep.seeds))
                _atomic_write_text(meta_path, json.dumps(meta, indent=2, sort_keys=True))
        else:
            if store.path.exists() and any(store.path.iterdir()):
                raise ConfigError(f"--out: {str(store.path)!r} exists, is not empty and is not a bnstats sweep")
            store.path.mkdir(parents=True, exist_ok=True)
            meta = {"format": 1, "identity": identity, "identity_hash": stable_hash(identity),
                    "factors": list(sweep.factors), "config": sweep.to_dict()}
            _atomic_write_text(meta_path, json.dumps(meta, indent=2, sort_keys=True))
        for d in (store.units, store.claims, store.failed, store.path / "tmp"):
            d.mkdir(exist_ok=True)
        return store

    def meta(self) -> dict[str, Any]:
        p = self.path / "sweep.json"
        if not p.is_file():
            raise FileNotFoundError(f"results: {str(self.path)!r} is not a bnstats sweep (no sweep.json)")
        return json.loads(p.read_text())

    # --- what is done ---------------------------------------------------------------------------
    def done_ids(self) -> set[str]:
        ids = {p.name for p in self.units.iterdir()} if self.units.is_dir() else set()
        runs = self.tables / "runs.parquet"
        if runs.is_file():
            ids |= set(pq.read_table(runs, columns=["run_id"]).column("run_id").to_pylist())
        return ids

    # --- writing one run ------------------------------------------------------------------------
    def write(self, output: Any) -> bool:
        """Commit one run's rows atomically. Returns False if the run was already stored."""
        run_id = output.run["run_id"]
        if run_id in self.done_ids():
            return False
        tmp = self.path / "tmp" / f"{run_id}.{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        try:
            _write_parquet([output.run], tmp / _UNIT_FILE["runs"])
            for table in ("curves", "moments", "moments_channel"):
                rows = getattr(output, table)
                if rows:
                    _write_parquet(rows, tmp / _UNIT_FILE[table])
            for f in tmp.iterdir():  # data on disk before the rename makes it visible
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            try:
                os.rename(tmp, self.units / run_id)
            except OSError:  # another worker committed the same run first: keep theirs
                return False
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        (self.failed / f"{run_id}.json").unlink(missing_ok=True)
        return True

    # --- claims: who is training what -------------------------------------------------------------
    def claim(self, run_id: str) -> bool:
        """Claim a run for this process; False if a live process holds it or it is done."""
        path = self.claims / f"{run_id}.json"
        info = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()})
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._claim_is_stale(path):
                    return False
                path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(info)
            if run_id in self.done_ids():  # finished by someone else since we planned
                path.unlink(missing_ok=True)
                return False
            return True
        return False

    def heartbeat(self, run_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.claims / f"{run_id}.json")

    def release(self, run_id: str) -> None:
        (self.claims / f"{run_id}.json").unlink(missing_ok=True)

    def _claim_is_stale(self, path: Path) -> bool:
        try:
            info = json.loads(path.read_text())
            age = time.time() - path.stat().st_mtime
        except (FileNotFoundError, json.JSONDecodeError):
            return True  # vanished, or a writer died between create and write
        if info.get("host") == socket.gethostname():
            return not _pid_alive(int(info["pid"]))
        return age > STALE_CLAIM_S

    def active_claims(self) -> dict[str, dict[str, Any]]:
        out = {}
        for p in self.claims.glob("*.json"):
            if not self._claim_is_stale(p):
                with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                    out[p.stem] = json.loads(p.read_text())
        return out

    # --- failures -------------------------------------------------------------------------------
    def record_failure(self, run: RunConfig, exc: BaseException) -> None:
        info = {"run_id": run.run_id, "seed": run.seed, "factors": run.factor_values(),
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": "".join(traceback.format_exception(exc)),
                "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
        _atomic_write_text(self.failed / f"{run.run_id}.json", json.dumps(info, indent=2))

    def failures(self) -> dict[str, dict[str, Any]]:
        done = self.done_ids()
        out = {}
        for p in self.failed.glob("*.json"):
            if p.stem not in done:
                with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                    out[p.stem] = json.loads(p.read_text())
        return out

    # --- compaction -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.path / "compact.lock", "a") as fh:
            fcntl.lockf(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(fh, fcntl.LOCK_UN)

    def compact(self) -> int:
        """Merge committed units into ``tables/``; returns how many units were merged.

        Safe while other processes write units or read: tables are replaced by rename, and units are
        deleted only after every table holding their rows is in place (readers de-duplicate).
        """
        with self._lock():
            units = sorted(p for p in self.units.iterdir() if p.is_dir())
            if not units:
                return 0
            self.tables.mkdir(exist_ok=True)
            for table in TABLES:
                parts = [u / _UNIT_FILE[table] for u in units if (u / _UNIT_FILE[table]).is_file()]
                if not parts:
                    continue
                old = self.tables / f"{table}.parquet"
                frames = ([pd.read_parquet(old)] if old.is_file() else []) + [pd.read_parquet(p) for p in parts]
                df = pd.concat([f for f in frames if len(f)], ignore_index=True)
                if table == "runs":
                    df = df.drop_duplicates("run_id", keep="first")
                tmp = self.tables / f".{table}.{uuid.uuid4().hex}.parquet"
                df.to_parquet(tmp, index=False, compression="zstd")
                os.replace(tmp, old)
            for u in units:
                shutil.rmtree(u, ignore_errors=True)
            return len(units)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _first_difference(old: Any, new: Any, prefix: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            if old.get(k) != new.get(k):
                return _first_difference(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else k)
    return f"{prefix}: stored {old!r}, config has {new!r}"


# -------------------------------------------------------------------------------------------------
# Reading


@dataclass
class Results:
    """A sweep's tables. ``runs`` is read at once; the larger tables are read on first access."""

    path: Path
    meta: dict[str, Any]
    runs: pd.DataFrame
    _unit_dirs: list[Path] = field(default_factory=list, repr=False)

    @property
    def factors(self) -> list[str]:
        """The grid factors of the sweep (columns of ``runs``)."""
        return list(self.meta["factors"])

    @property
    def config(self) -> dict[str, Any]:
        return self.meta["config"]

    def _table(self, table: str) -> pd.DataFrame:
        return _read_table(self.path, table, self._unit_dirs, set(self.runs["run_id"]))

    @cached_property
    def curves(self) -> pd.DataFrame:
        return self._table("curves")

    @cached_property
    def moments(self) -> pd.DataFrame:
        return self._table("moments")

    @cached_property
    def moments_channel(self) -> pd.DataFrame:
        return self._table("moments_channel")


_CATEGORICAL = ("source", "site")


def _read_table(path: Path, table: str, unit_dirs: list[Path], run_ids: set[str]) -> pd.DataFrame:
    compacted = path / "tables" / f"{table}.parquet"
    frames = [pd.read_parquet(compacted)] if compacted.is_file() else []
    seen = set(frames[0]["run_id"].unique()) if frames else set()
    for u in unit_dirs:
        f = u / _UNIT_FILE[table]
        if u.name not in seen and f.is_file():
            with contextlib.suppress(FileNotFoundError):  # compacted meanwhile: already in `frames`
                frames.append(pd.read_parquet(f))
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame({"run_id": pd.Series(dtype=str)})
    df = pd.concat(frames, ignore_index=True)
    df = df[df["run_id"].isin(run_ids)]
    if table == "runs":
        df = df.drop_duplicates("run_id", keep="first")
    sort = [c for c in ("run_id", "epoch", "step", "source", "layer", "site", "channel") if c in df]
    df = df.sort_values(sort, kind="stable").reset_index(drop=True)
    for c in _CATEGORICAL:
        if c in df:
            df[c] = df[c].astype("category")
    return df


def load(path: str | Path) -> Results:
    """Load a sweep directory: ``.runs`` (one row per finished run), ``.curves``, ``.moments``.

    Only complete runs are visible; each run appears once however many workers wrote it.
    ``runs.attrs["factors"]`` lists the grid factors (used by ``bnstats.stats.compare``).
    """
    path = Path(path)
    store = Store(path)
    meta = store.meta()
    for attempt in range(5):  # a concurrent compaction may move units while we list them
        try:
            unit_dirs = sorted(p for p in store.units.iterdir() if p.is_dir()) if store.units.is_dir() else []
            runs = _read_table(path, "runs", unit_dirs, _all_ids(path, unit_dirs))
            break
        except FileNotFoundError:
            if attempt == 4:
                raise
            time.sleep(0.05)
    factor_order = ["seed", *meta["factors"]]
    runs = runs.sort_values([c for c in factor_order if c in runs], kind="stable").reset_index(drop=True)
    runs.attrs["factors"] = list(meta["factors"])
    return Results(path, meta, runs, unit_dirs)


def _all_ids(path: Path, unit_dirs: list[Path]) -> set[str]:
    ids = {u.name for u in unit_dirs}
    compacted = path / "tables" / "runs.parquet"
    if compacted.is_file():
        ids |= set(pq.read_table(compacted, columns=["run_id"]).column("run_id").to_pylist())
    return ids
