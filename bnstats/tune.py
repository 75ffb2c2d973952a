"""Per-arm tuning: each arm's hyperparameters chosen on the validation set before the seeds that count.

A sweep with a ``[tune]`` section (``config.TuneConfig``) trains in two stages, in one store:

- **tune**: for every arm (a cell × every grid factor, placement included), every candidate of the
  tuned keys (the product of their lists) on every tuning seed. Rows: ``stage = "tune"``, ``tune_keys``
  (the tuned keys, comma-separated) and one column per tuned key (its value in that run).
- **eval**: the arm's evaluation seeds with the values :func:`choose` picks from the arm's tuning runs.
  Rows: ``stage = "eval"``, the tuned keys' values, and how they were chosen: ``tune_metric``,
  ``tune_rule``, ``tune_score`` (the chosen candidate's mean validation metric), ``tune_decided_by``
  (what separated it from the runner-up), ``tune_candidates``, ``tune_seeds``.

The selection reads only the validation columns of the tuning runs (:data:`VAL_COLUMNS`): it is a pure
function of them, so the test set never takes part (``tests/test_tune.py`` corrupts the tuning runs'
test metrics in a store and gets the same choice), and the choice is recomputed the same way from the
stored runs wherever it is needed (the launcher, a worker, ``bnstats status``, the report).

Order without a barrier: an arm's evaluation starts as soon as *its* tuning is complete. The launcher
submits every task at once (so Slurm jobs go on after the launcher leaves): the tuning tasks arm by arm,
each arm's evaluation tasks a few tasks later (:func:`tasks`). An evaluation task whose arm has every
tuning run stored decides and trains; otherwise (:func:`execute_deferred`) it trains the arm's tuning
runs that nobody is training (so a queue order that puts it first cannot deadlock), waits for those
that live processes are training, then decides. An arm whose tuning run failed keeps its evaluation
waiting (status ``blocked``); the next launch retries the tuning run and goes on.

Resume and concurrency are the store's (claims, one commit per run): a killed tuning stage leaves its
runs stored or not, the next launch trains what is missing, and every launch and worker that decides
an arm decides the same from the same stored runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd

from .config import RunConfig, SweepConfig, TuneConfig

#: The columns of a tuning run that selection reads (nothing of the test set).
VAL_COLUMNS = ("run_id", "seed", "diverged", "val_acc", "val_loss", "val_correct", "n_val")
#: Columns of an evaluation run's row that record how its values were chosen.
CHOICE_COLUMNS = ("tune_metric", "tune_rule", "tune_score", "tune_decided_by", "tune_candidates", "tune_seeds")
#: Seconds between looks at the store while an evaluation task waits for tuning runs other processes train.
POLL_S = 2.0


# ---------------------------------------------------------------------------------------------------
# Arms and their runs


@dataclass(frozen=True)
class Arm:
    """One arm of a tuned sweep: its grid factor values, its tuning runs and its evaluation seeds."""

    factors: tuple[tuple[str, Any], ...]
    candidates: tuple[dict[str, Any], ...]          # in tie-break order (config.TuneConfig.combos)
    tune_runs: tuple[tuple[RunConfig, ...], ...]    # [candidate][tuning seed]
    eval_runs: tuple[RunConfig, ...]                # evaluation seeds, tuned keys at their [train]/[model] values

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.factors) or "(single arm)"

    def tune_ids(self) -> list[str]:
        return [r.run_id for runs in self.tune_runs for r in runs]

    def resolved(self, choice: Choice) -> list[RunConfig]:
        """The evaluation runs with the chosen values."""
        return [r.with_values(choice.as_dict()) for r in self.eval_runs]


def arms(config: SweepConfig) -> list[Arm]:
    """The arms of a tuned sweep in grid order; each with its tuning runs and evaluation templates."""
    t = config.tune
    if not t.enabled:
        raise ValueError(f"{config.name}: no [tune] section; every arm trains with the same values")
    combos = t.combos()
    evals: dict[tuple, list[RunConfig]] = {}
    for r in config.runs():
        evals.setdefault(tuple(r.factor_values().items()), []).append(r)
    tunes: dict[tuple, list[RunConfig]] = {k: [] for k in evals}
    for r in dataclasses.replace(config, seeds=t.seeds).runs():
        tunes[tuple(r.factor_values().items())].append(r)
    return [Arm(key, tuple(combos), tuple(tuple(tuning_run(r, c) for r in tunes[key]) for c in combos),
                tuple(evals[key])) for key in evals]


def tuning_run(run: RunConfig, values: dict[str, Any]) -> RunConfig:
    """The tuning run of ``run``'s arm and seed with the candidate ``values``: it records no moments.

    Why: tuning runs only choose values (from their validation columns) and are never compared; their
    moments would cost time and a third of a tuned study's store (the shipped one: 13 of 14 MB were
    moments, 270 of 810 runs tuning runs). The evaluation runs record moments as ``[moments]`` says.
    """
    run = run.with_values(values)
    return dataclasses.replace(run, moments=dataclasses.replace(run.moments, enabled=False))


def preflight_runs(config: SweepConfig) -> list[RunConfig]:
    """One run per arm and candidate (the first tuning seed): what a preflight builds and checks."""
    base = dataclasses.replace(config, seeds=config.tune.seeds[:1]).runs()
    return [tuning_run(r, c) for r in base for c in config.tune.combos()]


# ---------------------------------------------------------------------------------------------------
# The selection rule


@dataclass(frozen=True)
class Score:
    """One candidate of an arm, scored on its tuning runs' validation columns."""

    values: tuple[tuple[str, Any], ...]
    n: int                  # tuning runs
    n_diverged: int
    mean_acc: float         # mean val_acc over the runs that did not diverge (NaN: none)
    sd_acc: float           # their SD (ddof = 1; NaN below 2)
    mean_loss: float
    sd_loss: float
    acc_exact: Fraction | None  # mean val_acc as an exact fraction (from val_correct / n_val), for ties


@dataclass(frozen=True)
class Choice:
    """The values chosen for one arm, and how.

    ``decided_by``: what separated the chosen candidate from the runner-up, in the rule's order:
    ``"divergence"``, the metric (``"val_acc"`` / ``"val_loss"``), the other validation metric, or
    ``"order"`` (tied on both: the first candidate in [tune] order); ``"single candidate"`` when there
    is one. ``edge``: the tuned keys whose chosen value is the smallest or largest of its numeric
    candidates (the best value may lie outside the grid).
    """

    values: tuple[tuple[str, Any], ...]
    metric: str
    rule: str
    score: float
    decided_by: str
    edge: tuple[str, ...]
    seeds: tuple[int, ...]
    scores: tuple[Score, ...] = field(repr=False)
    index: int = 0          # of the chosen candidate

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)

    def columns(self) -> dict[str, Any]:
        """What an evaluation run's row records about the choice (:data:`CHOICE_COLUMNS`)."""
        return {"tune_metric": self.metric, "tune_rule": self.rule, "tune_score": self.score,
                "tune_decided_by": self.decided_by, "tune_candidates": len(self.scores),
                "tune_seeds": ",".join(map(str, self.seeds))}


class IncompleteTuning(ValueError):
    """An arm's tuning runs are not all stored: nothing can be chosen yet."""


def score(rows: pd.DataFrame, values: dict[str, Any]) -> Score:
    """Score one candidate from its tuning runs' validation columns (only :data:`VAL_COLUMNS` are read)."""
    r = rows[[c for c in VAL_COLUMNS if c in rows.columns]]
    div = r["diverged"].fillna(False).astype(bool).to_numpy() if "diverged" in r else np.zeros(len(r), bool)
    ok = r[~div]
    acc = ok["val_acc"].to_numpy(dtype=float)
    loss = ok["val_loss"].to_numpy(dtype=float)
    if ok["val_acc"].isna().any() or ok["val_loss"].isna().any():
        raise ValueError(f"tuning runs {ok.loc[ok['val_acc'].isna(), 'run_id'].tolist()} have no validation metric "
                         "(trained without a validation set?)")
    exact = None
    if len(ok) and {"val_correct", "n_val"} <= set(ok.columns) and ok[["val_correct", "n_val"]].notna().all().all():
        # mean of c_i / n_i, exactly: equal means (common: accuracies are multiples of 1/n_val) tie exactly
        exact = sum((Fraction(int(c), int(n)) for c, n in zip(ok["val_correct"], ok["n_val"], strict=True)),
                    Fraction(0)) / len(ok)

    def mean_sd(x: np.ndarray) -> tuple[float, float]:
        return (float(x.mean()) if x.size else math.nan, float(x.std(ddof=1)) if x.size > 1 else math.nan)

    (ma, sa), (ml, sl) = mean_sd(acc), mean_sd(loss)
    return Score(tuple(values.items()), len(r), int(div.sum()), ma, sa, ml, sl, exact)


def _key(s: Score, metric: str, index: int) -> tuple:
    """Sort key of the rule ``best_mean`` (smallest first): fewer diverged runs; then the better mean of
    ``metric``; then the better mean of the other validation metric; then the earlier candidate."""
    acc = s.acc_exact if s.acc_exact is not None else (Fraction(s.mean_acc) if math.isfinite(s.mean_acc) else None)
    acc_key = (1, Fraction(0)) if acc is None else (0, -acc)
    loss_key = (1, 0.0) if not math.isfinite(s.mean_loss) else (0, s.mean_loss)
    first, second = (acc_key, loss_key) if metric == "val_acc" else (loss_key, acc_key)
    return (s.n_diverged, first, second, index)


def choose(rows_by_candidate: Sequence[pd.DataFrame], candidates: Sequence[dict[str, Any]], *,
           metric: str = "val_acc", rule: str = "best_mean", seeds: Sequence[int] = ()) -> Choice:
    """Choose an arm's values from its tuning runs: the rule ``best_mean``.

    Parameters
    ----------
    rows_by_candidate : sequence of pandas.DataFrame
        The tuning runs of each candidate (rows of the runs table; only :data:`VAL_COLUMNS` are read).
    candidates : sequence of dict
        The candidates (``{key: value}``) in [tune] order, aligned with ``rows_by_candidate``.
    metric : {"val_acc", "val_loss"}
        The validation metric of the final epoch.
    seeds : sequence of int
        The tuning seeds: every candidate must have one run per seed (else :class:`IncompleteTuning`).

    Returns
    -------
    Choice

    Notes
    -----
    Rule ``best_mean``, in this order: (1) the candidate with the fewest diverged tuning runs (a value that
    diverges on a tuning seed is not chosen over one that does not); (2) the highest mean ``val_acc``
    over the tuning seeds (``metric = "val_acc"``; computed exactly from ``val_correct / n_val``, so equal
    counts tie exactly) or the lowest mean ``val_loss``; (3) on a tie, the better mean of the other
    validation metric; (4) still tied, the first candidate in [tune] order (keys alphabetically, each
    key's values as listed). Means are over the runs that did not diverge. Deterministic, and a function
    of the validation columns alone.
    """
    if len(rows_by_candidate) != len(candidates) or not candidates:
        raise ValueError(f"choose: {len(rows_by_candidate)} row sets for {len(candidates)} candidates")
    scores = []
    for rows, values in zip(rows_by_candidate, candidates, strict=True):
        if seeds and sorted(int(s) for s in rows["seed"]) != sorted(int(s) for s in seeds):
            raise IncompleteTuning(f"candidate {values}: tuning runs for seeds {sorted(rows['seed'].tolist())} of "
                                   f"{sorted(seeds)}")
        scores.append(score(rows, values))
    keys = [_key(s, metric, i) for i, s in enumerate(scores)]
    order = sorted(range(len(scores)), key=keys.__getitem__)
    best = order[0]
    if len(order) == 1:
        decided = "single candidate"
    else:
        a, b = keys[best], keys[order[1]]
        other = "val_loss" if metric == "val_acc" else "val_acc"
        decided = ("divergence" if a[0] != b[0] else metric if a[1] != b[1] else other if a[2] != b[2] else "order")
    chosen = scores[best]
    edge = []
    for k, v in chosen.values:
        nums = [c[k] for c in candidates if isinstance(c[k], int | float) and not isinstance(c[k], bool)]
        if len(set(nums)) > 1 and isinstance(v, int | float) and not isinstance(v, bool) and v in (min(nums), max(nums)):
            edge.append(k)
    value = chosen.mean_acc if metric == "val_acc" else chosen.mean_loss
    return Choice(chosen.values, metric, rule, value, decided, tuple(edge), tuple(int(s) for s in seeds),
                  tuple(scores), best)


def choose_arm(arm: Arm, rows: pd.DataFrame, tune: TuneConfig) -> Choice:
    """:func:`choose` for an arm from rows holding (at least) its tuning runs, matched by ``run_id``."""
    by_id = rows.drop_duplicates("run_id").set_index("run_id", drop=False)
    parts = []
    for runs in arm.tune_runs:
        ids = [r.run_id for r in runs]
        missing = [i for i in ids if i not in by_id.index]
        if missing:
            raise IncompleteTuning(f"{arm.label}: {len(missing)} tuning run(s) not stored (e.g. {missing[0]})")
        parts.append(by_id.loc[ids])
    return choose(parts, arm.candidates, metric=tune.metric, rule=tune.rule, seeds=tune.seeds)


# ---------------------------------------------------------------------------------------------------
# Reading the tuning runs from a store


def read_rows(store: Any, ids: Sequence[str], keys: Sequence[str] = ()) -> pd.DataFrame:
    """The validation columns (and ``keys``) of the stored runs among ``ids``: units first, then the
    compacted table, so a run a compaction moves meanwhile is read from the table. A damaged unit is
    not a stored run (left out)."""
    from .store import _Damaged, _read_columns, _UnitVanished, unit_problem

    wanted = (*VAL_COLUMNS, *keys)
    want = set(ids)
    frames = []
    for rid in sorted(want):
        unit = store.units / rid
        if not (unit / "run.parquet").is_file():
            continue
        with contextlib.suppress(FileNotFoundError, _UnitVanished, _Damaged):
            if unit_problem(unit) is None:
                frames.append(_read_columns(unit / "run.parquet", wanted))
    table = store.tables / "runs.parquet"
    with contextlib.suppress(FileNotFoundError, _Damaged):
        df = _read_columns(table, wanted)
        frames.insert(0, df[df["run_id"].isin(want)])
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in wanted})
    return pd.concat(frames, ignore_index=True).drop_duplicates("run_id", keep="first").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------
# Planning the stages


@dataclass
class StagePlan:
    """What a launch of a tuned sweep trains: per arm, the tuning runs still to train and the evaluation
    runs (with the chosen values where the arm's tuning is complete, else at the config's values: their
    task decides when it runs)."""

    arms: list[Arm]
    tune_todo: list[list[RunConfig]]
    eval_todo: list[list[RunConfig]]
    choices: list[Choice | None]
    done: int = 0          # stored (both stages)
    elsewhere: int = 0     # claimed by other live processes
    waiting: int = 0       # evaluation runs of arms whose tuning is not complete

    @property
    def todo(self) -> list[RunConfig]:
        return [r for runs in (*self.tune_todo, *self.eval_todo) for r in runs]

    @property
    def total(self) -> int:
        return sum(len(a.tune_ids()) + len(a.eval_runs) for a in self.arms)


def plan(config: SweepConfig, store: Any, arm_list: list[Arm] | None = None) -> StagePlan:
    """Both stages of ``config`` against what ``store`` holds (stored, claimed by live processes)."""
    arm_list = arms(config) if arm_list is None else arm_list
    done = store.done_ids()
    claimed = set(store.active_claims())
    keys = config.tune.keys
    complete = {i for i, a in enumerate(arm_list) if all(r in done for r in a.tune_ids())}
    ids = [r for i in sorted(complete) for r in arm_list[i].tune_ids()]
    rows = read_rows(store, ids, keys) if complete else None
    out = StagePlan(arm_list, [], [], [])
    for index, arm in enumerate(arm_list):
        runs = [r for cand in arm.tune_runs for r in cand]
        out.tune_todo.append([r for r in runs if r.run_id not in done and r.run_id not in claimed])
        out.done += sum(r.run_id in done for r in runs)
        out.elsewhere += sum(r.run_id not in done and r.run_id in claimed for r in runs)
        choice = None
        if index in complete:
            with contextlib.suppress(IncompleteTuning):  # a unit compacted while read: decided by its task
                choice = choose_arm(arm, rows, config.tune)
        out.choices.append(choice)
        if choice is None:
            out.eval_todo.append(list(arm.eval_runs))
            out.waiting += len(arm.eval_runs)
            continue
        ev = arm.resolved(choice)
        out.eval_todo.append([r for r in ev if r.run_id not in done and r.run_id not in claimed])
        out.done += sum(r.run_id in done for r in ev)
        out.elsewhere += sum(r.run_id not in done and r.run_id in claimed for r in ev)
    return out


def tasks(staged: StagePlan, config: SweepConfig, make: Callable[[list[RunConfig]], list[Any]],
          slots: int) -> list[Any]:
    """The tasks of a launch, in submission order: evaluation tasks of arms already decided first; then
    arm by arm its tuning tasks, each arm's evaluation tasks placed ``slots - 1`` tasks after its last
    tuning task (``slots``: tasks running at once). A first-in first-out queue starts a task once every
    task before it has started and at most ``slots - 1`` others still run, so the arm's tuning has usually
    finished when its evaluation starts (if not, the evaluation task trains or waits for what is left:
    :func:`execute_deferred`). ``make(runs)`` packs runs into tasks (``sweep.pack``)."""
    tune_spec = {"stage": "tune", "keys": list(config.tune.keys)}
    since = time.time()  # a tuning run that fails after this was tried by this launch: not again (execute_deferred)
    front: list[Any] = []
    order: list[Any] = []
    queue: deque[tuple[int, list[Any]]] = deque()
    for i, arm in enumerate(staged.arms):
        choice = staged.choices[i]
        evals = make(staged.eval_todo[i]) if staged.eval_todo[i] else []
        if choice is not None:
            spec = {"stage": "eval", "keys": list(config.tune.keys), "columns": choice.columns()}
            front += [dataclasses.replace(t, tune=spec) for t in evals]
            continue
        order += [dataclasses.replace(t, tune=tune_spec) for t in make(staged.tune_todo[i])]
        queue.append((len(order), [dataclasses.replace(t, tune=_deferred_spec(config, arm, since)) for t in evals]))
        while queue and len(order) - queue[0][0] >= slots - 1:
            order += queue.popleft()[1]
    for _, evals in queue:
        order += evals
    return front + order


def _deferred_spec(config: SweepConfig, arm: Arm, since: float) -> dict[str, Any]:
    t = config.tune
    return {"stage": "eval", "keys": list(t.keys), "defer": {
        "metric": t.metric, "rule": t.rule, "seeds": list(t.seeds), "label": arm.label, "since": since,
        "candidates": [dict(c) for c in arm.candidates],
        "tune_runs": [[r.to_dict() for r in runs] for runs in arm.tune_runs]}}


# ---------------------------------------------------------------------------------------------------
# In the worker


def row_columns(spec: dict[str, Any], run: RunConfig) -> dict[str, Any]:
    """Columns a task's spec adds to a run's row: ``stage``, each tuned key's value, and for an
    evaluation run how its values were chosen. Nothing for a sweep without [tune]."""
    if not spec:
        return {}
    keys = list(spec.get("keys", ()))
    return {"stage": spec["stage"], "tune_keys": ",".join(keys), **{k: run.value(k) for k in keys},
            **spec.get("columns", {})}


def execute_deferred(task: Any, execute: Callable[[Any], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """An evaluation task whose arm was not decided when it was planned: decide, then train.

    Until every tuning run of the arm is stored: trains those nobody is training (as a tuning task of its
    own, so they are claimed and stored like any other), waits for those live processes are training. A
    tuning run that failed since this launch planned (its own tuning task tried it), fails here or cannot
    be stored leaves the evaluation runs ``blocked`` (their statuses say why); the next launch trains it
    and goes on. Returns the statuses of the tuning runs it trained (``"stolen": True``) and of the
    evaluation runs.
    """
    from .store import Store

    spec = task.tune["defer"]
    keys = list(task.tune.get("keys", ()))
    store = Store(task.store, identity_hash=task.sweep_identity or None)
    tune_runs = [[RunConfig.from_dict(d) for d in runs] for runs in spec["tune_runs"]]
    ids = [r.run_id for runs in tune_runs for r in runs]
    out: list[dict[str, Any]] = []
    tried: set[str] = set()
    while True:
        rows = read_rows(store, ids, keys)
        have = set(rows["run_id"])
        missing = [r for runs in tune_runs for r in runs if r.run_id not in have]
        if not missing:
            break
        claimed = store.active_claims()
        failed = {rid for rid, info in store.failures().items() if info.get("time", 0) >= spec["since"]}
        free = [r for r in missing if r.run_id not in claimed and r.run_id not in tried and r.run_id not in failed]
        if free:
            tried.update(r.run_id for r in free)
            for runs in tune_runs:  # one candidate at a time: a stack holds runs that differ only in seed
                mine = [r for r in runs if r in free]
                if mine:
                    sub = dataclasses.replace(task, runs=tuple(r.to_dict() for r in mine),
                                              tune={"stage": "tune", "keys": keys})
                    out += [{**s, "stolen": True} for s in execute(sub)]
            continue
        lost = [r for r in missing if r.run_id not in claimed]
        if lost:  # tried in this launch and still not stored: failed (recorded in failed/) or not storable
            why = (f"its tuning is incomplete: {len(lost)} tuning run(s) of {spec['label']} not stored "
                   f"(e.g. {lost[0].run_id}, seed {lost[0].seed}); the next launch trains them, then this arm")
            return out + [{"run_id": RunConfig.from_dict(r).run_id, "status": "blocked", "error": why}
                          for r in task.runs]
        time.sleep(POLL_S)
    by_id = rows.set_index("run_id", drop=False)
    parts = [by_id.loc[[r.run_id for r in runs]] for runs in tune_runs]
    choice = choose(parts, spec["candidates"], metric=spec["metric"], rule=spec["rule"], seeds=spec["seeds"])
    runs = [RunConfig.from_dict(d).with_values(choice.as_dict()) for d in task.runs]
    resolved = dataclasses.replace(task, runs=tuple(r.to_dict() for r in runs),
                                   tune={"stage": "eval", "keys": keys, "columns": choice.columns()})
    return out + execute(resolved)


# ---------------------------------------------------------------------------------------------------
# Status and tables (the report, tests)


def status_rows(config: SweepConfig, store: Any, done: set[str], running: set[str], failed: set[str]
                ) -> list[dict[str, Any]]:
    """One row per run of both stages for ``bnstats status``: ``stage``, the factors, ``state`` (done,
    running, failed, missing; ``waiting``: an evaluation run of an arm whose tuning is not complete) and
    ``tuned`` (the arm's chosen values, once decided)."""
    arm_list = arms(config)
    complete = {i for i, a in enumerate(arm_list) if all(r in done for r in a.tune_ids())}
    ids = [r for i in sorted(complete) for r in arm_list[i].tune_ids()]
    rows = read_rows(store, ids, config.tune.keys) if complete else None

    def state(rid: str) -> str:
        return "done" if rid in done else "running" if rid in running else "failed" if rid in failed else "missing"

    out = []
    n_cand = len(config.tune.combos())
    for index, arm in enumerate(arm_list):
        f = dict(arm.factors)
        for rid in arm.tune_ids():
            out.append({"stage": "tune", **f, "state": state(rid),
                        "tuned": f"{n_cand} candidates x {len(config.tune.seeds)} seeds"})
        choice = None
        if index in complete:
            with contextlib.suppress(IncompleteTuning):
                choice = choose_arm(arm, rows, config.tune)
        if choice is None:
            out += [{"stage": "eval", **f, "state": "waiting", "tuned": ""} for _ in arm.eval_runs]
        else:
            text = ", ".join(f"{k}={v}" for k, v in choice.values)
            out += [{"stage": "eval", **f, "state": state(r.run_id), "tuned": text} for r in arm.resolved(choice)]
    return out


def tune_config_of(meta: dict[str, Any]) -> TuneConfig:
    """The [tune] section of a store's ``sweep.json`` (from its identity; empty for a sweep without one)."""
    t = (meta.get("identity") or {}).get("tune")
    if not t:
        return TuneConfig()
    return TuneConfig(candidates=tuple((k, tuple(v)) for k, v in t["candidates"]), seeds=tuple(t["seeds"]),
                      metric=t["metric"], rule=t["rule"])


def stage_of(runs: pd.DataFrame) -> pd.Series:
    """``"tune"`` or ``"eval"`` per row (rows of a sweep without [tune], and imported runs: ``"eval"``)."""
    if "stage" not in runs.columns:
        return pd.Series("eval", index=runs.index)
    return runs["stage"].astype(object).where(runs["stage"].notna(), "eval")


def candidates_frame(runs: pd.DataFrame, tune: TuneConfig, factors: Sequence[str]) -> pd.DataFrame:
    """Every arm × candidate of a tuned store, scored and ranked from its tuning runs (``stage == "tune"``).

    Columns: the factors, the tuned keys, ``n`` (tuning runs), ``n_diverged``, ``mean_val_acc``,
    ``sd_val_acc``, ``mean_val_loss``, ``sd_val_loss``, ``rank`` (1 = chosen, by :func:`choose`'s rule),
    ``chosen`` (bool), ``metric``. Only the validation columns of the tuning runs are read. An arm whose
    tuning is incomplete is left out (see :func:`choices_frame`).
    """
    out = []
    for arm_key, choice, _ in _arm_choices(runs, tune, factors):
        if choice is None:
            continue
        keys = [_key(s, tune.metric, i) for i, s in enumerate(choice.scores)]
        rank = {i: k + 1 for k, i in enumerate(sorted(range(len(keys)), key=keys.__getitem__))}
        for i, s in enumerate(choice.scores):
            out.append({**dict(arm_key), **dict(s.values), "n": s.n, "n_diverged": s.n_diverged,
                        "mean_val_acc": s.mean_acc, "sd_val_acc": s.sd_acc, "mean_val_loss": s.mean_loss,
                        "sd_val_loss": s.sd_loss, "rank": rank[i], "chosen": i == choice.index,
                        "metric": tune.metric})
    return pd.DataFrame(out)


def choices_frame(runs: pd.DataFrame, tune: TuneConfig, factors: Sequence[str]) -> pd.DataFrame:
    """One row per arm: the values chosen from its stored tuning runs, and what its evaluation runs used.

    Columns: the factors, ``chosen_<key>`` per tuned key, ``score`` (mean validation metric of the chosen
    candidate), ``metric``, ``decided_by``, ``edge`` (the keys at an end of their grid, comma-separated),
    ``complete`` (every tuning run stored), ``n_eval`` (evaluation runs stored), ``used_<key>`` (the values
    the evaluation runs recorded, comma-separated if they differ) and ``agrees`` (every evaluation run
    used the values chosen here; True when there is none yet).
    """
    out = []
    stage = stage_of(runs)
    ev = runs[stage == "eval"]
    for arm_key, choice, n_missing in _arm_choices(runs, tune, factors):
        mask = np.ones(len(ev), bool)
        for k, v in arm_key:
            mask &= (ev[k] == v).to_numpy()
        mine = ev[mask]
        row: dict[str, Any] = dict(arm_key)
        agrees = True
        for k in tune.keys:
            row[f"chosen_{k}"] = None if choice is None else choice.as_dict()[k]
            used = list(dict.fromkeys(mine[k].tolist())) if k in mine else []
            row[f"used_{k}"] = ", ".join(map(str, used))
            if used and (choice is None or used != [choice.as_dict()[k]]):
                agrees = False
        row.update(score=math.nan if choice is None else choice.score, metric=tune.metric,
                   decided_by="" if choice is None else choice.decided_by,
                   edge="" if choice is None else ", ".join(choice.edge), complete=choice is not None,
                   n_tune_missing=n_missing, n_eval=len(mine), agrees=agrees)
        out.append(row)
    return pd.DataFrame(out)


def _arm_choices(runs: pd.DataFrame, tune: TuneConfig, factors: Sequence[str]):
    """``(arm factors, Choice or None, tuning runs missing)`` per arm present among the tuning runs."""
    tr = runs[stage_of(runs) == "tune"]
    factors = list(factors)
    combos = tune.combos()
    if tr.empty:
        return
    groups = tr.groupby(factors, sort=True, observed=True, dropna=False) if factors else [((), tr)]
    for key, sub in groups:
        key = key if isinstance(key, tuple) else (key,)
        parts = []
        for c in combos:
            m = np.ones(len(sub), bool)
            for k, v in c.items():
                m &= (sub[k] == v).to_numpy()
            parts.append(sub[m])
        expected = len(combos) * len(tune.seeds)
        n_missing = expected - sum(len(p) for p in parts)
        try:
            choice = choose(parts, combos, metric=tune.metric, rule=tune.rule, seeds=tune.seeds)
        except IncompleteTuning:
            choice = None
        yield tuple(zip(factors, key, strict=True)), choice, n_missing
