"""What users put in their own models: :class:`NormAct`, and :func:`place` for a model that exists.

``placement`` (see ``DESIGN.md``): ``before`` = op → norm → act (Ioffe & Szegedy 2015, §3.2),
``after`` = op → act → norm, ``none`` = op (+bias) → act.

:class:`NormAct` is the norm/activation pair of every built-in architecture (``models.Block`` is a
``NormAct`` with an op), so a user model built from it has the same placements, sites and layer order.
Its norm and its activation are each one module called exactly once per forward: forward hooks on
them see the sites ``norm_in`` / ``norm_out`` (input / output of the norm) and ``act_in`` / ``act_out``
(of the activation; a residual joins right before the activation, so ``act_in`` includes it).

:func:`place` rewrites an existing model instead (torch.fx): it traces the model, finds its
norm→activation *pairs* (:func:`pairs`) and returns a copy in which every pair follows ``placement``.
The guarantees, each checked in ``tests/test_nn.py``:

- ``place(m, "before")`` computes exactly what ``m`` computes (bitwise, same parameter names);
- parameter and buffer names of the copy are those of ``m``, less the norms that ``none`` removes,
  plus a ``bias`` on each conv/linear whose output fed a moved or removed norm;
- every activation call site is its own non-inplace module, every norm is called once, so forward
  hooks see each site once, in forward order;
- what cannot be rewritten raises one :class:`PlacementError` naming the module path and graph node,
  whatever the placement (apart from "no pair", which only ``after`` refuses), so a model that places
  in one arm of a sweep places in all of them.

References
----------
Ioffe, S., & Szegedy, C. (2015). Batch normalization: accelerating deep network training by reducing
internal covariate shift. ICML. He, K., Zhang, X., Ren, S., & Sun, J. (2016). Deep residual learning
for image recognition. CVPR (the post-activation residual block: norm → add → act).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import operator
import os
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .config import ACTIVATIONS, NORMS, PLACEMENTS

__all__ = ["NormAct", "Pair", "PlacementError", "make_activation", "make_norm", "pairs", "place"]

SITES = {"before": ("norm_in", "norm_out", "act_in", "act_out"),
         "after": ("act_in", "act_out", "norm_in", "norm_out"),
         "none": ("act_in", "act_out")}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module for a name of ``bnstats.config.ACTIVATIONS``."""
    factories: dict[str, Callable[[], nn.Module]] = {
        "relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.01), "elu": nn.ELU, "gelu": nn.GELU,
        "selu": nn.SELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "silu": nn.SiLU, "identity": nn.Identity,
    }
    if name not in factories:
        raise ValueError(f"activation: expected one of {', '.join(map(repr, ACTIVATIONS))} or an nn.Module, "
                         f"got {name!r}")
    return factories[name]()


def make_norm(kind: str, channels: int, *, spatial_dims: int, affine: bool) -> nn.Module:
    """A norm over ``channels``; ``spatial_dims``: 0 for ``[N, C]``, 1 for ``[N, C, L]``, 2 for
    ``[N, C, H, W]``, 3 for ``[N, C, D, H, W]``.

    ``batch``: BatchNorm; ``layer``: LayerNorm over the features (``spatial_dims == 0``), else
    GroupNorm with one group (normalises each example over all channels and positions);
    ``group``: GroupNorm with ``gcd(channels, 32)`` groups from 32 channels on, ``channels // 2`` below.
    """
    if kind == "batch":
        return (nn.BatchNorm1d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[spatial_dims](
            channels, affine=affine)
    if kind == "layer":
        return nn.LayerNorm(channels, elementwise_affine=affine) if spatial_dims == 0 else \
            nn.GroupNorm(1, channels, affine=affine)
    if kind == "group":
        groups = math.gcd(channels, 32 if channels >= 32 else max(1, channels // 2))
        return nn.GroupNorm(groups, channels, affine=affine)
    raise ValueError(f"model.norm: expected one of {', '.join(map(repr, NORMS))}, got {kind!r}")


# ---------------------------------------------------------------------------------------------------
# NormAct


class NormAct(nn.Module):
    """A norm and an activation in the order that ``placement`` gives.

    ``before``: norm → act; ``after``: act → norm; ``none``: act only (no norm module at all).
    ``forward(x, residual=None)`` adds ``residual`` right before the activation in every placement
    (``before``: norm → +residual → act, as in He et al. 2016's post-activation block; ``after``:
    +residual → act → norm; ``none``: +residual → act), so a residual network written with it has the
    built-in ``resnet`` block orders.

    Parameters
    ----------
    channels : int
        Channels (features) the norm normalises: dimension 1 of the input (the last one for
        ``spatial_dims=0`` with ``norm="layer"``).
    placement : {"before", "after", "none"}
    activation : str or nn.Module
        A name of ``bnstats.config.ACTIVATIONS`` or a module (its own, not shared with another pair,
        and not ``inplace``: an in-place activation would overwrite the norm output that moments read).
    norm : {"batch", "layer", "group"}
        See :func:`make_norm`.
    spatial_dims : int
        0 for ``[N, C]`` inputs, 1 for ``[N, C, L]``, 2 for ``[N, C, H, W]``, 3 for ``[N, C, D, H, W]``.
    affine : bool
        Learnable scale and shift in the norm.

    Attributes
    ----------
    norm : nn.Module or None
        The norm (``None`` for ``placement="none"``).
    act : nn.Module
    placement : str
    sites : tuple of str
        The sites this pair has, in forward order.

    Notes
    -----
    The op before the pair is the caller's; following the built-in models, give it no bias when
    ``placement="before"`` (the norm's shift replaces it) and a bias otherwise.
    """

    def __init__(self, channels: int, *, placement: str, activation: str | nn.Module, norm: str = "batch",
                 spatial_dims: int, affine: bool = True):
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"NormAct: channels must be a positive int, got {channels!r}")
        if isinstance(spatial_dims, bool) or spatial_dims not in (0, 1, 2, 3):
            raise ValueError(f"NormAct: spatial_dims must be 0, 1, 2 or 3, got {spatial_dims!r}")
        if norm not in NORMS:
            raise ValueError(f"NormAct: norm must be one of {', '.join(map(repr, NORMS))}, got {norm!r}")
        if isinstance(activation, str):
            act = make_activation(activation)
        elif isinstance(activation, nn.Module):
            act = activation
        else:
            raise TypeError(f"NormAct: activation must be one of {', '.join(map(repr, ACTIVATIONS))} or an "
                            f"nn.Module, got {type(activation).__name__}")
        _check_placement(placement, "NormAct: placement")
        normalisation = make_norm(norm, channels, spatial_dims=spatial_dims, affine=affine) \
            if placement != "none" else None
        self._init_pair(normalisation, act, placement)

    def _init_pair(self, norm: nn.Module | None, act: nn.Module, placement: str) -> None:
        """Set the pair's modules; shared by ``__init__`` and ``models.Block`` (which brings its own)."""
        _check_placement(placement, f"{type(self).__name__}: placement")
        if getattr(act, "inplace", False):
            raise ValueError(f"NormAct: activation {act!r} is in-place; it would overwrite the tensor that "
                             f"the site before it reports; pass it with inplace=False")
        # ``act`` is registered before ``norm``: the built-in models' parameter order (Block: op, act, norm).
        self.act, self.placement = act, placement
        self.norm = norm if placement != "none" else None
        if placement != "none" and norm is None:
            raise ValueError(f"NormAct: placement {placement!r} needs a norm")
        self.index: int | None = None  # position in forward order where the model numbers its pairs (Block)

    @property
    def sites(self) -> tuple[str, ...]:
        return SITES[self.placement]

    def pair(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """Norm and activation in ``placement`` order; ``residual`` joins right before the activation.

        Sites (``bnstats.moments.find_sites``): ``norm_in``/``norm_out`` are the norm module's input and
        output, ``act_in``/``act_out`` the activation's (so ``act_in`` includes the residual)."""
        if self.placement == "before":
            x = self.norm(x)
            if residual is not None:
                x = x + residual
            return self.act(x)
        if residual is not None:
            x = x + residual
        x = self.act(x)
        return self.norm(x) if self.placement == "after" else x

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return self.pair(x, residual)

    def extra_repr(self) -> str:
        return f"placement={self.placement!r}"


def _check_placement(placement: Any, what: str) -> None:
    if not isinstance(placement, str) or placement not in PLACEMENTS:
        raise ValueError(f"{what}: expected one of {', '.join(map(repr, PLACEMENTS))}, got {placement!r}")


# ---------------------------------------------------------------------------------------------------
# What place() recognises


class PlacementError(ValueError):
    """A model that :func:`place` cannot rewrite; the message names the module path and graph node."""


NORM_MODULES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
    nn.LazyBatchNorm1d, nn.LazyBatchNorm2d, nn.LazyBatchNorm3d,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.GroupNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
# ReLU6 is a Hardtanh; PReLU is left out on purpose (it has weights: one module per call site would
# change what it computes).
ACTIVATION_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.Hardtanh, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid,
    nn.Hardswish, nn.Mish,
)
OP_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
)
_FUNCTIONAL_NORMS = {
    F.batch_norm, F.instance_norm, F.layer_norm, F.group_norm, torch.batch_norm, torch.instance_norm,
    torch.layer_norm, torch.group_norm, torch.native_batch_norm, torch.native_layer_norm,
    *((F.rms_norm, torch.rms_norm) if hasattr(F, "rms_norm") else ()),
}


def _arg(node: fx.Node, pos: int, name: str, default: Any) -> Any:
    """Argument ``name`` of a call node, given positionally at ``pos`` or by keyword."""
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)


def _hardtanh(node: fx.Node, pos: int = 1) -> nn.Module:
    lo, hi = _arg(node, pos, "min_val", -1.0), _arg(node, pos + 1, "max_val", 1.0)
    return nn.ReLU6() if (lo, hi) == (0.0, 6.0) else nn.Hardtanh(lo, hi)


# call_function targets: (module maker, base name of the new module, in-place?). The maker reads the
# node's constant arguments (``negative_slope``, ``alpha``, ``approximate``...).
_FUNCTIONAL_ACTS: dict[Any, tuple[Callable[[fx.Node], nn.Module], str, Callable[[fx.Node], bool]]] = {}


def _register(targets: Iterable[Any], make: Callable[[fx.Node], nn.Module], name: str, inplace: Any) -> None:
    flag = inplace if callable(inplace) else (lambda n, v=inplace: v)
    for t in targets:
        _FUNCTIONAL_ACTS[t] = (make, name, flag)


def _inplace_kw(pos: int) -> Callable[[fx.Node], bool]:
    return lambda n: bool(_arg(n, pos, "inplace", False))


_register([F.relu], lambda n: nn.ReLU(), "relu", _inplace_kw(1))
_register([torch.relu], lambda n: nn.ReLU(), "relu", False)
_register([torch.relu_], lambda n: nn.ReLU(), "relu", True)   # F.relu_ is torch.relu_
_register([F.relu6], lambda n: nn.ReLU6(), "relu6", _inplace_kw(1))
_register([F.hardtanh], _hardtanh, "hardtanh", _inplace_kw(3))
_register([F.hardtanh_], _hardtanh, "hardtanh", True)
_register([F.leaky_relu], lambda n: nn.LeakyReLU(_arg(n, 1, "negative_slope", 0.01)), "leaky_relu",
          _inplace_kw(2))
_register([F.leaky_relu_], lambda n: nn.LeakyReLU(_arg(n, 1, "negative_slope", 0.01)), "leaky_relu", True)
_register([F.elu], lambda n: nn.ELU(_arg(n, 1, "alpha", 1.0)), "elu", _inplace_kw(2))
_register([F.elu_], lambda n: nn.ELU(_arg(n, 1, "alpha", 1.0)), "elu", True)
_register([F.selu], lambda n: nn.SELU(), "selu", _inplace_kw(1))
_register([torch.selu], lambda n: nn.SELU(), "selu", False)
_register([torch.selu_], lambda n: nn.SELU(), "selu", True)
_register([F.gelu], lambda n: nn.GELU(approximate=_arg(n, 1, "approximate", "none")), "gelu", False)
_register([F.silu], lambda n: nn.SiLU(), "silu", _inplace_kw(1))
_register([F.hardswish], lambda n: nn.Hardswish(), "hardswish", _inplace_kw(1))
_register([F.mish], lambda n: nn.Mish(), "mish", _inplace_kw(1))
_register([torch.tanh], lambda n: nn.Tanh(), "tanh", False)
_register([torch.sigmoid], lambda n: nn.Sigmoid(), "sigmoid", False)
# call_method names (``x.relu()``; F.tanh and F.sigmoid trace as ``x.tanh()`` / ``x.sigmoid()``).
_METHOD_ACTS: dict[str, tuple[Callable[[], nn.Module], bool]] = {
    "relu": (nn.ReLU, False), "relu_": (nn.ReLU, True), "tanh": (nn.Tanh, False), "tanh_": (nn.Tanh, True),
    "sigmoid": (nn.Sigmoid, False), "sigmoid_": (nn.Sigmoid, True),
}


def _is_add(node: fx.Node) -> bool:
    """A residual add: two tensors summed, nothing else (``a + b``, ``torch.add(a, b)``, ``a.add(b)``,
    and their in-place forms, which :func:`_trace` has already made out-of-place)."""
    if node.op == "call_function" and node.target in (operator.add, torch.add):
        pass
    elif not (node.op == "call_method" and node.target == "add"):
        return False
    return len(node.args) == 2 and not node.kwargs and all(isinstance(a, fx.Node) for a in node.args)


def _is_norm(gm: fx.GraphModule, node: fx.Node) -> bool:
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), NORM_MODULES)


def _is_act(gm: fx.GraphModule, node: fx.Node) -> bool:
    """After :func:`_trace` every activation is a ``call_module`` of its own module."""
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), ACTIVATION_MODULES)


def _owner(node: fx.Node) -> str:
    """Path of the module whose forward made ``node`` (``""``: the model's own forward)."""
    stack = node.meta.get("nn_module_stack") or {}
    if node.op == "call_module":
        return str(node.target).rpartition(".")[0]
    return next(reversed(stack.values()))[0] if stack else ""


def _where(node: fx.Node) -> str:
    owner = _owner(node)
    return f"node {node.name!r} in {owner or 'the model'}'s forward"


# ---------------------------------------------------------------------------------------------------
# Tracing and normalising


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with norms, activations and bnstats' seeded dropout as leaves, and the
    innermost module path remembered when tracing fails."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        from .models import SeededDropout  # models imports this module
        if isinstance(m, NORM_MODULES + ACTIVATION_MODULES + (SeededDropout,)):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as e:
            if not hasattr(e, "_bnstats_module"):
                e._bnstats_module = (self.path_of_module(m), type(m).__name__)  # type: ignore[attr-defined]
            raise


def _user_frame(exc: BaseException) -> str:
    """``file:line`` of the innermost frame outside torch (the user's line that tracing stopped at)."""
    torch_dir = os.path.dirname(torch.__file__)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(torch_dir)]
    return f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""


def _trace_graph(model: nn.Module, name: str) -> fx.Graph:
    try:
        return _Tracer().trace(model)
    except Exception as e:
        path, kind = getattr(e, "_bnstats_module", ("", type(model).__name__))
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PlacementError(
            f"place: cannot trace {name}: {path or 'its forward'} ({kind}){_user_frame(e)}: {first}. "
            f"torch.fx traces forward once with symbolic tensors: Python control flow that depends on "
            f"tensor values, shapes used as numbers, or unsupported calls cannot be rewritten") from e


def _trace(model: nn.Module) -> fx.GraphModule:
    """A traced, normalised copy of ``model``: every activation call site its own non-inplace module,
    in-place residual adds out-of-place; ``model`` itself is untouched."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"place: model must be a torch.nn.Module, got {type(model).__name__}")
    name = type(model).__name__
    work = copy.deepcopy(model)
    # torch.fx bakes ``self.training`` into the graph at trace time (``F.dropout(x, training=
    # self.training)``, ``if self.training:``). A graph that differs between the modes would silently
    # keep one mode's behaviour in the other, so trace both and refuse if they differ.
    modes = {m: m.training for m in work.modules()}
    codes = []
    for mode in (True, False):
        work.train(mode)
        codes.append(_trace_graph(work, name).python_code("self").src)
    for m, mode in modes.items():
        m.training = mode
    if codes[0] != codes[1]:
        diff = next((a.strip(), b.strip()) for a, b in zip(codes[0].splitlines() + [""],
                                                              codes[1].splitlines() + [""], strict=False)
                    if a != b)
        raise PlacementError(
            f"place: {name}'s forward differs between train and eval mode (train: {diff[0]!r}; eval: "
            f"{diff[1]!r}); torch.fx would fix one mode into the copy. Use modules (nn.Dropout, "
            f"nn.BatchNorm*) instead of branching on self.training")
    graph = _trace_graph(work, name)
    gm = fx.GraphModule(work, graph, class_name=f"Placed{name}")
    _restore_layout(gm, work)
    _own_activations(gm, work)
    _out_of_place_adds(gm)
    gm.graph.lint()
    return gm


def _restore_layout(gm: fx.GraphModule, original: nn.Module) -> None:
    """Make the copy's containers list their tensors as the model's do.

    GraphModule registers submodules, parameters and buffers in the order forward first uses them,
    and registers every tensor that forward reads (``self.scale``) as a persistent buffer. Put the
    model's order back (``named_parameters()``, ``state_dict()`` and the optimiser see the tensors in
    the same order; names are unchanged either way), and keep what was not in its state dict out of it.
    """
    for path, module in gm.named_modules():
        try:
            source = original.get_submodule(path) if path else original
        except AttributeError:
            continue
        if module is source:
            continue
        for field in ("_modules", "_parameters", "_buffers"):
            table, rank = getattr(module, field), {k: i for i, k in enumerate(getattr(source, field))}
            items = sorted(table.items(), key=lambda kv, rank=rank: rank.get(kv[0], len(rank)))
            table.clear()
            table.update(items)
        for key in module._buffers:
            if key not in source._buffers or key in source._non_persistent_buffers_set:
                module._non_persistent_buffers_set.add(key)


def _unalias(graph: fx.Graph, inplace_node: fx.Node, target: fx.Node) -> None:
    """``inplace_node`` overwrote ``target`` in the traced code; it is now out-of-place, so every later
    reader of ``target`` reads ``inplace_node`` instead (what it read in the original)."""
    if not isinstance(target, fx.Node):
        return
    order = {n: i for i, n in enumerate(graph.nodes)}
    for user in list(target.users):
        if user is not inplace_node and order[user] > order[inplace_node]:
            user.replace_input_with(target, inplace_node)


def _free_name(gm: fx.GraphModule, original: nn.Module, owner: str, base: str) -> str:
    """``owner.base``, or ``owner.base_1``, ``_2``... whichever names nothing in the copy nor in the
    model (a model's unused ``self.relu`` is not in the copy, but a reader of the model would take
    ``layer1.0.relu`` for it)."""
    parents = []
    for root in (gm, original):
        try:
            parents.append(root.get_submodule(owner) if owner else root)
        except AttributeError:
            pass
    k = 0
    while True:
        attr = base if k == 0 else f"{base}_{k}"
        if not any(hasattr(p, attr) for p in parents):
            return f"{owner}.{attr}" if owner else attr
        k += 1


def _own_activations(gm: fx.GraphModule, original: nn.Module) -> None:
    """Each activation call site a ``call_module`` of its own non-inplace module.

    A module called once keeps its name (``inplace`` switched off); the later call sites of a shared
    module get a copy named ``<name>_1``, ``_2``...; a functional or method call (``F.relu(x)``,
    ``x.relu_()``) gets a new module ``<fn>`` (``_1``...) in the module whose forward made the call.
    """
    graph = gm.graph
    seen: set[str] = set()
    # Read before the first call site switches a shared module's flag off.
    was_inplace = {n.target: bool(getattr(gm.get_submodule(n.target), "inplace", False))
                   for n in graph.nodes if n.op == "call_module"}
    for node in list(graph.nodes):
        module: nn.Module | None = None
        if node.op == "call_module":
            existing = gm.get_submodule(node.target)
            if not isinstance(existing, ACTIVATION_MODULES):
                continue
            inplace = was_inplace[node.target]
            if node.target not in seen:   # the first call site keeps the module and its name
                seen.add(node.target)
                if inplace:
                    existing.inplace = False
                    _unalias(graph, node, _arg(node, 0, "input", None))
                continue
            module = copy.deepcopy(existing)
            owner, _, base = node.target.rpartition(".")
        elif node.op == "call_function" and node.target in _FUNCTIONAL_ACTS:
            make, base, flag = _FUNCTIONAL_ACTS[node.target]
            if any(isinstance(a, fx.Node) for a in list(node.args[1:]) + list(node.kwargs.values())):
                raise PlacementError(f"place: {_where(node)} calls {base} with an argument computed in "
                                     f"forward; only constant arguments can become a module")
            module, inplace, owner = make(node), flag(node), _owner(node)
        elif node.op == "call_method" and node.target in _METHOD_ACTS:
            if len(node.args) != 1 or node.kwargs:
                continue
            factory, inplace = _METHOD_ACTS[node.target]
            module, base, owner = factory(), node.target.rstrip("_"), _owner(node)
        else:
            continue
        if hasattr(module, "inplace"):
            module.inplace = False
        if node.op != "call_module":   # a copy of a shared module keeps that module's mode
            try:
                module.train((original.get_submodule(owner) if owner else original).training)
            except AttributeError:
                module.train(gm.training)
        path = _free_name(gm, original, owner, base)
        gm.add_submodule(path, module)
        source = _arg(node, 0, "input", None)
        with graph.inserting_before(node):
            new = graph.call_module(path, (source,))
        new.meta = dict(node.meta)
        new.meta["bnstats_node"] = node.meta.get("bnstats_node", node.name)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        if inplace:
            _unalias(graph, new, source)


def _out_of_place_adds(gm: fx.GraphModule) -> None:
    """``a += b`` / ``a.add_(b)`` on two tensors → ``a + b``: same values, and a hook that holds a site
    tensor (a norm's output) does not see it changed by a later add."""
    graph = gm.graph
    for node in list(graph.nodes):
        inplace = (node.op == "call_function" and node.target is operator.iadd) or \
            (node.op == "call_method" and node.target == "add_")
        if not inplace or len(node.args) != 2 or node.kwargs or \
                not all(isinstance(a, fx.Node) for a in node.args):
            continue
        with graph.inserting_before(node):
            new = graph.call_function(operator.add, tuple(node.args))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        _unalias(graph, new, new.args[0])


# ---------------------------------------------------------------------------------------------------
# Pairs


@dataclass(frozen=True)
class Pair:
    """One norm→activation pair of a model, as :func:`pairs` finds it.

    Module paths are those of :func:`place`'s result, identical for every placement (the norm keeps
    its name; ``none`` removes it). Node names are those of the traced model.

    Attributes
    ----------
    norm : str
        Module path of the norm (``"layer1.0.bn2"``).
    activation : str
        Module path of the activation module (a functional call gets one: ``"layer1.0.relu_1"``).
    op : str or None
        Module path of the conv/linear whose output the norm reads, if the norm reads one directly;
        this op gets a bias in ``after`` and ``none`` when it has none.
    adds : tuple of str
        Graph nodes of the residual adds between the norm and the activation, norm side first.
    norm_node, activation_node : str
        Graph nodes of the norm and the activation call.
    """

    norm: str
    activation: str
    op: str | None
    adds: tuple[str, ...]
    norm_node: str
    activation_node: str

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["adds"] = list(self.adds)
        return d


@dataclass(frozen=True)
class _Found:
    norm: fx.Node
    adds: tuple[fx.Node, ...]
    act: fx.Node


def _node_label(gm: fx.GraphModule, node: fx.Node) -> str:
    return str(node.meta.get("bnstats_node", node.name))


def _feeds(gm: fx.GraphModule, node: fx.Node) -> str:
    return " and ".join(repr(_node_label(gm, u)) for u in node.users)


def _analyse(gm: fx.GraphModule) -> list[_Found]:
    """The pairs of a normalised graph, in forward order (of the norms); raises what cannot be placed."""
    graph = gm.graph
    nodes = list(graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    for node in nodes:
        if node.op == "call_function" and node.target in _FUNCTIONAL_NORMS:
            raise PlacementError(
                f"place: {_where(node)} calls {getattr(node.target, '__name__', node.target)}: a functional "
                f"norm cannot be moved or removed; use the module (nn.BatchNorm2d, nn.LayerNorm, ...)")
    norm_calls = Counter(n.target for n in nodes if _is_norm(gm, n))
    for node in nodes:
        if _is_norm(gm, node) and (len(node.args) != 1 or node.kwargs):
            raise PlacementError(f"place: {node.target} (node {_node_label(gm, node)!r}) is called with "
                                 f"more than its input; cannot move or remove it")
        if node.op == "call_module" and norm_calls[node.target] > 1:
            raise PlacementError(f"place: {node.target} (node {_node_label(gm, node)!r}) is called "
                                 f"{norm_calls[node.target]} times in forward; a norm shared by several "
                                 f"places cannot be moved; give each place its own norm")
        if node.op == "get_attr" and any(str(node.target).startswith(t + ".") for t in norm_calls):
            raise PlacementError(f"place: forward reads {node.target} (node {node.name!r}) directly; a norm "
                                 f"whose tensors are used outside its call cannot be moved or removed")
        if node.op == "call_module" and not isinstance(gm.get_submodule(node.target),
                                                      NORM_MODULES + ACTIVATION_MODULES):
            inner = [p for p, m in gm.get_submodule(node.target).named_modules()
                     if p and isinstance(m, NORM_MODULES)]
            if inner:
                raise PlacementError(
                    f"place: {node.target} ({type(gm.get_submodule(node.target)).__name__}, node "
                    f"{node.name!r}) holds a norm ({node.target}.{inner[0]}) inside a module that torch.fx "
                    f"does not trace into; its norms cannot be placed")

    # Upstream nodes of every node, as bit masks over forward order.
    upstream: dict[fx.Node, int] = {}
    for node in nodes:
        mask = 0
        for m in node.all_input_nodes:
            mask |= upstream[m] | (1 << order[m])
        upstream[node] = mask

    def main_operand(add: fx.Node) -> fx.Node:
        # A residual add joins a main path and a shortcut; the shortcut is the short one: the block's
        # input itself (``identity``, upstream of the main path) or a projection of it. Only the main
        # path can carry the pair's norm, so the operand with more nodes upstream is followed, whichever
        # side of the ``+`` it is written on. A norm on a shortcut is no pair: a projection shortcut's
        # own norm stays on the shortcut (as in the built-in resnet, models.ResBlock), and so does the
        # norm at the end of the previous block in a post-norm residual stream (a model placed 'after').
        # Equal counts (two mirror-image branches): the first operand, as blocks write ``out + identity``.
        a, b = add.args
        return b if upstream[b].bit_count() > upstream[a].bit_count() else a

    memo: dict[fx.Node, tuple[fx.Node, tuple[fx.Node, ...]] | None] = {}

    def walk(node: Any) -> tuple[fx.Node, tuple[fx.Node, ...]] | None:
        """From an activation's input back to a norm through residual adds only."""
        if not isinstance(node, fx.Node):
            return None
        if node not in memo:
            memo[node] = None
            if _is_norm(gm, node):
                memo[node] = (node, ())
            elif _is_add(node):
                found = walk(main_operand(node))
                if found is not None:
                    memo[node] = (found[0], found[1] + (node,))
        return memo[node]

    found: list[_Found] = []
    for node in nodes:
        if not _is_act(gm, node):
            continue
        hit = walk(node.args[0] if node.args else None)
        if hit is None:
            continue
        norm, adds = hit
        chain = (norm, *adds, node)
        for a, b in zip(chain, chain[1:], strict=False):
            if list(a.users) != [b]:
                what = (f"its output feeds {_feeds(gm, a)}" if a is norm else
                        f"it reaches the activation {node.target} through {_node_label(gm, a)!r}, whose "
                        f"output feeds {_feeds(gm, a)}")
                raise PlacementError(f"place: {norm.target} (node {_node_label(gm, norm)!r}): {what}; cannot "
                                     f"move it after the activation")
        found.append(_Found(norm, tuple(adds), node))
    found.sort(key=lambda f: order[f.norm])
    return found


def _op_of(gm: fx.GraphModule, norm: fx.Node) -> str | None:
    src = norm.args[0] if norm.args else None
    if isinstance(src, fx.Node) and src.op == "call_module" and \
            isinstance(gm.get_submodule(src.target), OP_MODULES):
        return str(src.target)
    return None


def _describe(gm: fx.GraphModule, found: list[_Found]) -> list[Pair]:
    return [Pair(norm=str(f.norm.target), activation=str(f.act.target), op=_op_of(gm, f.norm),
                 adds=tuple(_node_label(gm, a) for a in f.adds), norm_node=_node_label(gm, f.norm),
                 activation_node=_node_label(gm, f.act)) for f in found]


def pairs(model: nn.Module) -> list[Pair]:
    """The norm→activation pairs of ``model``, in forward order.

    A pair is a norm module (BatchNorm, InstanceNorm, LayerNorm, GroupNorm, RMSNorm) whose output
    reaches an activation (ReLU, ReLU6/Hardtanh, LeakyReLU, ELU, CELU, SELU, GELU, SiLU, Tanh, Sigmoid,
    Hardswish, Mish as a module, a function or a method, in-place or not) directly or through residual
    adds only (``a + b``, ``a += b``, ``torch.add(a, b)``, ``a.add(b)``, ``a.add_(b)``). At each add the
    norm must be on the main path, not on the shortcut: the shortcut is the operand with fewer nodes
    upstream (the block's input, or its projection), the first operand when both have as many. So a
    projection shortcut's own norm (torchvision's ``downsample``) is no pair and stays where it is.
    Anything else between the norm and the activation (pooling, dropout, a reshape) means no pair.

    The model is traced with torch.fx; it is not changed. A model already placed ``after`` has no pair.

    Raises
    ------
    PlacementError
        For what :func:`place` cannot rewrite (see there).
    """
    gm = _trace(model)
    return _describe(gm, _analyse(gm))


# ---------------------------------------------------------------------------------------------------
# place


def _name_seed(name: str) -> int:
    digest = hashlib.sha256(f"bnstats.nn.place/bias/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@torch.no_grad()
def _new_bias(module: nn.Module, name: str, generator: torch.Generator | None) -> torch.Tensor:
    """PyTorch's default for a conv/linear bias: U(−1/√fan_in, 1/√fan_in), fan_in = weight[0].numel()
    (``in_features``; ``in_channels / groups · kernel size``; for a transposed conv, as PyTorch does,
    ``out_channels / groups · kernel size``)."""
    w = module.weight
    fan_in = w[0].numel()
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    g = generator if generator is not None else torch.Generator().manual_seed(_name_seed(name))
    out = module.out_features if isinstance(module, nn.Linear) else module.out_channels
    b = torch.empty(out, dtype=torch.float32, device=g.device).uniform_(-bound, bound, generator=g)
    return b.to(device=w.device, dtype=w.dtype)


def place(model: nn.Module, placement: str, *, generator: torch.Generator | None = None) -> fx.GraphModule:
    """A copy of ``model`` whose norm→activation pairs (:func:`pairs`) follow ``placement``.

    Parameters
    ----------
    model : nn.Module
        Any model torch.fx can trace (no Python control flow on tensor values). It is not changed.
    placement : {"before", "after", "none"}
        ``before``: as written (op → norm → [add] → act). ``after``: op → [add] → act → norm, each
        pair's norm moved right after its activation; the rule of the built-in ``resnet`` "post" order
        (``models.ResBlock``: conv-act-norm, conv, add, act-norm; a shortcut's own norm stays on the
        shortcut). ``none``: every norm removed, also those outside a pair (a ResNet shortcut's).
    generator : torch.Generator, optional
        Source of the new biases (below). Without it each bias draws from a generator seeded by its
        parameter's name, never from torch's global generator.

    Returns
    -------
    torch.fx.GraphModule
        The copy: parameter and buffer names and values as in ``model`` (modules that forward never
        calls are not in it), less the removed norms, plus a ``bias`` on each conv/linear whose output
        directly fed a moved (``after``) or removed (``none``) norm and had none, drawn from
        U(−1/√fan_in, 1/√fan_in) like PyTorch's default. The biases are drawn for every norm-fed op
        without one, in forward order, whatever the placement, so an op's new bias is the same in
        ``after`` and ``none`` and ``generator`` is advanced equally by every placement. Every
        activation call site is its own non-inplace module; ``meta["bnstats.placement"]`` and
        ``meta["bnstats.pairs"]`` (the :class:`Pair` list) describe the rewrite.

    Raises
    ------
    PlacementError
        Naming the module path and graph node: a forward torch.fx cannot trace (data-dependent control
        flow) or that differs between train and eval mode; a functional norm (``F.batch_norm``...); a
        norm called twice or whose tensors are read outside its call; a pair's norm (or a residual
        add between it and its activation) whose output also feeds something else; a norm inside a
        module torch.fx does not trace into. For ``after``, also a model without any pair.

    Notes
    -----
    In-place activations and adds become out-of-place; a later reader of the overwritten tensor reads
    the result instead, which is what it read in the original. Other in-place ops stay as written.
    """
    _check_placement(placement, "place: placement")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"place: generator must be a torch.Generator or None, got {type(generator).__name__}")
    name = type(model).__name__
    gm = _trace(model)
    found = _analyse(gm)
    described = _describe(gm, found)
    graph = gm.graph
    norms = [n for n in graph.nodes if _is_norm(gm, n)]
    if placement == "after" and not found:
        listed = "; ".join(f"{n.target} (node {_node_label(gm, n)!r}) feeds {_feeds(gm, n)}" for n in norms)
        raise PlacementError(f"place: {name} has no norm→activation pair to place 'after' "
                             f"({listed or 'it has no norm module'})")

    # Biases first, in forward order of the norms, for every placement (see Returns).
    biases: dict[str, torch.Tensor] = {}
    for n in norms:
        op = _op_of(gm, n)
        if op is not None and op not in biases and gm.get_submodule(op).bias is None:
            biases[op] = _new_bias(gm.get_submodule(op), f"{op}.bias", generator)

    moved = {f.norm for f in found} if placement == "after" else set(norms) if placement == "none" else set()
    for n in norms:
        op = _op_of(gm, n)
        if n in moved and op in biases:
            gm.get_submodule(op).bias = nn.Parameter(biases[op])
    if placement == "after":
        for f in found:
            f.norm.replace_all_uses_with(f.norm.args[0])
            with graph.inserting_after(f.act):
                new = graph.call_module(f.norm.target, (f.act,))
            new.meta = dict(f.norm.meta)
            new.meta["bnstats_node"] = _node_label(gm, f.norm)
            f.act.replace_all_uses_with(new, delete_user_cb=lambda user, new=new: user is not new)
            graph.erase_node(f.norm)
    elif placement == "none":
        for n in norms:
            target = n.target
            n.replace_all_uses_with(n.args[0])
            graph.erase_node(n)
            gm.delete_submodule(target)
    graph.lint()
    gm.recompile()
    gm.meta["bnstats.placement"] = placement
    gm.meta["bnstats.pairs"] = tuple(described)
    return gm
