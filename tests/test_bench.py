"""The benchmark's pieces work on CPU (the GPU script's dry run included); no timing is asserted."""

import json
import os
import subprocess
import sys

import pytest

from bnstats import bench
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


def test_gpu_case_runs_on_cpu_at_tiny_sizes():
    for mode in ("loader", "stack"):
        r = bench.gpu_case(widths=(4, 8), seeds=2, batch=8, steps=2, device="cpu", mode=mode, n_images=64,
                           size=8)
        assert r["images_per_s"] > 0 and r["mode"] == mode


def test_loader_baseline_learns(data_root):
    runs = bench.arm_runs("mlp", seeds=1, epochs=2, data_root=str(data_root))
    assert len(runs) == 1 and runs[0].train.batch_size == 128
    assert bench.loader_run(runs[0]) > 0.2


def test_gpu_check_script_dry_run(data_root, tmp_path):
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run"], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path), "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "GPU checks:" in proc.stdout and "FAIL" not in proc.stdout
    out = next(tmp_path.glob("gpu-dryrun-*.json"))
    doc = json.loads(out.read_text())
    assert all(c["ok"] for c in doc["gpu_checks"]) and len(doc["gpu"]) == 3


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
    assert set(doc["ratios"]) == {"mlp: single moments every 10 / off"}
    with pytest.raises(SystemExit):
        bench.main(["--concurrent", "--dry-run", "--data-root", str(data_root), "--out", str(out)])
