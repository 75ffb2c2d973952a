"""Test both on your model: a user's model factory and dataset in a sweep, pairing and moments intact.

The model is written in a file here the way model zoos write it (torchvision's BasicBlock: a shared
``nn.ReLU(inplace=True)``, ``out += identity``, a downsample shortcut, ``F.relu`` in ``forward``); the data
is an npz file in the layout image libraries use (N×H×W×C uint8).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from bnstats import cli, config, data, models, moments, store
from bnstats.sweep import InlineExecutor, run_sweep
from bnstats.train import train

ZOO = '''
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Net(nn.Module):
    def __init__(self, in_channels, num_classes, width, dropout=0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        down = nn.Sequential(nn.Conv2d(width, 2 * width, 1, stride=2, bias=False), nn.BatchNorm2d(2 * width))
        self.layer1 = BasicBlock(width, 2 * width, 2, down)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        return self.fc(self.drop(F.adaptive_avg_pool2d(x, 1).flatten(1)))


def make(in_shape, num_classes, width=4, dropout=0.0):
    return Net(in_shape[0], num_classes, width, dropout)


class PlacedNet(nn.Module):
    """A model that places its own norms (it takes `placement`)."""

    def __init__(self, in_features, num_classes, placement, width):
        super().__init__()
        self.fc1 = nn.Linear(in_features, width, bias=placement != "before")
        self.norm = nn.BatchNorm1d(width) if placement != "none" else None
        self.act = nn.Tanh()
        self.placement = placement
        self.fc2 = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.fc1(x.flatten(1))
        if self.placement == "before":
            x = self.act(self.norm(x))
        elif self.placement == "after":
            x = self.norm(self.act(x))
        else:
            x = self.act(x)
        return self.fc2(x)


def placed(in_shape, num_classes, placement="before", width=8):
    import math
    return PlacedNet(math.prod(in_shape), num_classes, placement, width)


def no_pair(in_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], num_classes))


def not_a_model(in_shape, num_classes):
    return "a model"


def broken(in_shape, num_classes):
    raise RuntimeError("my factory is broken")
'''


def images(n_train=192, n_test=96, classes=3, seed=0):
    """Learnable 8×8 RGB images, N×H×W×C uint8 as image libraries store them."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(0, 1, size=(classes, 8, 8, 3))

    def draw(n):
        y = rng.integers(0, classes, size=n)
        return np.clip((protos[y] + rng.normal(0, 0.8, size=(n, 8, 8, 3))) * 40 + 128, 0, 255).astype(np.uint8), y

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A user's project folder: their model file and data, the working directory of the sweep."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "zoo.py").write_text(ZOO)
    np.savez(tmp_path / "imgs.npz", **images())
    return tmp_path


def sweep_toml(folder: Path, *, model: str = 'arch = "zoo.py:make"\nplace = "auto"\nwidth = 4', grid: str = "",
               seeds: int = 2, epochs: int = 1, extra: str = "") -> Path:
    text = textwrap.dedent("""
        name = "mine"
        dataset = "file:imgs.npz"
        seeds = {seeds}
        [model]
        {model}
        [train]
        epochs = {epochs}
        batch_size = 32
        lr = 0.05
        [grid]
        placement = ["before", "after", "none"]
        {grid}
        [moments]
        every = 3
        probe_size = 32
        """).format(seeds=seeds, epochs=epochs, model=model, grid=grid) + extra
    p = folder / "sweep.toml"
    p.write_text(text)
    return p


def test_a_sweep_over_a_user_factory_and_npz_stores_every_run_paired_with_moments_at_every_site(project):
    cfg = config.load(sweep_toml(project))
    out = project / "out"
    summary = run_sweep(cfg, out, executor=InlineExecutor(), device="cpu", progress=False, log=lambda m: None)
    assert summary.ok and summary.trained == 6
    res = store.load(out)
    runs = res.runs
    assert len(runs) == 6 and runs["run_id"].is_unique
    for _seed, group in runs.groupby("seed"):
        assert set(group["placement"]) == {"before", "after", "none"}
        assert group["init_hash"].nunique() == 1 and group["order_hash"].nunique() == 1
    assert runs.groupby("seed")["init_hash"].first().nunique() == 2  # seeds differ
    # provenance of the user's code: the factory's source file, as sha256
    import hashlib

    assert set(runs["model_sha256"]) == {hashlib.sha256((project / "zoo.py").read_bytes()).hexdigest()}
    assert set(runs["dataset_sha256"]) == {hashlib.sha256((project / "imgs.npz").read_bytes()).hexdigest()}
    assert set(runs["arch"]) == {"zoo.py:make"}
    # moments at every site: 3 pairs (stem, block conv1, block conv2 + residual) and the shortcut's norm
    m = res.moments.merge(runs[["run_id", "placement"]], on="run_id")
    for placement, sites in (("before", {"norm_in", "norm_out", "act_in", "act_out"}),
                             ("after", {"norm_in", "norm_out", "act_in", "act_out"}), ("none", {"act_in", "act_out"})):
        got = m[(m["placement"] == placement) & (m["source"] == "probe")]
        per_layer = got.groupby("layer")["site"].agg(set).to_dict()
        assert {k: per_layer[k] for k in (0, 1, 2)} == {0: sites, 1: sites, 2: sites}, placement
        assert per_layer.get(3) == ({"norm_in", "norm_out"} if placement != "none" else None)
        assert set(got["epoch"]) == {0, 1} and (got["count"] > 0).all()
    assert set(res.moments["source"]) == {"train", "probe"}


def test_the_shared_inplace_relu_and_inplace_add_do_not_change_what_is_recorded(project):
    # The factory's model adds the shortcut in place after the norm and its ReLU works in place: the
    # recorded norm_out must be the norm's output, not the sum the add leaves in that tensor later.
    import importlib.util

    spec = importlib.util.spec_from_file_location("zoo_mod", project / "zoo.py")
    zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zoo)
    net = zoo.make((3, 8, 8), 3, width=2).eval()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    expect = {}

    def keep(module, args, out) -> None:  # returns None: a hook's return value would replace the output
        expect.setdefault("norm_out", out.clone())

    net.layer1.bn2.register_forward_hook(keep)
    sites = moments.find_sites(net, example=lambda: net(x))
    got = {}

    class Keep(moments.SiteRecorder):
        def __call__(self, layer, site, t):
            super().__call__(layer, site, t)
            got[(layer, site)] = self.items[-1][1].clone()

    with torch.no_grad(), Keep(net, sites, copy=True).recording(epoch=0, step=0, source="probe"):
        net(x)
    layer = sites.layers[(id(net.layer1.bn2), 0)][0]
    assert torch.equal(got[(layer, "norm_out")], expect["norm_out"])
    assert not torch.equal(got[(layer, "act_in")], got[(layer, "norm_out")])  # the residual joined in between
    # the shared in-place ReLU: its output is its input object, changed; both sites are what they were
    first = sites.layers[(id(net.layer1.relu), 0)][0]
    assert (got[(first, "act_in")] < 0).any() and (got[(first, "act_out")] >= 0).all()
    assert torch.equal(got[(first, "act_out")], got[(first, "act_in")].clamp_min(0))


def test_a_factory_that_places_its_own_norms_shares_weights_by_name(project):
    toml = sweep_toml(project, model='arch = "zoo.py:placed"\nwidth = 8')
    runs = config.load(toml).runs()
    seed0 = [r for r in runs if r.seed == 0]
    outs = {r.model.placement: train(r) for r in seed0}
    assert len({o.run["init_hash"] for o in outs.values()}) == 1
    built = {r.model.placement: models.create(r.model, r.seed, (3, 8, 8), 3).model for r in seed0}
    for name in ("fc1.weight", "fc2.weight", "fc2.bias"):
        values = [dict(m.named_parameters())[name] for m in built.values()]
        assert all(torch.equal(values[0], v) for v in values[1:]), name
    assert "fc1.bias" not in dict(built["before"].named_parameters())
    # the user's own initialisation, not bnstats': nn.Linear's default bound 1/sqrt(fan_in), by torch's
    # generator seeded from the seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.derive_seed(0, "init"))
        import importlib.util

        spec = importlib.util.spec_from_file_location("zoo_mod2", project / "zoo.py")
        zoo = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(zoo)
        ref = zoo.placed((3, 8, 8), 3, placement="before", width=8)
    assert torch.equal(ref.fc1.weight, built["after"].fc1.weight)


def test_dropout_of_a_factory_model_is_seeded_per_run_and_global_rng_untouched(project):
    toml = sweep_toml(project, model='arch = "zoo.py:make"\nplace = "auto"\nwidth = 2\ndropout = 0.5')
    run = config.load(toml).runs()[1]
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = train(run)
    assert torch.equal(state, torch.random.get_rng_state())  # the run seeded and restored it
    torch.manual_seed(999)
    b = train(run)
    assert a.run["test_loss"] == b.run["test_loss"] and a.run["train_loss"] == b.run["train_loss"]


def test_factory_options_can_be_swept_and_unknown_ones_are_named(project):
    cfg = config.load(sweep_toml(project, grid="width = [2, 4]"))
    assert [k for k, _ in cfg.grid] == ["placement", "width"]
    runs = cfg.runs()
    assert len(runs) == 2 * 3 * 2 and {r.factor_values()["width"] for r in runs} == {2, 4}
    assert len({r.run_id for r in runs}) == 12
    with pytest.raises(config.ConfigError, match=r"model.depth: the model factory zoo.py:make does not accept "
                                                 r"'depth'; it accepts: dropout, width"):
        config.load(sweep_toml(project, model='arch = "zoo.py:make"\nplace = "auto"\ndepth = 3'))
    with pytest.raises(config.ConfigError, match=r"grid.depth: unknown key; valid grid keys are: keyword "
                                                 r"arguments of the model factory zoo.py:make"):
        config.load(sweep_toml(project, grid="depth = [1, 2]"))


@pytest.mark.parametrize("model, message", [
    ('arch = "nowhere.py:make"', "model.arch: file not found: 'nowhere.py'"),
    ('arch = "zoo.py:missing"', "model.arch: 'zoo.py' has no attribute 'missing'"),
    ('arch = "no_such_module_xyz:make"', "model.arch: cannot import 'no_such_module_xyz'"),
    ('arch = "zoo.py:make"\nplace = "sometimes"', "model.place: expected one of 'off', 'auto', got 'sometimes'"),
    ('arch = "mlp"\nplace = "auto"', "model.place: 'auto' rewrites a model factory's model"),
    ('arch = "zoo.py:make"\nin_shape = [3, 8, 8]', "model.in_shape: bnstats passes in_shape from the dataset"),
])
def test_a_bad_factory_is_named_in_one_line_and_nothing_is_written(project, capsys, model, message):
    toml = sweep_toml(project, model=model)
    assert cli.main(["sweep", str(toml), "--out", str(project / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (project / "out").exists()


@pytest.mark.parametrize("arrays, message", [
    ({"x_train": np.zeros((4, 5), np.float32), "y_train": np.zeros(4, np.int64), "x_test": np.zeros((2, 5), np.float32)},
     "missing array(s) y_test"),
    ({"x_train": np.zeros((4, 5), np.float32), "y_train": np.zeros(3, np.int64),
      "x_test": np.zeros((2, 5), np.float32), "y_test": np.zeros(2, np.int64)}, "y_train has 3 labels but x_train has 4 rows"),
    ({"x_train": np.full((4, 5), np.nan, np.float32), "y_train": np.zeros(4, np.int64),
      "x_test": np.zeros((2, 5), np.float32), "y_test": np.zeros(2, np.int64)}, "x_train holds 20 NaN/inf values"),
    ({"x_train": np.zeros((4, 5), np.float32), "y_train": np.array([0.0, 1, 0, 1]),
      "x_test": np.zeros((2, 5), np.float32), "y_test": np.zeros(2, np.int64)}, "y_train must be a 1-D array of integer labels"),
    ({"x_train": np.zeros((4, 5), np.float32), "y_train": np.zeros(4, np.int64),
      "x_test": np.zeros((2, 6), np.float32), "y_test": np.zeros(2, np.int64)}, "inputs of different shapes per split"),
])
def test_a_bad_dataset_file_names_the_file_and_the_array(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    data._load_cached.cache_clear()
    with pytest.raises(data.DatasetFileError, match="dataset file:.*bad.npz: " + message.replace("(", r"\(")
                       .replace(")", r"\)")):
        data.load(f"file:{tmp_path / 'bad.npz'}")


def test_npz_layouts_become_channels_first_and_uint8_is_standardised(tmp_path):
    data._load_cached.cache_clear()
    arrays = images(n_train=40, n_test=10)
    np.savez(tmp_path / "i.npz", **arrays)
    ds = data.load(f"file:{tmp_path / 'i.npz'}")
    assert ds.x_train.shape == (40, 3, 8, 8) and ds.x_train.dtype == torch.uint8 and ds.num_classes == 3
    assert torch.equal(ds.x_train, torch.from_numpy(arrays["x_train"]).permute(0, 3, 1, 2))
    dd = data.to_device(ds, "cpu")
    per_channel = dd.x_train.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(per_channel.std(1), torch.ones(3), atol=1e-4)
    seq = {"x_train": np.random.default_rng(0).normal(size=(20, 7)), "y_train": np.arange(20) % 2,
           "x_test": np.zeros((4, 7)), "y_test": np.arange(4) % 2}
    np.savez(tmp_path / "s.npz", **seq)
    s = data.load(f"file:{tmp_path / 's.npz'}")
    assert s.x_train.shape == (20, 1, 7) and s.x_train.dtype == torch.float32  # N×L: one channel, as given
    assert torch.equal(s.x_train[:, 0], torch.from_numpy(seq["x_train"]).float())
    assert data.to_device(s, "cpu").x_train.data_ptr() == s.x_train.data_ptr()  # floats are used as given


def test_a_loader_function_and_a_validation_set_of_the_data(project):
    (project / "loader.py").write_text(textwrap.dedent("""
        import numpy as np
        def load():
            rng = np.random.default_rng(1)
            x = rng.normal(size=(60, 1, 12)).astype(np.float32)
            y = (x[:, 0, 0] > 0).astype(np.int64)
            return {"x_train": x[:40], "y_train": y[:40], "x_val": x[40:50], "y_val": y[40:50],
                    "x_test": x[50:], "y_test": y[50:]}
        """))
    data._load_cached.cache_clear()
    ds = data.load("loader.py:load")
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (40, 10, 10)
    with pytest.raises(config.ConfigError, match="data.val_split: the dataset 'loader.py:load' brings its own"):
        data.split_validation(ds, 0.2)
    p = sweep_toml(project, model='arch = "mlp"\nwidth = 8')
    text = p.read_text().replace('dataset = "file:imgs.npz"', 'dataset = "loader.py:load"').replace(
        "batch_size = 32", "batch_size = 8")
    p.write_text(text)
    out = train(config.load(p).runs()[0])
    assert out.run["n_val"] == 10 and out.run["val_correct"] == round(out.run["val_acc"] * 10)
    assert all(not math.isnan(c["val_loss"]) for c in out.curves)
    assert out.run["dataset_sha256"] and out.run["n_test"] == 10


def test_validation_split_is_stratified_fixed_and_the_same_for_every_seed(data_root):
    ds = data.load("mnist1d", data_root)
    a, b = data.split_validation(ds, 0.1), data.split_validation(ds, 0.1)
    counts = torch.bincount(a.y_val, minlength=10)
    expected = torch.tensor([round(0.1 * int(n)) for n in torch.bincount(ds.y_train, minlength=10)])
    assert torch.equal(counts, expected)  # round(0.1 n_k) of every class k
    assert len(a.x_val) == int(expected.sum()) == 399 and len(a.x_train) == 4000 - 399
    assert torch.equal(a.x_val, b.x_val)
    # the split is disjoint and covers the training set
    both = torch.cat([a.x_train, a.x_val]).reshape(4000, -1)
    assert torch.unique(both, dim=0).shape[0] == torch.unique(ds.x_train.reshape(4000, -1), dim=0).shape[0]
    tiny = data.Dataset("t", torch.zeros(5, 1, 3), torch.tensor([0, 0, 0, 0, 1]), torch.zeros(2, 1, 3),
                        torch.tensor([0, 1]), 2)
    with pytest.raises(config.ConfigError, match="data.val_split: 0.3 of class 1's 1 training examples leaves"):
        data.split_validation(tiny, 0.3)


def test_val_split_records_val_metrics_and_keeps_run_ids_of_sweeps_without_it(data_root, tmp_path):
    from tests.conftest import tiny_toml

    p = tmp_path / "c.toml"
    p.write_text(tiny_toml(data_root))
    plain = config.load(p)
    split = config.load(p, overrides=["data.val_split=0.1"])
    assert "val_split" not in plain.runs()[0].identity()["data"]  # run ids of existing sweeps unchanged
    assert plain.runs()[0].run_id != split.runs()[0].run_id
    out = train(split.runs()[0])
    assert out.run["n_val"] == 399 and 0 <= out.run["val_acc"] <= 1
    assert out.run["val_correct"] == round(out.run["val_acc"] * 399)
    assert [c["epoch"] for c in out.curves] == [1] and not math.isnan(out.curves[0]["val_loss"])


@pytest.mark.parametrize("model, message", [
    ('arch = "zoo.py:broken"', "model.arch: zoo.py:broken(in_shape=(3, 8, 8), num_classes=3) raised RuntimeError: "
                               "my factory is broken"),
    ('arch = "zoo.py:not_a_model"', "model.arch: zoo.py:not_a_model returned a str, not a torch.nn.Module"),
    ('arch = "zoo.py:no_pair"\nplace = "auto"', "no norm"),
    ('arch = "zoo.py:placed"\nwidth = -1', "model.arch: zoo.py:placed(width=-1, in_shape=(3, 8, 8), num_classes=3, "
                                         "placement='before') raised RuntimeError: Trying to create tensor with negative "
                                         "dimension -1: [-1, 192] (arm placement='before' (model.arch='zoo.py:placed', "
                                         "model.width=-1))"),
])
def test_a_factory_that_fails_to_build_is_refused_before_anything_is_written(project, capsys, model, message):
    toml = sweep_toml(project, model=model)
    assert cli.main(["sweep", str(toml), "--out", str(project / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (project / "out").exists()


def test_a_factory_model_without_a_pair_is_refused_when_placement_is_swept(project, capsys):
    (project / "flat.py").write_text(textwrap.dedent("""
        from torch import nn
        def make(in_shape, num_classes, placement="before"):
            norm = nn.BatchNorm1d(16) if placement != "none" else nn.Identity()
            return nn.Sequential(nn.Flatten(), nn.Linear(192, 16), norm, nn.Linear(16, num_classes))
        """))
    toml = sweep_toml(project, model='arch = "flat.py:make"')
    assert cli.main(["sweep", str(toml), "--out", str(project / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.arch: flat.py:make builds a model with no norm→activation pair" in err and "\n" not in err
    assert not (project / "out").exists()
