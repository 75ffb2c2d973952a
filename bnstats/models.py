"""Models built from one block whose norm ``placement`` is an argument.

``before``: op → norm → act (Ioffe & Szegedy 2015, §3.2: normalise ``Wu + b``)
``after``:  op → act → norm
``none``:   op (with bias) → act

A linear or conv op that a norm directly follows has no bias (the norm's shift replaces it).
Each block exposes the sites ``norm_in``, ``norm_out``, ``act_in``, ``act_out`` to a recorder
(see :func:`record`); an arm reports the sites it has.

Initialisation is by parameter *name*: each parameter draws from its own generator derived from
(seed, name), so every arm of a seed starts from identical weights wherever names and shapes agree,
whatever other parameters an arm has.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from .config import ModelConfig, derive_seed

Recorder = Callable[[int, str, torch.Tensor], None]

ARCH_DEFAULTS = {  # (width, depth) when the config says 0
    "mlp": (100, 2),     # the MNIST-1D paper's MLP: 2 hidden layers of 100
    "cnn": (32, 3),      # 3 conv blocks (MNIST-1D paper: 25 channels, kernel 5, stride 2)
    "vgg": (32, 4),
    "resnet": (16, 3),
}


def make_activation(name: str) -> nn.Module:
    return {
        "relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.01), "elu": nn.ELU, "gelu": nn.GELU,
        "selu": nn.SELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "silu": nn.SiLU, "identity": nn.Identity,
    }[name]()


def make_norm(kind: str, channels: int, *, spatial_dims: int, affine: bool) -> nn.Module:
    """``spatial_dims``: 0 for ``[N, C]`` features, 1 for ``[N, C, L]``, 2 for ``[N, C, H, W]``."""
    if kind == "batch":
        return (nn.BatchNorm1d if spatial_dims < 2 else nn.BatchNorm2d)(channels, affine=affine)
    if kind == "layer":
        return nn.LayerNorm(channels, elementwise_affine=affine) if spatial_dims == 0 else \
            nn.GroupNorm(1, channels, affine=affine)
    if kind == "group":
        groups = math.gcd(channels, 32 if channels >= 32 else max(1, channels // 2))
        return nn.GroupNorm(groups, channels, affine=affine)
    raise ValueError(f"model.norm: expected 'batch', 'layer' or 'group', got {kind!r}")


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


class Block(nn.Module):
    """One op with its norm and activation in the order given by ``placement``.

    ``pool`` (optional) is applied right after the op when ``pool_first`` (i.e. before the norm),
    otherwise at the end of the block.
    """

    def __init__(self, op: nn.Module, norm: nn.Module | None, act: nn.Module, placement: str, index: int,
                 *, pool: nn.Module | None = None, pool_first: bool = False, dropout: float = 0.0):
        super().__init__()
        self.op, self.act, self.placement, self.index = op, act, placement, index
        self.norm = norm if placement != "none" else None
        self.pool = pool
        self.pool_first = pool_first
        self.dropout = SeededDropout(dropout) if dropout > 0 else None
        self.recorder: Recorder | None = None

    def _site(self, site: str, x: torch.Tensor) -> torch.Tensor:
        if self.recorder is not None:
            self.recorder(self.index, site, x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.op(x)
        if self.pool is not None and self.pool_first:
            x = self.pool(x)
        if self.placement == "before":
            x = self.norm(self._site("norm_in", x))
            x = self._site("norm_out", x)
            x = self._site("act_out", self.act(self._site("act_in", x)))
        elif self.placement == "after":
            x = self._site("act_out", self.act(self._site("act_in", x)))
            x = self._site("norm_in", x)
            x = self._site("norm_out", self.norm(x))
        else:
            x = self._site("act_out", self.act(self._site("act_in", x)))
        if self.pool is not None and not self.pool_first:
            x = self.pool(x)
        if self.dropout is not None:
            x = self.dropout(x)
        return x


def block_sites(placement: str) -> tuple[str, ...]:
    """Sites an arm has, in forward order."""
    return {"before": ("norm_in", "norm_out", "act_in", "act_out"),
            "after": ("act_in", "act_out", "norm_in", "norm_out"),
            "none": ("act_in", "act_out")}[placement]


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


BUILDERS: dict[str, Callable[..., Net]] = {"mlp": _mlp, "cnn": _cnn}


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

    Excluded: norm parameters (absent in ``none``) and biases of ops (absent where a norm follows).
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


@contextlib.contextmanager
def record(model: nn.Module, recorder: Recorder) -> Iterator[None]:
    """Within the block, every block reports its sites to ``recorder(layer_index, site, tensor)``."""
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    for b in blocks:
        b.recorder = recorder
    try:
        yield
    finally:
        for b in blocks:
            b.recorder = None
