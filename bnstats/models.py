"""Models built from one block whose norm ``placement`` is an argument.

``before``: op → norm → act (Ioffe & Szegedy 2015, §3.2: normalise ``Wu + b``)
``after``:  op → act → norm
``none``:   op (with bias) → act

A linear or conv op that a norm directly follows has no bias (the norm's shift replaces it).
Each block has the sites ``norm_in``, ``norm_out``, ``act_in``, ``act_out`` (the inputs and outputs of
its norm and activation modules, read by ``bnstats.moments.find_sites``); an arm reports the sites it
has. A block's norm/activation pair is a
:class:`bnstats.nn.NormAct` (``Block`` subclasses it), the building block users put in their own models;
its norm and its activation are each one module called once per forward, so forward hooks on them see
the same sites.

Architectures (``model.arch``): ``mlp``, ``cnn`` (1-D on sequences, 2-D on images), ``vgg`` (3 stages
of 3×3 conv blocks, max-pool between stages) and ``resnet`` (CIFAR ResNet with post- or
pre-activation blocks, ``model.resnet_order``). Every norm/activation pair of every architecture is
a :class:`Block`, so sites and ``placement`` mean the same everywhere; block indices increase in
forward order.

Initialisation is by parameter *name*: each parameter draws from its own generator derived from
(seed, name), so every arm of a seed starts from identical weights wherever names and shapes agree,
whatever other parameters an arm has.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .config import ConfigError, ModelConfig, derive_seed
from .nn import SITES, NormAct, make_activation, make_norm

ARCH_DEFAULTS = {  # (width, depth) when the config says 0
    "mlp": (100, 2),     # the MNIST-1D paper's MLP: 2 hidden layers of 100
    "cnn": (32, 3),      # 3 conv blocks (MNIST-1D paper: 25 channels, kernel 5, stride 2)
    "vgg": (32, 2),      # 3 stages of 2 conv blocks, 32/64/128 channels
    "resnet": (16, 3),   # ResNet-20 (He et al. 2015, §4.2): 3 stages of 3 basic blocks, 16/32/64 channels
}


class SeededDropout(nn.Module):
    """Dropout whose masks come from a generator set per run (arms of a seed share the masks)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.generator is None:
            raise RuntimeError("SeededDropout: no generator set; call models.set_dropout_generator")
        keep = torch.rand(x.shape, generator=self.generator, device=x.device, dtype=x.dtype) >= self.p
        return x * keep / (1 - self.p)


class Block(NormAct):
    """One op with its norm and activation in the order given by ``placement``.

    The norm/activation *pair* is the :class:`bnstats.nn.NormAct` this block is (:meth:`pair`):
    ``norm → act`` (``before``), ``act → norm`` (``after``) or ``act`` (``none``), reporting the sites
    ``norm_in``, ``norm_out``, ``act_in``, ``act_out`` around its ops. Every norm and activation of
    every model goes through a block, so ``placement`` means the same thing everywhere, in user models
    built from ``NormAct`` too.

    ``op_first=True`` (default): op → [pool] → pair → [pool] → [dropout]. ``pool`` (optional) is
    applied right after the op when ``pool_first`` (i.e. before the norm), otherwise at the end.
    ``op_first=False`` (pre-activation, He et al. 2016): pair → [dropout] → op (``op=None``: no op).

    ``forward(x, residual)`` adds ``residual`` inside the pair, immediately before the activation, so
    the activation sees the sum in every placement: ``before`` op → norm → +residual → act (He et al.
    2015), ``after`` op → +residual → act → norm, ``none`` op → +residual → act.
    """

    def __init__(self, op: nn.Module | None, norm: nn.Module | None, act: nn.Module, placement: str,
                 index: int, *, pool: nn.Module | None = None, pool_first: bool = False,
                 dropout: float = 0.0, op_first: bool = True):
        # NormAct.__init__ builds its norm and activation from names; a block is handed them, so it
        # sets up the module itself and the pair through NormAct._init_pair. Registration order (op,
        # act, norm, pool, dropout) is the parameter order every stored run was trained with.
        nn.Module.__init__(self)
        self.op = op if op is not None else nn.Identity()
        self._init_pair(norm, act, placement)
        self.index = index
        self.pool = pool
        self.pool_first = pool_first
        self.op_first = op_first
        self.dropout = SeededDropout(dropout) if dropout > 0 else None

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if not self.op_first:
            if residual is not None:
                raise ValueError("Block: a pre-activation block (op_first=False) takes no residual")
            x = self.pair(x)
            if self.dropout is not None:
                x = self.dropout(x)
            return self.op(x)
        x = self.op(x)
        if self.pool is not None and self.pool_first:
            x = self.pool(x)
        x = self.pair(x, residual)
        if self.pool is not None and not self.pool_first:
            x = self.pool(x)
        if self.dropout is not None:
            x = self.dropout(x)
        return x

    def extra_repr(self) -> str:
        return f"placement={self.placement!r}, index={self.index}"


class Stem(nn.Module):
    """A bare op (the first conv of a pre-activation ResNet), named ``op`` like a block's."""

    def __init__(self, op: nn.Module):
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """A basic residual block: two 3×3 convs, each in a :class:`Block`, and a shortcut.

    ``order="post"`` (He et al. 2015): ``block1`` = conv1 → pair, ``block2`` = conv2 → pair with the
    shortcut added right before the activation (see :class:`Block`)::

        before: conv-norm-act, conv-norm, add, act      (He et al. 2015; projections: their option B)
        after:  conv-act-norm, conv, add, act-norm
        none:   conv-act,      conv, add, act

    ``order="pre"`` (He et al. 2016, full pre-activation): ``block`` = pair → conv, twice, then add::

        before: norm-act-conv, norm-act-conv, add       (He et al. 2016 exactly)
        after:  act-norm-conv, act-norm-conv, add
        none:   act-conv,      act-conv,      add

    ``shortcut``: ``None`` (identity) or a 1×1 conv where the shape changes. In ``post`` it reads the
    block's input and is followed by a norm unless the placement is ``none``; in ``pre`` it reads the
    output of the first pair (as He et al.'s code does) and has no norm.
    """

    def __init__(self, block1: Block, block2: Block, shortcut: nn.Module | None, order: str):
        super().__init__()
        if order not in ("post", "pre"):
            raise ValueError(f"model.resnet_order: expected 'post' or 'pre', got {order!r}")
        self.block1, self.block2, self.shortcut, self.order = block1, block2, shortcut, order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.order == "post":
            s = x if self.shortcut is None else self.shortcut(x)
            return self.block2(self.block1(x), s)
        h = self.block1.pair(x)
        s = x if self.shortcut is None else self.shortcut(h)
        return self.block2(self.block1.op(h)) + s


def block_sites(placement: str) -> tuple[str, ...]:
    """Sites an arm has, in forward order."""
    return SITES[placement]


class Net(nn.Module):
    """``body`` (blocks and glue) → ``head`` (a linear classifier with bias)."""

    def __init__(self, body: nn.Module, head: nn.Module, *, head_dropout: float = 0.0):
        super().__init__()
        self.body, self.head = body, head
        self.head_dropout = SeededDropout(head_dropout) if head_dropout > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x)
        if self.head_dropout is not None:
            x = self.head_dropout(x)
        return self.head(x)

    def blocks(self) -> list[Block]:
        return [m for m in self.modules() if isinstance(m, Block)]


def _mlp(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, width: int, depth: int) -> Net:
    has_norm = cfg.placement != "none"
    dims = [math.prod(input_shape)] + [width] * depth
    block_dropout = cfg.dropout if cfg.dropout_position == "block" else 0.0
    blocks = [
        Block(nn.Linear(dims[i], dims[i + 1], bias=not has_norm or cfg.placement == "after"),
              make_norm(cfg.norm, dims[i + 1], spatial_dims=0, affine=cfg.affine) if has_norm else None,
              make_activation(cfg.activation), cfg.placement, i, dropout=block_dropout)
        for i in range(depth)
    ]
    head_dropout = cfg.dropout if cfg.dropout_position == "head" else 0.0
    return Net(nn.Sequential(nn.Flatten(), *blocks), nn.Linear(width, num_classes), head_dropout=head_dropout)


def _cnn(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, width: int, depth: int) -> Net:
    """1-D: stride-2 convs, flatten (MNIST-1D paper's CNN). 2-D: 3×3 convs, 2×2 max-pool, global pool."""
    has_norm = cfg.placement != "none"
    spatial = len(input_shape) - 1
    block_dropout = cfg.dropout if cfg.dropout_position == "block" else 0.0
    layers: list[nn.Module] = []
    cin, size = input_shape[0], list(input_shape[1:])
    for i in range(depth):
        bias = not has_norm or cfg.placement == "after"
        if spatial == 1:
            k = cfg.kernel_size
            op = nn.Conv1d(cin, width, k, stride=2, padding=1, bias=bias)
            size = [(size[0] + 2 - k) // 2 + 1]
            pool = None
        else:
            op = nn.Conv2d(cin, width, 3, padding=1, bias=bias)
            pool = nn.MaxPool2d(2) if min(size) >= 2 else None
            size = [s // 2 for s in size] if pool is not None else size
        if min(size) < 1:
            raise ValueError(f"model.depth: {depth} conv blocks shrink input {input_shape} to nothing")
        layers.append(Block(op, make_norm(cfg.norm, width, spatial_dims=spatial, affine=cfg.affine)
                            if has_norm else None, make_activation(cfg.activation), cfg.placement, i,
                            pool=pool, pool_first=cfg.pool == "before_norm", dropout=block_dropout))
        cin = width
    if spatial == 1:
        layers.append(nn.Flatten())
        features = width * size[0]
    else:
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        features = width
    head_dropout = cfg.dropout if cfg.dropout_position == "head" else 0.0
    return Net(nn.Sequential(*layers), nn.Linear(features, num_classes), head_dropout=head_dropout)


def _need_image(arch: str, input_shape: tuple[int, ...]) -> None:
    if len(input_shape) != 3:
        raise ValueError(f"model.arch: {arch!r} needs images [C, H, W], got inputs of shape {input_shape}; "
                         f"use 'mlp' or 'cnn' for sequences")


def _vgg(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, width: int, depth: int) -> Net:
    """VGG-style (Simonyan & Zisserman 2015): 3 stages of ``depth`` 3×3 conv blocks, ``width``·(1, 2, 4)
    channels, 2×2 max-pool in the last block of stages 1 and 2, global average pool, linear head.
    """
    _need_image("vgg", input_shape)
    has_norm = cfg.placement != "none"
    block_dropout = cfg.dropout if cfg.dropout_position == "block" else 0.0
    layers: list[nn.Module] = []
    cin, size = input_shape[0], min(input_shape[1:])
    for stage in range(3):
        cout = width * 2 ** stage
        for j in range(depth):
            pool = None
            if j == depth - 1 and stage < 2:
                if size < 2:
                    raise ValueError(f"model.arch: 'vgg' pools twice; input {input_shape} is too small")
                pool, size = nn.MaxPool2d(2), size // 2
            layers.append(Block(
                nn.Conv2d(cin, cout, 3, padding=1, bias=cfg.placement != "before"),
                make_norm(cfg.norm, cout, spatial_dims=2, affine=cfg.affine) if has_norm else None,
                make_activation(cfg.activation), cfg.placement, len(layers),
                pool=pool, pool_first=cfg.pool == "before_norm", dropout=block_dropout))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    head_dropout = cfg.dropout if cfg.dropout_position == "head" else 0.0
    return Net(nn.Sequential(*layers), nn.Linear(cin, num_classes), head_dropout=head_dropout)


def _resnet(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, width: int, depth: int
            ) -> Net:
    """CIFAR ResNet (He et al. 2015, §4.2; depth 3 = ResNet-20): a 3×3 stem conv, 3 stages of ``depth``
    basic blocks (:class:`ResBlock`, ``cfg.resnet_order`` post or pre) with ``width``·(1, 2, 4) channels,
    stride 2 at the start of stages 2 and 3, a 1×1 projection shortcut where the shape changes,
    global average pool, linear head. ``post``: the stem is conv → pair; ``pre``: the stem is a bare
    conv and a last pair (He et al. 2016's final norm-act) precedes the pool.

    Biases: an op has one unless its output reaches a norm before any activation (``before``: none of
    the convs; ``after``: all but the post shortcut, which a norm follows; ``none``: all).
    Block dropout (``dropout_position = "block"``) sits between the two convs of each residual block,
    as in wide ResNets (Zagoruyko & Komodakis 2016).
    """
    _need_image("resnet", input_shape)
    pre = cfg.resnet_order == "pre"
    has_norm = cfg.placement != "none"
    bias = cfg.placement != "before"
    block_dropout = cfg.dropout if cfg.dropout_position == "block" else 0.0
    index = itertools.count()  # block indices in forward order

    def block(op: nn.Module | None, channels: int, dropout: float = 0.0) -> Block:
        norm = make_norm(cfg.norm, channels, spatial_dims=2, affine=cfg.affine) if has_norm else None
        return Block(op, norm, make_activation(cfg.activation), cfg.placement, next(index),
                     dropout=dropout, op_first=not pre)

    def conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
        return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)

    cin = input_shape[0]
    layers: list[nn.Module] = [Stem(conv(cin, width)) if pre else block(conv(cin, width), width)]
    cin = width
    for stage in range(3):
        cout = width * 2 ** stage
        for j in range(depth):
            stride = 2 if stage > 0 and j == 0 else 1
            if pre:  # each pair normalises the block's input channels
                b1 = block(conv(cin, cout, stride), cin)
                b2 = block(conv(cout, cout), cout, block_dropout)
            else:
                b1 = block(conv(cin, cout, stride), cout, block_dropout)
                b2 = block(conv(cout, cout), cout)
            shortcut = None
            if stride != 1 or cin != cout:
                if pre:
                    shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=bias))
                else:
                    shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=not has_norm))
                    if has_norm:
                        shortcut.append(make_norm(cfg.norm, cout, spatial_dims=2, affine=cfg.affine))
            layers.append(ResBlock(b1, b2, shortcut, cfg.resnet_order))
            cin = cout
    if pre:
        layers.append(block(None, cin))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    head_dropout = cfg.dropout if cfg.dropout_position == "head" else 0.0
    return Net(nn.Sequential(*layers), nn.Linear(cin, num_classes), head_dropout=head_dropout)


BUILDERS: dict[str, Callable[..., Net]] = {"mlp": _mlp, "cnn": _cnn, "vgg": _vgg, "resnet": _resnet}


def build(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> Net:
    """Build the model of ``cfg`` for inputs of ``input_shape`` (one example, channels first)."""
    if cfg.arch not in BUILDERS:
        raise ValueError(f"model.arch: {cfg.arch!r} is not available; built: {', '.join(BUILDERS)}")
    width, depth = ARCH_DEFAULTS[cfg.arch]
    return BUILDERS[cfg.arch](cfg, tuple(input_shape), num_classes, cfg.width or width, cfg.depth or depth)


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._NormBase | nn.LayerNorm | nn.GroupNorm)


def shared_parameter_names(model: nn.Module) -> list[str]:
    """Parameters that every placement has with the same name and shape: the ops' weights and the head.

    The ops are the linear and conv layers of the blocks, a pre-activation ResNet's stem and the
    ResNets' 1×1 shortcut convs (``...shortcut.0.weight``). Excluded: norm parameters (absent in
    ``none``; this includes a post ResNet's shortcut norm) and biases of ops (absent where a norm follows).
    """
    norm_prefixes = {name + "." for name, m in model.named_modules() if _is_norm(m)}
    return [n for n, _ in model.named_parameters()
            if not any(n.startswith(p) for p in norm_prefixes)
            and not (n.endswith(".bias") and not n.startswith("head."))]


@torch.no_grad()
def init_parameters(model: nn.Module, seed: int) -> None:
    """Initialise every parameter from a generator keyed by (seed, parameter name).

    Weights and biases of linear/conv ops: U(−1/√fan_in, 1/√fan_in), PyTorch's default
    (kaiming_uniform with a = √5). Norm scale 1, shift 0.
    """
    norm_prefixes = {name + "." for name, m in model.named_modules() if _is_norm(m)}
    weights = dict(model.named_parameters())
    for name, p in model.named_parameters():
        if any(name.startswith(pre) for pre in norm_prefixes):
            p.fill_(1.0 if name.endswith("weight") else 0.0)
            continue
        g = torch.Generator().manual_seed(derive_seed(seed, "init", name))
        w = weights[name[: -len("bias")] + "weight"] if name.endswith("bias") else p
        fan_in = w[0].numel() if w.dim() > 1 else w.numel()
        bound = 1.0 / math.sqrt(fan_in)
        p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=g))


def init_hash(model: nn.Module) -> str:
    """Hash of the shared initial tensors (names, shapes, bytes): equal across the arms of a seed."""
    h = hashlib.sha256()
    params = dict(model.named_parameters())
    for name in shared_parameter_names(model):
        t = params[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def set_dropout_generator(model: nn.Module, generator: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, SeededDropout):
            m.generator = generator


# ---------------------------------------------------------------------------------------------------
# Models of a run: built-in or from the user's factory, initialised for the run's seed


@dataclasses.dataclass
class Built:
    """A run's model, initialised, with its pairing certificate and the provenance of its code."""

    model: nn.Module
    init_hash: str
    builtin: bool                 # bnstats' own Net (its forward never modifies a tensor in place)
    source: dict[str, str]        # for a factory: sha256 of its source file and git commit ("" for built-ins)


@contextlib.contextmanager
def _seeded_global_rng(seed: int) -> Iterator[None]:
    """torch's global generator seeded within the block and restored after it (a factory's layers draw
    their default initialisation from it; nothing outside sees the change)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def create(cfg: ModelConfig, seed: int, input_shape: tuple[int, ...], num_classes: int) -> Built:
    """The model of one run, initialised for ``seed`` so that every arm of the seed starts from the same
    weights wherever parameter names and shapes agree.

    Built-in archs: :func:`build`, then :func:`init_parameters` (one generator per (seed, parameter name)).

    A model factory (``model.arch = "module:function"``) keeps its own initialisation. It is called with
    the keyword arguments it accepts among ``cfg.options``, ``in_shape``, ``num_classes`` and (unless
    ``model.place = "auto"``) ``placement``, under torch's global generator seeded from the seed: first
    for the reference arm (``placement = "before"``), then for this run's arm, whose parameters then take
    the reference's values wherever name and shape agree. So the arms of a seed share every weight the
    architecture lets them share, drawn by the user's own code. With ``model.place = "auto"`` the
    factory's model is the reference and :func:`bnstats.nn.place` rewrites a copy for the arm (new op
    biases from a generator of the seed). ``init_hash`` covers the shared tensors: the reference's
    parameters that are neither inside a norm nor biases, as the arm holds them.
    """
    if not cfg.is_factory:
        model = build(cfg, input_shape, num_classes)
        init_parameters(model, seed)
        return Built(model, init_hash(model), True, {"sha256": "", "git_commit": ""})
    from . import factory

    fn = factory.resolve(cfg.arch, field="model.arch")
    offered: dict[str, Any] = {**dict(cfg.options), "in_shape": tuple(input_shape), "num_classes": num_classes}
    place = cfg.place == "auto"
    takes_placement = not place and factory.accepts(fn, "placement")

    def make(placement: str | None) -> nn.Module:
        kwargs = {**offered, "placement": placement} if takes_placement else offered
        with _seeded_global_rng(derive_seed(seed, "init")):
            m = factory.call(fn, kwargs, field="model.arch", spec=cfg.arch)
        if not isinstance(m, nn.Module):
            raise ConfigError(f"model.arch: {cfg.arch} returned a {type(m).__name__}, not a torch.nn.Module")
        return m

    reference = make("before")
    if place:
        from .nn import place as place_norms

        g = torch.Generator().manual_seed(derive_seed(seed, "place"))
        model = place_norms(reference, cfg.placement, generator=g)
    elif takes_placement and cfg.placement != "before":
        model = make(cfg.placement)
        _share_by_name(reference, model)
    else:
        model = reference
    return Built(model, _shared_hash(reference, model), False, factory.provenance(fn))


@torch.no_grad()
def _share_by_name(reference: nn.Module, model: nn.Module) -> None:
    ref = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        r = ref.get(name)
        if r is not None and r.shape == p.shape:
            p.copy_(r)


def _shared_hash(reference: nn.Module, model: nn.Module) -> str:
    """Hash of the tensors every arm of a seed shares (see :func:`create`), as ``model`` holds them."""
    norm_prefixes = {name + "." for name, m in reference.named_modules() if _is_norm(m)}
    params = dict(model.named_parameters())
    h = hashlib.sha256()
    for name, r in reference.named_parameters():
        if name.endswith("bias") or any(name.startswith(p) for p in norm_prefixes):
            continue
        t = params.get(name)
        h.update(name.encode())
        if t is None or t.shape != r.shape:
            h.update(b"<absent>")
            continue
        t = t.detach().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]
