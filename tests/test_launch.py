"""Launchers (local pool, submitit) and the store's behaviour under concurrent writers and readers."""

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from bnstats import cli, config, launch, store, sweep
from bnstats.sweep import InlineExecutor, Task, execute_task, run_sweep

REPO = Path(__file__).resolve().parents[1]


def _spawn_sweep(cfg_path, out, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    log_path = out.parent / f"sweep-{time.monotonic_ns()}.log"
    with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "bnstats.cli", "sweep", str(cfg_path), "--out", str(out),
                                 *map(str, args)], env=env, stdout=subprocess.DEVNULL, stderr=log,
                                start_new_session=True)
    proc.log_path = log_path
    return proc


def _expected_ids(cfg):
    return {r.run_id for r in cfg.runs()}


# ---------------------------------------------------------------------------------------------------
# launchers


def test_kill_9_of_one_worker_is_reported_and_the_relaunch_completes(tiny_config, tmp_path):
    args = ("--workers", 2, "--seeds", 3)
    out = tmp_path / "sw"
    proc = _spawn_sweep(tiny_config, out, *args)
    victim, deadline = None, time.time() + 120
    while victim is None and time.time() < deadline:  # a worker (not the launcher) holding a run
        units = out / "units"
        if units.is_dir() and len(list(units.iterdir())) >= 2:
            for claim in (out / "claims").glob("*.json"):
                try:
                    pid = json.loads(claim.read_text())["pid"]
                except (OSError, ValueError, KeyError):
                    continue
                if pid != proc.pid:
                    victim = pid
                    break
        time.sleep(0.02)
    assert victim is not None, Path(proc.log_path).read_text()
    os.kill(victim, signal.SIGKILL)
    assert proc.wait(timeout=120) == 1, Path(proc.log_path).read_text()
    log = Path(proc.log_path).read_text()
    assert "a worker process died unexpectedly" in log and "run the same command again" in log, log
    assert "Traceback" not in log, log
    n_before = len(store.Store(out).done_ids())
    assert 2 <= n_before < 18

    cfg = config.load(tiny_config, seeds=3)  # relaunch (in this process: cheaper than another pool)
    s = run_sweep(cfg, out, executor=InlineExecutor(), progress=False, log=lambda m: None)
    assert s.ok and s.trained == 18 - n_before
    res = store.load(out)
    assert len(res.runs) == 18 and res.runs["run_id"].is_unique
    assert set(res.runs["run_id"]) == _expected_ids(cfg)
    assert len(res.curves) == 18 and not res.curves.duplicated(["run_id", "epoch"]).any()
    assert not list((out / "tmp").iterdir()) and not list((out / "units").iterdir())


def test_submitit_local_executor_runs_the_sweep_in_subprocesses(tiny_config, tmp_path):
    pytest.importorskip("submitit")
    cfg = config.load(tiny_config, seeds=1, overrides=[
        'launcher.kind="submitit"', 'launcher.cluster="local"', "launcher.runs_per_task=3",
        "launcher.cpus_per_task=1", "launcher.time_min=5"])
    out = tmp_path / "sw"
    lines: list[str] = []
    s = run_sweep(cfg, out, progress=False, log=lines.append)
    assert s.ok and s.trained == 6 and not s.errors, lines
    assert any("submitit/local" in line for line in lines) and any("6/6 runs" in line for line in lines)
    res = store.load(out)
    assert len(res.runs) == 6 and res.runs["run_id"].is_unique and set(res.runs["run_id"]) == _expected_ids(cfg)
    assert len(list((out / "submitit").glob("*_result.pkl"))) == 2  # 6 runs, 3 per task: 2 processes
    assert set(res.runs["hostname"]) == {socket.gethostname()}


def test_submitit_launcher_packs_runs_and_sets_threads_from_cpus_per_task(tiny_config, tmp_path, monkeypatch):
    made, tasks = {}, []

    class FakeSubmitit(InlineExecutor):  # stands in for submitit.AutoExecutor
        cluster, folder = "fake", "logs"

        def submit(self, fn, /, *args, **kwargs):
            tasks.append(args[0])
            return super().submit(fn, *args, **kwargs)

    def fake_executor(lc, folder, *, name):
        made.update(partition=lc.partition, folder=str(folder), name=name)
        return FakeSubmitit()

    monkeypatch.setattr(sweep, "submitit_executor", fake_executor)
    threads = []
    real = sweep.torch.set_num_threads
    monkeypatch.setattr(sweep.torch, "set_num_threads", lambda n: (threads.append(n), real(1)))
    cfg = config.load(tiny_config, overrides=[
        'launcher.kind="submitit"', "launcher.runs_per_task=4", "launcher.cpus_per_task=3",
        'launcher.partition="gpu"'])
    lines: list[str] = []
    s = run_sweep(cfg, tmp_path / "sw", progress=False, log=lines.append)
    assert s.ok and s.trained == 12
    assert made == {"partition": "gpu", "folder": str(tmp_path / "sw" / "submitit"), "name": "bnstats-tiny"}
    assert [len(t.runs) for t in tasks] == [4, 4, 4] and {t.threads for t in tasks} == {3}
    assert {t.device for t in tasks} == {"auto"}  # resolved on the machine that trains
    assert set(threads) == {3}
    assert any("submitit/fake partition gpu" in line for line in lines)


def test_submitit_needs_slurm_or_an_explicit_cluster(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(launch.shutil, "which", lambda name: None)
    cfg = config.load(tiny_config, overrides=['launcher.kind="submitit"'])
    with pytest.raises(config.ConfigError, match='launcher.cluster.*sbatch.*"local"'):
        run_sweep(cfg, tmp_path / "sw", progress=False, log=lambda m: None)
    cfg = config.load(tiny_config, overrides=['launcher.kind="submitit"', 'launcher.cluster="debug"'])
    with pytest.raises(config.ConfigError, match="launcher.gpus_per_task"):
        run_sweep(cfg, tmp_path / "sw2", device="cuda", progress=False, log=lambda m: None)


def test_cli_launcher_shortcut_and_failure_exit_code(tiny_config, tmp_path, monkeypatch):
    seen = {}

    def fake_run_sweep(cfg, out, **kw):
        seen["kind"], seen["cluster"] = cfg.launcher.kind, cfg.launcher.cluster
        return sweep.SweepSummary(planned=1, already_done=0, missing=1, errors=["a worker died"])

    monkeypatch.setattr(sweep, "run_sweep", fake_run_sweep)
    rc = cli.main(["sweep", str(tiny_config), "--out", str(tmp_path / "o"), "--launcher", "submitit",
                   "--set", 'launcher.cluster="local"'])
    assert rc == 1 and seen == {"kind": "submitit", "cluster": "local"}


def test_task_and_execute_task_pickle_by_reference(tiny_config):
    cfg = config.load(tiny_config)
    task = Task("/tmp/x", (cfg.runs()[0].to_dict(),), "auto", "abc", 2)
    assert pickle.loads(pickle.dumps(task)) == task
    assert pickle.loads(pickle.dumps(execute_task)) is execute_task
    cloudpickle = pytest.importorskip("cloudpickle")
    assert len(cloudpickle.dumps(execute_task)) < 200  # by reference: the job imports bnstats itself


class _Job:
    """A submitit-like job: done() and result(), not a concurrent.futures.Future."""

    def __init__(self, value, ready_at):
        self.value, self.ready_at = value, ready_at

    def done(self):
        return time.monotonic() >= self.ready_at

    def result(self):
        while not self.done():
            time.sleep(0.01)
        return self.value


def test_as_completed_polls_future_likes_in_completion_order():
    now = time.monotonic()
    jobs = [_Job("slow", now + 0.3), _Job("fast", now + 0.05)]
    assert [j.result() for j in launch.as_completed(jobs, poll_s=0.01)] == ["fast", "slow"]


def test_custom_executor_with_job_objects_gets_progress(tiny_config, tmp_path):
    class JobExecutor:  # e.g. a wrapper around a cluster API: submit() returns job objects
        def submit(self, fn, arg):
            return _Job(fn(arg), time.monotonic())

    lines: list[str] = []
    cfg = config.load(tiny_config, overrides=["launcher.runs_per_task=12"])
    s = run_sweep(cfg, tmp_path / "sw", executor=JobExecutor(), progress=False, log=lines.append)
    assert s.ok and s.trained == 12 and any("12/12 runs" in line for line in lines)


def test_init_worker_spreads_workers_over_gpus(monkeypatch):
    import multiprocessing as mp

    picked = []
    monkeypatch.setattr(launch.torch.cuda, "set_device", picked.append)
    monkeypatch.setattr(launch.torch, "set_num_threads", lambda n: None)
    counter = mp.get_context("spawn").Value("i", 0)
    for _ in range(5):
        launch._init_worker(1, counter, 2, "avx2")
    assert picked == [0, 1, 0, 1, 0]


def test_the_parent_builds_the_dataset_cache_before_workers_start(tiny_config, tmp_path, monkeypatch):
    from bnstats import data

    loaded = []
    real = data.load
    monkeypatch.setattr(data, "load", lambda name, root: loaded.append((name, str(root))) or real(name, root))

    class Recorder(InlineExecutor):
        def submit(self, fn, /, *args, **kwargs):
            assert loaded, "tasks submitted before the dataset cache exists"
            return super().submit(fn, *args, **kwargs)

    cfg = config.load(tiny_config)
    run_sweep(cfg, tmp_path / "sw", executor=Recorder(), progress=False, log=lambda m: None)
    assert loaded[0] == ("mnist1d", cfg.data.root)


# ---------------------------------------------------------------------------------------------------
# store: concurrent writers and readers


def _trained(tiny_config, n=3):
    from bnstats.train import train

    cfg = config.load(tiny_config)
    return cfg, [train(r) for r in cfg.runs()[:n]]


def test_a_duplicate_unit_landing_after_compaction_is_dropped(tiny_config, tmp_path):
    cfg, outs = _trained(tiny_config, 1)
    st = store.Store.open(tmp_path / "sw", cfg)
    assert st.write(outs[0])
    st.compact()
    # a second trainer of the same run that passed the done-check just before the compaction
    (st.units / outs[0].run["run_id"]).mkdir()
    for table in ("runs", "curves", "moments"):
        rows = [outs[0].run] if table == "runs" else getattr(outs[0], table)
        pd.DataFrame(rows).to_parquet(st.units / outs[0].run["run_id"] / store._UNIT_FILE[table])
    res = store.load(st.path)
    assert len(res.runs) == 1 and not res.curves.duplicated(["run_id", "epoch"]).any()
    assert st.compact() == 0 and not list(st.units.iterdir())
    res = store.load(st.path)
    assert len(res.runs) == 1 and len(res.curves) == len(outs[0].curves)


def test_compaction_killed_between_tables_loses_and_duplicates_nothing(tiny_config, tmp_path, monkeypatch):
    cfg, outs = _trained(tiny_config, 2)
    st = store.Store.open(tmp_path / "sw", cfg)
    st.write(outs[0])
    real_replace, n = os.replace, []

    def dying_replace(src, dst):
        if str(dst).endswith(".parquet") and n:
            raise KeyboardInterrupt  # killed after the first table was replaced
        n.append(dst)
        return real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        st.compact()
    monkeypatch.setattr(store.os, "replace", real_replace)
    st.write(outs[1])
    assert st.compact() == 2
    res = store.load(st.path)
    assert len(res.runs) == 2
    assert len(res.curves) == len(outs[0].curves) + len(outs[1].curves)
    assert len(res.moments) == len(outs[0].moments) + len(outs[1].moments)
    assert not list(st.tables.glob(".*"))


def test_load_during_compaction_sees_every_run_whole(tiny_config, tmp_path):
    cfg, outs = _trained(tiny_config, 6)
    st = store.Store.open(tmp_path / "sw", cfg)
    stop, errors, sizes = threading.Event(), [], []

    def reader():
        while not stop.is_set():
            try:
                res = store.load(st.path)
                n = len(res.runs)
                assert set(res.curves["run_id"]) == set(res.runs["run_id"])
                assert len(res.moments) == sum(len(o.moments) for o in outs if o.run["run_id"] in
                                               set(res.runs["run_id"]))
                sizes.append(n)
            except Exception as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for o in outs:
            st.write(o)
            st.compact()
    finally:
        stop.set()
        t.join()
    assert not errors, errors[0]
    assert sizes == sorted(sizes) and len(store.load(st.path).runs) == 6


def test_open_cleans_tmp_left_by_dead_writers_only(tiny_config, tmp_path):
    cfg = config.load(tiny_config)
    st = store.Store.open(tmp_path / "sw", cfg)
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = st.path / "tmp" / f"abc~{host}~{os.getpid()}~1"
    gone = st.path / "tmp" / f"abc~{host}~{dead.pid}~2"
    other_fresh = st.path / "tmp" / "abc~elsewhere~1~3"
    other_old = st.path / "tmp" / "abc~elsewhere~1~4"
    for p in (mine, gone, other_fresh, other_old):
        p.mkdir()
        (p / "run.parquet").write_bytes(b"partial")
    old = time.time() - store.TMP_STALE_S - 60
    os.utime(other_old, (old, old))
    store.Store.open(st.path, cfg)
    assert sorted(p.name for p in (st.path / "tmp").iterdir()) == sorted([mine.name, other_fresh.name])


def test_a_stale_claim_is_taken_over_by_exactly_one_process(tiny_config, tmp_path):
    cfg = config.load(tiny_config)
    st = store.Store.open(tmp_path / "sw", cfg)
    rid = cfg.runs()[0].run_id
    claim = st.claims / f"{rid}.json"
    claim.write_text(json.dumps({"host": "elsewhere", "pid": 1, "time": 0}))
    old = time.time() - store.STALE_CLAIM_S - 60
    os.utime(claim, (old, old))
    # each process stays alive until all have tried: a winner that exited would leave a claim of a dead
    # pid, which a late starter on this host rightly takes over
    code = ("import sys; from bnstats.store import Store; "
            f"print(Store({str(st.path)!r}).claim({rid!r}), flush=True); sys.stdin.read()")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env) for _ in range(4)]
    won = [p.stdout.readline().strip() for p in procs]
    for p in procs:
        p.communicate(timeout=60)
    assert sorted(won) == ["False", "False", "False", "True"]


def test_release_leaves_a_claim_that_another_process_took_over(tiny_config, tmp_path):
    cfg = config.load(tiny_config)
    st = store.Store.open(tmp_path / "sw", cfg)
    rid = cfg.runs()[0].run_id
    assert st.claim(rid)
    (st.claims / f"{rid}.json").write_text(json.dumps({"host": "elsewhere", "pid": 7, "time": 0}))
    st.release(rid)
    assert (st.claims / f"{rid}.json").exists()


def test_status_json_and_text(tiny_config, tmp_path, capsys, monkeypatch):
    import bnstats.train as train_mod

    cfg = config.load(tiny_config)
    victim = cfg.runs()[2].run_id
    real = train_mod.train_stack
    monkeypatch.setattr(train_mod, "train_stack", lambda runs, **kw: (_ for _ in ()).throw(RuntimeError("boom"))
                        if runs[0].run_id == victim else real(runs, **kw))
    out = tmp_path / "sw"
    run_sweep(config.load(tiny_config, seeds=1), out, executor=InlineExecutor(), progress=False,
              log=lambda m: None)
    st = store.Store(out)
    running = cfg.runs()[7].run_id
    assert st.claim(running)
    assert cli.main(["status", str(out), "--config", str(tiny_config), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["total"] == {"done": 5, "running": 1, "failed": 1, "missing": 5}
    assert len(d["cells"]) == 6 and {"arch", "placement", "done"} <= set(d["cells"][0])
    assert [f["run_id"] for f in d["failed"]] == [victim] and "RuntimeError: boom" in d["failed"][0]["error"]
    assert "Traceback" in d["failed"][0]["traceback"]
    assert d["running"][0]["run_id"] == running and d["running"][0]["pid"] == os.getpid()
    assert cli.main(["status", str(out), "--config", str(tiny_config)]) == 0
    text = capsys.readouterr().out
    assert "5 done, 1 running, 1 failed, 5 missing" in text and "RuntimeError: boom" in text
    assert "(this host): 1" in text


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_zombie_worker_holds_no_claim():
    # a killed worker not yet reaped answers kill(pid, 0); its claims must still count as stale
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while time.time() < deadline and Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z":
        time.sleep(0.01)  # exited, not reaped: a zombie
    try:
        assert store._pid_alive(os.getpid()) and not store._pid_alive(child.pid)
    finally:
        child.wait()
    assert not store._pid_alive(child.pid)
