"""Architectures: every arch × placement × activation builds and trains a step on MNIST- and
CIFAR-shaped inputs; biases follow the norms (checked on the traced graph, not on names); sites and
layer indices follow forward order; arms of a seed share their initial tensors; the residual blocks
compute what He et al. (2015, 2016) describe."""

import itertools
import operator

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from bnstats import models, moments
from bnstats.config import ACTIVATIONS, NORMS, PLACEMENTS, ModelConfig

SHAPES = {"mnist": (1, 28, 28), "cifar": (3, 32, 32)}
ARCHS = [("mlp", "post"), ("cnn", "post"), ("vgg", "post"), ("resnet", "post"), ("resnet", "pre")]
OPS = (nn.Linear, nn.Conv1d, nn.Conv2d)
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


def _cfg(arch, order="post", **kw):
    kw.setdefault("width", 8 if arch == "mlp" else 4)
    kw.setdefault("depth", 1)
    return ModelConfig(arch=arch, resnet_order=order, **kw)


def _sites(model, x):
    """{(layer, site): tensor} of one forward pass."""
    got = {}
    with moments.record(model, lambda layer, site, t: got.__setitem__((layer, site), t.detach().clone())):
        model(x)
    return got


def _graph(model):
    gm = torch.fx.symbolic_trace(model)
    return gm.graph, dict(gm.named_modules())


def _is_act(node):  # a block's activation (whatever it is, `identity` included)
    return node.op == "call_module" and node.target.endswith(".act")


def _module(node, mods):
    return mods[node.target] if node.op == "call_module" else None


def _direct_followers(node, mods):
    """The nodes that consume ``node``'s output, looking through max-pooling (it commutes with a shift)."""
    out = []
    for u in node.users:
        if isinstance(_module(u, mods), nn.MaxPool1d | nn.MaxPool2d):
            out += _direct_followers(u, mods)
        else:
            out.append(u)
    return out


def _reaches_a_norm_first(node, mods):
    """Whether every path from ``node`` meets a norm before an activation, another op or the output."""
    results = []
    for u in node.users:
        m = _module(u, mods)
        if isinstance(m, NORM_TYPES):
            results.append(True)
        elif u.op == "output" or isinstance(m, OPS) or _is_act(u):
            results.append(False)
        else:  # pooling, flatten, identity, the residual add
            results.append(_reaches_a_norm_first(u, mods))
    return bool(results) and all(results)


def _check_biases(model, placement):
    graph, mods = _graph(model)
    ops = [n for n in graph.nodes if isinstance(_module(n, mods), OPS)]
    assert ops
    for n in ops:
        op = mods[n.target]
        if any(isinstance(_module(f, mods), NORM_TYPES) for f in _direct_followers(n, mods)):
            assert op.bias is None, f"{n.target} is directly followed by a norm but has a bias"
        # the rule the builders follow: a bias exactly where no norm absorbs it
        assert (op.bias is None) == _reaches_a_norm_first(n, mods), n.target
        if placement == "none":
            assert op.bias is not None, n.target
    adds = [n for n in graph.nodes if n.op == "call_function" and n.target in (operator.add, torch.add)]
    return ops, adds


@pytest.mark.parametrize("arch, order, placement, activation, shape", [
    (a, o, p, act, s) for (a, o), p, act, s in itertools.product(ARCHS, PLACEMENTS, ACTIVATIONS, SHAPES)
])
def test_every_arch_builds_trains_a_step_and_has_biases_only_where_no_norm_follows(
        arch, order, placement, activation, shape):
    cfg = _cfg(arch, order, placement=placement, activation=activation)
    model = models.build(cfg, SHAPES[shape], 10)
    models.init_parameters(model, seed=0)
    x = torch.randn(3, *SHAPES[shape], generator=torch.Generator().manual_seed(0))
    out = model(x)
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert any(isinstance(m, NORM_TYPES) for m in model.modules()) == (placement != "none")
    ops, adds = _check_biases(model, placement)
    if arch == "resnet":
        assert len(adds) == 3 * cfg.depth  # one residual add per basic block


@pytest.mark.parametrize("arch, order", ARCHS)
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_sites_and_layer_indices_follow_forward_order(arch, order, placement):
    model = models.build(_cfg(arch, order, placement=placement, depth=2), SHAPES["cifar"], 10)
    seen = []
    with moments.record(model, lambda layer, site, x: seen.append((layer, site))):
        model(torch.randn(4, *SHAPES["cifar"], generator=torch.Generator().manual_seed(0)))
    blocks = model.blocks()
    assert [b.index for b in blocks] == list(range(len(blocks)))
    expected = [(i, s) for i in range(len(blocks)) for s in models.block_sites(placement)]
    assert seen == expected
    n = {"mlp": 2, "cnn": 2, "vgg": 3 * 2, "resnet": 1 + 2 * 3 * 2}[arch]
    assert len(blocks) == n


def test_residual_add_joins_right_before_the_activation():
    """act_in is the sum (norm output + shortcut) in `before`, and the op output + shortcut in `after`."""
    for placement in ("before", "after"):
        model = models.build(_cfg("resnet", placement=placement), SHAPES["cifar"], 10)
        models.init_parameters(model, 0)
        got = _sites(model, torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
        res = model.body[1]  # first residual block: identity shortcut; its input is the stem's output
        stem_out = got[(0, "act_out" if placement == "before" else "norm_out")]
        if placement == "before":
            torch.testing.assert_close(got[(2, "act_in")], got[(2, "norm_out")] + stem_out)
        else:
            torch.testing.assert_close(got[(2, "act_in")], res.block2.op(got[(1, "norm_out")]) + stem_out)


def test_post_resnet_blocks_compute_he_2015():
    """before: relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut x); after: bn2(relu(conv2(h) + s))."""
    x = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    for placement in ("before", "after", "none"):
        model = models.build(_cfg("resnet", placement=placement, width=4), SHAPES["cifar"], 10)
        models.init_parameters(model, 3)
        model.eval()  # running statistics: the same function for any batch
        for i, res in ((1, model.body[1]), (2, model.body[2])):  # identity block, projection block
            b1, b2 = res.block1, res.block2
            h = b1.op(x)
            if placement == "before":
                h = F.relu(b1.norm(h))
                s = x if res.shortcut is None else res.shortcut[1](res.shortcut[0](x))
                want = F.relu(b2.norm(b2.op(h)) + s)
            elif placement == "after":
                h = b1.norm(F.relu(h))
                s = x if res.shortcut is None else res.shortcut[1](res.shortcut[0](x))
                want = b2.norm(F.relu(b2.op(h) + s))
            else:
                h = F.relu(h)
                s = x if res.shortcut is None else res.shortcut[0](x)
                want = F.relu(b2.op(h) + s)
            torch.testing.assert_close(res(x), want)
            assert (res.shortcut is None) == (i == 1)
            x = want if i == 1 else x


def test_pre_resnet_blocks_compute_he_2016():
    """before: conv2(relu(bn2(conv1(relu(bn1 x))))) + shortcut, the projection reading relu(bn1 x)."""
    model = models.build(_cfg("resnet", "pre", placement="before", width=4), SHAPES["cifar"], 10)
    models.init_parameters(model, 3)
    model.eval()
    x = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    for i, res in ((1, model.body[1]), (2, model.body[2])):
        b1, b2 = res.block1, res.block2
        a = F.relu(b1.norm(x))
        s = x if res.shortcut is None else res.shortcut(a)
        want = b2.op(F.relu(b2.norm(b1.op(a)))) + s
        torch.testing.assert_close(res(x), want)
        assert len(res.shortcut or []) == (i - 1)  # 1×1 conv only, no norm
    # the stem is a bare conv and a last norm-act precedes the pooling
    assert isinstance(model.body[0], models.Stem) and not isinstance(model.body[0], models.Block)
    last = model.body[-3]
    assert isinstance(last, models.Block) and isinstance(last.op, nn.Identity) and last.norm is not None


@pytest.mark.parametrize("order", ["post", "pre"])
def test_resnet_stages_strides_and_shortcuts(order):
    model = models.build(_cfg("resnet", order, width=4, depth=2), SHAPES["cifar"], 10)
    shapes = []
    res_blocks = [m for m in model.body if isinstance(m, models.ResBlock)]
    hooks = [r.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:]))) for r in res_blocks]
    model(torch.randn(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert shapes == [(4, 32, 32)] * 2 + [(8, 16, 16)] * 2 + [(16, 8, 8)] * 2
    assert [r.shortcut is not None for r in res_blocks] == [False, False, True, False, True, False]
    assert [r.block1.op.stride for r in res_blocks] == [(1, 1), (1, 1), (2, 2), (1, 1), (2, 2), (1, 1)]
    assert model.head.in_features == 16


def test_resnet20_has_the_published_size():
    m = models.build(ModelConfig(arch="resnet"), SHAPES["cifar"], 10)  # defaults: width 16, depth 3
    n = sum(p.numel() for p in m.parameters())
    assert 0.26e6 < n < 0.28e6  # He et al. 2015, Table 6: ResNet-20 has 0.27M parameters


def test_vgg_stages_double_the_width_and_pool_between_stages():
    model = models.build(_cfg("vgg", width=4, depth=2), SHAPES["mnist"], 10)
    blocks = model.blocks()
    assert [b.op.out_channels for b in blocks] == [4, 4, 8, 8, 16, 16]
    assert [b.pool is not None for b in blocks] == [False, True, False, True, False, False]
    assert all(b.op.kernel_size == (3, 3) for b in blocks)
    sizes = []
    with moments.record(model, lambda layer, site, x: sizes.append(x.shape[-1]) if site == "act_out" else None):
        model(torch.randn(2, 1, 28, 28))
    assert sizes == [28, 28, 14, 14, 7, 7]  # act_out precedes its own block's pool (pool after the norm)


@pytest.mark.parametrize("placement", ["before", "after"])
def test_pool_before_or_after_the_norm(placement):
    sizes = {}
    for pool in ("after_norm", "before_norm"):
        model = models.build(_cfg("vgg", placement=placement, depth=1, pool=pool), SHAPES["cifar"], 10)
        sizes[pool] = {k: v.shape[-1] for k, v in _sites(model, torch.randn(2, 3, 32, 32)).items()}
    assert sizes["after_norm"][(0, "norm_in")] == 32 and sizes["before_norm"][(0, "norm_in")] == 16
    assert sizes["after_norm"][(2, "norm_in")] == 8 == sizes["before_norm"][(2, "norm_in")]  # no pool


@pytest.mark.parametrize("arch, order", [a for a in ARCHS if a[0] != "mlp"])
@pytest.mark.parametrize("norm", NORMS)
def test_norm_kinds_and_affine_off(arch, order, norm):
    for affine in (True, False):
        model = models.build(_cfg(arch, order, norm=norm, affine=affine, width=8), SHAPES["cifar"], 10)
        models.init_parameters(model, 0)
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        norm_params = [p for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters()]
        assert bool(norm_params) == affine


@pytest.mark.parametrize("arch, order", ARCHS)
@pytest.mark.parametrize("position", ["block", "head"])
def test_dropout_positions_use_the_runs_generator(arch, order, position):
    cfg = _cfg(arch, order, dropout=0.5, dropout_position=position, depth=2)
    model = models.build(cfg, SHAPES["cifar"], 10)
    drops = [m for m in model.modules() if isinstance(m, models.SeededDropout)]
    n_block = {"mlp": 2, "cnn": 2, "vgg": 6, "resnet": 6}[arch]  # resnet: between the convs of each block
    assert len(drops) == (n_block if position == "block" else 1)
    models.init_parameters(model, 0)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    outs = []
    for _ in range(2):
        models.set_dropout_generator(model, torch.Generator().manual_seed(9))
        outs.append(model(x))
    torch.testing.assert_close(outs[0], outs[1])  # masks come from the generator, not the global RNG
    model.eval()
    torch.testing.assert_close(model(x), model(x))


@pytest.mark.parametrize("arch, order", [a for a in ARCHS if a[0] in ("vgg", "resnet")])
def test_arms_of_a_seed_share_initial_tensors(arch, order):
    nets = {}
    for p in PLACEMENTS:
        m = models.build(_cfg(arch, order, placement=p, width=4, depth=2), SHAPES["cifar"], 10)
        models.init_parameters(m, seed=7)
        nets[p] = m
    shared = models.shared_parameter_names(nets["before"])
    assert shared == models.shared_parameter_names(nets["after"]) == models.shared_parameter_names(nets["none"])
    ops = [n for n, m in nets["before"].named_modules() if isinstance(m, OPS)]
    assert shared == [f"{n}.weight" for n in ops] + ["head.bias"]  # every op's weight, and the head
    if arch == "resnet":
        assert any(".shortcut.0.weight" in n for n in shared)
    params = {p: dict(m.named_parameters()) for p, m in nets.items()}
    for name in shared:
        for p in ("after", "none"):
            assert params[p][name].shape == params["before"][name].shape
            assert torch.equal(params[p][name], params["before"][name]), (name, p)
    for name in set(params["after"]) & set(params["none"]):  # biases both have are equal too
        assert torch.equal(params["after"][name], params["none"][name]), name
    assert len({models.init_hash(m) for m in nets.values()}) == 1
    other = models.build(_cfg(arch, order, placement="before", width=4, depth=2), SHAPES["cifar"], 10)
    models.init_parameters(other, seed=8)
    assert models.init_hash(other) != models.init_hash(nets["before"])


def test_resnet_orders_share_initial_tensors_too():
    hashes = set()
    for order, p in itertools.product(("post", "pre"), PLACEMENTS):
        m = models.build(_cfg("resnet", order, placement=p), SHAPES["cifar"], 10)
        models.init_parameters(m, seed=1)
        hashes.add(models.init_hash(m))
    assert len(hashes) == 1


@pytest.mark.parametrize("arch", ["vgg", "resnet"])
def test_image_archs_refuse_sequences(arch):
    with pytest.raises(ValueError, match="needs images"):
        models.build(ModelConfig(arch=arch), (1, 40), 10)
