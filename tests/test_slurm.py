"""End to end through a real Slurm: a sweep submitted by submitit as one job array.

Needs a Slurm whose node is idle: `.ci/run` starts a single-node one with `.ci/slurm-up` (root,
Debian's slurm-wlm and munge). The jobs run `sys.executable` (this venv's python, which has bnstats)
on this machine and read the MNIST-1D cache that this process generates first.
"""

import re
import shutil
import subprocess

import pytest

from bnstats import config, data, store
from bnstats.sweep import run_sweep

ENABLE = "run .ci/slurm-up (needs root, Debian's slurm-wlm and munge)"


def _slurm_missing() -> str | None:
    """Why Slurm cannot run a job here, or None."""
    if not (shutil.which("sinfo") and shutil.which("sbatch")):
        return "sinfo/sbatch not found"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo failed ({exc})"
    if out.returncode != 0:
        return f"sinfo failed ({out.stderr.strip() or out.returncode})"
    states = out.stdout.split()
    if not any(s.rstrip("*~#") in ("idle", "mix") for s in states):
        return f"no idle Slurm node (sinfo states: {', '.join(states) or 'none'})"
    return None


@pytest.mark.slurm
@pytest.mark.timeout(170)
def test_a_sweep_runs_as_a_slurm_job_array_and_stores_every_run_once(tiny_config, tmp_path, data_root):
    reason = _slurm_missing()
    if reason:
        pytest.skip(f"{reason}: {ENABLE}")
    data.load("mnist1d", data_root)  # the jobs find the cache and only read it
    cfg = config.load(tiny_config, overrides=[
        'launcher.kind="submitit"', 'launcher.cluster="slurm"', "launcher.runs_per_task=3",
        "launcher.cpus_per_task=1", "launcher.mem_gb=1", "launcher.time_min=10",
        "launcher.array_parallelism=2"])
    out = tmp_path / "sw"
    lines: list[str] = []
    try:
        s = run_sweep(cfg, out, progress=False, log=lines.append)
    finally:  # leave no job behind if the test fails
        subprocess.run(["scancel", "--name", "bnstats-tiny"], capture_output=True, timeout=20)
    assert s.ok and s.trained == 12 and not s.errors, "\n".join(lines)
    assert any("submitit/slurm" in line for line in lines) and any("submitted job" in line for line in lines)
    res = store.load(out)
    assert len(res.runs) == 12 and res.runs["run_id"].is_unique
    assert set(res.runs["run_id"]) == {r.run_id for r in cfg.runs()}
    assert not res.curves.duplicated(["run_id", "epoch"]).any()
    # one array of 4 tasks (12 runs, 3 per task): logs named <array job>_<index>_0_log.out
    logs = sorted(p.name for p in (out / "submitit").glob("*_log.out"))
    assert len(logs) == 4 and all(re.fullmatch(r"\d+_[0-3]_0_log\.out", n) for n in logs), logs
    assert len({n.split("_")[0] for n in logs}) == 1
