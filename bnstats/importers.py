"""Runs trained anywhere: read foreign run records into tidy frames, and write an imported store.

Most people who need a paired comparison already have their runs. :func:`read` turns a file or folder of
runs into the tables a bnstats sweep has, and :func:`write_store` stores them as a directory that
``bnstats compare``, ``plan`` and ``status`` read like a sweep (``bnstats import SRC --out DIR``).

Sources (:func:`read_source`; the kind is found from the suffix or the folder's contents):

==================  ============================================================================================
kind                what
==================  ============================================================================================
``csv``             a CSV file, one row per run (only empty cells and ``NaN``/``null``-like words are missing
                    values: a level called ``None`` stays a level)
``wandb_csv``       the runs table the W&B UI exports (columns ``Name, State, Notes, User, Tags, Created,
                    Runtime, Sweep``, then config and summary columns such as ``test/acc``)
``parquet``         a Parquet file, one row per run
``jsonl``           JSON lines, one object per run; nested objects become ``outer.inner`` columns
``wandb``           local W&B run folders (``wandb/run-*/``, ``wandb/offline-run-*/``, one run folder, or a
                    folder holding ``wandb/``): config from ``files/config.yaml`` (``{key: {value: ...}}``,
                    W&B's own ``_wandb`` entry left out), summary from ``files/wandb-summary.json``; a run
                    with a ``run-<id>.wandb`` log (offline runs keep everything there) is read by the
                    wandb package's own reader (``wandb leet inspect``, wandb-core), which also gives its
                    name, state, tags and per-step history
``tensorboard``     a folder of TensorBoard event files, one run per folder that holds event files
                    (read by TensorBoard's ``EventAccumulator``): ``key=value`` parts of the folder path
                    (separated by ``/`` or ``,``), hyperparameters written by ``add_hparams`` (its
                    timestamped subfolder belongs to the run above it), and the last value of each scalar;
                    Keras' ``train/`` and ``validation/`` subfolders of one run are two folders, hence two
                    runs of the same seed and arm (refused as duplicates): import one of them
==================  ============================================================================================

Per-step values (W&B history, TensorBoard scalars) become the ``curves`` table: one row per run and
step, one column per logged value. TensorBoard stores scalars as float32 (about 7 significant digits).

Mapping (:class:`Mapping`, from flags or an ``[import]`` TOML section): ``seed``, ``factor`` (the
column whose levels are the arms), ``metric`` (one or more), ``by`` (columns defining a cell),
``baseline``, and optionally ``init_hash`` / ``order_hash`` (columns holding a hash of each run's
initial weights / data order). Column names are used as they are (``test/acc`` works).

What an imported store holds (the same layout as a sweep, ``bnstats.store.load`` reads it):

- ``runs``: every source column, plus ``run_id`` (the source's own ``run_id`` column if it is unique, the
  W&B run id, else a stable hash of the source and the row), ``seed`` (a copy of the mapped seed column,
  integral floats as integers), ``init_hash`` / ``order_hash`` (copies when mapped), ``source`` (=
  ``"import"``), ``source_path`` (the file, or the run's folder relative to the source) and
  ``source_sha256``. A source column whose name is one of these is kept as ``<name>.orig``.
- ``curves`` (when the source has steps): ``run_id``, ``step`` and the logged values.
- ``sweep.json``: ``"source": "import"``, ``factors`` (``[factor, *by]``), ``import`` (kind, path, sha256
  of the file, or for a folder of the files read, the mapping, the columns, notes) and ``pairing``
  (``verified`` / ``not_verified``: sentences saying what the pairing of arms on seeds rests on).

Metrics keep the units the source gives them: a fraction stays a fraction, a percentage stays a
percentage; margins and effects passed to ``compare`` / ``plan`` are in those units.

Pairing: a bnstats sweep certifies that all arms of a seed shared their initial weights and data order.
For imported runs only seed identity can be checked (every arm of a cell has the same seeds), unless the
source records hashes and they are mapped; :func:`read` records what was verified and what was not.

Bad input raises :class:`ImportInputError` (a ``ValueError``) with one line naming the file, column or
field, before anything is written: duplicate (seed, arm) rows in a cell, an arm sharing no seed with
the baseline, a non-numeric metric, a mapped column that does not exist (the message lists those that
do), an empty file, a W&B run folder with no summary. A missing optional dependency raises
:class:`MissingExtra` naming the ``import`` extra.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import json
import math
import os
import re
import shutil
import subprocess
import tomllib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import __version__

EXTRA = "import"
INSTALL = "pip install 'bnstats[import]'"
WANDB_MIN_VERSION = (0, 31)  # first wandb with `leet inspect` (wandb-core reads the .wandb log)

#: The first columns of the runs table the W&B UI exports as CSV.
WANDB_CSV_HEAD = ("Name", "State", "Notes", "User", "Tags", "Created", "Runtime", "Sweep")
KINDS = ("csv", "wandb_csv", "parquet", "jsonl", "wandb", "tensorboard")
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl",
            ".json": "jsonl"}
#: Columns an imported runs table adds; a source column with one of these names is kept as ``<name>.orig``.
RESERVED = ("run_id", "seed", "init_hash", "order_hash", "source", "source_path", "source_sha256")
#: Words read as a missing value in CSV files (pandas' defaults minus "None" and "NA", which can be levels).
CSV_NA = ("", "NaN", "nan", "-NaN", "-nan", "NULL", "null", "#N/A", "N/A", "n/a", "<NA>")
METRIC_UNITS = ("as given in the source, not rescaled: a fraction stays a fraction and a percentage a "
                "percentage; margins and effects are in the same units")


class ImportInputError(ValueError):
    """Runs that cannot be imported as given; the message is one line naming the file, column or field."""


class MissingExtra(RuntimeError):
    """An optional dependency of ``bnstats[import]`` is not installed; the message says what to install."""


def _need(module: str, what: str, package: str | None = None):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{what} needs the package {package or module.split('.')[0]!r}, which is not "
                           f"installed: {INSTALL}") from None


def _one_line(exc: BaseException | str) -> str:
    return " ".join(str(exc).split())


# -------------------------------------------------------------------------------------------------
# The mapping


FLAGS = {"seed": "--seed", "factor": "--factor", "metric": "--metric", "by": "--by", "baseline": "--baseline",
         "init_hash": "--init-hash", "order_hash": "--order-hash"}


@dataclass(frozen=True)
class Mapping:
    """Which source columns are the seed, the factor, the metrics, the cell columns and the hashes.

    Parameters
    ----------
    seed : str
        Column of the seed, the unit of pairing (default ``"seed"``).
    factor : str
        Column whose levels are the arms (default ``"placement"``).
    metric : tuple of str
        Metric columns (default ``("test_acc",)``); each must be numeric. ``compare`` uses the first
        unless told otherwise.
    by : tuple of str
        Columns defining a cell (default: none, all runs form one cell).
    baseline : str or None
        The level of ``factor`` every other arm is compared with, matched to a level by its text
        (``"16"`` finds the level 16 of a numeric factor). ``None``: not fixed at import.
    init_hash, order_hash : str or None
        Columns holding a hash of each run's initial weights / data order; when mapped, the pairing of
        arms on seeds is checked against them.
    """

    seed: str = "seed"
    factor: str = "placement"
    metric: tuple[str, ...] = ("test_acc",)
    by: tuple[str, ...] = ()
    baseline: str | None = None
    init_hash: str | None = None
    order_hash: str | None = None

    def __post_init__(self) -> None:
        for name in ("seed", "factor"):
            _check_name(name, getattr(self, name))
        for name in ("init_hash", "order_hash"):
            if getattr(self, name) is not None:
                _check_name(name, getattr(self, name))
        for name in ("metric", "by"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, tuple):
                raise ImportInputError(f"{FLAGS[name]}: expected a tuple of column names, got {value!r}")
            for v in value:
                _check_name(name, v)
        if not self.metric:
            raise ImportInputError(f"{FLAGS['metric']}: give at least one metric column")
        if self.baseline is not None and not isinstance(self.baseline, str):
            raise ImportInputError(f"{FLAGS['baseline']}: expected a level as text, got {self.baseline!r}")
        roles: dict[str, str] = {}
        for name, col in self.columns():
            if col in roles and not (roles[col] == name and name in ("metric", "by")):
                raise ImportInputError(f"{FLAGS[name]} {col!r}: the column is also mapped as {FLAGS[roles[col]]}; "
                                       "each column has one role")
            if col in roles:
                raise ImportInputError(f"{FLAGS[name]}: {col!r} is listed twice")
            roles[col] = name

    def columns(self) -> list[tuple[str, str]]:
        """``(field, column)`` for every mapped column, in the order of the fields."""
        out = [("seed", self.seed), ("factor", self.factor)]
        out += [("metric", m) for m in self.metric] + [("by", b) for b in self.by]
        out += [(n, getattr(self, n)) for n in ("init_hash", "order_hash") if getattr(self, n) is not None]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


def _check_name(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ImportInputError(f"{FLAGS[name]}: expected a column name, got {value!r}")


def _names(value: Any, key: str) -> tuple[str, ...]:
    """``"a,b"``, ``["a", "b"]`` or ``("a",)`` -> a tuple of names (a TOML list may hold commas in names)."""
    if isinstance(value, str):
        return tuple(x.strip() for x in value.split(",") if x.strip())
    if isinstance(value, list | tuple) and all(isinstance(x, str) for x in value):
        return tuple(value)
    raise ImportInputError(f"{key}: expected a column name or a list of them, got {value!r}")


def mapping(toml: str | Path | None = None, **flags: Any) -> Mapping:
    """The mapping from an ``[import]`` section of a TOML file, overridden by ``flags`` that are not None.

    ``flags`` are the fields of :class:`Mapping`; ``metric`` and ``by`` may be ``"a,b"`` strings or lists.

    Example TOML::

        [import]
        seed = "config.seed"
        factor = "config.norm_position"
        metric = ["test/acc", "test/loss"]
        by = ["config.activation"]
        baseline = "before"
    """
    unknown = sorted(set(flags) - set(FLAGS))
    if unknown:
        raise TypeError(f"mapping() got unknown field(s) {unknown}; fields: {list(FLAGS)}")
    given: dict[str, Any] = {}
    if toml is not None:
        given.update(_toml_section(Path(toml)))
    given.update({k: v for k, v in flags.items() if v is not None})
    for key in ("metric", "by"):
        if key in given:
            given[key] = _names(given[key], FLAGS[key])
    return Mapping(**given)


def _toml_section(path: Path) -> dict[str, Any]:
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ImportInputError(f"--mapping: {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ImportInputError(f"--mapping: {str(path)!r} is not valid TOML: {_one_line(e)}") from None
    section = doc.get("import")
    if not isinstance(section, dict):
        raise ImportInputError(f"--mapping: {str(path)!r} has no [import] section; its keys: {list(FLAGS)}")
    unknown = sorted(set(section) - set(FLAGS))
    if unknown:
        raise ImportInputError(f"[import] in {str(path)!r}: unknown key(s) {unknown}; allowed: {list(FLAGS)}")
    for key in ("seed", "factor", "baseline", "init_hash", "order_hash"):
        if key in section and not isinstance(section[key], str):
            raise ImportInputError(f"[import] {key} in {str(path)!r}: expected a string, got {section[key]!r}")
    return dict(section)


# -------------------------------------------------------------------------------------------------
# Reading a source


@dataclass(frozen=True)
class Source:
    """A source as read, before any mapping.

    ``runs`` has one row per run and the source's columns only; ``row_paths`` gives, per row, the file
    or run folder (relative to the source) it came from. ``curves`` has ``source_path``, ``step`` and
    one column per logged value (no rows when the source has no steps). ``files`` lists
    ``(path relative to the source, sha256)`` of every file read; ``sha256`` is the file's own hash, or
    for a folder the hash of those lines.
    """

    path: Path
    kind: str
    runs: pd.DataFrame
    row_paths: tuple[str, ...]
    curves: pd.DataFrame
    files: tuple[tuple[str, str], ...]
    sha256: str
    notes: tuple[str, ...] = ()
    states: dict[str, int] | None = None


def read_source(path: str | Path) -> Source:
    """Read a runs file or folder (see the module docstring for the kinds), without mapping it."""
    path = Path(path)
    if not path.exists():
        raise ImportInputError(f"{str(path)!r} does not exist (not a bnstats sweep, nor a runs file or folder)")
    if path.is_dir():
        if (path / "sweep.json").is_file():
            raise ImportInputError(f"{str(path)!r} is a bnstats store already (it has sweep.json); "
                                   "compare, plan and status read it as it is")
        runs = _wandb_run_dirs(path)
        if runs:
            return _read_wandb(path, runs)
        if any(_is_event_file(p) for p in path.rglob("*")):
            return _read_tensorboard(path)
        raise ImportInputError(f"{str(path)!r}: a folder with no W&B runs (wandb/run-*/, wandb/offline-run-*/) "
                               "and no TensorBoard event files (events.out.tfevents.*)")
    if path.suffix == ".wandb":
        return _read_wandb(path.parent, [path.parent])
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ImportInputError(f"{str(path)!r}: unknown kind of file (suffix {path.suffix!r}); allowed: "
                               f"{sorted(SUFFIXES)} files, a .wandb run log, a W&B or TensorBoard folder")
    if path.stat().st_size == 0:
        raise ImportInputError(f"{str(path)!r}: empty file")
    if kind == "csv":
        df, kind = _read_csv(path)
    elif kind == "parquet":
        df = _read_parquet(path)
    else:
        df = _read_jsonl(path)
    if not len(df):
        raise ImportInputError(f"{str(path)!r}: no rows (only a header); one row per run is expected")
    df.columns = [str(c) for c in df.columns]
    states = _count(df["State"]) if kind == "wandb_csv" else None
    sha = _sha256(path)
    return Source(path, kind, df.reset_index(drop=True), (path.name,) * len(df), _no_curves(), ((path.name, sha),),
                  sha, states=states)


def _read_csv(path: Path) -> tuple[pd.DataFrame, str]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        header = next(csv.reader(fh), None)
    if not header or not any(h.strip() for h in header):
        raise ImportInputError(f"{str(path)!r}: empty file (no header row)")
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise ImportInputError(f"{str(path)!r}: column(s) {dup} appear more than once in the header; "
                               "give each column its own name")
    try:
        df = pd.read_csv(path, encoding="utf-8-sig", keep_default_na=False, na_values=list(CSV_NA))
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ImportInputError(f"{str(path)!r}: not a readable CSV file: {_one_line(e)}") from None
    kind = "wandb_csv" if tuple(header[: len(WANDB_CSV_HEAD)]) == WANDB_CSV_HEAD else "csv"
    return df, kind


def _read_parquet(path: Path) -> pd.DataFrame:
    import pyarrow as pa

    try:
        return pd.read_parquet(path)
    except (pa.ArrowException, OSError) as e:
        raise ImportInputError(f"{str(path)!r}: not a readable Parquet file: {_one_line(e)}") from None


def _read_jsonl(path: Path) -> pd.DataFrame:
    records = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ImportInputError(f"{str(path)!r}: line {i} is not JSON ({e.msg}); JSON lines hold one object "
                                   "per line") from None
        if not isinstance(obj, dict):
            raise ImportInputError(f"{str(path)!r}: line {i} is a JSON {type(obj).__name__}, not an object "
                                   "(one run per line, as {\"column\": value, ...})")
        records.append(flatten(obj))
    if not records:
        raise ImportInputError(f"{str(path)!r}: empty file (no JSON objects)")
    return pd.DataFrame.from_records(records)


def flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``outer.inner`` keys; lists and W&B media objects (dicts with ``_type``) -> JSON text.

    The dotted names are the ones the W&B UI shows for nested config keys.
    """
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and "_type" not in v:
            out.update(flatten(v, key + "."))
        elif isinstance(v, dict | list | tuple):
            out[key] = json.dumps(v, sort_keys=True, default=str)
        else:
            out[key] = v
    return out


def _no_curves() -> pd.DataFrame:
    return pd.DataFrame({"source_path": pd.Series(dtype=str), "step": pd.Series(dtype="int64")})


def _count(series: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in series.fillna("").astype(str).value_counts().sort_index().items()}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _folder_hash(files: Iterable[tuple[str, str]]) -> str:
    """sha256 of ``sha256sum``-style lines (``<sha256>  <path>``), sorted by path."""
    text = "".join(f"{sha}  {rel}\n" for rel, sha in sorted(files))
    return hashlib.sha256(text.encode()).hexdigest()


def _merge(row: dict[str, Any], new: dict[str, Any], origin: str, notes: list[str], where: str) -> None:
    """Add ``new`` to ``row``; a name already there with another value is kept as ``<name>.<origin>``."""
    for k, v in new.items():
        if k not in row or _same(row[k], v):
            row.setdefault(k, v)
            continue
        row[f"{k}.{origin}"] = v
        note = f"{k!r} is in a run's {origin} too, with another value: kept as {k + '.' + origin!r} (first: {where})"
        if not any(n.startswith(note.split(" (first:")[0]) for n in notes):  # once per name, not per run
            notes.append(note)


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
    except (TypeError, ValueError):
        return False


# --- W&B run folders ---------------------------------------------------------------------------------

_WANDB_RUN_DIR = re.compile(r"^(?:offline-)?run-(?:.*-)?(?P<id>[A-Za-z0-9]+)$")


def _is_wandb_run_dir(p: Path) -> bool:
    return (p.is_dir() and not p.is_symlink() and bool(_WANDB_RUN_DIR.match(p.name))
            and ((p / "files").is_dir() or any(p.glob("run-*.wandb"))))


def _wandb_run_dirs(root: Path) -> list[Path]:
    """The W&B run folders of ``root``: itself, its ``run-*`` children, or those of ``root/wandb``.

    ``latest-run`` (a symlink to one of them) is skipped.
    """
    if _is_wandb_run_dir(root):
        return [root]
    for base in (root, root / "wandb"):
        if base.is_dir():
            dirs = sorted((p for p in base.iterdir() if _is_wandb_run_dir(p)), key=lambda p: p.name)
            if dirs:
                return dirs
    return []


def _read_wandb(root: Path, run_dirs: Sequence[Path]) -> Source:
    rows, row_paths, curves, files, notes = [], [], [], [], []
    for d in run_dirs:
        rel = d.name if d != root else "."
        row, hist, read = _wandb_run(d, notes)
        rows.append(row)
        row_paths.append(rel)
        curves += [{"source_path": rel, **h} for h in hist]
        files += [(f"{rel}/{p.relative_to(d)}" if rel != "." else str(p.relative_to(d)), _sha256(p)) for p in read]
    runs = pd.DataFrame.from_records(rows)
    states = _count(runs["wandb_state"]) if "wandb_state" in runs else None
    return Source(root, "wandb", runs, tuple(row_paths), _curves_frame(curves), tuple(sorted(files)),
                  _folder_hash(files), tuple(notes), states)


def _wandb_run(d: Path, notes: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]], list[Path]]:
    """One run folder -> (row, history rows, files read)."""
    summary_file, config_file = d / "files" / "wandb-summary.json", d / "files" / "config.yaml"
    logs = sorted(d.glob("run-*.wandb"))
    if len(logs) > 1:
        raise ImportInputError(f"{str(d)!r}: more than one run log ({[p.name for p in logs]}); one run per folder")
    log = logs[0] if logs else None
    read: list[Path] = []
    info: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    if log is not None:
        info, history = _wandb_log(log)
        read.append(log)
    if summary_file.is_file():
        try:
            summary = json.loads(summary_file.read_text())
        except json.JSONDecodeError as e:
            raise ImportInputError(f"{str(summary_file)!r}: not JSON ({e.msg})") from None
        read.append(summary_file)
    else:
        summary = info.get("summary") or {}
    if not any(not str(k).startswith("_") for k in summary):
        where = ("files/wandb-summary.json holds no logged value" if summary_file.is_file()
                 else "files/wandb-summary.json is missing and its run-*.wandb log holds no logged value" if log
                 else "no files/wandb-summary.json and no run-*.wandb log")
        raise ImportInputError(f"{str(d)!r}: W&B run folder with no summary ({where}); was the run finished?")
    if config_file.is_file():
        yaml = _need("yaml", f"reading {config_file}", "pyyaml")
        try:
            raw = yaml.safe_load(config_file.read_text()) or {}
        except yaml.YAMLError as e:
            raise ImportInputError(f"{str(config_file)!r}: not YAML: {_one_line(e)}") from None
        # W&B's format: {key: {desc: ..., value: ...}}; `wandb_version: 1` on top in older clients
        config = {k: v["value"] if isinstance(v, dict) and "value" in v else v
                  for k, v in raw.items() if k != "wandb_version"}
        read.append(config_file)
    else:
        config = info.get("config") or {}
    # W&B's own bookkeeping (client version, telemetry, its runtime clock), not the run's config or results
    config = {k: v for k, v in config.items() if not _is_wandb_internal(k)}
    summary = {k: v for k, v in summary.items() if not _is_wandb_internal(k)}
    m = _WANDB_RUN_DIR.match(d.name)
    row: dict[str, Any] = {"run": d.name, "wandb_id": info.get("run_id") or (m.group("id") if m else d.name)}
    for key in ("name", "project", "state"):
        if info.get(key):
            row[f"wandb_{key}"] = info[key]
    if info.get("tags"):
        row["wandb_tags"] = ",".join(info["tags"])
    _merge(row, flatten(config), "config", notes, d.name)
    _merge(row, flatten(summary), "summary", notes, d.name)
    return row, history, read


def _is_wandb_internal(key: Any) -> bool:
    return key == "_wandb" or str(key).startswith("_wandb.")


def _wandb_core() -> str:
    wandb = _need("wandb", "reading a W&B run log (run-*.wandb)")
    version = tuple(int(x) for x in re.findall(r"\d+", wandb.__version__)[:2])
    if version < WANDB_MIN_VERSION:
        raise MissingExtra(f"reading a W&B run log (run-*.wandb) needs wandb>={'.'.join(map(str, WANDB_MIN_VERSION))}"
                           f" (its `wandb leet inspect` reader); found wandb {wandb.__version__}: {INSTALL} -U")
    from wandb.util import get_core_path

    return get_core_path()


def _wandb_log(log: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read one ``.wandb`` log with wandb-core (what ``wandb leet inspect`` runs): (run info, history rows).

    ``--summary --json`` gives the run's config, summary, name, state and tags as wandb itself assembles
    them; ``--json`` gives one JSON object per record, of which the ``history`` records are the steps.
    """
    core = _wandb_core()
    base = [core, "leet", "inspect", "--no-observability", "--json", "--run-file", str(log)]

    def run(extra: list[str]) -> str:
        try:
            p = subprocess.run([*base, *extra, str(log.parent.parent)], capture_output=True, text=True,
                               timeout=600, check=False)
        except (OSError, subprocess.SubprocessError) as e:
            raise ImportInputError(f"{str(log)!r}: wandb's reader did not run: {_one_line(e)}") from None
        if p.returncode != 0:
            raise ImportInputError(f"{str(log)!r}: wandb's reader could not read this run log: "
                                   f"{_one_line(p.stderr or p.stdout)[-300:]}")
        return p.stdout

    try:
        info = json.loads(run(["--summary"]))
    except json.JSONDecodeError as e:
        raise ImportInputError(f"{str(log)!r}: wandb's reader gave no summary ({e.msg})") from None
    history = []
    for line in run([]).splitlines():
        if '"history"' not in line:  # most records are system stats, config, telemetry: skip them unparsed
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ImportInputError(f"{str(log)!r}: wandb's reader gave a record that is not JSON ({e.msg})") from None
        if rec.get("type") != "history":
            continue
        body = rec.get("history") or {}
        item = flatten(body.get("item") or {})
        step = item.pop("_step", None)
        if step is None:
            step = (body.get("step") or {}).get("num")
        history.append({"step": step, **{k: v for k, v in item.items() if _is_number(v)}})
    return info, history


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool | np.bool_)


def _curves_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows (``source_path``, ``step``, values) -> one row per run and step (the last value of each
    column logged at that step: a resumed run that logs a step again keeps its later value)."""
    rows = [r for r in rows if r.get("step") is not None]
    if not rows:
        return _no_curves()
    df = pd.DataFrame.from_records(rows)
    df["step"] = df["step"].astype("int64")
    return df.groupby(["source_path", "step"], sort=True).last().reset_index()


# --- TensorBoard ---------------------------------------------------------------------------------------


def _is_event_file(p: Path) -> bool:
    return "tfevents" in p.name and p.is_file()  # TensorBoard's own test (io_wrapper.IsSummaryEventsFile)


def _read_tensorboard(root: Path) -> Source:
    ea = _need("tensorboard.backend.event_processing.event_accumulator", "reading TensorBoard event files",
               "tensorboard")
    hpm = _need("tensorboard.plugins.hparams.metadata", "reading TensorBoard event files", "tensorboard")
    tensor_util = _need("tensorboard.util.tensor_util", "reading TensorBoard event files", "tensorboard")
    event_files = sorted(p for p in root.rglob("*") if _is_event_file(p))
    dirs = sorted({p.parent for p in event_files})
    logged: dict[Path, dict[str, list[tuple[int, float, float]]]] = {}
    hparams: dict[Path, dict[str, Any]] = {}
    for d in dirs:
        acc = ea.EventAccumulator(str(d), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})  # 0: keep every event
        acc.Reload()
        tags = acc.Tags()
        series = {t: [(e.step, e.wall_time, float(e.value)) for e in acc.Scalars(t)] for t in tags[ea.SCALARS]}
        for t in tags[ea.TENSORS]:  # TF2's tf.summary.scalar writes scalars as tensors of the "scalars" plugin
            if acc.SummaryMetadata(t).plugin_data.plugin_name != "scalars":
                continue
            vals = [(e.step, e.wall_time, tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(t)]
            series.setdefault(t, [(s, w, float(v)) for s, w, v in vals if np.ndim(v) == 0])
        logged[d] = series
        try:
            content = acc.PluginTagToContent(hpm.PLUGIN_NAME)
        except KeyError:  # no hparams written in this folder
            content = {}
        if hpm.SESSION_START_INFO_TAG in content:
            info = hpm.parse_session_start_info_plugin_data(content[hpm.SESSION_START_INFO_TAG])
            hparams[d] = {k: _hparam_value(v) for k, v in sorted(info.hparams.items())}
    # torch's SummaryWriter.add_hparams writes to a timestamped subfolder of the run: it belongs to the run
    owner = {d: d.parent if d in hparams and d.parent in logged else d for d in dirs}
    runs = sorted({owner[d] for d in dirs})
    rows, row_paths, long, notes = [], [], [], []
    top = root.resolve().parent
    for r in runs:
        rel = r.relative_to(root).as_posix()
        members = [d for d in dirs if owner[d] == r]  # the run folder first (sorted: parent before child)
        row: dict[str, Any] = {"run": rel}
        _merge(row, _path_values(r.resolve().relative_to(top)), "path", notes, rel)
        for d in members:
            _merge(row, hparams.get(d, {}), "hparams", notes, rel)
        last: dict[str, float] = {}
        for d in members:
            for tag, events in logged[d].items():
                if tag in last or not events:
                    continue  # a tag of the run folder wins over the same tag in its hparams subfolder
                events = sorted(events, key=lambda e: (e[0], e[1]))  # by step, then wall time
                last[tag] = events[-1][2]
                long.append(pd.DataFrame({"source_path": rel, "step": [e[0] for e in events], "tag": tag,
                                          "value": [e[2] for e in events]}))
        if not last:
            continue
        _merge(row, last, "scalar", notes, rel)
        rows.append(row)
        row_paths.append(rel)
    if not rows:
        raise ImportInputError(f"{str(root)!r}: TensorBoard event files with no scalars; one scalar per metric "
                               "(add_scalar) is needed")
    curves = pd.concat(long, ignore_index=True)
    # one row per run and step; a step logged twice (a restarted run) keeps its later value (sorted above)
    curves = (curves.pivot_table(index=["source_path", "step"], columns="tag", values="value", aggfunc="last",
                                 sort=True).reset_index())
    curves.columns.name = None
    files = [(p.relative_to(root).as_posix(), _sha256(p)) for p in event_files]
    return Source(root, "tensorboard", pd.DataFrame.from_records(rows), tuple(row_paths), curves,
                  tuple(files), _folder_hash(files), tuple(notes))


def _hparam_value(v: Any) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "number_value":
        x = v.number_value
        return int(x) if float(x).is_integer() and abs(x) < 2**53 else x
    if kind in ("string_value", "bool_value"):
        return getattr(v, kind)
    return None


def _path_values(rel: Path) -> dict[str, Any]:
    """``key=value`` parts of a run folder's path (separated by ``/`` or ``,``), values as numbers where
    they read as numbers: ``placement=after,seed=3`` -> ``{"placement": "after", "seed": 3}``."""
    out: dict[str, Any] = {}
    for part in re.split(r"[/,]", rel.as_posix()):
        if part.count("=") == 1:
            k, v = part.split("=")
            if k:
                out[k] = _number_or_text(v)
    return out


def _number_or_text(text: str) -> Any:
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    try:
        x = float(text)
    except ValueError:
        return text
    return x if math.isfinite(x) else text


# -------------------------------------------------------------------------------------------------
# Mapping a source: the imported tables


@dataclass(frozen=True)
class Imported:
    """An imported source: ``runs`` and ``curves`` as a store holds them, and the store's ``meta``.

    ``runs.attrs["factors"]`` is ``[factor, *by]``, so ``stats.compare(imported.runs, metric, factor,
    baseline)`` compares within the mapped cells.
    """

    runs: pd.DataFrame
    curves: pd.DataFrame
    meta: dict[str, Any]
    mapping: Mapping
    source: Source

    @property
    def metric(self) -> str:
        return self.mapping.metric[0]


def read(path: str | Path, mapping: Mapping | None = None) -> Imported:
    """Read a runs file or folder and map its columns; raises :class:`ImportInputError` on bad input.

    See the module docstring for the sources, the tables and the checks.
    """
    mapping = mapping or Mapping()
    if not isinstance(mapping, Mapping):
        raise TypeError(f"mapping must be a bnstats.importers.Mapping, got {type(mapping).__name__}")
    return _apply(read_source(path), mapping)


def _apply(src: Source, m: Mapping) -> Imported:
    df = src.runs.copy()
    name = str(src.path)
    columns = list(df.columns)
    for fld, col in m.columns():
        if col not in df.columns:
            raise ImportInputError(f"{FLAGS[fld]} {col!r}: no such column in {name!r}; its columns: {columns}")
    # our bookkeeping columns take their names; a source column of the same name stays as <name>.orig
    keep = {"seed": m.seed, "init_hash": m.init_hash, "order_hash": m.order_hash}
    own_ids = "run_id" in df and df["run_id"].notna().all() and df["run_id"].astype(str).is_unique
    renamed = {c: f"{c}.orig" for c in RESERVED if c in df and keep.get(c, "") != c and not (c == "run_id" and own_ids)}
    df = df.rename(columns=renamed)
    m = Mapping(**{f.name: _renamed(getattr(m, f.name), renamed) for f in fields(m)})

    for col in m.metric:
        df[col] = _numeric_metric(df[col], col, name, src.row_paths)
    for fld, col in [("seed", m.seed), ("factor", m.factor), *(("by", b) for b in m.by)]:
        bad = df[col].isna().to_numpy()
        if bad.any():
            raise ImportInputError(f"{FLAGS[fld]} {col!r}: missing values in {_where(bad, src.row_paths)} of {name!r}")
    seeds = _seed_values(df[m.seed])
    df["seed"] = seeds
    for h in ("init_hash", "order_hash"):
        if getattr(m, h) is not None:
            df[h] = df[getattr(m, h)]
    levels = _levels(df[m.factor])
    if len(levels) < 2:
        raise ImportInputError(f"{FLAGS['factor']} {m.factor!r}: one level only ({levels}); a comparison needs "
                               "two arms or more")
    baseline = _baseline(m, levels)
    _check_pairs(df, m, baseline, name, src.row_paths)

    run_ids = _run_ids(df, src, own_ids)
    df = df.drop(columns=["run_id"], errors="ignore")  # the source's own ids, when used, come back first
    df.insert(0, "run_id", run_ids)
    df["source"] = "import"
    df["source_path"] = list(src.row_paths)
    df["source_sha256"] = src.sha256
    df, stringified = _parquet_safe(df)
    order = ["run_id", "seed", m.factor, *m.by, *m.metric]
    df = df[order + [c for c in df.columns if c not in order]]
    df = df.sort_values(["seed", m.factor, *m.by], kind="stable").reset_index(drop=True)
    df.attrs["factors"] = [m.factor, *m.by]

    curves = src.curves
    if len(curves):
        ids = dict(zip(src.row_paths, run_ids, strict=True))
        curves = curves[curves["source_path"].isin(ids)]
        curves = curves.assign(source_path=curves["source_path"].map(ids)).rename(columns={"source_path": "run_id"})
        curves = curves.sort_values(["run_id", "step"], kind="stable").reset_index(drop=True)
    else:
        curves = pd.DataFrame({"run_id": pd.Series(dtype=str), "step": pd.Series(dtype="int64")})

    notes = list(src.notes)
    if stringified:
        notes.append(f"column(s) {stringified} mixed text and numbers: stored as text")
    if src.states and set(src.states) - {"finished"}:
        other = {k: v for k, v in src.states.items() if k != "finished"}
        notes.append(f"{sum(other.values())} run(s) are not finished in W&B's state ({other}): imported as they "
                     "are, their summary is their last logged value")
    meta = {
        "format": 1,
        "source": "import",
        "factors": [m.factor, *m.by],
        "import": {
            "kind": src.kind,
            "path": str(src.path),
            "sha256": src.sha256,
            "files": [{"path": p, "sha256": s} for p, s in src.files],
            "mapping": {**m.to_dict(), "baseline": None if baseline is None else _plain(baseline)},
            "renamed": renamed,
            "columns": [str(c) for c in src.runs.columns],
            "n_runs": len(df),
            "metric_units": METRIC_UNITS,
            "curves": ({"x": "step", "columns": [c for c in curves.columns if c not in ("run_id", "step")]}
                       if len(curves) else None),
            "states": src.states,
            "notes": notes,
            "bnstats_version": __version__,
        },
        "pairing": _pairing(df, m, baseline),
    }
    return Imported(df, curves, meta, m, src)


def _renamed(value: Any, renamed: dict[str, str]) -> Any:
    if isinstance(value, tuple):
        return tuple(renamed.get(v, v) for v in value)
    return renamed.get(value, value) if isinstance(value, str) else value


def _where(mask: np.ndarray, row_paths: Sequence[str], limit: int = 5) -> str:
    """Rows (1-based, as in the file) or run folders where ``mask`` holds."""
    idx = np.flatnonzero(mask)
    if len(set(row_paths)) > 1:  # a folder source: name the runs
        names = [row_paths[i] for i in idx[:limit]]
        return f"run(s) {names}" + (f" and {len(idx) - limit} more" if len(idx) > limit else "")
    rows = [int(i) + 1 for i in idx[:limit]]
    return f"row(s) {rows}" + (f" and {len(idx) - limit} more" if len(idx) > limit else "")


def _numeric_metric(s: pd.Series, col: str, name: str, row_paths: Sequence[str]) -> pd.Series:
    """A metric column as float64, or an error naming the values that are not numbers."""
    if pd.api.types.is_bool_dtype(s):
        raise ImportInputError(f"{FLAGS['metric']} {col!r}: true/false values, not numbers")
    if pd.api.types.is_numeric_dtype(s):
        return s.astype("float64")
    bad = s.map(lambda v: not (_is_number(v) or v is None or (isinstance(v, float) and math.isnan(v)))).to_numpy()
    if bad.any():
        examples = sorted({repr(v) for v in s[bad].tolist()})[:3]
        raise ImportInputError(f"{FLAGS['metric']} {col!r} is not numeric: values like {', '.join(examples)} in "
                               f"{_where(bad, row_paths)} of {name!r}")
    return pd.to_numeric(s, errors="raise").astype("float64")


def _seed_values(s: pd.Series) -> pd.Series:
    """Seeds as integers where they are integral numbers (or text of them), else as they are."""
    if pd.api.types.is_integer_dtype(s):
        return s.astype("int64")
    if pd.api.types.is_float_dtype(s) and np.all(np.mod(s.to_numpy(), 1) == 0):
        return s.astype("int64")
    text = s.astype(str)
    if not pd.api.types.is_numeric_dtype(s) and text.str.fullmatch(r"[+-]?\d+").all():
        return text.astype("int64")
    return s


def _plain(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x


def _levels(s: pd.Series) -> list:
    return sorted(s.dropna().unique().tolist(), key=lambda x: (str(type(x)), x))


def _baseline(m: Mapping, levels: list) -> Any:
    return None if m.baseline is None else _level(m.factor, levels, m.baseline)


def _level(factor: str, levels: list, text: str) -> Any:
    """The level whose text is ``text`` (so ``"16"`` finds 16 and ``"true"`` finds True)."""
    for lv in levels:
        if str(lv) == text or (isinstance(lv, bool | np.bool_) and str(lv).lower() == text.lower()):
            return lv
    raise ImportInputError(f"{FLAGS['baseline']} {text!r}: not a level of {factor!r}; levels: "
                           f"{[_plain(x) for x in levels]}; pass --baseline LEVEL")


def level_of(runs: pd.DataFrame, factor: str, text: str) -> Any:
    """The level of ``runs[factor]`` written ``text`` (for a baseline given on the command line)."""
    return _level(factor, _levels(runs[factor]), str(text))


def check_metric(runs: pd.DataFrame, metric: str) -> None:
    """Raise :class:`ImportInputError` unless ``metric`` is a numeric column of ``runs``."""
    if metric not in runs:
        raise ImportInputError(f"{FLAGS['metric']} {metric!r}: no such column; columns: {list(runs.columns)}")
    s = runs[metric]
    if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
        raise ImportInputError(f"{FLAGS['metric']} {metric!r} is not numeric (dtype {s.dtype})")


def _cells(df: pd.DataFrame, by: Sequence[str]):
    if not by:
        yield {}, df
        return
    for key, sub in df.groupby(list(by), sort=True, dropna=False):
        yield dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True)), sub


def _cell_text(cell: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_plain(v)!r}" for k, v in cell.items()) or "all runs"


def _check_pairs(df: pd.DataFrame, m: Mapping, baseline: Any, name: str, row_paths: Sequence[str]) -> None:
    """Refuse duplicate (seed, arm) rows of a cell and arms that share no seed with the baseline
    (with every other arm, when no baseline is given)."""
    key = [*m.by, m.factor, "seed"]
    dup = df.duplicated(key, keep=False).to_numpy()
    if dup.any():
        first = df[dup].iloc[0]
        what = ", ".join(f"{c}={_plain(first[c])!r}" for c in key)
        raise ImportInputError(f"duplicate runs in {name!r}: {int(dup.sum())} rows share their seed and arm with "
                               f"another ({_where(dup, row_paths)}; first: {what}); keep one run per seed and "
                               "arm in each cell, or map the column that tells them apart with --by")
    for cell, sub in _cells(df, m.by):
        seeds = {lv: set(g["seed"]) for lv, g in sub.groupby(m.factor, sort=True)}
        arms = _levels(sub[m.factor])
        if baseline is not None and baseline not in seeds:
            raise ImportInputError(f"cell {_cell_text(cell)}: no runs of the baseline {m.factor}={_plain(baseline)!r}; "
                                   f"arms there: {[_plain(a) for a in arms]}")
        pairs = ([(baseline, a) for a in arms if a != baseline] if baseline is not None
                 else [(a, b) for i, a in enumerate(arms) for b in arms[i + 1:]])
        for a, b in pairs:
            if not seeds[a] & seeds[b]:
                raise ImportInputError(
                    f"cell {_cell_text(cell)}: arms {m.factor}={_plain(a)!r} and {m.factor}={_plain(b)!r} share no "
                    f"seed ({_plain(a)!r}: {_seed_list(seeds[a])}, {_plain(b)!r}: {_seed_list(seeds[b])}); pairing "
                    f"is on seed (is {FLAGS['seed']} {m.seed!r} the seed?)")


def _seed_list(seeds: set, limit: int = 8) -> str:
    s = sorted(seeds, key=lambda x: (str(type(x)), x))
    return str([_plain(x) for x in s[:limit]])[:-1] + (", ...]" if len(s) > limit else "]")


def _run_ids(df: pd.DataFrame, src: Source, own_ids: bool) -> list[str]:
    if own_ids:
        return df["run_id"].astype(str).tolist()
    if "wandb_id" in df and df["wandb_id"].notna().all() and df["wandb_id"].astype(str).is_unique:
        return df["wandb_id"].astype(str).tolist()
    # stable: the same source gives the same ids wherever it is imported
    return [hashlib.sha256(f"{src.sha256}:{p}:{i}".encode()).hexdigest()[:16]
            for i, p in enumerate(src.row_paths)]


def _parquet_safe(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Columns holding both text and numbers (Parquet columns have one type) become text."""
    out = []
    for c in df.columns:
        if df[c].dtype != object:
            continue
        kinds = {("number" if _is_number(v) else type(v).__name__) for v in df[c].dropna().tolist()}
        if len(kinds) > 1:
            df[c] = df[c].map(lambda v: v if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
            out.append(c)
    return df, out


def _pairing(df: pd.DataFrame, m: Mapping, baseline: Any) -> dict[str, list[str]]:
    """What the pairing of arms on seeds rests on, as sentences for the report."""
    verified, not_verified = [], []
    groups = df.groupby([*m.by, "seed"], sort=True, dropna=False)
    n_groups = groups.ngroups
    unmatched = []
    for cell, sub in _cells(df, m.by):
        seeds = {lv: set(g["seed"]) for lv, g in sub.groupby(m.factor, sort=True)}
        ref = seeds[baseline] if baseline is not None and baseline in seeds else set.union(*seeds.values())
        for arm, s in seeds.items():
            if s != ref:
                unmatched.append(f"{_cell_text(cell)}, {m.factor}={_plain(arm)!r}: seeds "
                                 f"{_seed_list(ref ^ s)} not shared")
    if unmatched:
        not_verified.append(f"seed identity: not every arm has the same seeds ({'; '.join(unmatched[:3])}"
                            f"{'; ...' if len(unmatched) > 3 else ''}); unpaired seeds cannot be compared")
    else:
        verified.append(f"seed identity: in every cell all arms have the same seeds ({n_groups} seed x cell "
                        f"groups, column {m.seed!r})")
    for h, what in (("init_hash", "initial weights"), ("order_hash", "data order")):
        col = getattr(m, h)
        if col is None:
            not_verified.append(f"{what}: the source records no hash of them ({FLAGS[h]} not mapped), so arms "
                                f"with the same seed may not share their {what}")
            continue
        n = groups[h].nunique(dropna=False)
        bad = n[n > 1]
        if len(bad):
            first = dict(zip([*m.by, "seed"], bad.index[0] if isinstance(bad.index[0], tuple) else (bad.index[0],),
                             strict=True))
            not_verified.append(f"{what}: {h} (column {col!r}) differs between arms in {len(bad)} of {n_groups} "
                                f"seed x cell groups (first: {_cell_text(first)})")
        else:
            verified.append(f"{what}: all arms of each seed and cell share {h} (column {col!r}; {n_groups} groups)")
    return {"verified": verified, "not_verified": not_verified}


# -------------------------------------------------------------------------------------------------
# Writing an imported store


def write_store(imp: Imported, out: str | Path) -> bool:
    """Write ``imp`` as a store in ``out``: ``sweep.json``, ``tables/runs.parquet`` [, ``tables/curves.parquet``].

    The store appears whole or not at all (written beside ``out``, then renamed). Returns False, and
    writes nothing, when ``out`` already holds this import (same source hash and mapping). Raises
    :class:`ImportInputError` when ``out`` holds anything else: a sweep, an import of another source or
    with another mapping, or other files.
    """
    out = Path(out)
    meta_path = out / "sweep.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        if old.get("source") != "import":
            raise ImportInputError(f"--out: {str(out)!r} is a bnstats sweep; import into another directory")
        was, now = old["import"], imp.meta["import"]
        if was["sha256"] != now["sha256"]:
            raise ImportInputError(f"--out: {str(out)!r} holds runs imported from another source ({was['path']!r}, "
                                   f"sha256 {was['sha256'][:12]}); this one ({now['path']!r}) has sha256 "
                                   f"{now['sha256'][:12]}; use another --out")
        if was["mapping"] != now["mapping"]:
            diff = next(k for k in now["mapping"] if was["mapping"].get(k) != now["mapping"][k])
            raise ImportInputError(f"--out: {str(out)!r} holds this source imported with another mapping ({diff}: "
                                   f"stored {was['mapping'].get(diff)!r}, given {now['mapping'][diff]!r}); "
                                   "use another --out")
        return False
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ImportInputError(f"--out: {str(out)!r} exists, is not empty and is not an imported store")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.import-{uuid.uuid4().hex[:12]}"
    try:
        (tmp / "tables").mkdir(parents=True)
        imp.runs.to_parquet(tmp / "tables" / "runs.parquet", index=False, compression="zstd")
        if len(imp.curves):
            imp.curves.to_parquet(tmp / "tables" / "curves.parquet", index=False, compression="zstd")
        (tmp / "sweep.json").write_text(json.dumps(imp.meta, indent=2, sort_keys=True, default=_plain) + "\n")
        for f in (tmp / "tables").iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if out.is_dir():
            out.rmdir()  # empty (checked above); rename needs the name free
        os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return True


def is_imported(meta: dict[str, Any]) -> bool:
    """Whether a store's ``sweep.json`` describes imported runs (not a bnstats sweep)."""
    return meta.get("source") == "import"


def stored_mapping(meta: dict[str, Any]) -> Mapping:
    """The mapping an imported store was made with."""
    d = dict(meta["import"]["mapping"])
    d["metric"], d["by"] = tuple(d["metric"]), tuple(d["by"])
    if d.get("baseline") is not None:
        d["baseline"] = str(d["baseline"])
    return Mapping(**d)


def describe(imp: Imported) -> str:
    """A few lines saying what was imported, for the command line."""
    m, runs = imp.mapping, imp.runs
    arms = [_plain(x) for x in _levels(runs[m.factor])]
    n_cells = runs.groupby(list(m.by)).ngroups if m.by else 1
    kind = imp.meta["import"]["kind"]
    lines = [f"imported {len(runs)} runs from {str(imp.source.path)!r} ({kind}): {m.factor} {arms}, "
             f"{runs['seed'].nunique()} seeds, {n_cells} cell(s){' by ' + ', '.join(m.by) if m.by else ''}",
             f"metrics {list(m.metric)}: kept in the source's units (a fraction stays a fraction)"
             + (f"; curves: {len(imp.curves)} rows (run x step)" if len(imp.curves) else "")]
    p = imp.meta["pairing"]
    lines.append("pairing verified: " + ("; ".join(x.split(":")[0] for x in p["verified"]) or "nothing")
                 + "; not verified: " + ("; ".join(x.split(":")[0] for x in p["not_verified"]) or "nothing"))
    lines += [f"note: {n}" for n in imp.meta["import"]["notes"]]
    return "\n".join(lines)
