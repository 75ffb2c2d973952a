"""Throughput of bnstats against what users run today: ``python benchmarks/bench_cpu.py`` (``nox -s bench``).

Cases (each timed in a fresh subprocess, so its peak RSS is its own; repetitions interleaved and
medians taken, because the machines we share are noisy; every ratio comes from one invocation):

- ``loader``: a plain per-seed PyTorch loop as a typical user writes it: ``DataLoader(TensorDataset,
  shuffle=True, batch_size=128)``, the same model, init, optimizer, lr schedule and epochs,
  ``.item()`` for the metrics, evaluation every epoch; seeds one after another.
- ``stack``: :func:`bnstats.train.train_stack`, all seeds of the arm in one stacked model, moments
  as configured (every 10 steps); ``stack_mom_off`` / ``stack_mom_1``: moments off / every step.
- ``single``: :func:`bnstats.train.train` per seed (moments every 10 steps); ``single_mom_off`` /
  ``single_mom_1``: moments off / every step (issue 3's cost of moments is measured on this loop);
  ``single_mom_0`` (only when asked for): the epoch-end probes only (``[moments] every = 0``).
- ``sweep_w1`` / ``sweep_w2``: wall time of :func:`bnstats.sweep.run_sweep` of a reduced default
  sweep with 1 and 2 local workers.

The GPU cases (issue 6: 2-D CNNs on 32×32×3 images, many seeds per chip) are in
``benchmarks/bench_gpu.py`` (``bash benchmarks/gpu_check.sh``).

``--rounds N`` times each arch's cases alternately in one process instead, N rounds (the order rotated
every round): adjacent runs see the same speed of a shared host's core, so a small ratio (moments
every 10 steps / off) comes out of the noise; every ratio with 6 or more repetitions gets a 95%
confidence interval for its median (:func:`ratio_intervals`). Cases with moments also report the
share of their wall time spent in the moment arithmetic (``moments %``), timed inside the run.

``--ref GIT_REV`` runs every case with the code of another revision too (checked out into a temporary
git worktree; its cases are labelled ``ref:...``), each right beside its current-code twin in the
same repetitions (``--reps``: fresh processes; ``--rounds``: one process per arch and code, driven in
turn), and adds ``current / ref: CASE`` (>1: the current code is faster) with the same medians of
per-repetition ratios and intervals: before and after a change, measured in one invocation. Both
sides are timed by this driver; only ``bnstats`` is imported from the revision, so a revision must
keep the functions the cases call (``train.train``, ``engine.train_stack``, ``sweep.run_sweep``,
``config.load``, ``data.load``, ``models.build``, ``moments``).

The case processes import ``bnstats`` from the checkout they are given (:func:`use_code`), never
from an installed copy.

``images/s`` counts training examples summed over seeds (seeds × epochs × training-set size) per
second of wall time, evaluation and moments included; ``s/1000 run-epochs`` is the wall time per
1000 epochs of one run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__" and not __package__:
    # Run as a file (``python benchmarks/bench_cpu.py``): import bnstats and benchmarks from this checkout,
    # as ``python -m benchmarks.bench_cpu`` from its root would (before any installed copy); the script's
    # own folder leaves the path, so that no module is imported twice under two names.
    if sys.path and Path(sys.path[0] or ".").resolve() == REPO / "benchmarks":
        sys.path[0] = str(REPO)
    else:
        sys.path.insert(0, str(REPO))
CASES = ("loader", "stack", "stack_mom_off", "stack_mom_1", "single", "single_mom_off", "single_mom_1")
EXTRA_CASES = ("single_mom_0",)  # on request (--cases): moments at the epoch-end probes only
REF = "ref:"  # label prefix of the cases run with the code of --ref


# ---------------------------------------------------------------------------------------------------
# The runs a case trains


def arm_runs(arch: str, *, seeds: int, epochs: int, data_root: str, moments: str = "10") -> list:
    """The default sweep's cell (``arch``, placement ``before``, relu) for ``seeds`` seeds."""
    from bnstats import config

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

    from bnstats import data, models

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


MOMENTS_OF_CASE = {"stack_mom_off": "off", "single_mom_off": "off", "stack_mom_1": "1", "single_mom_1": "1",
                   "single_mom_0": "0"}


def use_code(root: str) -> None:
    """Import bnstats from the checkout at ``root`` in this fresh process (a case's code: this checkout,
    or the ``--ref`` revision's worktree) and check that it did: an installed copy or an earlier import
    would otherwise be measured in its place, silently."""
    if "bnstats" in sys.modules:
        raise RuntimeError(f"bench case: bnstats was imported before its code was chosen ({root})")
    sys.path.insert(0, root)
    import bnstats

    got = Path(bnstats.__file__).resolve().parents[1]
    if got != Path(root).resolve():
        raise RuntimeError(f"bench case: bnstats was imported from {got}, not from the code to measure, {root}")


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """Time one case in this process (called in a fresh subprocess by :func:`main`)."""
    if "cpu" in case:  # --concurrent: this case has one processor to itself
        os.sched_setaffinity(0, {case["cpu"]})
    torch.set_num_threads(case.get("threads", 1))
    from bnstats import data, sweep

    kind = case["case"]
    if kind.startswith("sweep_"):
        from bnstats import config

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
    runs_of = _warm_runs(case, [kind])
    with _MomentClock() as clock:
        return _time_case(kind, runs_of[kind], clock)


def _warm_runs(case: dict[str, Any], kinds: list[str]) -> dict[str, list]:
    """The runs of each of an arch's ``kinds``, after a warm-up run (not timed: one short run, so that
    one-off costs, imports, the allocator, oneDNN, are not counted)."""
    from bnstats import train

    runs_of = {k: arm_runs(case["arch"], seeds=case["seeds"], epochs=case["epochs"], data_root=case["data_root"],
                           moments=MOMENTS_OF_CASE.get(k, "10")) for k in kinds}
    first = runs_of[kinds[0]][0]
    train.train(replace(first, train=replace(first.train, epochs=1)))
    return runs_of


_REPLY = "bench-result: "  # marks a server's answer on its stdout (a library may print there too)


def serve(setup: dict[str, Any]) -> None:
    """``--rounds``: an arch's cases timed in this one process, one at a time as the parent asks (a line
    ``{"kind": ...}`` on stdin; the result as one :data:`_REPLY` line on stdout), until stdin closes.
    Says ``{"ready": true}`` once warmed up, so that the parent times nothing while another of its
    processes still starts."""
    torch.set_num_threads(setup.get("threads", 1))
    runs_of = _warm_runs(setup, setup["kinds"])
    print(_REPLY + json.dumps({"ready": True}), flush=True)
    with _MomentClock() as clock:
        for line in sys.stdin:
            kind = json.loads(line)["kind"]
            print(_REPLY + json.dumps(_time_case(kind, runs_of[kind], clock)), flush=True)


class _MomentClock:
    """Wall time spent in the moment arithmetic (reductions and summaries) within the ``with`` block:
    the share of a run the moments take, measured inside the run itself, which a host's drifting speed
    moves alike on both sides. The timed functions are restored on exit.

    ``summarize_many`` is timed wherever the training code bound it by name (``bnstats.moments`` today), so
    that the clock still works in code whose training loop lives elsewhere (``--ref``); a timed call
    inside another counts once."""

    def __init__(self) -> None:
        import bnstats.engine  # noqa: F401  (the modules the cases train with, so that their names are bound)
        import bnstats.train  # noqa: F401
        from bnstats import moments

        self.seconds = 0.0
        self._depth = 0
        bound = sorted(name for name, mod in sys.modules.items() if name.split(".")[0] == "bnstats"
                       and getattr(mod, "summarize_many", None) is moments.summarize_many)
        self._targets = ((moments.MomentAccumulator, "from_tensors"),
                         *((sys.modules[name], "summarize_many") for name in bound))
        self._saved: list = []

    def __enter__(self) -> _MomentClock:
        for owner, name in self._targets:
            self._saved.append((owner, name, owner.__dict__[name]))  # the classmethod itself, not its binding
            setattr(owner, name, self._timed(getattr(owner, name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()

    def _timed(self, fn):
        def timed(*args, **kwargs):
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self._depth -= 1
        return timed


def _time_case(kind: str, runs: list, clock: _MomentClock) -> dict[str, Any]:
    from bnstats import data, engine, train

    ds = data.load(runs[0].dataset, runs[0].data.root)
    t0, c0, m0 = time.perf_counter(), _cpu_s(), clock.seconds
    if kind == "loader":
        accs = [loader_run(r) for r in runs]
    elif kind.startswith("stack"):  # train.train_stack since the one loop; engine.train_stack before (--ref)
        stack = getattr(train, "train_stack", None) or engine.train_stack
        accs = [o.run["test_acc"] for o in stack(runs, device="cpu")]
    else:
        accs = [train.train(r).run["test_acc"] for r in runs]
    wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    return {"wall_s": wall, "cpu_s": cpu, "moments_s": clock.seconds - m0, "run_epochs": len(runs) * runs[0].train.epochs,
            "images": len(runs) * runs[0].train.epochs * len(ds.x_train), "maxrss_mb": _maxrss_mb(),
            "mean_test_acc": sum(accs) / len(accs), **_cpu_numerics()}


def _cpu_numerics() -> dict[str, Any]:
    """The kernels this process's CPU arithmetic ran with (``bnstats.cpu.state``: instruction set of
    ATen, oneDNN and MKL, threads), which set its speed too: bnstats pins them to AVX2 by default, so a
    ``--ref`` revision from before the pin (no ``bnstats.cpu``, recorded as nothing) ran the host's
    best kernels."""
    try:
        from bnstats import cpu
    except ImportError:
        return {}
    return {"cpu_numerics": cpu.state()}


def _cpu_s() -> float:
    """This process's CPU time (user + system): unlike wall time, not stretched while a shared host
    runs someone else on our core (steal), so single-threaded cases compare more steadily."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _child_env(case: dict[str, Any]) -> dict[str, str]:
    """A case process's environment: its torch threads, and its code first on PYTHONPATH (for what it
    starts itself, such as the sweep's workers; the process imports bnstats from there, :func:`use_code`)."""
    return {**os.environ, "OMP_NUM_THREADS": str(case.get("threads", 1)), "PYTHONPATH": case.get("code", str(REPO)),
            **case.get("env", {})}


def _subprocess_cases(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run ``cases`` at the same time, each in its own subprocess (one case: the usual sequential run)."""
    procs = []
    for case in cases:
        procs.append(subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--_case", json.dumps(case)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env(case)))
    out = []
    for case, proc in zip(cases, procs, strict=True):
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"bench case {case} failed:\n{stderr[-3000:]}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


class _Server:
    """A :func:`serve` process (one arch's cases, one code), driven case by case by :func:`_rounds`."""

    def __init__(self, setup: dict[str, Any]) -> None:
        self.setup = setup
        self._err = tempfile.TemporaryFile("w+")  # a file, not a pipe: a full pipe would stall the server
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--_serve", json.dumps(setup)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True,
                                     env=_child_env(setup))

    def reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(_REPLY):
                return json.loads(line[len(_REPLY):])
        self.proc.wait()
        self._err.seek(0)
        raise RuntimeError(f"bench server {self.setup} exited ({self.proc.returncode}):\n{self._err.read()[-3000:]}")

    def time(self, kind: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"kind": kind}) + "\n")
        self.proc.stdin.flush()
        return self.reply()

    def close(self) -> None:
        """End the process (stdin closed: it returns; or killed, when it is stuck or failed)."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()  # type: ignore[union-attr]
        self._err.close()


def _rounds(setup: dict[str, Any], codes: dict[str, str], rounds: int,
            envs: dict[str, dict[str, str]] | None = None) -> list[dict[str, Any]]:
    """``--rounds``: one :class:`_Server` per code (``{label prefix: checkout}``) for the arch of ``setup``;
    each round times every kind with every code, one after another, the order rotated every round so that
    no case always follows another. A kind's current and ``--ref`` runs sit side by side in the order,
    so that most rounds time them back to back."""
    slots = [(prefix, kind) for kind in setup["kinds"] for prefix in codes]
    with contextlib.ExitStack() as stack:
        servers = {}
        for prefix, code in codes.items():
            servers[prefix] = _Server({**setup, "code": code, "env": (envs or {}).get(prefix, {})})
            stack.callback(servers[prefix].close)
        for server in servers.values():  # all warmed up before anything is timed
            server.reply()
        out = []
        for r in range(rounds):
            k0 = r % len(slots)
            for prefix, kind in slots[k0:] + slots[:k0]:
                out.append({**servers[prefix].time(kind), "kind": kind, "round": r,
                            "label": f"{prefix}{setup['arch']}/{kind}", "rep": r})
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


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def _git_state() -> dict[str, Any] | None:
    """The commit of this checkout and whether tracked files differ from it (None outside git)."""
    try:
        return {"commit": _git("rev-parse", "HEAD"),
                "dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError):
        return None


@contextlib.contextmanager
def ref_checkout(rev: str) -> Iterator[tuple[Path, str]]:
    """The code of git revision ``rev`` of this repository, checked out (detached) into a temporary
    worktree, and the commit ``rev`` names; the worktree is removed on exit (``--ref``).

    Only bnstats is imported from there: the cases are timed by this driver either way, so both codes
    are measured by the same harness, on the same data (``--data-root`` is read from the working
    directory)."""
    try:
        commit = _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except (OSError, subprocess.CalledProcessError):
        raise ValueError(f"--ref: {rev!r} names no commit of the git repository at {REPO} "
                         f"(expected a branch, tag or commit, e.g. main or HEAD~1)") from None
    tmp = Path(tempfile.mkdtemp(prefix="bnstats-ref-"))
    root = tmp / "code"
    try:
        _git("worktree", "add", "--detach", "--quiet", str(root), commit)
        yield root, commit
    finally:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            _git("worktree", "remove", "--force", str(root))
        shutil.rmtree(tmp, ignore_errors=True)


# An absolute POSIX path where one starts in free text: at the start, after white space, a quote, "=",
# "(", "[", "," or ":" (`File "/x/y.py"`, `--out /scratch/r.json`, `No such file: '/x'`), so that "s/1000" or
# "16/32/64" are left alone.
_ABSOLUTE = re.compile(r"""(?:^|(?<=[\s"'=(\[,:]))/[\w.+@%~-]+(?:/[\w.+@%~-]*)*""")


def portable(obj: Any, cwd: str | None = None) -> Any:
    """``obj`` (JSON-like: dicts, lists, strings, numbers) with every absolute path in its strings
    rewritten relative to the working directory ``cwd`` (default: this process's), e.g. ``--out
    /scratch/b.json`` run in ``/home/ada/bnstats`` becomes ``--out ../../../scratch/b.json`` and a
    traceback's ``/home/ada/bnstats/bnstats/engine.py`` becomes ``bnstats/engine.py``: a benchmark record names no
    folder of the machine it ran on (checkouts, temporary folders, home folders differ between
    machines and say nothing about the numbers)."""
    cwd = cwd or os.getcwd()
    if isinstance(obj, str):
        return _ABSOLUTE.sub(lambda m: os.path.relpath(m.group(0), cwd), obj)
    if isinstance(obj, dict):
        return {portable(k, cwd): portable(v, cwd) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [portable(v, cwd) for v in obj]
    return obj


def write_record(path: Path, doc: dict[str, Any]) -> None:
    """``doc`` as indented JSON at ``path``, values JSON cannot hold as their ``str()``, paths made
    relative to the working directory (:func:`portable`)."""
    plain = json.loads(json.dumps(doc, default=str))
    path.write_text(json.dumps(portable(plain), indent=1))


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
                      **({"cpu_s_median": statistics.median(r["cpu_s"] for r in rs),
                          "cpu_s_by_rep": {r["rep"]: r["cpu_s"] for r in rs if "rep" in r}}
                         if all("cpu_s" in r for r in rs) else {}),
                      **({"moments_share_median": statistics.median(r["moments_s"] / r["wall_s"] for r in rs)}
                         if all(r.get("moments_s") for r in rs) else {}),
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
    ("single probes only / off", "single_mom_0", "single_mom_off"),
    ("single moments every 10 / probes only", "single", "single_mom_0"),
)


def _rep_ratios(summary: dict[str, dict[str, Any]], a: str, b: str, clock: str = "wall_s") -> list[float]:
    """Per-repetition ratios of ``b``'s time to ``a``'s (>1: ``a`` is faster), repetitions both have."""
    ra, rb = summary[a].get(f"{clock}_by_rep", {}), summary[b].get(f"{clock}_by_rep", {})
    return [rb[k] / ra[k] for k in sorted(set(ra) & set(rb))]


def _ratio_pairs(summary: dict[str, dict[str, Any]], archs: list[str]) -> Iterator[tuple[str, str, str, str]]:
    """(name, faster case, slower case, clock) of every ratio the summary can give: per arch, for the
    current code and (names prefixed ``ref:``) the ``--ref`` code; then ``current / ref: CASE`` for every
    case run with both codes (>1: the current code is faster)."""
    def pair(name: str, a: str, b: str) -> Iterator[tuple[str, str, str, str]]:
        yield name, a, b, "wall_s"
        if "cpu_s_median" in summary[a] and "cpu_s_median" in summary[b]:
            yield f"{name} (CPU time)", a, b, "cpu_s"

    for prefix in ("", REF):
        for arch in archs:
            for name, faster, slower in RATIOS:
                a, b = f"{prefix}{arch}/{faster}", f"{prefix}{arch}/{slower}"
                if a in summary and b in summary:
                    yield from pair(f"{prefix}{arch}: {name}", a, b)
        if f"{prefix}sweep_w1" in summary and f"{prefix}sweep_w2" in summary:
            yield f"{prefix}sweep: workers 2 / workers 1", f"{prefix}sweep_w2", f"{prefix}sweep_w1", "wall_s"
    for label in summary:
        if not label.startswith(REF) and REF + label in summary:
            yield from pair(f"current / ref: {label}", label, REF + label)


def ratios(summary: dict[str, dict[str, Any]], archs: list[str]) -> dict[str, float]:
    """Throughput ratios (>1: the first is faster) from one invocation: the median over repetitions of
    the ratio within each repetition (cases of a repetition run back to back, so a machine whose speed
    drifts moves both), or the ratio of medians where repetitions are not labelled. Single-process cases
    also get the ratio of their CPU times (``(CPU time)``), which a host's steal time does not stretch."""
    out: dict[str, float] = {}
    for name, a, b, clock in _ratio_pairs(summary, archs):
        per_rep = _rep_ratios(summary, a, b, clock)
        out[name] = (statistics.median(per_rep) if per_rep
                     else summary[b][f"{clock}_median"] / summary[a][f"{clock}_median"])
    both = [a for a in archs if f"{a}/stack" in summary and f"{a}/loader" in summary]
    if len(both) > 1:  # the default sweep has as many mlp as cnn cells: the sweep's ratio is of the sums
        out["default sweep (sum over archs): stack / loader"] = (
            sum(summary[f"{a}/loader"]["wall_s_median"] for a in both)
            / sum(summary[f"{a}/stack"]["wall_s_median"] for a in both))
    return out


def ratio_intervals(summary: dict[str, dict[str, Any]], archs: list[str], level: float = 0.95
                    ) -> dict[str, dict[str, float]]:
    """A distribution-free confidence interval for the median of each ratio's per-repetition values
    (the order-statistic interval of ``scipy.stats.quantile_test``): how far the noise of the host
    leaves the median ratio uncertain. Needs at least 6 repetitions (with 5 no pair of order
    statistics covers the median with 95%: their interval is infinite)."""
    from scipy import stats

    out = {}
    for name, a, b, clock in _ratio_pairs(summary, archs):
        per_rep = _rep_ratios(summary, a, b, clock)
        if len(per_rep) >= 6:
            ci = stats.quantile_test(per_rep, p=0.5).confidence_interval(level)
            out[name] = {"low": float(ci.low), "high": float(ci.high), "n": len(per_rep), "level": level}
    return out


def table(summary: dict[str, dict[str, Any]], rats: dict[str, float],
          intervals: dict[str, dict[str, float]] | None = None) -> str:
    shares = any("moments_share_median" in s for s in summary.values())
    lines = [f"{'case':<24}{'images/s':>12}{'s/1000 run-epochs':>20}{'wall s (median)':>17}{'CPU s':>8}"
             f"{'peak RSS MB':>13}" + (f"{'moments %':>11}" if shares else "")]
    for label, s in summary.items():
        cpu = f"{s['cpu_s_median']:.2f}" if "cpu_s_median" in s else "-"
        share = f"{100 * s['moments_share_median']:>11.1f}" if "moments_share_median" in s else (
            f"{'-':>11}" if shares else "")
        lines.append(f"{label:<24}{s['images_per_s']:>12.0f}{s['s_per_1000_run_epochs']:>20.1f}"
                     f"{s['wall_s_median']:>17.2f}{cpu:>8}{s['maxrss_mb']:>13.0f}{share}")
    lines.append("")
    for k, v in rats.items():
        ci = (intervals or {}).get(k)
        lines.append(f"{k:<60}{v:>8.3f}x" + (f"  {ci['level']:.0%} CI [{ci['low']:.3f}, {ci['high']:.3f}], "
                                              f"n = {ci['n']}" if ci else ""))
    return "\n".join(lines)


def _reps(cases: list[dict[str, Any]], reps: int, concurrent: bool) -> list[dict[str, Any]]:
    """``--reps``: every case in a fresh process, all cases once per repetition (A B C ... A B C ...), the
    order rotated every repetition. ``concurrent``: consecutive cases in pairs at the same time, one
    processor each, swapped every repetition, so the noise of a shared host hits both sides of a ratio
    alike."""
    cpus = sorted(os.sched_getaffinity(0))
    results = []
    for rep in range(reps):
        k = rep % max(1, len(cases))
        order = cases if concurrent else cases[k:] + cases[:k]
        groups = [order[i:i + 2] for i in range(0, len(order), 2)] if concurrent else [[c] for c in order]
        for group in groups:
            cpu_of = [cpus[(j + rep) % 2] for j in range(len(group))] if concurrent else [None] * len(group)
            runs = [{kk: v for kk, v in c.items() if kk != "label"} | ({"cpu": cpu} if cpu is not None else {})
                    for c, cpu in zip(group, cpu_of, strict=True)]
            for case, res in zip(group, _subprocess_cases(runs), strict=True):
                results.append({**res, "label": case["label"], "rep": rep})
                print(f"  rep {rep} {case['label']:<26} {res['wall_s']:8.2f} s", file=sys.stderr, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/bench_cpu.py", description=__doc__.split("\n")[0])
    p.add_argument("--archs", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES + EXTRA_CASES))
    p.add_argument("--seeds", type=int, default=10, help="seeds per arm (the stack size)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions; medians are reported")
    p.add_argument("--sweep-seeds", type=int, default=2, help="reduced default sweep for the workers case")
    p.add_argument("--sweep-epochs", type=int, default=2)
    p.add_argument("--no-sweep", action="store_true", help="skip the workers 1 vs 2 case")
    p.add_argument("--concurrent", action="store_true",
                   help="run the cases two at a time, one processor each (e.g. --cases single single_mom_off; "
                        "with --ref: each case beside its ref twin)")
    p.add_argument("--rounds", type=int, default=0,
                   help="instead of --reps fresh processes: time each arch's cases alternately in one process, "
                        "this many rounds (adjacent runs see the same host speed; for small ratios)")
    p.add_argument("--ref", default="", metavar="GIT_REV",
                   help="also run every case with the code of this git revision (a branch, tag or commit, "
                        "checked out into a temporary worktree), interleaved with the current code's cases in "
                        "the same repetitions or rounds; ratios current / ref")
    p.add_argument("--ref-env", action="append", default=[], metavar="KEY=VALUE",
                   help="an environment variable for the --ref side's processes only (repeatable), e.g. "
                        "--ref HEAD --ref-env BNSTATS_CPU_ISA=native: the pinned CPU kernels against the host's")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes everywhere, to check the script")
    p.add_argument("--data-root", default="data/cache")
    p.add_argument("--out", default="", help="JSON path (default benchmarks/<device>-<date>.json)")
    p.add_argument("--_case", default="", help=argparse.SUPPRESS)
    p.add_argument("--_serve", default="", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._case or a._serve:  # a case process (see _subprocess_cases, _Server)
        case = json.loads(a._case or a._serve)
        use_code(case.get("code", str(REPO)))
        if a._serve:
            serve(case)
        else:
            print(json.dumps(run_case(case)))
        return 0
    torch.set_num_threads(1)
    if a.dry_run:
        a.seeds, a.epochs, a.reps, a.sweep_seeds, a.sweep_epochs = 2, 1, 1, 1, 1
    if a.concurrent and len(os.sched_getaffinity(0)) < 2:
        p.error("--concurrent needs two processors")
    if a.concurrent and not a.no_sweep:
        p.error("--concurrent: add --no-sweep (the workers case needs both processors)")
    if a.rounds and (a.concurrent or not a.no_sweep):
        p.error("--rounds: add --no-sweep, and leave out --concurrent (each arch's cases share one process)")
    env = _environment()
    cases: list[dict[str, Any]] = []
    for arch in a.archs:
        for c in a.cases:
            cases.append({"case": c, "arch": arch, "seeds": a.seeds, "epochs": a.epochs,
                          "data_root": a.data_root, "label": f"{arch}/{c}"})
    if not a.no_sweep:
        for w in (1, 2):
            cases.append({"case": f"sweep_w{w}", "seeds": a.sweep_seeds, "epochs": a.sweep_epochs,
                          "data_root": a.data_root, "label": f"sweep_w{w}"})
    if a.ref_env and not a.ref:
        p.error("--ref-env: add --ref (the side it applies to)")
    if any("=" not in item for item in a.ref_env):
        p.error(f"--ref-env: expected KEY=VALUE, got {[i for i in a.ref_env if '=' not in i][0]!r}")
    envs = {"": {}, REF: dict(item.split("=", 1) for item in a.ref_env)}
    with contextlib.ExitStack() as stack:
        codes = {"": str(REPO)}  # label prefix -> the checkout a case imports bnstats from
        ref = None
        if a.ref:
            try:
                ref_root, commit = stack.enter_context(ref_checkout(a.ref))
            except ValueError as e:
                p.error(str(e))
            codes[REF] = str(ref_root)
            ref = {"rev": a.ref, "commit": commit, "env": envs[REF]}
            print(f"  --ref {a.ref}: commit {commit}", file=sys.stderr, flush=True)
        if a.rounds:
            results = []
            for arch in a.archs:
                setup = {"arch": arch, "kinds": a.cases, "seeds": a.seeds, "epochs": a.epochs,
                         "data_root": a.data_root}
                results += _rounds(setup, codes, a.rounds, envs)
                print(f"  {arch}: {a.rounds} rounds of {', '.join(a.cases)} done", file=sys.stderr, flush=True)
        else:  # each case with each code, a case's ref twin right after it
            results = _reps([{**c, "code": code, "env": envs[prefix], "label": prefix + c["label"]}
                             for c in cases for prefix, code in codes.items()], a.reps, a.concurrent)
    summary = _summary(results)
    rats = ratios(summary, a.archs)
    intervals = ratio_intervals(summary, a.archs)
    doc: dict[str, Any] = {"environment": env, "args": {k: v for k, v in vars(a).items() if not k.startswith("_")},
                           "code": _git_state(), "ref": ref,
                           "summary": summary, "ratios": rats, "ratio_intervals": intervals, "raw": results,
                           "command": "python benchmarks/bench_cpu.py " + " ".join(argv if argv is not None
                                                                                 else sys.argv[1:])}
    out = Path(a.out) if a.out else REPO / "benchmarks" / (
        f"cpu{'-dryrun' if a.dry_run else ''}-"
        f"{_dt.datetime.now(_dt.UTC):%Y%m%d-%H%M}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_record(out, doc)
    print(table(summary, rats, intervals))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
