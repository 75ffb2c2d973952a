"""The benchmark's pieces work on CPU (the GPU script's dry run included); no timing is asserted."""

import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import bench_cpu as bench
from tests.conftest import REPO


def test_ratios_paired_by_repetition_and_table():
    summ = bench._summary([
        {"label": "mlp/loader", "wall_s": w, "images": 1000, "run_epochs": 10, "maxrss_mb": 300.0, "rep": i}
        for i, w in enumerate((6.0, 7.0, 5.0))] + [
        {"label": "mlp/stack", "wall_s": w, "images": 1000, "run_epochs": 10, "maxrss_mb": 310.0, "rep": i}
        for i, w in enumerate((2.0, 1.0, 4.0))])
    assert summ["mlp/loader"]["wall_s_median"] == 6.0 and summ["mlp/stack"]["wall_s_median"] == 2.0
    assert summ["mlp/stack"]["s_per_1000_run_epochs"] == 200.0
    rats = bench.ratios(summ, ["mlp"])
    assert rats == {"mlp: stack / loader": 3.0}  # per repetition 3, 7, 1.25: the median
    assert "mlp: stack / loader" in bench.table(summ, rats)
    for v in summ.values():  # without repetition labels: the ratio of the medians
        del v["wall_s_by_rep"]
    assert bench.ratios(summ, ["mlp"]) == {"mlp: stack / loader": 3.0}
    summ["mlp/stack"]["wall_s_median"] = 1.5
    assert bench.ratios(summ, ["mlp"]) == {"mlp: stack / loader": 4.0}


def test_cpu_time_ratios_beside_wall_time_ones():
    summ = bench._summary([
        {"label": f"cnn/{case}", "wall_s": w, "cpu_s": c, "images": 1000, "run_epochs": 10, "maxrss_mb": 1.0,
         "rep": i}
        for case, ws, cs in (("single", (10.0, 20.0), (9.0, 9.5)), ("single_mom_off", (9.0, 30.0), (8.55, 8.55)))
        for i, (w, c) in enumerate(zip(ws, cs, strict=True))])
    assert summ["cnn/single"]["cpu_s_median"] == 9.25
    rats = bench.ratios(summ, ["cnn"])
    assert rats["cnn: single moments every 10 / off"] == pytest.approx((0.9 + 1.5) / 2)  # wall: noisy
    assert rats["cnn: single moments every 10 / off (CPU time)"] == pytest.approx((0.95 + 0.9) / 2)


def test_ratio_interval_is_the_order_statistic_interval_of_the_median():
    # Per-repetition ratios 0.90, 0.91, ..., 0.99 (n = 10). The distribution-free 95% interval for a
    # median takes the order statistics x_(r) and x_(n+1-r) with r = qbinom(0.025, 10, 0.5) = 2 in R
    # (P(Bin(10, 1/2) <= 1) = 11/1024 = 0.011 per side, coverage 0.979; r = 3 would cover only 0.891):
    # [x_(2), x_(9)] = [0.91, 0.98].
    ratios_by_rep = [0.90 + 0.01 * i for i in range(10)]
    order = [3, 7, 0, 9, 1, 5, 8, 2, 6, 4]  # repetitions in any order
    rows = []
    for rep in order:
        rows.append({"label": "cnn/single_mom_off", "wall_s": 10.0, "images": 1, "run_epochs": 1, "maxrss_mb": 1.0,
                     "rep": rep})
        rows.append({"label": "cnn/single", "wall_s": 10.0 / ratios_by_rep[rep], "images": 1, "run_epochs": 1,
                     "maxrss_mb": 1.0, "rep": rep, "moments_s": 0.4})
    summ = bench._summary(rows)
    rats = bench.ratios(summ, ["cnn"])
    ivs = bench.ratio_intervals(summ, ["cnn"])
    name = "cnn: single moments every 10 / off"
    assert rats[name] == pytest.approx(0.945)
    assert ivs[name]["low"] == pytest.approx(0.91) and ivs[name]["high"] == pytest.approx(0.98)
    assert ivs[name]["low"] <= rats[name] <= ivs[name]["high"] and ivs[name]["n"] == 10
    # the share of the run spent in the moment code: only where moments ran
    assert summ["cnn/single"]["moments_share_median"] == pytest.approx(statistics.median(
        [0.4 * r / 10.0 for r in ratios_by_rep]))
    assert "moments_share_median" not in summ["cnn/single_mom_off"]
    assert "95% CI [0.910, 0.980], n = 10" in bench.table(summ, rats, ivs)
    # fewer than 6 repetitions: no order statistics cover the median with 95%, so no interval
    few = bench._summary([r for r in rows if r["rep"] < 5])
    assert bench.ratio_intervals(few, ["cnn"]) == {}
    # the probes-only case splits the cost: probes / off and every 10 / probes only
    probes = bench._summary(rows + [{**r, "label": "cnn/single_mom_0", "wall_s": 10.0 / 0.98}
                                    for r in rows if r["label"] == "cnn/single_mom_off"])
    split = bench.ratios(probes, ["cnn"])
    assert split["cnn: single probes only / off"] == pytest.approx(0.98)
    assert split["cnn: single moments every 10 / probes only"] == pytest.approx(0.945 / 0.98)


def test_rounds_alternate_the_cases_in_one_process(data_root, tmp_path):
    out = tmp_path / "r.json"
    args = ["--archs", "mlp", "--cases", "single", "single_mom_off", "--seeds", "1", "--epochs", "1",
            "--data-root", str(data_root), "--out", str(out)]
    assert bench.main([*args, "--rounds", "2", "--no-sweep"]) == 0
    doc = json.loads(out.read_text())
    raw = [(r["label"], r["rep"]) for r in doc["raw"]]
    # round 0: single then moments off; round 1 rotated: moments off first
    assert raw == [("mlp/single", 0), ("mlp/single_mom_off", 0), ("mlp/single_mom_off", 1), ("mlp/single", 1)]
    assert all(r["moments_s"] > 0 for r in doc["raw"] if r["label"] == "mlp/single")
    assert all(r["moments_s"] == 0 for r in doc["raw"] if r["label"] == "mlp/single_mom_off")
    assert 0 < doc["summary"]["mlp/single"]["moments_share_median"] < 1
    assert set(doc["ratios"]) == {"mlp: single moments every 10 / off", "mlp: single moments every 10 / off (CPU time)"}
    for bad in (["--rounds", "2"], ["--rounds", "2", "--no-sweep", "--concurrent"]):
        with pytest.raises(SystemExit):
            bench.main([*args, *bad])


def test_loader_baseline_learns(data_root):
    runs = bench.arm_runs("mlp", seeds=1, epochs=2, data_root=str(data_root))
    assert len(runs) == 1 and runs[0].train.batch_size == 128
    assert bench.loader_run(runs[0]) > 0.2


def test_gpu_check_script_dry_run(data_root, tmp_path):
    # every GPU case and check runs at tiny sizes on the CPU, through the script the GPU machine runs
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run"], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path), "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "checks: " in proc.stdout and "FAIL" not in proc.stdout and "ERROR" not in proc.stdout
    doc = json.loads(next(tmp_path.glob("gpu-dryrun-*.json")).read_text())
    assert doc["checks"] and all(c["ok"] for c in doc["checks"])
    kinds = {(c["case"], c.get("mode")) for c in doc["cases"]}
    assert {("engine", None), ("loader", None), ("loader_plain", None), ("step", "bf16_graph"),
            ("profile", None)} <= kinds
    assert all("error" not in c for c in doc["cases"])
    assert "4/8/16: engine (best) / loader" in doc["ratios"]


def test_gpu_moments_plan_dry_run(tmp_path, capsys):
    from benchmarks import bench_gpu
    from bnstats import moments

    out = tmp_path / "m.json"
    assert bench_gpu.main(["--dry-run", "--plan", "moments", "--skip-checks", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert all("error" not in c for c in doc["cases"])
    (mom,) = [c for c in doc["cases"] if c["case"] == "moments"]
    assert mom["shape"] == [2, 8, 4, 4, 4] and mom["frac_zero_equal"] and max(mom["max_rel_diff"].values()) < 1e-6
    assert [c["fused_moments"] for c in doc["cases"] if c["case"] == "engine"] == [True, True, False]
    assert moments.FUSED_CUDA is True  # each case restores the switch
    assert "eager-mom" in capsys.readouterr().out


def test_gpu_bench_ratios_and_images_in_the_cifar_format(tmp_path):
    from benchmarks import bench_gpu
    from bnstats import data

    cases = [{"case": "engine", "widths": [16, 32, 64], "precision": p, "moments_every": m, "compile": False,
              "images_per_s": v} for p, m, v in (("bf16", 10, 800.0), ("bf16", None, 1000.0), ("fp32", 10, 400.0))]
    cases += [{"case": "loader", "widths": [16, 32, 64], "images_per_s": 50.0}]
    rats = bench_gpu.ratios(cases)
    assert rats == {"16/32/64: engine (best) / loader": 20.0, "16/32/64: engine bf16 moments every 10 / off": 0.8,
                    "16/32/64: engine bf16 / fp32": 2.0}
    # the eager moment reduction (plan "moments") gets its own ratio and stays out of the others
    cases += [{**cases[0], "images_per_s": 600.0, "fused_moments": False}]
    assert bench_gpu.ratios(cases) == {**rats, "16/32/64: the same, eager moment reduction": 0.6}
    bench_gpu.write_images(tmp_path, 23, 7)
    ds = data.load("cifar10", tmp_path)  # bnstats' own reader checks the format
    assert ds.x_train.shape == (23, 3, 32, 32) and ds.x_test.shape == (7, 3, 32, 32)
    assert int(ds.y_train.max()) < 10


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two processors")
def test_concurrent_pairs_run_on_different_processors(data_root, tmp_path, monkeypatch):
    seen = []
    real = bench._subprocess_cases

    def spy(cases):
        seen.append([c.get("cpu") for c in cases])
        return real(cases)

    monkeypatch.setattr(bench, "_subprocess_cases", spy)
    out = tmp_path / "b.json"
    assert bench.main(["--archs", "mlp", "--cases", "single", "single_mom_off", "--concurrent", "--no-sweep",
                       "--seeds", "1", "--epochs", "1", "--reps", "2", "--data-root", str(data_root),
                       "--out", str(out)]) == 0
    cpus = sorted(os.sched_getaffinity(0))[:2]
    assert seen == [cpus, cpus[::-1]]  # a pair at a time, processors swapped every repetition
    doc = json.loads(out.read_text())
    assert set(doc["ratios"]) == {"mlp: single moments every 10 / off", "mlp: single moments every 10 / off (CPU time)"}
    with pytest.raises(SystemExit):
        bench.main(["--concurrent", "--dry-run", "--data-root", str(data_root), "--out", str(out)])


def test_reshape_max_pool_equals_max_pool2d_values_and_gradients_with_ties():
    import torch

    from benchmarks.bench_gpu import MaxPool2x2

    g = torch.Generator().manual_seed(0)
    x = torch.randint(-2, 3, (4, 3, 9, 8), generator=g).float().requires_grad_()  # many ties, odd height
    y = x.detach().clone().requires_grad_()
    w = torch.randn(4, 3, 4, 4, generator=g)
    a, b = torch.nn.MaxPool2d(2)(x), MaxPool2x2()(y)
    assert torch.equal(a, b)
    (a * w).sum().backward()
    (b * w).sum().backward()
    assert torch.equal(x.grad, y.grad)


def test_moment_clock_times_the_moment_functions_and_restores_them():
    from bnstats import moments

    before = moments.MomentAccumulator.__dict__["from_tensors"], moments.summarize_many
    with bench._MomentClock() as clock:
        acc = moments.MomentAccumulator.from_tensors([torch.randn(64, 3, generator=torch.Generator().manual_seed(0))])
        moments.summarize_many([acc])
    assert clock.seconds > 0
    assert (moments.MomentAccumulator.__dict__["from_tensors"], moments.summarize_many) == before


def test_records_name_no_absolute_path():
    # what a record holds: a traceback, the command line with absolute --out/--data-root, ratios' names
    doc = {"error": 'Traceback:\n  File "/work/repo/bnstats/engine.py", line 3, in f\nOSError: \'/tmp/x/y\'',
           "command": "python benchmarks/bench_cpu.py --out /tmp/pf/r.json --data-root=/work/repo/data/cache",
           "name": "16/32/64: s/1000 run-epochs, images/s", "raw": [{"/work/repo/a b": [1.5, None, "/"]}]}
    assert bench.portable(doc, cwd="/work/repo") == {
        "error": 'Traceback:\n  File "bnstats/engine.py", line 3, in f\nOSError: \'../../tmp/x/y\'',
        "command": "python benchmarks/bench_cpu.py --out ../../tmp/pf/r.json --data-root=data/cache",
        "name": "16/32/64: s/1000 run-epochs, images/s", "raw": [{"a b": [1.5, None, "/"]}]}


def _absolute_paths(text: str) -> list[str]:
    return re.findall(r"""(?:^|[\s"'=(\[,:])(/[\w.-]+/[\w./-]*)""", text)


def _head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()


needs_git = pytest.mark.skipif(not (REPO / ".git").exists(), reason="--ref needs a git checkout")


@needs_git
def test_ref_cases_run_beside_their_twins_with_the_ref_code(tmp_path, monkeypatch, capsys):
    # Six repetitions, no process started: each case answers with a made-up time, the ref side slower by
    # 1.10, 1.11, ..., 1.15 in repetitions 0..5. The ratio current / ref is their median, 1.125; its 95%
    # interval takes the order statistics x_(r), x_(n+1-r) with r = qbinom(0.025, 6, 0.5) = 1 in R
    # (P(Bin(6, 1/2) = 0) = 1/64 per side, coverage 0.969): [1.10, 1.15].
    head = _head()
    calls = []

    def fake(cases):
        (case,) = cases
        rep = len(calls) // 2  # two cases per repetition: the current one and its ref twin
        root = Path(case["code"])
        calls.append((case["case"], root, rep))
        assert (root / "bnstats" / "train.py").is_file()  # the checkout exists while the cases run
        wall = (1.0 + rep) * ((1.10 + 0.01 * rep) if root != REPO else 1.0)
        return [{"wall_s": wall, "cpu_s": wall / 2, "images": 4000, "run_epochs": 1, "maxrss_mb": 1.0}]

    monkeypatch.setattr(bench, "_subprocess_cases", fake)
    out = tmp_path / "ref.json"
    assert bench.main(["--archs", "mlp", "--cases", "single", "--no-sweep", "--reps", "6", "--ref", "HEAD",
                       "--data-root", str(tmp_path / "data"), "--out", str(out)]) == 0
    roots = [root for _, root, _ in calls]
    ref_root = next(r for r in roots if r != REPO)
    assert roots == [REPO, ref_root, ref_root, REPO] * 3  # twins side by side, the order rotated every repetition
    assert not ref_root.exists() and str(ref_root) not in subprocess.run(
        ["git", "worktree", "list"], cwd=REPO, capture_output=True, text=True).stdout  # removed afterwards
    text = out.read_text()
    doc = json.loads(text)
    assert doc["ref"] == {"rev": "HEAD", "commit": head, "env": {}} and doc["code"]["commit"] == head
    assert [(r["label"], r["rep"]) for r in doc["raw"]][:4] == [
        ("mlp/single", 0), ("ref:mlp/single", 0), ("ref:mlp/single", 1), ("mlp/single", 1)]
    assert doc["ratios"]["current / ref: mlp/single"] == pytest.approx(1.125)
    assert doc["ratios"]["current / ref: mlp/single (CPU time)"] == pytest.approx(1.125)
    ci = doc["ratio_intervals"]["current / ref: mlp/single"]
    assert (ci["low"], ci["high"], ci["n"]) == (pytest.approx(1.10), pytest.approx(1.15), 6)
    assert _absolute_paths(text) == [] and f" {tmp_path}" not in text and f"\"{tmp_path}" not in text
    with pytest.raises(SystemExit):
        bench.main(["--archs", "mlp", "--cases", "single", "--no-sweep", "--ref", "no-such-rev^^", "--out", str(out)])
    assert "--ref: 'no-such-rev^^' names no commit" in capsys.readouterr().err


@needs_git
def test_ref_equal_to_head_runs_both_codes_in_alternating_processes(data_root, tmp_path):
    # the real thing at the smallest size: one server process per code, each importing its own bnstats
    out = tmp_path / "ref.json"
    assert bench.main(["--archs", "mlp", "--cases", "single", "--seeds", "1", "--epochs", "1", "--no-sweep",
                       "--rounds", "1", "--ref", "HEAD", "--ref-env", "BNSTATS_CPU_ISA=native",
                       "--data-root", str(data_root), "--out", str(out)]) == 0
    text = out.read_text()
    doc = json.loads(text)
    assert [(r["label"], r["rep"]) for r in doc["raw"]] == [("mlp/single", 0), ("ref:mlp/single", 0)]
    assert all(r["moments_s"] > 0 for r in doc["raw"])  # the moment clock found its functions in both codes
    # each process records the kernels it ran with: bnstats' pin on the current side, the host's on the ref
    # side (--ref-env applies to the ref side's processes only)
    assert [r["cpu_numerics"]["cpu_isa"] for r in doc["raw"]] == ["avx2", "native"]
    assert doc["ref"]["env"] == {"BNSTATS_CPU_ISA": "native"}
    assert doc["ref"]["commit"] == _head()
    assert set(doc["ratios"]) == {"current / ref: mlp/single", "current / ref: mlp/single (CPU time)"}
    assert _absolute_paths(text) == []


def test_a_case_process_measures_the_code_it_was_given(tmp_path, monkeypatch):
    # use_code puts the checkout first on the path and fails when bnstats comes from anywhere else
    fake = tmp_path / "checkout"
    (fake / "bnstats").mkdir(parents=True)
    (fake / "bnstats" / "__init__.py").write_text("")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "bnstats")
    bench.use_code(str(fake))
    assert sys.modules["bnstats"].__file__ == str(fake / "bnstats" / "__init__.py")
    with pytest.raises(RuntimeError, match="imported before its code was chosen"):
        bench.use_code(str(REPO))
    del sys.modules["bnstats"]
    with pytest.raises(RuntimeError, match="not from the code to measure"):
        bench.use_code(str(tmp_path / "empty"))  # no bnstats there: the import finds the fake one


def test_moment_clock_finds_summarize_many_where_the_training_code_bound_it(monkeypatch):
    # a training loop that lives in another module (as in a --ref revision) is timed there too
    import types

    from bnstats import moments

    loop = types.ModuleType("bnstats.other_loop")
    loop.summarize_many = moments.summarize_many
    monkeypatch.setitem(sys.modules, "bnstats.other_loop", loop)
    acc = moments.MomentAccumulator.from_tensors([torch.randn(64, 3, generator=torch.Generator().manual_seed(0))])
    with bench._MomentClock() as clock:
        loop.summarize_many([acc])
    assert clock.seconds > 0 and loop.summarize_many is moments.summarize_many
