"""Stacking: S models of one arm (same architecture, own weights) as one wide model.

Small models leave a chip (and a CPU core) mostly idle: the cost of a step is launching its kernels,
not computing them. :func:`stack_models` turns S copies of a ``models.Net`` into a :class:`StackedNet`
whose every layer is S layers side by side, so one step launches the kernels of one run and does the
work of S. The training loop (``bnstats.train``) trains a stack of S >= 1 the same way; this module only
says how the layers stack.

Layout: activations are *packed*, ``[N, S*C, *spatial]`` with seed-major channels (seed ``s`` owns
channels ``s*C .. s*C+C-1``). Then

- a conv is one grouped conv (``groups = S × groups``), weights of the seeds concatenated;
- a linear layer is one ``baddbmm`` over ``[S, N, C]`` (or, when every seed sees the same input,
  as in evaluation and probes, one plain ``linear`` with the weights concatenated);
- batch norm over ``S*C`` channels *is* per-seed batch norm (its statistics are per channel);
  layer/group norm become group norm with ``S ×`` the groups;
- activations, pooling and flattening act per channel (flattening ``[N, S*C, L]`` gives each seed's
  ``C*L`` features in the order the single model flattens them);
- dropout draws each seed's mask from that seed's generator, in the single model's shape.

No op mixes seeds, and the loss is the sum of the seeds' mean losses, so every seed gets exactly its
own gradient; SGD/Adam are elementwise, so one optimizer over the stacked tensors is S optimizers.
Blocks stay ``models.Block`` (same sites), so moments are recorded as for one model and unpacked per
seed. Only bnstats' own architectures stack; a model factory's runs train one seed at a time.
On GPUs the convs of a stack run as one grouped conv (``GPU_CONV_IMPL``): on an H100 it beat S plain
convs and the mixed rule (``benchmarks/README.md``); on CPUs S plain convs (``"split"``) are faster.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import models

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
    Blocks are :class:`models.Block` (same forward, same sites): ``moments.find_sites`` finds them, and
    ``moments.SiteRecorder(seeds=S)`` unpacks their packed tensors to ``[S, N, C, ...]``.
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
