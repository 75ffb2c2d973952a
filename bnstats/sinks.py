"""Logging sinks: every finished run also goes to TensorBoard, MLflow or W&B (``[log]``), off by default.

The store stays the source of truth. A sink is fed from a run's stored rows (its ``RunOutput``: the run
row and the curves rows, one per epoch) in the worker process, right after :meth:`Store.write` has
committed the run (:func:`bnstats.sweep.execute_task`), never from inside the training loop. Hence:

- A sink that fails (a folder it cannot write, a tracking server that does not answer) cannot lose a
  run: the run is stored already. The worker stops feeding that sink for the rest of its task and
  returns the error with the run's status; the launcher reports each sink's first error once.
- A missing package is refused before anything trains (:func:`check`: a ``ConfigError`` naming the
  extra to install, so ``bnstats sweep`` exits with status 2 and writes nothing).
- A run is logged once, by the process that stored it: a run stored by another writer first (its
  ``store.write`` returns False) is not logged again; a run stored but not logged (its sink failed, or
  the process died between the two) is not logged by later launches either (they skip stored runs).

What one bnstats run becomes in each sink:

=============== ============================================================================================
``tensorboard`` ``<tensorboard_dir>/<run_id>/events.out.tfevents.*`` (default ``<sweep dir>/tensorboard``),
                written with ``torch.utils.tensorboard.SummaryWriter``: one scalar per curves column and
                epoch (tag = the column, step = the epoch) and an HParams entry (the run's factors, seed and
                run_id; its final metrics as ``final/<metric>``).
``mlflow``      one MLflow run in the experiment ``mlflow_experiment`` (default: the sweep's name): params =
                the run's config flattened (``model.arch``, ``train.lr``, ...), metrics = the curves columns
                (step = the epoch), tags ``run_id``, ``seed``, one per factor of the arm, ``sweep``, ``diverged``.
                ``"default"``: MLflow's own kind of local store, ``sqlite:///<sweep dir>/mlflow.db`` with
                artifacts in ``<sweep dir>/mlruns`` (MLflow 3.17 refuses file stores unless
                ``MLFLOW_ALLOW_FILE_STORE=true``); a path ending in ``.db``: a SQLite store there; another path:
                a file store there (``mlruns/``); anything with a scheme (``http://``, ``sqlite:///``,
                ``databricks``, ...): used as it is.
``wandb``       one offline W&B run under ``<wandb_dir>/wandb/offline-run-*`` (default: the sweep dir),
                project ``wandb_project`` (default: the sweep's name): config = the flattened run config with
                ``run_id``, history = the curves columns (step = the epoch), summary = the run row's final
                metrics, group = the arm, tags ``factor=level``. ``wandb sync`` uploads them later.
=============== ============================================================================================

:func:`sink_specs` turns a sweep's ``[log]`` section into plain, picklable specs (paths resolved, so a
worker in another directory writes where the launcher meant); :func:`open_sinks` builds the sinks of a
task from them; :func:`feed` sends one stored run to each.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError, LogConfig, RunConfig

EXTRA = "log"
INSTALL = f"pip install 'bnstats[{EXTRA}]'"
#: The module each sink needs, and the distribution that provides it (named in the error).
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"),
            "wandb": ("wandb", "wandb")}
#: Curves columns that are not metrics: the step axis and the key.
NOT_METRICS = ("run_id", "epoch", "step")


class MissingSinkPackage(ConfigError):
    """A ``[log]`` sink is on but its package is not installed (exit 2, before anything trains)."""


def check(log: LogConfig) -> None:
    """Refuse sinks whose package is missing, naming the key, the package and the extra to install.

    Imports each package (so a broken install is caught here too, not in every worker).
    """
    for name in log.enabled:
        module, dist = PACKAGES[name]
        try:
            with _quiet():
                importlib.import_module(module)
        except ImportError as e:
            raise MissingSinkPackage(
                f"log.{name}: needs the package {dist!r}, which is not installed ({type(e).__name__}: {e}); "
                f"install it with {INSTALL}") from None


def sink_specs(log: LogConfig, sweep_dir: str | Path, sweep_name: str) -> dict[str, dict[str, Any]]:
    """``[log]`` -> ``{sink: {option: value}}``: plain data for :class:`~bnstats.sweep.Task`, paths absolute."""
    root = Path(sweep_dir).resolve()
    specs: dict[str, dict[str, Any]] = {}
    if log.tensorboard:
        folder = Path(log.tensorboard_dir).resolve() if log.tensorboard_dir else root / "tensorboard"
        specs["tensorboard"] = {"dir": str(folder)}
    if log.mlflow:
        specs["mlflow"] = {"uri": mlflow_uri(log.mlflow, root), "experiment": log.mlflow_experiment or sweep_name,
                           # MLflow's default artifact root is ./mlruns of the working directory: keep it in the sweep
                           "artifacts": str(root / "mlruns") if log.mlflow == "default" else ""}
    if log.wandb:
        folder = Path(log.wandb_dir).resolve() if log.wandb_dir else root
        specs["wandb"] = {"mode": log.wandb, "dir": str(folder), "project": log.wandb_project or sweep_name}
    return specs


def mlflow_uri(value: str, sweep_dir: str | Path) -> str:
    """``[log] mlflow`` -> a tracking URI (see the module docstring)."""
    if value == "default":
        return f"sqlite:///{Path(sweep_dir).resolve() / 'mlflow.db'}"
    if "://" in value or value.split(":", 1)[0] in ("databricks", "sqlite", "file"):
        return value
    path = Path(value).expanduser().resolve()
    return f"sqlite:///{path}" if path.suffix == ".db" else path.as_uri()


def where(specs: dict[str, dict[str, Any]]) -> list[str]:
    """One line per sink: where its runs go and how to look at them (for the launcher's log)."""
    out = []
    for name, s in specs.items():
        if name == "tensorboard":
            out.append(f"tensorboard: event files in {s['dir']}/<run_id>/ (view: tensorboard --logdir {s['dir']})")
        elif name == "mlflow":
            out.append(f"mlflow: experiment {s['experiment']!r} at {s['uri']} "
                       f"(view: mlflow ui --backend-store-uri {s['uri']})")
        elif name == "wandb":
            out.append(f"wandb: {s['mode']} runs of project {s['project']!r} in {s['dir']}/wandb/ "
                       f"(upload: wandb sync {s['dir']}/wandb/offline-run-*)")
    return out


def prepare(specs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """In the launcher, before any worker starts: what one-time set-up a sink needs (MLflow: create the
    store's tables and the experiment once, rather than in several workers at once, which races).

    Returns ``{sink: error}`` for the sinks that could not be set up; the caller reports them once and
    leaves those sinks out of this launch (the runs still train and are stored).
    """
    errors = {}
    if "mlflow" in specs:
        try:
            with _quiet():
                _MlflowSink(**specs["mlflow"])
        except Exception as e:  # any failure of a third-party client: reported, never fatal to the sweep
            errors["mlflow"] = _one_line(e)
    return errors


# ---------------------------------------------------------------------------------------------------
# Feeding one stored run


@dataclass(frozen=True)
class Logged:
    """What :func:`feed` did with one run: the sinks that took it, and ``{sink: error}`` for those that failed."""

    ok: tuple[str, ...]
    errors: dict[str, str]


def open_sinks(specs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The sinks of a task (built lazily: a sink's client is made when its first run arrives)."""
    return {name: _Lazy(name, spec) for name, spec in specs.items()}


def feed(sinks: dict[str, Any], output: Any, run: RunConfig) -> Logged:
    """Send one stored run (``output``: its ``RunOutput``) to every sink still open.

    A sink that raises is closed for the rest of the task (``sinks`` loses it) and its error returned:
    one failing run per task reports it, the next runs of the task do not retry a dead server.
    """
    ok, errors = [], {}
    for name in list(sinks):
        try:
            with _quiet():
                sinks[name].log(output, run)
            ok.append(name)
        except Exception as e:  # a third-party client's failure of any kind: the run is stored already
            errors[name] = _one_line(e)
            sinks.pop(name)
    return Logged(tuple(ok), errors)


class _Lazy:
    """Builds its sink on first use, so a task whose runs are all skipped starts no client."""

    def __init__(self, name: str, spec: dict[str, Any]):
        self.name, self.spec, self.sink = name, spec, None

    def log(self, output: Any, run: RunConfig) -> None:
        if self.sink is None:
            self.sink = {"tensorboard": _TensorBoardSink, "mlflow": _MlflowSink, "wandb": _WandbSink}[self.name](
                **self.spec)
        self.sink.log(output, run)


# ---------------------------------------------------------------------------------------------------
# What each sink receives


def flat_config(run: RunConfig) -> dict[str, Any]:
    """The run's config, flattened: ``{"dataset": ..., "seed": 3, "model.arch": "mlp", "train.lr": 0.05, ...}``.

    Everything that determines the run's numbers (:meth:`RunConfig.identity`), plus ``data.root``.
    """
    out: dict[str, Any] = {}

    def walk(d: dict[str, Any], prefix: str) -> None:
        for k in sorted(d):
            if isinstance(d[k], dict):
                walk(d[k], f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = d[k]

    d = run.to_dict()
    walk({k: v for k, v in d.items() if k not in ("sweep", "factors")}, "")
    return out


def arm_label(run: RunConfig) -> str:
    """The arm and cell as one readable name: ``mlp-after-relu`` (the factor levels in grid order)."""
    return "-".join(str(v) for v in run.factor_values().values()) or run.dataset


def metric_rows(output: Any) -> Iterator[tuple[int, dict[str, float]]]:
    """``(epoch, {metric: value})`` per curves row: every numeric column but the key and the step axes."""
    for row in output.curves:
        values = {k: float(v) for k, v in row.items()
                  if k not in NOT_METRICS and isinstance(v, int | float) and not isinstance(v, bool)}
        yield int(row["epoch"]), values


def final_metrics(output: Any) -> dict[str, float]:
    """The run row's final metrics (NaN for a diverged run; kept, so the sink shows the divergence)."""
    return {k: float(output.run[k]) for k in ("test_acc", "test_loss", "train_loss", "train_acc")
            if isinstance(output.run.get(k), int | float) and not isinstance(output.run.get(k), bool)}


class _TensorBoardSink:
    def __init__(self, dir: str):  # noqa: A002 - the spec's key
        from torch.utils.tensorboard import SummaryWriter

        self.root = Path(dir)
        self.writer_class = SummaryWriter

    def log(self, output: Any, run: RunConfig) -> None:
        run_id = output.run["run_id"]
        folder = self.root / run_id
        with self.writer_class(log_dir=str(folder)) as w:
            for epoch, values in metric_rows(output):
                for k, v in values.items():
                    w.add_scalar(k, v, global_step=epoch)
            hparams = {"run_id": run_id, "seed": run.seed, **{k: _scalar(v) for k, v in run.factor_values().items()}}
            finals = {f"final/{k}": v for k, v in final_metrics(output).items() if math.isfinite(v)}
            # run_name="." keeps the HParams entry in the run's own folder (the default is a timestamped subfolder)
            w.add_hparams(hparams, finals, run_name=".")


class _MlflowSink:
    # MLflow's request limits: at most 1000 metrics, 100 params and 100 tags per log_batch call
    MAX_METRICS, MAX_PARAMS = 1000, 100

    def __init__(self, uri: str, experiment: str, artifacts: str = ""):
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            try:
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=Path(artifacts).as_uri() if artifacts else None)
            except MlflowException:  # another worker created it meanwhile
                self.experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
        else:
            self.experiment_id = found.experiment_id

    def log(self, output: Any, run: RunConfig) -> None:
        from mlflow.entities import Metric, Param

        row = output.run
        now_ms = int(time.time() * 1000)
        start_ms = now_ms - int(1000 * float(row.get("wall_time_s") or 0.0))
        tags = {"run_id": row["run_id"], "seed": str(run.seed), "sweep": run.sweep,
                "diverged": str(bool(row.get("diverged", False))).lower(),
                **{k: str(v) for k, v in run.factor_values().items()}}
        mr = self.client.create_run(self.experiment_id, start_time=start_ms, tags=tags,
                                    run_name=f"{arm_label(run)}-seed{run.seed}")
        rid = mr.info.run_id
        params = [Param(k, str(v)) for k, v in flat_config(run).items()]
        metrics = [Metric(k, v, now_ms, epoch) for epoch, values in metric_rows(output) for k, v in values.items()]
        for i in range(0, len(params), self.MAX_PARAMS):
            self.client.log_batch(rid, params=params[i:i + self.MAX_PARAMS])
        for i in range(0, len(metrics), self.MAX_METRICS):
            self.client.log_batch(rid, metrics=metrics[i:i + self.MAX_METRICS])
        self.client.set_terminated(rid, status="FINISHED", end_time=now_ms)


class _WandbSink:
    def __init__(self, mode: str, dir: str, project: str):  # noqa: A002 - the spec's key
        import wandb

        self.wandb, self.mode, self.dir, self.project = wandb, mode, Path(dir), project
        self.dir.mkdir(parents=True, exist_ok=True)

    def log(self, output: Any, run: RunConfig) -> None:
        wandb = self.wandb
        settings = wandb.Settings(console="off", silent=True, x_disable_stats=True, disable_git=True,
                                  save_code=False, x_disable_machine_info=True)
        w = wandb.init(mode=self.mode, dir=str(self.dir), project=self.project, name=f"{arm_label(run)}-seed{run.seed}",
                       group=arm_label(run), job_type="bnstats-run",
                       config={"run_id": output.run["run_id"], **flat_config(run)},
                       tags=[f"{k}={v}" for k, v in run.factor_values().items()], reinit="create_new",
                       settings=settings)
        try:
            for epoch, values in metric_rows(output):
                w.log(values, step=epoch)
            w.summary.update({f"final/{k}": v for k, v in final_metrics(output).items()})
        finally:
            w.finish()


def _scalar(v: Any) -> Any:
    return v if isinstance(v, bool | int | float | str) else str(v)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Third-party deprecation notices (SQLAlchemy inside MLflow, protobuf inside TensorBoard) that no user
    of bnstats can act on: not printed once per worker into the sweep's log."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield
