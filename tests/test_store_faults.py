"""Fault injection: the store and the sweep under crashes, damaged files and bad input (issue 22).

Each test breaks something the way a power cut, a bad disk, a crashing node or a user would, and checks
what the store promises (``bnstats/store.py``'s docstring): compaction is durable (1); a damaged unit or
table is named, moved aside and retrained or rebuilt (2, 3); a store that lost ``sweep.json`` takes back
only its own config (4); ``bnstats verify`` lists every broken invariant and ``--repair`` fixes them (5);
kill -9 of the launcher takes its workers along (6); bad input exits 2 with one line before anything is
written (9); a sweep waiting on another process's lock says so, and temporary files of failed writes go
away (10).
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from bnstats import cli, config, store, sweep
from bnstats.status import status_dict
from bnstats.sweep import InlineExecutor, run_sweep
from tests.conftest import REPO, tiny_toml

HAS_PROC = Path("/proc/self/fd").is_dir()


@pytest.fixture(scope="module")
def cfg_path(data_root, tmp_path_factory) -> Path:
    """The tiny MNIST-1D sweep with one seed: 6 runs (2 archs x 3 placements)."""
    p = tmp_path_factory.mktemp("faults") / "tiny.toml"
    p.write_text(tiny_toml(data_root, seeds=1))
    return p


@pytest.fixture(scope="module")
def outputs(cfg_path):
    """The 6 runs trained once for the module (~2 s); tests store them in fresh directories."""
    from bnstats.train import train

    return [train(r) for r in config.load(cfg_path).runs()]


def _store(tmp_path, cfg_path, outputs, *, n=6, compact=True):
    cfg = config.load(cfg_path)
    st = store.Store.open(tmp_path / "sw", cfg)
    for o in outputs[:n]:
        assert st.write(o)
    if compact:
        assert st.compact() == n
    return st, cfg


def _rid(output) -> str:
    return output.run["run_id"]


def _sweep_again(cfg, st, logs):
    return run_sweep(cfg, st.path, executor=InlineExecutor(), progress=False, log=logs.append)


def _cli(*args) -> int:
    return cli.main([str(a) for a in args])


def _one_line_exit_2(capsys, *args) -> str:
    rc = _cli(*args)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert rc == 2, (rc, err, captured.out[-2000:])
    assert len(err.splitlines()) == 1, err
    return err


def _expected_sizes(outputs, table: str) -> dict[str, int]:
    return {_rid(o): len(getattr(o, table)) for o in outputs if getattr(o, table)}


def _assert_complete(path, outputs):
    """Every run once, with all its curves and moments rows, nothing else."""
    res = store.load(path)
    assert sorted(res.runs["run_id"]) == sorted(_rid(o) for o in outputs)
    for table in ("curves", "moments"):
        df = getattr(res, table)
        assert df.groupby("run_id").size().to_dict() == _expected_sizes(outputs, table), table


# Damage, as a bad disk, a full disk or a killed copy leaves it
def _garbage(p: Path) -> None:
    p.write_bytes(b"definitely not parquet " * 40)


def _footerless(p: Path) -> None:
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _deleted(p: Path) -> None:
    p.unlink()


# ---------------------------------------------------------------------------------------------------
# 1. durable writes and compaction (the order of syscalls, traced)


def _trace(monkeypatch) -> list[tuple]:
    """Record fsync (by the path of its descriptor), replace, rename and rmtree, in order."""
    events: list[tuple] = []
    real = {"fsync": os.fsync, "replace": os.replace, "rename": os.rename, "rmtree": shutil.rmtree}

    def fsync(fd):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")).resolve()))
        return real["fsync"](fd)

    def replace(src, dst, **kw):
        events.append(("replace", Path(src).resolve(), Path(dst).resolve()))
        return real["replace"](src, dst, **kw)

    def rename(src, dst, **kw):
        events.append(("rename", Path(src).resolve(), Path(dst).resolve()))
        return real["rename"](src, dst, **kw)

    def rmtree(path, *a, **kw):
        events.append(("rmtree", Path(path).resolve()))
        return real["rmtree"](path, *a, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    return events


@pytest.mark.skipif(not HAS_PROC, reason="maps descriptors to paths through /proc")
def test_compaction_syncs_new_tables_and_their_directory_before_it_removes_the_units(
        cfg_path, outputs, tmp_path, monkeypatch):
    st, _ = _store(tmp_path, cfg_path, outputs, n=2, compact=False)
    tables, units = st.tables.resolve(), st.units.resolve()
    events = _trace(monkeypatch)
    assert st.compact() == 2
    replaced = [i for i, e in enumerate(events) if e[0] == "replace" and e[2].parent == tables]
    assert sorted(events[i][2].name for i in replaced) == ["curves.parquet", "moments.parquet", "runs.parquet"]
    for i in replaced:  # each new table's data is on disk before it replaces the old one
        assert ("fsync", events[i][1]) in events[:i], f"{events[i][2].name} replaced before its data was synced"
    # a unit leaves units/ (and is deleted) only once the renames of the tables are durable too
    gone = [i for i, e in enumerate(events)
            if (e[0] == "rename" and e[1].parent == units) or e[0] == "rmtree"]
    assert gone, events
    dir_synced = [i for i, e in enumerate(events) if e == ("fsync", tables)]
    assert any(max(replaced) < i < min(gone) for i in dir_synced), \
        "units moved out before the tables directory was synced"


@pytest.mark.skipif(not HAS_PROC, reason="maps descriptors to paths through /proc")
def test_a_unit_is_durable_once_it_is_visible(cfg_path, outputs, tmp_path, monkeypatch):
    cfg = config.load(cfg_path)
    st = store.Store.open(tmp_path / "sw", cfg)
    events = _trace(monkeypatch)
    assert st.write(outputs[0])
    units = st.units.resolve()
    (commit,) = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] == units / _rid(outputs[0])]
    tmp = events[commit][1]
    synced = {e[1] for e in events[:commit] if e[0] == "fsync"}
    assert {tmp / "run.parquet", tmp / "curves.parquet", tmp / "moments.parquet", tmp} <= synced
    assert ("fsync", units) in events[commit:], "the rename into units/ is not synced"


# ---------------------------------------------------------------------------------------------------
# 2, 3. damaged units and tables: named by readers, quarantined or rebuilt, retrained


@pytest.mark.parametrize("name, damage", [
    ("run.parquet", _garbage), ("run.parquet", _deleted), ("curves.parquet", _footerless),
    ("curves.parquet", _deleted), ("moments.parquet", _empty),
], ids=["run-garbage", "run-missing", "curves-footerless", "curves-missing", "moments-empty"])
def test_a_damaged_unit_is_quarantined_named_and_trained_again(name, damage, cfg_path, outputs, tmp_path):
    st, cfg = _store(tmp_path, cfg_path, outputs, compact=False)
    rid = _rid(outputs[2])
    damage(st.units / rid / name)
    logs: list[str] = []
    s = _sweep_again(cfg, st, logs)
    assert s.ok and s.trained == 1 and s.already_done == 5, logs
    assert len(s.repaired) == 1 and f"units/{rid}/{name}" in s.repaired[0] and "quarantine" in s.repaired[0], logs
    (moved,) = (st.path / "quarantine").glob(f"{rid}-*")
    assert "units/" in (moved / "REASON.txt").read_text()
    _assert_complete(st.path, outputs)


def test_compaction_checks_each_unit_and_moves_a_damaged_one_aside(cfg_path, outputs, tmp_path):
    st, _ = _store(tmp_path, cfg_path, outputs, compact=False)
    rid = _rid(outputs[4])
    (st.units / rid / "curves.parquet").unlink()  # "no curves" must not be compacted as a result
    assert st.compact() == 5
    assert rid not in set(store.load(st.path).runs["run_id"])
    assert len(list((st.path / "quarantine").glob(f"{rid}-*"))) == 1
    assert not list(st.units.iterdir())


def test_status_does_not_count_a_damaged_unit_as_done_and_names_it(cfg_path, outputs, tmp_path, capsys):
    st, _ = _store(tmp_path, cfg_path, outputs, compact=False)
    rid = _rid(outputs[1])
    (st.units / rid / "run.parquet").unlink()
    d = status_dict(st.path)
    assert d["total"] == {"done": 5, "running": 0, "failed": 0, "missing": 1}
    assert [x["path"] for x in d["damaged"]] == [str(st.units / rid)]
    assert _cli("status", st.path) == 0
    text = capsys.readouterr().out
    assert f"units/{rid}" in text and "run.parquet" in text


def test_readers_name_a_damaged_unit_file(cfg_path, outputs, tmp_path, capsys):
    st, _ = _store(tmp_path, cfg_path, outputs, compact=False)
    bad = st.units / _rid(outputs[3]) / "curves.parquet"
    _garbage(bad)
    with pytest.raises(store.StoreError, match=str(bad)):
        store.load(st.path).curves  # noqa: B018 - read on access
    err = _one_line_exit_2(capsys, "report", st.path, "--out", tmp_path / "report")
    assert str(bad) in err and "verify" in err
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("table, damage", [
    ("runs", _garbage), ("runs", _footerless), ("curves", _empty), ("moments", _footerless),
])
def test_a_damaged_table_is_named_then_rebuilt_from_what_remains(table, damage, cfg_path, outputs, tmp_path,
                                                                 capsys):
    st, cfg = _store(tmp_path, cfg_path, outputs)
    bad = st.tables / f"{table}.parquet"
    damage(bad)
    err = _one_line_exit_2(capsys, "compare", st.path)  # readers name the file (not "<Buffer>")
    assert str(bad) in err and "<Buffer>" not in err
    if table == "runs":
        assert str(bad) in _one_line_exit_2(capsys, "status", st.path)
    else:  # status reads only which runs are stored
        assert _cli("status", st.path) == 0
    capsys.readouterr()
    logs: list[str] = []
    s = _sweep_again(cfg, st, logs)
    assert s.ok, logs
    assert any(f"tables/{table}.parquet" in line and "quarantine" in line for line in logs), logs
    assert len(list((st.path / "quarantine").glob(f"table-{table}-*/{table}.parquet"))) == 1
    if table == "runs":  # the runs are gone: they train again, and their other rows are not duplicated
        assert s.trained == 6
        _assert_complete(st.path, outputs)
    else:  # the runs stay; what the table held is reported lost
        assert s.trained == 0 and any("6 runs" in line for line in logs), logs
        res = store.load(st.path)
        assert len(res.runs) == 6 and len(getattr(res, table)) == 0


# ---------------------------------------------------------------------------------------------------
# 4. a store that lost sweep.json


@pytest.mark.parametrize("legacy", [False, True], ids=["identity-column", "legacy-rows"])
def test_a_store_that_lost_sweep_json_refuses_another_config_and_recovers_its_own(
        legacy, cfg_path, outputs, tmp_path, capsys):
    st, cfg = _store(tmp_path, cfg_path, outputs)
    if legacy:  # written before runs carried the sweep's identity: judged by their run_ids
        runs_file = st.tables / "runs.parquet"
        runs = pd.read_parquet(runs_file)
        runs.drop(columns=[c for c in ("sweep_identity",) if c in runs]).to_parquet(runs_file)
    (st.path / "sweep.json").unlink()
    before = sorted(p.relative_to(st.path) for p in st.path.rglob("*"))
    err = _one_line_exit_2(capsys, "sweep", cfg_path, "--out", st.path, "--set", "train.lr=0.2", "--workers", 1)
    assert "sweep.json" in err and "another config" in err
    assert sorted(p.relative_to(st.path) for p in st.path.rglob("*")) == before  # nothing written
    # the original config is recognised by its stored runs: sweep.json comes back, nothing retrains
    logs: list[str] = []
    s = _sweep_again(cfg, st, logs)
    assert s.ok and s.trained == 0 and s.already_done == 6
    meta = json.loads((st.path / "sweep.json").read_text())
    assert meta["identity_hash"] == config.stable_hash(cfg.identity()) and meta["config"]["seeds"] == [0]
    assert any("sweep.json" in line and "recovered" in line for line in logs), logs


def test_new_runs_carry_the_identity_of_their_sweep(cfg_path, outputs, tmp_path):
    st, cfg = _store(tmp_path, cfg_path, outputs, n=2)
    runs = store.load(st.path).runs
    assert set(runs["sweep_identity"]) == {config.stable_hash(cfg.identity())}


# ---------------------------------------------------------------------------------------------------
# 5. bnstats verify


def test_verify_passes_a_clean_store(cfg_path, outputs, tmp_path, capsys):
    st, _ = _store(tmp_path, cfg_path, outputs, n=4)
    st.write(outputs[4])  # a committed, not yet compacted unit is fine
    assert _cli("verify", st.path) == 0
    out = capsys.readouterr().out
    assert "ok" in out.lower() and str(st.path) in out


def test_verify_passes_the_shipped_reference_store_without_writing(tmp_path, monkeypatch, capsys):
    # runs stored before they carried sweep_identity: every run_id must be a run of sweep.json's config
    copy = tmp_path / "ref"
    shutil.copytree(REPO / "data" / "reference" / "placement-mnist1d", copy)

    def read_only(self, what="compaction"):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self.path / "compact.lock"))

    monkeypatch.setattr(store.Store, "_lock", read_only)
    assert _cli("verify", copy) == 0
    assert "ok: 540 runs" in capsys.readouterr().out
    assert sorted(p.name for p in copy.iterdir()) == ["sweep.json", "tables"]
    with pytest.raises(OSError, match="Read-only"):
        store.verify(copy, repair=True)


def test_verify_lists_every_broken_invariant_and_repair_fixes_them(cfg_path, outputs, tmp_path, capsys):
    st, cfg = _store(tmp_path, cfg_path, outputs, n=4)
    for o in outputs[4:]:
        st.write(o)
    broken_unit = st.units / _rid(outputs[5])
    (broken_unit / "curves.parquet").unlink()
    runs_file, curves_file = st.tables / "runs.parquet", st.tables / "curves.parquet"
    runs = pd.read_parquet(runs_file)
    pd.concat([runs, runs.iloc[[0]]]).to_parquet(runs_file)  # a run stored twice
    curves = pd.read_parquet(curves_file)
    orphan = curves.iloc[[0]].assign(run_id="0123456789abcdef")
    pd.concat([curves, orphan]).to_parquet(curves_file)  # rows of a run that is not in runs
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = st.path / "tmp" / f"{_rid(outputs[0])}~{socket.gethostname()}~{dead.pid}~abc"
    leftover.mkdir()
    (leftover / "run.parquet").write_bytes(b"half")

    assert _cli("verify", st.path) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    problems = "\n".join(lines)
    assert f"units/{_rid(outputs[5])}" in problems and "curves.parquet" in problems
    assert "tables/runs.parquet" in problems and "twice" in problems
    assert "tables/curves.parquet" in problems and "0123456789abcdef" in problems
    assert f"tmp/{leftover.name}" in problems
    assert len(lines) >= 4

    assert _cli("verify", st.path, "--repair") == 0
    capsys.readouterr()
    assert _cli("verify", st.path) == 0
    assert not leftover.exists() and not broken_unit.exists()
    assert len(list((st.path / "quarantine").glob(f"{_rid(outputs[5])}-*"))) == 1
    res = store.load(st.path)
    assert res.runs["run_id"].is_unique and "0123456789abcdef" not in set(res.curves["run_id"])
    s = _sweep_again(cfg, st, [])  # the quarantined unit's run trains again
    assert s.ok and s.trained == 1
    _assert_complete(st.path, outputs)


def test_verify_names_a_missing_sweep_json_and_a_damaged_table(cfg_path, outputs, tmp_path, capsys):
    st, _ = _store(tmp_path, cfg_path, outputs, n=2)
    (st.path / "sweep.json").unlink()
    _footerless(st.tables / "moments.parquet")
    assert _cli("verify", st.path) == 1
    out = capsys.readouterr().out
    assert "sweep.json" in out and "tables/moments.parquet" in out


def test_verify_flags_runs_of_another_config(cfg_path, outputs, tmp_path, capsys):
    st, _ = _store(tmp_path, cfg_path, outputs, n=3)
    runs_file = st.tables / "runs.parquet"
    runs = pd.read_parquet(runs_file)
    runs.loc[0, "sweep_identity"] = "ffffffffffffffff"
    runs.to_parquet(runs_file)
    assert _cli("verify", st.path) == 1
    out = capsys.readouterr().out
    assert runs.loc[0, "run_id"] in out and "another config" in out
    assert _cli("verify", st.path, "--repair") == 0
    assert len(store.load(st.path).runs) == 2


# ---------------------------------------------------------------------------------------------------
# 6. no orphans


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(p.name))
    return kids


def _descendants(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
def test_kill_9_of_the_launcher_takes_its_fork_server_and_workers_along(cfg_path, tmp_path):
    out = tmp_path / "sw"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    log = tmp_path / "sweep.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "bnstats.cli", "sweep", str(cfg_path), "--out", str(out),
                                 "--workers", "2", "--seeds", "4", "--set", "train.epochs=3"],
                                env=env, stdout=subprocess.DEVNULL, stderr=fh, start_new_session=True)
    family: list[int] = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # until both workers hold a run
            pids = set()
            for c in (out / "claims").glob("*.json") if (out / "claims").is_dir() else []:
                try:
                    pids.add(json.loads(c.read_text())["pid"])
                except (OSError, ValueError, KeyError):
                    pass
            if len(pids - {proc.pid}) >= 2:
                break
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        family = _descendants(proc.pid)
        assert len(family) >= 3, (family, log.read_text())  # fork server and two workers (and a tracker)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 5
        while time.time() < deadline and any(store._pid_alive(p) for p in family):
            time.sleep(0.05)
        alive = [p for p in family if store._pid_alive(p)]
        assert not alive, f"{len(alive)} of the launcher's {len(family)} descendants outlived it"
    finally:
        for p in [proc.pid, *family]:
            try:
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        proc.wait()


def test_without_pdeathsig_the_watchdog_still_kills_a_worker_whose_launcher_died(tmp_path):
    # the portable fallback alone (macOS has no prctl): a "launcher" whose "worker" watches its pid
    worker = ("import sys, time; from bnstats import launch\n"
              "launch._die_with_parent = lambda: False\n"
              "launch._exit_with_launcher(int(sys.argv[1])); print('watching', flush=True); time.sleep(120)")
    launcher = ("import os, subprocess, sys, time\n"
                f"w = subprocess.Popen([sys.executable, '-c', {worker!r}, str(os.getpid())])\n"
                "print(w.pid, flush=True); time.sleep(120)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", launcher], stdout=subprocess.PIPE, text=True, env=env)
    worker_pid = int(proc.stdout.readline())
    try:
        assert proc.stdout.readline().strip() == "watching"  # the worker's line, through the same pipe
        os.kill(proc.pid, signal.SIGKILL)  # not reaped yet: a zombie, which counts as gone
        t0 = time.time()
        while time.time() - t0 < 5 and store._pid_alive(worker_pid):
            time.sleep(0.02)
        assert not store._pid_alive(worker_pid), "the worker outlived its launcher"
    finally:
        for pid in (worker_pid, proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        proc.stdout.close()


# ---------------------------------------------------------------------------------------------------
# 9. bad input: exit 2, one line, nothing written


def _toml(tmp_path, data_root, **kw) -> Path:
    p = tmp_path / "cfg.toml"
    p.write_text(tiny_toml(data_root, seeds=1, **kw))
    return p


def test_a_corrupt_mnist1d_cache_is_named_before_anything_is_written(tmp_path, capsys):
    root = tmp_path / "cache"
    root.mkdir()
    (root / "mnist1d.npz").write_bytes(b"PK\x03\x04 truncated zip")
    out = tmp_path / "out"
    err = _one_line_exit_2(capsys, "sweep", _toml(tmp_path, root), "--out", out)
    assert str(root / "mnist1d.npz") in err and not out.exists()


def test_a_corrupt_idx_file_is_named_before_anything_is_written(tmp_path, capsys):
    from tests.test_datasets import write_idx_dataset

    root = tmp_path / "data"
    write_idx_dataset(root / "mnist")
    bad = root / "mnist" / "train-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-100])
    cfg = _toml(tmp_path, root)
    cfg.write_text(cfg.read_text().replace('dataset = "mnist1d"', 'dataset = "mnist"'))
    out = tmp_path / "out"
    err = _one_line_exit_2(capsys, "sweep", cfg, "--out", out)
    assert str(bad) in err and "truncated" in err and not out.exists()


@pytest.mark.parametrize("args, words", [
    (["--workers", "-1"], ["--workers", "-1"]),
    (["--set", "train.batch_size=5000"], ["train.batch_size", "5000", "4000"]),
    (["--set", "grid.batch_size=[128, 5000]"], ["grid.batch_size", "5000", "arch="]),
    (["--set", "model.kernel_size=43"], ["model", "arch='cnn'", "kernel"]),
], ids=["workers", "batch-size", "batch-size-grid", "kernel"])
def test_bad_values_found_by_the_preflight_exit_2_before_anything_is_written(args, words, tmp_path, data_root,
                                                                              capsys):
    out = tmp_path / "out"
    err = _one_line_exit_2(capsys, "sweep", _toml(tmp_path, data_root), "--out", out, *args)
    for w in words:
        assert w in err, err
    assert not out.exists()


def test_the_preflight_builds_every_arm_once_and_leaves_the_global_rng_alone(cfg_path, tmp_path, monkeypatch):
    import torch

    from bnstats import models

    built, real = [], models.create
    monkeypatch.setattr(models, "create", lambda cfg, *a: built.append(cfg) or real(cfg, *a))
    state = torch.random.get_rng_state()
    sweep.preflight(config.load(cfg_path, seeds=3), tmp_path / "out")
    assert torch.equal(torch.random.get_rng_state(), state)  # default inits drew from a forked generator
    assert len(built) == 6 and len(set(built)) == 6  # 2 archs x 3 placements, seeds do not matter
    assert not (tmp_path / "out").exists()


def test_a_user_model_factory_that_fails_on_the_inputs_exits_2_naming_the_arm(tmp_path, data_root, capsys,
                                                                              monkeypatch):
    (tmp_path / "faulty_zoo.py").write_text(
        "import torch\n"
        "def net(in_shape, num_classes, placement):  # written for 7 inputs, given MNIST-1D's 40\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(7, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    err = _one_line_exit_2(capsys, "sweep", _toml(tmp_path, data_root), "--out", out,
                           "--set", "grid.arch=['faulty_zoo:net']")
    assert "arch='faulty_zoo:net'" in err and "(1, 40)" in err and "RuntimeError" in err and not out.exists()


def test_out_pointing_at_a_file_exits_2(tmp_path, data_root, capsys):
    f = tmp_path / "a-file"
    f.write_text("mine")
    err = _one_line_exit_2(capsys, "sweep", _toml(tmp_path, data_root), "--out", f)
    assert "--out" in err and str(f) in err and f.read_text() == "mine"


def test_a_read_only_out_exits_2(tmp_path, data_root, capsys, monkeypatch):
    # root may write anywhere, so the read-only filesystem is simulated where bnstats first writes
    parent = tmp_path / "ro"
    parent.mkdir()
    out = parent / "sw"
    real_mkdir, real_access = pathlib.Path.mkdir, os.access

    def mkdir(self, *a, **kw):
        if str(self).startswith(str(parent)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p).startswith(str(parent))
                        else real_access(p, mode, **kw))
    err = _one_line_exit_2(capsys, "sweep", _toml(tmp_path, data_root), "--out", out)
    assert "--out" in err and "writable" in err and not out.exists()


def test_a_read_only_store_directory_exits_2_when_opened(cfg_path, tmp_path, monkeypatch):
    out = tmp_path / "sw"
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self, *a, **kw):
        if str(self).startswith(str(out)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    with pytest.raises(config.ConfigError, match="--out: .* not writable"):
        store.Store.open(out, config.load(cfg_path))


def test_a_huge_seed_count_is_refused_at_once(cfg_path, tmp_path, capsys):
    out = tmp_path / "out"
    t0 = time.perf_counter()
    err = _one_line_exit_2(capsys, "sweep", cfg_path, "--out", out, "--seeds", 100000)
    assert time.perf_counter() - t0 < 5.0
    assert "--seeds" in err and "600000 runs" in err.replace(",", "") and not out.exists()


def test_compare_on_a_non_numeric_metric_and_report_on_an_empty_store_exit_2(cfg_path, outputs, tmp_path,
                                                                             capsys):
    st, _ = _store(tmp_path, cfg_path, outputs, n=2)
    err = _one_line_exit_2(capsys, "compare", st.path, "--metric", "arch")
    assert "--metric" in err and "test_acc" in err
    empty = store.Store.open(tmp_path / "empty", config.load(cfg_path))
    report_out = tmp_path / "report"
    err = _one_line_exit_2(capsys, "report", empty.path, "--out", report_out)
    assert "no finished runs" in err and not report_out.exists()


def test_status_piped_into_a_closed_reader_prints_no_broken_pipe(cfg_path, outputs, tmp_path):
    st, _ = _store(tmp_path, cfg_path, outputs, n=2)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # `bnstats status DIR | head -0`: the reader is gone before the first byte is written
    r, w = os.pipe()
    os.close(r)
    proc = subprocess.run([sys.executable, "-m", "bnstats.cli", "status", str(st.path)], stdout=w,
                          stderr=subprocess.PIPE, text=True, env=env, timeout=60)
    os.close(w)
    assert "BrokenPipe" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 128 + signal.SIGPIPE


# ---------------------------------------------------------------------------------------------------
# 10. waiting on the lock; temporary files of failed writes


def test_a_compaction_waiting_on_another_process_says_so(cfg_path, outputs, tmp_path, monkeypatch):
    st, _ = _store(tmp_path, cfg_path, outputs, n=1, compact=False)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from bnstats.store import Store\n"
         f"with Store({str(st.path)!r})._lock():\n    print('locked', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setattr(store, "LOCK_WAIT_LOG_S", 0.2)
        logs: list[str] = []
        st.log = logs.append
        t = threading.Thread(target=st.compact)
        t.start()
        deadline = time.time() + 10
        while not logs and time.time() < deadline:
            time.sleep(0.02)
    finally:
        holder.communicate("", timeout=60)
    t.join(timeout=60)
    assert logs and "waiting" in logs[0] and f"pid {holder.pid}" in logs[0], logs
    assert len(store.load(st.path).runs) == 1


def _stray_files(path: Path) -> list[str]:
    """Files that are not part of the store's layout: temporary files left behind."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")
                  if p.is_file() and (p.name.startswith(".") or "tmp" in p.relative_to(path).parts))


def test_temporary_files_of_a_failed_write_are_cleaned(cfg_path, tmp_path, monkeypatch):
    cfg = config.load(cfg_path)
    st = store.Store.open(tmp_path / "sw", cfg)
    real = os.replace

    def full_disk(src, dst, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        st.record_failure(cfg.runs()[0], RuntimeError("boom"))
    monkeypatch.setattr(os, "replace", real)
    assert _stray_files(st.path) == []


def test_temporary_files_of_a_killed_writer_are_cleaned_by_the_next_run(cfg_path, tmp_path):
    cfg = config.load(cfg_path)
    st = store.Store.open(tmp_path / "sw", cfg)
    # a process killed between writing a temporary file and renaming it into place
    code = ("import os, sys; from bnstats import config, store\n"
            f"cfg = config.load({str(cfg_path)!r}); st = store.Store({str(st.path)!r})\n"
            "os.replace = lambda *a, **k: os._exit(9)\n"
            "st.record_failure(cfg.runs()[0], RuntimeError('boom'))\n")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert proc.returncode == 9
    assert _stray_files(st.path), "the killed writer left nothing: the test did not test anything"
    st = store.Store.open(st.path, cfg)
    assert _stray_files(st.path) == []
