"""Synthetic sweeps for the statistics tests (built here, no store needed)."""

import numpy as np
import pandas as pd

SHIFT = {"before": 0.0, "after": 0.01, "none": -0.02}


def make_runs(seeds=range(10), rng=0):
    g = np.random.default_rng(rng)
    rows = []
    for arch in ("cnn", "mlp"):
        for act in ("relu", "tanh"):
            seed_effect = {s: g.normal(0, 0.004) for s in seeds}
            for placement in ("before", "after", "none"):
                for s in seeds:
                    acc = 0.9 + seed_effect[s] + SHIFT[placement] + g.normal(0, 0.002)
                    rows.append({
                        "run_id": f"{arch}-{act}-{placement}-{s}", "seed": s, "dataset": "mnist1d", "arch": arch,
                        "placement": placement, "activation": act, "test_acc": acc, "test_loss": 1.0 - acc,
                        "train_loss": 0.9 - acc, "diverged": False,
                    })
    return pd.DataFrame(rows)


def make_moments(runs, rng=1):
    g = np.random.default_rng(rng)
    rows = []
    for r in runs.itertuples():
        sites = ["act_out"] if r.placement == "none" else ["norm_in", "act_out"]
        for epoch in (0, 1, 2):
            for source in ("train", "probe"):
                for layer in (0, 1):
                    for site in sites:
                        skew = 50 * (r.test_acc - 0.9) + g.normal(0, 0.05) if layer == 0 else g.normal(0, 1)
                        rows.append({"run_id": r.run_id, "epoch": epoch, "step": 100 * (epoch + 1), "source": source,
                                     "layer": layer, "site": site, "mean": g.normal(), "var": 1 + g.random(),
                                     "skew": skew + epoch, "exkurt": g.normal(), "frac_zero": g.random()})
    return pd.DataFrame(rows)
