"""The on-disk layout of a sweep and ``load()`` into tidy DataFrames.

::

    DIR/sweep.json                  the sweep's config and identity (which configs may write here)
    DIR/units/<run_id>/             one finished run, committed by one atomic directory rename:
        run.parquet curves.parquet moments.parquet [moments_channel.parquet]
    DIR/tables/<table>.parquet      compacted tables (``compact()`` merges units into these)
    DIR/claims/<run_id>.json        a run being trained (host, pid; heartbeat by mtime)
    DIR/failed/<run_id>.json        a run that raised: its error and traceback (retried next launch)
    DIR/tmp/                        units being written, and units being deleted by a compaction
    DIR/compact.lock                the lock of compaction and of claim take-overs

Guarantees, for any number of processes on any number of machines sharing the directory (a local
disk, NFS, Lustre, GPFS):

- **Readers see only complete runs.** A unit is written under ``tmp/`` (data fsync'ed) and appears in
  ``units/`` by one atomic rename, or not at all; a killed writer leaves only a ``tmp/`` entry, which
  ``Store.open`` deletes once its process is gone (same host) or after ``TMP_STALE_S`` (any host).
  Tables are replaced by rename, never rewritten in place.
- **A run is stored once.** The rename of a second copy onto an existing unit fails and the copy is
  dropped; a copy that lands after the first was compacted is dropped by the next compaction, and
  readers ignore it meanwhile (compacted rows win, ``runs`` is de-duplicated on ``run_id``).
- **Compaction is safe beside writers and readers.** Compactions are serialised by a lock. Each table
  takes only the units it does not hold yet, the tables are replaced (``runs`` last), and only then are
  the units moved out of ``units/`` (one rename each). A compaction killed at any point loses nothing and
  duplicates nothing. A reader that finds a unit gone mid-read reads again (the rows are in the tables
  by then); ``load()`` needs no lock and works on a read-only copy.
- **Claims** (``O_CREAT|O_EXCL``) keep two live processes from training the same run: on the claim's
  host a claim is live while its pid is; from elsewhere, while its heartbeat (mtime, every 30 s) is
  younger than ``STALE_CLAIM_S``. Taking over a stale claim happens under the lock, so only one process
  does. Claims save work; correctness does not depend on them (a run trained twice is stored once).

Locks: ``fcntl.lockf`` (POSIX record locks, which NFSv3 with lockd and NFSv4 support); where the
filesystem refuses them (``ENOLCK``, ``ENOSYS``, e.g. NFS without lockd, Lustre without ``-o flock``), an
atomic ``mkdir`` lock directory, broken after ``STALE_LOCK_S``. Atomic rename within a directory tree and
``O_EXCL`` are atomic on NFSv3+ and the parallel filesystems. Clocks of different hosts should agree
to within a minute (claim heartbeats and stale ``tmp/`` entries are judged by mtime).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import subprocess
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
STALE_CLAIM_S = 300.0  # another host's claim whose heartbeat is older than this is abandoned
TMP_STALE_S = 6 * 3600.0  # a tmp/ entry older than this is a killed writer's leftover, whatever its host
STALE_LOCK_S = 3600.0  # a fallback lock directory older than this is a killed compaction's leftover
_LAYOUT = {"sweep.json", "units", "tables", "claims", "failed", "tmp", "compact.lock", "compact.lockdir",
           "submitit"}


def _write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path, compression="zstd")


def _read_parquet(path: Path) -> pd.DataFrame:
    """Read through one open file: a table replaced meanwhile is read whole, old or new.

    (Given a path, pyarrow's dataset reader opens the file twice, footer then pages, and a
    compaction replacing the table in between gives "Page was smaller than expected".)
    """
    with pa.OSFile(str(path), "rb") as fh:
        return pd.read_parquet(fh)


def _read_run_ids(path: Path) -> set[str]:
    with pa.OSFile(str(path), "rb") as fh:
        return set(pq.read_table(fh, columns=["run_id"]).column("run_id").to_pylist())


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs. A zombie (exited, not yet reaped: a killed
    worker whose parent, the pool's fork server, exited first) answers ``kill(pid, 0)`` but trains
    nothing, so it counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS), or it just went
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # the state follows the command name's ")"


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
        than the seeds or the launcher), naming the first differing field. Two processes creating the
        same directory at once agree on one ``sweep.json``. Leftovers of killed writers in ``tmp/``
        are deleted.
        """
        store = cls(path)
        meta_path = store.path / "sweep.json"
        identity = sweep.identity()
        if meta_path.is_file() and json.loads(meta_path.read_text()).get("source") == "import":
            raise ConfigError(f"--out: {str(store.path)!r} holds imported runs (bnstats import), not a sweep; "
                              "use another --out directory")
        if not meta_path.is_file():
            if store.path.exists() and any(not _is_layout(p.name) for p in store.path.iterdir()):
                raise ConfigError(f"--out: {str(store.path)!r} exists, is not empty and is not a bnstats sweep")
            store.path.mkdir(parents=True, exist_ok=True)
            meta = {"format": 1, "identity": identity, "identity_hash": stable_hash(identity),
                    "factors": list(sweep.factors), "config": sweep.to_dict()}
            _create_text(meta_path, json.dumps(meta, indent=2, sort_keys=True))
        for d in (store.units, store.claims, store.failed, store.path / "tmp"):
            d.mkdir(exist_ok=True)
        meta = json.loads(meta_path.read_text())
        if meta["identity_hash"] != stable_hash(identity):
            diff = _first_difference(meta["identity"], identity)
            raise ConfigError(
                f"--out: {str(store.path)!r} belongs to a different config ({diff}); "
                "use another --out directory or the original config")
        if set(sweep.seeds) - set(meta["config"]["seeds"]):  # record seeds added later
            with store._lock():  # read-modify-write: two launches adding seeds keep both
                meta = json.loads(meta_path.read_text())
                meta["config"]["seeds"] = sorted(set(meta["config"]["seeds"]) | set(sweep.seeds))
                _atomic_write_text(meta_path, json.dumps(meta, indent=2, sort_keys=True))
        store.clean_tmp()
        return store

    def clean_tmp(self, *, older_than_s: float = TMP_STALE_S) -> int:
        """Delete ``tmp/`` entries of killed writers: those of dead processes of this host, and any
        older than ``older_than_s``. Returns how many were deleted."""
        tmp = self.path / "tmp"
        if not tmp.is_dir():
            return 0
        host, now, n = socket.gethostname(), time.time(), 0
        for p in tmp.iterdir():
            owner = _tmp_owner(p.name)
            try:
                old = now - p.stat().st_mtime > older_than_s
            except FileNotFoundError:
                continue
            if old or (owner is not None and owner[0] == host and not _pid_alive(owner[1])):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                n += 1
        return n

    def _tmp_name(self, stem: str) -> Path:
        """A unique ``tmp/`` path that names its owner (host, pid), for :meth:`clean_tmp`."""
        return self.path / "tmp" / f"{stem}~{socket.gethostname()}~{os.getpid()}~{uuid.uuid4().hex[:12]}"

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
            ids |= _read_run_ids(runs)
        return ids

    # --- writing one run ------------------------------------------------------------------------
    def write(self, output: Any) -> bool:
        """Commit one run's rows atomically. Returns False if the run was already stored."""
        run_id = output.run["run_id"]
        if run_id in self.done_ids():
            return False
        tmp = self._tmp_name(run_id)
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
        if not self._create_claim(path):
            with self._lock():  # take over a stale claim: one process only, re-checked under the lock
                if not (path.exists() and self._claim_is_stale(path)):
                    return False
                path.unlink(missing_ok=True)
                if not self._create_claim(path):
                    return False
        if run_id in self.done_ids():  # finished by someone else since we planned
            self.release(run_id)
            return False
        return True

    def _create_claim(self, path: Path) -> bool:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(self._me()))
        return True

    @staticmethod
    def _me() -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}

    def heartbeat(self, run_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.claims / f"{run_id}.json")

    def release(self, run_id: str) -> None:
        """Drop this process's claim (not one another process took over meanwhile)."""
        path = self.claims / f"{run_id}.json"
        try:
            info = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            info = {}
        if info and (info.get("host"), info.get("pid")) != (socket.gethostname(), os.getpid()):
            return
        path.unlink(missing_ok=True)

    def _claim_is_stale(self, path: Path) -> bool:
        try:
            info = json.loads(path.read_text())
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return True  # vanished
        except json.JSONDecodeError:  # being written, or its writer died between create and write
            try:
                return time.time() - path.stat().st_mtime > 10.0
            except FileNotFoundError:
                return True
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
        """The store's exclusive lock (compaction, claim take-over, seeds update); see the module doc."""
        with open(self.path / "compact.lock", "a") as fh:
            try:
                fcntl.lockf(fh, fcntl.LOCK_EX)
                posix = True
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                posix = False
            if not posix:
                with _dir_lock(self.path / "compact.lockdir"):
                    yield
                return
            try:
                yield
            finally:
                fcntl.lockf(fh, fcntl.LOCK_UN)

    def compact(self) -> int:
        """Merge committed units into ``tables/``; returns how many units were merged.

        Safe while other processes write units or read (see the module doc): each table takes the
        units it does not hold yet, tables are replaced by rename (``runs`` last), and units leave
        ``units/`` (one rename each) only after every table holding their rows is in place.
        """
        with self._lock():
            self.tables.mkdir(exist_ok=True)
            for p in self.tables.glob(".*.parquet"):  # a killed compaction's half-written table
                p.unlink(missing_ok=True)
            units = sorted(p for p in self.units.iterdir() if p.is_dir())
            if not units:
                return 0
            staged: list[tuple[Path, Path]] = []
            merged: set[str] = set()
            for table in (*(t for t in TABLES if t != "runs"), "runs"):  # runs last: see the module doc
                old = self.tables / f"{table}.parquet"
                old_df = _read_parquet(old) if old.is_file() else None
                held = set(old_df["run_id"].unique()) if old_df is not None and len(old_df) else set()
                parts = [u / _UNIT_FILE[table] for u in units
                         if u.name not in held and (u / _UNIT_FILE[table]).is_file()]
                if table == "runs":
                    merged = {p.parent.name for p in parts}
                if not parts:
                    continue
                frames = ([old_df] if old_df is not None else []) + [_read_parquet(p) for p in parts]
                df = pd.concat([f for f in frames if len(f)], ignore_index=True)
                if table == "runs":
                    df = df.drop_duplicates("run_id", keep="first")
                tmp = self.tables / f".{table}.{uuid.uuid4().hex}.parquet"
                df.to_parquet(tmp, index=False, compression="zstd")
                staged.append((tmp, old))
            for tmp, old in staged:
                os.replace(tmp, old)
            trash = self._tmp_name("compacted")
            trash.mkdir(parents=True)
            for u in units:  # one rename each: a reader sees a unit whole or not at all
                with contextlib.suppress(FileNotFoundError):
                    os.rename(u, trash / u.name)
            shutil.rmtree(trash, ignore_errors=True)
            return len(merged)


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


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _create_text(path: Path, text: str) -> bool:
    """Write ``path`` atomically unless it exists; False if another process created it first."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(text)
    try:
        os.link(tmp, path)  # atomic, and fails if `path` exists
        return True
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links
        if path.exists():
            return False
        os.replace(tmp, path)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _is_layout(name: str) -> bool:
    return name in _LAYOUT or name.startswith(".sweep.json.")


def _tmp_owner(name: str) -> tuple[str, int] | None:
    parts = name.split("~")
    if len(parts) >= 4 and parts[-2].isdigit():
        return parts[-3], int(parts[-2])
    return None


@contextlib.contextmanager
def _dir_lock(path: Path) -> Iterator[None]:
    """An exclusive lock by atomic ``mkdir``, for filesystems without POSIX locks."""
    delay = 0.05
    while True:
        try:
            path.mkdir()
            break
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - path.stat().st_mtime > STALE_LOCK_S:
                    with contextlib.suppress(OSError):
                        path.rmdir()
                    continue
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.rmdir()


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
    for attempt in range(50):
        try:
            return _read_table_once(path, table, unit_dirs, run_ids)
        except _UnitVanished:  # compacted while we read: its rows are in the table now, read again
            time.sleep(0.02 * attempt)
    raise RuntimeError(f"{path}: units keep vanishing while reading {table!r}; is a compaction looping?")


class _UnitVanished(Exception):
    pass


def _read_table_once(path: Path, table: str, unit_dirs: list[Path], run_ids: set[str]) -> pd.DataFrame:
    compacted = path / "tables" / f"{table}.parquet"
    try:
        frames = [_read_parquet(compacted)]
    except FileNotFoundError:
        frames = []
    seen = set(frames[0]["run_id"].unique()) if frames and len(frames[0]) else set()
    for u in unit_dirs:
        if u.name in seen:  # compacted rows win over a unit (a late duplicate, or compacted meanwhile)
            continue
        try:
            frames.append(_read_parquet(u / _UNIT_FILE[table]))
        except FileNotFoundError:
            if not u.is_dir():
                raise _UnitVanished(u.name) from None
            # the unit has no rows for this table (e.g. moments_channel when per_channel is off)
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
        ids |= _read_run_ids(compacted)
    return ids
