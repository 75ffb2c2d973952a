from __future__ import annotations

import textwrap
from pathlib import Path

import bnstats  # noqa: F401 - first: it pins torch's CPU kernels before torch picks them (bnstats/cpu.py)

# isort: split
import pytest
import torch

torch.set_num_threads(1)  # small models: one thread is fastest, and runs are bitwise reproducible

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A dataset cache shared by the session's tests (MNIST-1D is generated once)."""
    return tmp_path_factory.mktemp("data-cache")


def tiny_toml(data_root: Path, *, name: str = "tiny", seeds: int = 2, epochs: int = 1,
              extra: str = "") -> str:
    """A fast MNIST-1D sweep: 2 archs x 3 placements x 1 activation."""
    return textwrap.dedent(f"""
        name = "{name}"
        dataset = "mnist1d"
        seeds = {seeds}
        [data]
        root = "{data_root}"
        [model]
        width = 16
        [train]
        epochs = {epochs}
        batch_size = 256
        lr = 0.05
        [grid]
        arch = ["mlp", "cnn"]
        placement = ["before", "after", "none"]
        [moments]
        every = 5
        probe_size = 128
        """) + extra


@pytest.fixture
def tiny_config(tmp_path, data_root) -> Path:
    p = tmp_path / "tiny.toml"
    p.write_text(tiny_toml(data_root))
    return p
