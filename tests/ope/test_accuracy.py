"""OPE accuracy metrics (DOPE definitions) on hand-built cases with exact values."""
from __future__ import annotations

import math

import pytest

from mtf.ope.accuracy import (coverage, estimator_accuracy, gate_confusion, pairwise_accuracy,
                              regret_at_1, relative_mae, share_at_or_below, true_class)

TRUE = [4.0, 4.5, 5.0, 3.0]        # policies a, b, c, d


def test_regret_at_1_is_the_true_loss_of_the_top_ranked_policy_over_the_spread() -> None:
    assert regret_at_1([0.0, 0.0, 9.0, 0.0], TRUE) == 0.0           # c ranked first: the best
    assert regret_at_1([1.0, 9.0, 0.0, 0.0], TRUE) == pytest.approx(0.5 / 2.0)   # b: 0.5 lost
    assert regret_at_1([0.0, 0.0, 0.0, 9.0], TRUE) == 1.0           # d: the worst
    assert regret_at_1([1.0, 1.0], [2.0, 2.0]) == 0.0               # no spread
    assert regret_at_1([5.0, 5.0, 1.0, 1.0], TRUE) == pytest.approx(0.5)   # tie: first listed


def test_pairwise_accuracy_counts_only_pairs_apart_by_more_than_the_gap() -> None:
    # pairs apart by > 0.6: (a,c)=1.0, (a,d)=1.0, (b,d)=1.5, (c,d)=2.0; (a,b), (b,c) are 0.5.
    est = [4.0, 5.0, 4.9, 3.5]        # orders (a,c) right, (a,d) right, (b,d) right, (c,d) right
    assert pairwise_accuracy(est, TRUE, 0.6) == (1.0, 4)
    est = [4.0, 5.0, 3.9, 3.5]        # (a,c) wrong, (c,d) right, others right
    assert pairwise_accuracy(est, TRUE, 0.6) == (0.75, 4)
    est = [4.0, 5.0, 4.0, 3.5]        # (a,c) estimated tie: wrong
    assert pairwise_accuracy(est, TRUE, 0.6) == (0.75, 4)
    acc, n = pairwise_accuracy([1.0, 2.0], [1.0, 1.001], 0.01)
    assert math.isnan(acc) and n == 0


def test_error_pessimism_and_coverage_shares() -> None:
    assert relative_mae([4.4, 4.5, 4.6, 3.0], TRUE, 4.0) == pytest.approx((0.4 + 0.4) / 4 / 4)
    assert share_at_or_below([4.0, 4.6, 4.9, 3.1], TRUE) == 0.5       # a (equal) and c
    assert coverage([3.9, 4.6, 4.0, 2.0], [4.1, 4.7, 5.0, 2.9], TRUE) == 0.5
    with pytest.raises(ValueError, match="non-zero"):
        relative_mae([1.0], [1.0], 0.0)
    with pytest.raises(ValueError, match="equal-length"):
        share_at_or_below([1.0, 2.0], [1.0])


def test_gate_confusion_uses_a_dead_zone_around_the_logging_value() -> None:
    assert true_class(0.05, 0.04) == "better"
    assert true_class(-0.05, 0.04) == "worse"
    assert true_class(0.04, 0.04) == "neutral"
    got = gate_confusion({"up": True, "down": True, "flat": False, "up2": False},
                         {"up": 0.5, "down": -0.5, "flat": 0.01, "up2": 0.2}, 0.04)
    assert got == {"better": {"go": 1, "no_go": 1}, "neutral": {"go": 0, "no_go": 1},
                   "worse": {"go": 1, "no_go": 0}}


def test_estimator_accuracy_bundles_every_metric_for_one_world() -> None:
    truth = {"logging": 4.0, "b": 4.5, "c": 5.0, "d": 3.0}
    names = ["logging", "b", "c", "d"]
    out = estimator_accuracy(names, [4.1, 4.4, 5.5, 3.2], truth, reference="logging",
                             low=[3.9, 4.3, 5.2, 2.9], high=[4.2, 4.6, 5.8, 3.1],
                             pessimistic=[3.9, 4.3, 5.2, 2.9],
                             go={"b": True, "c": True, "d": False})
    assert out["spearman"] == pytest.approx(1.0) and out["regret_at_1"] == 0.0
    assert out["pairwise_accuracy"] == 1.0 and out["n_pairs"] == 6      # gap 0.04: all pairs
    assert out["relative_mae"] == pytest.approx((0.1 + 0.1 + 0.5 + 0.2) / 4 / 4.0)
    assert out["share_at_or_below_truth"] == 0.75                         # c's 5.2 > 5.0
    assert out["coverage"] == 0.75                                         # all but c
    assert out["gate"] == {"better": {"go": 2, "no_go": 0}, "neutral": {"go": 0, "no_go": 0},
                           "worse": {"go": 0, "no_go": 1}}
    same = estimator_accuracy(names, [4.0, 4.0, 4.0, 4.0], truth, reference="logging")
    assert same["spearman"] is None                # undefined for constant estimates: null
    assert "coverage" not in same and "gate" not in same
