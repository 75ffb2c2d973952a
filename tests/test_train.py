import math

import numpy as np
import pytest
import torch

from bnstats import config, data, models, moments
from bnstats.train import lr_factor, train
from tests.conftest import tiny_toml


def _runs(data_root, tmp_path, **kw):
    p = tmp_path / "c.toml"
    p.write_text(tiny_toml(data_root, **kw))
    return config.load(p).runs()


def test_same_config_and_seed_give_bitwise_identical_numbers(data_root, tmp_path):
    run = _runs(data_root, tmp_path, epochs=2)[1]
    a, b = train(run), train(run)
    for k in ("test_acc", "test_loss", "train_loss", "init_hash", "order_hash"):
        assert a.run[k] == b.run[k], k
    assert [c["test_loss"] for c in a.curves] == [c["test_loss"] for c in b.curves]
    assert [m["skew"] for m in a.moments] == [m["skew"] for m in b.moments]


def test_global_rng_state_changes_nothing(data_root, tmp_path):
    run = _runs(data_root, tmp_path)[0]
    torch.manual_seed(1)
    np.random.seed(1)
    a = train(run)
    torch.manual_seed(2)
    np.random.seed(2)
    state = np.random.get_state()[1].copy()
    b = train(run)
    assert a.run["test_loss"] == b.run["test_loss"]
    assert np.array_equal(state, np.random.get_state()[1])  # and training did not touch it


def test_arms_of_a_seed_share_init_and_order_and_see_the_same_batches(data_root, tmp_path, monkeypatch):
    runs = [r for r in _runs(data_root, tmp_path) if r.model.arch == "mlp"]
    orders: dict[tuple, list] = {}
    real = data.epoch_order

    def spy(n, generator):
        perm = real(n, generator)
        orders.setdefault(key, []).append(perm.clone())
        return perm

    monkeypatch.setattr(data, "epoch_order", spy)
    outs = {}
    for r in runs:
        key = (r.seed, r.model.placement)
        outs[key] = train(r)
    for seed in (0, 1):
        arms = [k for k in outs if k[0] == seed]
        assert len(arms) == 3
        assert len({outs[k].run["init_hash"] for k in arms}) == 1
        assert len({outs[k].run["order_hash"] for k in arms}) == 1
        for k in arms[1:]:  # the batch orders themselves, not only their hash
            assert all(torch.equal(a, b) for a, b in zip(orders[arms[0]], orders[k], strict=True))
    assert outs[(0, "before")].run["init_hash"] != outs[(1, "before")].run["init_hash"]
    assert outs[(0, "before")].run["order_hash"] != outs[(1, "before")].run["order_hash"]


def test_augmentation_is_shared_by_the_arms_of_a_seed():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    g1, g2 = (torch.Generator().manual_seed(config.derive_seed(5, "aug")) for _ in range(2))
    a, b = data.augment(x, g1, padding=2), data.augment(x, g2, padding=2)
    assert torch.equal(a, b) and a.shape == x.shape
    c = data.augment(x, torch.Generator().manual_seed(config.derive_seed(6, "aug")), padding=2)
    assert not torch.equal(a, c)


def test_divergence_is_recorded_not_dropped(data_root, tmp_path):
    run = _runs(data_root, tmp_path, epochs=3,
                extra="")[4]  # placement none: nothing normalises a huge step
    run = config.RunConfig.from_dict({**run.to_dict(), "train": {**run.to_dict()["train"], "lr": 1e8}})
    out = train(run)
    assert out.run["diverged"] is True
    assert out.run["diverged_step"] >= 0
    assert math.isnan(out.run["test_acc"])
    assert out.run["epochs_completed"] == 1 and len(out.curves) == 1


def test_learning_curves_and_final_metrics(data_root, tmp_path):
    out = train(_runs(data_root, tmp_path, epochs=3)[0])
    assert [c["epoch"] for c in out.curves] == [1, 2, 3]
    assert out.run["test_acc"] == out.curves[-1]["test_acc"]
    assert 0.2 < out.run["test_acc"] <= 1.0  # learns something in 3 epochs (chance is 0.1)
    assert out.curves[-1]["train_loss"] < out.curves[0]["train_loss"]
    assert out.run["diverged"] is False


def test_lr_schedules():
    assert lr_factor(0, total=100, warmup=0, schedule="constant") == 1
    assert lr_factor(0, total=100, warmup=0, schedule="cosine") == 1
    assert lr_factor(50, total=100, warmup=0, schedule="cosine") == pytest.approx(0.5)
    assert lr_factor(99, total=100, warmup=0, schedule="cosine") < 0.01
    assert lr_factor(4, total=100, warmup=10, schedule="cosine") == pytest.approx(0.5)
    assert lr_factor(80, total=100, warmup=0, schedule="step") == pytest.approx(0.01)


def test_mnist1d_split_and_no_global_rng_side_effects(data_root):
    data._load_cached.cache_clear()
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    ds = data.load("mnist1d", root=data_root)
    assert np.array_equal(before, np.random.get_state()[1])
    assert ds.x_train.shape == (4000, 1, 40) and ds.x_test.shape == (1000, 1, 40)
    assert set(ds.y_train.tolist()) == set(range(10))


def test_model_init_is_shared_whatever_the_activation():
    a = models.build(config.ModelConfig(activation="relu"), (1, 40), 10)
    b = models.build(config.ModelConfig(activation="tanh", placement="after"), (1, 40), 10)
    models.init_parameters(a, 0)
    models.init_parameters(b, 0)
    assert models.init_hash(a) == models.init_hash(b)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("placement", ["before", "after"])
def test_recorded_pass_is_reduced_released_and_matches_scipy(arch, placement):
    import gc
    import weakref

    import scipy.stats

    model = models.build(config.ModelConfig(arch=arch, placement=placement), (1, 40), 10)
    models.init_parameters(model, 0)
    model.eval()
    x = torch.randn(64, 1, 40, generator=torch.Generator().manual_seed(0))
    copies, refs = {}, []

    class Spy(moments.SiteRecorder):
        def __call__(self, layer, site, t):  # what the recorder was handed, copied before the pass ends
            copies[(layer, site)] = t.detach().double().clone()
            refs.append(weakref.ref(t))
            super().__call__(layer, site, t)

    rec = Spy(model, moments.find_sites(model))
    with torch.no_grad(), rec.recording(epoch=1, step=0, source="probe"):
        model(x)
    rec.reduce()
    gc.collect()
    assert all(r() is None for r in refs)  # activations freed: only per-channel sums are kept
    rows, _ = rec.rows(per_channel=False)
    assert [(r["layer"], r["site"]) for r in rows] == list(copies)
    for r in rows:
        v = copies[(r["layer"], r["site"])]
        cols = v.movedim(1, 0).reshape(v.shape[1], -1).numpy()  # [C, N * L]
        live = cols.std(1) > 0  # scipy's skew of a constant channel is NaN, as ours
        with np.errstate(all="ignore"):
            skew = scipy.stats.skew(cols[live], axis=1, bias=True)
            kurt = scipy.stats.kurtosis(cols[live], axis=1, fisher=True, bias=True)
        assert r["count"] == cols.shape[1] and r["n_channels"] == cols.shape[0]
        assert r["mean"] == pytest.approx(cols.mean(1).mean(), rel=1e-5, abs=1e-6)
        assert r["var"] == pytest.approx(cols.var(1).mean(), rel=1e-5)
        assert r["skew"] == pytest.approx(skew.mean(), rel=1e-4, abs=1e-5)
        assert r["exkurt"] == pytest.approx(kurt.mean(), rel=1e-4, abs=1e-5)
        assert r["frac_zero"] == pytest.approx((cols == 0).mean(1).mean(), rel=1e-12)
        assert r["pooled_var"] == pytest.approx(cols.var(), rel=1e-5)
        assert r["pooled_skew"] == pytest.approx(scipy.stats.skew(cols.ravel()), rel=1e-4, abs=1e-5)


def test_probe_riding_on_evaluation_equals_a_probe_pass_of_its_own(data_root, tmp_path):
    # eval batch >= probe size: the probe is evaluation's first batch; smaller: a forward pass of its own
    from dataclasses import replace

    run = _runs(data_root, tmp_path, epochs=2)[1]  # mlp, after
    fused = train(run)
    own = train(replace(run, train=replace(run.train, eval_batch_size=100)))
    assert run.train.eval_batch_size >= run.moments.probe_size > 100

    def probes(out):
        return {(m["epoch"], m["layer"], m["site"]): m for m in out.moments if m["source"] == "probe"}

    a, b = probes(fused), probes(own)
    assert a.keys() == b.keys() and {k[0] for k in a} == {0, 1, 2}  # init and each epoch end
    for k in a:
        assert a[k]["count"] == b[k]["count"] == run.moments.probe_size  # mlp: one value per input
        for stat in ("mean", "var", "skew", "exkurt", "frac_zero", "pooled_exkurt"):
            assert a[k][stat] == pytest.approx(b[k][stat], rel=1e-5, abs=1e-6), (k, stat)
    assert fused.run["test_acc"] == own.run["test_acc"]
    assert fused.run["test_loss"] == pytest.approx(own.run["test_loss"], rel=1e-6)


def test_moment_rows_do_not_depend_on_when_they_are_reduced_or_summarised(data_root, tmp_path, monkeypatch):
    import bnstats.train as train_mod

    run = _runs(data_root, tmp_path, epochs=2)[4]  # cnn
    late = train(run)  # defaults: tensors reduced in batches, rows made at the end of the run
    monkeypatch.setattr(moments, "REDUCE_BYTES", 0)  # each pass reduced as it ends
    monkeypatch.setattr(moments, "PASS_BYTES", 0)  # and each site tensor as the next one arrives
    monkeypatch.setattr(train_mod, "MOMENT_STATE_BYTES", 0)  # rows made at every epoch end
    early = train(run)
    assert late.run["test_loss"] == early.run["test_loss"]

    def keyed(rows):
        return {(r["epoch"], r["step"], r["source"], r["layer"], r["site"]): r for r in rows}

    a, b = keyed(late.moments), keyed(early.moments)
    assert a.keys() == b.keys() and len(a) == len(late.moments) == len(early.moments)
    assert {k[2] for k in a} == {"train", "probe"}
    for k in a:
        for stat in ("mean", "var", "skew", "exkurt", "frac_zero", "pooled_skew"):
            assert a[k][stat] == pytest.approx(b[k][stat], rel=1e-12, abs=1e-15, nan_ok=True), (k, stat)


@pytest.mark.parametrize("placement", ["before", "after"])
def test_a_pass_over_the_reduce_threshold_holds_one_site_tensor_at_a_time(placement, monkeypatch):
    # a large model's recorded pass must not keep every site tensor alive until the pass ends
    monkeypatch.setattr(moments, "PASS_BYTES", 0)
    model = models.build(config.ModelConfig(arch="cnn", placement=placement), (1, 40), 10)
    models.init_parameters(model, 0)
    x = torch.randn(16, 1, 40, generator=torch.Generator().manual_seed(1))
    held = []

    class Spy(moments.SiteRecorder):
        def __call__(self, layer, site, t):
            super().__call__(layer, site, t)
            held.append(len({id(v) for _, v in self.items}))

    sites = moments.find_sites(model)
    rec = Spy(model, sites)
    with torch.no_grad(), rec.recording(epoch=0, step=0, source="probe"):
        model(x)
    assert held and max(held) == 1
    rows, _ = rec.rows(per_channel=False)
    monkeypatch.undo()  # the reference: the default threshold, everything reduced at the end
    ref = moments.SiteRecorder(model, sites)
    with torch.no_grad(), ref.recording(epoch=0, step=0, source="probe"):
        model(x)
    expect, _ = ref.rows(per_channel=False)
    assert [(r["layer"], r["site"]) for r in rows] == [(r["layer"], r["site"]) for r in expect]
    for a, b in zip(rows, expect, strict=True):
        assert a["var"] == pytest.approx(b["var"], rel=1e-12) and a["skew"] == pytest.approx(b["skew"], rel=1e-9)
