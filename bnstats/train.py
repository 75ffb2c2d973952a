"""Training: one loop, top to bottom, for a *stack* of S ≥ 1 runs that differ only in their seed.

A single run is a stack of one: its model is the run's model itself. S > 1 runs of one arm train as one
wide model (``engine.StackedNet``: every layer is S layers side by side, so one step launches the kernels
of one run and does the work of S; on GPUs that is 8-10x a per-seed loop). The loop is written once for
both: set-up, optimisation, evaluation, probes, divergence and rows.

What stays per seed, drawn from generators derived from the run's seed (``config.derive_seed``), so that
the arms of a seed share them and only the architecture differs (the *pairing*):

- initial weights (``models.create``: by parameter name; certified by ``init_hash``);
- the batch order (``data.epoch_order`` with the seed's ``order`` generator; certified by ``order_hash``);
- crops and flips (the seed's ``aug`` generator, drawn per step, moved to the device once per epoch);
- dropout masks (the seed's ``dropout`` generator; a model factory's own ``nn.Dropout`` draws from
  torch's global generator, seeded per run within the loop and restored after it).

Nothing reads or sets global RNG state outside a run. Inside the loop nothing is read on the host:
losses, correct counts, divergence steps and moment tensors stay on the device and are read once per
epoch. A seed that diverges (non-finite loss) is recorded as diverged at its step and stops at the end
of that epoch, its final metrics NaN; in a stack it poisons only its own slice and the others go on.

Every epoch evaluates on the test set and, when the run has one, the validation set (``data.val_split``
or the data's own ``x_val``): losses, accuracies and correct counts per seed. The final epoch also keeps
which test examples each seed classified correctly (``test_correct_bits``: ``np.packbits`` of the bool
vector, ``bitorder="little"``, ``n_test`` long), so statistics can take the test set's own uncertainty
into account. Deterministic on CPU: the same run gives the same bits (with bnstats' pinned CPU kernels,
on any x86-64 CPU: ``bnstats/cpu.py``); a stack's seeds equal their separate runs up to float rounding
(``tests/test_engine.py`` measures how close).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import platform
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__, cpu, data, engine, models, moments
from .config import RunConfig, derive_seed

PRECISIONS = ("fp32", "bf16")

# Moment sums are turned into rows (one summary pass for all of them) at the end of the run, or
# earlier at an epoch end once they hold this much: a long run of a large model would otherwise keep
# a [tensors, channels] float64 state for every recorded step.
MOMENT_STATE_BYTES = 64 * 2**20


@dataclass
class RunOutput:
    """What one run produces: one ``runs`` row and its ``curves`` / ``moments`` rows."""

    run: dict[str, Any]
    curves: list[dict[str, Any]] = field(default_factory=list)
    moments: list[dict[str, Any]] = field(default_factory=list)
    moments_channel: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# Optimisation


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


# ---------------------------------------------------------------------------------------------------
# Runtime options: precision, determinism


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


@contextlib.contextmanager
def deterministic_mode(enabled: bool, device: torch.device) -> Iterator[None]:
    """``torch.use_deterministic_algorithms`` (+ cuBLAS workspace, no cuDNN benchmark) within the block."""
    if not enabled:
        yield
        return
    prev = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
            torch.backends.cudnn.deterministic, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    if device.type == "cuda" and prev[3] is None:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = prev[1], prev[2]
        if device.type == "cuda" and prev[3] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


@contextlib.contextmanager
def _global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """torch's global generators seeded within the block and restored after it: a model factory's own
    ``nn.Dropout`` draws its masks there (bnstats' models draw from per-run generators instead)."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


# ---------------------------------------------------------------------------------------------------
# Evaluation


def eval_rows(run: RunConfig, seeds: int = 1) -> int:
    """Inputs per evaluation batch. A stack of ``seeds`` models evaluates every input once per seed, so
    it takes no more inputs at a time than a training batch or the probe (whose activations it holds
    anyway): 2000 test images through 64 stacked 64/128/256 CNNs would need 33 GB for one activation."""
    tc, mc = run.train, run.moments
    if seeds == 1:
        return tc.eval_batch_size
    return min(tc.eval_batch_size, max(tc.batch_size, mc.probe_size if mc.enabled else 1))


@dataclass
class Evaluation:
    """Per seed, on the device: summed cross-entropy ``[S]`` float64, correct count ``[S]`` int64, and
    (when asked for) which examples were classified correctly ``[N, S]`` bool."""

    loss: torch.Tensor
    correct: torch.Tensor
    examples: torch.Tensor | None = None


@torch.no_grad()
def evaluate(logits, x: torch.Tensor, y: torch.Tensor, batch_size: int, seeds: int,
             first_batch: contextlib.AbstractContextManager | None = None, per_example: bool = False
             ) -> Evaluation:
    """Cross-entropy and correct counts of every seed on a shared ``x, y``.

    ``logits(x)`` gives ``[n, S, K]`` (``[n, K]`` for one seed: the model's own output, no extra op).
    ``first_batch`` is entered around the first batch's forward pass: the probe rides on it (its inputs
    are the first test inputs, in eval mode) instead of costing a forward pass of its own.
    """
    loss = torch.zeros(seeds, dtype=torch.float64, device=x.device)
    correct = torch.zeros(seeds, dtype=torch.int64, device=x.device)
    examples = []
    for i in range(0, len(x), batch_size):
        with first_batch if i == 0 and first_batch is not None else contextlib.nullcontext():
            out = logits(x[i:i + batch_size])
        yb = y[i:i + batch_size]
        if seeds == 1:
            loss += F.cross_entropy(out.float(), yb, reduction="sum").double()
            hit = out.argmax(-1) == yb
        else:
            n, _, k = out.shape
            ce = F.cross_entropy(out.float().reshape(n * seeds, k), yb.repeat_interleave(seeds), reduction="none")
            loss += ce.view(n, seeds).sum(0).double()
            hit = out.argmax(2) == yb[:, None]
        correct += hit.sum(0)
        if per_example:
            examples.append(hit)
    return Evaluation(loss, correct, torch.cat(examples).view(len(x), seeds) if per_example else None)


# ---------------------------------------------------------------------------------------------------
# Provenance of a run


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


def _data_source(dataset: str) -> dict[str, str]:
    """sha256 of a user dataset file, or of a loader's source and its git commit ("" for built-ins)."""
    from . import factory

    if dataset.startswith("file:"):
        path = Path(dataset[5:])
        return {"dataset_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "dataset_git_commit": factory.git_commit(path.resolve().parent)}
    if data.is_user(dataset):
        src = factory.provenance(factory.resolve(dataset, field="dataset"))
        return {"dataset_sha256": src["sha256"], "dataset_git_commit": src["git_commit"]}
    return {}


# ---------------------------------------------------------------------------------------------------
# The loop


def train(run: RunConfig, *, device: str | torch.device = "cpu", git_commit: str = "", **options: Any) -> RunOutput:
    """Train one run (a stack of one) and return its rows. Options as :func:`train_stack`."""
    return train_stack([run], device=device, git_commit=git_commit, **options)[0]


def train_stack(runs: Sequence[RunConfig], *, device: str | torch.device = "cpu", git_commit: str = "",
                precision: str = "fp32", deterministic: bool = False, compile: bool = False) -> list[RunOutput]:
    """Train runs that differ only in their seed as one stack; one :class:`RunOutput` per run, in order.

    ``precision``: ``"fp32"`` (float32, TF32 off on CUDA, :func:`exact_fp32`) or ``"bf16"`` (CUDA
    autocast, norm layers in fp32); ``deterministic``: :func:`deterministic_mode`; ``compile``:
    ``torch.compile`` the model (CUDA only: +30-40% images/s on stacked CNNs for 10-30 s of compilation).
    Each run row records them (``engine`` = ``"stack"`` or ``"single"``, ``stack_size``, ``precision``,
    ``deterministic``, ``compiled``); ``wall_time_s`` is the stack's (its runs shared the device for all
    of it).
    """
    device = torch.device(device)
    runs = list(runs)
    _check_options(runs, precision, device)
    compiled = compile and device.type == "cuda"
    with deterministic_mode(deterministic, device), (
            exact_fp32(device) if precision == "fp32" else contextlib.nullcontext()):
        outs = _train(runs, device, git_commit, precision, compiled)
    for o in outs:
        o.run.update(engine="stack" if len(runs) > 1 else "single", stack_size=len(runs), precision=precision,
                     deterministic=deterministic, compiled=compiled)
    return outs


def _check_options(runs: Sequence[RunConfig], precision: str, device: torch.device) -> None:
    if not runs:
        raise ValueError("train_stack: runs is empty")
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    if precision == "bf16" and device.type != "cuda":
        raise ValueError(f"precision: 'bf16' is autocast on CUDA; the device is {device.type!r} (use 'fp32')")
    key = _arm_key(runs[0])
    for r in runs[1:]:
        if _arm_key(r) != key:
            raise ValueError(f"train_stack: runs must differ only in seed; seed {r.seed} differs from seed "
                             f"{runs[0].seed} in more than its seed")
    seeds = [r.seed for r in runs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"train_stack: seeds must be distinct, got {seeds}")
    if len(runs) > 1 and runs[0].model.is_factory:
        raise ValueError(f"train_stack: a model factory's runs train one seed at a time "
                         f"({runs[0].model.arch}); stack only bnstats' own archs")


def _arm_key(run: RunConfig) -> str:
    d = run.to_dict()
    d.pop("seed")
    return repr(sorted(d.items()))


def _train(runs: list[RunConfig], device: torch.device, git_commit: str, precision: str,
           compiled: bool) -> list[RunOutput]:
    t_start = time.perf_counter()
    run0, S = runs[0], len(runs)
    ds, dd = data.prepare(run0.dataset, run0.data.root, run0.data.val_split, device)
    tc, mc = run0.train, run0.moments
    n_train, n_test, n_val = len(dd.x_train), len(dd.x_test), len(dd.x_val)

    # --- per-seed models and their pairing certificates; S > 1: one stacked model -----------------
    built = [models.create(r.model, r.seed, dd.input_shape, dd.num_classes) for r in runs]
    n_params = sum(p.numel() for p in built[0].model.parameters())
    drop_gens = [torch.Generator(device=device).manual_seed(derive_seed(r.seed, "dropout")) for r in runs]
    if S == 1:
        model = built[0].model.to(device)
        models.set_dropout_generator(model, drop_gens[0])
    else:  # grouped convs on GPUs; on CPU S plain convs are faster than oneDNN's grouped ones (benchmarks/)
        impl = engine.GPU_CONV_IMPL if device.type == "cuda" else "split"
        model = engine.stack_models([b.model for b in built], drop_gens, conv_impl=impl).to(device)
    order_gens = [torch.Generator().manual_seed(derive_seed(r.seed, "order")) for r in runs]
    aug_gens = [torch.Generator().manual_seed(derive_seed(r.seed, "aug")) for r in runs]
    order_hashes = [hashlib.sha256() for _ in runs]
    augment = run0.data.augment and dd.is_image
    steps_per_epoch, opt, sched = make_optimisation(model, tc, n_train)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    forward = torch.compile(model) if compiled else model

    def logits(x: torch.Tensor, *, shared: bool = False, fast: bool = False) -> torch.Tensor:
        """``[N, S, K]``, or the model's own ``[N, K]`` for one seed. ``shared``: ``x`` is ``[N, C, ...]``, the
        same for every seed (evaluation, probes); otherwise packed ``[N, S*C, ...]`` (``[N, C, ...]`` for
        one). ``fast``: through the compiled model (no hooks there)."""
        m = forward if fast else model
        with autocast:
            return m(x, shared=True) if shared and S > 1 else m(x)

    def seed_losses(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each seed's mean cross-entropy (``[S]``; a scalar for one seed) and the loss to differentiate:
        their sum (seeds share no op, so each gets exactly its own gradient)."""
        if S == 1:
            per = F.cross_entropy(out.float(), y, label_smoothing=tc.label_smoothing)
            return per, per
        B, _, K = out.shape
        per = F.cross_entropy(out.float().reshape(B * S, K), y.reshape(B * S), label_smoothing=tc.label_smoothing,
                              reduction="none").view(B, S).mean(0)
        return per, per.sum()

    def shared(x: torch.Tensor) -> torch.Tensor:
        return logits(x, shared=True)

    # --- moments: sites found by hooks (moments.find_sites), reduced on the device ---------------------
    probe_x = dd.x_test[: mc.probe_size]
    rows = eval_rows(run0, S)
    rec = None
    if mc.enabled:
        sites = moments.find_sites(model, example=lambda: shared(probe_x[:2]))
        rec = moments.SiteRecorder(model, sites, seeds=S, copy=not built[0].builtin)
    per_seed: list[tuple[list, list]] = [([], []) for _ in runs]

    def probe(epoch: int, step: int) -> None:
        model.eval()
        with torch.no_grad(), rec.recording(epoch=epoch, step=step, source="probe"):
            shared(probe_x)

    def flush_moments() -> None:
        for mine, new in zip(per_seed, rec.seed_rows(mc.per_channel), strict=True):
            mine[0].extend(new[0])
            mine[1].extend(new[1])

    step = 0
    stopped = [0] * S                 # epoch at which a seed diverged (0: not diverged)
    diverged_step = [-1] * S
    epochs_completed = [0] * S
    curves: list[list[dict]] = [[] for _ in runs]
    final: list[dict[str, Any]] = [{} for _ in runs]
    first_bad = torch.full((S,), -1, dtype=torch.int64, device=device)
    step_t = torch.zeros((), dtype=torch.int64, device=device)  # the step, on the device: no host copy
    with _global_rng(derive_seed(run0.seed, "dropout"), device) if S == 1 else contextlib.nullcontext():
        if rec is not None:
            probe(0, 0)
        for epoch in range(1, tc.epochs + 1):
            idx = []
            for i in range(S):
                perm = data.epoch_order(n_train, order_gens[i])[: steps_per_epoch * tc.batch_size]
                if not stopped[i]:  # a diverged seed draws no order after the epoch it diverged in
                    order_hashes[i].update(perm.numpy().astype("<i8").tobytes())
                idx.append(perm.view(steps_per_epoch, tc.batch_size))
            # [steps, B, S]: x_train[batches[i]] is [B, S, ...]; one seed: [steps, B] and [B, ...]
            batches = (torch.stack(idx, dim=2) if S > 1 else idx[0]).to(device)
            if augment:  # each seed's crops and flips, drawn step by step as data.augment draws them
                drawn = [[data.draw_augment(aug_gens[i], tc.batch_size, padding=run0.data.crop_padding)
                          for _ in range(steps_per_epoch)] for i in range(S)]
                offs = torch.stack([torch.stack([d[k][0] for d in drawn], dim=-1)
                                    for k in range(steps_per_epoch)]).to(device)    # [steps, 2, B, S]
                flips = torch.stack([torch.stack([d[k][1] for d in drawn], dim=-1)
                                     for k in range(steps_per_epoch)]).to(device)   # [steps, B, S]
            model.train()
            loss_sum = torch.zeros(S, dtype=torch.float64, device=device)
            correct = torch.zeros(S, dtype=torch.int64, device=device)
            for i in range(steps_per_epoch):
                b = batches[i]                                   # [B, S]
                xb, yb = dd.x_train[b], dd.y_train[b]            # [B, S, C, ...], [B, S]
                if augment:
                    xb = data.augment_drawn(xb.reshape(-1, *xb.shape[-3:]), offs[i].reshape(2, -1),
                                            flips[i].reshape(-1), padding=run0.data.crop_padding,
                                            flip=run0.data.flip).view(xb.shape)
                if S > 1:
                    xb = xb.flatten(1, 2)                        # packed [B, S*C, ...]
                if rec is not None and mc.every and step % mc.every == 0:
                    with rec.recording(epoch=epoch, step=step, source="train"):
                        out = logits(xb)
                else:
                    out = logits(xb, fast=True)
                per, total = seed_losses(out, yb)
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
                sched.step()
                per = per.detach()
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(per), step_t, first_bad)
                step_t += 1
                loss_sum += per.double()
                correct += (out.detach().argmax(-1) == yb).sum(0)
                step += 1

            # --- once per epoch: evaluate (the probe rides on it), then the single host read ---------
            model.eval()
            ride = None
            if rec is not None and (mc.probe_size <= rows or n_test <= rows):
                ride = rec.recording(rows=mc.probe_size, epoch=epoch, step=step, source="probe")
            test = evaluate(shared, dd.x_test, dd.y_test, rows, S, first_batch=ride, per_example=True)
            val = evaluate(shared, dd.x_val, dd.y_val, rows, S) if n_val else None
            if rec is not None and ride is None:
                probe(epoch, step)
            parts = [first_bad.double(), loss_sum, correct.double(), test.loss, test.correct.double()]
            if val is not None:
                parts += [val.loss, val.correct.double()]
            host = torch.cat(parts).cpu().tolist()
            bad, l_sum, corr, t_loss, t_corr, *v = (host[k * S:(k + 1) * S] for k in range(len(parts)))
            if rec is not None and rec.state_bytes > MOMENT_STATE_BYTES:
                flush_moments()
            lr = opt.param_groups[0]["lr"]
            now = time.perf_counter() - t_start
            examples = None
            for i in range(S):
                if stopped[i]:
                    continue  # stopped at the end of the epoch it diverged in
                r = {"train_loss": l_sum[i] / steps_per_epoch,
                     "train_acc": corr[i] / (steps_per_epoch * tc.batch_size),
                     "test_loss": t_loss[i] / n_test, "test_acc": t_corr[i] / n_test,
                     "test_correct": int(t_corr[i]),
                     "val_loss": v[0][i] / n_val if n_val else math.nan,
                     "val_acc": v[1][i] / n_val if n_val else math.nan,
                     "val_correct": int(v[1][i]) if n_val else None}
                epochs_completed[i] = epoch
                if bad[i] >= 0:
                    stopped[i], diverged_step[i] = epoch, int(bad[i])
                    # A diverged model's predictions mean nothing: its metrics are NaN, the curve shows why.
                    r.update(test_loss=math.nan, test_acc=math.nan, test_correct=None, val_loss=math.nan,
                             val_acc=math.nan, val_correct=None)
                    r["test_correct_bits"] = None
                elif epoch == tc.epochs:
                    if examples is None:
                        examples = test.examples.cpu().numpy()
                    r["test_correct_bits"] = np.packbits(examples[:, i], bitorder="little").tobytes()
                curves[i].append({"epoch": epoch, "step": step, "lr": lr,
                                  **{k: r[k] for k in ("train_loss", "train_acc", "test_loss", "test_acc",
                                                       "val_loss", "val_acc")}, "wall_time_s": now})
                final[i] = r
            if all(stopped):
                break
    if rec is not None:
        flush_moments()

    # --- rows -------------------------------------------------------------------------------------------
    data_hash = data.fingerprint(ds)
    wall = time.perf_counter() - t_start
    common = {"device": device_name(device), "hostname": socket.gethostname(), "git_commit": git_commit,
              **versions(), **cpu.state(), **_data_source(run0.dataset)}
    outs = []
    for i, run in enumerate(runs):
        run_id = run.run_id
        mdl = run.model
        row = {
            "run_id": run_id, "sweep": run.sweep, "seed": run.seed, "dataset": run.dataset,
            "arch": mdl.arch, "placement": mdl.placement,
            **({} if mdl.is_factory else {"activation": mdl.activation}),
            **{k: v for k, v in run.factor_values().items() if k not in ("arch", "placement", "activation")},
            **final[i], "n_test": n_test, "n_val": n_val,
            "diverged": bool(stopped[i]), "diverged_step": diverged_step[i],
            "epochs_completed": epochs_completed[i], "steps": epochs_completed[i] * steps_per_epoch,
            "n_params": n_params, "init_hash": built[i].init_hash,
            "order_hash": order_hashes[i].hexdigest()[:16], "data_hash": data_hash,
            "wall_time_s": wall, **common,
        }
        if mdl.is_factory:
            row.update(model_sha256=built[i].source["sha256"], model_git_commit=built[i].source["git_commit"])
        moment_rows, channel_rows = per_seed[i]
        if stopped[i]:  # rows recorded after the epoch the seed diverged in belong to no epoch of its run
            last = stopped[i]
            moment_rows = [m for m in moment_rows if m["epoch"] <= last]
            channel_rows = [m for m in channel_rows if m["epoch"] <= last]
        for table in (curves[i], moment_rows, channel_rows):
            for r in table:
                r["run_id"] = run_id
        outs.append(RunOutput(row, curves[i], moment_rows, channel_rows))
    return outs


# ---------------------------------------------------------------------------------------------------
# What the sweep calls


def group_by_arm(runs: Sequence[RunConfig]) -> list[list[RunConfig]]:
    """Runs grouped by everything but the seed, in order of first appearance."""
    groups: dict[str, list[RunConfig]] = {}
    for r in runs:
        groups.setdefault(_arm_key(r), []).append(r)
    return list(groups.values())


def stacks_of(runs: Sequence[RunConfig], max_stack: int = 0) -> list[list[RunConfig]]:
    """The runs grouped by arm (:func:`group_by_arm`), each arm cut into stacks of at most ``max_stack``
    seeds (0: no cap); a model factory's runs one by one (they are not stacked)."""
    out = []
    for group in group_by_arm(runs):
        cap = 1 if group[0].model.is_factory else (max_stack or len(group))
        out += [group[j:j + cap] for j in range(0, len(group), cap)]
    return out


def train_runs(runs: Sequence[RunConfig], device: str | torch.device = "cpu", *, stack: bool = True,
               max_stack: int = 0, git_commit: str = "", precision: str = "fp32",
               deterministic: bool = False, compile: bool = False) -> list[RunOutput]:
    """Train ``runs``: the seeds of each arm as stacks (:func:`stacks_of`) or each alone (``stack=False``).

    Returns one :class:`RunOutput` per run in the order of ``runs``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    if max_stack < 0:
        raise ValueError(f"max_stack: expected an integer >= 0 (0 = no cap), got {max_stack!r}")
    by_id: dict[int, RunOutput] = {}
    for chunk in stacks_of(runs, max_stack) if stack else [[r] for r in runs]:
        outs = train_stack(chunk, device=device, git_commit=git_commit, precision=precision,
                           deterministic=deterministic, compile=compile)
        for r, o in zip(chunk, outs, strict=True):
            by_id[id(r)] = o
    return [by_id[id(r)] for r in runs]
