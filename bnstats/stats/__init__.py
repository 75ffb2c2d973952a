"""Paired statistics for seed-paired sweeps.

Public API::

    paired(a, b, ...)                 -> PairedResult        d = b - a, paired by position
    compare(runs, metric, factor, baseline, ...) -> DataFrame  one row per cell x arm, family decisions
    describe(runs, metric, factor, ...)          -> DataFrame  per cell x arm summaries
    evaluation_runs(runs)             -> (DataFrame, DataFrame | None)  evaluation and tuning runs (stage)
    crossed(correct_a, correct_b, ...) -> CrossedResult      interval over seeds and test examples
    compare_crossed(runs, ...)        -> DataFrame           crossed() per cell x arm (bit-packed results)
    pack_correct(bools) / unpack_correct(bits, n)            the bit layout of test_correct_bits
    adjust(pvalues, method)           -> ndarray             R's p.adjust (holm | bh | bonferroni)
    seeds_needed(sd_diff, effect, ...) -> int                R's power.t.test(type="paired"), rounded up
    seeds_for_halfwidth(sd_diff, halfwidth, ...) -> int
    plan(runs, ...)                   -> DataFrame           seeds per comparison from a pilot
    min_p(n, test=...)                -> float               smallest attainable p
    mixed(runs, formula, groups)      -> MixedResult         random intercept per seed
    variance_ratio(a, b, ...)         -> VarianceRatioResult Pitman-Morgan paired variance test
    association(moments, runs, ...)   -> DataFrame           moment vs metric across seeds
    paired_association(moments, runs, ...) -> DataFrame      delta-moment vs delta-metric
    VERDICTS                                                 every verdict label, rules in decision.verdict
    caveat_list(cell)                 -> list[str]           the caveats of a frame cell

Caveats are a tuple of str on every result object. In frames, a row's caveats are one string with one
caveat per line (no caveat contains a line break); :func:`caveat_list` turns a cell back into the list.

All randomness comes from ``rng`` through ``np.random.default_rng(rng)``; ``rng=None`` means the fixed
:data:`DEFAULT_SEED`, so the same inputs give the same bytes.
"""

from ._results import DEFAULT_SEED, caveat_list
from .association import association, correlation, paired_association
from .compare import COUNT_COLUMNS, compare, describe, evaluation_runs, plan
from .crossed import CrossedResult, compare_crossed, crossed, pack_correct, unpack_correct
from .decision import VERDICTS
from .mixed import MixedResult, mixed
from .multiplicity import adjust
from .paired import PairedResult, paired
from .power import min_p, seeds_for_halfwidth, seeds_needed
from .variance import VarianceRatioResult, variance_ratio

__all__ = [
    "COUNT_COLUMNS", "DEFAULT_SEED", "VERDICTS", "CrossedResult", "MixedResult", "PairedResult",
    "VarianceRatioResult", "adjust", "association", "caveat_list", "compare", "compare_crossed", "correlation",
    "crossed", "describe", "evaluation_runs", "min_p", "mixed", "pack_correct", "paired", "paired_association", "plan",
    "seeds_for_halfwidth", "seeds_needed", "unpack_correct", "variance_ratio",
]
