"""One run: build, initialise, train, evaluate, probe. One flat loop, top to bottom.

Everything random comes from generators derived from the run's seed (``config.derive_seed``):
``init`` (weights, by parameter name), ``order`` (the batch order), ``aug`` (crops and flips) and
``dropout``. Arms of one seed therefore share weights, batches and augmentation; only the
architecture differs. Nothing reads or sets global RNG state.

Inside the loop nothing leaves the device: losses, accuracies and divergence are reduced on the
device and read once per epoch; moments are reduced on the device to per-channel sums and read when
the run ends (or when they grow large, see ``MOMENT_STATE_BYTES``).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import platform
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__, cpu, data, models
from .config import RunConfig, derive_seed
from .moments import MomentAccumulator, summarize_many


@dataclass
class RunOutput:
    """What one run produces: one ``runs`` row and its ``curves`` / ``moments`` rows."""

    run: dict[str, Any]
    curves: list[dict[str, Any]] = field(default_factory=list)
    moments: list[dict[str, Any]] = field(default_factory=list)
    moments_channel: list[dict[str, Any]] = field(default_factory=list)


def lr_factor(step: int, *, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))  # "step"


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    params = model.parameters()
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    opt = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return opt(params, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)


def make_optimisation(model: torch.nn.Module, cfg, n_train: int
                      ) -> tuple[int, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """Steps per epoch (last partial batch dropped), the optimizer and its per-step lr schedule."""
    steps_per_epoch = n_train // cfg.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"train.batch_size: {cfg.batch_size} exceeds the {n_train} training examples")
    total_steps = steps_per_epoch * cfg.epochs
    opt = make_optimizer(model, cfg)
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total=total_steps, warmup=warmup, schedule=cfg.schedule))
    return steps_per_epoch, opt, sched


# Recorded site tensors are reduced to moment sums once they hold this many bytes (and before rows
# are made): small models batch several passes into a few large ops (each op costs ~5 us whatever its
# size), large ones reduce every pass or two, from the last-level cache rather than from memory, and
# no run holds more than this in activations.
REDUCE_BYTES = 4 * 2**20


# Within a pass, pending site tensors are reduced once they exceed this (a 64-seed stack's site tensor
# is 1-8 GB: each is reduced when the next arrives); small models wait for the pass's end (above).
PASS_BYTES = 64 * 2**20


# Moment sums are turned into rows (one summary pass for all of them) at the end of the run, or
# earlier at an epoch end once they hold this much: a long run of a large model would otherwise keep
# a [tensors, channels] float64 state for every recorded step.
MOMENT_STATE_BYTES = 64 * 2**20


class SiteRecorder:
    """Collects the site tensors of forward passes; :meth:`rows` turns them into moment rows.

    Use :meth:`recording` around a forward pass. Recorded tensors are reduced to per-channel moment
    sums, all tensors of one shape in one grouped update, once they reach ``REDUCE_BYTES`` and at
    :meth:`rows`, then dropped; only ``[tensors, C]`` float64 sums stay until :meth:`rows` summarises
    everything with one host transfer. When a block hands over the same tensor for two sites
    (``before``: ``norm_out`` is ``act_in``; ``after``: ``act_out`` is ``norm_in``) it is reduced once
    and reported for both.
    """

    channel_dim = 1  # of the site tensors: [N, C, ...]

    def __init__(self) -> None:
        self.items: list[tuple[tuple, torch.Tensor]] = []  # ((keys, layer, site), tensor), not yet reduced
        self.nbytes = 0  # of self.items
        self.keys: dict[str, Any] = {}
        self._rows: int | None = None
        self._last: torch.Tensor | None = None
        self._accs: list[MomentAccumulator] = []
        self._labels: list[tuple[tuple, int, int]] = []  # (keys, layer, site), accumulator, index in it

    def start(self, *, rows: int | None = None, **keys: Any) -> SiteRecorder:
        """Begin a forward pass whose sites are labelled with ``keys`` (epoch, step, source).

        ``rows``: record only the first ``rows`` inputs of the batch (the probe inside an evaluation batch).
        """
        self.keys, self._rows, self._last = keys, rows, None
        return self

    @contextlib.contextmanager
    def recording(self, model: torch.nn.Module, *, rows: int | None = None, **keys: Any) -> Iterator[None]:
        """Record the sites of the forward pass run inside the block (see :meth:`start`)."""
        with models.record(model, self.start(rows=rows, **keys)):
            yield
        if self.nbytes >= REDUCE_BYTES:
            self.reduce()

    def __call__(self, layer: int, site: str, x: torch.Tensor) -> None:
        keys = (self.keys, layer, site)  # made a row's dict in rows(): most recordings never need one
        if self._last is not None and x is self._last:
            self.items.append((keys, self.items[-1][1]))
            return
        if self.nbytes >= PASS_BYTES:  # no alias of the pending tensors can follow: reduce them now,
            self.reduce()              # so a large model's pass never holds all its site tensors
        t = x.detach() if self._rows is None else x.detach()[: self._rows]
        self.items.append((keys, self._view(t)))
        self._last = x
        self.nbytes += t.numel() * t.element_size()

    def _view(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def reduce(self) -> None:
        """Reduce the tensors recorded so far to moment sums and let them go."""
        members: dict[tuple, list[torch.Tensor]] = {}  # (shape, dtype, device) -> its tensors
        seen: dict[int, tuple[int, int]] = {}  # id(tensor) -> (group, index in it): aliases share it
        for keys, t in self.items:
            if id(t) not in seen:
                g = (tuple(t.shape), t.dtype, t.device)
                group = members.setdefault(g, [])
                seen[id(t)] = (list(members).index(g), len(group))
                group.append(t)
            a, i = seen[id(t)]
            self._labels.append((keys, len(self._accs) + a, i))
        self._accs += [MomentAccumulator.from_tensors(ts, channel_dim=self.channel_dim) for ts in members.values()]
        self.items, self._last, self.nbytes = [], None, 0

    @property
    def state_bytes(self) -> int:
        """Bytes held: site tensors not yet reduced and the moment sums of those that were."""
        return self.nbytes + sum(6 * 8 * math.prod(a.shape) for a in self._accs if a.shape is not None)

    def rows(self, per_channel: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Summary rows (and per-channel rows) of everything recorded, then forget it."""
        return self.seed_rows(per_channel, seeds=1)[0]

    def seed_rows(self, per_channel: bool, seeds: int) -> list[tuple[list[dict], list[dict]]]:
        """For each of ``seeds`` groups per recorded tensor (a stack's seeds, see ``engine.StackRecorder``),
        its summary rows and per-channel rows, in recording order; then forget everything."""
        self.reduce()
        labels, accs = self._labels, self._accs
        self._labels, self._accs = [], []
        summaries = summarize_many(accs) if accs else []  # one host transfer
        # per accumulator: its summary as one tuple per group (tensor i, seed j: group i * seeds + j)
        columns = [(list(summ), list(zip(*summ.values(), strict=True))) for summ in summaries]
        results = ([{k: v.cpu().numpy().reshape(-1, v.shape[-1]) for k, v in a.result().items()} for a in accs]
                   if per_channel else None)  # per accumulator: [groups, C] arrays
        out: list[tuple[list[dict], list[dict]]] = [([], []) for _ in range(seeds)]
        for (keys, layer, site), a, i in labels:
            keys = {**keys, "layer": layer, "site": site}
            names, values = columns[a]
            for seed, (rows, channel_rows) in enumerate(out):
                g = i * seeds + seed
                rows.append({**keys, **dict(zip(names, values[g], strict=True))})
                if results is not None:
                    res = results[a]
                    channel_rows += [{**keys, "channel": c, **{k: float(v[g, c]) for k, v in res.items()}}
                                     for c in range(res["mean"].shape[-1])]
        return out


def probe_in_evaluation(rec: SiteRecorder, model: torch.nn.Module, run: RunConfig, n_test: int,
                        batch_size: int, **keys: Any) -> contextlib.AbstractContextManager | None:
    """The epoch-end probe as a recording of evaluation's first batch, whose first inputs are the probe's.

    ``None`` when moments are off, or when that batch (``batch_size`` inputs) is shorter than the probe:
    the probe then takes a forward pass of its own.
    """
    mc = run.moments
    if mc.enabled and (mc.probe_size <= batch_size or n_test <= batch_size):
        return rec.recording(model, rows=mc.probe_size, source="probe", **keys)
    return None


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             first_batch: contextlib.AbstractContextManager | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and accuracy (fraction) on ``x, y``, as device scalars.

    ``first_batch`` is entered around the first batch's forward pass: the probe rides on it (its
    inputs are the first test inputs, in eval mode) instead of costing a forward pass of its own.
    """
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for i in range(0, len(x), batch_size):
        with first_batch if i == 0 and first_batch is not None else contextlib.nullcontext():
            out = model(x[i:i + batch_size])
        loss += F.cross_entropy(out.float(), y[i:i + batch_size], reduction="sum").double()
        correct += (out.argmax(1) == y[i:i + batch_size]).sum()
    return loss / len(x), correct.double() / len(x)


def versions() -> dict[str, str]:
    import pandas
    import scipy

    return {"bnstats_version": __version__, "torch_version": torch.__version__,
            "numpy_version": np.__version__, "scipy_version": scipy.__version__,
            "pandas_version": pandas.__version__, "python_version": platform.python_version()}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.machine()}:{torch.get_num_threads()}threads"


@contextlib.contextmanager
def exact_fp32(device: torch.device) -> Iterator[None]:
    """float32 arithmetic in convolutions and matrix products on CUDA within the block (no TF32).

    PyTorch lets cuDNN convolutions run in TF32 (10-bit mantissa) by default: then a stacked run and
    its single run, whose kernels differ, drift apart over training by far more than float32 rounding
    (seen on an H100: 0.003 in test accuracy after 2 epochs of the 1-D CNN). ``precision = "fp32"``
    means float32.
    """
    if device.type != "cuda":
        yield
        return
    prev = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev


def eval_rows(run: RunConfig, seeds: int = 1) -> int:
    """Inputs per evaluation batch. A stack of ``seeds`` models evaluates every input once per seed, so
    it takes no more inputs at a time than a training batch or the probe (whose activations it holds
    anyway): 2000 test images through 64 stacked 64/128/256 CNNs would need 33 GB for one activation."""
    tc, mc = run.train, run.moments
    if seeds == 1:
        return tc.eval_batch_size
    return min(tc.eval_batch_size, max(tc.batch_size, mc.probe_size if mc.enabled else 1))


def train(run: RunConfig, *, device: str | torch.device = "cpu", git_commit: str = "") -> RunOutput:
    """Train one run and return its rows. Deterministic on CPU: the same run gives the same bytes."""
    device = torch.device(device)
    with exact_fp32(device):
        return _train(run, device, git_commit)


def _train(run: RunConfig, device: torch.device, git_commit: str) -> RunOutput:
    t_start = time.perf_counter()
    ds = data.load(run.dataset, run.data.root)
    dd = data.to_device(ds, device)
    tc, mc = run.train, run.moments

    # --- model and pairing certificate ---------------------------------------------------------
    model = models.build(run.model, dd.input_shape, dd.num_classes)
    models.init_parameters(model, run.seed)
    init_hash = models.init_hash(model)
    model.to(device)
    order_gen = torch.Generator().manual_seed(derive_seed(run.seed, "order"))
    aug_gen = torch.Generator().manual_seed(derive_seed(run.seed, "aug"))
    drop_gen = torch.Generator(device=device).manual_seed(derive_seed(run.seed, "dropout"))
    models.set_dropout_generator(model, drop_gen)
    order_hash = hashlib.sha256()

    # --- optimisation ----------------------------------------------------------------------------
    n_train = len(dd.x_train)
    steps_per_epoch, opt, sched = make_optimisation(model, tc, n_train)

    probe_x = dd.x_test[: mc.probe_size]
    moments: list[dict[str, Any]] = []
    moments_channel: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []

    rec = SiteRecorder()

    def probe(epoch: int, step: int) -> None:
        model.eval()
        with torch.no_grad(), rec.recording(model, epoch=epoch, step=step, source="probe"):
            model(probe_x)

    def flush_moments() -> None:
        rows, ch = rec.rows(mc.per_channel)
        moments.extend(rows)
        moments_channel.extend(ch)

    if mc.enabled:
        probe(0, 0)

    step = 0
    diverged, diverged_step = False, -1
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    step_t = torch.zeros((), dtype=torch.int64, device=device)  # the step, on the device: no host copy
    train_loss = test_loss = test_acc = train_acc = float("nan")
    epochs_completed = 0
    for epoch in range(1, tc.epochs + 1):
        perm = data.epoch_order(n_train, order_gen)[: steps_per_epoch * tc.batch_size]
        order_hash.update(perm.numpy().astype("<i8").tobytes())
        batches = perm.view(steps_per_epoch, tc.batch_size).to(device)
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        for i in range(steps_per_epoch):
            xb, yb = dd.x_train[batches[i]], dd.y_train[batches[i]]
            if run.data.augment and dd.is_image:
                xb = data.augment(xb, aug_gen, padding=run.data.crop_padding, flip=run.data.flip)
            if mc.enabled and mc.every and step % mc.every == 0:
                with rec.recording(model, epoch=epoch, step=step, source="train"):
                    out = model(xb)
            else:
                out = model(xb)
            loss = F.cross_entropy(out.float(), yb, label_smoothing=tc.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss = loss.detach()
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step_t, first_bad)
            step_t += 1
            loss_sum += loss.double()
            correct += (out.detach().argmax(1) == yb).sum()
            step += 1

        # --- once per epoch: evaluate, probe, then the single host read of the epoch ---------
        ride = probe_in_evaluation(rec, model, run, len(dd.x_test), tc.eval_batch_size, epoch=epoch, step=step)
        t_loss, t_acc = evaluate(model, dd.x_test, dd.y_test, tc.eval_batch_size, first_batch=ride)
        if mc.enabled:
            if ride is None:
                probe(epoch, step)
            if rec.state_bytes > MOMENT_STATE_BYTES:
                flush_moments()
        bad = int(first_bad)
        train_loss = float(loss_sum) / steps_per_epoch
        train_acc = float(correct) / (steps_per_epoch * tc.batch_size)
        test_loss, test_acc = float(t_loss), float(t_acc)
        epochs_completed = epoch
        if bad >= 0:
            diverged, diverged_step = True, bad
            # A diverged model's predictions mean nothing: its final metrics are NaN, the curve shows why.
            test_loss = test_acc = float("nan")
        curves.append({"epoch": epoch, "step": step, "lr": opt.param_groups[0]["lr"],
                       "train_loss": train_loss, "train_acc": train_acc,
                       "test_loss": test_loss, "test_acc": test_acc,
                       "wall_time_s": time.perf_counter() - t_start})
        if diverged:
            break
    if mc.enabled:
        flush_moments()

    run_id = run.run_id
    row = {
        "run_id": run_id, "sweep": run.sweep, "seed": run.seed, "dataset": run.dataset,
        "arch": run.model.arch, "placement": run.model.placement, "activation": run.model.activation,
        **{k: v for k, v in run.factor_values().items() if k not in ("arch", "placement", "activation")},
        "test_acc": test_acc, "test_loss": test_loss, "train_loss": train_loss, "train_acc": train_acc,
        "diverged": diverged, "diverged_step": diverged_step, "epochs_completed": epochs_completed,
        "steps": step, "n_params": sum(p.numel() for p in model.parameters()),
        "init_hash": init_hash, "order_hash": order_hash.hexdigest()[:16],
        "data_hash": data.fingerprint(ds),
        "wall_time_s": time.perf_counter() - t_start, "device": device_name(device),
        "hostname": socket.gethostname(), "git_commit": git_commit, **versions(), **cpu.state(),
    }
    for r in curves:
        r["run_id"] = run_id
    for r in moments:
        r["run_id"] = run_id
    for r in moments_channel:
        r["run_id"] = run_id
    return RunOutput(row, curves, moments, moments_channel)
