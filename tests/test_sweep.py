import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnstats import cli, config, store, sweep
from bnstats.sweep import InlineExecutor, run_sweep

REPO = Path(__file__).resolve().parents[1]


def _cli(*args):
    return cli.main([str(a) for a in args])


def test_sweep_end_to_end_stores_every_run_once_with_its_provenance(tiny_config, tmp_path):
    out = tmp_path / "sw"
    assert _cli("sweep", tiny_config, "--out", out, "--workers", "1") == 0
    res = store.load(out)
    cfg = config.load(tiny_config)
    assert len(res.runs) == len(cfg.runs()) == 12
    assert res.runs["run_id"].is_unique
    assert set(res.runs["run_id"]) == {r.run_id for r in cfg.runs()}
    assert res.runs.attrs["factors"] == ["arch", "placement"]
    for col in ("seed", "arch", "placement", "activation", "dataset", "test_acc", "test_loss", "train_loss",
                "diverged", "init_hash", "order_hash", "wall_time_s", "device", "torch_version",
                "bnstats_version", "git_commit"):
        assert col in res.runs, col
    assert res.runs["test_acc"].between(0, 1).all()
    assert set(res.curves["run_id"]) == set(res.runs["run_id"])
    assert (res.curves.groupby("run_id").size() == 1).all()
    assert set(res.moments["source"]) == {"train", "probe"}
    # the pairing certificate: one init and one order hash per (seed, arch)
    assert (res.runs.groupby(["seed", "arch"])[["init_hash", "order_hash"]].nunique() == 1).all().all()
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["config"]["name"] == "tiny"


def test_rerunning_a_finished_sweep_trains_nothing_and_says_so(tiny_config, tmp_path, capsys):
    out = tmp_path / "sw"
    cfg = config.load(tiny_config)
    run_sweep(cfg, out, executor=InlineExecutor(), progress=False)
    capsys.readouterr()
    s = run_sweep(cfg, out, executor=InlineExecutor(), progress=False)
    assert s.trained == 0 and s.already_done == 12
    assert "nothing to train" in capsys.readouterr().err


def test_adding_seeds_trains_only_the_new_runs(tiny_config, tmp_path):
    out = tmp_path / "sw"
    run_sweep(config.load(tiny_config), out, executor=InlineExecutor(), progress=False)
    s = run_sweep(config.load(tiny_config, seeds=3), out, executor=InlineExecutor(), progress=False)
    assert s.trained == 6 and s.already_done == 12
    assert len(store.load(out).runs) == 18


def test_two_identical_sweeps_give_bitwise_identical_results(tiny_config, tmp_path):
    cfg = config.load(tiny_config)
    for d in ("a", "b"):
        run_sweep(cfg, tmp_path / d, executor=InlineExecutor(), progress=False)
    a, b = (store.load(tmp_path / d).runs.set_index("run_id").sort_index() for d in ("a", "b"))
    assert a["test_acc"].tolist() == b["test_acc"].tolist()
    assert a["test_loss"].tolist() == b["test_loss"].tolist()


@pytest.mark.parametrize("args, field", [
    (["--set", "grid.placement=['middle']"], "grid.placement"),
    (["--set", "train.foo=1"], "train.foo"),
    (["missing.toml"], "config"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(args, field, tmp_path, capsys):
    out = tmp_path / "never"
    assert _cli("sweep", *args, "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"error: {field}" in err
    assert not out.exists()


def test_output_directory_of_another_config_is_refused(tiny_config, tmp_path, capsys):
    out = tmp_path / "sw"
    run_sweep(config.load(tiny_config), out, executor=InlineExecutor(), progress=False)
    before = sorted(p.name for p in (out / "tables").iterdir())
    assert _cli("sweep", tiny_config, "--out", out, "--set", "train.lr=0.2") == 2
    err = capsys.readouterr().err
    assert "belongs to a different config" in err and "train.lr" in err
    assert sorted(p.name for p in (out / "tables").iterdir()) == before


def test_a_refused_directory_gains_nothing(tiny_config, tmp_path, capsys):
    """A store as shipped (sweep.json and tables, no working folders) refused for another config: the
    directory keeps exactly its files (no claims/, failed/, tmp/, units/ created before the refusal)."""
    out = tmp_path / "sw"
    run_sweep(config.load(tiny_config), out, executor=InlineExecutor(), progress=False)
    for d in ("claims", "failed", "tmp", "units"):
        shutil.rmtree(out / d)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert _cli("sweep", tiny_config, "--out", out, "--set", "train.lr=0.2") == 2
    assert "belongs to a different config" in capsys.readouterr().err
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def test_a_failing_run_is_recorded_others_complete_and_relaunch_retries(tiny_config, tmp_path, monkeypatch):
    import bnstats.train as train_mod

    real = train_mod.train_stack
    cfg = config.load(tiny_config)
    victim = cfg.runs()[3].run_id

    def flaky(runs, **kw):
        if any(run.run_id == victim for run in runs):
            raise RuntimeError("simulated CUDA error")
        return real(runs, **kw)

    monkeypatch.setattr(train_mod, "train_stack", flaky)
    out = tmp_path / "sw"
    s = run_sweep(cfg, out, executor=InlineExecutor(), progress=False)
    assert s.trained == 11 and [rid for rid, _ in s.failed] == [victim]
    failures = store.Store(out).failures()
    assert "simulated CUDA error" in failures[victim]["error"]
    assert "Traceback" in failures[victim]["traceback"]
    assert _cli("status", out) == 0
    monkeypatch.setattr(train_mod, "train_stack", real)
    s = run_sweep(cfg, out, executor=InlineExecutor(), progress=False)
    assert s.trained == 1 and not s.failed
    assert store.Store(out).failures() == {}
    assert len(store.load(out).runs) == 12


def test_status_counts_per_cell(tiny_config, tmp_path):
    from bnstats.status import status_frame

    out = tmp_path / "sw"
    cfg = config.load(tiny_config)
    run_sweep(config.load(tiny_config, seeds=1), out, executor=InlineExecutor(), progress=False)
    counts, failed = status_frame(out, config_path=str(tiny_config))
    assert len(counts) == 6 and counts["done"].sum() == 6 and counts["missing"].sum() == 6
    assert failed == {} and len(cfg.runs()) == 12


def _spawn_sweep(cfg_path, out, workers, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    log = open(out.parent / f"sweep-{time.monotonic_ns()}.log", "w")  # noqa: SIM115 - closed by caller
    proc = subprocess.Popen([sys.executable, "-m", "bnstats.cli", "sweep", str(cfg_path), "--out", str(out),
                             "--workers", str(workers), *map(str, args)], env=env, stdout=subprocess.DEVNULL,
                            stderr=log, start_new_session=True)
    log.close()  # the child holds its own copy
    proc.log_path = log.name
    return proc


def _log(proc):
    return Path(proc.log_path).read_text()


@pytest.mark.parametrize("workers", [1, 2])
def test_kill_9_mid_sweep_then_resume_stores_every_run_exactly_once(tiny_config, tmp_path, workers):
    args = ("--seeds", 3, "--set", "train.epochs=2")
    out = tmp_path / "sw"
    proc = _spawn_sweep(tiny_config, out, workers, *args)
    deadline = time.time() + 120
    while time.time() < deadline:
        units = out / "units"
        if units.is_dir() and len(list(units.iterdir())) >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers, mid-run
    proc.wait()
    n_before = len(store.Store(out).done_ids())
    assert 3 <= n_before < 18
    proc = _spawn_sweep(tiny_config, out, workers, *args)
    assert proc.wait(timeout=300) == 0, _log(proc)
    runs = store.load(out).runs
    assert len(runs) == 18 and runs["run_id"].is_unique
    cfg = config.load(tiny_config, seeds=3, overrides=["train.epochs=2"])
    assert set(runs["run_id"]) == {r.run_id for r in cfg.runs()}
    curves = store.load(out).curves
    assert len(curves) == 18 * 2 and not curves.duplicated(["run_id", "epoch"]).any()


def test_two_sweeps_at_once_on_one_directory_store_each_run_once(tiny_config, tmp_path):
    out = tmp_path / "sw"
    procs = [_spawn_sweep(tiny_config, out, 1) for _ in range(2)]  # both create the store
    for p in procs:
        assert p.wait(timeout=300) == 0, _log(p)
    res = store.load(out)
    assert len(res.runs) == 12 and res.runs["run_id"].is_unique
    assert not res.curves.duplicated(["run_id", "epoch"]).any()


def test_custom_executor_is_accepted(tiny_config, tmp_path):
    class CountingExecutor(InlineExecutor):
        n = 0

        def submit(self, fn, /, *args, **kwargs):
            CountingExecutor.n += 1
            return super().submit(fn, *args, **kwargs)

    cfg = config.load(tiny_config, overrides=["launcher.runs_per_task=5"])
    s = run_sweep(cfg, tmp_path / "sw", executor=CountingExecutor(), progress=False)
    assert s.trained == 12 and CountingExecutor.n == 3  # 12 runs packed 5 per task


def test_store_write_is_idempotent(tiny_config, tmp_path):
    from bnstats.train import train

    cfg = config.load(tiny_config)
    st = store.Store.open(tmp_path / "sw", cfg)
    out = train(cfg.runs()[0])
    assert st.write(out) is True
    assert st.write(out) is False
    st.compact()
    assert st.write(out) is False
    assert len(store.load(tmp_path / "sw").runs) == 1


def test_device_validation():
    with pytest.raises(ValueError, match="--device"):
        sweep.resolve_device("tpu")
    assert sweep.resolve_device("cpu") == "cpu"
    assert Path(sweep.git_commit().split("-")[0] or ".").name != ""


def test_stacked_sweep_stores_one_paired_row_per_run_equal_to_single_runs(tiny_config, tmp_path):
    # engine.stack = "on": one task per arm, all its seeds in one stacked model; the store cannot tell
    # but for the runtime columns, and the numbers equal a one-run-at-a-time sweep up to rounding
    single, stacked = tmp_path / "single", tmp_path / "stacked"
    cfg = config.load(tiny_config, seeds=3)
    run_sweep(cfg, single, executor=InlineExecutor(), progress=False, log=lambda m: None)
    on = config.load(tiny_config, seeds=3, overrides=["engine.stack=on"])
    tasks = sweep.pack(on.runs(), 1, store.Store.open(stacked, on), "cpu", "", stack=True)
    assert len(tasks) == 6 and all(t.stack and len(t.runs) == 3 for t in tasks)  # 6 arms x 3 seeds
    s = run_sweep(on, stacked, executor=InlineExecutor(), device="cpu", progress=False, log=lambda m: None)
    assert s.ok and s.trained == 18
    a, b = store.load(stacked).runs.set_index("run_id"), store.load(single).runs.set_index("run_id")
    assert sorted(a.index) == sorted(b.index) and a.index.is_unique
    assert set(a["engine"]) == {"stack"} and set(a["stack_size"]) == {3} and set(b["engine"]) == {"single"}
    assert set(a["precision"]) == {"fp32"} and not a["deterministic"].any() and not a["compiled"].any()
    b = b.loc[a.index]
    assert (a["init_hash"] == b["init_hash"]).all() and (a["order_hash"] == b["order_hash"]).all()
    for col in ("test_acc", "test_loss", "train_loss"):
        assert (a[col] - b[col]).abs().max() < 1e-4, col
    assert len(store.load(stacked).moments) == len(store.load(single).moments)


def test_stacked_sweep_resumes_with_the_seeds_left_and_respects_max_stack(tiny_config, tmp_path):
    out = tmp_path / "sw"
    on = config.load(tiny_config, seeds=2, overrides=["engine.stack=on"])
    run_sweep(on, out, executor=InlineExecutor(), device="cpu", progress=False, log=lambda m: None)
    more = config.load(tiny_config, seeds=5, overrides=["engine.stack=on", "engine.max_stack=2"])
    s = run_sweep(more, out, executor=InlineExecutor(), device="cpu", progress=False, log=lambda m: None)
    assert s.ok and s.trained == 18 and s.already_done == 12  # seeds 2, 3, 4 of each of the 6 arms
    runs = store.load(out).runs
    assert len(runs) == 30 and runs["run_id"].is_unique
    assert sorted(runs[runs["seed"] >= 2]["stack_size"].tolist()) == [1] * 6 + [2] * 12  # stacks of 2 + 1
    assert set(runs[runs["seed"] < 2]["stack_size"]) == {2}


def test_a_stack_that_raises_records_each_of_its_runs_as_failed(tiny_config, tmp_path, monkeypatch):
    import bnstats.train as train_mod

    def boom(runs, **kw):
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(train_mod, "train_stack", boom)
    on = config.load(tiny_config, seeds=2, overrides=["engine.stack=on", "grid.arch=[\"mlp\"]"])
    s = run_sweep(on, tmp_path / "sw", executor=InlineExecutor(), device="cpu", progress=False,
                  log=lambda m: None)
    assert len(s.failed) == 6 and all("out of memory, say" in e for _, e in s.failed)
    assert not s.ok and len(list((tmp_path / "sw" / "failed").glob("*.json"))) == 6
    assert not list((tmp_path / "sw" / "claims").glob("*.json"))  # claims released


def test_engine_options_are_validated_and_bf16_binds_the_store(tiny_config, tmp_path):
    with pytest.raises(config.ConfigError, match="engine.stack: expected one of 'auto', 'on', 'off', got 'yes'"):
        config.load(tiny_config, overrides=["engine.stack=yes"])
    with pytest.raises(config.ConfigError, match="engine.precision"):
        config.load(tiny_config, overrides=["engine.precision=fp16"])
    with pytest.raises(config.ConfigError, match="engine.max_stack"):
        config.load(tiny_config, overrides=["engine.max_stack=-1"])
    base = config.load(tiny_config)
    assert "engine" not in base.identity()  # fp32 sweeps keep the identity they had before [engine]
    assert config.load(tiny_config, overrides=["engine.stack=on", "engine.compile=true"]).identity() == base.identity()
    bf = config.load(tiny_config, overrides=["engine.precision=bf16"])
    assert bf.identity()["engine"] == {"precision": "bf16"}
    with pytest.raises(config.ConfigError, match="engine.precision: 'bf16' is autocast on CUDA"):
        run_sweep(bf, tmp_path / "sw", executor=InlineExecutor(), device="cpu", progress=False)
    assert sweep.stacks(base, "cuda") and not sweep.stacks(base, "cpu")  # auto: stacked on GPUs only
    assert sweep.stacks(config.load(tiny_config, overrides=["engine.stack=on"]), "cpu")
    assert not sweep.stacks(config.load(tiny_config, overrides=["engine.stack=off"]), "cuda")


def test_a_stack_whose_store_fails_midway_keeps_the_runs_it_stored(tiny_config, tmp_path, monkeypatch):
    real, calls = store.Store.write, []

    def flaky_write(self, output):
        calls.append(output.run["run_id"])
        if len(calls) == 2:
            raise OSError("disk full, say")
        return real(self, output)

    monkeypatch.setattr(store.Store, "write", flaky_write)
    on = config.load(tiny_config, seeds=3, overrides=["engine.stack=on", "grid.arch=[\"mlp\"]",
                                                      "grid.placement=[\"before\"]"])
    s = run_sweep(on, tmp_path / "sw", executor=InlineExecutor(), device="cpu", progress=False,
                  log=lambda m: None)
    ids = {r.run_id for r in on.runs()}
    assert len(ids) == 3 and s.trained == 1 and len(calls) == 2  # the second write raised
    assert {rid for rid, _ in s.failed} == ids - {calls[0]}  # the stored run is not reported failed
    assert {p.stem for p in (tmp_path / "sw" / "failed").glob("*.json")} == ids - {calls[0]}
    assert set(store.load(tmp_path / "sw").runs["run_id"]) == {calls[0]}
