"""Logging sinks ([log]): each stored run read back by the sink's own library, and the store stays complete
when a sink fails.

One tiny sweep (2 placements x 1 seed, MLP, 2 epochs) with all three sinks on is trained once per
module (~20 s here, most of it MLflow creating its SQLite tables and W&B starting its service); TensorBoard
is read back with TensorBoard's EventAccumulator, MLflow with ``mlflow.search_runs`` and ``get_metric_history``,
W&B's offline runs with wandb's own reader (``wandb-core leet inspect``).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bnstats import cli, config, sinks, store
from bnstats.sweep import InlineExecutor, run_sweep
from tests.conftest import tiny_toml

LOG_ALL = """
[log]
tensorboard = true
mlflow = "default"
wandb = "offline"
"""
# MLflow's SQLite store is SQLAlchemy underneath, whose deprecation notices MLflow cannot silence for us
MLFLOW_NOISE = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def logged(tmp_path_factory, data_root):
    """A sweep with TensorBoard, MLflow (default store) and W&B offline on; (store dir, Results, summary)."""
    root = tmp_path_factory.mktemp("sinks")
    cfg_path = root / "tiny.toml"
    cfg_path.write_text(_mlp_only(tiny_toml(data_root, name="sinks-tiny", seeds=1, epochs=2, extra=LOG_ALL)))
    out = root / "sweep"
    lines: list[str] = []
    summary = run_sweep(config.load(cfg_path), out, executor=InlineExecutor(), progress=False, log=lines.append)
    return out, store.load(out), summary, lines


def _mlp_only(text: str) -> str:
    """tiny_toml's grid cut to mlp x {before, after}: two runs per seed."""
    return (text.replace('arch = ["mlp", "cnn"]', 'arch = ["mlp"]')
            .replace('placement = ["before", "after", "none"]', 'placement = ["before", "after"]'))


def _curves_of(res, run_id):
    cv = res.curves[res.curves["run_id"] == run_id].sort_values("epoch")
    return cv


def test_every_sink_took_every_run_and_said_where(logged):
    out, res, summary, lines = logged
    assert summary.ok and summary.trained == 2 and summary.sink_errors == {}
    text = "\n".join(lines)
    assert f"tensorboard --logdir {out.resolve() / 'tensorboard'}" in text
    assert f"sqlite:///{out.resolve() / 'mlflow.db'}" in text and "wandb sync" in text


def test_tensorboard_event_files_per_run_read_back_with_tensorboards_reader(logged):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    out, res, _, _ = logged
    folders = sorted(p.name for p in (out / "tensorboard").iterdir())
    assert folders == sorted(res.runs["run_id"])
    for run in res.runs.to_dict("records"):
        ea = EventAccumulator(str(out / "tensorboard" / run["run_id"]), size_guidance={"scalars": 0})
        ea.Reload()
        cv = _curves_of(res, run["run_id"])
        for col in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
            events = sorted(ea.Scalars(col), key=lambda e: e.step)
            assert [e.step for e in events] == cv["epoch"].tolist()
            # event files hold float32
            assert [e.value for e in events] == pytest.approx(cv[col].tolist(), rel=1e-6)
        (final,) = ea.Scalars("final/test_acc")
        assert final.value == pytest.approx(run["test_acc"], rel=1e-6)
        start = plugin_data_pb2.HParamsPluginData.FromString(
            ea.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
        hp = {k: v.string_value or v.number_value for k, v in start.hparams.items()}
        assert hp == {"run_id": run["run_id"], "arch": run["arch"], "placement": run["placement"],
                      "seed": float(run["seed"])}


@MLFLOW_NOISE
def test_mlflow_one_run_per_bnstats_run_read_back_with_search_runs(logged):
    mlflow = pytest.importorskip("mlflow")
    out, res, _, _ = logged
    uri = f"sqlite:///{out.resolve() / 'mlflow.db'}"
    old = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        found = mlflow.search_runs(experiment_names=["sinks-tiny"])
    finally:
        mlflow.set_tracking_uri(old)
    assert len(found) == len(res.runs) and set(found["status"]) == {"FINISHED"}
    by_id = found.set_index("tags.run_id")
    assert set(by_id.index) == set(res.runs["run_id"])
    client = mlflow.MlflowClient(tracking_uri=uri)
    for run in res.runs.to_dict("records"):
        m = by_id.loc[run["run_id"]]
        assert m["tags.seed"] == str(run["seed"])
        assert m["tags.arch"] == run["arch"] and m["tags.placement"] == run["placement"]
        assert m["params.train.lr"] == "0.05" and m["params.model.arch"] == run["arch"]
        assert m["params.model.width"] == "16" and m["params.seed"] == str(run["seed"])
        assert m["metrics.test_acc"] == run["test_acc"]  # the last epoch's value, stored as a double
        hist = sorted(client.get_metric_history(m["run_id"], "train_loss"), key=lambda x: x.step)
        cv = _curves_of(res, run["run_id"])
        assert [h.step for h in hist] == cv["epoch"].tolist()
        assert [h.value for h in hist] == cv["train_loss"].tolist()
    assert all(str(out.resolve() / "mlruns") in u for u in found["artifact_uri"])


def _leet(log_file: Path, *extra: str) -> str:
    """wandb's own reader of a .wandb run log (the wandb-core binary that `wandb leet inspect` runs)."""
    from wandb.util import get_core_path

    proc = subprocess.run([get_core_path(), "leet", "inspect", "--no-observability", "--json", *extra,
                           "--run-file", str(log_file), str(log_file.parent.parent)],
                          capture_output=True, text=True, timeout=120, check=True)
    return proc.stdout


def test_wandb_offline_runs_read_back_with_wandbs_reader(logged):
    pytest.importorskip("wandb")
    out, res, _, _ = logged
    run_dirs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == len(res.runs)
    seen = {}
    for d in run_dirs:
        (log_file,) = d.glob("run-*.wandb")
        info = json.loads(_leet(log_file, "--summary"))
        seen[info["config"]["run_id"]] = (info, log_file)
    assert set(seen) == set(res.runs["run_id"])
    for run in res.runs.to_dict("records"):
        info, log_file = seen[run["run_id"]]
        assert info["state"] == "finished" and info["project"] == "sinks-tiny"
        assert info["config"]["model.arch"] == run["arch"] and info["config"]["seed"] == run["seed"]
        assert set(info["tags"]) == {f"arch={run['arch']}", f"placement={run['placement']}"}
        assert info["summary"]["final/test_acc"] == run["test_acc"]
        history = [json.loads(line)["history"]["item"] for line in _leet(log_file).splitlines()
                   if '"history"' in line and json.loads(line).get("type") == "history"]
        cv = _curves_of(res, run["run_id"])
        assert [h["_step"] for h in history] == cv["epoch"].tolist()
        assert [h["test_loss"] for h in history] == cv["test_loss"].tolist()


def test_a_failing_sink_loses_no_run_and_is_reported_once(tmp_path, data_root):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the event folders should go")
    cfg_path = tmp_path / "tiny.toml"
    cfg_path.write_text(_mlp_only(tiny_toml(data_root, name="sink-fails", seeds=1, epochs=1,
                                            extra=f'[log]\ntensorboard = true\ntensorboard_dir = "{blocker}"\n')))
    lines: list[str] = []
    cfg = config.load(cfg_path)
    summary = run_sweep(cfg, tmp_path / "sw", executor=InlineExecutor(), progress=False, log=lines.append)
    assert summary.ok and summary.trained == 2  # every run stored
    assert set(store.load(tmp_path / "sw").runs["run_id"]) == {r.run_id for r in cfg.runs()}
    assert list(summary.sink_errors) == ["tensorboard"]
    reported = [line for line in lines if line.startswith("log.tensorboard:")]
    assert len(reported) == 1 and "the run is stored" in reported[0]
    assert "not logged to tensorboard" in lines[-1]


@MLFLOW_NOISE
def test_an_unreachable_mlflow_server_is_reported_once_and_the_runs_train(tmp_path, data_root, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own retry policy takes minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cfg_path = tmp_path / "tiny.toml"
    cfg_path.write_text(_mlp_only(tiny_toml(data_root, name="no-server", seeds=1, epochs=1,
                                            extra='[log]\nmlflow = "http://127.0.0.1:9"\n')))
    lines: list[str] = []
    summary = run_sweep(config.load(cfg_path), tmp_path / "sw", executor=InlineExecutor(), progress=False,
                        log=lines.append)
    assert summary.ok and summary.trained == 2 and list(summary.sink_errors) == ["mlflow"]
    assert sum(line.startswith("log.mlflow:") for line in lines) == 1
    assert len(store.load(tmp_path / "sw").runs) == 2


def test_a_missing_package_is_refused_before_anything_is_written(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    cfg_path = tmp_path / "tiny.toml"
    cfg_path.write_text(tiny_toml(data_root, name="no-wandb", extra='[log]\nwandb = "offline"\n'))
    out = tmp_path / "never"
    assert cli.main(["sweep", str(cfg_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "error: log.wandb:" in err and "'wandb'" in err and "pip install 'bnstats[log]'" in err
    assert not out.exists()


@pytest.mark.parametrize("override, message", [
    ('log.wandb="online"', "log.wandb: expected one of '', 'offline', got 'online'"),
    ("log.tensorboard=1", "log.tensorboard: expected true or false, got 1"),
    ("log.mlflow=true", "log.mlflow: expected a string, got True"),
    ("log.neptune=true", "log.neptune: unknown key; valid keys of [log] are: tensorboard, tensorboard_dir, mlflow"),
])
def test_log_section_is_validated_like_every_section(override, message):
    with pytest.raises(config.ConfigError) as e:
        config.load(overrides=[override])
    assert str(e.value).startswith(message)


def test_log_section_is_not_part_of_run_ids_or_the_directory_identity():
    plain = config.load()
    logged = config.load(overrides=["log.tensorboard=true", 'log.mlflow="default"'])
    assert [r.run_id for r in plain.runs()] == [r.run_id for r in logged.runs()]
    assert plain.identity() == logged.identity()
    assert logged.log.enabled == ("tensorboard", "mlflow")


def test_mlflow_uri_spellings(tmp_path):
    d = tmp_path / "sw"
    assert sinks.mlflow_uri("default", d) == f"sqlite:///{d.resolve()}/mlflow.db"
    assert sinks.mlflow_uri("http://mlflow.example:5000", d) == "http://mlflow.example:5000"
    assert sinks.mlflow_uri("sqlite:////x/y.db", d) == "sqlite:////x/y.db"
    assert sinks.mlflow_uri(str(tmp_path / "runs.db"), d) == f"sqlite:///{tmp_path.resolve()}/runs.db"
    assert sinks.mlflow_uri(str(tmp_path / "mlruns"), d) == (tmp_path / "mlruns").resolve().as_uri()


def test_flat_config_is_everything_that_determines_the_run():
    run = config.load().runs()[0]
    flat = sinks.flat_config(run)
    assert flat["model.arch"] == run.model.arch and flat["train.lr"] == run.train.lr
    assert flat["seed"] == run.seed and flat["dataset"] == run.dataset
    assert not any(isinstance(v, dict) for v in flat.values())
    ident = run.identity()
    want = {"dataset", "seed", *(f"{sec}.{k}" for sec in ("model", "train", "moments", "data") for k in ident[sec])}
    # everything that determines the numbers, and where the data lives (data.root) beside it
    assert want <= set(flat) and {k.split(".")[0] for k in set(flat) - want} == {"data"}
    assert "data.root" in flat
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in flat.values())
