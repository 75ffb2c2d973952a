"""Many seeds of one arm trained as one wide model: the same rows as :func:`bnstats.train.train`, faster.

Small models leave a chip (and a CPU core) mostly idle: the cost of a step is launching its kernels,
not computing them. :func:`train_stack` trains S runs that differ only in their seed as one model whose
every layer is S layers side by side, so one step launches the kernels of one run and does the work of S.

Layout: activations are *packed*, ``[N, S*C, *spatial]`` with seed-major channels (seed ``s`` owns
channels ``s*C .. s*C+C-1``). Then

- a conv is one grouped conv (``groups = S × groups``), weights of the seeds concatenated;
- a linear layer is one ``baddbmm`` over ``[S, N, C]`` (or, when every seed sees the same input,
  as in evaluation and probes, one plain ``linear`` with the weights concatenated);
- batch norm over ``S*C`` channels *is* per-seed batch norm (its statistics are per channel);
  layer/group norm become group norm with ``S ×`` the groups;
- activations, pooling and flattening act per channel (flattening ``[N, S*C, L]`` gives each seed's
  ``C*L`` features in the order the single model flattens them).

No op mixes seeds, and the loss is the sum of the seeds' mean losses, so every seed gets exactly its
own gradient; SGD/Adam are elementwise, so one optimizer over the stacked tensors is S optimizers.
A seed that diverges (non-finite loss) poisons only its own slice: it is recorded as diverged at its
step, its rows stop where :func:`train.train` stops them, and the other seeds go on.

What stays per seed, drawn exactly as :func:`train.train` draws it: initial weights
(``models.build`` + ``models.init_parameters`` per seed, then stacked: same ``init_hash``), the batch
order (``data.epoch_order`` with the seed's order generator: same ``order_hash``), the crops and
flips (the seed's aug generator, drawn per step in train's order, moved to the device once per
epoch) and dropout masks (the seed's dropout generator, drawn with the single model's shape).
The numbers agree with separate ``train.train`` runs up to float rounding (different kernels sum in
a different order): ``tests/test_engine.py`` checks losses, accuracies and moments.

Inside the loop nothing is read on the host: losses, accuracies, divergence steps and moment
tensors stay on the device and are read once per epoch.

Runtime options (a sweep's ``[engine]`` section; recorded in each run row, not part of ``run_id``):
``precision`` (``"fp32"``: float32, TF32 off on CUDA (:func:`train.exact_fp32`); ``"bf16"``: autocast on
CUDA, norm layers in fp32), ``deterministic`` (``torch.use_deterministic_algorithms``,
``CUBLAS_WORKSPACE_CONFIG``, no cuDNN benchmark) and ``compile`` (``torch.compile`` of the stacked
model; CUDA only, off by default: +30-40% images/s on CNNs for 10-30 s of compilation per stack).
On GPUs the convs of a stack run as one grouped conv (``GPU_CONV_IMPL``): on an H100 it beat S plain
convs and the mixed rule (``benchmarks/README.md``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu, data, models
from . import train as training
from .config import RunConfig, derive_seed
from .train import (
    RunOutput,
    SiteRecorder,
    device_name,
    eval_rows,
    exact_fp32,
    make_optimisation,
    probe_in_evaluation,
    versions,
)

PRECISIONS = ("fp32", "bf16")
CONV_IMPLS = ("grouped", "split", "auto")
# How stacked convs run on a GPU: "auto" = S plain convs where a seed's conv has >= SPLIT_MIN_CHANNELS
# input channels, one grouped conv otherwise (see benchmarks/README.md for the measurements).
GPU_CONV_IMPL = "grouped"
SPLIT_MIN_CHANNELS = 32


# ---------------------------------------------------------------------------------------------------
# Stacked layers


class StackLinear(nn.Module):
    """S linear layers side by side on packed inputs ``[N, S*Cin]`` -> ``[N, S*Cout]``."""

    def __init__(self, layers: Sequence[nn.Linear]):
        super().__init__()
        self.seeds = len(layers)
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in layers]))  # [S, Cout, Cin]
        has_bias = layers[0].bias is not None
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in layers])) if has_bias else None
        self.shared_input = False  # set by StackedNet for the first op when all seeds see one input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, cout, cin = self.weight.shape
        n = x.shape[0]
        if self.shared_input:  # [N, Cin] for every seed: one matmul against all the seeds' weights
            bias = None if self.bias is None else self.bias.reshape(s * cout)
            return F.linear(x, self.weight.reshape(s * cout, cin), bias)
        xs = x.view(n, s, cin).transpose(0, 1)                      # [S, N, Cin] (a view)
        wt = self.weight.transpose(1, 2)                            # [S, Cin, Cout]
        y = torch.bmm(xs, wt) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(1), xs, wt)
        return y.transpose(0, 1).reshape(n, s * cout)               # packed [N, S*Cout]


class StackConv(nn.Module):
    """S convs (1-D or 2-D) side by side on packed inputs ``[N, S*Cin, ...]`` -> ``[N, S*Cout, ...]``.

    ``impl``: ``"grouped"`` runs one grouped conv (``groups = S × groups``; fast on GPUs), ``"split"``
    runs S convs on the seeds' channel slices and concatenates them (faster on CPU, where oneDNN's
    grouped convs are slower than S plain ones). With ``shared_input`` (every seed sees the same
    ``[N, Cin, ...]``), one plain conv against all the seeds' weights.
    """

    def __init__(self, convs: Sequence[nn.Module], impl: str = "grouped"):
        super().__init__()
        c = convs[0]
        if impl == "auto":  # see GPU_CONV_IMPL
            impl = "split" if c.in_channels // c.groups >= SPLIT_MIN_CHANNELS else "grouped"
        self.seeds, self.impl = len(convs), impl
        self.fn = F.conv1d if isinstance(c, nn.Conv1d) else F.conv2d
        self.stride, self.padding, self.dilation, self.groups = c.stride, c.padding, c.dilation, c.groups
        self.weight = nn.Parameter(torch.cat([m.weight.detach() for m in convs]))     # [S*Cout, Cin/g, *k]
        self.bias = nn.Parameter(torch.cat([m.bias.detach() for m in convs])) if c.bias is not None else None
        self.shared_input = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, w, b = self.seeds, self.weight, self.bias
        args = (self.stride, self.padding, self.dilation)
        if self.shared_input:
            return self.fn(x, w, b, *args, self.groups)
        if self.impl == "grouped" or s == 1:
            return self.fn(x, w, b, *args, self.groups * s)
        bs = b.chunk(s) if b is not None else [None] * s
        return torch.cat([self.fn(xi, wi, bi, *args, self.groups)
                          for xi, wi, bi in zip(x.chunk(s, 1), w.chunk(s), bs, strict=True)], 1)


def _stack_norm(norms: Sequence[nn.Module], spatial_dims: int) -> nn.Module:
    n0, s = norms[0], len(norms)
    if isinstance(n0, nn.modules.batchnorm._BatchNorm):
        out = type(n0)(n0.num_features * s, eps=n0.eps, momentum=n0.momentum, affine=n0.affine,
                       track_running_stats=n0.track_running_stats)
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                if getattr(out, name) is not None:
                    getattr(out, name).copy_(torch.cat([getattr(m, name) for m in norms]))
            if out.num_batches_tracked is not None:
                out.num_batches_tracked.copy_(n0.num_batches_tracked)
        return out
    if isinstance(n0, nn.GroupNorm):
        groups, channels, affine, eps = n0.num_groups, n0.num_channels, n0.affine, n0.eps
    elif isinstance(n0, nn.LayerNorm):  # features [N, C] only (models use GroupNorm(1, C) on maps)
        groups, channels, affine, eps = 1, n0.normalized_shape[0], n0.elementwise_affine, n0.eps
    else:
        raise TypeError(f"engine: cannot stack norm {type(n0).__name__}")
    out = nn.GroupNorm(groups * s, channels * s, eps=eps, affine=affine)
    if affine:
        with torch.no_grad():
            out.weight.copy_(torch.cat([m.weight for m in norms]))
            out.bias.copy_(torch.cat([m.bias for m in norms]))
    return out


class StackDropout(nn.Module):
    """Dropout with each seed's mask drawn from its own generator, in the single model's shape."""

    def __init__(self, p: float, generators: Sequence[torch.Generator]):
        super().__init__()
        self.p, self.generators = p, list(generators)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        s = len(self.generators)
        shape = (x.shape[0], x.shape[1] // s, *x.shape[2:])
        keep = torch.stack([torch.rand(shape, generator=g, device=x.device, dtype=x.dtype) for g in
                            self.generators], dim=1).reshape(x.shape) >= self.p
        return x * keep / (1 - self.p)


class StackedNet(models.Net):
    """S copies of a :class:`models.Net` (same architecture, own weights) as one packed model.

    ``forward(x, shared=False)``: ``x`` packed ``[N, S*C, ...]`` (each seed its own batch) or, with
    ``shared=True``, ``[N, C, ...]`` given to every seed. Returns logits ``[N, S, K]``.
    Blocks are :class:`models.Block` (same forward, same sites), so ``models.record`` works; sites
    report packed tensors, which :class:`StackRecorder` unpacks to ``[S, N, C, ...]``.
    """

    def __init__(self, nets: Sequence[models.Net], drop_gens: Sequence[torch.Generator] | None = None,
                 *, conv_impl: str = "grouped"):
        s = len(nets)
        body: list[nn.Module] = []
        for layers in zip(*(n.body for n in nets), strict=True):
            m = layers[0]
            if isinstance(m, models.Block):
                body.append(self._stack_block(layers, drop_gens, conv_impl))
            elif isinstance(m, nn.Flatten | nn.MaxPool1d | nn.MaxPool2d | nn.AdaptiveAvgPool1d
                            | nn.AdaptiveAvgPool2d | nn.AvgPool1d | nn.AvgPool2d | nn.Identity):
                body.append(m)  # acts per channel (flatten: per seed, see the module docstring)
            else:
                raise TypeError(f"engine: cannot stack {type(m).__name__}")
        head_p = nets[0].head_dropout.p if nets[0].head_dropout is not None else 0.0
        super().__init__(nn.Sequential(*body), StackLinear([n.head for n in nets]), head_dropout=head_p)
        if head_p > 0:
            self.head_dropout = StackDropout(head_p, drop_gens or [])
        self.seeds = s
        blk = next(b for b in self.body if isinstance(b, models.Block))
        self.__dict__["first"] = blk.op  # a plain reference, not a second registration of the module

    @staticmethod
    def _stack_block(blocks: Sequence[models.Block], drop_gens, conv_impl: str) -> models.Block:
        b0 = blocks[0]
        op = (StackLinear([b.op for b in blocks]) if isinstance(b0.op, nn.Linear)
              else StackConv([b.op for b in blocks], conv_impl))
        spatial = 0 if isinstance(b0.op, nn.Linear) else (1 if isinstance(b0.op, nn.Conv1d) else 2)
        norm = _stack_norm([b.norm for b in blocks], spatial) if b0.norm is not None else None
        out = models.Block(op, norm, b0.act, b0.placement, b0.index, pool=b0.pool, pool_first=b0.pool_first)
        if b0.dropout is not None:
            out.dropout = StackDropout(b0.dropout.p, drop_gens or [])
        return out

    def forward(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        if shared and x.dim() > 2 and isinstance(self.first, StackLinear):
            x = x.flatten(1)  # the MLP's Flatten, done before the shared matmul
        self.first.shared_input = shared
        try:
            out = super().forward(x)
        finally:
            self.first.shared_input = False
        return out.view(out.shape[0], self.seeds, -1)


def stack_models(nets: Sequence[models.Net], drop_gens: Sequence[torch.Generator] | None = None, *,
                 conv_impl: str = "grouped") -> StackedNet:
    """One :class:`StackedNet` holding copies of the weights and buffers of ``nets`` (same architecture)."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl: expected one of {', '.join(map(repr, CONV_IMPLS))}, got {conv_impl!r}")
    return StackedNet(nets, drop_gens, conv_impl=conv_impl)


@torch.no_grad()
def unstack_state(stacked: StackedNet, seed_index: int, like: models.Net) -> dict[str, torch.Tensor]:
    """The state dict of seed ``seed_index`` in the layout of the single model ``like`` (for checks)."""
    s = stacked.seeds
    out: dict[str, torch.Tensor] = {}
    single = like.state_dict()
    for (name, t), (sname, st) in zip(stacked.state_dict().items(), single.items(), strict=True):
        if name.endswith("num_batches_tracked"):
            out[sname] = t.clone()
        elif st.shape == t.shape[1:] and t.shape[0] == s:            # StackLinear: [S, ...]
            out[sname] = t[seed_index].clone()
        else:                                                        # seed-major along dim 0
            k = t.shape[0] // s
            out[sname] = t[seed_index * k:(seed_index + 1) * k].reshape(st.shape).clone()
    return out


# ---------------------------------------------------------------------------------------------------
# Moments of stacked sites


class StackRecorder(SiteRecorder):
    """:class:`train.SiteRecorder` for packed sites: reduces ``[S, N, C, ...]`` views, rows per seed."""

    channel_dim = 2  # [S, N, C, ...]: one group per seed

    def __init__(self, seeds: int) -> None:
        super().__init__()
        self.seeds = seeds

    def _view(self, x: torch.Tensor) -> torch.Tensor:
        n, sc = x.shape[:2]  # seeds packed along the channels, seed-major
        return x.view(n, self.seeds, sc // self.seeds, *x.shape[2:]).transpose(0, 1)

    def rows_per_seed(self, per_channel: bool) -> list[tuple[list[dict], list[dict]]]:
        """For each seed, its (summary rows, per-channel rows), in the order train.train writes them."""
        return self.seed_rows(per_channel, self.seeds)


# ---------------------------------------------------------------------------------------------------
# Augmentation with pre-drawn random numbers


def draw_augment(gen: torch.Generator, batch: int, *, padding: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The random numbers :func:`data.augment` draws for one batch, in its order: offsets, flips."""
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=gen)
    flips = torch.rand(batch, generator=gen) < 0.5
    return offsets, flips


def augment_drawn(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, *, padding: int,
                  flip: bool) -> torch.Tensor:
    """:func:`data.augment` of ``x [B, C, H, W]`` with its random numbers given (on ``x``'s device)."""
    b, c, h, w = x.shape
    dev = x.device
    if padding:
        xp = F.pad(x, (padding, padding, padding, padding))
        rows = offsets[0][:, None] + torch.arange(h, device=dev)[None, :]
        cols = offsets[1][:, None] + torch.arange(w, device=dev)[None, :]
        xp = xp.gather(2, rows[:, None, :, None].expand(b, c, h, xp.shape[3]))
        x = xp.gather(3, cols[:, None, None, :].expand(b, c, h, w))
    if flip:
        x = torch.where(flips[:, None, None, None], x.flip(-1), x)
    return x


# ---------------------------------------------------------------------------------------------------
# Runtime options


@contextlib.contextmanager
def deterministic_mode(enabled: bool, device: torch.device):
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


def _arm_key(run: RunConfig) -> str:
    d = run.to_dict()
    d.pop("seed")
    return repr(sorted(d.items()))


# ---------------------------------------------------------------------------------------------------
# The stacked training loop (mirrors train.train step for step)


def train_stack(runs: Sequence[RunConfig], *, device: str | torch.device = "cpu", git_commit: str = "",
                precision: str = "fp32", deterministic: bool = False, compile: bool = False
                ) -> list[RunOutput]:
    """Train runs that differ only in their seed as one stacked model; one :class:`RunOutput` per run.

    The rows have the keys and meaning of :func:`train.train`'s (same ``init_hash`` and ``order_hash``;
    metrics equal up to float rounding), plus ``engine = "stack"``, ``stack_size``, ``precision``,
    ``deterministic`` and ``compiled`` in each run row. ``wall_time_s`` is the stack's wall time (the
    runs shared the device for all of it).
    """
    device = torch.device(device)
    _check_options(runs, precision, device)
    with deterministic_mode(deterministic, device), (
            exact_fp32(device) if precision == "fp32" else contextlib.nullcontext()):
        outs = _train_stack(list(runs), device, git_commit, precision, compile and device.type == "cuda")
    for o in outs:
        o.run.update(engine="stack", stack_size=len(runs), precision=precision,
                     deterministic=deterministic, compiled=compile and device.type == "cuda")
    return outs


def _train_stack(runs: list[RunConfig], device: torch.device, git_commit: str, precision: str,
                 compile: bool) -> list[RunOutput]:
    t_start = time.perf_counter()
    run0 = runs[0]
    S = len(runs)
    ds = data.load(run0.dataset, run0.data.root)
    dd = data.to_device(ds, device)
    tc, mc = run0.train, run0.moments

    # --- per-seed models, their pairing certificates, then one stacked model --------------------
    singles = []
    init_hashes = []
    for r in runs:
        m = models.build(r.model, dd.input_shape, dd.num_classes)
        models.init_parameters(m, r.seed)
        init_hashes.append(models.init_hash(m))
        singles.append(m)
    n_params = sum(p.numel() for p in singles[0].parameters())
    drop_gens = [torch.Generator(device=device).manual_seed(derive_seed(r.seed, "dropout")) for r in runs]
    # grouped convs on GPUs; on CPU S plain convs are faster than oneDNN's grouped ones (benchmarks/)
    model = stack_models(singles, drop_gens, conv_impl=GPU_CONV_IMPL if device.type == "cuda" else "split").to(device)
    del singles
    order_gens = [torch.Generator().manual_seed(derive_seed(r.seed, "order")) for r in runs]
    aug_gens = [torch.Generator().manual_seed(derive_seed(r.seed, "aug")) for r in runs]
    order_hashes = [hashlib.sha256() for _ in runs]
    augment = run0.data.augment and dd.is_image

    n_train = len(dd.x_train)
    steps_per_epoch, opt, sched = make_optimisation(model, tc, n_train)

    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" and device.type == "cuda"
                else contextlib.nullcontext())
    forward = torch.compile(model) if compile else model

    probe_x = dd.x_test[: mc.probe_size]
    rows = eval_rows(run0, S)
    moments: list[list[dict]] = [[] for _ in runs]
    moments_channel: list[list[dict]] = [[] for _ in runs]
    curves: list[list[dict]] = [[] for _ in runs]
    rec = StackRecorder(S)

    def probe(epoch: int, step: int) -> None:
        model.eval()
        with torch.no_grad(), autocast, rec.recording(model, epoch=epoch, step=step, source="probe"):
            model(probe_x, shared=True)

    if mc.enabled:
        probe(0, 0)

    step = 0
    stopped = [0] * S                 # epoch at which a seed diverged (0: not diverged)
    diverged_step = [-1] * S
    final: list[dict[str, float]] = [{} for _ in runs]
    epochs_completed = [0] * S
    first_bad = torch.full((S,), -1, dtype=torch.int64, device=device)
    step_t = torch.zeros((), dtype=torch.int64, device=device)
    for epoch in range(1, tc.epochs + 1):
        idx = []
        for i in range(S):
            perm = data.epoch_order(n_train, order_gens[i])[: steps_per_epoch * tc.batch_size]
            if not stopped[i]:  # train.train draws no order after the epoch a seed diverged in
                order_hashes[i].update(perm.numpy().astype("<i8").tobytes())
            idx.append(perm.view(steps_per_epoch, tc.batch_size))
        # [steps, B, S]: batch-major, so x_train[batches[i]] is [B, S, ...] and packs by a reshape
        batches = torch.stack(idx, dim=2).to(device)
        if augment:
            drawn = [[draw_augment(aug_gens[i], tc.batch_size, padding=run0.data.crop_padding)
                      for _ in range(steps_per_epoch)] for i in range(S)]
            # [steps, 2, B, S] offsets and [steps, B, S] flips, on the device once per epoch
            offs = torch.stack([torch.stack([d[k][0] for d in drawn], dim=-1) for k in range(steps_per_epoch)])
            flips = torch.stack([torch.stack([d[k][1] for d in drawn], dim=-1) for k in range(steps_per_epoch)])
            offs, flips = offs.to(device), flips.to(device)
        model.train()
        loss_sum = torch.zeros(S, dtype=torch.float64, device=device)
        correct = torch.zeros(S, dtype=torch.int64, device=device)
        for i in range(steps_per_epoch):
            b = batches[i]                                   # [B, S]
            xb, yb = dd.x_train[b], dd.y_train[b]            # [B, S, C, ...], [B, S]
            if augment:
                xb = augment_drawn(xb.flatten(0, 1), offs[i].flatten(1, 2), flips[i].flatten(),
                                   padding=run0.data.crop_padding, flip=run0.data.flip).view(xb.shape)
            xb = xb.flatten(1, 2)                            # packed [B, S*C, ...]
            with autocast:
                if mc.enabled and mc.every and step % mc.every == 0:
                    with rec.recording(model, epoch=epoch, step=step, source="train"):
                        out = model(xb)
                else:
                    out = forward(xb)
            B, _, K = out.shape
            per = F.cross_entropy(out.float().reshape(B * S, K), yb.reshape(B * S),
                                  label_smoothing=tc.label_smoothing, reduction="none").view(B, S).mean(0)
            opt.zero_grad(set_to_none=True)
            per.sum().backward()  # seeds share no op: each gets exactly its own gradient
            opt.step()
            sched.step()
            per = per.detach()
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(per), step_t, first_bad)
            step_t += 1
            loss_sum += per.double()
            correct += (out.detach().argmax(2) == yb).sum(0)
            step += 1

        # --- once per epoch: evaluate, probe, one host read ---------------------------------------
        ride = probe_in_evaluation(rec, model, run0, len(dd.x_test), rows, epoch=epoch, step=step)
        t_loss, t_acc = evaluate_stack(model, dd.x_test, dd.y_test, rows, autocast, first_batch=ride)
        if mc.enabled:
            if ride is None:
                probe(epoch, step)
            per_seed = rec.rows_per_seed(mc.per_channel)
        host = torch.cat([first_bad.double(), loss_sum, correct.double(), t_loss, t_acc]).cpu().tolist()
        bad, l_sum, corr, tl, ta = (host[k * S:(k + 1) * S] for k in range(5))
        lr = opt.param_groups[0]["lr"]
        now = time.perf_counter() - t_start
        for i in range(S):
            if stopped[i]:
                continue  # train.train stopped this seed at the end of the epoch it diverged in
            if mc.enabled:
                moments[i].extend(per_seed[i][0])
                moments_channel[i].extend(per_seed[i][1])
            train_loss = l_sum[i] / steps_per_epoch
            train_acc = corr[i] / (steps_per_epoch * tc.batch_size)
            test_loss, test_acc = tl[i], ta[i]
            epochs_completed[i] = epoch
            if bad[i] >= 0:
                stopped[i], diverged_step[i] = epoch, int(bad[i])
                test_loss = test_acc = float("nan")
            curves[i].append({"epoch": epoch, "step": step, "lr": lr, "train_loss": train_loss,
                              "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc,
                              "wall_time_s": now})
            final[i] = {"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
                        "test_acc": test_acc}
        if all(stopped):
            break

    data_hash = data.fingerprint(ds)
    wall = time.perf_counter() - t_start
    outs = []
    for i, run in enumerate(runs):
        run_id = run.run_id
        row = {
            "run_id": run_id, "sweep": run.sweep, "seed": run.seed, "dataset": run.dataset,
            "arch": run.model.arch, "placement": run.model.placement, "activation": run.model.activation,
            **{k: v for k, v in run.factor_values().items() if k not in ("arch", "placement", "activation")},
            "test_acc": final[i]["test_acc"], "test_loss": final[i]["test_loss"],
            "train_loss": final[i]["train_loss"], "train_acc": final[i]["train_acc"],
            "diverged": bool(stopped[i]), "diverged_step": diverged_step[i],
            "epochs_completed": epochs_completed[i], "steps": epochs_completed[i] * steps_per_epoch,
            "n_params": n_params, "init_hash": init_hashes[i], "order_hash": order_hashes[i].hexdigest()[:16],
            "data_hash": data_hash, "wall_time_s": wall, "device": device_name(device),
            "hostname": _hostname(), "git_commit": git_commit, **versions(), **cpu.state(),
        }
        for table in (curves[i], moments[i], moments_channel[i]):
            for r in table:
                r["run_id"] = run_id
        outs.append(RunOutput(row, curves[i], moments[i], moments_channel[i]))
    return outs


def _hostname() -> str:
    import socket

    return socket.gethostname()


@torch.no_grad()
def evaluate_stack(model: StackedNet, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                   autocast: Any = None, first_batch: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-seed mean cross-entropy and accuracy on a shared ``x, y``: two float64 ``[S]`` device tensors.

    ``first_batch``: entered around the first batch's forward pass (the probe, as in ``train.evaluate``).
    """
    model.eval()
    S = model.seeds
    loss = torch.zeros(S, dtype=torch.float64, device=x.device)
    correct = torch.zeros(S, dtype=torch.int64, device=x.device)
    for i in range(0, len(x), batch_size):
        probe = first_batch if i == 0 and first_batch is not None else contextlib.nullcontext()
        with autocast or contextlib.nullcontext(), probe:
            out = model(x[i:i + batch_size], shared=True)       # [n, S, K]
        yb = y[i:i + batch_size]
        n, _, K = out.shape
        ce = F.cross_entropy(out.float().reshape(n * S, K), yb.repeat_interleave(S), reduction="none")
        loss += ce.view(n, S).sum(0).double()
        correct += (out.argmax(2) == yb[:, None]).sum(0)
    return loss / len(x), correct.double() / len(x)


# ---------------------------------------------------------------------------------------------------
# Integration: what the sweep calls


def group_by_arm(runs: Sequence[RunConfig]) -> list[list[RunConfig]]:
    """Runs grouped by everything but the seed, in order of first appearance."""
    groups: dict[str, list[RunConfig]] = {}
    for r in runs:
        groups.setdefault(_arm_key(r), []).append(r)
    return list(groups.values())


def stacks_of(runs: Sequence[RunConfig], max_stack: int = 0) -> list[list[RunConfig]]:
    """The runs grouped by arm (:func:`group_by_arm`), each arm cut into stacks of at most ``max_stack``
    seeds (0: no cap)."""
    out = []
    for group in group_by_arm(runs):
        cap = max_stack or len(group)
        out += [group[j:j + cap] for j in range(0, len(group), cap)]
    return out


def train_runs(runs: Sequence[RunConfig], device: str | torch.device = "cpu", *, stack: bool = True,
               max_stack: int = 0, git_commit: str = "", precision: str = "fp32",
               deterministic: bool = False, compile: bool = False) -> list[RunOutput]:
    """Train ``runs``: seeds of one arm stacked (:func:`train_stack`) or each alone (:func:`train.train`).

    ``max_stack`` caps the seeds per stack (0: no cap). Returns one :class:`RunOutput` per run in the
    order of ``runs``; every run row carries ``engine`` (``"stack"`` or ``"single"``) and ``stack_size``.
    A group of one run, or ``stack=False``, goes through :func:`train.train` unchanged where that
    honours the options (fp32, not compiled; ``deterministic`` applies), else as a stack of one.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    if max_stack < 0:
        raise ValueError(f"max_stack: expected an integer >= 0 (0 = no cap), got {max_stack!r}")
    by_id: dict[int, RunOutput] = {}
    for chunk in stacks_of(runs, max_stack) if stack else [[r] for r in runs]:
        if len(chunk) > 1 or precision != "fp32" or (compile and device.type == "cuda"):
            outs = train_stack(chunk, device=device, git_commit=git_commit, precision=precision,
                               deterministic=deterministic, compile=compile)
        else:
            with deterministic_mode(deterministic, device):
                outs = [training.train(chunk[0], device=device, git_commit=git_commit)]
            outs[0].run.update(engine="single", stack_size=1, precision="fp32",
                               deterministic=deterministic, compiled=False)
        for r, o in zip(chunk, outs, strict=True):
            by_id[id(r)] = o
    return [by_id[id(r)] for r in runs]
