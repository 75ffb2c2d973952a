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
    x_val: torch.Tensor | None = None  # a validation set given with the data (user files), or split off
    y_val: torch.Tensor | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, channels first: ``(C, L)`` or ``(C, H, W)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.x_train.dim() == 4


# ---------------------------------------------------------------------------------------------------
# MNIST-1D (Greydanus 2020), generated locally by the mnist1d package with its paper's default args.


MNIST1D_LENGTH = 40  # samples per MNIST-1D sequence (the paper's default args)


def _read_mnist1d_cache(cache: Path) -> dict[str, np.ndarray]:
    """The arrays of an MNIST-1D cache, checked: a damaged or foreign file raises
    :class:`DatasetFileError` naming it (deleting it makes the next load generate it again)."""
    fix = "delete it and the next run generates it again"
    try:
        # np.load given a path leaks its file when the zip is damaged: open (and close) it here
        with open(cache, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            missing = [k for k in ("x", "y", "x_test", "y_test") if k not in z.files]
            if missing:
                raise DatasetFileError(f"{cache}: not an MNIST-1D cache: no {', '.join(missing)} array; {fix}")
            arrays = {k: z[k] for k in ("x", "y", "x_test", "y_test")}
    except DatasetFileError:
        raise
    except Exception as e:  # BadZipFile, EOFError (truncated), ValueError (not an npz, pickled data), ...
        raise DatasetFileError(f"{cache}: not a readable MNIST-1D cache ({type(e).__name__}: "
                               f"{' '.join(str(e).split())}); {fix}") from None
    for x, y in (("x", "y"), ("x_test", "y_test")):
        xs, ys = arrays[x], arrays[y]
        if xs.dtype != np.float32 or xs.ndim != 2 or xs.shape[1] != MNIST1D_LENGTH:
            raise DatasetFileError(f"{cache}: {x!r} must be float32 of shape [N, {MNIST1D_LENGTH}], got "
                                   f"{xs.dtype} {xs.shape}; {fix}")
        try:
            _check_labels(cache, ys, len(xs), 10)
        except DatasetFileError as e:
            raise DatasetFileError(f"{e} (array {y!r}); {fix}") from None
    return arrays


def _mnist1d(root: Path) -> Dataset:
    cache = root / "mnist1d.npz"
    if cache.is_file():
        arrays = _read_mnist1d_cache(cache)
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
        try:
            np.savez(tmp, **arrays)
            tmp.replace(cache)  # atomic: concurrent workers never read a half-written cache
        finally:
            tmp.unlink(missing_ok=True)  # a failed write (a full disk) leaves nothing behind
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


# ---------------------------------------------------------------------------------------------------
# The user's own data: ``file:PATH.npz`` or a loader ``package.module:function`` returning the same arrays.

USER_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
USER_OPTIONAL = ("x_val", "y_val")


def _user_inputs(where: str, key: str, x: np.ndarray) -> np.ndarray:
    """Inputs as bnstats holds them: channels first; 2-D arrays (sequences ``N×L``, tabular ``N×F``) get
    one channel (``N×1×L``, as MNIST-1D); images ``N×H×W×C`` (last axis 1, 3 or 4, second not) become
    ``N×C×H×W``. uint8 stays uint8 (standardised per channel on the device); floats must be finite."""
    if x.dtype.kind not in "uif" or x.dtype == np.float16:
        raise DatasetFileError(f"{where}: {key} must be uint8 or float32/float64, got dtype {x.dtype}")
    if x.ndim not in (2, 3, 4):
        raise DatasetFileError(f"{where}: {key} must be N×F, N×C×L, N×C×H×W or N×H×W×C, got shape {x.shape}")
    if x.dtype.kind in "iu" and x.dtype != np.uint8:
        raise DatasetFileError(f"{where}: {key} holds integers of dtype {x.dtype}; inputs are uint8 "
                               "(images, scaled by 1/255) or floats")
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        if bad.any():
            first = np.argwhere(bad)[0]
            raise DatasetFileError(f"{where}: {key} holds {int(bad.sum())} NaN/inf values (first at index "
                                   f"{tuple(int(i) for i in first)})")
        x = x.astype(np.float32)
    if x.ndim == 2:
        return x[:, None, :]
    if x.ndim == 4 and x.shape[3] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x


def _user_labels(where: str, key: str, y: np.ndarray, n: int) -> np.ndarray:
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DatasetFileError(f"{where}: {key} must be a 1-D array of integer labels, got {y.dtype} of shape {y.shape}")
    if len(y) != n:
        raise DatasetFileError(f"{where}: {key} has {len(y)} labels but x{key[1:]} has {n} rows")
    if n and y.min() < 0:
        raise DatasetFileError(f"{where}: {key} holds negative labels (min {int(y.min())}); labels are 0..K-1")
    return y.astype(np.int64)


def user_dataset(name: str, arrays: Any, where: str) -> Dataset:
    """Validate the arrays of a user's dataset (a mapping with ``x_train``, ``y_train``, ``x_test``,
    ``y_test``, optionally ``x_val``, ``y_val``) into a :class:`Dataset`; errors name ``where`` and the array."""
    if not hasattr(arrays, "keys") or not hasattr(arrays, "__getitem__"):
        raise DatasetFileError(f"{where}: expected a mapping of arrays ({', '.join(USER_ARRAYS)}), got "
                               f"{type(arrays).__name__}")
    keys = set(arrays.keys())
    missing = [k for k in USER_ARRAYS if k not in keys]
    if missing:
        raise DatasetFileError(f"{where}: missing array(s) {', '.join(missing)}; it holds: "
                               f"{', '.join(sorted(keys)) or 'nothing'}")
    if ("x_val" in keys) != ("y_val" in keys):
        raise DatasetFileError(f"{where}: x_val and y_val come together; only {'x_val' if 'x_val' in keys else 'y_val'} is there")
    out: dict[str, np.ndarray] = {}
    for split in ("train", "test", "val"):
        if f"x_{split}" not in keys:
            continue
        x = np.asarray(arrays[f"x_{split}"])
        out[f"x_{split}"] = _user_inputs(where, f"x_{split}", x)
        out[f"y_{split}"] = _user_labels(where, f"y_{split}", np.asarray(arrays[f"y_{split}"]), len(x))
        if len(x) == 0:
            raise DatasetFileError(f"{where}: x_{split} is empty")
    shapes = {k: v.shape[1:] for k, v in out.items() if k.startswith("x_")}
    if len(set(shapes.values())) > 1:
        raise DatasetFileError(f"{where}: inputs of different shapes per split: "
                               + ", ".join(f"{k} {s}" for k, s in shapes.items()))
    dtypes = {k: v.dtype for k, v in out.items() if k.startswith("x_")}
    if len(set(dtypes.values())) > 1:
        raise DatasetFileError(f"{where}: inputs of different dtypes per split: "
                               + ", ".join(f"{k} {d}" for k, d in dtypes.items()))
    num_classes = 1 + max(int(v.max()) for k, v in out.items() if k.startswith("y_"))
    if num_classes < 2:
        raise DatasetFileError(f"{where}: the labels hold a single class; a classifier needs at least 2")
    t = {k: torch.from_numpy(v) for k, v in out.items()}
    return Dataset(name, t["x_train"], t["y_train"], t["x_test"], t["y_test"], num_classes,
                   {"source": where}, t.get("x_val"), t.get("y_val"))


def _npz_dataset(name: str) -> Dataset:
    path = Path(name[len("file:"):])
    where = f"dataset {name}"
    if not path.is_file():
        raise FileNotFoundError(f"{where}: file not found ({str(path)!r}, relative to the working directory)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zlib.error, EOFError) as e:  # not a zip, truncated, object arrays ...
        raise DatasetFileError(f"{where}: not a readable .npz file ({type(e).__name__}: {e})") from None
    return user_dataset(name, arrays, where)


def _loader_dataset(spec: str) -> Dataset:
    from . import factory

    fn = factory.resolve(spec, field="dataset")
    arrays = factory.call(fn, {}, field="dataset", spec=spec)
    return user_dataset(spec, arrays, f"dataset {spec}")


def is_user(name: str) -> bool:
    """Whether ``dataset`` names the user's data (an npz file or a loader) rather than a built-in one."""
    return name.startswith("file:") or name not in DATASETS


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
    if name.startswith("file:"):
        return _npz_dataset(name)
    if name not in DATASETS:
        return _loader_dataset(name)
    return _LOADERS[name](Path(root))


def load(name: str, root: str | Path = "data/cache") -> Dataset:
    """Load a dataset by name from ``root`` (built once per process and cached).

    ``name``: a built-in dataset, ``file:PATH.npz`` (arrays ``x_train``, ``y_train``, ``x_test``, ``y_test``,
    optionally ``x_val``, ``y_val``) or a loader ``package.module:function`` returning such a mapping
    (:func:`user_dataset` says what is accepted).

    Returns a :class:`Dataset`: train and test inputs (images uint8 ``[N, C, H, W]``, sequences float32
    ``[N, C, L]``), int64 labels, the number of classes and ``meta`` (source, files). Missing files
    raise ``FileNotFoundError`` naming the files and the folder; damaged ones :class:`DatasetFileError`.
    """
    from .config import check_dataset

    check_dataset(name)
    if not is_user(name) and name not in _LOADERS:
        raise ConfigError(f"dataset: {name!r} has no loader in this version of bnstats")
    return _load_cached(name, str(Path(root)))


@lru_cache(maxsize=4)
def fingerprint(ds: Dataset) -> str:
    """Hash of the tensors, stored with each run so a changed dataset cannot pass unnoticed."""
    h = hashlib.sha256()
    for t in (ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.x_val, ds.y_val):
        if t is not None:
            h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


VAL_SEED = "validation-split"  # the split's generator: one fixed seed, the same for every arm and seed


@lru_cache(maxsize=8)
def split_validation(ds: Dataset, fraction: float) -> Dataset:
    """``ds`` with ``fraction`` of its training examples held out as a validation set.

    Stratified: ``round(fraction * n_k)`` examples of each class ``k``, drawn by one generator with a fixed
    seed (:data:`VAL_SEED`), so every arm and seed of every sweep on this dataset sees the same split.
    A class left without training or validation examples, or data that carry a validation set of their
    own, raise :class:`ConfigError` naming ``data.val_split``.
    """
    if fraction == 0:
        return ds
    if ds.x_val is not None:
        raise ConfigError(f"data.val_split: the dataset {ds.name!r} brings its own validation set (x_val, "
                          f"y_val); set data.val_split = 0 to use it, got {fraction}")
    from .config import derive_seed

    g = torch.Generator().manual_seed(derive_seed(0, VAL_SEED))
    y = ds.y_train
    order = torch.randperm(len(y), generator=g)
    val_parts, train_parts = [], []
    for k in range(ds.num_classes):
        members = order[y[order] == k]
        n_val = round(fraction * len(members))
        if len(members) and (n_val == 0 or n_val == len(members)):
            raise ConfigError(f"data.val_split: {fraction} of class {k}'s {len(members)} training examples "
                              f"leaves {'no validation' if n_val == 0 else 'no training'} example of it")
        val_parts.append(members[:n_val])
        train_parts.append(members[n_val:])
    val = torch.cat(val_parts).sort().values
    train = torch.cat(train_parts).sort().values
    return Dataset(ds.name, ds.x_train[train], ds.y_train[train], ds.x_test, ds.y_test, ds.num_classes,
                   {**ds.meta, "val_split": fraction}, ds.x_train[val], ds.y_train[val])


@dataclass(frozen=True)
class DeviceData:
    """A dataset resident on the device, inputs standardised, ready for indexing by batch.

    ``x_val``/``y_val`` are empty (zero rows) when the run has no validation set.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    is_image: bool
    x_val: torch.Tensor
    y_val: torch.Tensor


def to_device(ds: Dataset, device: str | torch.device) -> DeviceData:
    """Inputs as float32 on ``device``; uint8 inputs (images) scaled by 1/255 and standardised per channel
    with the training set's mean and standard deviation (floats are used as given)."""
    xs = [ds.x_train, ds.x_test, ds.x_val if ds.x_val is not None else ds.x_train[:0]]
    if ds.x_train.dtype == torch.uint8:
        xs = [x.float().div_(255) for x in xs]
        dims = (0, *range(2, xs[0].dim()))
        mean = xs[0].mean(dims, keepdim=True)
        std = xs[0].std(dims, keepdim=True)
        xs = [x.sub_(mean).div_(std) for x in xs]  # in place: CIFAR-10's training set is 600 MB as float32
    y_val = ds.y_val if ds.y_val is not None else ds.y_train[:0]
    x_train, x_test, x_val = (x.float().to(device) for x in xs)
    return DeviceData(x_train, ds.y_train.to(device), x_test, ds.y_test.to(device), ds.num_classes,
                      ds.input_shape, ds.is_image, x_val, y_val.to(device))


def prepare(dataset: str, root: str, val_split: float, device: str | torch.device) -> tuple[Dataset, DeviceData]:
    """The dataset of a run (validation split applied) and its device copy: what a training loop needs."""
    ds = split_validation(load(dataset, root), val_split)
    return ds, to_device(ds, device)


def epoch_order(n: int, generator: torch.Generator) -> torch.Tensor:
    """The example order of one epoch: a permutation drawn from the seed's order generator (CPU)."""
    return torch.randperm(n, generator=generator)


def draw_augment(gen: torch.Generator, batch: int, *, padding: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The random numbers of one batch's augmentation, in the order they are drawn: crop offsets
    ``[2, batch]``, then flips ``[batch]`` (drawn whatever ``flip`` says, so turning flips off leaves the
    crops as they were)."""
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=gen)
    flips = torch.rand(batch, generator=gen) < 0.5
    return offsets, flips


def augment_drawn(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, *, padding: int,
                  flip: bool) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flip, of an image batch ``[B, C, H, W]``,
    with its random numbers given (:func:`draw_augment`, on ``x``'s device). The crop is one gather."""
    b, c, h, w = x.shape
    dev = x.device
    if padding:
        xp = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        rows = offsets[0][:, None] + torch.arange(h, device=dev)[None, :]  # [B, H]
        cols = offsets[1][:, None] + torch.arange(w, device=dev)[None, :]  # [B, W]
        xp = xp.gather(2, rows[:, None, :, None].expand(b, c, h, xp.shape[3]))
        x = xp.gather(3, cols[:, None, None, :].expand(b, c, h, w))
    if flip:
        x = torch.where(flips[:, None, None, None], x.flip(-1), x)
    return x


def augment(x: torch.Tensor, generator: torch.Generator, *, padding: int = 4, flip: bool = True
            ) -> torch.Tensor:
    """:func:`augment_drawn` with the numbers drawn from ``generator`` (CPU, the seed's augmentation
    stream), the same way whatever the model: every arm of a seed sees identical augmented batches."""
    if x.dim() != 4:
        raise ValueError(f"augment: expected an image batch [B, C, H, W], got shape {tuple(x.shape)}")
    offsets, flips = draw_augment(generator, x.shape[0], padding=padding)
    return augment_drawn(x, offsets.to(x.device), flips.to(x.device), padding=padding, flip=flip)
