"""Planning from a pilot: direction of the effect, attainable-p floors that match paired(), the pilot's
uncertainty (issue 19 item 5). R 4.2.2 reference values (``options(digits=17)``), code beside each."""

import numpy as np
import pandas as pd
import pytest

from bnstats import stats
from bnstats.stats.power import min_p_wilcoxon, sd_interval, wilcoxon_method


def _pilot(diffs, base=900):
    rows = []
    for s, k in enumerate(diffs):
        for arm, c in (("before", base + s), ("after", base + s + k)):
            rows.append({"run_id": f"{arm}{s}", "seed": s, "placement": arm, "test_acc": c / 1000, "test_correct": c,
                         "n_test": 1000})
    return pd.DataFrame(rows)


@pytest.mark.parametrize(("diffs", "effect", "r_sd", "r_n"), [
    # pil <- c(3,4,6)/1000; s <- sd(pil); n <- 3; s*sqrt((n-1)/qchisq(c(0.975, 0.025), n-1))
    # -> 0.00152752523165194682 0.00079531863945061219 0.00960009082311986083
    # for (sdv in c(s, ci)) print(power.t.test(delta=0.004, sd=sdv, power=0.8, type="paired")$n)
    # -> 3.4225778356434562 2.4861044074688783 47.167187239468539
    ([3, 4, 6], 0.004, (0.00152752523165194682, 0.00079531863945061219, 0.00960009082311986083), (4, 3, 48)),
    # pil <- c(11,4,6,2,4,4,7,10)/1000 ... delta=0.002
    # -> sd 0.0031622776601683794, CI 0.0020908162403301925 0.0064360954650383162; n 21.62 10.66 83.22
    ([11, 4, 6, 2, 4, 4, 7, 10], 0.002, (0.0031622776601683794, 0.0020908162403301925, 0.0064360954650383162),
     (22, 11, 84)),
])
def test_plan_shows_the_pilot_sd_interval_and_seeds_at_its_ends(diffs, effect, r_sd, r_n):
    # Old code: exact seed counts from a 3-seed pilot, no interval, no caveat.
    row = stats.plan(_pilot(diffs), factors=["placement"], effect=effect).iloc[0]
    np.testing.assert_allclose([row.sd_diff, row.sd_diff_ci_low, row.sd_diff_ci_high], r_sd, rtol=1e-12)
    assert (row.seeds_for_power, row.seeds_for_power_low, row.seeds_for_power_high) == r_n
    assert (row.n_planned, row.n_planned_low, row.n_planned_high) == r_n
    assert row.differences == "counts" and row.sd_confidence_level == 0.95
    assert any(c.startswith(f"pilot of {len(diffs)} seeds (< 10)") and f"range from {r_n[1]} to {r_n[2]}" in c
               for c in stats.caveat_list(row.caveats))
    assert sd_interval(r_sd[0], len(diffs)) == pytest.approx(r_sd[1:], rel=1e-12)


def test_no_small_pilot_caveat_from_ten_seeds():
    g = np.random.default_rng(3)
    row = stats.plan(_pilot(g.integers(-2, 9, size=12).tolist()), factors=["placement"], halfwidth=0.002).iloc[0]
    assert not any("pilot of" in c for c in stats.caveat_list(row.caveats))
    assert row.seeds_for_halfwidth_low <= row.seeds_for_halfwidth <= row.seeds_for_halfwidth_high


def test_effect_on_the_side_the_alternative_cannot_detect_is_an_error():
    # Old code planned |effect| whatever its sign.
    with pytest.raises(ValueError, match=r"effect=-0.002 lies on the side alternative='greater' cannot detect"):
        stats.seeds_needed(0.003, -0.002, alternative="greater")
    with pytest.raises(ValueError, match=r"effect=0.002 lies on the side alternative='less' cannot detect"):
        stats.plan(_pilot([3, 4, 6, 1]), factors=["placement"], effect=0.002, alternative="less")
    assert stats.seeds_needed(0.003, -0.002, alternative="less") == stats.seeds_needed(0.003, 0.002, alternative="greater")


def test_planned_wilcoxon_floor_is_the_test_paired_will_run():
    # paired() resolves Wilcoxon to the normal approximation above 50 untied differences, so the planned
    # floor at n = 60 is that test's: wilcox.test(1:60, exact=FALSE, correct=FALSE)$p.value
    # -> 1.6295557943119332e-11 (old code: the exact floor 2**-59 = 1.7e-18).
    assert wilcoxon_method(60, ties=False, n_resamples=9999) == "approx"
    assert min_p_wilcoxon(60) == pytest.approx(1.6295557943119332e-11, rel=1e-9)
    r = stats.paired(np.zeros(60), np.arange(1.0, 61.0), n_resamples=99)
    assert r.wilcoxon_method == "approx" and r.p_wilcoxon == min_p_wilcoxon(60)
    assert min_p_wilcoxon(50) == 2.0**-49 and wilcoxon_method(50, ties=False, n_resamples=9999) == "exact"
    row = stats.plan(_pilot([3, 4, 6, 1, 2, 5]), factors=["placement"], effect=0.0005).iloc[0]
    assert row.n_planned > 50 and row.wilcoxon_method_planned == "approx"
    assert row.min_p_wilcoxon_planned == min_p_wilcoxon(int(row.n_planned))
    assert row.min_p_signflip_planned == pytest.approx(2 / 10000)  # Monte Carlo beyond log2(9999)
    # the pilot's own floors follow its ties: [3,4,6,1,2,5] has none -> exact, 2**-5
    assert row.wilcoxon_method_pilot == "exact" and row.min_p_wilcoxon_pilot == 2.0**-5
