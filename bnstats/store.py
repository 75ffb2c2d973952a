"""The on-disk layout of a sweep, ``load()`` into tidy DataFrames, and ``verify()`` with repair.

::

    DIR/sweep.json                  the sweep's config and identity (which configs may write here)
    DIR/units/<run_id>/             one finished run, committed by one atomic directory rename:
        run.parquet curves.parquet moments.parquet [moments_channel.parquet] manifest.json
    DIR/tables/<table>.parquet      compacted tables (``compact()`` merges units into these)
    DIR/claims/<run_id>.json        a run being trained (host, pid; heartbeat by mtime)
    DIR/failed/<run_id>.json        a run that raised: its error and traceback (retried next launch)
    DIR/tmp/                        files being written (named by their writer's host and pid), and
                                    units being deleted by a compaction
    DIR/quarantine/<name>-<time>/   damaged units and tables moved aside, each with a REASON.txt
    DIR/compact.lock                the lock of compaction, repair and claim take-overs (holds who has it)

Guarantees, for any number of processes on any number of machines sharing the directory (a local
disk, NFS, Lustre, GPFS):

- **Readers see only complete runs.** A unit is written under ``tmp/`` and appears in ``units/`` by
  one atomic rename, or not at all; a killed writer leaves only a ``tmp/`` entry, which ``Store.open``
  deletes once its process is gone (same host) or after ``TMP_STALE_S`` (any host). Tables are
  replaced by rename, never rewritten in place. The same holds for ``sweep.json`` and ``failed/``.
- **What is stored survives a power cut.** A unit's files and directory are fsync'ed before the rename
  that makes it visible, and ``units/`` after it. A compaction fsyncs each new table before renaming
  it into place and ``tables/`` after the renames, and only then removes the units it merged.
- **A run is stored once.** The rename of a second copy onto an existing unit fails and the copy is
  dropped; a copy that lands after the first was compacted is dropped by the next compaction, and
  readers ignore it meanwhile (compacted rows win, ``runs`` is de-duplicated on ``run_id``).
- **Compaction is safe beside writers and readers.** Compactions are serialised by a lock. Each table
  takes only the units it does not hold yet, the tables are replaced (``runs`` last), and only then are
  the units moved out of ``units/`` (one rename each). A compaction killed at any point loses nothing and
  duplicates nothing. A reader that finds a unit gone mid-read reads again (the rows are in the tables
  by then); ``load()`` needs no lock and works on a read-only copy.
- **A damaged file is named, never merged, never counted.** A unit counts as stored only if its
  ``run.parquet`` exists; before a unit is counted by a sweep or merged by a compaction, every file its
  ``manifest.json`` lists must exist and open as Parquet with the table's columns and the listed number
  of rows. A unit that fails is moved to ``quarantine/`` (reported), so its run trains again. A table
  that cannot be read is moved to ``quarantine/`` and rebuilt from what remains: a lost ``runs`` table
  makes its runs train again (their rows in the other tables go to ``quarantine/`` too, so the new
  rows are the only ones); a lost ``curves`` or ``moments`` table loses those rows (reported, the runs
  stay). Readers (``load``, ``bnstats status``) name the damaged file and the command that repairs it.
- **One config per directory.** ``sweep.json`` binds the directory to a config (all but its seeds and
  launcher); every run row carries that identity's hash (``sweep_identity``). A directory that lost
  ``sweep.json`` takes back only the config whose identity its runs carry (runs stored before the column
  existed: a config of which every stored ``run_id`` is a run), and refuses any other.
- **Claims** (``O_CREAT|O_EXCL``) keep two live processes from training the same run: on the claim's
  host a claim is live while its pid is; from elsewhere, while its heartbeat (mtime, every 30 s) is
  younger than ``STALE_CLAIM_S``. Taking over a stale claim happens under the lock, so only one process
  does. Claims save work; correctness does not depend on them (a run trained twice is stored once).

:func:`verify` checks all of this on a directory (``bnstats verify DIR [--repair]``).

Locks: ``fcntl.lockf`` (POSIX record locks, which NFSv3 with lockd and NFSv4 support); where the
filesystem refuses them (``ENOLCK``, ``ENOSYS``, e.g. NFS without lockd, Lustre without ``-o flock``), an
atomic ``mkdir`` lock directory, broken after ``STALE_LOCK_S``. A process that waits for the lock longer
than ``LOCK_WAIT_LOG_S`` says so, naming the holder. Atomic rename within a directory tree and ``O_EXCL``
are atomic on NFSv3+ and the parallel filesystems. Clocks of different hosts should agree to within a
minute (claim heartbeats and stale ``tmp/`` entries are judged by mtime).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.acero as ac
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .config import ConfigError, RunConfig, SweepConfig, stable_hash

TABLES = ("runs", "curves", "moments", "moments_channel")
_UNIT_FILE = {"runs": "run.parquet", "curves": "curves.parquet", "moments": "moments.parquet",
              "moments_channel": "moments_channel.parquet"}
_TABLE_OF = {f: t for t, f in _UNIT_FILE.items()}
# Columns without which a table's rows mean nothing (a file that lacks them is damaged). Imported
# stores (bnstats.importers) hold the same tables, their curves by step.
_REQUIRED = {"runs": ("run_id", "seed"), "curves": ("run_id",), "moments": ("run_id",),
             "moments_channel": ("run_id",)}
MANIFEST = "manifest.json"  # in each unit: the files it holds and their row counts
# Units written before manifests existed always held these two (every run has at least one epoch row).
_LEGACY_UNIT_FILES = ("run.parquet", "curves.parquet")
STALE_CLAIM_S = 300.0  # another host's claim whose heartbeat is older than this is abandoned
TMP_STALE_S = 6 * 3600.0  # a tmp/ entry older than this is a killed writer's leftover, whatever its host
STALE_LOCK_S = 3600.0  # a fallback lock directory older than this is a killed compaction's leftover
LOCK_WAIT_LOG_S = 2.0  # a process waiting this long for the store's lock says so
# Temporary files named without their owner (written by bnstats before 0.2, beside their target): a
# write takes milliseconds, so one older than this was left by a writer that died.
LEGACY_TMP_S = 600.0
_LAYOUT = {"sweep.json", "units", "tables", "claims", "failed", "tmp", "quarantine", "compact.lock",
           "compact.lockdir", "submitit"}


class StoreError(ValueError):
    """A file of a store is damaged or contradicts the others. The message names the file and the repair."""


class _UnitVanished(Exception):
    """A unit left ``units/`` while it was read (a compaction merged it): read again."""


class _Damaged(Exception):
    """A file that cannot be read as what it should be; ``why`` starts with the file's name."""

    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _describe(exc: BaseException) -> str:
    """pyarrow's error, on one line, without its "Could not open Parquet input source '<Buffer>'"."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return re.sub(r"Could not open Parquet input source '<[^>]*>': ", "", text)


def _parquet_why(exc: BaseException) -> str:
    return f"not a readable Parquet file ({_describe(exc)})"


def _write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path, compression="zstd")


def _read_parquet(path: Path) -> pd.DataFrame:
    """Read through one open file: a table replaced meanwhile is read whole, old or new.

    (Given a path, pyarrow's dataset reader opens the file twice, footer then pages, and a
    compaction replacing the table in between gives "Page was smaller than expected".)
    Raises ``FileNotFoundError``, or :class:`_Damaged` for a file that is not readable Parquet.
    """
    try:
        with pa.OSFile(str(path), "rb") as fh:
            return pd.read_parquet(fh)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise _Damaged(f"{path.name}: {_parquet_why(exc)}") from None


def _parquet_info(path: Path, *, read: bool) -> tuple[int, list[str], pa.Table | None]:
    """Rows and columns from the footer of ``path`` (and, with ``read``, every page's data)."""
    try:
        with pa.OSFile(str(path), "rb") as fh:
            pf = pq.ParquetFile(fh)
            data = pf.read() if read else None
            return pf.metadata.num_rows, list(pf.schema_arrow.names), data
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise _Damaged(f"{path.name}: {_parquet_why(exc)}") from None


def _read_columns(path: Path, wanted: tuple[str, ...]) -> pd.DataFrame:
    """The columns of ``wanted`` that ``path`` has (raises :class:`_Damaged` if it is not Parquet)."""
    try:
        with pa.OSFile(str(path), "rb") as fh:
            pf = pq.ParquetFile(fh)
            cols = [c for c in wanted if c in pf.schema_arrow.names]
            return pf.read(columns=cols).to_pandas()
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise _Damaged(f"{path.name}: {_parquet_why(exc)}") from None


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (files created, renamed or removed in it) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:  # a filesystem that cannot sync directories has nothing more to offer
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


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


def unit_problem(unit: Path, *, full: bool = False) -> str | None:
    """What is wrong with the committed unit ``unit`` (``"<file>: <why>"``), or None if it is whole.

    Every file its ``manifest.json`` lists must exist, open as Parquet (footer), have its table's
    required columns and the listed number of rows; ``run.parquet`` must hold one row, of this unit's
    ``run_id``. Units written before manifests must hold ``run.parquet`` and ``curves.parquet``.
    ``full`` also reads every page of every file (what ``bnstats verify`` does). Raises
    :class:`_UnitVanished` if the unit left ``units/`` meanwhile (compacted).
    """
    try:
        try:
            manifest = json.loads((unit / MANIFEST).read_text())
            files = {str(f): int(n) for f, n in manifest["files"].items()}
        except FileNotFoundError:
            if not unit.is_dir():
                raise _UnitVanished(unit.name) from None
            files = {f: -1 for f in _LEGACY_UNIT_FILES}  # -1: row count unknown
            files.update({f: -1 for t, f in _UNIT_FILE.items() if (unit / f).is_file()})
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return f"{MANIFEST}: not a unit manifest ({type(exc).__name__}: {exc})"
        if "run.parquet" not in files:
            return f"{MANIFEST}: lists no run.parquet"
        for name, rows in sorted(files.items(), key=lambda kv: kv[0] != "run.parquet"):
            if name not in _TABLE_OF:
                return f"{MANIFEST}: lists {name!r}, which is not a table file"
            table = _TABLE_OF[name]
            path = unit / name
            try:
                n, columns, data = _parquet_info(path, read=full or table == "runs")
            except FileNotFoundError:
                if not unit.is_dir():
                    raise _UnitVanished(unit.name) from None
                return f"{name}: missing"
            lacking = [c for c in _REQUIRED[table] if c not in columns]
            if lacking:
                return f"{name}: no column {', '.join(map(repr, lacking))}"
            if rows >= 0 and n != rows:
                return f"{name}: {n} rows, the unit's manifest says {rows}"
            if data is not None:
                ids = set(data.column("run_id").to_pylist())
                if table == "runs" and n != 1:
                    return f"{name}: {n} rows, a unit holds one run"
                if ids - {unit.name}:
                    return f"{name}: holds rows of run {sorted(ids - {unit.name})[0]!r}, not of this unit's"
    except _Damaged as exc:
        return exc.why
    return None


class Store:
    """A sweep directory. ``Store.open(path, sweep)`` binds it to a config (creating it if new).

    ``log`` receives one-line reports (a damaged file moved aside, waiting for the lock, ...); by
    default they go to stderr. ``identity_hash`` is the sweep identity written into each run row
    (:meth:`open` sets it; otherwise it is read from ``sweep.json``).
    """

    def __init__(self, path: str | Path, *, identity_hash: str | None = None,
                 log: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.identity_hash = identity_hash
        self.log = log or _stderr
        self.repairs: list[str] = []  # what this object moved to quarantine/ or rebuilt, one line each
        self._whole: set[str] = set()  # units found whole (units never change once committed)

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

    @property
    def quarantine(self) -> Path:
        return self.path / "quarantine"

    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.path))
        except ValueError:
            return str(path)

    @classmethod
    def open(cls, path: str | Path, sweep: SweepConfig, *, log: Callable[[str], None] | None = None) -> Store:
        """Open (or create) the sweep directory for ``sweep``.

        Raises :class:`ConfigError` if the directory holds a different sweep (any difference other
        than the seeds or the launcher), naming the first differing field, or is not writable. A
        directory that lost its ``sweep.json`` gets it back if its stored runs are runs of ``sweep``
        (and refuses otherwise, writing nothing). Two processes creating the same directory at once
        agree on one ``sweep.json``. Leftovers of killed writers in ``tmp/`` are deleted.
        """
        identity = sweep.identity()
        store = cls(path, identity_hash=stable_hash(identity), log=log)
        where = str(store.path)
        if store.path.exists() and not store.path.is_dir():
            raise ConfigError(f"--out: {where!r} is a file, not a directory")
        meta_path = store.path / "sweep.json"
        if meta_path.is_file() and store.meta().get("source") == "import":
            raise ConfigError(f"--out: {where!r} holds imported runs (bnstats import), not a sweep; "
                              "use another --out directory")
        try:
            if not meta_path.is_file():
                if store.path.exists() and any(not _is_layout(p.name) for p in store.path.iterdir()):
                    raise ConfigError(f"--out: {where!r} exists, is not empty and is not a bnstats sweep")
                stored_seeds = store._recover_identity(sweep)  # before anything is written: may refuse
                store._make_layout()
                meta = {"format": 1, "identity": identity, "identity_hash": store.identity_hash,
                        "factors": list(sweep.factors), "config": sweep.to_dict()}
                if stored_seeds:
                    meta["config"]["seeds"] = sorted(set(meta["config"]["seeds"]) | set(stored_seeds))
                if store._create_text(meta_path, json.dumps(meta, indent=2, sort_keys=True)) and stored_seeds:
                    store.log(f"{meta_path}: recovered from the runs stored in {where} (every one is a run "
                              f"of this config; seeds {_seed_text(meta['config']['seeds'])})")
                meta = store._check_identity(identity)  # another launch may have created it first, differently
            else:
                meta = store._check_identity(identity)  # before the layout: a refused directory gains nothing
                store._make_layout()
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise ConfigError(f"--out: {where!r} is not writable ({exc.strerror})") from None
            raise
        if set(sweep.seeds) - set(meta["config"]["seeds"]):  # record seeds added later
            with store._lock("adding seeds"):  # read-modify-write: two launches adding seeds keep both
                meta = store.meta()
                meta["config"]["seeds"] = sorted(set(meta["config"]["seeds"]) | set(sweep.seeds))
                store._atomic_write_text(meta_path, json.dumps(meta, indent=2, sort_keys=True))
        store.clean_tmp()
        return store

    def _check_identity(self, identity: dict[str, Any]) -> dict[str, Any]:
        """The directory's ``sweep.json``; :class:`ConfigError` naming the first difference if it belongs to
        another config than ``identity``."""
        meta = self.meta()
        if meta["identity_hash"] != self.identity_hash:
            diff = _first_difference(meta["identity"], identity)
            raise ConfigError(
                f"--out: {str(self.path)!r} belongs to a different config ({diff}); "
                "use another --out directory or the original config")
        return meta

    def _make_layout(self) -> None:
        new = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        for d in (self.units, self.claims, self.failed, self.path / "tmp"):
            d.mkdir(exist_ok=True)
        if new:  # the directory's own entry, so that sweep.json and the units are found after a crash
            _fsync_dir(self.path.parent)

    def _recover_identity(self, sweep: SweepConfig) -> list[int]:
        """The seeds of the runs stored in a directory without ``sweep.json`` (none: a new directory).

        Raises :class:`ConfigError` if any stored run is not a run of ``sweep``: its ``sweep_identity``
        differs, or (rows written before that column existed) its ``run_id`` is not among the runs of
        ``sweep`` over the stored seeds. A ``run_id`` hashes everything that determines a run's numbers,
        so runs that pass are exactly the runs ``sweep`` would train.
        """
        rows = self._stored_run_rows()
        if rows.empty:
            return []
        seeds_stored = sorted({int(s) for s in rows["seed"]})
        where = str(self.path)
        own = self.identity_hash
        if "sweep_identity" in rows:
            tagged = rows[rows["sweep_identity"].notna()]
            other = tagged[tagged["sweep_identity"] != own]
            if len(other):
                raise ConfigError(
                    f"--out: {where!r} lost its sweep.json and holds {len(other)} runs of another config "
                    f"(sweep identity {other['sweep_identity'].iloc[0]}, this config's is {own}); use "
                    "another --out directory or the original config")
            rows = rows[rows["sweep_identity"].isna()]
        if len(rows):
            seeds = sorted(set(sweep.seeds) | {int(s) for s in rows["seed"]})
            mine = {r.run_id for r in dataclasses.replace(sweep, seeds=tuple(seeds)).runs()}
            foreign = rows[~rows["run_id"].isin(mine)]
            if len(foreign):
                raise ConfigError(
                    f"--out: {where!r} lost its sweep.json and holds {len(foreign)} runs of another config "
                    f"(e.g. run {foreign['run_id'].iloc[0]}, seed {int(foreign['seed'].iloc[0])}, is not a run "
                    "of this config); use another --out directory or the original config")
        return seeds_stored

    def _stored_run_rows(self) -> pd.DataFrame:
        """``run_id``, ``seed`` (and ``sweep_identity`` where stored) of every stored run: the runs
        table and the whole units (damaged ones are not runs)."""
        wanted = ("run_id", "seed", "sweep_identity")
        frames = []
        runs = self.tables / "runs.parquet"
        if runs.is_file():
            try:
                frames.append(_read_columns(runs, wanted))
            except _Damaged as exc:
                raise self._damaged_error(self.tables, exc.why, table=True) from None
        for u in self.unit_dirs():
            with contextlib.suppress(_UnitVanished, FileNotFoundError):
                if unit_problem(u) is None:
                    frames.append(_read_columns(u / "run.parquet", wanted))
        frames = [f for f in frames if len(f)]
        if not frames:
            return pd.DataFrame({"run_id": pd.Series(dtype=str), "seed": pd.Series(dtype="int64")})
        return pd.concat(frames, ignore_index=True).drop_duplicates("run_id")

    def clean_tmp(self, *, older_than_s: float = TMP_STALE_S) -> int:
        """Delete temporary files of killed writers: ``tmp/`` entries of dead processes of this host or
        older than ``older_than_s``, and owner-less temporary files of older versions. Returns how many."""
        n = 0
        for p, _why in self._leftovers(older_than_s=older_than_s):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            n += 1
        return n

    def _leftovers(self, *, older_than_s: float = TMP_STALE_S, tables: bool = False
                   ) -> list[tuple[Path, str]]:
        """Temporary files whose writer is gone, with why they are judged so. ``tables``: also half-written
        tables of killed compactions (only safe to judge under the lock)."""
        host, now, out = socket.gethostname(), time.time(), []

        def age(p: Path) -> float:
            try:
                return now - p.lstat().st_mtime
            except FileNotFoundError:
                return -1.0

        tmp = self.path / "tmp"
        for p in sorted(tmp.iterdir()) if tmp.is_dir() else []:
            owner, a = _tmp_owner(p.name), age(p)
            if a > older_than_s:
                out.append((p, f"left by a writer {a / 3600:.1f} h ago"))
            elif owner is not None and owner[0] == host and a >= 0 and not _pid_alive(owner[1]):
                out.append((p, f"left by process {owner[1]} of this host, which is gone"))
        legacy = [*self.path.glob(".sweep.json.*"), *self.failed.glob(".*")] if self.path.is_dir() else []
        out += [(p, "a temporary file left by a killed writer") for p in sorted(legacy) if age(p) > LEGACY_TMP_S]
        if tables and self.tables.is_dir():
            out += [(p, "a half-written table of a killed compaction") for p in sorted(self.tables.glob(".*.parquet"))]
        return out

    def _tmp_name(self, stem: str) -> Path:
        """A unique ``tmp/`` path that names its owner (host, pid), for :meth:`clean_tmp`."""
        return self.path / "tmp" / f"{stem}~{socket.gethostname()}~{os.getpid()}~{uuid.uuid4().hex[:12]}"

    def _atomic_write_text(self, path: Path, text: str) -> None:
        """Replace ``path`` by ``text``, durably: written under ``tmp/``, synced, renamed into place."""
        (self.path / "tmp").mkdir(exist_ok=True)
        tmp = self._tmp_name(f".{path.name}")
        try:
            with open(tmp, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    def _create_text(self, path: Path, text: str) -> bool:
        """Write ``path`` atomically and durably unless it exists; False if another process created it first."""
        tmp = self._tmp_name(f".{path.name}")
        try:
            with open(tmp, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)  # atomic, and fails if `path` exists
            except FileExistsError:
                return False
            except OSError:  # a filesystem without hard links
                if path.exists():
                    return False
                os.replace(tmp, path)
            _fsync_dir(path.parent)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def meta(self) -> dict[str, Any]:
        """The contents of ``sweep.json``. Raises ``FileNotFoundError`` if it is missing and
        :class:`StoreError` if it is damaged, each naming the way back."""
        p = self.path / "sweep.json"
        if not p.is_file():
            held = (self.tables / "runs.parquet").is_file() or any(self.unit_dirs())
            raise FileNotFoundError(
                f"results: {str(self.path)!r} is not a bnstats sweep (no sweep.json)" if not held else
                f"results: {str(self.path)!r} holds runs but lost its sweep.json; `bnstats sweep CONFIG --out "
                f"{self.path}` with the sweep's original config recovers it (and refuses any other config)")
        try:
            meta = json.loads(p.read_text())
            keys = ("factors", "import") if meta.get("source") == "import" else \
                ("identity", "identity_hash", "factors", "config")  # an imported store, or a sweep
            missing = [k for k in keys if k not in meta]
        except (ValueError, TypeError, AttributeError) as exc:  # JSONDecodeError, UnicodeDecodeError, not a dict
            missing, meta = [f"valid JSON ({_describe(exc)})"], {}
        if missing:
            raise StoreError(
                f"{p}: damaged (no {', '.join(missing)}); `bnstats verify {self.path} --repair` moves it to "
                f"quarantine/, then `bnstats sweep CONFIG --out {self.path}` with the original config recovers it")
        return meta

    def _identity(self) -> str | None:
        if self.identity_hash is None:
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                self.identity_hash = str(json.loads((self.path / "sweep.json").read_text())["identity_hash"])
        return self.identity_hash

    # --- what is done ---------------------------------------------------------------------------
    def unit_dirs(self) -> list[Path]:
        """The committed units (directories in ``units/``), sorted."""
        if not self.units.is_dir():
            return []
        return sorted(p for p in self.units.iterdir() if p.is_dir() and not p.name.startswith("."))

    def done_ids(self) -> set[str]:
        """The runs stored: those of the ``runs`` table and the units that hold a ``run.parquet``.

        Cheap (one stat per unit), for every claim. A unit whose other files are damaged still counts
        here; :meth:`damaged_units` finds it, and the sweep that follows moves it aside first.
        """
        ids = {u.name for u in self.unit_dirs() if (u / "run.parquet").is_file()}
        runs = self.tables / "runs.parquet"
        if runs.is_file():
            try:
                ids |= set(_read_columns(runs, ("run_id",))["run_id"])
            except _Damaged as exc:
                raise self._damaged_error(self.tables, exc.why, table=True) from None
            except FileNotFoundError:
                pass
        return ids

    def damaged_units(self, *, full: bool = False) -> dict[Path, str]:
        """Units that are not whole, with what is wrong (:func:`unit_problem`). Units found whole are
        remembered (a committed unit never changes), so a second call checks only new ones."""
        out = {}
        for u in self.unit_dirs():
            if u.name in self._whole and not full:
                continue
            try:
                problem = unit_problem(u, full=full)
            except _UnitVanished:
                continue
            if problem is None:
                self._whole.add(u.name)
            else:
                out[u] = problem
        return out

    def _damaged_error(self, where: Path, why: str, *, table: bool = False) -> StoreError:
        then = ("the next `bnstats sweep` rebuilds the table from what remains" if table else
                "the next `bnstats sweep` trains its run again")
        return StoreError(f"{where / why}; `bnstats verify {self.path} --repair` moves it to quarantine/ "
                          f"(or {then})")

    # --- writing one run ------------------------------------------------------------------------
    def write(self, output: Any) -> bool:
        """Commit one run's rows atomically and durably. Returns False if the run was already stored.

        The unit holds a ``manifest.json`` listing its files and their rows (what :func:`unit_problem`
        checks); the run row gets the sweep's ``sweep_identity``. A damaged unit of the same run (one a
        sweep does not count as stored) is moved to ``quarantine/`` and replaced.
        """
        run_id = output.run["run_id"]
        if run_id in self.done_ids():
            return False
        row = dict(output.run)
        if self._identity() is not None:
            row["sweep_identity"] = self._identity()
        tmp = self._tmp_name(run_id)
        tmp.mkdir(parents=True)
        try:
            files = {"run.parquet": 1}
            _write_parquet([row], tmp / _UNIT_FILE["runs"])
            for table in ("curves", "moments", "moments_channel"):
                rows = getattr(output, table)
                if rows:
                    _write_parquet(rows, tmp / _UNIT_FILE[table])
                    files[_UNIT_FILE[table]] = len(rows)
            (tmp / MANIFEST).write_text(json.dumps({"format": 1, "run_id": run_id, "files": files}, indent=1))
            for f in tmp.iterdir():  # data and directory on disk before the rename makes them visible
                _fsync_file(f)
            _fsync_dir(tmp)
            if not self._commit(tmp, run_id):
                return False
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        (self.failed / f"{run_id}.json").unlink(missing_ok=True)
        return True

    def _commit(self, tmp: Path, run_id: str) -> bool:
        target = self.units / run_id
        for attempt in range(2):
            try:
                os.rename(tmp, target)
                _fsync_dir(self.units)
                return True
            except OSError:  # the unit exists: another worker committed the same run first (keep theirs)
                if attempt:
                    return False
                try:  # ... unless what is there is damaged: a sweep counts it as missing and retrains it
                    problem = unit_problem(target)
                except _UnitVanished:
                    continue
                if problem is None:
                    return False
                self.quarantine_unit(target, problem)
        return False

    # --- claims: who is training what -------------------------------------------------------------
    def claim(self, run_id: str) -> bool:
        """Claim a run for this process; False if a live process holds it or it is done."""
        path = self.claims / f"{run_id}.json"
        if not self._create_claim(path):
            with self._lock("taking over a stale claim"):  # one process only, re-checked under the lock
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
        self._atomic_write_text(self.failed / f"{run.run_id}.json", json.dumps(info, indent=2))

    def failures(self) -> dict[str, dict[str, Any]]:
        done = self.done_ids()
        out = {}
        for p in self.failed.glob("*.json"):
            if p.stem not in done:
                with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                    out[p.stem] = json.loads(p.read_text())
        return out

    # --- the lock -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self, what: str = "compaction") -> Iterator[None]:
        """The store's exclusive lock (compaction, repair, claim take-over, seeds update); see the
        module doc. ``what`` is recorded in the lock file for processes that wait."""
        path = self.path / "compact.lock"
        with open(path, "a+") as fh:
            try:
                self._acquire(fh, path)
                posix = True
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                posix = False
            if not posix:
                lockdir = self.path / "compact.lockdir"
                with _dir_lock(lockdir, on_wait=lambda: self.log(
                        f"{self.path}: waiting for the store's lock (the lock directory {lockdir.name}/ of "
                        f"another process; broken after {STALE_LOCK_S:.0f} s if its holder died)")):
                    yield
                return
            try:
                with contextlib.suppress(OSError):  # who holds it, for those who wait
                    fh.seek(0)
                    fh.truncate()
                    fh.write(json.dumps({**self._me(), "what": what}))
                    fh.flush()
                yield
            finally:
                fcntl.lockf(fh, fcntl.LOCK_UN)

    def _acquire(self, fh: Any, path: Path) -> None:
        t0, delay = time.monotonic(), 0.01
        while True:
            try:
                fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            waited = time.monotonic() - t0
            if waited >= LOCK_WAIT_LOG_S:
                self.log(f"{self.path}: waiting for the store's lock, held by {_lock_holder(path)}; "
                         "this goes on when it is released")
                fcntl.lockf(fh, fcntl.LOCK_EX)
                self.log(f"{self.path}: got the store's lock after {time.monotonic() - t0:.0f} s")
                return
            time.sleep(min(delay, LOCK_WAIT_LOG_S - waited))
            delay = min(delay * 2, 0.25)

    # --- compaction -----------------------------------------------------------------------------
    def compact(self) -> int:
        """Merge committed units into ``tables/``; returns how many units were merged.

        Safe while other processes write units or read (see the module doc): each table takes the
        units it does not hold yet, tables are replaced by rename (``runs`` last), and units leave
        ``units/`` (one rename each) only after every table holding their rows is in place and synced.
        A damaged unit is moved to ``quarantine/`` instead of merged, a damaged table rebuilt.
        """
        with self._lock("compaction"):
            if not self.tables.is_dir():
                self.tables.mkdir()
                _fsync_dir(self.path)
            for p in self.tables.glob(".*.parquet"):  # a killed compaction's half-written table
                p.unlink(missing_ok=True)
            while True:
                for u, problem in self.damaged_units().items():  # footers and row counts first
                    self.quarantine_unit(u, problem)
                units = self.unit_dirs()
                if not units:
                    return 0
                try:
                    return self._merge(units)
                except _BadUnit as bad:  # a page that does not read: move it aside, merge the rest
                    self.quarantine_unit(bad.unit, bad.why)
                except _BadTable as bad:
                    self._rebuild_table(bad.table, bad.why)

    def _merge(self, units: list[Path]) -> int:
        staged: list[tuple[Path, Path]] = []
        try:
            merged: set[str] = set()
            for table in (*(t for t in TABLES if t != "runs"), "runs"):  # runs last: see the module doc
                old = self.tables / f"{table}.parquet"
                old_df = self._read_own_table(table) if old.is_file() else None
                held = set(old_df["run_id"].unique()) if old_df is not None and len(old_df) else set()
                parts = []
                for u in units:
                    f = u / _UNIT_FILE[table]
                    if u.name in held or not f.is_file():
                        continue
                    try:
                        parts.append((u.name, _read_parquet(f)))
                    except (_Damaged, FileNotFoundError) as exc:
                        raise _BadUnit(u, exc.why if isinstance(exc, _Damaged) else f"{f.name}: missing") from None
                if table == "runs":
                    merged = {name for name, _ in parts}
                if not parts:
                    continue
                frames = ([old_df] if old_df is not None else []) + [df for _, df in parts]
                df = pd.concat([f for f in frames if len(f)], ignore_index=True)
                if table == "runs":
                    df = df.drop_duplicates("run_id", keep="first")
                tmp = self.tables / f".{table}.{uuid.uuid4().hex}.parquet"
                staged.append((tmp, old))
                df.to_parquet(tmp, index=False, compression="zstd")
                _fsync_file(tmp)  # the data is on disk before the name points at it
            for tmp, old in staged:
                os.replace(tmp, old)
            staged = []
            _fsync_dir(self.tables)  # the renames are durable before the units they replace go
            trash = self._tmp_name("compacted")
            trash.mkdir(parents=True)
            for u in units:  # one rename each: a reader sees a unit whole or not at all
                with contextlib.suppress(FileNotFoundError):
                    os.rename(u, trash / u.name)
                self._whole.discard(u.name)
            shutil.rmtree(trash, ignore_errors=True)
            return len(merged)
        finally:
            for tmp, _ in staged:  # a compaction that failed leaves no half-written table behind
                tmp.unlink(missing_ok=True)

    def _read_own_table(self, table: str) -> pd.DataFrame:
        """A compacted table, for rewriting it; :class:`_BadTable` if it is damaged."""
        path = self.tables / f"{table}.parquet"
        try:
            df = _read_parquet(path)
        except _Damaged as exc:
            raise _BadTable(table, exc.why) from None
        lacking = [c for c in _REQUIRED[table] if c not in df.columns]
        if lacking:
            raise _BadTable(table, f"{path.name}: no column {', '.join(map(repr, lacking))}")
        return df

    # --- damage: quarantine and rebuild (under the lock) -------------------------------------------
    def _quarantine(self, src: Path, name: str, reason: str) -> Path:
        """Move ``src`` (a file or a unit directory) to ``quarantine/<name>-<UTC time>-<id>/`` with a
        ``REASON.txt``. Nothing in quarantine/ is read again; delete it when you have looked."""
        self.quarantine.mkdir(exist_ok=True)
        dest = self.quarantine / f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"
        if src.is_dir():
            os.rename(src, dest)
        else:
            dest.mkdir()
            os.rename(src, dest / src.name)
        (dest / "REASON.txt").write_text(
            f"{reason}\nmoved here from {self._rel(src)} by {socket.gethostname()} pid {os.getpid()} at "
            f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}\n")
        _fsync_dir(src.parent)
        _fsync_dir(self.quarantine)
        return dest

    def quarantine_unit(self, unit: Path, why: str) -> str:
        """Move a damaged unit to ``quarantine/`` (its run is then missing: the next sweep trains it)."""
        where = f"units/{unit.name}/{why}"
        try:
            dest = self._quarantine(unit, unit.name, where)
        except FileNotFoundError:  # another process moved or merged it first
            return ""
        self._whole.discard(unit.name)
        msg = (f"{self.path}/{where}; moved to quarantine/{dest.name}/, its run trains again on the next "
               "`bnstats sweep`")
        self.repairs.append(msg)
        self.log(msg)
        return msg

    def _rebuild_table(self, table: str, why: str) -> str:
        """Move a damaged table to ``quarantine/`` and rebuild it from what remains (see the module doc)."""
        path = self.tables / f"{table}.parquet"
        dest = self._quarantine(path, f"table-{table}", f"tables/{why}")
        if table == "runs":
            # Its runs are lost and train again; rows of theirs that other tables hold would stand
            # beside the new ones (and, on a GPU, differ from them): move them aside too.
            keep = {u.name for u in self.unit_dirs()}
            moved = 0
            for other in TABLES[1:]:
                with contextlib.suppress(_BadTable):
                    moved += self._drop_rows(other, lambda ids: ~ids.isin(keep), dest)
            what = ("rebuilt from the units not yet compacted; the runs it held are not stored any more and "
                    f"train again on the next `bnstats sweep` ({moved} of their rows in other tables moved "
                    "there too)")
        else:
            runs = self.tables / "runs.parquet"
            try:
                n = str(len(_read_columns(runs, ("run_id",)))) if runs.is_file() else "0"
            except _Damaged:
                n = "all compacted"
            what = (f"the {table} rows of {n} runs are lost (the runs stay; rows of runs not yet compacted "
                    "are merged as usual)")
        msg = f"{self.path}/tables/{why}; moved to quarantine/{dest.name}/: {what}"
        self.repairs.append(msg)
        self.log(msg)
        return msg

    def _drop_rows(self, table: str, drop: Callable[[pd.Series], Any], dest: Path) -> int:
        """Move the rows of ``table`` whose ``run_id`` matches ``drop`` (a mask over the run_id column)
        into ``dest/<table>.parquet``; returns how many."""
        path = self.tables / f"{table}.parquet"
        if not path.is_file():
            return 0
        df = self._read_own_table(table)
        mask = pd.Series(drop(df["run_id"]), index=df.index).astype(bool)
        if not mask.any():
            return 0
        out = dest / f"{table}.parquet"
        if out.exists():
            out = dest / f"{table}.{uuid.uuid4().hex[:6]}.parquet"
        df[mask].to_parquet(out, index=False, compression="zstd")
        _fsync_file(out)
        self._replace_table(table, df[~mask])
        return int(mask.sum())

    def _replace_table(self, table: str, df: pd.DataFrame) -> None:
        tmp = self.tables / f".{table}.{uuid.uuid4().hex}.parquet"
        try:
            df.to_parquet(tmp, index=False, compression="zstd")
            _fsync_file(tmp)
            os.replace(tmp, self.tables / f"{table}.parquet")
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.tables)

    def repair(self) -> list[str]:
        """What a sweep does before it plans: under the lock, move damaged units (footers, row counts)
        to ``quarantine/`` and rebuild damaged tables (footers). Returns the one-line reports (also logged).
        ``verify(path, repair=True)`` checks and repairs everything, every page read."""
        done: list[str] = []
        if not self.path.is_dir():
            return done
        with self._lock("repair"):
            for table in TABLES:
                why = self._table_problem(table, full=False)
                if why:
                    done.append(self._rebuild_table(table, why))
            for u, problem in self.damaged_units().items():
                done.append(self.quarantine_unit(u, problem))
        return [d for d in done if d]

    def _table_problem(self, table: str, *, full: bool) -> str | None:
        path = self.tables / f"{table}.parquet"
        try:
            _, columns, _ = _parquet_info(path, read=full)
        except FileNotFoundError:
            return None
        except _Damaged as exc:
            return exc.why
        lacking = [c for c in _REQUIRED[table] if c not in columns]
        return f"{path.name}: no column {', '.join(map(repr, lacking))}" if lacking else None


class _BadUnit(Exception):
    def __init__(self, unit: Path, why: str):
        super().__init__(why)
        self.unit, self.why = unit, why


class _BadTable(Exception):
    def __init__(self, table: str, why: str):
        super().__init__(why)
        self.table, self.why = table, why


def git_commit() -> str:
    """The commit of the bnstats source tree, with ``-dirty`` for uncommitted changes ("" if not git)."""
    from .factory import git_commit as commit_of

    return commit_of(Path(__file__).resolve().parent)


def _is_layout(name: str) -> bool:
    return name in _LAYOUT or name.startswith(".sweep.json.")


def _tmp_owner(name: str) -> tuple[str, int] | None:
    parts = name.split("~")
    if len(parts) >= 4 and parts[-2].isdigit():
        return parts[-3], int(parts[-2])
    return None


def _seed_text(seeds: list[int]) -> str:
    s = sorted(seeds)
    return f"{s[0]}..{s[-1]}" if s == list(range(s[0], s[-1] + 1)) and len(s) > 2 else ", ".join(map(str, s))


def _lock_holder(path: Path) -> str:
    """Who holds the store's lock, from what the holder wrote into the lock file."""
    try:
        info = json.loads(path.read_text())
        since = time.time() - float(info["time"])
        return f"pid {info['pid']} on {info['host']} ({info.get('what', 'compaction')}, for {since:.0f} s)"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def _dir_lock(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive lock by atomic ``mkdir``, for filesystems without POSIX locks."""
    delay, t0, said = 0.05, time.monotonic(), False
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
            if not said and on_wait is not None and time.monotonic() - t0 >= LOCK_WAIT_LOG_S:
                on_wait()
                said = True
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
#
# The tables are read through pyarrow.dataset (projection and filters pushed into the Parquet reader:
# only the named columns are decoded, row groups whose statistics exclude a filter are skipped) and
# aggregated by pyarrow's Acero engine while they are scanned, so a store of 10^5 runs (25 M moment
# rows) is summarised in a few hundred MB. Why pyarrow and not DuckDB: pyarrow is already the store's
# Parquet library (no new dependency), its dataset scanner reads from the files this module opened
# (the snapshot guarantee below), and Acero's scan -> filter -> project -> hash join -> aggregate plan
# streams with one thread, batches in file order, so the same store gives the same bits every time
# (tests/test_store_scale.py checks all three).


@dataclass
class Results:
    """A sweep's tables. ``runs`` is read at once; the larger tables only when asked.

    - ``.curves``, ``.moments``, ``.moments_channel``: a whole table as a DataFrame (read on first
      access, then kept): fine for a sweep of hundreds of runs, not for 10^5 (25 M moment rows).
    - :meth:`read`: the rows and columns asked for (``where`` filters, ``columns`` projection).
    - :meth:`aggregate`: count, mean, sd, min or max per group, computed while the table is scanned,
      with groups of the table's columns (``epoch``, ``layer``, ``site``) and of the runs' (grid
      factors), without materialising the rows.

    All three see the same rows: those of the runs in ``runs`` (compacted rows win over a unit of the
    same run), each file read through one open handle, so a compaction that replaces a table or moves
    units meanwhile changes nothing in the answer.
    """

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

    @cached_property
    def curves(self) -> pd.DataFrame:
        return self.read("curves")

    @cached_property
    def moments(self) -> pd.DataFrame:
        return self.read("moments")

    @cached_property
    def moments_channel(self) -> pd.DataFrame:
        return self.read("moments_channel")

    def with_runs(self, runs: pd.DataFrame) -> Results:
        """The same store seen through ``runs``, a subset of :attr:`runs` (e.g. the evaluation runs of a
        [tune] sweep, ``stats.evaluation_runs``): :meth:`read`, :meth:`aggregate` and the tables then hold
        the rows of those runs only."""
        return dataclasses.replace(self, runs=runs)

    def columns(self, table: str) -> list[str]:
        """The columns ``table`` holds (the union over its compacted file and the units)."""
        _check_table(table, runs=False)
        return _retry(self.path, table, lambda: _with_dataset(
            self.path, table, self._unit_dirs, lambda d: [] if d is None else list(d.schema.names)))

    def count(self, table: str, where: dict[str, Any] | None = None) -> int:
        """How many rows of ``table`` :meth:`read` would return for ``where``, counted without reading them
        (the filters are evaluated on the filter columns only; no filter: the files' footers)."""
        _check_table(table, runs=False)
        runs, table_where = self._split_where(where)
        ids = pa.array(runs["run_id"].to_numpy(), pa.string())

        def run(dataset):
            if dataset is None:
                return 0
            _check_columns(table, list(table_where), dataset.schema.names, "where")
            filt = pc.field("run_id").isin(ids)
            for c, v in table_where.items():
                filt = filt & _condition(c, v)
            return int(dataset.count_rows(filter=filt))

        return _retry(self.path, table, lambda: _with_dataset(self.path, table, self._unit_dirs, run))

    def read(self, table: str, columns: list[str] | tuple[str, ...] | None = None,
             where: dict[str, Any] | None = None) -> pd.DataFrame:
        """The rows of ``table`` (``curves``, ``moments``, ``moments_channel``) that match ``where``, only
        ``columns`` (default: all, in the stored order; ``run_id`` always, last unless named).

        ``where``: ``{column: value}`` or ``{column: [values]}``, all of which must hold. A column of the
        table is filtered while it is read (``{"source": "probe", "site": ["norm_in", "act_out"],
        "epoch": 30}``); a column of ``runs`` (a grid factor, ``seed``, ``run_id``) selects the runs
        whose rows are read (``{"placement": "before"}``). Rows come in the order of the whole tables
        (``run_id``, ``epoch``, ``step``, ``source``, ``layer``, ``site``, ``channel``) with their dtypes
        (``source`` and ``site`` categorical), so ``read(t)`` equals ``.curves`` / ``.moments``.

        Raises ``ValueError`` naming an unknown table or column (and the ones there are).
        """
        _check_table(table, runs=False)
        runs, table_where = self._split_where(where)
        ids = pa.array(runs["run_id"].to_numpy(), pa.string())

        def run(dataset):
            if dataset is None:
                return pd.DataFrame({"run_id": pd.Series(dtype=str)})
            names = dataset.schema.names
            cols = list(dict.fromkeys([*(columns if columns is not None else names), "run_id"]))
            _check_columns(table, cols, names, "columns")
            filt = pc.field("run_id").isin(ids)
            for c, v in table_where.items():
                filt = filt & _condition(c, v)
            return _to_pandas(dataset.to_table(columns=cols, filter=filt, **_SCAN))

        df = _retry(self.path, table, lambda: _with_dataset(self.path, table, self._unit_dirs, run))
        sort = [c for c in ("run_id", "epoch", "step", "source", "layer", "site", "channel") if c in df]
        if len(df) > 1:
            df = df.sort_values(sort, kind="stable").reset_index(drop=True)
        return df

    def aggregate(self, table: str, by: list[str] | tuple[str, ...], values: list[str] | tuple[str, ...], *,
                  where: dict[str, Any] | None = None, stats: tuple[str, ...] = ("n", "mean", "sd")) -> pd.DataFrame:
        """Per group of ``by``: ``stats`` of each column of ``values``, computed while ``table`` is scanned.

        Parameters
        ----------
        table : {"curves", "moments", "moments_channel"}
        by : list of str
            Group keys: columns of ``table`` (``epoch``, ``layer``, ``site``, ...) and of ``runs``
            (grid factors, ``seed``, ``run_id``), joined on ``run_id``.
        values : list of str
            Numeric columns of ``table``.
        where : dict, optional
            As in :meth:`read`.
        stats : tuple of {"n", "mean", "sd", "min", "max"}
            ``n``: values that are not NaN; ``mean``; ``sd``: standard deviation with ddof = 1 (NaN for
            fewer than two values); ``min``, ``max``. NaN values are left out of every statistic, as
            pandas' ``groupby(...).agg`` leaves them out.

        Returns
        -------
        pandas.DataFrame
            One row per group present, sorted by ``by``: the ``by`` columns, then ``<value>_<stat>``
            for each value and stat (``skew_mean``, ``skew_sd``, ...). Equal to ``read(...)`` merged
            with ``runs`` and grouped with pandas, to rounding (tests/test_store_scale.py).

        Notes
        -----
        One Acero plan (pyarrow's streaming engine): scan (the columns needed, ``where`` pushed into
        the Parquet reader) -> filter -> project (``run_id`` to the run's position in ``runs``; NaN to
        null) -> hash join with the runs' group codes -> hash aggregate. It holds one batch of rows
        and the groups at a time, whatever the size of the table, and runs on one thread with the
        batches in file order, so its sums always add in the same order: the same store gives the same
        bits.
        """
        _check_table(table, runs=False)
        by, values = list(by), list(values)
        bad = [s for s in stats if s not in _AGGREGATES]
        if bad or not stats:
            raise ValueError(f"stats: {bad or list(stats)} is not a tuple of {', '.join(_AGGREGATES)}")
        if not values:
            raise ValueError("values: name at least one numeric column to aggregate")
        runs, table_where = self._split_where(where)
        run_by = [c for c in by if c in self.runs.columns]
        table_by = [c for c in by if c not in run_by]
        # each run's group of the run-level keys, as a small integer that the join carries to every row
        codes = runs.groupby(run_by, sort=True, observed=True, dropna=False).ngroup().to_numpy() if run_by else \
            np.zeros(len(runs), np.int64)
        groups = runs[run_by].assign(_group=codes).drop_duplicates("_group").set_index("_group")
        right = pa.table({"_run": pa.array(np.arange(len(runs)), pa.int32()), "_group": pa.array(codes, pa.int32())})
        ids = pa.array(runs["run_id"].to_numpy(), pa.string())

        def run(dataset):
            names = [] if dataset is None else dataset.schema.names
            _check_columns(table, [*table_by, *values], names, "by and values")
            if dataset is None:
                return None
            for v in values:
                t = dataset.schema.field(v).type
                if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
                    raise ValueError(f"values: {v!r} of {table} is not numeric ({t})")
            filt = None
            for c, v in table_where.items():
                filt = _condition(c, v) if filt is None else filt & _condition(c, v)
            read = list(dict.fromkeys(["run_id", *table_by, *values, *table_where]))
            scan = ac.Declaration("scan", ac.ScanNodeOptions(dataset, columns=read, filter=filt, **_SCAN,
                                                             require_sequenced_output=True, implicit_ordering=True))
            steps = [scan] + ([ac.Declaration("filter", ac.FilterNodeOptions(filt))] if filt is not None else [])
            proj = [pc.index_in(pc.field("run_id"), value_set=ids)]
            for c in table_by:  # dictionary keys cannot cross the join: plain values
                t = dataset.schema.field(c).type
                proj.append(pc.field(c).cast(t.value_type) if pa.types.is_dictionary(t) else pc.field(c))
            for v in values:
                f = pc.field(v).cast(pa.float64())
                proj.append(pc.if_else(pc.is_nan(f), pa.scalar(None, pa.float64()), f))
            steps.append(ac.Declaration("project", ac.ProjectNodeOptions(proj, ["_run", *table_by, *values])))
            join = ac.Declaration(
                "hashjoin", ac.HashJoinNodeOptions("inner", left_keys="_run", right_keys="_run",
                                                   left_output=[*table_by, *values], right_output=["_group"]),
                inputs=[ac.Declaration.from_sequence(steps),
                        ac.Declaration("table_source", ac.TableSourceNodeOptions(right))])
            aggs = [(v, *_AGGREGATES[s], f"{v}_{s}") for v in values for s in stats]
            agg = ac.Declaration("aggregate", ac.AggregateNodeOptions(aggs, keys=["_group", *table_by]))
            return ac.Declaration.from_sequence([join, agg]).to_table(use_threads=False)

        out = _retry(self.path, table, lambda: _with_dataset(self.path, table, self._unit_dirs, run))
        cols = [f"{v}_{s}" for v in values for s in stats]
        if out is None:
            return pd.DataFrame({c: [] for c in [*by, *cols]})
        df = out.to_pandas()
        keys = groups.loc[df["_group"].to_numpy()]
        for c in run_by:
            df[c] = keys[c].to_numpy()
            df[c] = df[c].astype(self.runs[c].dtype)
        for c in cols:
            if c.endswith("_n"):
                df[c] = df[c].astype("int64")
        for c in _CATEGORICAL:  # the dtypes of read()
            if c in table_by:
                df[c] = df[c].astype("category")
        df = df[[*by, *cols]]
        return df.sort_values(by, kind="stable").reset_index(drop=True) if by else df

    def _split_where(self, where: dict[str, Any] | None) -> tuple[pd.DataFrame, dict[str, Any]]:
        """The runs ``where`` selects (by columns of ``runs``) and its conditions on the table."""
        runs, rest = self.runs, {}
        for c, v in (where or {}).items():
            if c in self.runs.columns:
                values = list(v) if isinstance(v, list | tuple | set | frozenset) else [v]
                runs = runs[runs[c].isin(values)]
            else:
                rest[c] = v
        return runs, rest


_CATEGORICAL = ("source", "site")
# Read as dictionaries: a few distinct values in many rows (10^5 runs: 25 M moment rows, 10^5 run ids),
# filtered and joined on their small dictionaries instead of on every row's string.
_DICTIONARY = ("run_id", *_CATEGORICAL)
# Scan options: one batch ahead, one file at a time (pyarrow's defaults read 16 batches ahead: ~1 GB
# more at 10^5 runs for no speed on two cores).
_SCAN = {"batch_readahead": 1, "fragment_readahead": 1}
_AGGREGATES = {"n": ("hash_count", pc.CountOptions("only_valid")), "mean": ("hash_mean", None),
               "sd": ("hash_stddev", pc.VarianceOptions(ddof=1)), "min": ("hash_min", None),
               "max": ("hash_max", None)}


def _check_table(table: str, *, runs: bool) -> None:
    allowed = TABLES if runs else TABLES[1:]
    if table not in allowed:
        raise ValueError(f"table: {table!r} is not one of {', '.join(allowed)}")


def _check_columns(table: str, wanted: list[str], names: list[str], what: str) -> None:
    missing = [c for c in wanted if c not in names]
    if missing:
        raise ValueError(f"{what}: {', '.join(map(repr, missing))} not in the {table} table"
                         + (f" (its columns: {', '.join(names)})" if names else " (the store holds no such rows)"))


def _condition(column: str, value: Any) -> pc.Expression:
    if isinstance(value, list | tuple | set | frozenset):
        return pc.field(column).isin(sorted(value))
    return pc.field(column) == value


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    """A table read with :data:`_DICTIONARY` columns, with the dtypes the tables always had: ``run_id``
    a string column, ``source`` and ``site`` categorical (sorted categories, only those present)."""
    df = table.to_pandas()
    for c in _DICTIONARY:
        if c in df and isinstance(df[c].dtype, pd.CategoricalDtype):
            df[c] = df[c].astype(str) if c not in _CATEGORICAL else \
                df[c].astype(str).astype("category")
    for c in _CATEGORICAL:
        if c in df and not isinstance(df[c].dtype, pd.CategoricalDtype):
            df[c] = df[c].astype("category")
    return df


def _retry(path: Path, table: str, read: Callable[[], Any]) -> Any:
    for attempt in range(50):
        try:
            return read()
        except _UnitVanished:  # compacted while we read: its rows are in the table now, read again
            time.sleep(0.02 * attempt)
    raise RuntimeError(f"{path}: units keep vanishing while reading {table!r}; is a compaction looping?")


def _with_dataset(path: Path, table: str, unit_dirs: list[Path], use: Callable[[Any], Any]) -> Any:
    """``use(dataset)`` with ``dataset`` the compacted ``table`` and the units it does not hold, as one
    :class:`pyarrow.dataset.Dataset` over files opened here (None: no file holds this table).

    Each file is opened once and read through that handle, so a table that a compaction replaces by
    rename meanwhile is read whole, old or new (a path would be opened twice, footer then pages).
    Raises :class:`StoreError` naming a damaged file, :class:`_UnitVanished` if a unit left
    ``units/`` before it was opened (compacted: read again).
    """
    store = Store(path)
    dictionary = [] if table == "runs" else list(_DICTIONARY)
    fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=dictionary))
    with contextlib.ExitStack() as stack:
        fragments = []

        def fragment(file: Path):
            fh = stack.enter_context(pa.OSFile(str(file), "rb"))
            try:
                frag = fmt.make_fragment(fh)
                return frag, frag.physical_schema  # reads the footer
            except (pa.ArrowException, OSError) as exc:
                raise _Damaged(f"{file.name}: {_parquet_why(exc)}") from None

        compacted = path / "tables" / f"{table}.parquet"
        seen: set[str] = set()
        try:
            frag, schema = fragment(compacted)
            fragments.append((frag, schema))
            if unit_dirs:  # which runs the table holds: compacted rows win over a unit of the same run
                col = ds.FileSystemDataset([frag], schema, fmt).to_table(columns=["run_id"])["run_id"]
                for chunk in col.chunks:
                    seen.update((chunk.dictionary.take(pc.unique(chunk.indices)) if dictionary else
                                 pc.unique(chunk)).to_pylist())
        except FileNotFoundError:
            pass
        except _Damaged as exc:
            raise store._damaged_error(compacted.parent, exc.why, table=True) from None
        for u in unit_dirs:
            if u.name in seen:
                continue
            try:
                fragments.append(fragment(u / _UNIT_FILE[table]))
            except FileNotFoundError:
                if not u.is_dir():
                    raise _UnitVanished(u.name) from None
                # the unit has no rows for this table (e.g. moments_channel when per_channel is off; load()
                # checked the files its manifest lists)
            except _Damaged as exc:
                raise store._damaged_error(u, exc.why) from None
        if not fragments:
            return use(None)
        schema = pa.unify_schemas([s for _, s in fragments], promote_options="permissive")
        return use(ds.FileSystemDataset([f for f, _ in fragments], schema, fmt))


def _read_runs(path: Path, unit_dirs: list[Path]) -> pd.DataFrame:
    """The runs table and the runs of the units it does not hold, one row per run."""
    def run(dataset):
        if dataset is None:
            return pd.DataFrame({"run_id": pd.Series(dtype=str)})
        return dataset.to_table(**_SCAN).to_pandas()

    df = _retry(path, "runs", lambda: _with_dataset(path, "runs", unit_dirs, run))
    return df.drop_duplicates("run_id", keep="first").sort_values("run_id", kind="stable").reset_index(drop=True)


def load(path: str | Path) -> Results:
    """Load a sweep directory: ``.runs`` (one row per finished run) at once, the other tables when asked
    (``.curves``, ``.moments``, and :meth:`Results.read` / :meth:`Results.aggregate` for large stores).

    Only complete runs are visible; each run appears once however many workers wrote it.
    ``runs.attrs["factors"]`` lists the grid factors (used by ``bnstats.stats.compare``).
    A damaged unit or table raises :class:`StoreError` naming the file (checked up front, footers
    and row counts: a damaged file never yields fewer rows unnoticed).
    """
    path = Path(path)
    store = Store(path)
    meta = store.meta()
    for table in TABLES:
        why = store._table_problem(table, full=False)
        if why:
            raise store._damaged_error(store.tables, why, table=True)
    for attempt in range(5):  # a concurrent compaction may move units while we list them
        try:
            unit_dirs = store.unit_dirs()
            for u, why in store.damaged_units().items():
                raise store._damaged_error(u, why)
            runs = _read_runs(path, unit_dirs)
            break
        except FileNotFoundError:
            if attempt == 4:
                raise
            time.sleep(0.05)
    factor_order = ["seed", *meta["factors"]]
    runs = runs.sort_values([c for c in factor_order if c in runs], kind="stable").reset_index(drop=True)
    runs.attrs["factors"] = list(meta["factors"])
    return Results(path, meta, runs, unit_dirs)


# -------------------------------------------------------------------------------------------------
# Verify and repair


@dataclass(frozen=True)
class Problem:
    """One broken invariant of a store: the file (relative to the store), what is wrong, and what
    ``verify(repair=True)`` does about it ("": nothing it can do; the text says what will)."""

    path: str
    what: str
    repair: str = ""
    _fix: Callable[[], str] | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


@dataclass(frozen=True)
class Verification:
    """What :func:`verify` found (after repairing, with ``repair=True``) and what it repaired."""

    path: Path
    problems: tuple[Problem, ...]
    repaired: tuple[str, ...]
    runs: int            # runs stored: rows of the runs table and whole units
    units: int           # of which in units/ (not compacted yet)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.ok:
            return (f"{self.path}: ok: {self.runs} runs ({self.runs - self.units} compacted, {self.units} in "
                    "units/), every file readable, sweep.json matches them, no leftovers")
        fixable = sum(bool(p.repair) for p in self.problems)
        return (f"{self.path}: {len(self.problems)} problem(s)"
                + (f"; `bnstats verify {self.path} --repair` fixes {fixable} of them" if fixable else ""))


def verify(path: str | Path, *, repair: bool = False, log: Callable[[str], None] | None = None) -> Verification:
    """Check a sweep directory against the store's invariants (see the module doc); optionally repair.

    Checked: ``sweep.json`` is present, readable and consistent (its hash, its config, and every stored
    run carries its identity or, for rows older than that column, is one of its runs); every table and
    every unit reads completely (every page) with its columns, and each unit holds the rows its
    manifest lists, of its own run; ``runs`` holds one row per ``run_id``; every row of the other tables
    belongs to a stored run; ``tmp/`` (and ``tables/``) hold nothing left by writers that are gone.

    ``repair``: damaged units and tables, runs of another config and rows of no stored run are moved
    to ``quarantine/`` (tables are rebuilt from what remains, as a sweep does), duplicate rows dropped,
    leftovers deleted; then everything is checked again. A missing ``sweep.json`` cannot be repaired
    here: ``bnstats sweep`` with the original config recovers it. Runs moved aside train again on the
    next ``bnstats sweep``. Works without the lock (and without writing) on a read-only copy.
    """
    store = Store(path, log=log or (lambda msg: None))
    if not store.path.is_dir():
        raise FileNotFoundError(f"DIR: {str(store.path)!r} is not a directory")
    repaired: list[str] = []
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(store._lock("verify --repair" if repair else "verify"))
            locked = True
        except OSError as exc:  # a read-only copy: check without the lock
            if repair or exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            locked = False
        problems, runs, units = _check(store, locked=locked)
        for _ in range(3):  # a repair can reveal what it hid (rows of runs that a rebuilt table lost)
            fixes = [p for p in problems if p._fix is not None]
            if not repair or not fixes:
                break
            for p in fixes:
                msg = p._fix()
                if msg:
                    repaired.append(f"{p.path}: {msg}")
            problems, runs, units = _check(store, locked=locked)
    return Verification(store.path, tuple(problems), tuple(repaired), runs, units)


def stored_config(meta: dict[str, Any]) -> SweepConfig:
    """The :class:`SweepConfig` of a ``sweep.json`` (``Store.meta()``), its grid in the stored factor order
    (the ``config`` object is written with sorted keys, which reorders ``grid``; the identity keeps the order)."""
    from . import config as config_mod

    raw = dict(meta["config"])
    grid = raw.get("grid", {})
    raw["grid"] = {k: grid[k] for k in meta.get("factors", []) if k in grid} | grid
    return config_mod.from_dict(raw)


def _check(store: Store, *, locked: bool) -> tuple[list[Problem], int, int]:
    problems: list[Problem] = []
    meta_path = store.path / "sweep.json"
    meta: dict[str, Any] | None = None
    try:
        meta = store.meta()
    except FileNotFoundError:
        problems.append(Problem("sweep.json", "missing: the directory's config and identity are lost; `bnstats "
                                f"sweep CONFIG --out {store.path}` with the original config recovers it "
                                "(and refuses any other)"))
    except StoreError as exc:
        problems.append(Problem("sweep.json", str(exc).split("; ")[0].split(": ", 1)[-1],
                                "moved to quarantine/", lambda: _moved(store._quarantine(
                                    meta_path, "sweep.json", "sweep.json: damaged"), store)))
    sweep_cfg = None
    if meta is not None and meta.get("source") == "import":
        meta = None  # imported runs (bnstats import) have no sweep identity to check them against
    elif meta is not None:
        if stable_hash(meta["identity"]) != meta["identity_hash"]:
            problems.append(Problem("sweep.json", f"identity_hash {meta['identity_hash']} is not the hash of its "
                                    "identity (edited by hand?)"))
        try:
            sweep_cfg = stored_config(meta)
            if stable_hash(sweep_cfg.identity()) != meta["identity_hash"]:
                problems.append(Problem("sweep.json", "its config does not have its identity (edited by hand?)"))
                sweep_cfg = None
        except (ConfigError, TypeError, KeyError) as exc:
            problems.append(Problem("sweep.json", f"its config is not valid ({exc})"))

    for p, why in store._leftovers(tables=locked):
        problems.append(Problem(store._rel(p), why, "deleted", lambda p=p: _delete(p)))

    # tables: every page read; what the later checks need kept
    table_ids: dict[str, pd.Series] = {}
    runs_rows = pd.DataFrame({"run_id": pd.Series(dtype=str)})
    for table in TABLES:
        path = store.tables / f"{table}.parquet"
        why = store._table_problem(table, full=True)
        if why:
            problems.append(Problem(f"tables/{path.name}", why.split(": ", 1)[-1],
                                    "moved to quarantine/ and rebuilt from what remains",
                                    lambda table=table, why=why: store._rebuild_table(table, why).split("; ", 1)[-1]))
            continue
        if not path.is_file():
            continue
        df = _read_columns(path, ("run_id", "seed", "sweep_identity") if table == "runs" else ("run_id",))
        table_ids[table] = df["run_id"]
        if table == "runs":
            runs_rows = df
            dup = df["run_id"][df["run_id"].duplicated()]
            if len(dup):
                problems.append(Problem(
                    f"tables/{path.name}", f"{dup.nunique()} run(s) stored twice (e.g. {dup.iloc[0]})",
                    "the second rows moved to quarantine/",
                    lambda: _drop(store, "runs", lambda ids: ids.duplicated(keep="first"), "stored twice")))

    # units: every file of every unit read completely
    damaged = store.damaged_units(full=True)
    for u, why in damaged.items():
        problems.append(Problem(f"units/{u.name}", why, "moved to quarantine/; its run trains again on the next "
                                "`bnstats sweep`", lambda u=u, why=why: _moved_unit(store, u, why)))
    if store.units.is_dir():
        for p in sorted(store.units.iterdir()):
            if not p.is_dir() or p.name.startswith("."):
                problems.append(Problem(f"units/{p.name}", "not a unit directory", "moved to quarantine/",
                                        lambda p=p: _moved(store._quarantine(p, p.name, "units/: not a unit"), store)))
    whole = [u for u in store.unit_dirs() if u not in damaged]
    unit_rows = [_read_columns(u / "run.parquet", ("run_id", "seed", "sweep_identity")) for u in whole]
    stored = pd.concat([runs_rows, *unit_rows], ignore_index=True) if unit_rows else runs_rows
    stored_ids = set(stored["run_id"])

    # rows of no stored run
    for table, held in table_ids.items():
        orphans = sorted(set(held) - stored_ids)
        if table != "runs" and orphans:
            n_rows = int(held.isin(orphans).sum())
            problems.append(Problem(
                f"tables/{table}.parquet", f"{n_rows} row(s) of {len(orphans)} run(s) that are not stored: "
                f"{', '.join(orphans[:3])}{' ...' if len(orphans) > 3 else ''}", "those rows moved to quarantine/",
                lambda table=table: _drop(store, table, lambda ids: ~ids.isin(_stored_ids(store)),
                                          "rows of runs that are not stored")))

    # runs of another config
    if meta is not None and len(stored):
        own = meta["identity_hash"]
        foreign: dict[str, str] = {}
        if "sweep_identity" in stored:
            for rid, h in stored.loc[stored["sweep_identity"].notna() & (stored["sweep_identity"] != own),
                                     ["run_id", "sweep_identity"]].itertuples(index=False):
                foreign[rid] = f"sweep identity {h}, sweep.json's is {own}"
            legacy = stored[stored["sweep_identity"].isna()]
        else:
            legacy = stored
        if len(legacy) and sweep_cfg is not None:
            seeds = sorted(set(sweep_cfg.seeds) | {int(s) for s in legacy["seed"]})
            mine = {r.run_id for r in dataclasses.replace(sweep_cfg, seeds=tuple(seeds)).runs()}
            for rid in legacy.loc[~legacy["run_id"].isin(mine), "run_id"]:
                foreign[rid] = "not a run of sweep.json's config"
        in_units = {u.name for u in whole}
        for rid in sorted(set(foreign) & in_units):
            u = store.units / rid
            problems.append(Problem(f"units/{rid}", f"a run of another config ({foreign[rid]})", "moved to quarantine/",
                                    lambda u=u, why=foreign[rid]: _moved_unit(store, u, f"a run of another config ({why})")))
        in_table = sorted(set(foreign) - in_units)
        if in_table:
            rid = in_table[0]
            problems.append(Problem(
                "tables/runs.parquet", f"{len(in_table)} run(s) of another config: {', '.join(in_table[:3])}"
                f"{' ...' if len(in_table) > 3 else ''} ({foreign[rid]})",
                "moved to quarantine/ with their rows in the other tables",
                lambda ids=frozenset(in_table): _drop_runs(store, ids)))
    return problems, len(stored_ids), len(whole)


def _stored_ids(store: Store) -> set[str]:
    ids = {u.name for u in store.unit_dirs()}
    runs = store.tables / "runs.parquet"
    if runs.is_file():
        ids |= set(_read_columns(runs, ("run_id",))["run_id"])
    return ids


def _moved(dest: Path, store: Store) -> str:
    return f"moved to {store._rel(dest)}/"


def _moved_unit(store: Store, unit: Path, why: str) -> str:
    msg = store.quarantine_unit(unit, why)
    return msg.split("; ", 1)[-1] if msg else ""


def _delete(p: Path) -> str:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)
    return "deleted"


def _new_quarantine(store: Store, name: str, reason: str) -> Path:
    store.quarantine.mkdir(exist_ok=True)
    dest = store.quarantine / f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    dest.mkdir()
    (dest / "REASON.txt").write_text(f"{reason}\nwritten by {socket.gethostname()} pid {os.getpid()}\n")
    return dest


def _drop(store: Store, table: str, drop: Callable[[pd.Series], Any], reason: str) -> str:
    dest = _new_quarantine(store, f"rows-{table}", f"tables/{table}.parquet: {reason}")
    n = store._drop_rows(table, drop, dest)
    return f"{n} row(s) moved to {store._rel(dest)}/"


def _drop_runs(store: Store, run_ids: frozenset[str]) -> str:
    dest = _new_quarantine(store, "runs-of-another-config", "runs of another config than sweep.json's, with their rows")
    n = sum(store._drop_rows(t, lambda ids: ids.isin(run_ids), dest) for t in TABLES)
    return f"{len(run_ids)} run(s), {n} rows in all tables, moved to {store._rel(dest)}/"
