"""Datasets as tensors, the per-seed batch order and on-device augmentation.

Every dataset loads into a :class:`Dataset` of plain tensors, built once per process and reused by
every run. Inputs are channels-first: sequences ``[N, C, L]`` (float32, already standardised) and
images ``[N, C, H, W]`` (uint8; :func:`to_device` standardises them with the training set's
per-channel mean and std).

Datasets (``dataset`` in a sweep config):

- ``mnist1d``: generated locally by the ``mnist1d`` package and cached in ``data.root``;
- ``synthetic``: small learnable 8×8 images made here, for tests and smoke runs;
- ``mnist``, ``fashion_mnist``: the four IDX files (gzipped or not) in ``<root>/mnist/`` or
  ``<root>/fashion_mnist/`` (torchvision's ``<root>/MNIST/raw/`` and ``<root>/FashionMNIST/raw/`` work too);
- ``cifar10``, ``cifar100``: the "python version" pickles in ``<root>/cifar-10-batches-py/`` or
  ``<root>/cifar-100-python/`` (the folders their archives extract to); CIFAR-100 uses the fine labels.

The files are read by bnstats' own parsers (:func:`read_idx`, :func:`read_cifar_batch`), which check
magic numbers, sizes, counts and label ranges. Where the files are absent and torchvision is
installed, torchvision downloads them (verifying their checksums); otherwise the error names the
files and the folder to put them in.

Pairing lives here too: :func:`epoch_order` and :func:`augment` draw only from the generators a run
derives from its seed, so every arm of a seed sees the same batches, in the same order, with the
same crops and flips.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import math
import pickle
import random
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache, partial
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


# ---------------------------------------------------------------------------------------------------
# MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 from their published files, read by our own parsers.
#
# Files are looked up under ``data.root``; where they are absent and torchvision is installed, its
# dataset classes download them (verifying their checksums) and the files they wrote are parsed here.


class DatasetFileError(ValueError):
    """A dataset file is damaged or not in the expected format; the message names the file."""


IDX_IMAGES = 0x00000803  # IDX magic: unsigned bytes, 3 dimensions (count, rows, cols)
IDX_LABELS = 0x00000801  # IDX magic: unsigned bytes, 1 dimension (count)
_IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class _Source:
    """Where the files of one dataset live and how to get them."""

    title: str
    dirs: tuple[str, ...]        # candidate folders under root; the first is the documented place
    files: tuple[str, ...]       # file names (IDX files may also end in .gz)
    torchvision: str             # torchvision.datasets class that downloads them
    how: str                     # where a person gets them by hand
    num_classes: int


_SOURCES = {
    "mnist": _Source(
        "MNIST (LeCun et al. 1998)", ("mnist", "MNIST/raw"), _IDX_NAMES, "MNIST",
        "the four IDX files (gzipped or not) from https://yann.lecun.com/exdb/mnist/ "
        "or https://ossci-datasets.s3.amazonaws.com/mnist/", 10),
    "fashion_mnist": _Source(
        "Fashion-MNIST (Xiao et al. 2017)", ("fashion_mnist", "FashionMNIST/raw"), _IDX_NAMES,
        "FashionMNIST",
        "the four IDX files (gzipped or not) from https://github.com/zalandoresearch/fashion-mnist", 10),
    "cifar10": _Source(
        "CIFAR-10 (Krizhevsky 2009)", ("cifar-10-batches-py",),
        tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",), "CIFAR10",
        "the 'CIFAR-10 python version' archive cifar-10-python.tar.gz from "
        "https://www.cs.toronto.edu/~kriz/cifar.html, extracted into the data root", 10),
    "cifar100": _Source(
        "CIFAR-100 (Krizhevsky 2009), fine labels", ("cifar-100-python",), ("train", "test"), "CIFAR100",
        "the 'CIFAR-100 python version' archive cifar-100-python.tar.gz from "
        "https://www.cs.toronto.edu/~kriz/cifar.html, extracted into the data root", 100),
}


def _read_bytes(path: Path) -> bytes:
    """The bytes of ``path``, gunzipped when the file is gzip (recognised by its magic, not its name)."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetFileError(f"{path}: damaged gzip file ({e}); delete it and place it again") from None


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """An IDX file (LeCun's MNIST format; gzipped or not) as a uint8 array of the shape in its header.

    Header: 4 magic bytes ``0x00 0x00 <type> <ndim>`` (type 0x08 = unsigned byte), then ``ndim``
    big-endian uint32 sizes, then the data, row-major. ``magic`` is the one expected
    (:data:`IDX_IMAGES` or :data:`IDX_LABELS`); anything else, a truncated file or trailing bytes
    raise :class:`DatasetFileError` naming the file.
    """
    path = Path(path)
    raw = _read_bytes(path)
    kind = {IDX_IMAGES: "images", IDX_LABELS: "labels"}.get(magic, "data")
    if len(raw) < 4:
        raise DatasetFileError(f"{path}: {len(raw)} bytes, too short for an IDX header")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise DatasetFileError(f"{path}: not an IDX {kind} file: magic number 0x{got:08x}, "
                               f"expected 0x{magic:08x}")
    ndim = magic & 0xFF
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise DatasetFileError(f"{path}: truncated IDX header ({len(raw)} bytes, expected {start})")
    dims = struct.unpack(f">{ndim}I", raw[4:start])
    need = math.prod(dims)
    if len(raw) - start != need:
        what = "truncated" if len(raw) - start < need else "trailing bytes"
        raise DatasetFileError(f"{path}: {what}: the header says {kind} of shape {dims} ({need} bytes), "
                               f"the file holds {len(raw) - start} bytes of data")
    return np.frombuffer(raw, dtype=np.uint8, count=need, offset=start).reshape(dims).copy()


def _check_labels(path: Path, labels: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    if labels.ndim != 1 or len(labels) != n:
        raise DatasetFileError(f"{path}: {len(labels)} labels for {n} images")
    if labels.dtype.kind not in "iu":
        raise DatasetFileError(f"{path}: labels must be integers, got dtype {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetFileError(f"{path}: labels must lie in 0..{num_classes - 1}, "
                               f"found {int(labels.min())}..{int(labels.max())}")
    return labels.astype(np.int64)


def _idx_split(folder: Path, files: dict[str, Path], split: str) -> tuple[np.ndarray, np.ndarray]:
    img_path, lab_path = files[f"{split}-images-idx3-ubyte"], files[f"{split}-labels-idx1-ubyte"]
    images = read_idx(img_path, IDX_IMAGES)
    if images.shape[1:] != (28, 28):
        raise DatasetFileError(f"{img_path}: images of {images.shape[1]}×{images.shape[2]} pixels, "
                               f"expected 28×28")
    labels = read_idx(lab_path, IDX_LABELS)
    if len(labels) != len(images):
        raise DatasetFileError(f"{lab_path}: {len(labels)} labels, but {img_path.name} holds "
                               f"{len(images)} images")
    return images[:, None], _check_labels(lab_path, labels, len(images), 10)


# Globals that the CIFAR pickles (Python 2 cPickle of numpy arrays) and their Python 3 re-pickles
# need; anything else in a dataset file is refused rather than executed.
_PICKLE_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    *((f"numpy.{core}.multiarray", name) for core in ("core", "_core") for name in ("_reconstruct", "scalar")),
    *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
}


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a dataset file")
        if module.startswith("numpy.core."):  # numpy >= 2 renamed numpy.core; avoid its deprecation path
            try:
                return super().find_class("numpy._core." + module[len("numpy.core."):], name)
            except (ImportError, AttributeError):
                pass
        return super().find_class(module, name)


def read_cifar_batch(path: str | Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR "python version" file: images ``[N, 3, 32, 32]`` uint8 and labels ``[N]`` int64.

    The file is a pickled dict with ``data`` (``[N, 3072]`` uint8: 1024 red, 1024 green, 1024 blue
    values, each plane row-major) and ``label_key`` (``labels`` for CIFAR-10, ``fine_labels`` for
    CIFAR-100), plus ``batch_label`` and more. The published files are Python 2 pickles whose keys
    load as ``bytes`` or ``str`` depending on the decoder; both are accepted. Only numpy arrays and
    plain containers are unpickled (nothing else is executed).
    """
    path = Path(path)
    raw = _read_bytes(path)
    try:
        obj = _DataUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as e:  # UnpicklingError, EOFError (truncated), ValueError (bad array state), ...
        raise DatasetFileError(f"{path}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DatasetFileError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    d = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    for key in ("data", label_key):
        if key not in d:
            raise DatasetFileError(f"{path}: no {key!r} entry (keys: {', '.join(map(str, d))})")
    x = d["data"]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        got = f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise DatasetFileError(f"{path}: 'data' must be a uint8 array of shape [N, 3072], got {got}")
    try:
        labels = np.asarray(d[label_key])
    except (TypeError, ValueError) as e:
        raise DatasetFileError(f"{path}: {label_key!r} is not a list of integers ({e})") from None
    y = _check_labels(path, labels, len(x), num_classes)
    return x.reshape(-1, 3, 32, 32).copy(), y


def _present(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _find_files(src: _Source, root: Path) -> tuple[Path, dict[str, Path]] | None:
    """The first candidate folder under ``root`` that holds every file of ``src``."""
    for d in src.dirs:
        folder = root / d
        found = {n: _present(folder, n) for n in src.files}
        if all(found.values()):
            return folder, found  # type: ignore[return-value]
    return None


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _download(name: str, src: _Source, root: Path) -> str:
    """Download with torchvision (checksums verified by it). Returns "" on success, else why not."""
    try:
        import torchvision.datasets as tvd
    except ImportError:
        return "torchvision is not installed, so they were not downloaded (with it, they would be)"
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".{name}.download.lock"):  # concurrent workers download once
        if _find_files(src, root) is not None:
            return ""
        try:
            getattr(tvd, src.torchvision)(str(root), train=True, download=True)
        except Exception as e:  # no network, a failed checksum, a changed mirror ...
            return f"downloading with torchvision.datasets.{src.torchvision} failed ({type(e).__name__}: {e})"
    return ""


def _locate(name: str, root: Path) -> tuple[Path, dict[str, Path]]:
    src = _SOURCES[name]
    found = _find_files(src, root)
    if found is None:
        why = _download(name, src, root)
        found = _find_files(src, root)
        if found is None:
            folder = (root / src.dirs[0]).resolve()
            missing = [n for n in src.files if _present(folder, n) is None]
            also = "".join(f" (torchvision's layout {root / d}/ is read too)" for d in src.dirs[1:])
            raise FileNotFoundError(
                f"dataset {name!r}: files not found in {folder}/: {', '.join(missing)}. Put them there: "
                f"{src.how}{also}. {why or 'torchvision downloaded nothing usable'}.")
    return found


def _idx_dataset(name: str, root: Path) -> Dataset:
    folder, files = _locate(name, root)
    x_train, y_train = _idx_split(folder, files, "train")
    x_test, y_test = _idx_split(folder, files, "t10k")
    src = _SOURCES[name]
    return Dataset(name, torch.from_numpy(x_train), torch.from_numpy(y_train), torch.from_numpy(x_test),
                   torch.from_numpy(y_test), src.num_classes,
                   {"source": f"{src.title}, IDX files in {folder}", "files": [p.name for p in files.values()]})


def _cifar_dataset(name: str, root: Path) -> Dataset:
    folder, files = _locate(name, root)
    src = _SOURCES[name]
    label_key = "labels" if name == "cifar10" else "fine_labels"
    parts = [read_cifar_batch(files[n], label_key, src.num_classes) for n in src.files]
    train, test = parts[:-1], parts[-1]
    return Dataset(name, torch.from_numpy(np.concatenate([x for x, _ in train])),
                   torch.from_numpy(np.concatenate([y for _, y in train])),
                   torch.from_numpy(test[0]), torch.from_numpy(test[1]), src.num_classes,
                   {"source": f"{src.title}, python-version pickles in {folder}",
                    "files": [p.name for p in files.values()], "label_key": label_key})


_LOADERS = {
    "mnist1d": _mnist1d,
    "synthetic": _synthetic,
    "mnist": partial(_idx_dataset, "mnist"),
    "fashion_mnist": partial(_idx_dataset, "fashion_mnist"),
    "cifar10": partial(_cifar_dataset, "cifar10"),
    "cifar100": partial(_cifar_dataset, "cifar100"),
}


@lru_cache(maxsize=4)
def _load_cached(name: str, root: str) -> Dataset:
    return _LOADERS[name](Path(root))


def load(name: str, root: str | Path = "data/cache") -> Dataset:
    """Load a dataset by name from ``root`` (built once per process and cached).

    Returns a :class:`Dataset`: train and test inputs (images uint8 ``[N, C, H, W]``, sequences float32
    ``[N, C, L]``), int64 labels, the number of classes and ``meta`` (source, files). Missing files
    raise ``FileNotFoundError`` naming the files and the folder; damaged ones :class:`DatasetFileError`.
    """
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
        x_train = x_train.sub_(mean).div_(std)  # in place: CIFAR-10's training set is 600 MB as float32
        x_test = x_test.sub_(mean).div_(std)
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
