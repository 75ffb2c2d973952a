"""Datasets as tensors, the per-seed batch order and on-device augmentation.

Every dataset loads into a :class:`Dataset` of plain tensors, built once per process and reused by
every run. Inputs are channels-first: sequences ``[N, C, L]`` (float32, already standardised) and
images ``[N, C, H, W]`` (uint8; :func:`to_device` standardises them with the training set's
per-channel mean and std).

Pairing lives here too: :func:`epoch_order` and :func:`augment` draw only from the generators a run
derives from its seed, so every arm of a seed sees the same batches, in the same order, with the
same crops and flips.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import DATASETS, ConfigError


@dataclass(frozen=True, eq=False)
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, channels first: ``(C, L)`` or ``(C, H, W)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.x_train.dim() == 4


# ---------------------------------------------------------------------------------------------------
# MNIST-1D (Greydanus 2020), generated locally by the mnist1d package with its paper's default args.


def _mnist1d(root: Path) -> Dataset:
    cache = root / "mnist1d.npz"
    if cache.is_file():
        z = np.load(cache)
        arrays = {k: z[k] for k in ("x", "y", "x_test", "y_test")}
    else:
        from mnist1d.data import get_dataset_args, make_dataset

        # make_dataset seeds numpy's and Python's global RNGs (mnist1d.utils.set_seed): restore them,
        # so loading data never changes anyone else's random state.
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            d = make_dataset(get_dataset_args())  # 5000 examples, 80/20 split: 4000 train / 1000 test
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        arrays = {"x": d["x"].astype(np.float32), "y": d["y"].astype(np.int64),
                  "x_test": d["x_test"].astype(np.float32), "y_test": d["y_test"].astype(np.int64)}
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".mnist1d.{np.random.default_rng().integers(1 << 62)}.npz"
        np.savez(tmp, **arrays)
        tmp.replace(cache)  # atomic: concurrent workers never read a half-written cache
    return Dataset(
        name="mnist1d",
        x_train=torch.from_numpy(arrays["x"]).unsqueeze(1),
        y_train=torch.from_numpy(arrays["y"]),
        x_test=torch.from_numpy(arrays["x_test"]).unsqueeze(1),
        y_test=torch.from_numpy(arrays["y_test"]),
        num_classes=10,
        meta={"source": "mnist1d.data.make_dataset(get_dataset_args()), seed 42, 4000/1000 split"},
    )


def _synthetic(root: Path) -> Dataset:
    """A small, fast, learnable image task (8×8×3, 4 classes) for tests and smoke runs."""
    g = np.random.default_rng(12345)
    n_train, n_test, classes = 512, 256, 4
    protos = g.normal(0, 1, size=(classes, 3, 8, 8))

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = g.integers(0, classes, size=n)
        x = protos[y] + g.normal(0, 1.0, size=(n, 3, 8, 8))
        return np.clip(x * 40 + 128, 0, 255).astype(np.uint8), y.astype(np.int64)

    xtr, ytr = make(n_train)
    xte, yte = make(n_test)
    return Dataset("synthetic", torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte),
                   torch.from_numpy(yte), classes, {"source": "bnstats synthetic prototypes, seed 12345"})


_LOADERS = {"mnist1d": _mnist1d, "synthetic": _synthetic}


@lru_cache(maxsize=4)
def _load_cached(name: str, root: str) -> Dataset:
    return _LOADERS[name](Path(root))


def load(name: str, root: str | Path = "data/cache") -> Dataset:
    """Load a dataset by name (built once per process and cached)."""
    if name not in DATASETS:
        raise ConfigError(f"dataset: expected one of {', '.join(map(repr, DATASETS))}, got {name!r}")
    if name not in _LOADERS:
        raise ConfigError(f"dataset: {name!r} has no loader in this version of bnstats")
    return _load_cached(name, str(Path(root)))


@lru_cache(maxsize=4)
def fingerprint(ds: Dataset) -> str:
    """Hash of the tensors, stored with each run so a changed dataset cannot pass unnoticed."""
    h = hashlib.sha256()
    for t in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class DeviceData:
    """A dataset resident on the device, inputs standardised, ready for indexing by batch."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    is_image: bool


def to_device(ds: Dataset, device: str | torch.device) -> DeviceData:
    x_train, x_test = ds.x_train, ds.x_test
    if ds.is_image:
        x_train = x_train.float().div_(255)
        x_test = x_test.float().div_(255)
        dims = (0, 2, 3)
        mean = x_train.mean(dims, keepdim=True)
        std = x_train.std(dims, keepdim=True)
        x_train = (x_train - mean) / std
        x_test = (x_test - mean) / std
    return DeviceData(x_train.float().to(device), ds.y_train.to(device), x_test.float().to(device),
                      ds.y_test.to(device), ds.num_classes, ds.input_shape, ds.is_image)


def epoch_order(n: int, generator: torch.Generator) -> torch.Tensor:
    """The example order of one epoch: a permutation drawn from the seed's order generator (CPU)."""
    return torch.randperm(n, generator=generator)


def augment(x: torch.Tensor, generator: torch.Generator, *, padding: int = 4, flip: bool = True
            ) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flip, of an image batch ``[B, C, H, W]``.

    The random numbers come from ``generator`` (CPU, the seed's augmentation stream) and are drawn
    the same way whatever the model, so every arm of a seed sees identical augmented batches.
    The crop is one gather on the batch's device.
    """
    if x.dim() != 4:
        raise ValueError(f"augment: expected an image batch [B, C, H, W], got shape {tuple(x.shape)}")
    b, _, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator)
    flips = torch.rand(b, generator=generator) < 0.5
    dev = x.device
    if padding:
        xp = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        rows = (offsets[0].to(dev)[:, None] + torch.arange(h, device=dev)[None, :])  # [B, H]
        cols = (offsets[1].to(dev)[:, None] + torch.arange(w, device=dev)[None, :])  # [B, W]
        xp = xp.gather(2, rows[:, None, :, None].expand(b, xp.shape[1], h, xp.shape[3]))
        x = xp.gather(3, cols[:, None, None, :].expand(b, xp.shape[1], h, w))
    if flip:
        x = torch.where(flips.to(dev)[:, None, None, None], x.flip(-1), x)
    return x
