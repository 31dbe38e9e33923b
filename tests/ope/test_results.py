"""Intervals, paired differences and the go / no-go rule on hand-made sums and estimates."""
from __future__ import annotations

import dataclasses

from typing import TYPE_CHECKING

import numpy as np
import pytest

from mtf.ope.config import ESTIMATORS, OpeConfig
from mtf.ope.results import Estimate, PolicyEstimates, decide

if TYPE_CHECKING:
    from mtf.ope.ensemble import EnsembleFit


def policy(name: str, cons: float, diff_low: float, penalty: float = 0.0,
           ess: float = 500.0) -> PolicyEstimates:
    est = {e: Estimate(e, cons, cons - 0.1, cons + 0.1, 0.05) for e in ESTIMATORS}
    diff = {e: Estimate(e, diff_low + 0.1, diff_low, diff_low + 0.2, 0.05) for e in ESTIMATORS}
    diag = {"conservative_penalty": penalty, "ess_trajectory": ess, "n_sessions_is": 1000.0,
            "clipped_share": 0.0}
    return PolicyEstimates(name, est, diff if name != "logging" else {}, diag)


CFG = OpeConfig(go_margin=0.01, max_penalty=0.1, gate="conservative_fqe")   # the paper's gate


@pytest.mark.parametrize("diff_low, penalty, go", [
    (0.05, 0.0, True),       # better, supported
    (-0.04, 0.0, True),      # loses less than the margin (0.01 * 5 = 0.05)
    (-0.06, 0.0, False),     # may lose more than the margin
    (0.5, 0.6, False),       # looks better but the penalty (0.6 > 0.1 * 5) says extrapolation
    (0.5, 0.4, True),        # penalty within the guard
])
def test_go_needs_the_lower_bound_above_minus_margin_and_support(diff_low: float,
                                                                 penalty: float,
                                                                 go: bool) -> None:
    [d] = decide([policy("logging", 5.0, 0.0), policy("cand", 5.0, diff_low, penalty)], CFG)
    assert d.go is go
    assert d.margin == pytest.approx(0.05) and d.diff_low == pytest.approx(diff_low)
    assert ("support guard fails" in d.reason) is (diff_low > -0.05 and penalty > 0.5)


def test_guard_can_be_disabled() -> None:
    cfg = OpeConfig(max_penalty=0.0, gate="conservative_fqe")
    [d] = decide([policy("logging", 5.0, 0.0), policy("cand", 5.0, 0.5, penalty=3.0)], cfg)
    assert d.go


def test_weak_diagnostics_become_warnings() -> None:
    [d] = decide([policy("logging", 5.0, 0.0), policy("cand", 5.0, 0.1, ess=3.0)], CFG)
    assert d.go and any("effective sample of 3.0" in w for w in d.warnings)


def test_no_decision_without_a_logging_reference() -> None:
    with pytest.raises(ValueError, match="compares with the logging policy 'logging'"):
        decide([policy("cand", 5.0, 0.1)], CFG)
    nan = policy("logging", 5.0, 0.0)
    nan.estimates["conservative_fqe"] = Estimate("conservative_fqe", np.nan, np.nan, np.nan,
                                                 np.nan, available=False, note="no initial state")
    with pytest.raises(ValueError, match="conservative_fqe estimate of 'logging' is not available"):
        decide([nan, policy("cand", 5.0, 0.1)], CFG)


def _ensemble_fit(values: list[list[float]], history_moves: bool = False,
                  support: np.ndarray | None = None) -> "EnsembleFit":
    from mtf.ope.ensemble import EnsembleFit

    history = np.ones((8, len(values)))
    if history_moves:
        history[-1, 1] = 2.0          # the candidate's value still moved: not converged
    # the 10% quantile (z = 1.2816) keeps the hand-computed bounds below readable
    settings = dataclasses.replace(OpeConfig().ensemble, lower_quantile=0.1)
    return EnsembleFit(["logging", "cand"], np.array(values), history, backups=8, steps=400,
                       seconds=0.0, settings=settings, support=support)


def test_ensemble_rows_join_the_results_with_paired_intervals() -> None:
    from mtf.ope.config import ENSEMBLE
    from mtf.ope.results import with_ensemble

    fit = _ensemble_fit([[5.0, 5.2, 5.4], [5.3, 5.4, 5.8]])   # diffs 0.3, 0.2, 0.4
    out = with_ensemble([policy("logging", 5.0, 0.0), policy("cand", 5.0, 0.1)], fit, CFG)
    ref, cand = out
    z95, z90 = 1.959963984540054, 1.2815515655446004
    assert ref.estimates[ENSEMBLE].value == pytest.approx(5.2)
    assert ref.estimates[ENSEMBLE].ci_low == pytest.approx(5.2 - z95 * 0.2)
    assert ENSEMBLE not in ref.diff_vs_logging
    d = cand.diff_vs_logging[ENSEMBLE]
    assert d.value == pytest.approx(0.3) and d.std_err == pytest.approx(0.1)
    assert (d.ci_low, d.ci_high) == pytest.approx((0.3 - z95 * 0.1, 0.3 + z95 * 0.1))
    assert cand.diagnostics["ensemble_diff_lower"] == pytest.approx(0.3 - z90 * 0.1)
    assert cand.diagnostics["ensemble_converged"] == 1.0
    assert set(cand.estimates) == {*ESTIMATORS, ENSEMBLE}     # the others are kept


@pytest.mark.parametrize("values, go", [
    ([[5.0, 5.2, 5.4], [5.3, 5.4, 5.8]], True),      # lower quantile of the diff 0.17 > -0.052
    ([[5.0, 5.2, 5.4], [4.6, 5.3, 5.4]], False),     # diffs -0.4, 0.1, 0: 0.1 quantile -0.44
])
def test_the_ensemble_gate_decides_on_its_lower_quantile(values: list[list[float]],
                                                         go: bool) -> None:
    from mtf.ope.results import with_ensemble

    cfg = OpeConfig(go_margin=0.01, gate="fqe_ensemble")
    rows = with_ensemble([policy("logging", 5.0, 0.0), policy("cand", 5.0, -1.0, penalty=9.0)],
                         _ensemble_fit(values), cfg)
    [d] = decide(rows, cfg)
    assert d.go is go and d.estimator == "fqe_ensemble"
    assert d.margin == pytest.approx(0.01 * 5.2)         # of the ensemble's logging value
    assert d.diff_low == pytest.approx(rows[1].diagnostics["ensemble_diff_lower"])
    assert "quantile of the ensemble" in d.reason


def test_the_spread_guard_stops_members_that_agree_only_on_a_large_mean() -> None:
    """Diffs 1, 2, 3 (mean 2, sd 1): the 10% quantile 0.72 passes the bound, but the members'
    sd is 1 / 5 = 20% of the logging value, above the 12% cap; with the guard off it is GO."""
    import dataclasses

    from mtf.ope.results import with_ensemble
    from mtf.ope.rules import ensemble_go

    assert ensemble_go(0.5, 0.12, 0.05, 0.12) and not ensemble_go(0.5, 0.1201, 0.05, 0.12)
    assert ensemble_go(0.5, 9.0, 0.05, 0.0) and not ensemble_go(-0.06, 0.0, 0.05, 0.12)
    cfg = OpeConfig(go_margin=0.01, gate="fqe_ensemble")
    assert cfg.ensemble.max_spread == 0.12
    fit = _ensemble_fit([[5.0, 5.0, 5.0], [6.0, 7.0, 8.0]])
    rows = with_ensemble([policy("logging", 5.0, 0.0), policy("cand", 5.0, 0.1)], fit, cfg)
    assert rows[1].diagnostics["ensemble_spread"] == pytest.approx(0.2)
    assert rows[1].diagnostics["ensemble_diff_lower"] == pytest.approx(2.0 - 1.2815515655446004)
    [d] = decide(rows, cfg)
    assert not d.go and "spread guard fails" in d.reason and "20%" in d.reason
    off = dataclasses.replace(cfg, ensemble=dataclasses.replace(cfg.ensemble, max_spread=0.0))
    [d_off] = decide(with_ensemble([policy("logging", 5.0, 0.0), policy("cand", 5.0, 0.1)],
                                   dataclasses.replace(fit, settings=off.ensemble), off), off)
    assert d_off.go
    with pytest.raises(ValueError, match="max_spread must be >= 0"):
        dataclasses.replace(cfg.ensemble, max_spread=-0.1)


def test_an_unconverged_ensemble_and_a_disagreeing_one_are_warnings() -> None:
    from mtf.ope.results import with_ensemble

    rows = with_ensemble([policy("logging", 5.0, 0.0), policy("cand", 5.0, 0.1)],
                         _ensemble_fit([[5.0, 5.2, 5.4], [4.6, 5.3, 5.4]], True), CFG)
    [d] = decide(rows, CFG)              # the conservative gate says GO, the ensemble NO-GO
    assert d.go
    assert any("FQE ensemble disagrees" in w for w in d.warnings)
    assert any("not converged" in w for w in d.warnings)


def test_the_gate_setting_is_validated() -> None:
    with pytest.raises(ValueError, match="ope.gate must be one of"):
        OpeConfig(gate="pdis")
    with pytest.raises(ValueError, match="needs ope.ensemble.members"):
        OpeConfig(gate="fqe_ensemble", ensemble=OpeConfig().ensemble.__class__(members=0))


def test_model_selection_takes_the_go_candidate_with_the_best_pessimistic_value() -> None:
    from mtf.ope.rules import select_policy

    rows = [policy("logging", 5.0, 0.0), policy("a", 5.3, 0.1), policy("b", 5.6, 0.2),
            policy("c", 6.0, -1.0)]
    decisions = decide(rows, CFG)                      # a, b: GO; c: NO-GO (bound -1.0)
    assert [d.go for d in decisions] == [True, True, False]
    assert select_policy(rows, decisions) == "b"       # c is higher but not GO
    assert select_policy(rows, decisions, ["a", "c"]) == "a"
    assert select_policy(rows, decisions, ["c"]) is None


def test_the_support_guard_stops_a_policy_the_logged_actions_do_not_reach() -> None:
    """The bound passes (diffs 0.3, 0.2, 0.4), but only 20% of the candidate's actions have a
    logged action nearby (< min_support 30%): NO-GO with the reason; at 30% it is GO."""
    from mtf.ope.results import with_ensemble
    from mtf.ope.rules import ensemble_go

    assert ensemble_go(0.5, 0.0, 0.05, 0.0, 0.3, 0.3) and not ensemble_go(0.5, 0.0, 0.05, 0.0,
                                                                           0.29, 0.3)
    assert ensemble_go(0.5, 0.0, 0.05, 0.0, None, 0.3)         # not measured: no guard
    assert ensemble_go(0.5, 0.0, 0.05, 0.0, 0.0, 0.0)          # min_support 0: off
    cfg = OpeConfig(go_margin=0.01, gate="fqe_ensemble")
    assert cfg.ensemble.min_support == 0.0                     # off by default
    cfg = dataclasses.replace(cfg, ensemble=dataclasses.replace(cfg.ensemble, min_support=0.3))
    values = [[5.0, 5.2, 5.4], [5.3, 5.4, 5.8]]
    for share, go in ((0.2, False), (0.3, True)):
        fit = _ensemble_fit(values, support=np.array([1.0, share]))
        rows = with_ensemble([policy("logging", 5.0, 0.0), policy("cand", 5.0, 0.1)], fit, cfg)
        assert rows[1].diagnostics["ensemble_support"] == pytest.approx(share)
        [d] = decide(rows, cfg)
        assert d.go is go
        assert ("support guard fails" in d.reason) is (not go)
    with pytest.raises(ValueError, match="min_support must be in"):
        dataclasses.replace(cfg.ensemble, min_support=1.5)
