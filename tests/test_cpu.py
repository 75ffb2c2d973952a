"""The CPU instruction set is pinned in every process that trains, recorded in every run row, and the
closeness tests hold under every instruction set this machine has (bnstats/cpu.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bnstats import config, cpu, store
from bnstats.sweep import run_sweep
from bnstats.train import train
from tests.conftest import REPO, tiny_toml

STATE = "import json, bnstats, torch; from bnstats import cpu; torch.ones(2).sum(); print(json.dumps(cpu.state()))"


def _fresh(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in (*cpu.PIN, cpu.ENV_MODE, cpu.ENV_PINNED)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**clean, "PYTHONPATH": str(REPO), **env}, timeout=120)


def _has_avx2() -> bool:
    try:
        return " avx2" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _native_capability() -> str:
    """What torch picks in a process that never imported bnstats."""
    out = _fresh("import torch; torch.ones(2).sum(); print(torch.backends.cpu.get_cpu_capability())")
    return out.stdout.strip()


@pytest.mark.skipif(not _has_avx2(), reason="the pin is AVX2: this CPU has no AVX2")
def test_importing_bnstats_pins_the_kernels_of_a_fresh_process():
    proc = _fresh(STATE)
    assert proc.returncode == 0, proc.stderr
    state = json.loads(proc.stdout)
    assert state["cpu_isa"] == "avx2" and state["cpu_capability"] == "AVX2"
    assert state["onednn_max_isa"] == "AVX2" and state["mkl_branch"] in ("COMPATIBLE", "")


def test_native_lifts_the_pin_and_a_bad_mode_is_named():
    proc = _fresh(STATE, BNSTATS_CPU_ISA="native")
    state = json.loads(proc.stdout)
    assert state["cpu_isa"] == "native" and state["cpu_capability"] == _native_capability()
    assert state["onednn_max_isa"] == "native"
    bad = _fresh("import bnstats", BNSTATS_CPU_ISA="fastest")
    assert bad.returncode != 0 and "BNSTATS_CPU_ISA: expected one of 'avx2', 'native', got 'fastest'" in bad.stderr


def test_native_removes_only_what_the_pin_set():
    os.environ["ATEN_CPU_CAPABILITY"] = "default"  # set by hand after the pin: kept
    try:
        cpu.apply("native")
        assert os.environ["ATEN_CPU_CAPABILITY"] == "default" and "MKL_CBWR" not in os.environ
    finally:
        cpu.apply("avx2")
    assert all(os.environ[k] == v for k, v in cpu.PIN.items())
    # a variable set by hand before bnstats is imported, equal to the pin's value, stays with "native"
    proc = _fresh("import os, bnstats; print(os.environ.get('ATEN_CPU_CAPABILITY'), os.environ.get('MKL_CBWR'))",
                  BNSTATS_CPU_ISA="native", ATEN_CPU_CAPABILITY="avx2")
    assert proc.stdout.split() == ["avx2", "None"], proc.stderr
    with pytest.raises(ValueError, match="engine.cpu_isa: expected one of 'avx2', 'native'"):
        cpu.apply("avx512")


def test_every_run_row_records_what_decides_its_bits(tiny_config):
    run = config.load(tiny_config).runs()[0]
    row = train(run).run
    assert {k: row[k] for k in cpu.state()} == cpu.state()
    assert row["torch_version"]


def test_workers_of_the_local_pool_use_the_configured_kernels(tmp_path, data_root):
    native = _native_capability()
    for mode in ("native", "avx2"):
        p = tmp_path / f"{mode}.toml"
        p.write_text(tiny_toml(data_root, seeds=1) + f'\n[engine]\ncpu_isa = "{mode}"\n')
        cfg = replace(config.load(p), grid=(("arch", ("mlp",)), ("placement", ("before", "none"))))
        summary = run_sweep(cfg, tmp_path / mode, workers=2, device="cpu", progress=False, log=lambda m: None)
        assert summary.ok
        rows = store.load(tmp_path / mode).runs
        assert set(rows["cpu_isa"]) == {mode} and set(rows["torch_threads"]) == {1}
        expected = native if mode == "native" else ("AVX2" if _has_avx2() else native)
        assert set(rows["cpu_capability"]) == {expected}


# Instruction-set levels every x86-64 machine can run, set before torch starts in a subprocess.
LEVELS = {
    "default": {"BNSTATS_CPU_ISA": "native", "ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                "MKL_CBWR": "COMPATIBLE"},
    "avx2": {"BNSTATS_CPU_ISA": "avx2"},
    "native": {"BNSTATS_CPU_ISA": "native"},
}


@pytest.mark.parametrize("level", list(LEVELS))
def test_closeness_tests_hold_under_every_instruction_set(level, tmp_path):
    """The stacked-vs-separate tests, run by pytest in a process whose kernels are those of ``level``:
    a tolerance that only holds for one instruction set fails here on any machine."""
    if level == "avx2" and not _has_avx2():
        pytest.skip("no AVX2 on this CPU")
    env = {k: v for k, v in os.environ.items() if k not in (*cpu.PIN, cpu.ENV_MODE, cpu.ENV_PINNED)}
    env.update(LEVELS[level], PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "closeness",
                           "tests/test_engine.py", "--basetemp", str(tmp_path / "t")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "deselected" in proc.stdout
