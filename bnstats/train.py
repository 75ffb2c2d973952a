"""One run: build, initialise, train, evaluate, probe. One flat loop, top to bottom.

Everything random comes from generators derived from the run's seed (``config.derive_seed``):
``init`` (weights, by parameter name), ``order`` (the batch order), ``aug`` (crops and flips) and
``dropout``. Arms of one seed therefore share weights, batches and augmentation; only the
architecture differs. Nothing reads or sets global RNG state.

Inside the loop nothing leaves the device: losses, accuracies, divergence and moments are reduced
on the device and read once per epoch.
"""

from __future__ import annotations

import hashlib
import math
import platform
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__, data, models
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


class SiteRecorder:
    """Collects the site tensors of forward passes; :meth:`rows` turns them into moment rows.

    Tensors are kept (not copied: nothing modifies activations in place) until :meth:`rows`, which
    stacks all tensors of one shape and computes their moments in one grouped update, so the cost
    per recorded step is a few kernel launches, not a few per site. When a block hands over the same
    tensor for two sites (``before``: ``norm_out`` is ``act_in``; ``after``: ``act_out`` is ``norm_in``)
    it is kept once and reported for both.
    """

    def __init__(self) -> None:
        self.items: list[tuple[dict[str, Any], torch.Tensor]] = []
        self.keys: dict[str, Any] = {}
        self._last: torch.Tensor | None = None
        self.nbytes = 0  # of the kept tensors: the loop flushes early past MOMENT_STASH_BYTES

    def start(self, **keys: Any) -> SiteRecorder:
        """Begin a forward pass whose sites are labelled with ``keys`` (epoch, step, source)."""
        self.keys, self._last = keys, None
        return self

    def __call__(self, layer: int, site: str, x: torch.Tensor) -> None:
        keys = {**self.keys, "layer": layer, "site": site}
        if self._last is not None and x is self._last:
            self.items.append((keys, self.items[-1][1]))
            return
        self.items.append((keys, x.detach()))
        self._last = x
        self.nbytes += x.numel() * x.element_size()

    def rows(self, per_channel: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Summary rows (and per-channel rows) of everything recorded, then forget it."""
        groups: dict[tuple, list[tuple[dict[str, Any], torch.Tensor]]] = {}
        seen: dict[int, int] = {}  # id(tensor) -> index into its group (aliases share one slot)
        slots: list[tuple[tuple, int]] = []
        for keys, t in self.items:
            g = (tuple(t.shape), t.dtype, t.device)
            if id(t) not in seen:
                seen[id(t)] = len(groups.setdefault(g, []))
                groups[g].append((keys, t))
            slots.append((g, seen[id(t)]))
        order = list(groups)
        accs = [MomentAccumulator(channel_dim=2).update(torch.stack([t for _, t in groups[g]])) for g in order]
        labels = [keys for keys, _ in self.items]
        self.items, self.nbytes = [], 0
        if not accs:
            return [], []
        summaries = dict(zip(order, summarize_many(accs), strict=True))  # one host transfer
        rows = [{**keys, **{k: v[i] for k, v in summaries[g].items()}}
                for keys, (g, i) in zip(labels, slots, strict=True)]
        channel_rows: list[dict[str, Any]] = []
        if per_channel:
            results = {g: {k: v.cpu().numpy() for k, v in acc.result().items()}
                       for g, acc in zip(order, accs, strict=True)}
            for keys, (g, i) in zip(labels, slots, strict=True):
                res = results[g]
                channel_rows += [{**keys, "channel": c, **{k: float(v[i, c]) for k, v in res.items()}}
                                 for c in range(res["mean"].shape[-1])]
        return rows, channel_rows


# Site tensors kept before their moments are computed. Small models (MNIST-1D) never reach it and
# flush once per epoch; large conv nets flush as they go (one host read per flush) instead of holding
# an epoch of activations (a VGG on CIFAR-10 would need >10 GB).
MOMENT_STASH_BYTES = 256 * 2**20


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and accuracy (fraction) on ``x, y``, as device scalars."""
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for i in range(0, len(x), batch_size):
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


def train(run: RunConfig, *, device: str | torch.device = "cpu", git_commit: str = "") -> RunOutput:
    """Train one run and return its rows. Deterministic on CPU: the same run gives the same bytes."""
    t_start = time.perf_counter()
    device = torch.device(device)
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
        with torch.no_grad(), models.record(model, rec.start(epoch=epoch, step=step, source="probe")):
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
                with models.record(model, rec.start(epoch=epoch, step=step, source="train")):
                    out = model(xb)
                if rec.nbytes > MOMENT_STASH_BYTES:
                    flush_moments()
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
        t_loss, t_acc = evaluate(model, dd.x_test, dd.y_test, tc.eval_batch_size)
        if mc.enabled:
            flush_moments()  # this epoch's training-batch moments and the probe before it
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
            probe(epoch, step)
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
        "hostname": socket.gethostname(), "git_commit": git_commit, **versions(),
    }
    for r in curves:
        r["run_id"] = run_id
    for r in moments:
        r["run_id"] = run_id
    for r in moments_channel:
        r["run_id"] = run_id
    return RunOutput(row, curves, moments, moments_channel)
