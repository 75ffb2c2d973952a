"""Sweep and run configuration: frozen dataclasses, TOML loading with validation, grid expansion.

A sweep is the product of the ``[grid]`` lists times the seeds. Each element is a :class:`RunConfig`,
whose ``run_id`` is a stable hash of everything that determines its numbers (dataset, model, training,
moment probes, seed). Runtime choices (device, workers, launcher) are not part of a run's identity;
they are recorded beside its results instead.

Every key is validated here, in one place: an unknown key lists the valid ones, a bad value names
the allowed values and what was received (:class:`ConfigError`, a ``ValueError``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

ARCHS = ("mlp", "cnn", "vgg", "resnet")
PLACEMENTS = ("before", "after", "none")
ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu", "selu", "tanh", "sigmoid", "silu", "identity")
NORMS = ("batch", "layer", "group")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")
RESNET_ORDERS = ("post", "pre")
POOL_POSITIONS = ("after_norm", "before_norm")
DROPOUT_POSITIONS = ("block", "head")
SOURCES = ("train", "probe")
SITES = ("norm_in", "norm_out", "act_in", "act_out")


class ConfigError(ValueError):
    """A configuration value or key is not allowed; the message names the field."""


def _err(field_name: str, allowed: str, got: Any) -> ConfigError:
    return ConfigError(f"{field_name}: expected {allowed}, got {got!r}")


def _choice(field_name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise _err(field_name, "one of " + ", ".join(repr(a) for a in allowed), value)
    return value


def _number(field_name: str, value: Any, *, kind: type = float, low: float | None = None,
            high: float | None = None, low_open: bool = False) -> Any:
    ok_types = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        raise _err(field_name, "an integer" if kind is int else "a number", value)
    if low is not None and (value < low or (low_open and value == low)):
        raise _err(field_name, f"a number {'>' if low_open else '>='} {low}", value)
    if high is not None and value > high:
        raise _err(field_name, f"a number <= {high}", value)
    return kind(value)


def _bool(field_name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _err(field_name, "true or false", value)
    return value


# ---------------------------------------------------------------------------------------------------
# Sections. Defaults here are the documented defaults; README's config reference mirrors these comments.


@dataclass(frozen=True)
class DataConfig:
    root: str = "data/cache"     # where dataset files live (and where mnist1d is cached once generated)
    augment: bool = False        # random crop (with `crop_padding`) + horizontal flip; images only
    crop_padding: int = 4        # pixels of zero padding before the random crop
    flip: bool = True            # horizontal flip in the augmentation (images only)
    val_split: float = 0.0       # fraction of the training set held out for validation (fixed seed, stratified by class)

    def validate(self) -> DataConfig:
        if not isinstance(self.root, str):
            raise _err("data.root", "a path string", self.root)
        _number("data.val_split", self.val_split, low=0.0, high=0.9)
        _bool("data.augment", self.augment)
        _number("data.crop_padding", self.crop_padding, kind=int, low=0)
        _bool("data.flip", self.flip)
        return self


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "mlp"            # mlp | cnn | vgg | resnet | a model factory: "package.module:function" or "path/file.py:function"
    placement: str = "before"    # before: op -> norm -> act; after: op -> act -> norm; none: op(+bias) -> act
    activation: str = "relu"     # relu | leaky_relu | elu | gelu | selu | tanh | sigmoid | silu | identity
    norm: str = "batch"          # batch | layer | group (the norm placed by `placement`)
    width: int = 0               # hidden units (mlp) or channels of the first stage; 0 = the arch's default
    depth: int = 0               # hidden blocks (mlp), conv blocks (cnn, vgg), residual blocks (resnet); 0 = default
    kernel_size: int = 5         # conv kernel (cnn on 1-D data; 2-D models use 3)
    affine: bool = True          # learnable scale and shift in the norm
    pool: str = "after_norm"     # vgg/cnn-2d: max-pool after the whole block, or before the norm
    dropout: float = 0.0         # dropout rate (0 = off)
    dropout_position: str = "head"   # head: before the classifier; block: after every block
    resnet_order: str = "post"   # post: conv-norm-act (He 2015); pre: norm-act-conv (He 2016)
    place: str = "off"           # factories: "auto" rewrites the factory's model for `placement` (bnstats.nn.place)
    options: tuple[tuple[str, Any], ...] = ()  # factories: the other [model] keys, passed as keyword arguments

    @property
    def is_factory(self) -> bool:
        """Whether ``arch`` names a user's model factory (``module:function``) rather than a built-in arch."""
        return self.arch not in ARCHS

    def value(self, key: str) -> Any:
        """A key's value: a field, or for a factory one of its ``options``."""
        if self.is_factory and key not in ("arch", "placement", "place"):
            return dict(self.options).get(key)
        return getattr(self, key)

    def with_values(self, **values: Any) -> ModelConfig:
        """A copy with ``values`` set: fields, or for a factory its ``options`` (placement is a field)."""
        if not self.is_factory:
            return replace(self, **values)
        own = {k: v for k, v in values.items() if k in ("arch", "placement", "place")}
        opts = {**dict(self.options), **{k: v for k, v in values.items() if k not in own}}
        return replace(self, **own, options=tuple(sorted(opts.items())))

    def to_toml(self) -> dict[str, Any]:
        """The [model] section as a config file writes it (a factory's options as keys of their own)."""
        if self.is_factory:
            return {"arch": self.arch, "placement": self.placement, "place": self.place,
                    **{k: list(v) if isinstance(v, tuple) else v for k, v in self.options}}
        d = dataclasses.asdict(self)
        del d["options"]
        return d

    def validate(self) -> ModelConfig:
        if not (self.arch in ARCHS or _is_spec(self.arch)):
            raise _err("model.arch", "one of " + ", ".join(map(repr, ARCHS)) + " or a model factory "
                       "'package.module:function' / 'path/to/file.py:function'", self.arch)
        _choice("model.place", self.place, ("off", "auto"))
        if self.place == "auto" and not self.is_factory:
            raise ConfigError("model.place: 'auto' rewrites a model factory's model; the built-in arch "
                              f"{self.arch!r} places its norms itself (use place = \"off\")")
        if self.options and not self.is_factory:
            raise ConfigError(f"model.{self.options[0][0]}: unknown key; valid keys of [model] are: "
                              f"{', '.join(_keys(ModelConfig)[:-2])}")
        _choice("model.placement", self.placement, PLACEMENTS)
        _choice("model.activation", self.activation, ACTIVATIONS)
        _choice("model.norm", self.norm, NORMS)
        _number("model.width", self.width, kind=int, low=0)
        _number("model.depth", self.depth, kind=int, low=0)
        _number("model.kernel_size", self.kernel_size, kind=int, low=1)
        _bool("model.affine", self.affine)
        _choice("model.pool", self.pool, POOL_POSITIONS)
        _number("model.dropout", self.dropout, low=0.0, high=0.99)
        _choice("model.dropout_position", self.dropout_position, DROPOUT_POSITIONS)
        _choice("model.resnet_order", self.resnet_order, RESNET_ORDERS)
        return self


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20             # passes over the training set
    batch_size: int = 128        # examples per step; the last partial batch of an epoch is dropped
    optimizer: str = "sgd"       # sgd | adam | adamw
    lr: float = 0.05             # peak learning rate
    momentum: float = 0.9        # sgd momentum (adam: beta1)
    nesterov: bool = False       # sgd only
    weight_decay: float = 0.0    # L2 (sgd, adam) or decoupled (adamw)
    schedule: str = "constant"   # constant | cosine (to 0 over all steps) | step (x0.1 at 50% and 75%)
    warmup_epochs: float = 0.0   # linear warm-up from 0, in epochs
    label_smoothing: float = 0.0
    eval_batch_size: int = 1000  # evaluation batch (no effect on results, only on memory)

    def validate(self) -> TrainConfig:
        _number("train.epochs", self.epochs, kind=int, low=1)
        _number("train.batch_size", self.batch_size, kind=int, low=2)
        _choice("train.optimizer", self.optimizer, OPTIMIZERS)
        _number("train.lr", self.lr, low=0.0, low_open=True)
        _number("train.momentum", self.momentum, low=0.0, high=0.999999)
        _bool("train.nesterov", self.nesterov)
        _number("train.weight_decay", self.weight_decay, low=0.0)
        _choice("train.schedule", self.schedule, SCHEDULES)
        _number("train.warmup_epochs", self.warmup_epochs, low=0.0)
        _number("train.label_smoothing", self.label_smoothing, low=0.0, high=0.99)
        _number("train.eval_batch_size", self.eval_batch_size, kind=int, low=1)
        return self


@dataclass(frozen=True)
class MomentsConfig:
    enabled: bool = True         # record activation moments at every block's sites
    every: int = 10              # training-batch moments every k steps (0 = never; probes still run)
    probe_size: int = 512        # fixed probe batch: the first `probe_size` test inputs, eval mode, each epoch
    per_channel: bool = False    # also store one row per channel (large)

    def validate(self) -> MomentsConfig:
        _bool("moments.enabled", self.enabled)
        _number("moments.every", self.every, kind=int, low=0)
        _number("moments.probe_size", self.probe_size, kind=int, low=1)
        _bool("moments.per_channel", self.per_channel)
        return self


@dataclass(frozen=True)
class LauncherConfig:
    kind: str = "local"          # local (worker processes) | submitit (Slurm, or submitit's local executor)
    workers: int = 0             # local: worker processes (0 = one per CPU core, or one per visible GPU)
    runs_per_task: int = 1       # runs packed into one submitted task (amortises start-up on clusters)
    folder: str = ""             # submitit log folder ("" = <sweep dir>/submitit)
    partition: str = ""          # Slurm partition ("" = cluster default)
    time_min: int = 60           # Slurm time limit per task, minutes
    gpus_per_task: int = 0
    cpus_per_task: int = 1       # Slurm CPUs per task, and the torch threads each task uses
    mem_gb: float = 4.0
    array_parallelism: int = 64  # Slurm array tasks running at once
    cluster: str = ""            # submitit cluster: "" = auto (Slurm if present), "local", "debug", "slurm"

    def validate(self) -> LauncherConfig:
        _choice("launcher.kind", self.kind, ("local", "submitit"))
        _number("launcher.workers", self.workers, kind=int, low=0)
        _number("launcher.runs_per_task", self.runs_per_task, kind=int, low=1)
        for name in ("folder", "partition", "cluster"):
            if not isinstance(getattr(self, name), str):
                raise _err(f"launcher.{name}", "a string", getattr(self, name))
        _choice("launcher.cluster", self.cluster, ("", "local", "debug", "slurm"))
        _number("launcher.time_min", self.time_min, kind=int, low=1)
        _number("launcher.gpus_per_task", self.gpus_per_task, kind=int, low=0)
        _number("launcher.cpus_per_task", self.cpus_per_task, kind=int, low=1)
        _number("launcher.mem_gb", self.mem_gb, low=0.0, low_open=True)
        _number("launcher.array_parallelism", self.array_parallelism, kind=int, low=1)
        return self


@dataclass(frozen=True)
class EngineConfig:
    """How runs are trained (not what they compute): recorded in every run row, not in ``run_id``."""

    stack: str = "auto"          # auto: the seeds of an arm train as one stacked model on GPUs, one by one on CPUs | on | off
    max_stack: int = 0           # seeds per stacked model (0 = all the arm's seeds still to train); lower it if GPU memory runs out
    precision: str = "fp32"      # fp32 (float32, TF32 off) | bf16 (CUDA autocast, norm statistics in fp32)
    deterministic: bool = False  # deterministic algorithms, cuBLAS workspace config, no cuDNN benchmark
    compile: bool = False        # torch.compile the stacked model (CUDA): ~10-30 s per arm, +30-40% images/s on CNNs
    cpu_isa: str = "avx2"        # avx2: CPU kernels pinned to AVX2, the same bits on any x86-64 CPU | native: the CPU's best (bnstats/cpu.py)

    def validate(self) -> EngineConfig:
        _choice("engine.stack", self.stack, ("auto", "on", "off"))
        _number("engine.max_stack", self.max_stack, kind=int, low=0)
        _choice("engine.precision", self.precision, ("fp32", "bf16"))
        _bool("engine.deterministic", self.deterministic)
        _bool("engine.compile", self.compile)
        _choice("engine.cpu_isa", self.cpu_isa, ("avx2", "native"))
        return self


@dataclass(frozen=True)
class LogConfig:
    """Where each finished run is also logged (bnstats/sinks.py): off by default, never part of ``run_id``
    or of the output directory's identity. The store stays the source of truth; a sink is fed from the
    stored rows of each run, right after the run is stored."""

    tensorboard: bool = False    # event files per run, written with torch.utils.tensorboard.SummaryWriter
    tensorboard_dir: str = ""    # "" = <sweep dir>/tensorboard; one folder per run: <tensorboard_dir>/<run_id>
    mlflow: str = ""             # "" = off | "default" (sqlite:///<sweep dir>/mlflow.db) | a tracking URI | a path
    mlflow_experiment: str = ""  # "" = the sweep's name
    wandb: str = ""              # "" = off | "offline" (W&B offline runs, `wandb sync` uploads them later)
    wandb_dir: str = ""          # "" = the sweep dir (W&B writes <wandb_dir>/wandb/offline-run-*)
    wandb_project: str = ""      # "" = the sweep's name

    def validate(self) -> LogConfig:
        _bool("log.tensorboard", self.tensorboard)
        for name in ("tensorboard_dir", "mlflow", "mlflow_experiment", "wandb_dir", "wandb_project"):
            if not isinstance(getattr(self, name), str):
                raise _err(f"log.{name}", "a string", getattr(self, name))
        _choice("log.wandb", self.wandb, ("", "offline"))
        return self

    @property
    def enabled(self) -> tuple[str, ...]:
        """The sinks switched on, in the order they are fed."""
        return tuple(n for n, on in (("tensorboard", self.tensorboard), ("mlflow", bool(self.mlflow)),
                                     ("wandb", bool(self.wandb))) if on)


TUNE_METRICS = ("val_acc", "val_loss")
TUNE_RULES = ("best_mean",)
TUNE_OWN_KEYS = ("seeds", "metric", "rule")  # the other keys of [tune] name the [train]/[model] keys to tune
# Keys that define the arms (what is compared), never tuned per arm.
NOT_TUNABLE = ("arch", "placement", "place")


@dataclass(frozen=True)
class TuneConfig:
    """``[tune]``: hyperparameters chosen per arm on the validation set before the evaluation seeds train.

    ``candidates`` holds each tuned ``[train]``/``[model]`` key with its candidate values, keys in
    alphabetical order and values in the order written: the candidates of an arm are their product in
    that order (the first key varies slowest), and that order breaks ties (``bnstats/tune.py``). Empty
    (no key to tune): the sweep trains every arm with the values of ``[train]``/``[model]``, as before.
    """

    candidates: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # (key, candidate values) per tuned key
    seeds: tuple[int, ...] = ()    # tuning seeds: disjoint from the evaluation seeds
    metric: str = "val_acc"        # val_acc (highest mean wins) | val_loss (lowest mean wins), final epoch
    rule: str = "best_mean"        # best mean over the tuning seeds (ties: bnstats.tune.choose)

    @property
    def enabled(self) -> bool:
        return bool(self.candidates)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.candidates)

    def combos(self) -> list[dict[str, Any]]:
        """Every candidate of an arm as ``{key: value}``, in tie-break order."""
        return [dict(zip(self.keys, values, strict=True))
                for values in itertools.product(*(v for _, v in self.candidates))]

    def to_toml(self) -> dict[str, Any]:
        """The [tune] section as a config file writes it ({} when nothing is tuned)."""
        if not self.enabled:
            return {}
        return {**{k: list(v) for k, v in self.candidates}, "seeds": list(self.seeds), "metric": self.metric,
                "rule": self.rule}


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "moments": MomentsConfig,
    "engine": EngineConfig,
    "launcher": LauncherConfig,
    "log": LogConfig,
}
TOP_KEYS = ("name", "description", "dataset", "seeds", "grid", *SECTIONS, "tune")
DATASETS = ("mnist1d", "mnist", "fashion_mnist", "cifar10", "cifar100", "synthetic")
# Keys of [model] that bnstats itself interprets for a model factory; the others go to the factory.
FACTORY_KEYS = ("arch", "placement", "place")


def _is_spec(text: Any) -> bool:
    from .factory import is_spec

    return is_spec(text)


def check_dataset(value: Any) -> str:
    """``dataset``: a built-in name, ``file:PATH.npz`` or a loader ``package.module:function``."""
    if value in DATASETS or _is_spec(value):
        return value
    if isinstance(value, str) and value.startswith("file:") and value[5:]:
        return value
    raise _err("dataset", "one of " + ", ".join(map(repr, DATASETS)) + ", 'file:PATH.npz' or a loader "
               "'package.module:function'", value)
# Keys of these sections may be swept in [grid]; `[train]` keys too (e.g. lr).
GRID_SECTIONS = ("model", "train")


def _keys(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _grid_keys(model: ModelConfig | None = None) -> dict[str, str]:
    """Keys that [grid] may sweep, with their section; for a model factory, the keyword arguments it
    accepts (its ``options``) instead of the built-in archs' keys."""
    keys = {k: sec for sec in GRID_SECTIONS for k in _keys(SECTIONS[sec]) if k not in ("options", "place")}
    if model is not None and model.is_factory:
        keys = {k: s for k, s in keys.items() if s != "model" or k in FACTORY_KEYS}
        keys.update({k: "model" for k in factory_parameters(model.arch)[0] if k not in NOT_OPTIONS and k not in keys})
    return keys


# Keyword arguments bnstats gives every model factory from the dataset (not from the config).
NOT_OPTIONS = ("in_shape", "num_classes")


def factory_parameters(spec: str) -> tuple[frozenset[str], bool]:
    """The keyword arguments a model factory accepts, and whether it takes ``**kwargs``."""
    from . import factory

    return factory.parameters(factory.resolve(spec, field="model.arch"))


# Keys added after stores existed, left out of identities at their defaults so that those stores keep
# their run ids; data.root is where files live, not what they are.
_NEW_DEFAULTS = {"model": {"place": "off", "options": ()}, "data": {"val_split": 0.0}}


def _without_defaults(d: dict[str, Any]) -> dict[str, Any]:
    for sec, defaults in _NEW_DEFAULTS.items():
        if sec in d:
            d[sec] = {k: v for k, v in d[sec].items() if not (k in defaults and v == defaults[k])}
    if "data" in d:
        d["data"].pop("root", None)
    return d


def _model_from_dict(d: dict[str, Any]) -> ModelConfig:
    d = dict(d)
    d["options"] = tuple((k, _frozen(v)) for k, v in d.get("options", ()))
    return ModelConfig(**d)


def _frozen(v: Any) -> Any:
    """A TOML value made hashable (lists become tuples), so configs stay frozen and comparable."""
    return tuple(_frozen(x) for x in v) if isinstance(v, list | tuple) else v


def derive_seed(seed: int, *keys: str) -> int:
    """A 63-bit seed for one purpose (``"init"``, ``"order"``, ``"aug"`` ...) of a seed.

    Separate streams keep arms paired: drawing one more augmentation number cannot shift the
    data order, and a parameter that only one arm has cannot shift another's initial weights.
    """
    text = "/".join([str(int(seed)), *keys])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hex digest of canonical JSON (sorted keys), stable across processes and machines."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one run's numbers."""

    dataset: str
    seed: int
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    moments: MomentsConfig = field(default_factory=MomentsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sweep: str = ""              # name of the sweep it belongs to (bookkeeping only, not in run_id)
    factors: tuple[str, ...] = ()  # grid factor names of its sweep (bookkeeping only)

    def identity(self) -> dict[str, Any]:
        d = {"dataset": self.dataset, "seed": self.seed}
        for sec in ("model", "train", "moments"):
            d[sec] = dataclasses.asdict(getattr(self, sec))
        d["data"] = dataclasses.asdict(self.data)
        return _without_defaults(d)

    @property
    def run_id(self) -> str:
        return stable_hash(self.identity())

    def factor_values(self) -> dict[str, Any]:
        return {k: self.value(k) for k in self.factors}

    def value(self, key: str) -> Any:
        """The value of a ``[train]`` or ``[model]`` key (a factory's option) in this run."""
        return getattr(self.train, key) if key in _keys(TrainConfig) else self.model.value(key)

    def with_values(self, values: dict[str, Any]) -> RunConfig:
        """This run with ``[train]``/``[model]`` keys set to ``values`` (a tuning candidate, or the values
        chosen for its arm); its seed, grid factors and bookkeeping stay."""
        train_keys = _keys(TrainConfig)
        train = {k: v for k, v in values.items() if k in train_keys}
        model = {k: v for k, v in values.items() if k not in train_keys}  # a factory's option too
        return replace(self, model=self.model.with_values(**model).validate(),
                       train=replace(self.train, **train).validate())

    def to_dict(self) -> dict[str, Any]:
        d = self.identity()
        d["data"] = dataclasses.asdict(self.data)
        d["sweep"] = self.sweep
        d["factors"] = list(self.factors)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        return cls(
            dataset=d["dataset"], seed=int(d["seed"]),
            model=_model_from_dict(d["model"]), train=TrainConfig(**d["train"]),
            moments=MomentsConfig(**d["moments"]), data=DataConfig(**d["data"]),
            sweep=d.get("sweep", ""), factors=tuple(d.get("factors", ())),
        )


@dataclass(frozen=True)
class SweepConfig:
    name: str
    dataset: str = "mnist1d"
    seeds: tuple[int, ...] = tuple(range(10))
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    moments: MomentsConfig = field(default_factory=MomentsConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    log: LogConfig = field(default_factory=LogConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    @property
    def factors(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.grid)


    def runs(self) -> list[RunConfig]:
        """Grid × seeds, seed-major so that all arms of a seed finish close together."""
        sections = _grid_keys(self.model)
        keys = self.factors
        combos = list(itertools.product(*(values for _, values in self.grid))) or [()]
        out = []
        for seed in self.seeds:
            for combo in combos:
                parts: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
                for k, v in zip(keys, combo, strict=True):
                    parts[sections[k]][k] = v
                out.append(RunConfig(
                    dataset=self.dataset, seed=seed,
                    model=self.model.with_values(**parts["model"]).validate(),
                    train=replace(self.train, **parts["train"]).validate(),
                    moments=self.moments, data=self.data, sweep=self.name, factors=keys,
                ))
        return out

    def identity(self) -> dict[str, Any]:
        """What an output directory is bound to: everything but the seeds, the launcher, the log sinks and
        the engine options that change only rounding (stacking, determinism, compilation).

        Adding seeds to a finished sweep is allowed (only the new runs train); changing anything
        that alters the runs' numbers is not: ``engine.precision = "bf16"`` does (listed only then, so
        fp32 sweeps keep the identity they had before the option existed).
        """
        d = {"name": self.name, "dataset": self.dataset, "grid": [[k, list(v)] for k, v in self.grid]}
        for sec in ("model", "train", "moments", "data"):
            d[sec] = dataclasses.asdict(getattr(self, sec))
        d = _without_defaults(d)
        if self.engine.precision != "fp32":
            d["engine"] = {"precision": self.engine.precision}
        if self.tune.enabled:  # listed only then: sweeps without [tune] keep the identity they had
            t = self.tune
            d["tune"] = {"candidates": [[k, list(v)] for k, v in t.candidates], "seeds": list(t.seeds),
                         "metric": t.metric, "rule": t.rule}
        return d

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "description": self.description,
                             "dataset": self.dataset, "seeds": list(self.seeds)}
        for sec in SECTIONS:
            d[sec] = dataclasses.asdict(getattr(self, sec))
        d["model"] = self.model.to_toml()
        d["grid"] = {k: list(v) for k, v in self.grid}
        if self.tune.enabled:
            d["tune"] = self.tune.to_toml()
        return d


def _section(name: str, raw: Any) -> Any:
    cls = SECTIONS[name]
    if not isinstance(raw, dict):
        raise _err(f"[{name}]", "a table of keys", raw)
    if name == "model" and _is_spec(raw.get("arch")):
        return _factory_model(raw)
    valid = [k for k in _keys(cls) if k != "options"]
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}: unknown key; valid keys of [{name}] are: {', '.join(valid)}")
    return cls(**raw).validate()


def _factory_model(raw: dict[str, Any]) -> ModelConfig:
    """[model] of a model factory: ``arch``, ``placement`` and ``place`` are bnstats'; every other key
    is one of the factory's keyword arguments, legal only when the factory accepts it."""
    names, var_kw = factory_parameters(raw["arch"])
    options = {k: v for k, v in raw.items() if k not in FACTORY_KEYS}
    for k in sorted(options):
        if k in NOT_OPTIONS:
            raise ConfigError(f"model.{k}: bnstats passes {k} from the dataset; remove it from [model]")
        if not (var_kw or k in names):
            accepted = ", ".join(sorted(n for n in names if n not in NOT_OPTIONS)) or "no keyword arguments"
            raise ConfigError(f"model.{k}: the model factory {raw['arch']} does not accept {k!r}; it "
                              f"accepts: {accepted}")
    own = {k: raw[k] for k in FACTORY_KEYS if k in raw}
    return ModelConfig(**own, options=tuple(sorted((k, _frozen(v)) for k, v in options.items()))).validate()


def _seeds(raw: Any) -> tuple[int, ...]:
    if isinstance(raw, int) and not isinstance(raw, bool):
        if raw < 1:
            raise _err("seeds", "a positive count or a list of distinct non-negative integers", raw)
        return tuple(range(raw))
    if isinstance(raw, list) and raw and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                             for s in raw):
        if len(set(raw)) != len(raw):
            raise _err("seeds", "distinct seeds", raw)
        return tuple(raw)
    raise _err("seeds", "a positive count or a list of distinct non-negative integers", raw)


def _grid(raw: Any, sections: dict[str, Any]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if not isinstance(raw, dict):
        raise _err("[grid]", "a table of lists", raw)
    valid = _grid_keys(sections["model"])
    var_kw = sections["model"].is_factory and factory_parameters(sections["model"].arch)[1]
    out = []
    for key, values in raw.items():
        if key not in valid and var_kw and key not in NOT_OPTIONS:
            valid = {**valid, key: "model"}  # a factory with **kwargs accepts any key
        if key not in valid:
            what = f"keyword arguments of the model factory {sections['model'].arch}, " if \
                sections["model"].is_factory else ""
            raise ConfigError(f"grid.{key}: unknown key; valid grid keys are: {what}{', '.join(valid)}")
        if not isinstance(values, list) or not values:
            raise _err(f"grid.{key}", "a non-empty list", values)
        if len(set(map(repr, values))) != len(values):
            raise _err(f"grid.{key}", "distinct values", values)
        for v in values:  # validate each value through its section's own checks
            _check_value("grid", key, v, valid[key], sections)
        out.append((key, tuple(_frozen(v) for v in values)))
    return tuple(out)


def _check_value(prefix: str, key: str, value: Any, sec: str, sections: dict[str, Any]) -> None:
    """``value`` for ``sec.key`` through that section's own checks; errors named ``prefix.key``."""
    try:
        section = sections[sec]
        (section.with_values(**{key: value}) if sec == "model" else replace(section, **{key: value})).validate()
    except ConfigError as e:
        raise ConfigError(str(e).replace(f"{sec}.{key}:", f"{prefix}.{key}:", 1)) from None


def _tune(raw: Any, sections: dict[str, Any], grid: tuple[tuple[str, tuple[Any, ...]], ...],
          seeds: tuple[int, ...]) -> TuneConfig:
    """``[tune]``: ``seeds``, ``metric``, ``rule`` and the ``[train]``/``[model]`` keys to tune with their
    candidate lists. Refused (naming the key): an unknown key, a key that is also a grid factor or defines
    the arms, an empty or non-scalar candidate list, tuning seeds that overlap the evaluation seeds."""
    if not isinstance(raw, dict):
        raise _err("[tune]", "a table of keys", raw)
    if not raw:
        return TuneConfig()
    model = sections["model"]
    valid = _grid_keys(model)
    var_kw = model.is_factory and factory_parameters(model.arch)[1]
    factors = [k for k, _ in grid]
    candidates = []
    for key in sorted(k for k in raw if k not in TUNE_OWN_KEYS):
        values = raw[key]
        if key in NOT_TUNABLE:
            raise ConfigError(f"tune.{key}: defines the arms that are compared; it cannot be tuned per arm "
                              "(sweep it in [grid])")
        if key not in valid and not (var_kw and key not in NOT_OPTIONS):
            keys = ", ".join(k for k in valid if k not in NOT_TUNABLE)
            raise ConfigError(f"tune.{key}: unknown key; valid keys of [tune] are: {', '.join(TUNE_OWN_KEYS)} "
                              f"and the [train]/[model] keys to tune: {keys}")
        if key in factors:
            raise ConfigError(f"tune.{key}: also a grid factor ([grid] {key} = {list(dict(grid)[key])}); a key is "
                              "either compared across arms ([grid]) or tuned within each arm ([tune]), not both")
        if not isinstance(values, list) or not values:
            raise _err(f"tune.{key}", "a non-empty list of candidate values", values)
        if any(isinstance(v, list | dict) for v in values):
            raise _err(f"tune.{key}", "a list of numbers, strings or booleans", values)
        if len(set(map(repr, values))) != len(values):
            raise _err(f"tune.{key}", "distinct candidate values", values)
        for v in values:
            _check_value("tune", key, v, valid.get(key, "model"), sections)
        candidates.append((key, tuple(values)))
    if not candidates:
        raise ConfigError("[tune]: names no [train]/[model] key to tune (e.g. lr = [0.025, 0.05, 0.1]); "
                          "remove the section to train every arm with the same values")
    if "seeds" not in raw:
        raise ConfigError("tune.seeds: missing; the tuning seeds, disjoint from the evaluation seeds "
                          "(e.g. seeds = [1000, 1001, 1002])")
    tseeds = raw["seeds"]
    if not (isinstance(tseeds, list) and tseeds and all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in tseeds)) \
            or len(set(tseeds)) != len(tseeds):
        raise _err("tune.seeds", "a non-empty list of distinct non-negative integers", tseeds)
    shared = sorted(set(tseeds) & set(seeds))
    if shared:
        raise ConfigError(f"tune.seeds: {shared} are also evaluation seeds (seeds: {_seeds_text(seeds)}); tuning "
                          "seeds must be disjoint from them, or the seeds that count would have chosen their own "
                          "hyperparameters")
    metric = _choice("tune.metric", raw.get("metric", "val_acc"), TUNE_METRICS)
    rule = _choice("tune.rule", raw.get("rule", "best_mean"), TUNE_RULES)
    return TuneConfig(candidates=tuple(candidates), seeds=tuple(tseeds), metric=metric, rule=rule)


def _seeds_text(seeds: tuple[int, ...]) -> str:
    s = sorted(seeds)
    return f"{s[0]}..{s[-1]}" if s == list(range(s[0], s[-1] + 1)) and len(s) > 2 else ", ".join(map(str, s))


def from_dict(raw: dict[str, Any]) -> SweepConfig:
    """Validate a parsed TOML document into a :class:`SweepConfig`."""
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key; valid top-level keys are: {', '.join(TOP_KEYS)}")
    if "name" not in raw:
        raise ConfigError("name: missing; every sweep needs a name (it names its output directory)")
    name = raw["name"]
    if not isinstance(name, str) or not name or any(c in name for c in "/\\ ") or name.startswith("."):
        raise _err("name", "a non-empty string without spaces or slashes", name)
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise _err("description", "a string", description)
    dataset = check_dataset(raw.get("dataset", "mnist1d"))
    sections = {sec: _section(sec, raw.get(sec, {})) for sec in SECTIONS}
    grid = _grid(raw.get("grid", {}), sections)
    seeds = _seeds(raw.get("seeds", 10))
    tune = _tune(raw.get("tune", {}), sections, grid, seeds)
    return SweepConfig(name=name, description=description, dataset=dataset, seeds=seeds, grid=grid,
                       **sections, tune=tune)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` (value in TOML syntax; bare words are strings) -> (path, value)."""
    if "=" not in text:
        raise ConfigError(f"--set: expected section.key=value, got {text!r}")
    path, value = text.split("=", 1)
    path = path.strip()
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return path.split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    raw = json.loads(json.dumps(raw))  # deep copy of plain TOML data
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text}: {k} is not a section")
        node[keys[-1]] = value
    return raw


DEFAULT_CONFIG = "placement-mnist1d"


def default_config_text(name: str = DEFAULT_CONFIG) -> str:
    """The TOML text of a config embedded in the package (``bnstats/configs/<name>.toml``)."""
    return resources.files("bnstats").joinpath("configs", f"{name}.toml").read_text()


def load(path: str | Path | None = None, *, overrides: list[str] = (), seeds: int | None = None
         ) -> SweepConfig:
    """Load a sweep config from TOML (``None``: the embedded default), apply ``--set`` overrides."""
    if path is None:
        text = default_config_text()
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config: file not found: {str(p)!r}")
        text = p.read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config: not valid TOML ({path or 'embedded default'}): {e}") from None
    raw = apply_overrides(raw, list(overrides))
    if seeds is not None:
        raw["seeds"] = seeds
    if path is not None:  # user code and data files may be named relative to the config file
        _relative_to(raw, Path(path).parent)
    return from_dict(raw)


def _relative_to(raw: dict[str, Any], folder: Path) -> None:
    """Rewrite paths of user code (``model.arch``, ``dataset``) that exist only beside the config file
    relative to the working directory, so that every process finds them and no stored config names an
    absolute path."""
    from .factory import normalise

    model = raw.get("model")
    if isinstance(model, dict) and _is_spec(model.get("arch")):
        model["arch"] = normalise(model["arch"], folder)
    dataset = raw.get("dataset")
    if _is_spec(dataset):
        raw["dataset"] = normalise(dataset, folder)
    elif isinstance(dataset, str) and dataset.startswith("file:"):
        target = dataset[5:]
        if not Path(target).is_absolute() and not Path(target).exists() and (folder / target).exists():
            raw["dataset"] = "file:" + os.path.relpath(folder / target)
