"""Throughput of bnstats against what users run today: ``python -m bnstats.bench`` (``nox -s bench``).

Cases (each timed in a fresh subprocess, so its peak RSS is its own; repetitions interleaved and
medians taken, because the machines we share are noisy; every ratio comes from one invocation):

- ``loader``: a plain per-seed PyTorch loop as a typical user writes it: ``DataLoader(TensorDataset,
  shuffle=True, batch_size=128)``, the same model, init, optimizer, lr schedule and epochs,
  ``.item()`` for the metrics, evaluation every epoch; seeds one after another.
- ``stack``: :func:`bnstats.engine.train_stack`, all seeds of the arm in one stacked model, moments
  as configured (every 10 steps); ``stack_mom_off`` / ``stack_mom_1``: moments off / every step.
- ``single``: :func:`bnstats.train.train` per seed (moments every 10 steps); ``single_mom_off`` /
  ``single_mom_1``: moments off / every step (issue 3's cost of moments is measured on this loop).
- ``sweep_w1`` / ``sweep_w2``: wall time of :func:`bnstats.sweep.run_sweep` of a reduced default
  sweep with 1 and 2 local workers.
- on CUDA (``--gpu``): the 2-D CNN cases of issue 6 (widths 16/32/64 and 64/128/256, batch 512,
  32×32×3 synthetic inputs): seeds stacked (fp32 and bf16) vs a per-seed DataLoader loop.

``images/s`` counts training examples summed over seeds (seeds × epochs × training-set size) per
second of wall time, evaluation and moments included; ``s/1000 run-epochs`` is the wall time per
1000 epochs of one run.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
CASES = ("loader", "stack", "stack_mom_off", "stack_mom_1", "single", "single_mom_off", "single_mom_1")


# ---------------------------------------------------------------------------------------------------
# The runs a case trains


def arm_runs(arch: str, *, seeds: int, epochs: int, data_root: str, moments: str = "10") -> list:
    """The default sweep's cell (``arch``, placement ``before``, relu) for ``seeds`` seeds."""
    from . import config

    cfg = config.load(overrides=[f"train.epochs={epochs}", f"data.root=\"{data_root}\""], seeds=seeds)
    mc = cfg.moments
    if moments == "off":
        mc = replace(mc, enabled=False)
    else:
        mc = replace(mc, every=int(moments))
    cfg = replace(cfg, moments=mc)
    return [r for r in cfg.runs()
            if r.model.arch == arch and r.model.placement == "before" and r.model.activation == "relu"]


def loader_run(run, device: str = "cpu", num_workers: int = 0) -> float:
    """One seed as a typical user trains it; returns the final test accuracy."""
    from torch.utils.data import DataLoader, TensorDataset

    from . import data, models

    ds = data.load(run.dataset, run.data.root)
    tc = run.train
    model = models.build(run.model, ds.input_shape, ds.num_classes)
    models.init_parameters(model, run.seed)
    model.to(device)
    loader = DataLoader(TensorDataset(ds.x_train, ds.y_train), batch_size=tc.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(run.seed), num_workers=num_workers)
    test = DataLoader(TensorDataset(ds.x_test, ds.y_test), batch_size=tc.eval_batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=tc.epochs * len(loader))
    acc = 0.0
    for _ in range(tc.epochs):
        model.train()
        total, correct = 0.0, 0
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
            correct += (out.argmax(1) == yb).sum().item()
        model.eval()
        hits, test_loss = 0, 0.0
        with torch.no_grad():
            for xb, yb in test:
                xb, yb = xb.to(device), yb.to(device)
                out = model(xb)
                test_loss += F.cross_entropy(out, yb, reduction="sum").item()
                hits += (out.argmax(1) == yb).sum().item()
        acc = hits / len(ds.x_test)
    return acc


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """Time one case in this process (called in a fresh subprocess by :func:`main`)."""
    if "cpu" in case:  # --concurrent: this case has one processor to itself
        os.sched_setaffinity(0, {case["cpu"]})
    torch.set_num_threads(case.get("threads", 1))
    from . import data, engine, sweep, train

    kind = case["case"]
    if kind.startswith("sweep_"):
        from . import config

        cfg = config.load(overrides=[f"train.epochs={case['epochs']}", f"data.root=\"{case['data_root']}\""],
                          seeds=case["seeds"])
        data.load(cfg.dataset, case["data_root"])
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            sweep.run_sweep(cfg, Path(tmp) / "out", workers=int(kind[-1]), device="cpu", progress=False,
                            log=lambda msg: None)
            wall = time.perf_counter() - t0
        runs = cfg.runs()
        n = len(data.load(cfg.dataset, case["data_root"]).x_train)
        return {"wall_s": wall, "run_epochs": len(runs) * case["epochs"],
                "images": len(runs) * case["epochs"] * n, "maxrss_mb": _maxrss_mb()}
    moments = {"stack_mom_off": "off", "single_mom_off": "off", "stack_mom_1": "1", "single_mom_1": "1"}.get(kind, "10")
    runs = arm_runs(case["arch"], seeds=case["seeds"], epochs=case["epochs"], data_root=case["data_root"],
                    moments=moments)
    ds = data.load(runs[0].dataset, runs[0].data.root)
    # warm-up (not timed): one short run, so one-off costs (imports, allocator, oneDNN) are not counted
    warm = replace(runs[0], train=replace(runs[0].train, epochs=1))
    train.train(warm)
    t0 = time.perf_counter()
    if kind == "loader":
        accs = [loader_run(r) for r in runs]
    elif kind.startswith("stack"):
        accs = [o.run["test_acc"] for o in engine.train_stack(runs, device="cpu")]
    else:
        accs = [train.train(r).run["test_acc"] for r in runs]
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "run_epochs": len(runs) * case["epochs"],
            "images": len(runs) * case["epochs"] * len(ds.x_train), "maxrss_mb": _maxrss_mb(),
            "mean_test_acc": sum(accs) / len(accs)}


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _subprocess_cases(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run ``cases`` at the same time, each in its own subprocess (one case: the usual sequential run)."""
    procs = []
    for case in cases:
        env = {**os.environ, "OMP_NUM_THREADS": str(case.get("threads", 1)), "PYTHONPATH": str(REPO)}
        procs.append(subprocess.Popen([sys.executable, "-m", "bnstats.bench", "--_case", json.dumps(case)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    out = []
    for case, proc in zip(cases, procs, strict=True):
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"bench case {case} failed:\n{stderr[-3000:]}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


# ---------------------------------------------------------------------------------------------------
# GPU cases (issue 6): 2-D CNN, batch 512, 32x32x3 synthetic inputs


def cnn2d(widths: tuple[int, ...], num_classes: int = 10, placement: str = "before"):
    """A 2-D CNN of ``models.Block``s with per-stage widths (3×3 conv, norm, ReLU, 2×2 max-pool)."""
    from torch import nn

    from . import models

    blocks, cin = [], 3
    for i, w in enumerate(widths):
        blocks.append(models.Block(nn.Conv2d(cin, w, 3, padding=1, bias=placement != "before"),
                                   nn.BatchNorm2d(w), nn.ReLU(), placement, i, pool=nn.MaxPool2d(2)))
        cin = w
    return models.Net(nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten()),
                      nn.Linear(cin, num_classes))


def gpu_case(*, widths: tuple[int, ...], seeds: int, batch: int, steps: int, device: str,
             mode: str, n_images: int = 50_000, size: int = 32) -> dict[str, Any]:
    """Images/s of ``steps`` training steps: ``mode`` = ``loader`` (per seed) | ``stack`` | ``stack_bf16``."""
    from torch.utils.data import DataLoader, TensorDataset

    from . import engine, models

    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    x_cpu = torch.randint(0, 256, (n_images, 3, size, size), dtype=torch.uint8, generator=g)
    y_cpu = torch.randint(0, 10, (n_images,), generator=g)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if mode == "loader":
        t0 = time.perf_counter()
        for s in range(seeds):
            net = cnn2d(widths)
            models.init_parameters(net, s)
            net.to(dev)
            opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
            loader = DataLoader(TensorDataset(x_cpu, y_cpu), batch_size=batch, shuffle=True, drop_last=True,
                                generator=torch.Generator().manual_seed(s))
            it = iter(loader)
            for _ in range(steps):
                try:
                    xb, yb = next(it)
                except StopIteration:
                    it = iter(loader)
                    xb, yb = next(it)
                xb = xb.to(dev).float().div_(255)
                yb = yb.to(dev)
                loss = F.cross_entropy(net(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                loss.item()
        sync()
        wall = time.perf_counter() - t0
    else:
        nets = []
        for s in range(seeds):
            net = cnn2d(widths)
            models.init_parameters(net, s)
            nets.append(net)
        model = engine.stack_models(nets, conv_impl="grouped" if dev.type == "cuda" else "split").to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        x = x_cpu.to(dev).float().div_(255)
        y = y_cpu.to(dev)
        gens = [torch.Generator().manual_seed(s) for s in range(seeds)]
        autocast = (torch.autocast(dev.type, dtype=torch.bfloat16) if mode == "stack_bf16" and dev.type == "cuda"
                    else torch.autocast("cpu", enabled=False))
        warm = min(3, steps)
        for i in range(steps + warm):
            if i == warm:
                sync()
                t0 = time.perf_counter()
            idx = torch.stack([torch.randint(0, n_images, (batch,), generator=gg) for gg in gens], 1).to(dev)
            xb = x[idx]                                    # [B, S, 3, H, W]
            offs = torch.randint(0, 9, (2, batch * seeds), generator=gens[0]).to(dev)
            flips = (torch.rand(batch * seeds, generator=gens[0]) < 0.5).to(dev)
            xb = engine.augment_drawn(xb.flatten(0, 1), offs, flips, padding=4, flip=True).view(xb.shape)
            with autocast:
                out = model(xb.flatten(1, 2))
            loss = F.cross_entropy(out.float().flatten(0, 1), y[idx].flatten(), reduction="none")
            opt.zero_grad(set_to_none=True)
            loss.view(batch, seeds).mean(0).sum().backward()
            opt.step()
        sync()
        wall = time.perf_counter() - t0
    return {"widths": list(widths), "seeds": seeds, "batch": batch, "steps": steps, "mode": mode,
            "wall_s": wall, "images_per_s": seeds * steps * batch / wall,
            "peak_gpu_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None}


def gpu_checks(device: str, data_root: str, *, epochs: int = 2, small: bool = False) -> list[dict[str, Any]]:
    """Correctness on the device: stacked vs single runs (fp32), a bf16 stack that trains, divergence."""
    from . import config, engine, train

    text = config.default_config_text()
    import tomllib

    raw = tomllib.loads(text)
    raw.update(seeds=3, data={"root": data_root}, grid={"arch": ["mlp", "cnn"], "placement": ["before", "after"]})
    raw["train"]["epochs"] = epochs
    if small:  # the dry run: a narrow model and few steps
        raw["model"]["width"], raw["train"]["batch_size"], raw["moments"]["probe_size"] = 8, 500, 64
    cfg = config.from_dict(raw)
    out = []
    for group in engine.group_by_arm(cfg.runs()):
        t0 = time.perf_counter()
        st = engine.train_stack(group, device=device)
        single = [train.train(r, device=device) for r in group]
        diff = max(abs(a.run[k] - b.run[k]) for a, b in zip(st, single, strict=True)
                   for k in ("train_loss", "test_loss", "test_acc"))
        same_hash = all(a.run["init_hash"] == b.run["init_hash"] and a.run["order_hash"] == b.run["order_hash"]
                        for a, b in zip(st, single, strict=True))
        bf = engine.train_stack(group, device=device, precision="bf16")
        out.append({"check": f"{group[0].model.arch}/{group[0].model.placement}",
                    "max_metric_diff": diff, "hashes_equal": same_hash,
                    "bf16_test_acc": [o.run["test_acc"] for o in bf],
                    "ok": bool(diff < 1e-3 and same_hash  # bf16 learns (the dry run is too short to ask that)
                               and all(o.run["test_acc"] > (0.0 if small else 0.15) for o in bf)),
                    "wall_s": time.perf_counter() - t0})
    return out


# ---------------------------------------------------------------------------------------------------
# Driver


def _environment() -> dict[str, Any]:
    dev = "cpu"
    if torch.cuda.is_available():
        dev = torch.cuda.get_device_name(0)
    return {"date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%MZ"), "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "device": dev, "hostname": platform.node(), "load_avg_start": os.getloadavg()}


def _summary(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by.setdefault(r["label"], []).append(r)
    out = {}
    for label, rs in by.items():
        wall = statistics.median(r["wall_s"] for r in rs)
        out[label] = {"wall_s_median": wall, "wall_s_all": [r["wall_s"] for r in rs],
                      "wall_s_by_rep": {r["rep"]: r["wall_s"] for r in rs if "rep" in r},
                      "images_per_s": rs[0]["images"] / wall,
                      "s_per_1000_run_epochs": wall / rs[0]["run_epochs"] * 1000,
                      "maxrss_mb": max(r["maxrss_mb"] for r in rs), "reps": len(rs),
                      **({"mean_test_acc": rs[0]["mean_test_acc"]} if "mean_test_acc" in rs[0] else {})}
    return out


RATIOS = (  # (name, case, baseline case) per arch
    ("stack / loader", "stack", "loader"),
    ("single / loader", "single", "loader"),
    ("stack / single", "stack", "single"),
    ("stack moments every 10 / off", "stack", "stack_mom_off"),
    ("stack moments every step / off", "stack_mom_1", "stack_mom_off"),
    ("single moments every 10 / off", "single", "single_mom_off"),
    ("single moments every step / off", "single_mom_1", "single_mom_off"),
)


def ratios(summary: dict[str, dict[str, Any]], archs: list[str]) -> dict[str, float]:
    """Throughput ratios (>1: the first is faster) from one invocation: the median over repetitions of
    the ratio within each repetition (cases of a repetition run back to back, so a machine whose speed
    drifts moves both), or the ratio of medians where repetitions are not labelled."""
    def r(a: str, b: str) -> float:
        ra, rb = summary[a].get("wall_s_by_rep", {}), summary[b].get("wall_s_by_rep", {})
        common = sorted(set(ra) & set(rb))
        if common:
            return statistics.median(rb[k] / ra[k] for k in common)
        return summary[b]["wall_s_median"] / summary[a]["wall_s_median"]

    out: dict[str, float] = {}
    for arch in archs:
        for name, faster, slower in RATIOS:
            if f"{arch}/{faster}" in summary and f"{arch}/{slower}" in summary:
                out[f"{arch}: {name}"] = r(f"{arch}/{faster}", f"{arch}/{slower}")
    both = [a for a in archs if f"{a}/stack" in summary and f"{a}/loader" in summary]
    if len(both) > 1:  # the default sweep has as many mlp as cnn cells: the sweep's ratio is of the sums
        out["default sweep (sum over archs): stack / loader"] = (
            sum(summary[f"{a}/loader"]["wall_s_median"] for a in both)
            / sum(summary[f"{a}/stack"]["wall_s_median"] for a in both))
    if "sweep_w1" in summary and "sweep_w2" in summary:
        out["sweep: workers 2 / workers 1"] = r("sweep_w2", "sweep_w1")
    return out


def table(summary: dict[str, dict[str, Any]], rats: dict[str, float]) -> str:
    lines = [f"{'case':<24}{'images/s':>12}{'s/1000 run-epochs':>20}{'wall s (median)':>17}{'peak RSS MB':>13}"]
    for label, s in summary.items():
        lines.append(f"{label:<24}{s['images_per_s']:>12.0f}{s['s_per_1000_run_epochs']:>20.1f}"
                     f"{s['wall_s_median']:>17.2f}{s['maxrss_mb']:>13.0f}")
    lines.append("")
    lines += [f"{k:<50}{v:>8.2f}x" for k, v in rats.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bnstats.bench", description=__doc__.split("\n")[0])
    p.add_argument("--archs", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--seeds", type=int, default=10, help="seeds per arm (the stack size)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions; medians are reported")
    p.add_argument("--sweep-seeds", type=int, default=2, help="reduced default sweep for the workers case")
    p.add_argument("--sweep-epochs", type=int, default=2)
    p.add_argument("--no-sweep", action="store_true", help="skip the workers 1 vs 2 case")
    p.add_argument("--concurrent", action="store_true",
                   help="run the cases two at a time, one processor each (e.g. --cases single single_mom_off)")
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU cases (GPU checks and cases only)")
    p.add_argument("--gpu", action="store_true", help="also the 2-D CNN cases (CUDA; CPU with --dry-run)")
    p.add_argument("--gpu-seeds", type=int, nargs="+", default=[64])
    p.add_argument("--gpu-steps", type=int, default=50)
    p.add_argument("--dry-run", action="store_true", help="tiny sizes everywhere, to check the script")
    p.add_argument("--data-root", default="data/cache")
    p.add_argument("--out", default="", help="JSON path (default benchmarks/<device>-<date>.json)")
    p.add_argument("--_case", default="", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._case:
        print(json.dumps(run_case(json.loads(a._case))))
        return 0
    torch.set_num_threads(1)
    if a.dry_run:
        a.seeds, a.epochs, a.reps, a.sweep_seeds, a.sweep_epochs = 2, 1, 1, 1, 1
        a.gpu_seeds, a.gpu_steps = [2], 2
    env = _environment()
    cases: list[dict[str, Any]] = []
    for arch in [] if a.no_cpu else a.archs:
        for c in a.cases:
            cases.append({"case": c, "arch": arch, "seeds": a.seeds, "epochs": a.epochs,
                          "data_root": a.data_root, "label": f"{arch}/{c}"})
    if not a.no_sweep and not a.no_cpu:
        for w in (1, 2):
            cases.append({"case": f"sweep_w{w}", "seeds": a.sweep_seeds, "epochs": a.sweep_epochs,
                          "data_root": a.data_root, "label": f"sweep_w{w}"})
    results = []
    cpus = sorted(os.sched_getaffinity(0))
    if a.concurrent and len(cpus) < 2:
        p.error("--concurrent needs two processors")
    if a.concurrent and not (a.no_sweep or a.no_cpu):
        p.error("--concurrent: add --no-sweep (the workers case needs both processors)")
    for rep in range(a.reps):  # interleaved: A B C ... A B C ..., the order rotated every repetition
        k = rep % max(1, len(cases))
        order = cases if a.concurrent else cases[k:] + cases[:k]
        # --concurrent: consecutive cases in pairs at the same time, one processor each, swapped every
        # repetition, so the noise of a shared host hits both sides of a ratio alike.
        groups = [order[i:i + 2] for i in range(0, len(order), 2)] if a.concurrent else [[c] for c in order]
        for group in groups:
            cpu_of = [cpus[(j + rep) % 2] for j in range(len(group))] if a.concurrent else [None] * len(group)
            runs = [{kk: v for kk, v in c.items() if kk != "label"} | ({"cpu": cpu} if cpu is not None else {})
                    for c, cpu in zip(group, cpu_of, strict=True)]
            for case, res in zip(group, _subprocess_cases(runs), strict=True):
                results.append({**res, "label": case["label"], "rep": rep})
                print(f"  rep {rep} {case['label']:<22} {res['wall_s']:8.2f} s", file=sys.stderr, flush=True)
    summary = _summary(results)
    rats = ratios(summary, a.archs)
    doc: dict[str, Any] = {"environment": env, "args": {k: v for k, v in vars(a).items() if k != "_case"},
                           "summary": summary, "ratios": rats, "raw": results,
                           "command": "python -m bnstats.bench " + " ".join(argv if argv is not None
                                                                            else sys.argv[1:])}
    gpu_lines = []
    if a.gpu:
        dev = "cuda" if torch.cuda.is_available() and not a.dry_run else "cpu"
        if dev == "cpu" and not a.dry_run:
            print("--gpu: no CUDA device; the GPU cases need one (use --dry-run to check the script)",
                  file=sys.stderr)
        else:
            widths_list = [(4, 8, 8)] if a.dry_run else [(16, 32, 64), (64, 128, 256)]
            batch, size, n = (16, 8, 256) if a.dry_run else (512, 32, 50_000)
            doc["gpu_checks"] = gpu_checks(dev, a.data_root, epochs=1 if a.dry_run else 2, small=a.dry_run)
            gpu = []
            for widths in widths_list:
                for seeds in a.gpu_seeds:
                    for mode in ("loader", "stack", "stack_bf16"):
                        r = gpu_case(widths=widths, seeds=1 if mode == "loader" else seeds, batch=batch,
                                     steps=a.gpu_steps, device=dev, mode=mode, n_images=n, size=size)
                        gpu.append(r)
                        gpu_lines.append(f"{'/'.join(map(str, widths)):<12}{mode:<12}{r['seeds']:>6}"
                                         f"{r['images_per_s']:>14.0f}")
            doc["gpu"] = gpu
    out = Path(a.out) if a.out else REPO / "benchmarks" / (
        f"{'gpu' if a.gpu and not a.dry_run else 'cpu'}{'-dryrun' if a.dry_run else ''}-"
        f"{_dt.datetime.now(_dt.UTC):%Y%m%d-%H%M}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, default=str))
    print(table(summary, rats))
    if gpu_lines:
        print("\nGPU checks: " + ", ".join(f"{c['check']} {'ok' if c['ok'] else 'FAIL'}"
                                           for c in doc["gpu_checks"]))
        print(f"{'widths':<12}{'mode':<12}{'seeds':>6}{'images/s':>14}")
        print("\n".join(gpu_lines))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
