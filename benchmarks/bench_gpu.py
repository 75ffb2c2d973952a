"""GPU checks and throughput (issue 6): ``python benchmarks/bench_gpu.py`` (``bash benchmarks/gpu_check.sh``).

One call on a lent GPU runs, in order of importance, each case guarded so that one failure or an
exhausted time budget leaves the others (the JSON is rewritten after every case):

1. checks: the stacked engine on CUDA gives each seed the numbers of its own ``train.train`` run
   (metrics, pairing hashes, moments), bf16 trains, ``deterministic = true`` repeats bitwise, the
   init-probe moments on the GPU equal the CPU's, and the training loop does not synchronise with
   the host per step (CUDA sync-debug warnings counted at two batch sizes: per-step syncs would
   make the counts differ);
2. ``engine``: :func:`bnstats.train.train_stack` end to end (data resident, augmentation on the
   device, evaluation and moments included) on CIFAR-10-format files of synthetic 32×32×3 images,
   VGG-style widths 16/32/64 and 64/128/256 (``vgg``, depth 1), batch 512; images/s summed over
   seeds in the epochs after the first (the first holds cuDNN's and the allocator's warm-up);
3. ``loader``: the per-seed loop a typical user writes (``DataLoader`` with a per-image random
   crop + flip, worker processes, ``.item()`` per step) on the same model and data, one seed;
   ``loader_plain``: the same without augmentation and workers;
4. ``step``: the stacked training step alone in variants (fp32, bf16, channels-last, one CUDA graph
   per step, ``torch.compile``) and stack sizes, to show where the engine's time goes;
5. a profile of the bf16 stacked step (top kernels by GPU time).

``--dry-run`` runs every piece at tiny sizes on the CPU (no timing meaning; CI runs it).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import pickle
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__" and not __package__:
    # Run as a file (``python benchmarks/bench_gpu.py``): bnstats and benchmarks from this checkout (see
    # bench_cpu.py), not the script's folder or an installed copy.
    if sys.path and Path(sys.path[0] or ".").resolve() == REPO / "benchmarks":
        sys.path[0] = str(REPO)
    else:
        sys.path.insert(0, str(REPO))
WIDTHS = (16, 64)  # vgg first-stage width: stages of 16/32/64 and 64/128/256 channels


# ---------------------------------------------------------------------------------------------------
# Data and runs


def write_images(root: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """CIFAR-10 "python version" files of random 32×32×3 images (the format bnstats reads for CIFAR)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [n_train // 5 + (i < n_train % 5) for i in range(5)] + [n_test]
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, n in zip(names, sizes, strict=True):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = (x[:, :1024].mean(1) > 127.5).astype(np.int64) + 2 * rng.integers(0, 5, n)  # weakly learnable
        with open(folder / name, "wb") as f:
            pickle.dump({"data": x, "labels": y.tolist(), "batch_label": name}, f)


def image_runs(width: int, seeds: int, *, epochs: int, root: str, batch: int = 512,
               moments: int | None = 10) -> list:
    """The runs of one arm: ``vgg`` depth 1 (3 conv blocks, ``width``·(1, 2, 4) channels), crop + flip."""
    from bnstats import config

    raw = {"name": "gpu-bench", "dataset": "cifar10", "seeds": seeds,
           "data": {"root": root, "augment": True},
           "model": {"arch": "vgg", "width": width, "depth": 1},
           "grid": {"placement": ["before"]},
           "train": {"epochs": epochs, "batch_size": batch, "lr": 0.05, "momentum": 0.9,
                     "eval_batch_size": 2000},
           "moments": {"enabled": moments is not None, "every": moments or 0, "probe_size": 512}}
    return config.from_dict(raw).runs()


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _peak_mb(dev: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None


@contextlib.contextmanager
def _setting(owner: Any, name: str, value: Any) -> Iterator[None]:
    """``owner.name = value`` within the block (``None``: left as it is), restored after it."""
    old = getattr(owner, name)
    if value is not None:
        setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


def _reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


# ---------------------------------------------------------------------------------------------------
# Cases


def engine_case(width: int, seeds: int, *, epochs: int, root: str, device: str, precision: str = "bf16",
                moments: int | None = 10, compile: bool = False, batch: int = 512,
                conv_impl: str | None = None, fused: bool | None = None) -> dict[str, Any]:
    """``train.train_stack`` end to end; steady images/s from the epochs after the first.
    ``conv_impl``: overrides ``engine.GPU_CONV_IMPL`` for this case; ``fused``: ``moments.FUSED_CUDA``."""
    from bnstats import engine, train
    from bnstats import moments as moments_mod

    dev = torch.device(device)
    if dev.type != "cuda":  # the dry run: bf16 is CUDA's
        precision = "fp32"
    runs = image_runs(width, seeds, epochs=epochs, root=root, batch=batch, moments=moments)
    _reset_peak(dev)
    with _setting(engine, "GPU_CONV_IMPL", conv_impl), _setting(moments_mod, "FUSED_CUDA", fused):
        t0 = time.perf_counter()
        outs = train.train_stack(runs, device=dev, precision=precision, compile=compile)
        wall = time.perf_counter() - t0
        fused = moments_mod.FUSED_CUDA  # what ran (a failed compilation turns it off)
    curves = outs[0].curves
    per_epoch = outs[0].run["steps"] // outs[0].run["epochs_completed"] * batch * seeds  # images, all seeds
    t_first = curves[0]["wall_time_s"]
    steady_s = (curves[-1]["wall_time_s"] - t_first) / max(1, len(curves) - 1)
    return {"case": "engine", "widths": [width, 2 * width, 4 * width], "seeds": seeds, "batch": batch,
            "precision": precision, "moments_every": moments, "compile": compile, "epochs": epochs,
            "conv_impl": conv_impl or engine.GPU_CONV_IMPL, "fused_moments": fused,
            "wall_s": wall, "first_epoch_s": t_first, "steady_epoch_s": steady_s,
            "images_per_s": per_epoch / steady_s if len(curves) > 1 else per_epoch / t_first,
            "s_per_1000_run_epochs": steady_s / seeds * 1000,
            "mean_test_acc": float(np.mean([o.run["test_acc"] for o in outs])), "peak_gpu_mb": _peak_mb(dev)}


class _CropFlip(torch.utils.data.Dataset):
    """What a user's ``transforms.RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()`` do, per image."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, padding: int = 4) -> None:
        self.x, self.y, self.p = x, y, padding

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        img = F.pad(self.x[i], (self.p,) * 4)
        r, c = torch.randint(0, 2 * self.p + 1, (2,)).tolist()  # torch's RNG: seeded per worker by DataLoader
        img = img[:, r:r + 32, c:c + 32]
        if torch.rand(()) < 0.5:
            img = img.flip(-1)
        return img, self.y[i]


def loader_case(width: int, *, root: str, device: str, steps: int, augment: bool = True,
                workers: int = 8, batch: int = 512) -> dict[str, Any]:
    """One seed as a typical user trains it: DataLoader, per-step host transfer, ``.item()``."""
    from torch.utils.data import DataLoader, TensorDataset

    from bnstats import data, models

    dev = torch.device(device)
    run = image_runs(width, 1, epochs=1, root=root, batch=batch)[0]
    ds = data.load("cifar10", root)
    model = models.build(run.model, ds.input_shape, ds.num_classes)
    models.init_parameters(model, 0)
    model.to(dev)
    mean = torch.tensor([125.3, 123.0, 113.9], device=dev).view(1, 3, 1, 1)
    std = torch.tensor([63.0, 62.1, 66.7], device=dev).view(1, 3, 1, 1)
    dset = _CropFlip(ds.x_train, ds.y_train) if augment else TensorDataset(ds.x_train, ds.y_train)
    workers = workers if augment else 0
    loader = DataLoader(dset, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
                        pin_memory=dev.type == "cuda", persistent_workers=workers > 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    if len(loader) == 0:
        raise ValueError(f"batch: {batch} exceeds the {len(dset)} training images")
    warm = min(5, steps)
    done, t0 = 0, 0.0
    _reset_peak(dev)
    while done < steps + warm:
        for xb, yb in loader:
            if done == warm:
                _sync(dev)
                t0 = time.perf_counter()
            xb = (xb.to(dev, non_blocking=True).float() - mean) / std
            yb = yb.to(dev, non_blocking=True)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
            done += 1
            if done == steps + warm:
                break
    _sync(dev)
    wall = time.perf_counter() - t0
    n = len(ds.x_train) // batch * batch
    return {"case": "loader" if augment else "loader_plain", "widths": [width, 2 * width, 4 * width],
            "seeds": 1, "batch": batch, "workers": workers, "steps": steps, "wall_s": wall,
            "images_per_s": steps * batch / wall, "s_per_1000_run_epochs": wall / steps * (n / batch) * 1000,
            "peak_gpu_mb": _peak_mb(dev)}


class MaxPool2x2(torch.nn.Module):
    """2×2 max-pool as a reshape and a max over the last axis (an experiment: ``nn.MaxPool2d``'s
    backward kernel took 17% of the bf16 step's GPU time). Same values; ties go to the first element
    of the window in both (row-major), so the gradient is the same too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        v = x[..., : h // 2 * 2, : w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2)
        return v.permute(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4).max(-1).values


def step_case(width: int, seeds: int, *, device: str, mode: str, steps: int, batch: int = 512,
              n_images: int = 25_600, around: Any = None) -> dict[str, Any]:
    """The stacked training step alone (data on the device, indices and crops pre-drawn there).

    ``mode``: ``fp32`` | ``bf16`` | ``bf16_cl`` (channels-last) | ``bf16_pool`` (:class:`MaxPool2x2`)
    | ``bf16_split`` / ``bf16_auto`` (``engine.stack_models``' conv_impl ``split`` / ``auto``)
    | ``bf16_graph`` (the whole step,
    optimizer included, replayed as one CUDA graph) | ``bf16_compile`` (``torch.compile`` of the
    stacked model; compile time reported apart). ``around``: a context manager entered for the timed
    steps only (the profiler).
    """
    from bnstats import config, data, engine, models

    dev = torch.device(device)
    _reset_peak(dev)
    mc = config.ModelConfig(arch="vgg", width=width, depth=1)
    nets = []
    for s in range(seeds):
        net = models.build(mc, (3, 32, 32), 10)
        models.init_parameters(net, s)
        nets.append(net)
    impl = {"bf16_split": "split", "bf16_auto": "auto"}.get(mode, "grouped" if dev.type == "cuda" else "split")
    model = engine.stack_models(nets, conv_impl=impl).to(dev)
    del nets
    if mode == "bf16_pool":
        for blk in model.modules():
            if isinstance(getattr(blk, "pool", None), torch.nn.MaxPool2d):
                blk.pool = MaxPool2x2()
    cl = mode == "bf16_cl"
    if cl:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(n_images, 3, 32, 32, device=dev, generator=g)
    y = torch.randint(0, 10, (n_images,), device=dev, generator=g)
    total = steps + 3
    idx = torch.randint(0, n_images, (total, batch, seeds), device=dev, generator=g)
    offs = torch.randint(0, 9, (total, 2, batch * seeds), device=dev, generator=g)
    flips = torch.rand(total, batch * seeds, device=dev, generator=g) < 0.5
    bf16 = mode != "fp32" and dev.type == "cuda"
    forward = model
    compile_s = None
    if mode == "bf16_compile":
        forward = torch.compile(model)

    def body(b: torch.Tensor, o: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        xb = x[b]
        xb = data.augment_drawn(xb.flatten(0, 1), o, f, padding=4, flip=True).view(xb.shape).flatten(1, 2)
        if cl:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=mode != "bf16_graph"):
            out = forward(xb)
        k = out.shape[-1]
        per = F.cross_entropy(out.float().reshape(-1, k), y[b].reshape(-1), reduction="none").view(batch, seeds)
        per = per.mean(0)
        per.sum().backward()
        opt.step()
        return per.detach()

    if mode == "bf16_graph" and dev.type == "cuda":
        sb, so, sf = idx[0].clone(), offs[0].clone(), flips[0].clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside capture: cuDNN plans, optimizer state
            for i in range(3):
                opt.zero_grad(set_to_none=True)
                body(idx[i], offs[i], flips[i])
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            body(sb, so, sf)
        _sync(dev)
        with around or contextlib.nullcontext():
            t0 = time.perf_counter()
            for i in range(3, total):
                sb.copy_(idx[i])
                so.copy_(offs[i])
                sf.copy_(flips[i])
                graph.replay()
            _sync(dev)
            wall = time.perf_counter() - t0
    else:
        t_c = time.perf_counter()
        for i in range(3):  # warm-up (and compilation)
            opt.zero_grad(set_to_none=True)
            body(idx[i], offs[i], flips[i])
        _sync(dev)
        if mode == "bf16_compile":
            compile_s = time.perf_counter() - t_c
        with around or contextlib.nullcontext():
            t0 = time.perf_counter()
            for i in range(3, total):
                opt.zero_grad(set_to_none=True)
                body(idx[i], offs[i], flips[i])
            _sync(dev)
            wall = time.perf_counter() - t0
    return {"case": "step", "mode": mode, "widths": [width, 2 * width, 4 * width], "seeds": seeds,
            "batch": batch, "steps": steps, "wall_s": wall, "images_per_s": seeds * steps * batch / wall,
            "compile_s": compile_s, "peak_gpu_mb": _peak_mb(dev)}


def profile_case(width: int, seeds: int, *, device: str, steps: int = 5, batch: int = 512, **kw) -> dict[str, Any]:
    """Top GPU kernels of the bf16 stacked step (after a warm-up), as torch.profiler's table."""
    from torch.profiler import ProfilerActivity, profile

    dev = torch.device(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    prof = profile(activities=acts)
    r = step_case(width, seeds, device=device, mode="bf16", steps=steps, batch=batch, around=prof, **kw)
    ka = prof.key_averages()
    for key in ("self_device_time_total", "self_cuda_time_total", "self_cpu_time_total"):
        try:
            text = ka.table(sort_by=key, row_limit=25)
            break
        except Exception:  # the sort key's name changed across torch versions
            continue
    return {"case": "profile", "widths": [width, 2 * width, 4 * width], "seeds": seeds, "table": text,
            "profiled_images_per_s": r["images_per_s"]}


def moments_case(seeds: int, batch: int, channels: int, hw: int, *, device: str, reps: int = 5) -> dict[str, Any]:
    """One stacked site tensor's moment reduction, as the engine's recorder hands it over (a ``[S, N, C,
    H, W]`` view of the packed ``[N, S*C, H, W]`` activations, bf16 on a GPU): eager passes against the
    compiled fused reduction (``moments.FUSED_CUDA``). The first fused call holds the compilation."""
    from bnstats import moments

    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    g = torch.Generator(device=dev).manual_seed(0)
    packed = torch.randn(batch, seeds * channels, hw, hw, device=dev, generator=g, dtype=dtype)
    packed = (packed.relu_() * 2 - 0.5)  # a skewed distribution with exact zeros, offset from 0
    site = packed.view(batch, seeds, channels, hw, hw).transpose(0, 1)
    out: dict[str, Any] = {"case": "moments", "shape": list(site.shape), "dtype": str(dtype),
                           "values": site.numel(), "seeds": seeds}
    results = {}
    for fused in (True, False):
        times = []
        with _setting(moments, "FUSED_CUDA", fused):
            for _ in range(reps + 1):
                _sync(dev)
                t0 = time.perf_counter()
                acc = moments.MomentAccumulator.from_tensors([site], channel_dim=2)
                _sync(dev)
                times.append(time.perf_counter() - t0)
        name = "fused" if fused else "eager"
        out[f"{name}_first_s"], out[f"{name}_ms"] = times[0], 1e3 * float(np.median(times[1:]))
        out[f"{name}_gb_per_s"] = site.numel() * site.element_size() / (out[f"{name}_ms"] / 1e3) / 1e9
        results[name] = acc.result()
    out["eager_over_fused"] = out["eager_ms"] / out["fused_ms"]
    a, b = results["fused"], results["eager"]
    out["max_rel_diff"] = {k: float(((a[k] - b[k]).abs() / (b[k].abs() + 1e-12)).max())
                           for k in ("mean", "var", "skew", "exkurt")}
    out["frac_zero_equal"] = bool(torch.equal(a.frac_zero, b.frac_zero))
    return out


# ---------------------------------------------------------------------------------------------------
# Checks


def _metric_diff(a, b) -> float:
    return max(abs(x.run[k] - y.run[k]) for x, y in zip(a, b, strict=True)
               for k in ("train_loss", "test_loss", "test_acc"))


def _moment_diff(a_rows: list[dict], b_rows: list[dict]) -> float:
    """Largest relative difference of the summary statistics of matching moment rows."""
    key = ("epoch", "step", "source", "layer", "site")
    b_by = {tuple(r[k] for k in key): r for r in b_rows}
    worst = 0.0
    for r in a_rows:
        o = b_by[tuple(r[k] for k in key)]
        for k in ("mean", "var", "skew", "exkurt", "frac_zero"):
            if k in r and np.isfinite(r[k]) and np.isfinite(o[k]):
                worst = max(worst, abs(r[k] - o[k]) / max(1e-3, abs(o[k])))
    return worst


def checks(device: str, data_root: str, *, epochs: int = 2, small: bool = False) -> list[dict[str, Any]]:
    """Correctness of the engine on the device (see the module docstring)."""
    import tomllib
    from dataclasses import replace

    from bnstats import config, train

    raw = tomllib.loads(config.default_config_text())
    raw.update(seeds=3, data={"root": data_root}, grid={"arch": ["mlp", "cnn"], "placement": ["before", "after"]})
    raw["train"]["epochs"] = epochs
    if small:  # the dry run: a narrow model and few steps
        raw["model"]["width"], raw["train"]["batch_size"], raw["moments"]["probe_size"] = 8, 500, 64
    cfg = config.from_dict(raw)
    out = []
    for group in train.group_by_arm(cfg.runs()):
        t0 = time.perf_counter()
        st = train.train_stack(group, device=device)
        single = [train.train(r, device=device) for r in group]
        diff = _metric_diff(st, single)
        mdiff = max(_moment_diff(a.moments, b.moments) for a, b in zip(st, single, strict=True))
        same_hash = all(a.run["init_hash"] == b.run["init_hash"] and a.run["order_hash"] == b.run["order_hash"]
                        for a, b in zip(st, single, strict=True))
        bf = train.train_stack(group, device=device, precision="bf16" if device == "cuda" else "fp32")
        out.append({"check": f"stack = single: {group[0].model.arch}/{group[0].model.placement}",
                    "max_metric_diff": diff, "max_moment_rel_diff": mdiff, "hashes_equal": same_hash,
                    "bf16_test_acc": [o.run["test_acc"] for o in bf],
                    "ok": bool(diff < 1e-3 and mdiff < 1e-2 and same_hash  # bf16 learns (not asked of the dry run)
                               and all(o.run["test_acc"] > (0.0 if small else 0.15) for o in bf)),
                    "wall_s": time.perf_counter() - t0})
    group = train.group_by_arm(cfg.runs())[-1]
    # deterministic = true repeats bitwise on the device
    a = train.train_stack(group, device=device, deterministic=True)
    b = train.train_stack(group, device=device, deterministic=True)
    same = all(x.run[k] == y.run[k] for x, y in zip(a, b, strict=True) for k in ("train_loss", "test_loss"))
    out.append({"check": "deterministic repeats bitwise", "ok": bool(same and a[0].run["deterministic"]),
                "test_loss": [x.run["test_loss"] for x in a]})
    # the init probe (same weights, same inputs) on the device equals the CPU's
    one = replace(group[0], train=replace(group[0].train, epochs=1))
    g_rows = [r for r in train.train(one, device=device).moments if r["epoch"] == 0]
    c_rows = [r for r in train.train(one, device="cpu").moments if r["epoch"] == 0]
    d = _moment_diff(g_rows, c_rows)
    out.append({"check": "init-probe moments: device = CPU", "max_rel_diff": d, "rows": len(g_rows),
                "ok": bool(g_rows and d < 1e-3)})
    # no per-step host synchronisation: sync warnings must not grow with the number of steps
    if torch.device(device).type == "cuda":
        counts = {}
        for bs in (64, 256):
            runs = [replace(r, train=replace(r.train, batch_size=bs, epochs=1)) for r in group]
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    train.train_stack(runs, device=device)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            counts[bs] = [str(x.message)[:120] for x in w if "synchroniz" in str(x.message)]
        n64, n256 = len(counts[64]), len(counts[256])
        steps64 = 4000 // 64
        out.append({"check": "no per-step host sync", "syncs_batch64": n64, "syncs_batch256": n256,
                    "steps_batch64": steps64, "examples": sorted(set(counts[64]))[:5],
                    "ok": bool(n64 - n256 < steps64 // 4)})
    return out


# ---------------------------------------------------------------------------------------------------
# Driver


def _environment(device: str) -> dict[str, Any]:
    """:func:`benchmarks.bench_cpu._environment` plus the GPU's properties (``device`` is ``cpu`` for the dry run)."""
    from benchmarks.bench_cpu import _environment as base

    env = base()
    if torch.device(device).type != "cuda":
        return env | {"device": "cpu"}
    p = torch.cuda.get_device_properties(0)
    return env | {"device": p.name, "gpu_memory_gb": round(p.total_memory / 2**30, 1),
                  "multiprocessors": p.multi_processor_count, "cuda": torch.version.cuda,
                  "cudnn": torch.backends.cudnn.version()}


def plan(dry: bool, name: str = "full") -> list[tuple[str, dict[str, Any]]]:
    """(function name, kwargs) in order of importance; ``name = "conv"``: the stacked-conv comparison;
    ``"moments"``: the moment reduction, eager against compiled, alone and in the engine (issue 3)."""
    if name == "moments":
        if dry:
            return ([("moments_case", dict(seeds=2, batch=8, channels=4, hw=4, reps=2))]
                    + [("engine_case", dict(width=4, seeds=2, epochs=2, precision="bf16", moments=m, batch=32,
                                            fused=f)) for m, f in ((None, None), (10, True), (10, False))])
        p = [("moments_case", dict(seeds=64, batch=512, channels=c, hw=h)) for c, h in ((16, 32), (64, 32), (256, 8))]
        for w in WIDTHS:
            p += [("engine_case", dict(width=w, seeds=64, epochs=3, precision="bf16", moments=m, fused=f))
                  for m, f in ((None, None), (10, True), (10, False))]
        return p
    if name == "conv" and not dry:
        p = [("step_case", dict(width=w, seeds=64, mode=m, steps=30)) for w in WIDTHS
             for m in ("bf16", "bf16_split", "bf16_auto")]
        p += [("engine_case", dict(width=w, seeds=64, epochs=2, precision="bf16", moments=m, conv_impl=c))
              for w in WIDTHS for c in ("split", "auto") for m in (None, 10)]
        p += [("loader_case", dict(width=w, steps=60, augment=True, workers=8)) for w in WIDTHS]
        return p + [("engine_case", dict(width=64, seeds=64, epochs=2, precision="bf16", moments=None,
                                         conv_impl="auto", compile=True))]
    if dry:
        w, s, ep, st = (4,), 2, 2, 2
        return ([("engine_case", dict(width=w[0], seeds=s, epochs=ep, precision=p, moments=m, batch=32))
                 for p, m in (("bf16", 10), ("bf16", None), ("fp32", 10))]
                + [("loader_case", dict(width=w[0], steps=st, augment=a, workers=0, batch=32)) for a in (True, False)]
                + [("step_case", dict(width=w[0], seeds=s, mode=m, steps=st, batch=8, n_images=64))
                   for m in ("fp32", "bf16", "bf16_cl", "bf16_pool", "bf16_split", "bf16_auto", "bf16_graph")]
                + [("profile_case", dict(width=w[0], seeds=s, steps=1, batch=8, n_images=64))])
    p: list[tuple[str, dict[str, Any]]] = []
    for w in WIDTHS:
        p += [("engine_case", dict(width=w, seeds=64, epochs=2, precision=pr, moments=m))
              for pr, m in (("bf16", 10), ("bf16", None), ("fp32", 10))]
        p += [("loader_case", dict(width=w, steps=60, augment=True, workers=8)),
              ("loader_case", dict(width=w, steps=60, augment=False))]
    for w in WIDTHS:
        p += [("step_case", dict(width=w, seeds=64, mode=m, steps=30)) for m in ("bf16", "bf16_pool")]
    p += [("profile_case", dict(width=64, seeds=64))]
    p += [("engine_case", dict(width=w, seeds=64, epochs=2, precision="bf16", moments=None, compile=True))
          for w in WIDTHS]
    p += [("step_case", dict(width=w, seeds=64, mode=m, steps=30)) for w in WIDTHS
          for m in ("bf16_compile", "bf16_graph")]
    return p


def table(doc: dict[str, Any]) -> str:
    lines = ["checks: " + ", ".join(f"{c['check']}: {'ok' if c.get('ok') else 'FAIL'}" for c in doc.get("checks", []))]
    lines.append(f"{'case':<14}{'widths':<12}{'mode':<22}{'seeds':>6}{'images/s':>12}{'s/1000 run-ep':>14}{'GPU MB':>9}")
    for r in doc["cases"]:
        if r.get("case") == "moments":
            lines.append(f"moments {'x'.join(map(str, r['shape']))} {r['dtype']}: eager {r['eager_ms']:.2f} ms, "
                         f"fused {r['fused_ms']:.2f} ms ({r['eager_over_fused']:.1f}x; first call "
                         f"{r['fused_first_s']:.1f} s), max rel diff {max(r['max_rel_diff'].values()):.1e}")
            continue
        if r.get("case") == "profile" or "images_per_s" not in r:
            if "error" in r:
                lines.append(f"{r.get('fn', '?'):<14} {r.get('kwargs')} ERROR {r['error'][:80]}")
            continue
        mode = r.get("mode") or (f"{r['precision']} mom={r['moments_every']}" + (" compile" if r.get("compile") else "")
                                 + (f" {r['conv_impl']}" if r.get("conv_impl", "grouped") != "grouped" else "")
                                 + (" eager-mom" if r.get("fused_moments") is False and r["moments_every"] else "")
                                 if r["case"] == "engine" else f"workers={r.get('workers')}")
        s1000 = r.get("s_per_1000_run_epochs")
        lines.append(f"{r['case']:<14}{'/'.join(map(str, r['widths'])):<12}{mode:<22}{r['seeds']:>6}"
                     f"{r['images_per_s']:>12.0f}{(f'{s1000:.1f}' if s1000 else '-'):>14}"
                     f"{(r.get('peak_gpu_mb') or 0):>9.0f}")
    for name, v in doc.get("ratios", {}).items():
        lines.append(f"{name:<60}{v:>8.2f}x")
    return "\n".join(lines)


def ratios(cases: list[dict[str, Any]]) -> dict[str, float]:
    out = {}
    for w in WIDTHS + (4,):
        ws = [w, 2 * w, 4 * w]
        eng = {(r["precision"], r["moments_every"], r["compile"]): r["images_per_s"]
               for r in cases if r.get("case") == "engine" and r["widths"] == ws and r.get("fused_moments", True)}
        eager = {r["moments_every"]: r["images_per_s"] for r in cases if r.get("case") == "engine"
                 and r["widths"] == ws and r["precision"] == "bf16" and not r["compile"]
                 and r.get("fused_moments") is False}
        base = {r["case"]: r["images_per_s"] for r in cases if r.get("case", "").startswith("loader")
                and r["widths"] == ws}
        label = "/".join(map(str, ws))
        best = max(eng.values(), default=None)
        for name, b in base.items():
            if best:
                out[f"{label}: engine (best) / {name}"] = best / b
        if ("bf16", 10, False) in eng and ("bf16", None, False) in eng:
            out[f"{label}: engine bf16 moments every 10 / off"] = eng[("bf16", 10, False)] / eng[("bf16", None, False)]
            if 10 in eager:
                out[f"{label}: the same, eager moment reduction"] = eager[10] / eng[("bf16", None, False)]
        if ("bf16", 10, False) in eng and ("fp32", 10, False) in eng:
            out[f"{label}: engine bf16 / fp32"] = eng[("bf16", 10, False)] / eng[("fp32", 10, False)]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/bench_gpu.py", description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, to check the script")
    p.add_argument("--budget-s", type=float, default=420, help="start no case after this many seconds")
    p.add_argument("--data-root", default="data/cache", help="where mnist1d.npz is (the checks use it)")
    p.add_argument("--out", default="", help="JSON path (default benchmarks/gpu-<date>.json)")
    p.add_argument("--skip-checks", action="store_true")
    p.add_argument("--plan", default="full", choices=["full", "conv", "moments"], help="which cases (see plan())")
    a = p.parse_args(argv)
    from benchmarks.bench_cpu import write_record  # its paths relative to the working directory

    t_start = time.perf_counter()
    device = "cpu" if a.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device (use --dry-run to check the script on the CPU)")
    torch.set_num_threads(1 if a.dry_run else min(8, os.cpu_count() or 1))
    out = Path(a.out) if a.out else REPO / "benchmarks" / (
        f"gpu{'-dryrun' if a.dry_run else ''}-{_dt.datetime.now(_dt.UTC):%Y%m%d-%H%M}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"environment": _environment(device), "command": "python benchmarks/bench_gpu.py "
                           + " ".join(sys.argv[1:] if argv is None else argv), "checks": [], "cases": []}

    def save() -> None:
        doc["ratios"] = ratios(doc["cases"])
        doc["elapsed_s"] = time.perf_counter() - t_start
        write_record(out, doc)

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f} s] {msg}", file=sys.stderr, flush=True)

    if not a.skip_checks:
        try:
            doc["checks"] = checks(device, a.data_root, epochs=1 if a.dry_run else 2, small=a.dry_run)
        except Exception:
            doc["checks"] = [{"check": "checks", "ok": False, "error": traceback.format_exc()}]
        log("checks: " + ", ".join(f"{c['check']} {'ok' if c.get('ok') else 'FAIL'}" for c in doc["checks"]))
        save()
    fns = {"engine_case": engine_case, "loader_case": loader_case, "step_case": step_case,
           "profile_case": profile_case, "moments_case": moments_case}
    with tempfile.TemporaryDirectory() as tmp:
        root = str(Path(tmp) / "images")
        write_images(Path(root), 256 if a.dry_run else 25_600, 64 if a.dry_run else 2_000)
        for fn, kw in plan(a.dry_run, a.plan):
            if time.perf_counter() - t_start > a.budget_s:
                doc["cases"].append({"fn": fn, "kwargs": kw, "skipped": "time budget"})
                continue
            extra = {"root": root} if fn in ("engine_case", "loader_case") else {}
            try:
                r = fns[fn](device=device, **kw, **extra)
            except Exception as e:
                r = {"fn": fn, "kwargs": kw, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            doc["cases"].append(r)
            log(f"{fn} {kw}: " + (f"{r['images_per_s']:.0f} img/s" if "images_per_s" in r else
                                  f"eager {r['eager_ms']:.1f} ms, fused {r['fused_ms']:.1f} ms" if "eager_ms" in r
                                  else r.get("error", "done")))
            save()
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
    save()
    for r in doc["cases"]:
        if r.get("case") == "profile":
            print(r["table"])
    print(table(doc))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
