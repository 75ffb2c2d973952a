import subprocess
import sys

import pytest

from bnstats import config
from bnstats.config import ConfigError


def test_embedded_default_is_the_documented_sweep():
    c = config.load()
    assert c.name == "placement-mnist1d" and c.dataset == "mnist1d"
    assert dict(c.grid) == {"arch": ("mlp", "cnn"), "placement": ("before", "after", "none"),
                            "activation": ("relu", "tanh")}
    assert c.seeds == tuple(range(10))
    runs = c.runs()
    assert len(runs) == 120 and len({r.run_id for r in runs}) == 120


def test_run_id_is_stable_across_processes():
    code = "from bnstats import config; print(config.load().runs()[7].run_id)"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == config.load().runs()[7].run_id
    # and does not depend on where the data lives, only on what determines the numbers
    a = config.load(overrides=["data.root='/elsewhere'"]).runs()[7]
    assert a.run_id == config.load().runs()[7].run_id
    assert config.load(overrides=["train.lr=0.1"]).runs()[7].run_id != a.run_id


@pytest.mark.parametrize("override, field, allowed, received", [
    ("grid.placement=['middle']", "grid.placement", "'before', 'after', 'none'", "got 'middle'"),
    ("model.activation='swish'", "model.activation", "'relu'", "got 'swish'"),
    ("train.optimizer='rmsprop'", "train.optimizer", "'sgd', 'adam', 'adamw'", "got 'rmsprop'"),
    ("train.epochs=0", "train.epochs", ">= 1", "got 0"),
    ("train.lr=-1", "train.lr", "> 0", "got -1"),
    ("train.epochs='ten'", "train.epochs", "an integer", "got 'ten'"),
    ("seeds=0", "seeds", "positive count", "got 0"),
    ("dataset='imagenet'", "dataset", "'mnist1d'", "got 'imagenet'"),
])
def test_bad_values_name_field_allowed_and_received(override, field, allowed, received):
    with pytest.raises(ConfigError) as e:
        config.load(overrides=[override])
    msg = str(e.value)
    assert msg.startswith(field + ":") and allowed in msg and msg.endswith(received)


@pytest.mark.parametrize("override, listed", [
    ("train.foo=1", "epochs, batch_size, optimizer"),
    ("grid.colour=['red']", "arch, placement, activation"),
    ("wat=1", "name, description, dataset, seeds"),
])
def test_unknown_keys_list_the_valid_ones(override, listed):
    with pytest.raises(ConfigError, match="unknown key") as e:
        config.load(overrides=[override])
    assert listed in str(e.value)


def test_seeds_count_or_list(tmp_path):
    assert config.load(seeds=3).seeds == (0, 1, 2)
    assert config.load(overrides=["seeds=[4, 2, 9]"]).seeds == (4, 2, 9)
    with pytest.raises(ConfigError, match="distinct"):
        config.load(overrides=["seeds=[1, 1]"])


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        config.load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(bad)


def test_grid_can_sweep_train_keys():
    c = config.load(overrides=["grid.lr=[0.1, 0.01]"], seeds=1)
    assert len(c.runs()) == 2 * 3 * 2 * 2
    assert {r.train.lr for r in c.runs()} == {0.1, 0.01}
    assert c.runs()[0].factor_values()["lr"] == 0.1


def test_derived_seeds_are_independent_streams():
    assert config.derive_seed(0, "init") != config.derive_seed(0, "order")
    assert config.derive_seed(0, "init") != config.derive_seed(1, "init")
    assert config.derive_seed(3, "order") == config.derive_seed(3, "order")
