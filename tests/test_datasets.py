"""Dataset files in their published formats (written here, small), their validation, the download
fallback, on-device augmentation, and a one-epoch sweep on a real-format CIFAR-10 folder.

Nothing here downloads: torchvision is replaced by a fake module or hidden."""

import gzip
import pickle
import struct
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from bnstats import config, data, store, sweep

# ---------------------------------------------------------------------------------------------------
# Writers of the real formats


def idx_bytes(arr: np.ndarray) -> bytes:
    """IDX (LeCun): magic 0x00 0x00 0x08 <ndim>, big-endian uint32 sizes, then uint8 data row-major."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx_dataset(folder, *, n_train=6, n_test=4, gz=False, seed=0):
    g = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train": (g.integers(0, 256, (n_train, 28, 28)), g.integers(0, 10, n_train)),
              "t10k": (g.integers(0, 256, (n_test, 28, 28)), g.integers(0, 10, n_test))}
    for split, (x, y) in arrays.items():
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            raw = idx_bytes(arr)
            name = f"{split}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
            else:
                (folder / name).write_bytes(raw)
    return arrays


def _py2_str(b: bytes) -> bytes:  # SHORT_BINSTRING / BINSTRING: a Python 2 `str`
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b


def _py2_int(i: int) -> bytes:
    return b"K" + bytes([i]) if 0 <= i < 256 else b"J" + struct.pack("<i", i)


def _py2_value(v) -> bytes:
    if isinstance(v, bytes):
        return _py2_str(v)
    if isinstance(v, int):
        return _py2_int(v)
    if isinstance(v, list):
        return b"](" + b"".join(map(_py2_value, v)) + b"e"
    assert isinstance(v, np.ndarray) and v.dtype == np.uint8
    # numpy 1.x under Python 2: _reconstruct(ndarray, (0,), 'b'), then BUILD with
    # (1, shape, dtype('u1', 0, 1) with state (3, '|', None, None, None, -1, -1, 0), False, raw bytes)
    dtype = (b"cnumpy\ndtype\n" + _py2_str(b"u1") + b"K\x00K\x01\x87R(K\x03" + _py2_str(b"|")
             + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    shape = b"(" + b"".join(_py2_int(d) for d in v.shape) + b"t"
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _py2_str(b"b")
            + b"\x87R(K\x01" + shape + dtype + b"\x89" + _py2_str(v.tobytes()) + b"tb")


def py2_pickle(d: dict) -> bytes:
    """A dict pickled as Python 2's cPickle (protocol 2) wrote the published CIFAR files."""
    return b"\x80\x02}(" + b"".join(_py2_value(k) + _py2_value(v) for k, v in d.items()) + b"u."


def cifar_batch(n, *, label_key=b"labels", num_classes=10, seed=0, title=b"training batch 1 of 5"):
    g = np.random.default_rng(seed)
    d = {b"batch_label": title, b"data": g.integers(0, 256, (n, 3072), dtype=np.uint8)}
    if label_key == b"fine_labels":
        d[b"fine_labels"] = g.integers(0, num_classes, n).tolist()
        d[b"coarse_labels"] = g.integers(0, 20, n).tolist()
    else:
        d[b"labels"] = g.integers(0, num_classes, n).tolist()
    d[b"filenames"] = [f"img_{i}.png".encode() for i in range(n)]
    return d


def write_cifar10(root, *, n_train=64, n_test=32, dump=py2_pickle):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [n_train // 5 + (i < n_train % 5) for i in range(5)]
    batches = {f"data_batch_{i + 1}": cifar_batch(s, seed=i, title=f"training batch {i + 1} of 5".encode())
               for i, s in enumerate(sizes)}
    batches["test_batch"] = cifar_batch(n_test, seed=9, title=b"testing batch 1 of 1")
    for name, d in batches.items():
        (folder / name).write_bytes(dump(d))
    return batches


def write_cifar100(root, *, n_train=20, n_test=10):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        out[name] = cifar_batch(n, label_key=b"fine_labels", num_classes=100, seed=seed, title=name.encode())
        (folder / name).write_bytes(py2_pickle(out[name]))
    return out


@pytest.fixture
def no_torchvision(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # `import torchvision...` raises ImportError
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)


# ---------------------------------------------------------------------------------------------------
# IDX: MNIST and Fashion-MNIST


@pytest.mark.parametrize("name, folder", [("mnist", "mnist"), ("fashion_mnist", "fashion_mnist"),
                                          ("mnist", "MNIST/raw"), ("fashion_mnist", "FashionMNIST/raw")])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_load_gzipped_or_not(tmp_path, no_torchvision, name, folder, gz):
    arrays = write_idx_dataset(tmp_path / folder, gz=gz)
    ds = data.load(name, root=tmp_path)
    assert ds.name == name and ds.num_classes == 10 and ds.is_image and ds.input_shape == (1, 28, 28)
    assert ds.x_train.dtype == torch.uint8 and ds.y_train.dtype == torch.int64
    assert torch.equal(ds.x_train[:, 0], torch.from_numpy(arrays["train"][0].astype(np.uint8)))
    assert torch.equal(ds.y_train, torch.from_numpy(arrays["train"][1]))
    assert torch.equal(ds.x_test[:, 0], torch.from_numpy(arrays["t10k"][0].astype(np.uint8)))
    assert torch.equal(ds.y_test, torch.from_numpy(arrays["t10k"][1]))


def test_read_idx_reads_the_header_shape():
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx_bytes(x)
    assert raw[:4] == b"\x00\x00\x08\x03" and raw[4:8] == b"\x00\x00\x00\x02"


def _corrupt(folder, name, fn):
    p = folder / name
    p.write_bytes(fn(p.read_bytes()))
    return p


IDX_CORRUPTIONS = {
    # file, how, message
    "bad magic": ("train-labels-idx1-ubyte", lambda b: b"\x00\x00\x08\x03" + b[4:], "magic number 0x00000803"),
    "images as labels": ("t10k-images-idx3-ubyte", lambda b: b"\x00\x00\x08\x01" + b[4:], "magic number"),
    "truncated images": ("train-images-idx3-ubyte", lambda b: b[:-100], "truncated"),
    "trailing bytes": ("t10k-labels-idx1-ubyte", lambda b: b + b"\x00", "trailing bytes"),
    "truncated header": ("train-images-idx3-ubyte", lambda b: b[:9], "truncated IDX header"),
    "count mismatch": ("train-labels-idx1-ubyte", lambda b: idx_bytes(np.zeros(5, np.uint8)), "5 labels"),
    "label out of range": ("t10k-labels-idx1-ubyte", lambda b: idx_bytes(np.full(4, 10, np.uint8)),
                           "0..9"),
    "not 28x28": ("t10k-images-idx3-ubyte", lambda b: idx_bytes(np.zeros((4, 32, 32), np.uint8)), "28×28"),
    "empty": ("train-images-idx3-ubyte", lambda b: b"", "too short"),
}


@pytest.mark.parametrize("case", IDX_CORRUPTIONS)
def test_corrupted_idx_files_are_rejected_naming_the_file(tmp_path, no_torchvision, case):
    name, fn, message = IDX_CORRUPTIONS[case]
    write_idx_dataset(tmp_path / "mnist")
    p = _corrupt(tmp_path / "mnist", name, fn)
    with pytest.raises(data.DatasetFileError, match=message) as e:
        data.load("mnist", root=tmp_path)
    assert str(p) in str(e.value)


def test_damaged_gzip_is_rejected_naming_the_file(tmp_path, no_torchvision):
    write_idx_dataset(tmp_path / "mnist", gz=True)
    p = _corrupt(tmp_path / "mnist", "train-images-idx3-ubyte.gz", lambda b: b[: len(b) // 2])
    with pytest.raises(data.DatasetFileError, match="damaged gzip") as e:
        data.load("mnist", root=tmp_path)
    assert str(p) in str(e.value)


# ---------------------------------------------------------------------------------------------------
# CIFAR-10 and CIFAR-100 pickles


def test_the_python2_pickle_writer_matches_what_pickle_reads():
    d = cifar_batch(3)
    loaded = pickle.loads(py2_pickle(d), encoding="bytes")  # how the CIFAR page says to read them
    assert set(loaded) == {b"batch_label", b"data", b"labels", b"filenames"}
    assert np.array_equal(loaded[b"data"], d[b"data"]) and loaded[b"labels"] == d[b"labels"]
    assert set(pickle.loads(py2_pickle(d), encoding="latin1")) == {"batch_label", "data", "labels", "filenames"}


@pytest.mark.parametrize("dump", [
    py2_pickle,                                                 # the published files
    lambda d: pickle.dumps(d, protocol=2),                      # Python 3, bytes keys
    lambda d: pickle.dumps({k.decode(): v for k, v in d.items()}, protocol=5),  # str keys, protocol 5
    lambda d: gzip.compress(pickle.dumps(d, protocol=4)),       # gzipped
])
def test_cifar10_batches_load(tmp_path, no_torchvision, dump):
    batches = write_cifar10(tmp_path, n_train=23, n_test=7, dump=dump)
    ds = data.load("cifar10", root=tmp_path)
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10 and ds.x_train.dtype == torch.uint8
    assert len(ds.x_train) == 23 and len(ds.x_test) == 7
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    x = np.concatenate([b[b"data"] for b in train])
    # 1024 red, then 1024 green, then 1024 blue values, each plane row-major
    assert torch.equal(ds.x_train[:, 0].reshape(23, -1), torch.from_numpy(x[:, :1024]))
    assert torch.equal(ds.x_train[:, 2, 31], torch.from_numpy(x[:, 3072 - 32:]))
    assert ds.y_train.tolist() == sum((b[b"labels"] for b in train), [])
    assert ds.y_test.tolist() == batches["test_batch"][b"labels"]


def test_cifar100_uses_the_fine_labels(tmp_path, no_torchvision):
    written = write_cifar100(tmp_path)
    ds = data.load("cifar100", root=tmp_path)
    assert ds.num_classes == 100 and ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (10, 3, 32, 32)
    assert ds.y_train.tolist() == written["train"][b"fine_labels"]
    assert ds.meta["label_key"] == "fine_labels"


class _Evil:
    def __reduce__(self):
        return (print, ("executed",))


CIFAR_CORRUPTIONS = {
    "no data": (lambda d: {k: v for k, v in d.items() if k != b"data"}, "no 'data' entry"),
    "no labels": (lambda d: {k: v for k, v in d.items() if k != b"labels"}, "no 'labels' entry"),
    "wrong dtype": (lambda d: {**d, b"data": d[b"data"].astype(np.int32)}, "uint8 array of shape"),
    "wrong width": (lambda d: {**d, b"data": d[b"data"][:, :1000].copy()}, "uint8 array of shape"),
    "count mismatch": (lambda d: {**d, b"labels": d[b"labels"][:-1]}, "labels for"),
    "label out of range": (lambda d: {**d, b"labels": [10] * len(d[b"labels"])}, "0..9"),
    "not a dict": (lambda d: [d[b"data"]], "expected a pickled dict"),
}


@pytest.mark.parametrize("case", [*CIFAR_CORRUPTIONS, "truncated", "code", "not a pickle"])
def test_corrupted_cifar_files_are_rejected_naming_the_file(tmp_path, no_torchvision, case):
    write_cifar10(tmp_path, n_train=10, n_test=5)
    p = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    d = cifar_batch(2, seed=3)
    if case in CIFAR_CORRUPTIONS:
        fn, message = CIFAR_CORRUPTIONS[case]
        p.write_bytes(pickle.dumps(fn(d), protocol=2))
    elif case == "truncated":
        p.write_bytes(py2_pickle(d)[:-3000])
        message = "not a readable CIFAR pickle"
    elif case == "code":  # a pickle that would run code is refused, not executed
        p.write_bytes(pickle.dumps({b"data": _Evil()}, protocol=2))
        message = "refusing to load .*print"
    else:
        p.write_bytes(b"garbage" * 10)
        message = "not a readable CIFAR pickle"
    with pytest.raises(data.DatasetFileError, match=message) as e:
        data.load("cifar10", root=tmp_path)
    assert str(p) in str(e.value)


# ---------------------------------------------------------------------------------------------------
# Missing files: download through torchvision, or say what to put where


@pytest.mark.parametrize("name, folder, files", [
    ("mnist", "mnist", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                        "t10k-labels-idx1-ubyte"]),
    ("fashion_mnist", "fashion_mnist", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
    ("cifar10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]),
    ("cifar100", "cifar-100-python", ["train", "test"]),
])
def test_missing_files_say_which_files_go_where(tmp_path, no_torchvision, name, folder, files):
    with pytest.raises(FileNotFoundError) as e:
        data.load(name, root=tmp_path / "empty")
    msg = str(e.value)
    assert str((tmp_path / "empty" / folder).resolve()) in msg
    assert all(f in msg for f in files)
    assert "torchvision is not installed" in msg


def test_only_the_missing_files_are_listed(tmp_path, no_torchvision):
    write_cifar10(tmp_path, n_train=10, n_test=5)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py/: data_batch_4. Put them there"):
        data.load("cifar10", root=tmp_path)


def _fake_torchvision(monkeypatch, calls, write=None, error=None):
    def make(cls_name):
        def init(self, root, train=True, download=False):
            calls.append((cls_name, root, train, download))
            if error is not None:
                raise error
            write(cls_name, root)
        return type(cls_name, (), {"__init__": init})

    datasets = types.ModuleType("torchvision.datasets")
    for n in ("MNIST", "FashionMNIST", "CIFAR10", "CIFAR100"):
        setattr(datasets, n, make(n))
    tv = types.ModuleType("torchvision")
    tv.datasets = datasets
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)


def test_absent_files_are_downloaded_by_torchvision_and_parsed_here(tmp_path, monkeypatch):
    calls = []

    def write(cls_name, root):  # where torchvision's classes put the files
        if cls_name == "FashionMNIST":
            write_idx_dataset(Path(root) / "FashionMNIST" / "raw", gz=True)
        else:
            write_cifar10(Path(root), n_train=10, n_test=5)

    _fake_torchvision(monkeypatch, calls, write=write)
    ds = data.load("fashion_mnist", root=tmp_path)
    assert calls == [("FashionMNIST", str(tmp_path), True, True)]
    assert ds.x_train.shape == (6, 1, 28, 28)
    ds = data.load("cifar10", root=tmp_path / "c")
    assert calls[-1] == ("CIFAR10", str(tmp_path / "c"), True, True) and len(ds.x_train) == 10
    data._load_cached.cache_clear()
    data.load("cifar10", root=tmp_path / "c")  # present now: no second download
    assert len(calls) == 2


def test_a_failed_download_says_why_and_what_to_place(tmp_path, monkeypatch):
    calls = []
    _fake_torchvision(monkeypatch, calls, error=RuntimeError("Error downloading cifar-10-python.tar.gz"))
    with pytest.raises(FileNotFoundError, match="Error downloading") as e:
        data.load("cifar10", root=tmp_path)
    assert "data_batch_1" in str(e.value) and "cifar-10-batches-py" in str(e.value)
    assert len(calls) == 1


# ---------------------------------------------------------------------------------------------------
# Augmentation on the device


def _candidates(img, padding):
    """Every crop of the zero-padded image (offset dy, dx) and its mirror image."""
    c, h, w = img.shape
    padded = torch.nn.functional.pad(img, (padding,) * 4)
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, dy:dy + h, dx:dx + w]
            yield (dy, dx, False), crop
            yield (dy, dx, True), crop.flip(-1)


def test_augment_shows_a_shifted_image_and_flips_it():
    b, p = 400, 2
    x = torch.arange(1, b * 2 * 5 * 6 + 1, dtype=torch.float32).view(b, 2, 5, 6)  # no zeros: padding shows
    out = data.augment(x, torch.Generator().manual_seed(0), padding=p, flip=True)
    seen = {}
    for i in range(b):
        matches = [t for t, cand in _candidates(x[i], p) if torch.equal(out[i], cand)]
        assert len(matches) == 1, i  # each output is exactly one crop of the padded image, maybe mirrored
        seen.setdefault(matches[0], i)
    assert len(seen) == (2 * p + 1) ** 2 * 2  # every shift occurs, flipped and not
    i = seen[(p, p, False)]  # centre crop: the image itself
    assert torch.equal(out[i], x[i])
    i = seen[(p + 1, p, False)]  # crop one row lower: the content moves up one row, zeros enter below
    assert torch.equal(out[i, :, :-1], x[i, :, 1:]) and (out[i, :, -1] == 0).all()
    i = seen[(p, p - 1, True)]  # crop one column left, then mirrored
    assert torch.equal(out[i].flip(-1)[:, :, 1:], x[i, :, :, :-1]) and (out[i].flip(-1)[:, :, 0] == 0).all()


def test_augment_without_padding_only_flips_and_without_flip_only_crops():
    x = torch.arange(64 * 3 * 4 * 4, dtype=torch.float32).view(64, 3, 4, 4)
    out = data.augment(x, torch.Generator().manual_seed(1), padding=0, flip=True)
    flipped = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x, strict=True)]
    assert all(f or torch.equal(o, xi) for f, o, xi in zip(flipped, out, x, strict=True))
    assert 10 < sum(flipped) < 54
    out = data.augment(x + 1, torch.Generator().manual_seed(1), padding=1, flip=False)
    for o, xi in zip(out, x + 1, strict=True):
        assert [t[2] for t, c in _candidates(xi, 1) if torch.equal(o, c)] == [False]


# ---------------------------------------------------------------------------------------------------
# End to end: a one-epoch sweep on a small real-format CIFAR-10 folder, through the store


def test_one_epoch_sweep_on_a_small_real_format_cifar10(tmp_path, no_torchvision):
    root = tmp_path / "data"
    write_cifar10(root, n_train=64, n_test=32)
    cfg_path = tmp_path / "cifar.toml"
    cfg_path.write_text(textwrap.dedent(f"""
        name = "cifar-tiny"
        dataset = "cifar10"
        seeds = 2
        [data]
        root = "{root}"
        augment = true
        [model]
        width = 4
        depth = 1
        [train]
        epochs = 1
        batch_size = 16
        [moments]
        every = 2
        probe_size = 16
        [grid]
        arch = ["vgg", "resnet"]
        placement = ["before", "after", "none"]
        """))
    cfg = config.load(cfg_path)
    out = tmp_path / "sweep"
    summary = sweep.run_sweep(cfg, out, executor=sweep.InlineExecutor(), progress=False, log=lambda m: None)
    assert summary.failed == [] and summary.trained == 12
    runs = store.load(out).runs
    assert len(runs) == 12 and runs["run_id"].is_unique
    assert set(runs["run_id"]) == {r.run_id for r in cfg.runs()}
    assert (runs["dataset"] == "cifar10").all() and runs["test_acc"].between(0, 1).all()
    assert (runs.groupby(["seed", "arch"])[["init_hash", "order_hash"]].nunique() == 1).all().all()
    assert runs.groupby("arch")["init_hash"].nunique().eq(2).all()  # one per seed


# ---------------------------------------------------------------------------------------------------
# The example sweeps in configs/


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*"))
INPUT_SHAPES = {"cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "mnist": (1, 28, 28),
                "fashion_mnist": (1, 28, 28), "mnist1d": (1, 40), "synthetic": (3, 8, 8)}


def test_configs_folder_is_not_empty():
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_example_config_loads_expands_and_builds(path):
    from bnstats import models

    cfg = config.load(path)
    runs = cfg.runs()
    assert runs and len({r.run_id for r in runs}) == len(runs)
    classes = 100 if cfg.dataset == "cifar100" else 10
    shapes = {(r.model.arch, r.model.width, r.model.depth, r.model.resnet_order): r.model for r in runs}
    for model_cfg in shapes.values():  # every architecture builds and runs on the dataset's inputs
        model = models.build(model_cfg, INPUT_SHAPES[cfg.dataset], classes).eval()
        with torch.no_grad():
            assert model(torch.zeros(2, *INPUT_SHAPES[cfg.dataset])).shape == (2, classes)
