"""``bnstats import`` and ``compare FILE``: runs trained anywhere, read from files written in the real formats.

Sources are written the way their tools write them: W&B offline runs by the wandb client itself
(``WANDB_MODE=offline wandb.init``, in a subprocess), TensorBoard event files by
``torch.utils.tensorboard.SummaryWriter``, the W&B UI's runs export with its header (``Name, State,
Notes, User, Tags, Created, Runtime, Sweep``, then config and summary columns), and online W&B run
folders as ``files/config.yaml`` (``{key: {desc, value}}`` plus ``_wandb``) and
``files/wandb-summary.json``, which the client writes only when it syncs (written here by hand in
that format). Reference numbers come from the values the tests logged, not from the importer.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bnstats import cli, config, importers, stats, store
from bnstats.config import ConfigError
from bnstats.store import Store

REPO = Path(__file__).resolve().parents[1]
ARMS = ("before", "after")
ACTS = ("relu", "tanh")
SEEDS = (0, 1, 2, 3)


def _runs() -> pd.DataFrame:
    """A plain table of 16 runs (2 placements x 2 activations x 4 seeds) with known paired differences.

    Accuracies are fractions on a 1000-example test set (multiples of 0.001); ``after`` differs from
    ``before`` by the fixed per-seed amounts in ``DIFF``, so the paired mean difference is known exactly.
    """
    rows = []
    for act in ACTS:
        for s in SEEDS:
            base = 0.900 + 0.004 * s + (0.0 if act == "relu" else -0.050)
            for arm in ARMS:
                acc = base + (DIFF[act][s] if arm == "after" else 0.0)
                rows.append({"seed": s, "placement": arm, "activation": act, "lr": 0.05,
                             "test_acc": round(acc, 3), "test_loss": round(1.0 - acc, 3) * 0.5})
    return pd.DataFrame(rows)


DIFF = {"relu": (0.003, -0.001, 0.004, 0.002), "tanh": (-0.010, -0.014, -0.008, -0.012)}


def _run(capsys, *args):
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _wandb_export(path: Path, df: pd.DataFrame, states: dict[int, str] | None = None) -> Path:
    """The runs table as the W&B UI exports it: the run columns, then config, then summary (every cell quoted)."""
    head = ["Name", "State", "Notes", "User", "Tags", "Created", "Runtime", "Sweep"]
    config_cols, summary_cols = ["activation", "lr", "placement", "seed"], ["_step", "test/acc", "test/loss"]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, quoting=csv.QUOTE_ALL)
        w.writerow(head + config_cols + summary_cols)
        for i, r in enumerate(df.itertuples()):
            w.writerow([f"{r.placement}-{r.activation}-{r.seed}", (states or {}).get(i, "finished"), "-", "someone", "bn,placement",
                        f"2026-11-30T10:{i:02d}:00.000Z", 61 + i, "", r.activation, r.lr, r.placement, r.seed,
                        29, r.test_acc, r.test_loss])
    return path


# -------------------------------------------------------------------------------------------------
# Sources written by the tools themselves (once per session)

WANDB_SCRIPT = textwrap.dedent('''
    import json, os, sys
    import wandb

    out, spec = sys.argv[1], json.loads(sys.argv[2])
    logged = []
    for r in spec["runs"]:
        run = wandb.init(project="bn-placement", dir=out, name=r["name"], tags=["import-test"],
                         config={"seed": r["seed"], "model": {"placement": r["placement"], "width": 16}},
                         settings=wandb.Settings(x_disable_stats=True, x_disable_meta=True))
        for epoch, acc in enumerate(r["acc"]):
            run.log({"epoch": epoch, "test/acc": acc, "train/loss": 1.0 / (epoch + 1)})
        logged.append({"id": run.id, **r})
        run.finish()
    if spec.get("empty"):  # a run that logged nothing (killed before its first step, say)
        run = wandb.init(project="bn-placement", dir=spec["empty"], config={"seed": 0},
                         settings=wandb.Settings(x_disable_stats=True, x_disable_meta=True))
        run.finish()
    print(json.dumps(logged))
''')


def _wandb_spec() -> list[dict]:
    runs = []
    for s in range(3):
        for arm in ARMS:
            final = 0.800 + 0.010 * s + (0.020 + 0.001 * s if arm == "after" else 0.0)
            runs.append({"name": f"{arm}-{s}", "seed": s, "placement": arm,
                         "acc": [round(final - 0.1, 3), round(final - 0.05, 3), round(final, 3)]})
    return runs


@pytest.fixture(scope="session")
def wandb_runs(tmp_path_factory) -> tuple[Path, list[dict], Path]:
    """Six offline runs written by the W&B client (3 seeds x 2 placements, 3 epochs each), the values
    each logged, and a second folder holding one run that logged nothing."""
    pytest.importorskip("wandb")
    root = tmp_path_factory.mktemp("wandb-offline")
    empty = tmp_path_factory.mktemp("wandb-empty")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true",
           "WANDB_CONSOLE": "off", "WANDB_CONFIG_DIR": str(root / ".config"), "WANDB_CACHE_DIR": str(root / ".cache")}
    spec = {"runs": _wandb_spec(), "empty": str(empty)}
    p = subprocess.run([sys.executable, "-c", WANDB_SCRIPT, str(root), json.dumps(spec)], env=env, cwd=root,
                       capture_output=True, text=True, timeout=300, check=True)
    shutil.rmtree(root / ".config", ignore_errors=True)
    shutil.rmtree(root / ".cache", ignore_errors=True)
    return root / "wandb", json.loads(p.stdout.strip().splitlines()[-1]), empty / "wandb"


TB_STEPS = 4


def _tb_value(arm: str, seed: int, step: int) -> float:
    return 0.70 + 0.05 * step + 0.002 * seed + (0.010 + 0.001 * seed if arm == "after" else 0.0)


@pytest.fixture(scope="session")
def tb_runs(tmp_path_factory) -> Path:
    """TensorBoard logs as torch's SummaryWriter writes them: one folder per run named
    ``placement=<arm>,seed=<s>``, scalars per step, and ``add_hparams`` (its own timestamped subfolder)."""
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    root = tmp_path_factory.mktemp("tensorboard") / "tb"
    for arm in ARMS:
        for s in range(3):
            w = SummaryWriter(str(root / f"placement={arm},seed={s}"))
            for step in range(TB_STEPS):
                w.add_scalar("test/acc", _tb_value(arm, s, step), step)
                w.add_scalar("train/loss", 1.0 / (step + 1), step)
            w.add_hparams({"lr": 0.05, "width": 16, "seed": s}, {"hparam/final_acc": _tb_value(arm, s, TB_STEPS - 1)})
            w.close()
    return root


def _online_wandb_run(root: Path, run_id: str, config_values: dict, summary: dict | None) -> Path:
    """An online run's folder as the client leaves it after syncing: files/config.yaml in W&B's format
    (every key ``{desc, value}``, plus the client's ``_wandb`` entry) and files/wandb-summary.json."""
    n = len(list((root / "wandb").glob("run-*"))) if (root / "wandb").is_dir() else 0
    d = root / "wandb" / f"run-20261130_1000{n:02d}-{run_id}"
    (d / "files").mkdir(parents=True)
    lines = ["_wandb:", "  desc: null", "  value:", "    cli_version: 0.31.0", "    python_version: 3.11.7",
             "    t:", "      1:", "      - 1", "      - 55"]
    for k, v in config_values.items():
        lines += [f"{k}:", "  desc: null", f"  value: {json.dumps(v)}"]
    (d / "files" / "config.yaml").write_text("\n".join(lines) + "\n")
    (d / "files" / "wandb-metadata.json").write_text(json.dumps({"host": "gpu-node-3", "python": "3.11.7"}))
    if summary is not None:
        (d / "files" / "wandb-summary.json").write_text(json.dumps(summary))
    return d


# -------------------------------------------------------------------------------------------------
# Tables: CSV, the W&B export, Parquet, JSON lines


def test_compare_file_equals_stats_compare_on_the_same_frame(tmp_path, capsys):
    src = tmp_path / "results.csv"
    _runs().to_csv(src, index=False)
    out = tmp_path / "cmp.csv"
    rc, text, err = _run(capsys, "compare", src, "--by", "activation", "--csv", out)
    assert rc == 0, err
    got = pd.read_csv(out)
    want = stats.compare(pd.read_csv(src), metric="test_acc", factor="placement", baseline="before",
                         by=["activation"], diverged="drop_pair")
    pd.testing.assert_frame_equal(got, pd.read_csv(_csv(want, tmp_path / "want.csv")))
    # independent of the statistics layer: the paired mean difference is the mean of the known per-seed ones
    np.testing.assert_allclose(got["estimate"], [np.mean(DIFF["relu"]), np.mean(DIFF["tanh"])], atol=1e-12)
    assert list(got["activation"]) == ["relu", "tanh"] and set(got["n"]) == {4}
    assert "relu" in text and "verdict" in text
    rc, _, err = _run(capsys, "plan", src, "--by", "activation", "--effect", "0.005", "--csv", out)
    assert rc == 0, err
    want = stats.plan(pd.read_csv(src), metric="test_acc", factor="placement", baseline="before", by=["activation"],
                      effect=0.005)
    assert pd.read_csv(out)["seeds_for_power"].tolist() == want["seeds_for_power"].astype(int).tolist()


def _csv(df: pd.DataFrame, path: Path) -> Path:
    df.to_csv(path, index=False)
    return path


def test_wandb_export_csv_keeps_every_column_and_compares_like_the_plain_table(tmp_path, capsys):
    src = _wandb_export(tmp_path / "wandb_export.csv", _runs())
    imp = importers.read(src, importers.mapping(metric="test/acc", by="activation", baseline="before"))
    assert imp.meta["import"]["kind"] == "wandb_csv" and imp.meta["import"]["states"] == {"finished": 16}
    head = ["Name", "State", "Notes", "User", "Tags", "Created", "Runtime", "Sweep"]
    assert set(head + ["lr", "_step", "test/acc", "test/loss"]) <= set(imp.runs.columns)
    assert imp.runs["Tags"].eq("bn,placement").all() and imp.runs["Created"].str.endswith("Z").all()
    assert imp.runs["source"].eq("import").all()
    assert imp.runs["source_sha256"].eq(hashlib.sha256(src.read_bytes()).hexdigest()).all()
    got = stats.compare(imp.runs, metric="test/acc", factor="placement", baseline="before")
    want = stats.compare(_runs(), metric="test_acc", factor="placement", baseline="before", by=["activation"])
    np.testing.assert_array_equal(got["estimate"], want["estimate"])
    np.testing.assert_array_equal(got["p_adj"], want["p_adj"])
    out = tmp_path / "c.csv"
    rc, _, err = _run(capsys, "compare", src, "--metric", "test/acc", "--by", "activation", "--csv", out)
    assert rc == 0, err
    np.testing.assert_array_equal(pd.read_csv(out)["estimate"], want["estimate"])
    # runs W&B did not see finish are imported as they are, and said so
    src = _wandb_export(tmp_path / "crashed.csv", _runs(), states={3: "crashed"})
    rc, text, err = _run(capsys, "import", src, "--out", tmp_path / "s", "--metric", "test/acc", "--by", "activation")
    assert rc == 0, err
    assert "note: 1 run(s) are not finished in W&B's state ({'crashed': 1})" in text


def test_json_lines_nested_objects_lists_and_mixed_types(tmp_path):
    lines = [{"seed": s, "arm": arm, "acc": 0.9 + 0.01 * s + (0.002 if arm == "b" else 0), "opt": {"lr": 0.1},
              "widths": [16, 32], "tag": 5 if s == 0 else "five"} for s in range(3) for arm in ("a", "b")]
    src = tmp_path / "r.jsonl"
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    imp = importers.read(src, importers.mapping(factor="arm", metric="acc", baseline="a"))
    assert imp.runs["opt.lr"].eq(0.1).all() and imp.runs["widths"].eq("[16, 32]").all()
    assert set(imp.runs["tag"]) == {"5", "five"}  # a Parquet column holds one type: mixed ones are stored as text
    assert "column(s) ['tag'] mixed text and numbers: stored as text" in imp.meta["import"]["notes"]
    imp.runs.to_parquet(tmp_path / "ok.parquet")
    np.testing.assert_allclose(stats.compare(imp.runs, "acc", "arm", "a")["estimate"], [0.002], atol=1e-12)
    (tmp_path / "bad.jsonl").write_text('{"seed": 0}\n[1, 2]\n')
    with pytest.raises(importers.ImportInputError, match="line 2 is a JSON list, not an object"):
        importers.read(tmp_path / "bad.jsonl")


@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_parquet_and_json_lines_give_the_csv_numbers(tmp_path, capsys, kind):
    df = _runs()
    if kind == "parquet":
        src = tmp_path / "results.parquet"
        df.to_parquet(src, index=False)
    else:
        src = tmp_path / "results.jsonl"
        # nested objects as a logger writes them: {"config": {...}, "test_acc": ...}
        src.write_text("".join(json.dumps({"seed": int(r.seed), "config": {"placement": r.placement,
                                                                             "activation": r.activation},
                                           "test_acc": r.test_acc}) + "\n" for r in df.itertuples()))
    factor, by = ("placement", "activation") if kind == "parquet" else ("config.placement", "config.activation")
    out = tmp_path / "c.csv"
    rc, _, err = _run(capsys, "compare", src, "--factor", factor, "--by", by, "--baseline", "before", "--csv", out)
    assert rc == 0, err
    want = stats.compare(df, metric="test_acc", factor="placement", baseline="before", by=["activation"])
    np.testing.assert_array_equal(pd.read_csv(out)["estimate"], want["estimate"])
    np.testing.assert_array_equal(pd.read_csv(out)["p_t"], want["p_t"])


def test_import_builds_a_store_that_compare_plan_and_status_read(tmp_path, capsys):
    src = tmp_path / "results.csv"
    _runs().assign(note="x").to_csv(src, index=False)
    out = tmp_path / "runs"
    rc, text, err = _run(capsys, "import", src, "--out", out, "--metric", "test_acc,test_loss", "--by", "activation",
                         "--baseline", "before")
    assert rc == 0, err
    assert text.splitlines()[0] == str(out) and "imported 16 runs" in text and "source's units" in text
    res = store.load(out)
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["source"] == "import" and meta["factors"] == ["placement", "activation"] and "config" not in meta
    assert meta["import"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert meta["import"]["mapping"] == {"seed": "seed", "factor": "placement", "metric": ["test_acc", "test_loss"],
                                         "by": ["activation"], "baseline": "before", "init_hash": None,
                                         "order_hash": None}
    assert "fraction stays a fraction" in meta["import"]["metric_units"]
    assert set(_runs().columns) | {"note", "run_id", "source", "source_path", "source_sha256"} == set(res.runs.columns)
    assert res.runs["run_id"].is_unique and res.curves.empty and res.factors == ["placement", "activation"]
    # compare DIR uses the stored mapping and equals stats.compare on the stored runs
    csv_out = tmp_path / "c.csv"
    rc, _, err = _run(capsys, "compare", out, "--csv", csv_out)
    assert rc == 0, err
    want = stats.compare(res.runs, metric="test_acc", factor="placement", baseline="before", diverged="drop_pair")
    np.testing.assert_array_equal(pd.read_csv(csv_out)["estimate"], want["estimate"])
    assert list(pd.read_csv(csv_out)["activation"]) == ["relu", "tanh"]
    rc, _, _ = _run(capsys, "compare", out, "--metric", "test_loss", "--csv", csv_out)
    assert rc == 0 and set(pd.read_csv(csv_out)["metric"]) == {"test_loss"}
    rc, text, err = _run(capsys, "plan", out, "--effect", "0.005")
    assert rc == 0 and "seeds_for_power" in text, err
    rc, text, _ = _run(capsys, "status", out)
    assert rc == 0 and text.splitlines()[0] == f"{out}: 16 runs: 16 done, 0 running, 0 failed, 0 missing"
    rc, text, _ = _run(capsys, "status", out, "--json")
    cells = json.loads(text)["cells"]
    assert len(cells) == 4 and {c["done"] for c in cells} == {4} and {c["missing"] for c in cells} == {0}


def test_mapping_from_a_toml_section_equals_the_flags(tmp_path):
    src = _csv(_runs(), tmp_path / "results.csv")
    toml = tmp_path / "mapping.toml"
    toml.write_text('[import]\nseed = "seed"\nfactor = "placement"\nmetric = ["test_acc", "test_loss"]\n'
                    'by = ["activation"]\nbaseline = "before"\n')
    a = importers.read(src, importers.mapping(toml))
    b = importers.read(src, importers.mapping(metric="test_acc,test_loss", by="activation", baseline="before"))
    pd.testing.assert_frame_equal(a.runs, b.runs)
    assert a.meta == b.meta
    # flags override the file
    c = importers.mapping(toml, metric="test_loss", baseline="after")
    assert c.metric == ("test_loss",) and c.baseline == "after" and c.by == ("activation",)
    toml.write_text('[import]\nfactor = "placement"\ncolour = "red"\n')
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour'\]; allowed: \['seed', 'factor'"):
        importers.mapping(toml)


def test_numeric_factor_levels_and_seed_floats_are_matched_by_their_text(tmp_path):
    df = _runs().assign(width=lambda d: np.where(d["placement"] == "before", 16, 32), seed=lambda d: d["seed"] * 1.0)
    imp = importers.read(_csv(df, tmp_path / "w.csv"), importers.mapping(factor="width", by="activation", baseline="16"))
    assert imp.meta["import"]["mapping"]["baseline"] == 16 and imp.runs["seed"].dtype == "int64"
    got = stats.compare(imp.runs, metric="test_acc", factor="width", baseline=16)
    np.testing.assert_allclose(got["estimate"], [np.mean(DIFF["relu"]), np.mean(DIFF["tanh"])], atol=1e-12)


def test_source_columns_named_like_bookkeeping_are_kept_as_orig(tmp_path):
    df = _runs().rename(columns={"seed": "Seed"}).assign(seed=7, source="lab-cluster")
    imp = importers.read(_csv(df, tmp_path / "r.csv"), importers.mapping(seed="Seed", by="activation"))
    assert imp.meta["import"]["renamed"] == {"seed": "seed.orig", "source": "source.orig"}
    assert imp.runs["seed.orig"].eq(7).all() and imp.runs["source.orig"].eq("lab-cluster").all()
    assert imp.runs["source"].eq("import").all()
    np.testing.assert_array_equal(imp.runs["seed"], imp.runs["Seed"])


def test_hash_columns_verify_the_pairing_and_name_the_groups_that_fail(tmp_path):
    df = _runs()
    df["init"] = [f"w{s}-{a}" for s, a in zip(df["seed"], df["activation"], strict=True)]  # shared by the arms
    df["order"] = df["init"]
    imp = importers.read(_csv(df, tmp_path / "h.csv"), importers.mapping(by="activation", init_hash="init",
                                                                         order_hash="order"))
    p = imp.meta["pairing"]
    assert [x.split(":")[0] for x in p["verified"]] == ["seed identity", "initial weights", "data order"]
    assert p["not_verified"] == [] and imp.runs["init_hash"].equals(imp.runs["init"])
    df.loc[(df["seed"] == 2) & (df["placement"] == "after") & (df["activation"] == "tanh"), "order"] = "other"
    p = importers.read(_csv(df, tmp_path / "h2.csv"),
                       importers.mapping(by="activation", init_hash="init", order_hash="order")).meta["pairing"]
    assert len(p["not_verified"]) == 1
    assert "order_hash (column 'order') differs between arms in 1 of 8 seed x cell groups" in p["not_verified"][0]
    assert "activation='tanh', seed=2" in p["not_verified"][0]
    # without hash columns only seed identity is verified, and the report is told so
    p = importers.read(_csv(_runs(), tmp_path / "plain.csv"), importers.mapping(by="activation")).meta["pairing"]
    assert [x.split(":")[0] for x in p["not_verified"]] == ["initial weights", "data order"]
    assert "--init-hash not mapped" in p["not_verified"][0]


# -------------------------------------------------------------------------------------------------
# W&B run folders


def test_offline_wandb_runs_are_read_by_wandbs_own_reader(wandb_runs, tmp_path, capsys):
    folder, logged, _ = wandb_runs
    assert all(not (d / "files" / "wandb-summary.json").exists() for d in folder.glob("offline-run-*"))
    out = tmp_path / "runs"
    rc, text, err = _run(capsys, "import", folder.parent, "--out", out, "--factor", "model.placement",
                         "--metric", "test/acc", "--baseline", "before")
    assert rc == 0, err
    res = store.load(out)
    runs = res.runs.set_index("run_id")
    assert sorted(runs.index) == sorted(r["id"] for r in logged)
    for r in logged:
        row = runs.loc[r["id"]]
        assert (row["seed"], row["model.placement"], row["model.width"]) == (r["seed"], r["placement"], 16)
        assert row["test/acc"] == r["acc"][-1] and row["wandb_name"] == r["name"]
        assert row["wandb_state"] == "finished" and row["wandb_tags"] == "import-test"
        assert row["epoch"] == 2 and row["train/loss"] == pytest.approx(1 / 3, abs=1e-15)
        curve = res.curves[res.curves["run_id"] == r["id"]]
        assert curve["step"].tolist() == [0, 1, 2] and curve["test/acc"].tolist() == r["acc"]
    assert "_wandb" not in " ".join(res.runs.columns.drop("source_sha256"))
    # the hash covers the files read: each run's .wandb log
    logs = sorted(folder.glob("offline-run-*/run-*.wandb"))
    lines = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.parent.name}/{p.name}\n" for p in logs)
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["import"]["sha256"] == hashlib.sha256(lines.encode()).hexdigest() and meta["import"]["kind"] == "wandb"
    assert meta["import"]["curves"]["columns"] == ["_runtime", "_timestamp", "epoch", "test/acc", "train/loss"]
    # the comparison equals stats.compare on a frame built from what the runs logged
    want = stats.compare(pd.DataFrame([{"seed": r["seed"], "placement": r["placement"], "acc": r["acc"][-1]}
                                       for r in logged]), metric="acc", factor="placement", baseline="before", by=[])
    csv_out = tmp_path / "c.csv"
    rc, _, err = _run(capsys, "compare", out, "--csv", csv_out)
    assert rc == 0, err
    np.testing.assert_array_equal(pd.read_csv(csv_out)["estimate"], want["estimate"])
    np.testing.assert_allclose(want["estimate"], [np.mean([0.020 + 0.001 * s for s in range(3)])], atol=1e-12)


def test_online_wandb_run_folders_read_config_yaml_and_summary_json(tmp_path, capsys):
    for s in range(3):
        for arm in ARMS:
            acc = 0.9 + 0.01 * s + (0.005 if arm == "after" else 0.0)
            _online_wandb_run(tmp_path, f"id{arm}{s}", {"seed": s, "model": {"placement": arm}, "lr": 0.05},
                              {"test/acc": acc, "epoch": 9, "_step": 99, "_runtime": 12.5, "_wandb": {"runtime": 12}})
    (tmp_path / "wandb" / "latest-run").symlink_to(next((tmp_path / "wandb").glob("run-*")))
    imp = importers.read(tmp_path / "wandb", importers.mapping(factor="model.placement", metric="test/acc"))
    assert len(imp.runs) == 6 and sorted(imp.runs["run_id"]) == sorted(f"id{a}{s}" for s in range(3) for a in ARMS)
    assert {"lr", "epoch", "_step", "_runtime", "run", "wandb_id"} <= set(imp.runs.columns)
    assert not any(c.startswith("_wandb") for c in imp.runs.columns) and imp.curves.empty
    read = {f for f, _ in imp.source.files}  # the files read, not the metadata beside them
    assert read == {f"{r}/files/{f}" for r in imp.runs["run"] for f in ("config.yaml", "wandb-summary.json")}
    got = stats.compare(imp.runs, metric="test/acc", factor="model.placement", baseline="before")
    np.testing.assert_allclose(got["estimate"], [0.005], atol=1e-12)


# -------------------------------------------------------------------------------------------------
# TensorBoard


def test_tensorboard_runs_last_values_hparams_and_curves(tb_runs, tmp_path, capsys):
    out = tmp_path / "runs"
    rc, text, err = _run(capsys, "import", tb_runs, "--out", out, "--metric", "test/acc", "--baseline", "before")
    assert rc == 0, err
    res = store.load(out)
    assert len(res.runs) == 6 and set(res.runs["run"]) == {f"placement={a},seed={s}" for a in ARMS for s in range(3)}
    f32 = lambda x: float(np.float32(x))  # noqa: E731 -- TensorBoard stores scalars as float32
    for _, r in res.runs.iterrows():
        arm, s = r["placement"], r["seed"]
        assert r["lr"] == 0.05 and r["width"] == 16  # add_hparams, from its timestamped subfolder
        assert r["test/acc"] == f32(_tb_value(arm, s, TB_STEPS - 1))  # the last step
        curve = res.curves[res.curves["run_id"] == r["run_id"]]
        assert curve["step"].tolist() == list(range(TB_STEPS))
        assert curve["test/acc"].tolist() == [f32(_tb_value(arm, s, k)) for k in range(TB_STEPS)]
        assert curve["train/loss"].tolist() == [f32(1 / (k + 1)) for k in range(TB_STEPS)]
    files = sorted(p for p in tb_runs.rglob("*") if "tfevents" in p.name)
    assert len(json.loads((out / "sweep.json").read_text())["import"]["files"]) == len(files) == 12
    want = stats.compare(pd.DataFrame([{"seed": s, "placement": a, "acc": f32(_tb_value(a, s, TB_STEPS - 1))}
                                       for a in ARMS for s in range(3)]),
                         metric="acc", factor="placement", baseline="before", by=[])
    csv_out = tmp_path / "c.csv"
    rc, _, err = _run(capsys, "compare", tb_runs, "--metric", "test/acc", "--csv", csv_out)
    assert rc == 0, err
    np.testing.assert_array_equal(pd.read_csv(csv_out)["estimate"], want["estimate"])


# -------------------------------------------------------------------------------------------------
# Bad input: exit 2, one line, nothing written


def _bad_sources(root: Path) -> dict[str, tuple[Path, list[str], str]]:
    df = _runs()
    cases = {}
    dup = pd.concat([df, df.iloc[[3]]], ignore_index=True)
    cases["duplicate"] = (_csv(dup, root / "dup.csv"), ["--by", "activation"],
                          "duplicate runs in .*2 rows share their seed and arm with another \\(row\\(s\\) \\[4, 17\\]")
    apart = df.assign(seed=np.where(df["placement"] == "after", df["seed"] + 10, df["seed"]))
    cases["no shared seeds"] = (_csv(apart, root / "apart.csv"), ["--by", "activation", "--baseline", "before"],
                                "cell activation='relu': arms placement='before' and placement='after' share no seed")
    pct = df.assign(test_acc=[f"{100 * a:.1f}%" for a in df["test_acc"]])
    cases["non-numeric"] = (_csv(pct, root / "pct.csv"), ["--by", "activation"],
                            "--metric 'test_acc' is not numeric: values like '84.0%', '85.0%', '85.4%' in row\\(s\\) \\[1, 2, 3, 4, 5\\] and 11 more")
    cases["missing column"] = (_csv(df, root / "ok.csv"), ["--metric", "test/acc"],
                               "--metric 'test/acc': no such column in .*; its columns: \\['seed', 'placement', "
                               "'activation', 'lr', 'test_acc', 'test_loss'\\]")
    (root / "empty.csv").write_text("")
    cases["empty"] = (root / "empty.csv", [], "empty.csv': empty file")
    _online_wandb_run(root / "nosummary", "abc123", {"seed": 0, "placement": "before"}, None)
    cases["wandb no summary"] = (root / "nosummary" / "wandb", [],
                                 "W&B run folder with no summary \\(no files/wandb-summary.json and no run-\\*.wandb log\\)")
    return cases


BAD = ["duplicate", "no shared seeds", "non-numeric", "missing column", "empty", "wandb no summary"]


@pytest.mark.parametrize("case", BAD)
@pytest.mark.parametrize("command", ["import", "compare"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, case, command):
    src, args, pattern = _bad_sources(tmp_path)[case]
    out = tmp_path / "store"
    extra = ["--out", out] if command == "import" else []
    rc, text, err = _run(capsys, command, src, *extra, *args)
    assert rc == 2 and text == "" and err.count("\n") == 1, err
    assert err.startswith(f"bnstats {command}: error: ") and re.search(pattern, err), err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".store")]


def test_an_offline_run_that_logged_nothing_has_no_summary(wandb_runs, capsys, tmp_path):
    rc, _, err = _run(capsys, "import", wandb_runs[2], "--out", tmp_path / "s")
    assert rc == 2 and "W&B run folder with no summary (files/wandb-summary.json is missing and its run-*.wandb " \
                      "log holds no logged value)" in err


def test_reimport_same_is_a_no_op_another_source_or_mapping_is_refused(tmp_path, capsys):
    a, b = _csv(_runs(), tmp_path / "a.csv"), _csv(_runs().assign(lr=0.1), tmp_path / "b.csv")
    out = tmp_path / "runs"
    assert _run(capsys, "import", a, "--out", out, "--by", "activation")[0] == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    rc, text, _ = _run(capsys, "import", a, "--out", out, "--by", "activation")
    assert rc == 0 and "already imported" in text and before == {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    rc, _, err = _run(capsys, "import", b, "--out", out, "--by", "activation")
    assert rc == 2 and "holds runs imported from another source" in err and err.count("\n") == 1
    rc, _, err = _run(capsys, "import", a, "--out", out, "--by", "activation", "--metric", "test_loss")
    assert rc == 2 and "another mapping (metric: stored ['test_acc'], given ['test_loss'])" in err
    # a sweep cannot train into an imported store, and a store is not a source
    tiny = config.from_dict({"name": "x", "dataset": "mnist1d", "seeds": 2})
    with pytest.raises(ConfigError, match="holds imported runs"):
        Store.open(out, tiny)
    rc, _, err = _run(capsys, "import", out, "--out", tmp_path / "again")
    assert rc == 2 and "is a bnstats store already" in err
    rc, _, err = _run(capsys, "compare", out, "--seed", "seed")
    assert rc == 2 and "--seed: for a runs file or folder" in err


def test_a_missing_reader_names_the_extra(tmp_path, capsys, monkeypatch):
    _online_wandb_run(tmp_path, "abc", {"seed": 0, "placement": "before"}, {"test_acc": 0.9})
    real = importers.importlib.import_module

    def no_yaml(name, *a, **k):
        if name == "yaml":
            raise ModuleNotFoundError("No module named 'yaml'")
        return real(name, *a, **k)

    monkeypatch.setattr(importers.importlib, "import_module", no_yaml)
    rc, _, err = _run(capsys, "import", tmp_path / "wandb", "--out", tmp_path / "s")
    assert rc == 2 and err.count("\n") == 1
    assert "needs the package 'pyyaml', which is not installed: pip install 'bnstats[import]'" in err


def test_compare_takes_one_metric_and_a_baseline_that_is_a_level(tmp_path, capsys):
    src = _csv(_runs(), tmp_path / "r.csv")
    rc, _, err = _run(capsys, "compare", src, "--metric", "test_acc,test_loss")
    assert rc == 2 and "--metric: compare takes one metric" in err
    rc, _, err = _run(capsys, "compare", src.with_suffix(".txt"))
    assert rc == 2 and "does not exist (not a bnstats sweep" in err
    rc, _, err = _run(capsys, "compare", src, "--baseline", "sideways", "--by", "activation")
    assert rc == 2 and "--baseline 'sideways': not a level of 'placement'; levels: ['after', 'before']" in err


# -------------------------------------------------------------------------------------------------
# The README's worked examples, run as written


def _readme_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("## Runs you already have")
    return text[start:text.index("\n## ", start + 1)]


def test_readme_examples_run_as_written(wandb_runs, tb_runs, tmp_path, capsys, monkeypatch):
    section = _readme_section()
    commands = [ln for ln in re.search(r"```bash\n(.*?)```", section, re.S).group(1).splitlines()
                if ln.startswith("bnstats ")]
    toml = re.search(r"```toml\n# mapping.toml\n(.*?)```", section, re.S).group(1)
    kinds = {re.sub(r"\s+#.*", "", c).split()[2] for c in commands}
    assert {"results.csv", "results.parquet", "results.jsonl", "wandb_export.csv", "wandb", "tb"} <= kinds
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mapping.toml").write_text(toml)
    df = _runs()
    df.to_csv("results.csv", index=False)
    df.to_parquet("results.parquet", index=False)
    df.to_json("results.jsonl", orient="records", lines=True)
    _wandb_export(tmp_path / "wandb_export.csv", df)
    shutil.copytree(wandb_runs[0], "wandb", symlinks=True)
    shutil.copytree(tb_runs, "tb")
    for c in commands:
        rc, out, err = _run(capsys, *shlex.split(c, comments=True)[1:])
        assert rc == 0, f"{c}: {err}"
        assert out.strip(), c
    assert (tmp_path / "runs" / "wandb" / "tables" / "curves.parquet").is_file()
    assert set(store.load("runs/tb").runs["placement"]) == set(ARMS)


def test_tf2_scalars_stored_as_tensors_are_read_too(tmp_path):
    """TF2's ``tf.summary.scalar`` writes a 0-d float32 tensor with the scalars plugin's metadata (not a
    ``simple_value``); written here with TensorBoard's own event writer and protos, as TF2 does."""
    pytest.importorskip("tensorboard")
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.scalar import metadata
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    from tensorboard.util import tensor_util

    for arm, shift in (("a", 0.0), ("b", 0.25)):
        for s in range(2):
            w = EventFileWriter(str(tmp_path / "tf2" / f"arm={arm}" / f"seed={s}"))
            for step in range(3):
                value = summary_pb2.Summary.Value(
                    tag="acc", tensor=tensor_util.make_tensor_proto(0.5 + 0.125 * step + shift, dtype="float32"),
                    metadata=metadata.create_summary_metadata(display_name="", description=""))
                w.add_event(event_pb2.Event(wall_time=1.0e9 + step, step=step, summary=summary_pb2.Summary(value=[value])))
            w.close()
    imp = importers.read(tmp_path / "tf2", importers.mapping(factor="arm", metric="acc", baseline="a"))
    assert sorted(imp.runs["acc"]) == [0.75, 0.75, 1.0, 1.0]  # exact in float32: the last step of each run
    assert imp.curves.groupby("run_id")["acc"].apply(list).map(lambda v: v[0] in (0.5, 0.75)).all()
    np.testing.assert_array_equal(stats.compare(imp.runs, "acc", "arm", "a")["estimate"], [0.25])
