"""Intervals, paired differences and the go / no-go rule on hand-made sums and estimates."""
from __future__ import annotations

import numpy as np
import pytest

from mtf.ope.config import ESTIMATORS, OpeConfig
from mtf.ope.results import Estimate, PolicyEstimates, decide


def policy(name: str, cons: float, diff_low: float, penalty: float = 0.0,
           ess: float = 500.0) -> PolicyEstimates:
    est = {e: Estimate(e, cons, cons - 0.1, cons + 0.1, 0.05) for e in ESTIMATORS}
    diff = {e: Estimate(e, diff_low + 0.1, diff_low, diff_low + 0.2, 0.05) for e in ESTIMATORS}
    diag = {"conservative_penalty": penalty, "ess_trajectory": ess, "n_sessions_is": 1000.0,
            "clipped_share": 0.0}
    return PolicyEstimates(name, est, diff if name != "logging" else {}, diag)


CFG = OpeConfig(go_margin=0.01, max_penalty=0.1)


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
    cfg = OpeConfig(max_penalty=0.0)
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
    with pytest.raises(ValueError, match="conservative estimate of 'logging' is not available"):
        decide([nan, policy("cand", 5.0, 0.1)], CFG)
