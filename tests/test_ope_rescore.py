"""Re-scoring a stored OPE accuracy record (mtf.loop.ope_benchmark.rescore_world): the ensemble
gate and model selection recomputed from the stored members, on a hand-built world."""
from __future__ import annotations

import dataclasses

import pytest

from mtf.loop.ope_benchmark import rescore_world
from mtf.ope.config import EnsembleConfig


def world() -> dict:
    # Members of V(pi) for 3 policies (logging 5.0 everywhere): iql's diffs 0.5, 1.0, 1.5
    # (mean 1, sd 0.5 = 10% of logging), td3's 0.0, 2.0, 4.0 (mean 2, sd 2 = 40%).
    members = {"logging": [5.0, 5.0, 5.0], "iql": [5.5, 6.0, 6.5], "td3": [5.0, 7.0, 9.0]}
    truth = {"logging": {"mean": 5.0}, "iql": {"mean": 5.3}, "td3": {"mean": 4.0}}
    return {"policies": list(members), "ensemble_members": members, "ensemble_backups": 8,
            "truth": truth, "metrics": {"fqe_ensemble": {"spearman": 1.0}},
            "go": {"fqe_ensemble": {}, "conservative_fqe": {"iql": True, "td3": True}}}


def test_the_spread_guard_stops_the_disagreeing_learner_and_selection_follows() -> None:
    out = rescore_world(world(), EnsembleConfig())                  # max_spread 0.12
    assert out["go"]["fqe_ensemble"] == {"iql": True, "td3": False}
    assert out["go"]["conservative_fqe"] == {"iql": True, "td3": True}   # kept as stored
    row = out["metrics"]["fqe_ensemble"]
    assert row["spearman"] == 1.0                                   # other metrics kept
    assert row["gate"] == {"better": {"go": 1, "no_go": 0}, "neutral": {"go": 0, "no_go": 0},
                           "worse": {"go": 0, "no_go": 1}}
    assert row["selection"] == {"chosen": "iql", "best": "iql", "regret": 0.0}


def test_without_the_guard_the_larger_lower_quantile_wins_and_costs_regret() -> None:
    # td3: 10% quantile of the diff 2 - 1.2816 * 2 = -0.56 <= -0.05: still NO-GO; with a
    # looser quantile it passes and, with the higher lower value of V (7 - z * 2 > 6 - z * 0.5
    # for z = 0.2533 at q = 0.4), model selection picks it: regret (5.3 - 4.0) / 5 = 0.26.
    off = dataclasses.replace(EnsembleConfig(), max_spread=0.0)
    assert rescore_world(world(), off)["go"]["fqe_ensemble"] == {"iql": True, "td3": False}
    loose = dataclasses.replace(off, lower_quantile=0.4)
    out = rescore_world(world(), loose)
    assert out["go"]["fqe_ensemble"] == {"iql": True, "td3": True}
    assert out["metrics"]["fqe_ensemble"]["selection"]["chosen"] == "td3"
    assert out["metrics"]["fqe_ensemble"]["selection"]["regret"] == pytest.approx(0.26)
