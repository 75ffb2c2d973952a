"""Per-arm tuning (issue 20): the [tune] section, the two stages in one store, the selection rule, resume,
bad input, status, compare's stage filter and the report's tuning section.

The choices are checked against an independent computation: a pandas groupby over the stored tuning runs
(mean validation accuracy per arm and candidate from the integer ``val_correct`` counts, argmax, ties by
the rule written out again here), not against ``bnstats.tune``'s own code.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import textwrap
import time
from fractions import Fraction

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_sweep import _log, _spawn_sweep

from bnstats import cli, config, stats, store, tune
from bnstats.sweep import InlineExecutor, run_sweep

LRS = [0.02, 0.1, 0.5]
TUNE_SEEDS = [100, 101]


def tuned_toml(data_root, *, name="tuned", seeds=2, epochs=1, extra="", tune_extra="",
               lrs=LRS, tune_seeds=TUNE_SEEDS, val_split=0.1) -> str:
    """MLP on MNIST-1D, 3 placements (the arms), lr tuned per arm."""
    return textwrap.dedent(f"""
        name = "{name}"
        dataset = "mnist1d"
        seeds = {seeds}
        [data]
        root = "{data_root}"
        val_split = {val_split}
        [model]
        arch = "mlp"
        width = 16
        [train]
        epochs = {epochs}
        batch_size = 256
        lr = 0.05
        [grid]
        placement = ["before", "after", "none"]
        [moments]
        every = 0
        probe_size = 64
        [tune]
        lr = {lrs}
        seeds = {tune_seeds}
        """) + tune_extra + extra


def _cli(*args):
    return cli.main([str(a) for a in args])


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, data_root):
    """A finished tuned sweep: 3 arms x (3 lr x 2 tuning seeds + 2 evaluation seeds) = 24 runs."""
    d = tmp_path_factory.mktemp("tuned")
    cfg_path = d / "tuned.toml"
    cfg_path.write_text(tuned_toml(data_root))
    out = d / "sw"
    summary = run_sweep(config.load(cfg_path), out, executor=InlineExecutor(), progress=False)
    assert summary.ok and summary.trained == 24
    return cfg_path, out


def _independent_choice(tr: pd.DataFrame, lrs=LRS, seeds=TUNE_SEEDS) -> float:
    """Argmax of the mean validation accuracy over the tuning seeds, from the integer counts; ties: the
    lower mean validation loss, then the first lr listed (the rule of bnstats.tune.choose, re-derived)."""
    keys = []
    for i, lr in enumerate(lrs):
        g = tr[tr["lr"] == lr]
        assert sorted(g["seed"]) == list(seeds) and not g["diverged"].any()
        acc = Fraction(int(g["val_correct"].sum()), int(g["n_val"].sum()))
        keys.append((-acc, g["val_loss"].mean(), i, lr))
    return min(keys)[3]


def test_each_arm_trains_the_lr_its_tuning_runs_choose(tuned):
    cfg_path, out = tuned
    runs = store.load(out).runs
    assert len(runs) == 24 and runs["run_id"].is_unique
    tr, ev = runs[runs["stage"] == "tune"], runs[runs["stage"] == "eval"]
    assert len(tr) == 18 and len(ev) == 6
    assert set(tr["seed"]) == set(TUNE_SEEDS) and set(ev["seed"]) == {0, 1}
    assert (tr["n_val"] == 399).all() and tr["val_acc"].between(0, 1).all()  # round(0.1 * n_k) per class
    for placement in ("before", "after", "none"):
        want = _independent_choice(tr[tr["placement"] == placement])
        used = ev.loc[ev["placement"] == placement, "lr"]
        assert len(used) == 2 and (used == want).all(), placement
        # how it was chosen, recorded in every evaluation row
        row = ev[ev["placement"] == placement].iloc[0]
        g = tr[(tr["placement"] == placement) & (tr["lr"] == want)]
        assert row["tune_score"] == pytest.approx(g["val_acc"].mean(), abs=1e-12)
        assert (row["tune_metric"], row["tune_rule"], row["tune_seeds"]) == ("val_acc", "best_mean", "100,101")
        assert row["tune_candidates"] == 3 and row["tune_keys"] == "lr"
    # the evaluation runs are the grid's runs with the chosen values: a plain sweep at that lr has their ids
    cfg = config.load(cfg_path)
    for r in ev.to_dict("records"):
        plain = [x for x in cfg.runs() if x.seed == r["seed"] and x.model.placement == r["placement"]][0]
        assert plain.with_values({"lr": r["lr"]}).run_id == r["run_id"]
    # tuning runs record no moments (they only choose); evaluation runs record them as [moments] says
    mom = store.load(out).moments
    assert set(mom["run_id"]) == set(ev["run_id"])



def test_the_selection_reads_no_test_metric(tuned, tmp_path):
    """Corrupting the tuning runs' test metrics on disk changes no choice; corrupting their validation
    metrics does (so the first check is not vacuous)."""
    cfg_path, out = tuned
    copy = tmp_path / "sw"
    shutil.copytree(out, copy)
    table = copy / "tables" / "runs.parquet"
    df = pq.read_table(table).to_pandas()
    is_tune = (df["stage"] == "tune").to_numpy()
    before = tune.choices_frame(store.load(copy).runs, config.load(cfg_path).tune, ["placement"])
    rng = np.random.default_rng(0)
    df.loc[is_tune, "test_acc"] = rng.permutation(df.loc[is_tune, "test_acc"].to_numpy())[::-1]
    df.loc[is_tune, "test_loss"] = -df.loc[is_tune, "test_loss"]
    df.loc[is_tune, "test_correct"] = 0
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), table)
    runs = store.load(copy).runs
    cfg = config.load(cfg_path)
    after = tune.choices_frame(runs, cfg.tune, ["placement"])
    pd.testing.assert_frame_equal(before, after)
    assert after["agrees"].all()
    staged = tune.plan(cfg, store.Store(copy))  # what a launch decides, from the store
    assert [c.as_dict()["lr"] for c in staged.choices] == after["chosen_lr"].tolist()
    assert run_sweep(cfg, copy, executor=InlineExecutor(), progress=False).trained == 0
    # the validation columns decide: make the lr no arm chose the best on validation, everywhere
    loser = [lr for lr in LRS if lr not in set(after["chosen_lr"])] or [LRS[0]]
    df.loc[is_tune & (df["lr"] == loser[0]), ["val_acc", "val_correct"]] = [1.0, 399]
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), table)
    moved = tune.choices_frame(store.load(copy).runs, cfg.tune, ["placement"])
    assert (moved["chosen_lr"] == loser[0]).all() and not moved["agrees"].any()


def _rows(acc_counts, losses, n_val=400, diverged=None, seeds=(1, 2)):
    div = diverged or [False] * len(acc_counts)
    return pd.DataFrame({"run_id": [f"r{i}" for i in range(len(acc_counts))], "seed": list(seeds)[:len(acc_counts)],
                         "diverged": div, "val_correct": acc_counts, "n_val": n_val,
                         "val_acc": [c / n_val for c in acc_counts], "val_loss": losses,
                         "test_acc": [float("nan")] * len(acc_counts)})


def test_rule_best_mean_ties_divergence_and_edges():
    cands = [{"lr": 0.01}, {"lr": 0.1}, {"lr": 1.0}]
    # means 0.5125, 0.5250, 0.5000: the middle lr by val_acc, not at the edge
    c = tune.choose([_rows([200, 210], [1.0, 1.0]), _rows([205, 215], [2.0, 2.0]), _rows([190, 210], [0.5, 0.5])],
                    cands, seeds=(1, 2))
    assert c.as_dict() == {"lr": 0.1} and c.decided_by == "val_acc" and c.edge == ()
    assert c.score == pytest.approx(0.525)
    # exact tie on counts (0.2 + 0.3 = 0.3 + 0.2 in floats would not be guaranteed): the lower val_loss wins
    c = tune.choose([_rows([80, 120], [1.0, 1.2]), _rows([120, 80], [0.9, 1.2]), _rows([10, 10], [0.1, 0.1])],
                    cands, seeds=(1, 2))
    assert c.as_dict() == {"lr": 0.1} and c.decided_by == "val_loss"
    # tied on both: the first candidate listed
    c = tune.choose([_rows([100, 100], [1.0, 1.0]), _rows([100, 100], [1.0, 1.0])], cands[:2], seeds=(1, 2))
    assert c.as_dict() == {"lr": 0.01} and c.decided_by == "order" and c.edge == ("lr",)
    # a candidate that diverged on a tuning seed ranks below one that did not, whatever its other seed did
    c = tune.choose([_rows([399, 0], [0.1, float("nan")], diverged=[False, True]), _rows([10, 10], [3.0, 3.0])],
                    cands[:2], seeds=(1, 2))
    assert c.as_dict() == {"lr": 0.1} and c.decided_by == "divergence"
    # val_loss: the lowest mean wins; ties go to the higher accuracy
    c = tune.choose([_rows([100, 100], [0.5, 0.7]), _rows([300, 300], [0.7, 0.5])], cands[:2], metric="val_loss",
                    seeds=(1, 2))
    assert c.as_dict() == {"lr": 0.1} and c.decided_by == "val_acc" and c.score == pytest.approx(0.6)
    with pytest.raises(tune.IncompleteTuning):
        tune.choose([_rows([1], [1.0]), _rows([1, 2], [1.0, 1.0])], cands[:2], seeds=(1, 2))


def test_a_killed_tuning_stage_resumes_and_stores_every_run_once(tmp_path, data_root):
    cfg_path = tmp_path / "t.toml"
    cfg_path.write_text(tuned_toml(data_root, lrs=[0.02, 0.1], epochs=2))
    out = tmp_path / "sw"
    proc = _spawn_sweep(cfg_path, out, 2)
    deadline = time.time() + 120
    while time.time() < deadline:
        units = out / "units"
        if units.is_dir() and len(list(units.iterdir())) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers, mid-tuning
    proc.wait()
    cfg = config.load(cfg_path)
    staged = tune.plan(cfg, store.Store(out))
    assert 2 <= staged.done < 12 and staged.total == 18  # 3 arms x (2 lr x 2 tuning seeds + 2 seeds)
    assert sum(len(t) for t in staged.tune_todo) > 0  # killed while tuning
    proc = _spawn_sweep(cfg_path, out, 2)
    assert proc.wait(timeout=300) == 0, _log(proc)
    res = store.load(out)
    assert len(res.runs) == 18 and res.runs["run_id"].is_unique
    assert not res.curves.duplicated(["run_id", "epoch"]).any() and len(res.curves) == 18 * 2
    done = tune.plan(cfg, store.Store(out))
    assert done.done == 18 and not done.todo and all(c is not None for c in done.choices)
    assert tune.choices_frame(res.runs, cfg.tune, ["placement"])["agrees"].all()
    assert set(res.runs["run_id"]) == {i for a in done.arms for i in a.tune_ids()} | {
        r.run_id for a, c in zip(done.arms, done.choices, strict=True) for r in a.resolved(c)}


class _Recording:
    """Runs tasks when submitted, in this process, records what each was, and says it runs
    ``max_workers`` at once (how the launcher spaces an arm's evaluation after its tuning)."""

    def __init__(self, max_workers=1):
        self._max_workers = max_workers
        self.seen = []

    def submit(self, fn, /, *args, **kwargs):
        task = args[0]
        self.seen.append((task.tune.get("stage"), bool(task.tune.get("defer")),
                          config.RunConfig.from_dict(task.runs[0]).model.placement))
        return InlineExecutor().submit(fn, *args, **kwargs)


def test_an_arms_evaluation_starts_when_its_own_tuning_is_complete(tmp_path, data_root):
    """Tasks are submitted arm by arm: arm 1's evaluation before arm 3's tuning, spaced by the tasks
    running at once (here 2: one task of lag)."""
    cfg_path = tmp_path / "t.toml"
    cfg_path.write_text(tuned_toml(data_root, lrs=[0.02, 0.1], seeds=1, tune_seeds=[100]))
    ex = _Recording(max_workers=2)
    s = run_sweep(config.load(cfg_path), tmp_path / "sw", executor=ex, progress=False)
    assert s.ok and s.trained == 9
    order = [(stage, placement) for stage, _, placement in ex.seen]
    # 2 tuning tasks per arm (2 lr x 1 seed); an arm's evaluation once one more task follows its tuning
    assert order == [("tune", "before")] * 2 + [("tune", "after")] * 2 + [("eval", "before"), ("eval", "after")] \
        + [("tune", "none")] * 2 + [("eval", "none")]
    assert all(defer for stage, defer, _ in ex.seen if stage == "eval")  # decided in the task, from the store


@pytest.mark.parametrize("stack", ["off", "on"])
def test_an_evaluation_task_that_runs_first_trains_its_arms_tuning_itself(tmp_path, data_root, stack):
    """A queue may start an evaluation task before its arm's tuning tasks (Slurm arrays run in any order):
    the task trains the tuning runs nobody trains, decides, and trains; the tuning tasks then skip.
    Stacked (the GPU default: a task per arm and candidate, its seeds as one model) or one run at a time."""
    cfg_path = tmp_path / "t.toml"
    cfg_path.write_text(tuned_toml(data_root, lrs=[0.02, 0.1], seeds=2, tune_seeds=[100, 101],
                                   extra=f'[engine]\nstack = "{stack}"\n'))

    class Lazy:
        """A future with only ``result()``: the first one asked runs every task submitted, last first."""

        def __init__(self, ex):
            self.ex, self.value = ex, None

        def result(self, timeout=None):
            self.ex.run_all()
            return self.value

    class Reversed:
        _max_workers = 1

        def __init__(self):
            self.pending = []

        def submit(self, fn, /, *args):
            fut = Lazy(self)
            self.pending.append((fn, args, fut))
            return fut

        def run_all(self):
            while self.pending:
                fn, args, fut = self.pending.pop()
                fut.value = fn(*args)

    s = run_sweep(config.load(cfg_path), tmp_path / "sw", executor=Reversed(), progress=False, device="cpu")
    runs = store.load(tmp_path / "sw").runs
    assert s.ok and len(runs) == 18 and runs["run_id"].is_unique
    assert s.trained == 18 and s.skipped == 12  # the 12 tuning runs trained by evaluation tasks, skipped later
    assert set(runs["engine"]) == ({"stack"} if stack == "on" else {"single"})
    tr = runs[runs["stage"] == "tune"]
    for p in ("before", "after", "none"):
        ev = runs[(runs["stage"] == "eval") & (runs["placement"] == p)]
        want = _independent_choice(tr[tr["placement"] == p], [0.02, 0.1], [100, 101])
        assert ev["lr"].tolist() == [want, want]


def test_a_failed_tuning_run_blocks_only_its_arm_and_the_next_launch_finishes(tmp_path, data_root, monkeypatch,
                                                                              capsys):
    import bnstats.train as train_mod

    cfg_path = tmp_path / "t.toml"
    cfg_path.write_text(tuned_toml(data_root, lrs=[0.02, 0.1], seeds=1, tune_seeds=[100]))
    cfg = config.load(cfg_path)
    victim = tune.arms(cfg)[1].tune_runs[1][0].run_id  # arm "after", lr 0.1
    real = train_mod.train_stack

    def flaky(runs, **kw):
        if any(r.run_id == victim for r in runs):
            raise RuntimeError("simulated failure")
        return real(runs, **kw)

    monkeypatch.setattr(train_mod, "train_stack", flaky)
    out = tmp_path / "sw"
    s = run_sweep(cfg, out, executor=InlineExecutor(), progress=False)
    err = capsys.readouterr().err
    assert not s.ok and [rid for rid, _ in s.failed] == [victim] and s.missing == 2  # the run and its arm's eval
    assert "evaluation waits" in err and "placement=after" in err
    runs = store.load(out).runs
    assert len(runs) == 7 and set(runs.loc[runs["stage"] == "eval", "placement"]) == {"before", "none"}
    counts, _ = __import__("bnstats.status", fromlist=["status_frame"]).status_frame(out)
    after = counts[(counts["stage"] == "eval") & (counts["placement"] == "after")].iloc[0]
    assert after["waiting"] == 1 and after["tuned"] == ""
    assert _cli("status", out) == 0
    text = capsys.readouterr().out
    assert "1 failed" in text and "1 waiting" in text and "stage" in text
    monkeypatch.setattr(train_mod, "train_stack", real)
    s = run_sweep(cfg, out, executor=InlineExecutor(), progress=False)
    assert s.ok and s.trained == 2 and len(store.load(out).runs) == 9


def test_adding_evaluation_seeds_trains_only_them_with_the_stored_choice(tuned, tmp_path):
    cfg_path, out = tuned
    copy = tmp_path / "sw"
    shutil.copytree(out, copy)
    s = run_sweep(config.load(cfg_path, seeds=3), copy, executor=InlineExecutor(), progress=False)
    assert s.ok and s.trained == 3 and s.already_done == 24
    runs = store.load(copy).runs
    ev = runs[runs["stage"] == "eval"]
    assert sorted(ev["seed"].unique()) == [0, 1, 2] and (ev.groupby("placement")["lr"].nunique() == 1).all()
    assert store.verify(copy).ok


def test_a_dry_run_counts_both_stages(tuned, tmp_path):
    from bnstats.sweep import dry_run

    cfg_path, out = tuned
    cfg = config.load(cfg_path)
    new = dry_run(cfg, tmp_path / "new", device="cpu")
    assert (new.state, new.n_runs, new.n_to_train) == ("new", 24, 24)  # 18 tuning + 6 evaluation runs
    done = dry_run(cfg, out, device="cpu")
    assert (done.state, done.n_stored, done.n_to_train) == ("done", 24, 0)


def test_status_shows_both_stages_with_the_chosen_values(tuned, capsys):
    from bnstats.status import status_dict

    _, out = tuned
    d = status_dict(out)
    assert d["total"] == {"done": 24, "running": 0, "failed": 0, "missing": 0, "waiting": 0}
    cells = pd.DataFrame(d["cells"])
    assert cells["stage"].tolist() == ["tune"] * 3 + ["eval"] * 3
    assert (cells.loc[cells["stage"] == "tune", "done"] == 6).all()
    runs = store.load(out).runs
    for r in cells[cells["stage"] == "eval"].to_dict("records"):
        lr = runs.loc[(runs["stage"] == "eval") & (runs["placement"] == r["placement"]), "lr"].iloc[0]
        assert r["tuned"] == f"lr={lr}" and r["done"] == 2


def test_compare_describe_certificate_use_the_evaluation_runs_only_and_say_so(tuned):
    from bnstats.report import pairing_certificate

    _, out = tuned
    runs = store.load(out).runs
    ev = runs[runs["stage"] == "eval"]
    got = stats.compare(runs, n_resamples=99)
    want = stats.compare(ev.drop(columns=["stage"]), n_resamples=99)
    assert (got["n_tuning_excluded"] == 12).all() and (want["n_tuning_excluded"] == 0).all()
    pd.testing.assert_frame_equal(got.drop(columns="n_tuning_excluded"), want.drop(columns="n_tuning_excluded"))
    assert (got["n"] == 2).all()
    # without a factor list, the stage columns and a tuned key are not inferred as factors (the arms of a
    # seed used different optimizers by design: as a factor it would split every pair)
    seeds = [0, 1, 2, 0, 1, 2, 100, 100]
    frame = pd.DataFrame({"run_id": [f"r{i}" for i in range(8)], "seed": seeds,
                          "placement": ["before"] * 3 + ["after"] * 3 + ["before", "after"],
                          "test_acc": [0.5, 0.6, 0.7, 0.55, 0.62, 0.74, 0.9, 0.1],
                          "stage": ["eval"] * 6 + ["tune"] * 2, "tune_keys": "optimizer",
                          "optimizer": ["sgd"] * 3 + ["adam"] * 3 + ["sgd", "sgd"], "tune_metric": "val_acc"})
    row = stats.compare(frame, n_resamples=99).iloc[0]
    assert row["n"] == 3 and row["n_tuning_excluded"] == 2 and row["estimate"] == pytest.approx(0.11 / 3)
    assert set(stats.describe(runs)["n"]) == {2}
    assert len(pairing_certificate(runs, "placement")) == 2
    assert stats.plan(runs, effect=0.01)["n_pilot"].tolist() == [2, 2]
    with pytest.raises(ValueError, match="all 18 rows are tuning runs"):
        stats.compare(runs[runs["stage"] == "tune"])


def test_compare_counts_the_tuning_runs_it_leaves_out_per_cell_on_arrow_backed_columns():
    """Stores load strings as Arrow-backed columns, whose comparisons convert to read-only arrays: the count
    of excluded tuning runs per cell (``by``) must not write into them (it crashed on the tuned reference)."""
    rows = []
    for act in ("relu", "tanh"):
        for seed in (0, 1, 2):
            for placement, shift in (("before", 0.0), ("after", 0.01 * (seed + 1))):
                rows.append({"run_id": f"{act}{seed}{placement}", "seed": seed, "act": act, "placement": placement,
                             "test_acc": 0.5 + shift + 0.1 * seed, "stage": "eval"})
        for placement in ("before", "after"):  # one tuning run per arm of the relu cell, three of the tanh cell
            for seed in ((100,) if act == "relu" else (100, 101, 102)):
                rows.append({"run_id": f"t{act}{seed}{placement}", "seed": seed, "act": act, "placement": placement,
                             "test_acc": 0.9, "stage": "tune"})
    frame = pd.DataFrame(rows).astype({c: "string[pyarrow]" for c in ("run_id", "act", "placement", "stage")})
    out = stats.compare(frame, by=["act"], n_resamples=99)
    assert out["act"].tolist() == ["relu", "tanh"] and out["n_tuning_excluded"].tolist() == [2, 6]
    assert out["n"].tolist() == [3, 3]


def test_the_report_tuning_section_methods_and_caveats(tuned, tmp_path):
    from bnstats.report import Report

    _, out = tuned
    rep = Report(out, tmp_path / "rep")
    assert len(rep.runs) == 6 and len(rep.tune_runs) == 18 and rep.tune.keys == ("lr",)
    shown = rep.tuning_block()
    assert len(shown) == 3  # the protocol, the chosen-values table, the figure
    tuned_csv = pd.read_csv(tmp_path / "rep" / "tables" / "tuned.csv")
    runs = store.load(out).runs
    for r in tuned_csv.to_dict("records"):
        assert r["chosen_lr"] == runs.loc[(runs["stage"] == "eval") & (runs["placement"] == r["placement"]), "lr"].iloc[0]
    assert tuned_csv["agrees"].all()
    cand = pd.read_csv(tmp_path / "rep" / "tables" / "tuning.csv")
    assert len(cand) == 9 and (cand.groupby("placement")["chosen"].sum() == 1).all()
    assert (tmp_path / "rep" / "figures" / "tuning.png").is_file()
    methods = rep.tuning_methods()[0].data
    for text in ("tuned per arm", "3 candidates", "2 tuning seeds (100–101)", "disjoint from the 2 evaluation seeds",
                 "a budget of 6 runs (6 epochs) per arm", "18 tuning runs in all", "399 examples",
                 "the test set took no part"):
        assert text in methods, text
    caveats = rep.tuning_caveats()
    chosen = set(tuned_csv["chosen_lr"])
    assert any("lr = 0.5, the largest candidate" in c for c in caveats) == (0.5 in chosen)
    assert any("lr = 0.02, the smallest candidate" in c for c in caveats) == (0.02 in chosen)
    summary = rep.tuning_summary()["tuning"]
    assert summary["runs_per_arm"] == 6 and [a["chosen"]["lr"] for a in summary["arms"]] == tuned_csv["chosen_lr"].tolist()
    json.dumps(summary, allow_nan=False)
    # the headline table: each arm's chosen values under its mean, the baseline's under the baseline's
    cmp = stats.compare(rep.runs, n_resamples=99)
    raw, shown, tex = rep.headline(cmp, stats.describe(rep.runs))
    lr = dict(zip(tuned_csv["placement"], tuned_csv["chosen_lr"], strict=True))
    assert raw["tuned_arm"].tolist() == [f"lr = {lr[a]:g}" for a in raw["arm"]]
    assert set(raw["tuned_baseline"]) == {f"lr = {lr['before']:g}"}
    assert all(v.endswith(f"\nlr = {lr[a]:g}") for v, a in zip(shown["arm (%)"], raw["arm"], strict=True))
    assert "chosen on the validation set" in rep.headline_table(raw, shown, tex, cmp).data
    # summary.json's design (the README's design line) says the lr was tuned, not the [train] value
    from bnstats.report.document import pairing_certificate as cert_of

    training = rep.design_summary(cert_of(rep.runs, "placement"))["training"]
    assert "lr tuned per arm from 0.02/0.1/0.5" in training and "lr 0.05" not in training


@pytest.mark.slow
def test_a_tuned_sweeps_report_renders(tuned, tmp_path):
    from bnstats.report import render

    _, out = tuned
    render(out, tmp_path / "rep", log=False)
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "Hyperparameters tuned per arm" in html and "Hyperparameters were tuned per arm" in html
    assert "lr tuned per arm from 0.02/0.1/0.5" in html
    assert "tuning" in json.loads((tmp_path / "rep" / "summary.json").read_text())


# --- bad input: exit 2, one line, nothing written ---------------------------------------------------------


@pytest.mark.parametrize(("change", "field"), [
    ({"tune_seeds": [1, 100]}, "tune.seeds: [1] are also evaluation seeds"),
    ({"tune_extra": "weight_decay = []\n"}, "tune.weight_decay: expected a non-empty list"),
    ({"tune_extra": "placement = ['before']\n"}, "tune.placement: defines the arms"),
    ({"tune_extra": "learning_rate = [0.1]\n"}, "tune.learning_rate: unknown key"),
    ({"tune_extra": "metric = 'test_acc'\n"}, "tune.metric: expected one of 'val_acc', 'val_loss'"),
    ({"lrs": [0.1, -0.1]}, "tune.lr: expected a number > 0.0"),
    ({"lrs": [0.1, 0.1]}, "tune.lr: expected distinct candidate values"),
    ({"val_split": 0.0}, "data.val_split: [tune] chooses each arm's lr on a validation set"),
    ({"val_split": 0.0001}, "data.val_split: 0.0001 of class 0's"),
])
def test_bad_tuning_input_exits_2_with_one_line_and_writes_nothing(change, field, tmp_path, data_root, capsys):
    cfg_path = tmp_path / "t.toml"
    cfg_path.write_text(tuned_toml(data_root, **change))
    out = tmp_path / "never"
    assert _cli("sweep", cfg_path, "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"error: {field}" in err, err
    assert not out.exists()


def test_a_tuned_key_that_is_also_a_grid_factor_is_refused(tmp_path, data_root, capsys):
    cfg_path = tmp_path / "t.toml"
    cfg_path.write_text(tuned_toml(data_root).replace('placement = ["before", "after", "none"]',
                                                      'placement = ["before", "none"]\nlr = [0.1, 0.2]'))
    assert _cli("sweep", cfg_path, "--out", tmp_path / "never") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error: tune.lr: also a grid factor ([grid] lr = [0.1, 0.2])" in err
    assert not (tmp_path / "never").exists()


def test_the_store_identity_covers_tune_and_untuned_sweeps_keep_theirs(tuned, tmp_path, data_root, capsys,
                                                                          tiny_config):
    cfg_path, out = tuned
    other = tmp_path / "other.toml"
    other.write_text(tuned_toml(data_root, lrs=[0.02, 0.1]))
    before = sorted(p.name for p in (out / "units").iterdir())
    assert _cli("sweep", other, "--out", out) == 2
    err = capsys.readouterr().err
    assert "belongs to a different config" in err and "tune" in err
    assert sorted(p.name for p in (out / "units").iterdir()) == before
    plain = config.load(tiny_config)
    assert "tune" not in plain.identity() and "tune" not in plain.to_dict()
    # sweep.json round-trips the [tune] section (status and the report rebuild the config from it)
    meta = store.Store(out).meta()
    assert store.stored_config(meta).tune == config.load(cfg_path).tune
    assert tune.tune_config_of(meta) == config.load(cfg_path).tune


# --- launchers: submitit's subprocesses (every task at once) and a real Slurm job array --------------------


def _two_arm_toml(data_root) -> str:
    return tuned_toml(data_root, lrs=[0.02, 0.1], seeds=1, tune_seeds=[100]).replace(
        'placement = ["before", "after", "none"]', 'placement = ["before", "none"]')


def _check_two_arm_store(out, cfg) -> None:
    runs = store.load(out).runs
    assert len(runs) == 6 and runs["run_id"].is_unique
    assert not store.load(out).curves.duplicated(["run_id", "epoch"]).any()
    tr = runs[runs["stage"] == "tune"]
    for p in ("before", "none"):
        ev = runs[(runs["stage"] == "eval") & (runs["placement"] == p)]
        assert ev["lr"].tolist() == [_independent_choice(tr[tr["placement"] == p], [0.02, 0.1], [100])]


@pytest.mark.slow  # 4 processes that each import torch: ~50 s on 2 shared cores
def test_submitit_runs_both_stages_with_every_task_started_at_once(tmp_path, data_root):
    """submitit's local executor starts every task as its own process at once: the evaluation tasks find
    their arm's tuning running (claimed) or not started, and wait for it or train it."""
    pytest.importorskip("submitit")
    cfg_path = tmp_path / "t.toml"
    cfg_path.write_text(_two_arm_toml(data_root))
    cfg = config.load(cfg_path, overrides=['launcher.kind="submitit"', 'launcher.cluster="local"',
                                           "launcher.runs_per_task=2", "launcher.time_min=5"])
    out = tmp_path / "sw"
    lines: list[str] = []
    s = run_sweep(cfg, out, progress=False, log=lines.append)
    assert s.ok and not s.errors and s.trained == 6, lines
    assert len(list((out / "submitit").glob("*_result.pkl"))) == 4  # per arm: one tuning and one evaluation task
    _check_two_arm_store(out, cfg)


@pytest.mark.slurm
@pytest.mark.timeout(170)
def test_a_tuned_sweep_runs_as_a_slurm_job_array(tmp_path, data_root):
    from test_slurm import ENABLE, _slurm_missing

    reason = _slurm_missing()
    if reason:
        pytest.skip(f"{reason}: {ENABLE}")
    import subprocess

    from bnstats import data

    data.load("mnist1d", data_root)  # the jobs find the cache and only read it
    cfg_path = tmp_path / "t.toml"
    cfg_path.write_text(_two_arm_toml(data_root).replace('name = "tuned"', 'name = "tuned-slurm"'))
    cfg = config.load(cfg_path, overrides=[
        'launcher.kind="submitit"', 'launcher.cluster="slurm"', "launcher.runs_per_task=2",
        "launcher.cpus_per_task=1", "launcher.mem_gb=1", "launcher.time_min=10", "launcher.array_parallelism=2"])
    out = tmp_path / "sw"
    lines: list[str] = []
    try:
        s = run_sweep(cfg, out, progress=False, log=lines.append)
    finally:  # leave no job behind if the test fails
        subprocess.run(["scancel", "--name", "bnstats-tuned-slurm"], capture_output=True, timeout=20)
    assert s.ok and s.trained == 6 and not s.errors, "\n".join(lines)
    assert any("submitit/slurm" in line for line in lines)
    _check_two_arm_store(out, cfg)


def test_the_tuned_reference_config_is_the_reference_study_with_lr_tuned_per_arm():
    from pathlib import Path

    REPO = Path(__file__).resolve().parents[1]
    tuned_cfg = config.load(REPO / "configs" / "reference-mnist1d-tuned.toml")
    fixed = config.load(REPO / "configs" / "reference-mnist1d.toml")
    assert tuned_cfg.grid == fixed.grid and tuned_cfg.seeds == fixed.seeds == tuple(range(30))
    assert dataclasses_equal_but(tuned_cfg.train, fixed.train, "lr") and tuned_cfg.model == fixed.model
    assert tuned_cfg.tune.candidates == (("lr", (0.0125, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8)),)
    assert tuned_cfg.tune.seeds == (1000, 1001, 1002) and tuned_cfg.data.val_split == 0.1
    arm_list = tune.arms(tuned_cfg)
    assert len(arm_list) == 18 and sum(len(a.tune_ids()) for a in arm_list) == 18 * 7 * 3
    assert sum(len(a.eval_runs) for a in arm_list) == 540


def dataclasses_equal_but(a, b, *keys) -> bool:
    import dataclasses

    return dataclasses.replace(a, **{k: getattr(b, k) for k in keys}) == b
