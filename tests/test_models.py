import itertools

import numpy as np
import pytest
import torch
from torch import nn

from bnstats import models, moments
from bnstats.config import ACTIVATIONS, PLACEMENTS, ModelConfig

SHAPES = {"seq": (1, 40), "img": (3, 16, 16)}


def _ops_followed_by_norm(model):
    """Linear/conv ops that a norm directly follows in forward order (placement 'before')."""
    return [b.op for b in model.blocks() if b.placement == "before"]


@pytest.mark.parametrize("arch, placement, activation, shape", [
    (a, p, act, s) for a, p, act, s in itertools.product(
        sorted(models.BUILDERS), PLACEMENTS, ACTIVATIONS, SHAPES)
    if not (a == "mlp" and s == "img" and act not in ("relu", "tanh"))
    and not (a in ("vgg", "resnet") and s == "seq")  # image-only archs (tests/test_archs.py covers them)
])
def test_every_model_builds_runs_and_has_no_bias_before_a_norm(arch, placement, activation, shape):
    cfg = ModelConfig(arch=arch, placement=placement, activation=activation, width=8, depth=2)
    model = models.build(cfg, SHAPES[shape], 10)
    models.init_parameters(model, seed=0)
    x = torch.randn(4, *SHAPES[shape], generator=torch.Generator().manual_seed(0))
    out = model(x)
    assert out.shape == (4, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    for op in _ops_followed_by_norm(model):
        assert op.bias is None
    has_norm = any(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in model.modules())
    assert has_norm == (placement != "none")
    if placement == "none":
        assert all(b.op.bias is not None for b in model.blocks())


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_sites_follow_placement_order(placement):
    model = models.build(ModelConfig(arch="mlp", placement=placement, width=8, depth=2), (1, 40), 10)
    seen = []
    with moments.record(model, lambda layer, site, x: seen.append((layer, site))):
        model(torch.zeros(3, 1, 40))
    expected = [(i, s) for i in range(2) for s in models.block_sites(placement)]
    assert seen == expected


def test_before_site_values_are_what_they_claim():
    model = models.build(ModelConfig(arch="mlp", placement="before", width=8, depth=1), (1, 40), 10)
    models.init_parameters(model, 0)
    got = {}
    with moments.record(model, lambda layer, site, x: got.__setitem__(site, x.detach().clone())):
        model(torch.randn(64, 1, 40, generator=torch.Generator().manual_seed(1)))
    block = model.blocks()[0]
    torch.testing.assert_close(got["norm_out"], got["act_in"])
    torch.testing.assert_close(got["act_out"], torch.relu(got["act_in"]))
    # batch-norm output in train mode: zero mean, unit (biased) variance per feature
    torch.testing.assert_close(got["norm_out"].mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    assert block.op.bias is None


@pytest.mark.parametrize("arch, shape", [("mlp", (1, 40)), ("cnn", (1, 40)), ("cnn", (3, 16, 16))])
def test_arms_of_a_seed_share_initial_tensors(arch, shape):
    nets = {}
    for p in PLACEMENTS:
        m = models.build(ModelConfig(arch=arch, placement=p, width=8, depth=2), shape, 10)
        models.init_parameters(m, seed=7)
        nets[p] = m
    shared = models.shared_parameter_names(nets["before"])
    assert shared == models.shared_parameter_names(nets["none"]) == models.shared_parameter_names(nets["after"])
    assert any(n.startswith("head.") for n in shared) and len(shared) >= 3
    for name in shared:
        ref = dict(nets["before"].named_parameters())[name]
        for p in ("after", "none"):
            assert torch.equal(dict(nets[p].named_parameters())[name], ref), (name, p)
    # biases that `after` and `none` both have are identical too
    for i, (a, n) in enumerate(zip(nets["after"].blocks(), nets["none"].blocks(), strict=True)):
        assert torch.equal(a.op.bias, n.op.bias), i
    assert len({models.init_hash(m) for m in nets.values()}) == 1
    other = models.build(ModelConfig(arch=arch, placement="before", width=8, depth=2), shape, 10)
    models.init_parameters(other, seed=8)
    assert models.init_hash(other) != models.init_hash(nets["before"])


def test_init_ignores_global_rng():
    def init_weights(disturb):
        torch.manual_seed(disturb)
        np.random.seed(disturb)
        m = models.build(ModelConfig(arch="cnn", width=8), (1, 40), 10)
        models.init_parameters(m, seed=3)
        return [p.detach().clone() for p in m.parameters()]
    for a, b in zip(init_weights(1), init_weights(2), strict=True):
        assert torch.equal(a, b)


def test_default_init_matches_pytorch_bounds():
    m = models.build(ModelConfig(arch="mlp", placement="none", width=50, depth=1), (1, 40), 10)
    models.init_parameters(m, 0)
    w = m.blocks()[0].op.weight.detach()
    bound = 1 / np.sqrt(40)
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    assert abs(float(w.mean())) < 0.01
