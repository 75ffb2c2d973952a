"""What `bnstats sweep` tells its user: the progress display and its ETA, the result at the end, --dry-run.

The ETA is checked against simulated pools with a fake clock: runs of two archs with known costs (the
CNN 8x the MLP, as in the sweep whose first ETA was 8x off), each worker's first run slower (a cold
process), finishing in the order a FIFO pool of N workers produces; the truth is when the simulated pool
finishes.
"""

from __future__ import annotations

import heapq
import io
import json

import numpy as np
import pytest

from bnstats import cli, config, store, sweep
from bnstats.sweep import Eta, InlineExecutor, Progress, run_sweep

MLP_S, CNN_S = 0.5, 4.0       # seconds per run, warm (epochs = 1)
COLD_S = 7.0                  # the first run of a process pays this too (measured: 7 s for a 0.2 s MLP run)


def _runs(seeds: int, order: str):
    """The default grid cut to arch x placement, 1 epoch (cost = rate): seed-major as config.runs() gives
    them, or arch-major (all MLP runs first: the worst case for an ETA that averages)."""
    cfg = config.load(overrides=["grid.activation=['relu']", "train.epochs=1"], seeds=seeds)
    runs = cfg.runs()
    return sorted(runs, key=lambda r: r.model.arch != "mlp") if order == "arch-major" else runs


def _pool(tasks, slots, rng):
    """Simulate a FIFO pool: ``[(finish time, task index, seconds measured by the worker, cold)]`` in
    finish order. Each run costs its arch's time x a lognormal jitter (sd 20%); a worker's first task is cold."""
    free = [(0.0, w, True) for w in range(slots)]  # (free at, worker, its next task is its first)
    heapq.heapify(free)
    events = []
    for k, task in enumerate(tasks):
        t, w, first = heapq.heappop(free)
        work = sum((MLP_S if r.model.arch == "mlp" else CNN_S) * float(rng.lognormal(0, 0.2)) for r in task)
        seconds = work + (COLD_S if first else 0.0)
        events.append((t + seconds, k, seconds, first))
        heapq.heappush(free, (t + seconds, w, False))
    return sorted(events)


def _statuses(task, seconds, cold):
    return [{"run_id": r.run_id, "status": "trained", "seconds": seconds / len(task), "cold": cold} for r in task]


PRIOR = sweep.CostPrior({"mlp": 0.0653, "cnn": 0.2841}, "benchmarks")  # right order, 4.4x not 8x, 8x too fast

CASES = {
    # name: (order, slots, runs per task, prior)
    "seed-major, 2 workers, no prior": ("seed-major", 2, 1, None),
    "seed-major, 4 workers, benchmark prior": ("seed-major", 4, 1, PRIOR),
    "arch-major, 2 workers, benchmark prior": ("arch-major", 2, 1, PRIOR),
    "arch-major, 1 slot, 10 runs per task (a GPU's stacks)": ("arch-major", 1, 10, PRIOR),
    "seed-major, 3 workers, 4 runs per task": ("seed-major", 3, 4, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_eta_is_within_2x_of_the_truth_once_10_percent_of_runs_are_done(case):
    order, slots, per_task, prior = CASES[case]
    runs = _runs(20, order)  # 2 archs x 3 placements x 20 seeds = 120 runs
    tasks = [runs[i:i + per_task] for i in range(0, len(runs), per_task)]
    events = _pool(tasks, slots, np.random.default_rng(7))
    end = events[-1][0]
    eta = Eta(tasks, slots=slots, t0=0.0, prior=prior)
    done, checked, worst = 0, 0, 1.0
    for t, k, seconds, cold in events[:-1]:
        eta.task_done(k, t, _statuses(tasks[k], seconds, cold))
        done += len(tasks[k])
        truth = end - t
        # the criterion: from 10% of runs done, while more than one run's time is left (below that the
        # remaining time is one run's jitter, and any ratio measures noise)
        if done >= 0.1 * len(runs) and truth > CNN_S * per_task * 1.5:
            got = eta.eta(t)
            assert got is not None, (case, done)
            ratio = got / truth
            worst = max(worst, ratio, 1 / ratio)
            assert 0.5 <= ratio <= 2.0, (case, done, got, truth)
            checked += 1
    assert checked >= 3, case
    print(f"{case}: worst ETA / truth ratio {worst:.2f} over {checked} completions")


def test_the_old_elapsed_per_run_estimate_fails_the_same_check():
    """The check has teeth: elapsed / done x remaining (the replaced sweep.Progress) is more than 2x off
    in the arch-major pool from 10% done, and the new estimate is not."""
    runs = _runs(20, "arch-major")
    tasks = [[r] for r in runs]
    events = _pool(tasks, 2, np.random.default_rng(7))
    end = events[-1][0]
    eta = Eta(tasks, slots=2, t0=0.0, prior=PRIOR)
    worst_old = worst_new = 1.0
    for i, (t, k, seconds, cold) in enumerate(events[:-1]):
        eta.task_done(k, t, _statuses(tasks[k], seconds, cold))
        if i + 1 >= 0.1 * len(runs) and end - t > CNN_S * 1.5:
            old = t / (i + 1) * (len(runs) - i - 1)
            worst_old = max(worst_old, old / (end - t), (end - t) / old)
            new = eta.eta(t)
            worst_new = max(worst_new, new / (end - t), (end - t) / new)
    assert worst_old > 2.0 and worst_new <= 2.0, (worst_old, worst_new)


def test_eta_knows_nothing_before_the_first_run_without_a_prior_and_zero_at_the_end():
    runs = _runs(2, "seed-major")
    tasks = [[r] for r in runs]
    eta = Eta(tasks, slots=2, t0=0.0)
    assert eta.eta(1.0) is None
    for k, task in enumerate(tasks):
        eta.task_done(k, float(k + 1), _statuses(task, 1.0, k < 2))
    assert eta.eta(99.0) == 0.0
    # with a prior: an estimate from the start, as a FIFO pool of 2 would finish the 12 runs
    est = Eta(tasks, slots=2, t0=0.0, prior=PRIOR).eta(0.0)
    free = [0.0, 0.0]
    for r in runs:  # each run to the slot that frees first
        free.sort()
        free[0] += PRIOR.per_epoch[r.model.arch]
    assert est == pytest.approx(max(free), rel=1e-12) and est == pytest.approx(1.1788, abs=1e-4)


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_plain_lines_when_not_a_terminal_at_most_one_per_interval_and_the_last():
    runs = _runs(4, "seed-major")
    tasks = [[r] for r in runs]
    clock, lines = _Clock(), []
    bar = Progress(tasks, slots=2, enabled=None, log=lines.append, clock=clock, stream=io.StringIO(),
                   interval_s=10.0)
    for t, k, seconds, cold in _pool(tasks, 2, np.random.default_rng(1)):
        clock.t = 100.0 + t
        bar.task_done(k, _statuses(tasks[k], seconds, cold))
    bar.close()
    assert lines and all("\r" not in line for line in lines)
    assert lines[-1].startswith(f"{len(runs)}/{len(runs)} runs done, 0 running, 0 failed; elapsed ")
    assert len(lines) <= (clock.t - 100.0) // 10 + 2  # rate-limited, and the last line always
    # the first completion is a cold MLP run and there is no prior: no basis for the CNN's cost yet
    assert lines[0].startswith("1/24 runs done, 2 running, 0 failed; elapsed ") and lines[0].endswith("ETA ?")
    assert all(" (per run: cnn " in line and ", mlp " in line and "; 2 at once)" in line for line in lines[1:])


def test_a_terminal_gets_a_tqdm_bar_and_lost_tasks_count_as_failed():
    runs = _runs(1, "seed-major")
    tasks = [[r] for r in runs]
    clock, stream = _Clock(), io.StringIO()
    bar = Progress(tasks, slots=1, enabled=True, log=lambda m: pytest.fail("a terminal gets no log lines"),
                   clock=clock, stream=stream)
    clock.t += 3
    bar.task_done(0, _statuses(tasks[0], 3.0, True))
    bar.task_lost(1)
    assert bar.counts() == f"1/{len(runs)} runs done, 1 running, 1 failed"  # task 2 started when 1 was lost
    bar.close()
    text = stream.getvalue()
    assert "\r" in text and "runs" in text and "1 failed" in text and "elapsed 0:03" in text


def _tiny(tmp_path, data_root, **kw):
    from tests.conftest import tiny_toml

    p = tmp_path / "tiny.toml"
    p.write_text(tiny_toml(data_root, **kw))
    return p


@pytest.fixture(scope="session")
def finished_sweep(tmp_path_factory, data_root):
    """The session's tiny report sweep (tests/test_report.py), trained once; its config beside it."""
    from test_report import report_sweep_dir

    out = report_sweep_dir(tmp_path_factory, data_root)
    return out.parent / "tiny.toml", out


def test_sweep_ends_with_the_headline_compare_prints_and_where_the_report_goes(finished_sweep, capsys):
    cfg, out = finished_sweep
    assert cli.main(["sweep", str(cfg), "--out", str(out)]) == 0  # all stored: trains nothing, still the result
    stdout = capsys.readouterr().out
    assert cli.main(["compare", str(out)]) == 0
    table = capsys.readouterr().out.strip()
    assert table in stdout  # the same function, the same table (header, 4 comparisons, footnote, caveats)
    assert sum(line.startswith(("cnn ", "mlp ")) for line in table.splitlines()) == 4
    assert f"Headline (bnstats compare {out})" in stdout
    assert f"Report: bnstats report {out}   (writes {out / 'report'}/" in stdout
    assert stdout.strip().splitlines()[-1] == str(out)  # the last line is still the output folder


def test_the_end_of_a_sweep_without_placement_names_the_factor_it_compared(tmp_path, data_root, capsys):
    cfg = _tiny(tmp_path, data_root, seeds=2, extra="")
    text = cfg.read_text().replace('placement = ["before", "after", "none"]\n', "")
    cfg.write_text(text.replace('arch = ["mlp", "cnn"]', 'lr = [0.05, 0.1]\n'))
    c = config.load(cfg)
    assert cli.headline_factor(c) == ("lr", "0.05")
    from types import SimpleNamespace

    summary = SimpleNamespace(ok=False, missing=4, running_elsewhere=0)
    cli._sweep_result(c, tmp_path / "nowhere", summary)
    assert "No headline yet: 4 runs are not stored" in capsys.readouterr().out


def test_dry_run_writes_nothing_and_says_what_would_train_where_and_how_long(tmp_path, data_root, capsys):
    cfg = _tiny(tmp_path, data_root, seeds=2)
    out = tmp_path / "sw"
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli.main(["sweep", str(cfg), "--out", str(out), "--dry-run", "--workers", "2"]) == 0
    text = capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not out.exists()
    assert f"output folder: {out} (new)" in text
    assert "cells: 6 (arch × placement) × 2 seeds (0, 1) = 12 runs" in text
    assert "runs to train: 12 of 12 (0 stored)" in text and "2 local worker processes" in text
    assert "estimated time: " in text and "from the benchmarks" in text
    # after one seed is stored: the store's own wall times, and only the rest to train
    run_sweep(config.load(cfg, seeds=1), out, executor=InlineExecutor(), progress=False, log=lambda m: None)
    d = sweep.dry_run(config.load(cfg), out, workers=2, device="cpu")
    assert (d.state, d.n_stored, d.n_to_train) == ("resumes", 6, 6)
    assert d.cost_source.startswith("this store's own wall times (6 runs")
    runs = store.load(out).runs
    want = {a: float((g["wall_time_s"] / g["epochs_completed"]).median()) for a, g in runs.groupby("arch")}
    assert d.per_run_s == pytest.approx(want)  # 1 epoch per run here
    assert d.estimate_s == pytest.approx(Eta([[r] for r in config.load(cfg).runs()[6:]], slots=2, t0=0.0,
                                             prior=sweep.CostPrior(want, "")).eta(0.0))
    assert all(c["stored"] == 1 and c["to_train"] == 1 for c in d.cells)
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["config"]["seeds"] == [0]  # the dry run did not record the new seed


def test_dry_run_warns_about_a_folder_of_another_config_and_an_unmeasured_arch(tmp_path, data_root):
    cfg = _tiny(tmp_path, data_root, seeds=1)
    out = tmp_path / "sw"
    run_sweep(config.load(cfg), out, executor=InlineExecutor(), progress=False, log=lambda m: None)
    d = sweep.dry_run(config.load(cfg, overrides=["train.lr=0.2"]), out, device="cpu")
    assert d.state == "other config" and "train.lr: stored 0.05, config has 0.2" in d.warnings[0]
    assert d.text().splitlines()[1].startswith(f"WARNING: {out} belongs to another config")
    assert d.n_to_train == 6 and d.cost_source.startswith("the benchmarks")
    vgg = sweep.dry_run(config.load(cfg, overrides=["grid.arch=['vgg']", 'dataset="cifar10"']), tmp_path / "v",
                        device="cpu")
    assert vgg.estimate_s is None and "no measured cost for vgg on cifar10" in vgg.text()
    stacked = sweep.dry_run(config.load(cfg, overrides=["engine.stack='on'"]), tmp_path / "s", device="cpu")
    assert "seeds of an arm stacked (fp32), 6 tasks" in stacked.text()  # one task per arm


def test_messages_while_the_bar_is_shown_go_above_it_or_into_the_log():
    tasks = [[r] for r in _runs(1, "seed-major")]
    stream, lines = io.StringIO(), []
    bar = Progress(tasks, slots=1, enabled=True, log=lines.append, clock=_Clock(), stream=stream)
    bar.note("run abc failed: RuntimeError: boom")
    bar.close()
    assert "run abc failed: RuntimeError: boom\n" in stream.getvalue() and lines == []
    plain = Progress(tasks, slots=1, enabled=False, log=lines.append, clock=_Clock(), stream=stream)
    plain.note("run abc failed")
    assert lines == ["run abc failed"]
