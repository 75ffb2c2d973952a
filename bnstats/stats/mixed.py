"""Linear mixed model over a factorial sweep: :func:`mixed`."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf

from . import _validate as v
from ._results import ResultMixin, clean_caveat, join_caveats


@dataclasses.dataclass(frozen=True, eq=False)
class MixedResult(ResultMixin):
    """Result of :func:`mixed`.

    ``coef`` is a DataFrame with columns ``term``, ``estimate``, ``se``, ``z``, ``ci_low``, ``ci_high``,
    ``p``, ``confidence_level``. ``to_dict()`` gives the scalar fields (not ``coef``); ``to_frame()``
    gives ``coef`` with ``formula`` and ``converged`` repeated on each row and ``warnings`` joined one per
    line (read it back with :func:`bnstats.stats.caveat_list`).
    """

    formula: str
    groups: str
    method: str
    reml: bool
    n_obs: int
    n_groups: int
    converged: bool
    log_likelihood: float
    group_var: float
    residual_var: float
    confidence_level: float
    warnings: tuple[str, ...]
    coef: pd.DataFrame

    def to_frame(self) -> pd.DataFrame:
        out = self.coef.copy()
        out.insert(0, "formula", self.formula)
        out["converged"] = self.converged
        out["warnings"] = join_caveats(self.warnings)
        return out


def mixed(runs, formula="test_acc ~ placement * activation", groups="seed", *, reml=True,
          confidence_level=0.95, method=None) -> MixedResult:
    """Linear mixed model with a random intercept per seed (statsmodels ``MixedLM``).

    Parameters
    ----------
    runs : pandas.DataFrame
        One row per run.
    formula : str
        Patsy formula of the fixed effects, e.g. ``"test_acc ~ placement * activation"``. Categorical
        terms use treatment coding with the first level (sorted) as reference; write
        ``C(placement, Treatment("before"))`` to choose it.
    groups : str
        Column of the random intercept (the seed).
    reml : bool
        REML (default) or maximum likelihood.
    confidence_level : float
        Of the Wald intervals in ``coef``.
    method : str, list of str or None
        Optimizer(s) passed to ``MixedLM.fit(method=...)``; ``None`` is statsmodels' default.

    Returns
    -------
    MixedResult
        ``coef`` (term, estimate, se, z, ci_low, ci_high, p), ``converged``, ``log_likelihood``,
        ``group_var`` (random-intercept variance), ``residual_var``, and every warning statsmodels
        raised during the fit, as strings in ``warnings`` (never re-raised).

    Notes
    -----
    Model: ``y_ij = x_ij' β + u_j + ε_ij``, ``u_j ~ N(0, σ_u²)`` per seed j, ``ε_ij ~ N(0, σ²)``.
    Standard errors from the inverse information of the (RE)ML fit; intervals and p-values are Wald
    (normal) ones, as statsmodels reports them: ``β̂ ± z_{1−α/2} se``. With few seeds they are
    anti-conservative; the paired t of :func:`compare` stays the primary analysis of a single contrast.

    References
    ----------
    Laird, N. M., Ware, J. H. (1982). Random-effects models for longitudinal data. *Biometrics* 38(4).
    Pinheiro, J. C., Bates, D. M. (2000). *Mixed-Effects Models in S and S-PLUS*. Springer.
    """
    if not isinstance(formula, str) or "~" not in formula:
        raise ValueError(f"formula must be a str like 'test_acc ~ placement * activation'; got {formula!r}")
    v.frame("runs", runs, [groups])
    v.boolean("reml", reml)
    cl = v.probability("confidence_level", confidence_level)
    data = runs.reset_index(drop=True)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        model = smf.mixedlm(formula, data, groups=data[groups])
        fit = model.fit(reml=reml, method=method) if method is not None else model.fit(reml=reml)
        # reading SEs / p-values of a singular fit warns too: keep it inside the capture
        names = list(fit.fe_params.index)
        ci = fit.conf_int(alpha=1 - cl).loc[names]
        coef = pd.DataFrame({
            "term": names,
            "estimate": fit.fe_params.to_numpy(dtype=float),
            "se": fit.bse_fe.to_numpy(dtype=float),
            "z": fit.tvalues.loc[names].to_numpy(dtype=float),
            "ci_low": ci.iloc[:, 0].to_numpy(dtype=float),
            "ci_high": ci.iloc[:, 1].to_numpy(dtype=float),
            "p": fit.pvalues.loc[names].to_numpy(dtype=float),
            "confidence_level": cl,
        })
        llf = float(fit.llf)
        group_var = float(np.asarray(fit.cov_re)[0, 0])
    msgs = []
    for w in rec:
        m = clean_caveat(f"{w.category.__name__}: {w.message}")
        if m not in msgs:
            msgs.append(m)
    return MixedResult(
        formula=formula, groups=groups, method="REML" if reml else "ML", reml=bool(reml),
        n_obs=int(fit.nobs), n_groups=int(len(model.group_labels)), converged=bool(fit.converged),
        log_likelihood=llf, group_var=group_var,
        residual_var=float(fit.scale), confidence_level=cl, warnings=tuple(msgs), coef=coef,
    )
