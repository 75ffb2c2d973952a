"""bnstats.nn: NormAct (the built-in models' pair) and place() on models written the way model zoos
write them. torchvision cannot be imported here (its wheel is a CUDA build, NOTES.md "Wave 2 facts"),
so its blocks are copied below as torchvision writes them (torchvision/models/resnet.py,
mobilenetv2.py, ops/misc.py: Conv2dNormActivation), trimmed to what placement touches.
"""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnstats import models
from bnstats import nn as bnn
from bnstats.config import PLACEMENTS, ModelConfig

NORMS = bnn.NORM_MODULES
ACTS = bnn.ACTIVATION_MODULES


# ---------------------------------------------------------------------------------------------------
# Model-zoo blocks


def conv3x3(in_planes, out_planes, stride=1, groups=1, dilation=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation, groups=groups,
                     bias=False, dilation=dilation)


def conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """torchvision's: one ``nn.ReLU(inplace=True)`` used twice, ``out += identity``."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class BasicBlockF(BasicBlock):
    """The functional variant many repositories write: ``F.relu`` and ``out = out + identity``."""

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(out)


class Bottleneck(nn.Module):
    """torchvision's: one ReLU module used three times."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv3(out)
        out = self.bn3(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class ResNet(nn.Module):
    """torchvision's ResNet, two stages of one block (8 and 16 planes), for 3×8×8 inputs."""

    def __init__(self, block, num_classes=10):
        super().__init__()
        self.inplanes = 8
        self.conv1 = nn.Conv2d(3, 8, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, 8, 1)
        self.layer2 = self._make_layer(block, 16, 1, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def conv_norm_act(inp, out, kernel_size=3, stride=1, groups=1):
    """torchvision.ops.Conv2dNormActivation with BatchNorm2d and ReLU6 (a Sequential; bias off)."""
    padding = (kernel_size - 1) // 2
    return nn.Sequential(nn.Conv2d(inp, out, kernel_size, stride, padding, groups=groups, bias=False),
                         nn.BatchNorm2d(out), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """torchvision's MobileNetV2 block: expand, depthwise, linear projection (conv + BN, no act)."""

    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers.append(conv_norm_act(inp, hidden_dim, kernel_size=1))
        layers.extend([conv_norm_act(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
                       nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)])
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(conv_norm_act(3, 8, stride=1), InvertedResidual(8, 8, 1, 4),
                                      InvertedResidual(8, 16, 2, 6), conv_norm_act(16, 32, kernel_size=1))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


class MlpBlock(nn.Module):
    """A Transformer-style MLP with a norm inside: ``x + fc2(gelu(ln(fc1(x))))`` (an LN→GELU pair)."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.ln, self.fc2 = nn.Linear(dim, hidden), nn.LayerNorm(hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.ln(self.fc1(x))))


class PreLnMlpBlock(nn.Module):
    """Pre-LN: ``x + fc2(gelu(fc1(ln(x))))``; a linear sits between the norm and the GELU: no pair."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.ln, self.fc1, self.act, self.fc2 = (nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(),
                                                 nn.Linear(hidden, dim))

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(self.ln(x))))


class TokenNet(nn.Module):
    """Tokens [N, T, F] → embed → 2 MLP blocks → mean over tokens → linear head."""

    def __init__(self, block, features=6, dim=8, num_classes=10):
        super().__init__()
        self.embed = nn.Linear(features, dim)
        self.blocks = nn.Sequential(block(dim, 4 * dim), block(dim, 4 * dim))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.head(self.blocks(self.embed(x)).mean(dim=1))


class PlainNet(nn.Module):
    """Plain conv-BN-ReLU (a Sequential) then a linear-BN-ReLU head."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16),
                                      nn.ReLU(inplace=True))
        self.fc1, self.bn, self.fc2 = nn.Linear(16, 12, bias=False), nn.BatchNorm1d(12), nn.Linear(12, num_classes)

    def forward(self, x):
        x = torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


IMAGE = (3, 8, 8)
TOKENS = (5, 6)

# name: (factory, input shape, pairs as (norm, activation, adds), op biases new in 'after', in 'none')
# The expected values are written out by hand from the model code, not computed by bnstats.
ZOO = {
    "plain": (PlainNet, IMAGE,
              [("features.1", "features.2", 0), ("features.5", "features.6", 0), ("bn", "relu", 0)],
              {"features.0", "fc1"}, {"features.0", "fc1"}),
    "resnet_basic": (lambda: ResNet(BasicBlock), IMAGE,
                     [("bn1", "relu", 0), ("layer1.0.bn1", "layer1.0.relu", 0),
                      ("layer1.0.bn2", "layer1.0.relu_1", 1), ("layer2.0.bn1", "layer2.0.relu", 0),
                      ("layer2.0.bn2", "layer2.0.relu_1", 1)],
                     {"conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.conv2"},
                     {"conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.conv2",
                      "layer2.0.downsample.0"}),
    "resnet_basic_functional": (lambda: ResNet(BasicBlockF), IMAGE,
                                [("bn1", "relu", 0), ("layer1.0.bn1", "layer1.0.relu_1", 0),
                                 ("layer1.0.bn2", "layer1.0.relu_2", 1), ("layer2.0.bn1", "layer2.0.relu_1", 0),
                                 ("layer2.0.bn2", "layer2.0.relu_2", 1)],
                                {"conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1",
                                 "layer2.0.conv2"},
                                {"conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.conv2",
                                 "layer2.0.downsample.0"}),
    "resnet_bottleneck": (lambda: ResNet(Bottleneck), IMAGE,
                          [("bn1", "relu", 0)] + [
                              (f"layer{i}.0.{bn}", f"layer{i}.0.{relu}", adds) for i in (1, 2)
                              for bn, relu, adds in (("bn1", "relu", 0), ("bn2", "relu_1", 0), ("bn3", "relu_2", 1))],
                          {"conv1"} | {f"layer{i}.0.conv{j}" for i in (1, 2) for j in (1, 2, 3)},
                          {"conv1"} | {f"layer{i}.0.conv{j}" for i in (1, 2) for j in (1, 2, 3)}
                          | {"layer1.0.downsample.0", "layer2.0.downsample.0"}),
    "mobilenet_v2": (MobileNet, IMAGE,
                     [("features.0.1", "features.0.2", 0), ("features.1.conv.0.1", "features.1.conv.0.2", 0),
                      ("features.1.conv.1.1", "features.1.conv.1.2", 0),
                      ("features.2.conv.0.1", "features.2.conv.0.2", 0),
                      ("features.2.conv.1.1", "features.2.conv.1.2", 0), ("features.3.1", "features.3.2", 0)],
                     {"features.0.0", "features.1.conv.0.0", "features.1.conv.1.0", "features.2.conv.0.0",
                      "features.2.conv.1.0", "features.3.0"},
                     {"features.0.0", "features.1.conv.0.0", "features.1.conv.1.0", "features.1.conv.2",
                      "features.2.conv.0.0", "features.2.conv.1.0", "features.2.conv.2", "features.3.0"}),
    "transformer_mlp": (lambda: TokenNet(MlpBlock), TOKENS,
                        [("blocks.0.ln", "blocks.0.gelu", 0), ("blocks.1.ln", "blocks.1.gelu", 0)],
                        set(), set()),   # fc1 has its own bias already
}


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Give every norm a trained-looking state. Fresh BN (mean 0, var 1, scale 1, shift 0) scales by a
    positive constant in eval mode, which commutes with ReLU: 'before' and 'after' would then agree."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, NORMS):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g))
                if getattr(m, "running_mean", None) is not None:
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def _zoo(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    factory, shape = ZOO[name][:2]
    torch.manual_seed(seed)  # the zoo models initialise from the global RNG, as users' models do
    model = _randomise(factory(), seed)
    x = torch.randn(6, *shape, generator=torch.Generator().manual_seed(seed + 1))
    return model, x


def _calls(model: nn.Module, x: torch.Tensor) -> list[tuple[str, str, torch.Tensor, torch.Tensor]]:
    """(kind, module path, input, output) of every norm and activation call, in forward order."""
    events: list[tuple[str, str, torch.Tensor, torch.Tensor]] = []
    handles = []
    for path, m in model.named_modules():
        kind = "norm" if isinstance(m, NORMS) else "act" if isinstance(m, ACTS) else None
        if kind is not None:
            handles.append(m.register_forward_hook(
                lambda mod, inp, out, path=path, kind=kind: events.append(
                    (kind, path, inp[0].detach().clone(), out.detach().clone()))))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return events


def _new_param_names(placed, model):
    return set(dict(placed.named_parameters())) - set(dict(model.named_parameters()))


# ---------------------------------------------------------------------------------------------------
# place() on the zoo


@pytest.mark.parametrize("name", sorted(ZOO))
def test_pairs_are_found_in_forward_order(name):
    model, _ = _zoo(name)
    found = bnn.pairs(model)
    assert [(p.norm, p.activation, len(p.adds)) for p in found] == ZOO[name][2]
    for p in found:   # the op a pair's norm reads, where the model has one right before it
        assert p.op is None or isinstance(model.get_submodule(p.op), nn.Conv2d | nn.Linear)


@pytest.mark.parametrize("name, placement", list(itertools.product(sorted(ZOO), PLACEMENTS)))
def test_place_on_zoo_models(name, placement):
    model, x = _zoo(name)
    original_state = copy.deepcopy(model.state_dict())
    placed = bnn.place(model, placement)
    expected_pairs = ZOO[name][2]

    # The input model is untouched (its own inplace ReLUs too).
    assert all(torch.equal(original_state[k], v) for k, v in model.state_dict().items())

    # Forward order, seen by hooks: each norm and activation module called exactly once.
    placed.eval()
    events = _calls(placed, x)
    called = [path for _, path, _, _ in events]
    assert len(called) == len(set(called))
    assert set(called) == {p for p, m in placed.named_modules() if isinstance(m, NORMS + ACTS)}
    assert all(not getattr(m, "inplace", False) for m in placed.modules() if isinstance(m, ACTS))
    where = {path: i for i, path in enumerate(called)}
    for norm, act, adds in expected_pairs:
        if placement == "before":
            assert where[norm] < where[act]
            if not adds:  # nothing between them: the activation reads the norm's output
                assert torch.equal(events[where[act]][2], events[where[norm]][3])
        elif placement == "after":
            assert where[norm] == where[act] + 1    # right after its activation, reading its output
            assert torch.equal(events[where[norm]][2], events[where[act]][3])
        else:
            assert act in where
    if placement == "none":
        assert not any(isinstance(m, NORMS) for m in placed.modules())

    # Biases exactly where the rule puts them; every other parameter keeps its name, shape and value.
    new_bias = {"before": set(), "after": ZOO[name][3], "none": ZOO[name][4]}[placement]
    assert _new_param_names(placed, model) == {f"{op}.bias" for op in new_bias}
    removed = {n for n, m in model.named_modules() if isinstance(m, NORMS)} if placement == "none" else set()
    placed_state = placed.state_dict()
    for key, value in original_state.items():
        if key.rpartition(".")[0] in removed:
            assert key not in placed_state
        else:
            assert torch.equal(placed_state[key], value), key
    assert [k for k in placed_state if k in original_state] == [k for k in original_state if k in placed_state]

    # 'before' computes exactly what the model computes; the others compute something else.
    model.eval()
    with torch.no_grad():
        if placement == "before":
            assert torch.equal(placed(x), model(x))
        else:
            assert not torch.allclose(placed(x), model(x))

    # One training step: every parameter, the new biases included, gets a gradient and the loss moves.
    placed.train()
    y = torch.arange(len(x)) % 10
    opt = torch.optim.SGD(placed.parameters(), lr=0.1)
    loss = F.cross_entropy(placed(x), y)
    opt.zero_grad()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in placed.parameters())
    assert all(placed.get_parameter(f"{op}.bias").grad.abs().sum() > 0 for op in new_bias)
    opt.step()
    with torch.no_grad():
        assert torch.isfinite(loss) and F.cross_entropy(placed(x), y) != loss


@pytest.mark.parametrize("name", ["resnet_basic", "resnet_bottleneck", "mobilenet_v2"])
def test_before_sees_the_same_sites_as_the_model(name):
    """Without functional activations the model's own hooks see its sites too: same tensors, same order."""
    model, x = _zoo(name)
    model.train()
    placed = bnn.place(model, "before").train()
    ours = _calls(placed, x)
    theirs = _calls(model, x)
    assert [k for k, *_ in ours] == [k for k, *_ in theirs]
    # the model's inplace ReLUs overwrite their inputs, so compare outputs, and inputs of the norms
    for (kind, _, i1, o1), (_, _, i2, o2) in zip(ours, theirs, strict=True):
        assert torch.equal(o1, o2)
        if kind == "norm":
            assert torch.equal(i1, i2)
    # training mode: running statistics moved identically
    for (k1, v1), (k2, v2) in zip(placed.state_dict().items(), model.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)


def test_shared_inplace_relu_becomes_one_module_per_call_site():
    model, _ = _zoo("resnet_bottleneck")
    placed = bnn.place(model, "before")
    block = placed.get_submodule("layer1.0")
    relus = [block.get_submodule(n) for n in ("relu", "relu_1", "relu_2")]
    assert len({id(r) for r in relus}) == 3
    assert all(type(r) is nn.ReLU and not r.inplace for r in relus)
    assert model.layer1[0].relu.inplace   # the input model keeps its own


def test_residual_pair_after_is_conv_add_act_norm_and_shortcut_keeps_its_norm():
    """He et al. / built-in resnet 'post' order under 'after': conv, add, act, norm; the projection
    shortcut conv → BN stays as it is (no bias)."""
    model, x = _zoo("resnet_basic")
    placed = bnn.place(model, "after").eval()
    blk = placed.get_submodule("layer2.0")
    ds_conv, ds_bn = blk.get_submodule("downsample.0"), blk.get_submodule("downsample.1")
    assert ds_conv.bias is None and isinstance(ds_bn, nn.BatchNorm2d)
    # Recompute layer2.0 by hand from its modules (its input: conv1's; its output: bn2's, the last op).
    seen = {}
    handles = [blk.conv1.register_forward_hook(lambda m, i, o: seen.update(x=i[0])),
               blk.bn2.register_forward_hook(lambda m, i, o: seen.update(y=o))]
    with torch.no_grad():
        placed(x)
        h = blk.bn1(blk.relu(blk.conv1(seen["x"])))
        want = blk.bn2(blk.relu_1(blk.conv2(h) + ds_bn(ds_conv(seen["x"]))))
    for handle in handles:
        handle.remove()
    assert torch.equal(seen["y"], want)


def test_a_norm_on_the_shortcut_is_no_pair_and_operand_order_does_not_matter():
    """At a residual add the shortcut is the operand the other is computed from; only the main path
    can carry the pair's norm, whichever side of the ``+`` it is written on."""
    class Stream(nn.Module):   # post-norm residual stream: the norm's output is the next shortcut
        def __init__(self):
            super().__init__()
            self.fc0, self.ln, self.fc1 = nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 4)

        def forward(self, x):
            h = self.ln(self.fc0(x))
            return F.relu(self.fc1(h) + h)

    class Reversed(nn.Module):  # ``identity + out``
        def __init__(self):
            super().__init__()
            self.fc, self.bn = nn.Linear(4, 4, bias=False), nn.BatchNorm1d(4)

        def forward(self, x):
            return F.relu(x + self.bn(self.fc(x)))

    assert bnn.pairs(Stream()) == []
    (pair,) = bnn.pairs(Reversed())
    assert (pair.norm, pair.op, pair.adds) == ("bn", "fc", ("add",))


@pytest.mark.parametrize("arch, shape, dropout", [
    ("mlp", (1, 40), "head"), ("cnn", (1, 40), "block"), ("cnn", (3, 8, 8), "head"), ("vgg", (3, 8, 8), "block"),
    ("resnet", (3, 8, 8), "block")])
def test_placed_model_matches_built_in_architectures_by_name_and_value(arch, shape, dropout):
    """place(build(before), p) is build(p): same state_dict names and order, same outputs, once both
    are initialised by name and share their dropout masks. The built-in models are the reference for
    the bias rule (bnstats' seeded dropout stays a module: tracing does not fix its training branch)."""
    def build(placement):
        return models.build(ModelConfig(arch=arch, placement=placement, width=8, depth=1, dropout=0.2,
                                        dropout_position=dropout), shape, 10)

    base = build("before")
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(2))
    for placement in PLACEMENTS:
        ref, placed = build(placement), bnn.place(base, placement)
        models.init_parameters(placed, 7)
        models.init_parameters(ref, 7)
        assert [(k, v.shape) for k, v in placed.state_dict().items()] == \
            [(k, v.shape) for k, v in ref.state_dict().items()], placement
        for mode in (True, False):
            models.set_dropout_generator(placed, torch.Generator().manual_seed(3))
            models.set_dropout_generator(ref, torch.Generator().manual_seed(3))
            assert torch.equal(placed.train(mode)(x), ref.train(mode)(x)), (placement, mode)


def test_biases_take_the_dtype_of_their_weights():
    placed = bnn.place(PlainNet().double(), "after")
    assert placed.fc1.bias.dtype == torch.float64
    assert placed(torch.randn(3, *IMAGE, dtype=torch.float64)).dtype == torch.float64


def test_normact_models_placed_equal_normact_models_built_with_the_placement():
    class Res(nn.Module):
        def __init__(self, placement):
            super().__init__()
            self.fc1 = nn.Linear(6, 6, bias=placement != "before")
            self.pair1 = bnn.NormAct(6, placement=placement, activation="gelu", spatial_dims=0)
            self.fc2 = nn.Linear(6, 6, bias=placement != "before")
            self.pair2 = bnn.NormAct(6, placement=placement, activation="relu", spatial_dims=0)
            self.head = nn.Linear(6, 3)

        def forward(self, x):
            return self.head(self.pair2(self.fc2(self.pair1(self.fc1(x))), residual=x))

    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    base = _randomise(Res("before"), 1)
    for placement in PLACEMENTS:
        placed = bnn.place(base, placement)
        built = Res(placement)
        built.load_state_dict(placed.state_dict())
        assert [k for k in built.state_dict()] == [k for k in placed.state_dict()]
        for mode in (True, False):
            assert torch.equal(placed.train(mode)(x), built.train(mode)(x)), (placement, mode)


def test_pre_ln_mlp_has_no_pair():
    torch.manual_seed(0)
    model = _randomise(TokenNet(PreLnMlpBlock), 0).eval()
    x = torch.randn(4, *TOKENS, generator=torch.Generator().manual_seed(1))
    assert bnn.pairs(model) == []
    with pytest.raises(bnn.PlacementError, match=r"no norm→activation pair to place 'after'.*blocks\.0\.ln "
                                                 r"\(node 'blocks_0_ln'\) feeds 'blocks_0_fc1'"):
        bnn.place(model, "after")
    assert torch.equal(bnn.place(model, "before")(x), model(x))
    none = bnn.place(model, "none")
    assert not any(isinstance(m, NORMS) for m in none.modules())
    assert _new_param_names(none, model) == set()   # a norm reading a block's input has no op to give a bias
    # what is left is the model without its norms
    with torch.no_grad():
        h = model.embed(x)
        for b in model.blocks:
            h = h + b.fc2(b.act(b.fc1(h)))
        assert torch.equal(none(x), model.head(h.mean(1)))


# ---------------------------------------------------------------------------------------------------
# Activations in every form


class AllForms(nn.Module):
    """One BN → activation pair per functional/method form place() understands."""

    FORMS = {
        "F.relu": (lambda x: F.relu(x), nn.ReLU, {}),
        "F.relu inplace": (lambda x: F.relu(x, inplace=True), nn.ReLU, {}),
        "torch.relu": (lambda x: torch.relu(x), nn.ReLU, {}),
        "torch.relu_": (lambda x: torch.relu_(x), nn.ReLU, {}),
        "x.relu": (lambda x: x.relu(), nn.ReLU, {}),
        "x.relu_": (lambda x: x.relu_(), nn.ReLU, {}),
        "F.relu6": (lambda x: F.relu6(x), nn.ReLU6, {}),
        "F.hardtanh 0 6": (lambda x: F.hardtanh(x, 0.0, 6.0), nn.ReLU6, {}),
        "F.hardtanh": (lambda x: F.hardtanh(x, -2.0, 2.0), nn.Hardtanh, {"min_val": -2.0, "max_val": 2.0}),
        "F.leaky_relu": (lambda x: F.leaky_relu(x, 0.2), nn.LeakyReLU, {"negative_slope": 0.2}),
        "F.leaky_relu_": (lambda x: F.leaky_relu_(x, 0.3), nn.LeakyReLU, {"negative_slope": 0.3}),
        "F.elu": (lambda x: F.elu(x, alpha=2.0), nn.ELU, {"alpha": 2.0}),
        "F.selu": (lambda x: F.selu(x), nn.SELU, {}),
        "F.gelu tanh": (lambda x: F.gelu(x, approximate="tanh"), nn.GELU, {"approximate": "tanh"}),
        "F.silu": (lambda x: F.silu(x, inplace=True), nn.SiLU, {}),
        "torch.tanh": (lambda x: torch.tanh(x), nn.Tanh, {}),
        "F.tanh": (lambda x: F.tanh(x), nn.Tanh, {}),
        "torch.sigmoid": (lambda x: torch.sigmoid(x), nn.Sigmoid, {}),
        "x.sigmoid_": (lambda x: x.sigmoid_(), nn.Sigmoid, {}),
        "F.hardswish": (lambda x: F.hardswish(x), nn.Hardswish, {}),
        "F.mish": (lambda x: F.mish(x), nn.Mish, {}),
    }

    def __init__(self):
        super().__init__()
        self.fcs = nn.ModuleList(nn.Linear(4, 4, bias=False) for _ in self.FORMS)
        self.bns = nn.ModuleList(nn.BatchNorm1d(4) for _ in self.FORMS)

    def forward(self, x):
        outs = [fn(bn(fc(x))) for (fn, _, _), fc, bn in zip(self.FORMS.values(), self.fcs, self.bns, strict=True)]
        return torch.cat(outs, dim=1)


def test_every_activation_form_becomes_its_own_module():
    torch.manual_seed(0)
    model = _randomise(AllForms(), 3).eval()
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    found = bnn.pairs(model)
    assert [p.norm for p in found] == [f"bns.{i}" for i in range(len(AllForms.FORMS))]
    placed = bnn.place(model, "before").eval()
    for p, (label, (_, cls, attrs)) in zip(found, AllForms.FORMS.items(), strict=True):
        act = placed.get_submodule(p.activation)
        assert type(act) is cls, label
        assert not getattr(act, "inplace", False), label
        for k, v in attrs.items():
            assert getattr(act, k) == v, label
    assert torch.equal(placed(x), model(x))
    after = bnn.place(model, "after").eval()
    events = _calls(after, x)
    kinds = [k for k, *_ in events]
    assert kinds == ["act", "norm"] * len(AllForms.FORMS)


def test_inplace_activation_whose_input_is_read_later():
    """``F.relu_(h)`` with its result unused: later reads of ``h`` saw the activated tensor."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.bn, self.out = nn.Linear(4, 4, bias=False), nn.BatchNorm1d(4), nn.Linear(4, 2)

        def forward(self, x):
            h = self.bn(self.fc(x))
            torch.relu_(h)
            return self.out(h) + h.sum(1, keepdim=True)

    torch.manual_seed(0)
    model = _randomise(M(), 0).eval()
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(bnn.place(model, "before")(x), model(x))
    after = bnn.place(model, "after").eval()
    with torch.no_grad():
        h = model.bn(torch.relu(model.fc(x) + after.fc.bias))
        assert torch.equal(after(x), model.out(h) + h.sum(1, keepdim=True))


# ---------------------------------------------------------------------------------------------------
# Biases, randomness, copies


def test_new_biases_follow_pytorch_default_bounds_and_never_touch_the_global_rng():
    model, _ = _zoo("resnet_basic")
    state = torch.random.get_rng_state()
    after = bnn.place(model, "after")
    none = bnn.place(model, "none")
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(123)  # a disturbed global RNG changes nothing
    again = bnn.place(model, "after")
    for op in ZOO["resnet_basic"][3]:
        b = after.get_submodule(op).bias
        # PyTorch's default for a conv bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = C_in · k_h · k_w
        conv = model.get_submodule(op)
        bound = 1 / math.sqrt(conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1])
        assert b.shape == (conv.out_channels,)
        assert b.abs().max() <= bound and b.abs().max() > bound / 2
        assert torch.equal(b, again.get_submodule(op).bias)
        assert torch.equal(b, none.get_submodule(op).bias)   # an op's new bias is the same in both arms
    # distinct names, distinct draws
    assert not torch.equal(after.get_submodule("layer1.0.conv1").bias, after.get_submodule("layer1.0.conv2").bias)


def test_generator_draws_the_biases_the_same_way_in_every_placement():
    model, _ = _zoo("mobilenet_v2")
    states = []
    placed = {}
    for placement in PLACEMENTS:
        g = torch.Generator().manual_seed(5)
        placed[placement] = bnn.place(model, placement, generator=g)
        states.append(g.get_state())
    assert all(torch.equal(s, states[0]) for s in states)          # advanced equally
    assert not torch.equal(states[0], torch.Generator().manual_seed(5).get_state())
    shared = ZOO["mobilenet_v2"][3]
    for op in shared:
        assert torch.equal(placed["after"].get_submodule(op).bias, placed["none"].get_submodule(op).bias)
    other = bnn.place(model, "after", generator=torch.Generator().manual_seed(6))
    name_seeded = bnn.place(model, "after")
    op = "features.0.0"
    assert not torch.equal(placed["after"].get_submodule(op).bias, other.get_submodule(op).bias)
    assert not torch.equal(placed["after"].get_submodule(op).bias, name_seeded.get_submodule(op).bias)


def test_linear_bias_bound():
    model = AllForms()
    placed = bnn.place(model, "none")
    b = placed.get_submodule("fcs.0").bias
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(model.fcs[0].weight)  # PyTorch's own computation
    assert fan_in == 4 and b.abs().max() <= 1 / math.sqrt(fan_in)


def test_place_is_idempotent_and_records_what_it_did():
    model, x = _zoo("resnet_basic_functional")
    once = bnn.place(model, "after")
    twice = bnn.place(bnn.place(model, "before"), "after")
    assert [k for k in once.state_dict()] == [k for k in twice.state_dict()]
    assert all(torch.equal(a, b) for a, b in zip(once.state_dict().values(), twice.state_dict().values(),
                                                  strict=True))
    assert torch.equal(once.eval()(x), twice.eval()(x))
    assert once.meta["bnstats.placement"] == "after"
    assert list(once.meta["bnstats.pairs"]) == bnn.pairs(model)
    clone = copy.deepcopy(once)
    assert clone.meta["bnstats.pairs"] == once.meta["bnstats.pairs"]
    assert bnn.pairs(once) == []    # an 'after' model has act → norm, not norm → act
    assert bnn.pairs(model)[2].to_dict() == {
        "norm": "layer1.0.bn2", "activation": "layer1.0.relu_2", "op": "layer1.0.conv2", "adds": ["add"],
        "norm_node": "layer1_0_bn2", "activation_node": "relu_2"}


def test_modes_of_the_model_are_kept():
    model, _ = _zoo("plain")
    model.train()
    model.features[1].eval()   # e.g. a frozen norm
    placed = bnn.place(model, "after")
    assert placed.training and not placed.get_submodule("features.1").training
    assert placed.get_submodule("features.5").training
    assert model.training and not model.features[1].training


# ---------------------------------------------------------------------------------------------------
# What place() refuses


def test_errors_name_the_module_and_node():
    class FeedsTwo(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn2, self.relu = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), nn.ReLU()

        def forward(self, x):
            out = self.bn2(self.conv(x))
            return torch.cat([self.relu(out + x), out], dim=1)

    for placement in PLACEMENTS:   # the same refusal in every arm
        with pytest.raises(bnn.PlacementError, match=r"^place: bn2 \(node 'bn2'\): its output feeds 'add' and "
                                                     r"'cat'; cannot move it after the activation$"):
            bnn.place(FeedsTwo(), placement)

    class AddFeedsTwo(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(3)

        def forward(self, x):
            s = self.bn(x) + x
            return F.relu(s) * s

    with pytest.raises(bnn.PlacementError, match=r"bn \(node 'bn'\): it reaches the activation relu through "
                                                 r"'add', whose output feeds 'relu' and 'mul'"):
        bnn.pairs(AddFeedsTwo())


def test_untraceable_model_names_module_and_line():
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(3)

        def forward(self, x):
            if x.sum() > 0:   # data-dependent control flow
                return F.relu(self.bn(x))
            return x

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Gate()

        def forward(self, x):
            return self.block(x)

    with pytest.raises(bnn.PlacementError, match=r"cannot trace Outer: block \(Gate\) at test_nn\.py:\d+: "
                                                 r"symbolically traced variables cannot be used as inputs to "
                                                 r"control flow") as info:
        bnn.place(Outer(), "after")
    assert isinstance(info.value, ValueError)


def test_forward_that_depends_on_training_mode_is_refused():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.bn = nn.Linear(3, 3, bias=False), nn.BatchNorm1d(3)

        def forward(self, x):
            return F.dropout(F.relu(self.bn(self.fc(x))), 0.5, training=self.training)

    with pytest.raises(bnn.PlacementError, match=r"M's forward differs between train and eval mode.*"
                                                 r"training = True.*training = False"):
        bnn.place(M(), "before")


@pytest.mark.parametrize("case", ["shared norm", "functional norm", "norm tensors read", "opaque module"])
def test_models_place_cannot_rewrite(case):
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.bn = nn.Linear(3, 3), nn.BatchNorm1d(3)

        def forward(self, x):
            return F.relu(self.bn(self.fc(F.relu(self.bn(x)))))

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return F.relu(F.layer_norm(self.fc(x), (3,)))

    class ReadsWeight(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(3)

        def forward(self, x):
            return F.relu(self.bn(x)) * self.bn.weight

    class Opaque(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(4, 1, 8, dropout=0.0, batch_first=True)

        def forward(self, x):
            return self.layer(x)

    model, pattern = {
        "shared norm": (Shared(), r"place: bn \(node 'bn'\) is called 2 times in forward"),
        "functional norm": (Functional(), r"place: node 'layer_norm' in the model's forward calls layer_norm"),
        "norm tensors read": (ReadsWeight(), r"place: forward reads bn\.weight \(node 'bn_weight'\) directly"),
        "opaque module": (Opaque(), r"place: layer \(TransformerEncoderLayer, node 'layer'\) holds a norm "
                                    r"\(layer\.norm1\) inside a module that torch\.fx does not trace into"),
    }[case]
    for placement in PLACEMENTS:
        with pytest.raises(bnn.PlacementError, match=pattern):
            bnn.place(model, placement)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"place: placement: expected one of 'before', 'after', 'none', "
                                         r"got 'post'"):
        bnn.place(PlainNet(), "post")
    with pytest.raises(TypeError, match="place: model must be a torch.nn.Module, got function"):
        bnn.place(lambda x: x, "before")
    with pytest.raises(TypeError, match="place: generator must be a torch.Generator or None, got int"):
        bnn.place(PlainNet(), "after", generator=3)


# ---------------------------------------------------------------------------------------------------
# NormAct


@pytest.mark.parametrize("placement, norm, spatial, residual",
                         list(itertools.product(PLACEMENTS, ("batch", "layer", "group"), (0, 1, 2), (False, True))))
def test_normact_forward_is_the_hand_written_order(placement, norm, spatial, residual):
    pair = bnn.NormAct(8, placement=placement, activation="silu", norm=norm, spatial_dims=spatial)
    _randomise(pair, 0)
    shape = (5, 8) + (6,) * spatial
    g = torch.Generator().manual_seed(1)
    x, r = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    res = r if residual else torch.zeros(())
    for mode in (True, False):
        pair.train(mode)
        state = copy.deepcopy(pair.state_dict())
        got = pair(x, r if residual else None)
        pair.load_state_dict(state)  # running stats back where they were before the call
        want = {"before": lambda: F.silu(pair.norm(x) + res), "after": lambda: pair.norm(F.silu(x + res)),
                "none": lambda: F.silu(x + res)}[placement]()
        assert torch.equal(got, want)
    assert pair.sites == models.block_sites(placement)
    assert (pair.norm is None) == (placement == "none")
    assert not any(isinstance(m, NORMS) for m in pair.modules()) or placement != "none"


def test_normact_builds_the_norm_of_its_kind():
    cases = {("batch", 0): nn.BatchNorm1d, ("batch", 1): nn.BatchNorm1d, ("batch", 2): nn.BatchNorm2d,
             ("batch", 3): nn.BatchNorm3d, ("layer", 0): nn.LayerNorm, ("layer", 2): nn.GroupNorm,
             ("group", 2): nn.GroupNorm}
    for (kind, spatial), cls in cases.items():
        pair = bnn.NormAct(64, placement="before", activation=nn.ReLU6(), norm=kind, spatial_dims=spatial,
                           affine=False)
        assert type(pair.norm) is cls and type(pair.act) is nn.ReLU6
        assert list(pair.parameters()) == []
    assert bnn.NormAct(64, placement="after", activation="relu", norm="group", spatial_dims=2).norm.num_groups == 32
    assert [n for n, _ in bnn.NormAct(4, placement="before", activation="relu", spatial_dims=0)
            .named_parameters()] == ["norm.weight", "norm.bias"]


def test_normact_errors():
    with pytest.raises(ValueError, match=r"NormAct: placement: expected one of 'before', 'after', 'none', "
                                         r"got 'pre'"):
        bnn.NormAct(4, placement="pre", activation="relu", spatial_dims=0)
    with pytest.raises(ValueError, match=r"activation: expected one of 'relu', .*'identity' or an nn.Module, "
                                         r"got 'swish'"):
        bnn.NormAct(4, placement="before", activation="swish", spatial_dims=0)
    with pytest.raises(TypeError, match="NormAct: activation must be one of .* or an nn.Module, got function"):
        bnn.NormAct(4, placement="before", activation=F.relu, spatial_dims=0)
    with pytest.raises(ValueError, match="in-place"):
        bnn.NormAct(4, placement="before", activation=nn.ReLU(inplace=True), spatial_dims=0)
    with pytest.raises(ValueError, match=r"NormAct: norm must be one of 'batch', 'layer', 'group', got 'rms'"):
        bnn.NormAct(4, placement="before", activation="relu", norm="rms", spatial_dims=0)
    with pytest.raises(ValueError, match="NormAct: channels must be a positive int, got 0"):
        bnn.NormAct(0, placement="before", activation="relu", spatial_dims=0)
    with pytest.raises(ValueError, match="NormAct: spatial_dims must be 0, 1, 2 or 3, got 4"):
        bnn.NormAct(4, placement="before", activation="relu", spatial_dims=4)


def test_block_is_a_normact_and_keeps_its_names():
    """The names the stored runs and the stacked engine rely on (initialisation is keyed by them)."""
    net = models.build(ModelConfig(arch="resnet", placement="before", width=4, depth=1), (3, 8, 8), 10)
    assert all(isinstance(b, bnn.NormAct) for b in net.blocks())
    assert [n for n, _ in net.named_parameters()][:8] == [
        "body.0.op.weight", "body.0.norm.weight", "body.0.norm.bias", "body.1.block1.op.weight",
        "body.1.block1.norm.weight", "body.1.block1.norm.bias", "body.1.block2.op.weight",
        "body.1.block2.norm.weight"]
    assert [n for n, _ in net.body[2].named_parameters()] == [
        "block1.op.weight", "block1.norm.weight", "block1.norm.bias", "block2.op.weight", "block2.norm.weight",
        "block2.norm.bias", "shortcut.0.weight", "shortcut.1.weight", "shortcut.1.bias"]
    block = net.blocks()[0]
    assert [n for n, _ in block.named_children()] == ["op", "act", "norm"]
    assert (block.index, block.placement, block.pool, block.pool_first, block.dropout) == (0, "before", None,
                                                                                            False, None)


@pytest.mark.parametrize("arch, placement, order", [
    (a, p, o) for a, p, o in itertools.product(("mlp", "cnn", "resnet"), PLACEMENTS, ("post", "pre"))
    if a == "resnet" or o == "post"])
def test_hooks_on_norm_and_act_see_exactly_the_recorded_sites(arch, placement, order):
    """moments.record (the training loop's sites) reports, for every block in forward order, the inputs
    and outputs of its norm and activation modules, in the placement's site order, residual included."""
    from bnstats import moments

    shape = (3, 8, 8) if arch == "resnet" else (1, 40)
    net = models.build(ModelConfig(arch=arch, placement=placement, resnet_order=order, width=4, depth=1,
                                   pool="before_norm"), shape, 10)
    models.init_parameters(net, 0)
    x = torch.randn(6, *shape, generator=torch.Generator().manual_seed(0))
    recorded = []
    with torch.no_grad(), moments.record(net, lambda i, site, t: recorded.append((i, site, t.clone()))):
        net(x)
    for b in net.blocks():
        assert [s for i, s, _ in recorded if i == b.index] == list(models.block_sites(placement))
    hooked = []
    handles = []
    for b in net.blocks():
        for module, (site_in, site_out) in ((b.norm, ("norm_in", "norm_out")), (b.act, ("act_in", "act_out"))):
            if module is not None:
                handles.append(module.register_forward_hook(
                    lambda m, i, o, idx=b.index, s=(site_in, site_out): hooked.extend(
                        [(idx, s[0], i[0].clone()), (idx, s[1], o.clone())])))
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    assert [(i, s) for i, s, _ in hooked] == [(i, s) for i, s, _ in recorded]
    assert all(torch.equal(a, b) for (_, _, a), (_, _, b) in zip(hooked, recorded, strict=True))
    layers = [i for i, _, _ in hooked]
    assert layers == sorted(layers)   # numbered in forward order


def test_tensors_forward_reads_directly_keep_their_order_and_persistence():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.bn = nn.Linear(3, 3, bias=False), nn.BatchNorm1d(3)
            self.scale = nn.Parameter(torch.full((3,), 2.0))
            self.register_buffer("offset", torch.ones(3))
            self.register_buffer("mask", torch.tensor([1.0, 0.0, 1.0]), persistent=False)

        def forward(self, x):   # forward reads mask, offset, scale: not the order they were registered in
            return F.relu(self.bn(self.fc(x * self.mask + self.offset))) * self.scale

    model = Scaled().eval()
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    for placement in PLACEMENTS:
        placed = bnn.place(model, placement)
        assert [n for n, _ in placed.named_parameters()] == {
            "before": ["scale", "fc.weight", "bn.weight", "bn.bias"],
            "after": ["scale", "fc.weight", "fc.bias", "bn.weight", "bn.bias"],
            "none": ["scale", "fc.weight", "fc.bias"]}[placement]
        assert [k for k in placed.state_dict() if not k.startswith(("bn.", "fc."))] == ["scale", "offset"]
    assert torch.equal(bnn.place(model, "before")(x), model(x))
