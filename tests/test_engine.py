"""A stack of seeds gives each seed what its own run gives it (up to float rounding)."""

import math

import numpy as np
import pytest
import torch

from bnstats import config, data, engine, models
from bnstats.train import group_by_arm, train, train_runs, train_stack
from tests.conftest import tiny_toml

NUMERIC = ("mean", "var", "skew", "exkurt", "frac_zero", "pooled_mean", "pooled_var", "pooled_skew",
           "pooled_exkurt", "pooled_frac_zero")


def _runs(data_root, tmp_path, **kw):
    p = tmp_path / "c.toml"
    p.write_text(tiny_toml(data_root, **kw))
    return config.load(p).runs()


def _close(a, b, tol):
    return a == b or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol * (1 + abs(b))


# Stacked and separate runs sum in different orders; training amplifies the rounding. Largest relative
# differences measured over the tests below (2 epochs) at three instruction sets (tests/test_cpu.py's
# levels default / avx2 / native AVX-512; 2026-11-30): losses 1.2e-4, moment means, variances and zero
# fractions 2.9e-4 (per channel included), skewness and excess kurtosis 1.8e-3. The bounds are ~5x those.
# The init probe (epoch 0, before any step) agrees exactly at every level, and is checked exactly.
METRIC_TOL, MOMENT_TOL, SHAPE_TOL = 1e-3, 2e-3, 1e-2


def _moment_tol(key: str) -> float:
    return SHAPE_TOL if "kurt" in key or "skew" in key else MOMENT_TOL


def _assert_same(stacked, singles, tol=METRIC_TOL):
    for a, b in zip(stacked, singles, strict=True):
        assert set(a.run) == set(b.run)
        assert (a.run["engine"], b.run["engine"], b.run["stack_size"]) == ("stack", "single", 1)
        for k in ("run_id", "seed", "init_hash", "order_hash", "data_hash", "diverged", "diverged_step",
                  "epochs_completed", "steps", "n_params", "n_test"):
            assert a.run[k] == b.run[k], k
        for o in (a, b):  # counts and per-example bits say what the accuracy says
            if not o.run["diverged"]:
                bits = np.unpackbits(np.frombuffer(o.run["test_correct_bits"], np.uint8), bitorder="little")
                assert bits[o.run["n_test"]:].sum() == 0
                assert bits.sum() == o.run["test_correct"] == round(o.run["test_acc"] * o.run["n_test"])
        for k in ("test_acc", "test_loss", "train_loss", "train_acc"):
            assert _close(a.run[k], b.run[k], tol), (k, a.run[k], b.run[k])
        assert len(a.curves) == len(b.curves)
        for ca, cb in zip(a.curves, b.curves, strict=True):
            assert set(ca) == set(cb)
            for k in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
                assert _close(ca[k], cb[k], tol), (k, ca[k], cb[k])
        assert len(a.moments) == len(b.moments)
        for ma, mb in zip(a.moments, b.moments, strict=True):
            assert set(ma) == set(mb)
            assert {k: ma[k] for k in ("run_id", "epoch", "step", "source", "layer", "site", "count",
                                       "n_channels")} == {k: mb[k] for k in ("run_id", "epoch", "step",
                                                                             "source", "layer", "site",
                                                                             "count", "n_channels")}
            for k in NUMERIC:
                bound = 0.0 if ma["epoch"] == 0 else _moment_tol(k)
                assert _close(ma[k], mb[k], bound), (k, ma, mb)


@pytest.mark.closeness
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_stack_equals_separate_runs_for_every_placement(data_root, tmp_path, arch):
    runs = _runs(data_root, tmp_path, seeds=2, epochs=2)
    for group in group_by_arm([r for r in runs if r.model.arch == arch]):
        assert len(group) == 2
        _assert_same(train_stack(group), [train(r) for r in group])


@pytest.mark.closeness
def test_stack_2d_images_with_augmentation_dropout_and_per_channel_moments(data_root, tmp_path):
    extra = f"[data]\nroot = \"{data_root}\"\naugment = true\n"
    p = tmp_path / "c.toml"
    text = tiny_toml(data_root, seeds=2, epochs=2).replace('dataset = "mnist1d"', 'dataset = "synthetic"')
    text = text.replace(f'[data]\nroot = "{data_root}"\n', "")
    text = text.replace("[model]\n", "[model]\ndropout = 0.2\ndropout_position = \"block\"\n")
    text = text.replace("[moments]\n", "[moments]\nper_channel = true\n") + extra
    text = text.replace("batch_size = 256", "batch_size = 64")
    p.write_text(text)
    runs = [r for r in config.load(p).runs() if r.model.arch == "cnn" and r.model.placement != "none"]
    for group in group_by_arm(runs):
        st, single = train_stack(group), [train(r) for r in group]
        _assert_same(st, single)
        for a, b in zip(st, single, strict=True):
            assert len(a.moments_channel) == len(b.moments_channel) > 0
            assert all(_close(x["var"], y["var"], 0.0 if x["epoch"] == 0 else MOMENT_TOL) and x["channel"] == y["channel"]
                       for x, y in zip(a.moments_channel, b.moments_channel, strict=True))


def test_augment_drawn_matches_data_augment():
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    offs, flips = data.draw_augment(g2, 5, padding=2)
    assert torch.equal(data.augment(x, g1, padding=2), data.augment_drawn(x, offs, flips, padding=2, flip=True))


@pytest.mark.parametrize("norm", ["layer", "group"])
def test_stacked_model_matches_each_model_for_other_norms(norm):
    for arch, shape in (("mlp", (1, 40)), ("cnn", (1, 40)), ("cnn", (3, 8, 8))):
        cfg = config.ModelConfig(arch=arch, norm=norm, width=8, placement="after")
        nets = []
        for s in range(3):
            m = models.build(cfg, shape, 4)
            models.init_parameters(m, s)
            nets.append(m.train())
        for impl in ("grouped", "split"):
            st = engine.stack_models(nets, conv_impl=impl).train()
            x = torch.randn(6, 3, *shape, generator=torch.Generator().manual_seed(0))
            out = st(x.flatten(1, 2))
            for s, m in enumerate(nets):
                assert torch.allclose(out[:, s], m(x[:, s]), atol=1e-4, rtol=1e-4)
            shared = st.eval()(x[:, 0], shared=True)
            for s, m in enumerate(nets):
                assert torch.allclose(shared[:, s], m.eval()(x[:, 0]), atol=1e-4, rtol=1e-4)
                assert all(torch.equal(a, b) for a, b in zip(engine.unstack_state(st, s, m).values(),
                                                             m.state_dict().values(), strict=True))
                m.train()
            st.train()


@pytest.mark.closeness
def test_a_diverging_seed_is_recorded_and_the_others_go_on(data_root, tmp_path, monkeypatch):
    runs = [r for r in _runs(data_root, tmp_path, seeds=2, epochs=2)
            if r.model.arch == "mlp" and r.model.placement == "none"]
    # Seed 1 starts from huge weights: its loss overflows at once; seed 0 is untouched.
    real = models.init_parameters

    def init(model, seed):
        real(model, seed)
        if seed == 1:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1e30)

    monkeypatch.setattr(models, "init_parameters", init)
    st = train_stack(runs)
    single = [train(r) for r in runs]
    _assert_same(st, single)
    assert st[1].run["diverged"] and st[1].run["epochs_completed"] == 1 and math.isnan(st[1].run["test_acc"])
    # Seed 0 equals its separate run (above) and learns: above chance (0.1) after 2 short epochs.
    assert not st[0].run["diverged"] and st[0].run["epochs_completed"] == 2 and st[0].run["test_acc"] > 0.12


def test_train_runs_groups_by_arm_keeps_order_and_marks_the_engine(data_root, tmp_path):
    all_runs = [r for r in _runs(data_root, tmp_path, seeds=2, epochs=1) if r.model.arch == "mlp"]
    runs = [r for r in all_runs if r.model.placement != "none"] + [all_runs[2]]  # 2 arms x 2 seeds, 1 alone
    outs = train_runs(runs, "cpu", deterministic=True)
    assert [o.run["run_id"] for o in outs] == [r.run_id for r in runs]
    assert [o.run["engine"] for o in outs] == ["stack"] * 4 + ["single"]
    assert [o.run["stack_size"] for o in outs] == [2] * 4 + [1]
    singles = train_runs(runs[:2], "cpu", stack=False)
    assert [o.run["engine"] for o in singles] == ["single", "single"]
    assert singles[0].run["test_loss"] == train(runs[0]).run["test_loss"]  # a stack of one is train.train


def test_bad_input_is_refused_with_the_field_named(data_root, tmp_path):
    runs = _runs(data_root, tmp_path, seeds=2)
    with pytest.raises(ValueError, match="differ only in seed"):
        train_stack([runs[0], runs[1]])
    with pytest.raises(ValueError, match="precision"):
        train_stack([runs[0], runs[6]], precision="fp8")
    with pytest.raises(ValueError, match="distinct"):
        train_stack([runs[0], runs[0]])
    with pytest.raises(ValueError, match="conv_impl"):
        engine.stack_models([], conv_impl="fft")


def test_stack_evaluates_no_more_inputs_at_a_time_than_a_training_batch_or_the_probe(data_root, tmp_path):
    from dataclasses import replace

    from bnstats.train import eval_rows

    run = _runs(data_root, tmp_path, epochs=1)[0]
    run = replace(run, train=replace(run.train, eval_batch_size=1000, batch_size=128),
                  moments=replace(run.moments, enabled=True, probe_size=512))
    assert eval_rows(run) == 1000  # one model: the configured batch
    assert eval_rows(run, seeds=10) == 512  # the probe still rides on the first batch
    off = replace(run, moments=replace(run.moments, enabled=False))
    assert eval_rows(off, seeds=10) == 128
    small = replace(run, train=replace(run.train, eval_batch_size=100))
    assert eval_rows(small, seeds=10) == 100  # never more than configured


def test_exact_fp32_turns_tf32_off_on_cuda_only_and_restores_it():
    from bnstats.train import exact_fp32

    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    with exact_fp32(torch.device("cuda")):  # the flags exist without a GPU
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == flags
    with exact_fp32(torch.device("cpu")):
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == flags


def test_stacked_conv_implementations_agree():
    # grouped, split and auto (split where a seed's conv has >= SPLIT_MIN_CHANNELS inputs) are one function
    nets = []
    for s in range(3):
        net = models.build(config.ModelConfig(arch="vgg", width=16, depth=1), (3, 12, 12), 10)
        models.init_parameters(net, s)
        nets.append(net)
    x = torch.randn(5, 9, 12, 12, generator=torch.Generator().manual_seed(0))
    outs = {impl: engine.stack_models(nets, conv_impl=impl).eval()(x) for impl in engine.CONV_IMPLS}
    auto = engine.stack_models(nets, conv_impl="auto")
    impls = [m.impl for m in auto.modules() if isinstance(m, engine.StackConv)]
    assert impls == ["grouped", "grouped", "split"]  # 3, 16 and 32 input channels
    for impl in ("split", "auto"):
        torch.testing.assert_close(outs[impl], outs["grouped"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="conv_impl"):
        engine.stack_models(nets, conv_impl="fast")


def test_bf16_is_refused_on_cpu_and_a_single_seed_keeps_the_requested_options(data_root, tmp_path):
    runs = _runs(data_root, tmp_path, epochs=1)[:1]
    with pytest.raises(ValueError, match="precision: 'bf16' is autocast on CUDA"):
        train_stack(runs, device="cpu", precision="bf16")
    with pytest.raises(ValueError, match="precision"):  # a group of one is not quietly trained in fp32
        train_runs(runs, "cpu", precision="bf16")
