"""The report files: JSON without NaN, every estimate and interval, HTML with the plots."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import torch

from mtf.ope.config import ESTIMATORS, OpeConfig
from mtf.ope.evaluate import evaluate_arrays
from mtf.ope.policies import fixed_policy
from mtf.ope.report import write_report
from mtf.ope.truth import compare_with_truth
from tests.ope.tables import sessions


def test_report_round_trip_with_ground_truth(tmp_path) -> None:
    torch.set_num_threads(1)
    ope = OpeConfig(n_iterations=20, hidden=(8,), batch_size=32, log_every=10, n_bootstrap=30)
    policies = [fixed_policy("logging", [0.0, 0.0]), fixed_policy("far", [1.0, -1.0])]
    result = evaluate_arrays(sessions(60, seed=1), policies, ope, gamma=0.9, seed=0,
                             meta={"table_path": "mem", "table_version": 4, "split": "test",
                                   "action_tasks": ["click", "like"]})
    truth = {"logging": {"mean": 1.0, "ci_low": 0.9, "ci_high": 1.1, "std_err": 0.05},
             "far": {"mean": 0.2, "ci_low": 0.1, "ci_high": 0.3, "std_err": 0.05}}
    result = replace(result, truth=truth, validation=compare_with_truth(result.results, truth))
    paths = write_report(result, ope, str(tmp_path / "r1"), run_id="r1")
    with open(paths.json) as fh:
        report = json.load(fh)     # allow_nan=False at write time: no NaN or inf inside
    assert report["run_id"] == "r1" and report["table"]["table_version"] == 4
    assert [r["policy"] for r in report["results"]] == ["logging", "far"]
    far = report["results"][1]
    for est in ESTIMATORS:
        e = far["estimates"][est]
        assert e["available"] is False or e["ci_low"] <= e["ci_high"]
        assert est in far["diff_vs_logging"]
    assert report["decisions"][0]["policy"] == "far"
    # What mtf deploy would deploy: the GO policy with the highest pessimistic value.
    assert report["selected"] == ("far" if report["decisions"][0]["go"] else None)
    assert report["config"]["ope"]["alpha"] == 0.5e-3
    assert len(report["fqe"]["far"]["conservative"]["curve"]) == 2
    assert report["validation"]["estimators"]["conservative_fqe"]["policies"] == ["logging", "far"]
    html = open(paths.html).read()
    assert html.count("data:image/png;base64,") == 5
    assert "Ground truth comparison" in html
    assert ("&nbsp;GO&nbsp;" in html) != ("&nbsp;NO-GO&nbsp;" in html)   # one candidate
    assert not any(isinstance(v, float) and math.isnan(v) for v in far["diagnostics"].values())


def _trust_report(ess: float, dr_low: float, ens_low: float, distance: float,
                  converged: float = 1.0, backups: tuple[float, float] = (50.0, 20.0),
                  spread: float = 0.05, support: float = 0.9) -> dict:
    def row(name: str, diff: dict, diag: dict) -> dict:
        return {"policy": name, "diff_vs_logging": diff, "diagnostics": diag}

    base = {"action_distance": 0.1, "fqe_backups": backups[0], "backups_needed": backups[1]}
    cand = {**base, "ess_trajectory": ess, "n_sessions_is": 900.0,
            "ensemble_diff_lower": ens_low, "ensemble_converged": converged,
            "ensemble_spread": spread, "action_distance": distance,
            "ensemble_support": support}
    diffs = {"conservative_fqe": {"ci_low": 0.2, "available": True},
             "dr": {"ci_low": dr_low, "available": True}}
    return {"results": [row("logging", {}, base), row("cand", diffs, cand)],
            "decisions": [{"policy": "cand", "go": True, "margin": 0.05,
                           "estimator": "conservative_fqe"}]}


def test_trust_says_in_words_why_a_decision_is_or_is_not_checked() -> None:
    from mtf.ope.report import trust

    high = trust(_trust_report(ess=400.0, dr_low=0.1, ens_low=0.0, distance=0.15))["cand"]
    assert high["level"] == "high"
    assert high["notes"] == [
        "importance sampling can check it (effective sample 400 sessions)",
        "Doubly robust and FQE ensemble (bootstrapped) agree",
        "its fusion weights stay close to the logged ones (1.5x the exploration noise)",
        "90% of its actions have a logged action nearby"]
    low = trust(_trust_report(ess=2.0, dr_low=-0.3, ens_low=0.0, distance=0.5, converged=0.0,
                              backups=(10.0, 20.0), spread=0.25, support=0.1))["cand"]
    assert low["level"] == "low"
    assert low["notes"] == [
        "importance sampling cannot check it: the logs hold the equivalent of only 2 of 900 "
        "sessions close to its actions",
        "Doubly robust would decide the other way",
        "its fusion weights are 5.0x as far from the logged ones as the logging policy's own "
        "exploration: the estimate extrapolates",
        "only 10% of its actions have a logged action nearby: the logs barely reach it",
        "the ensemble's members disagree about its gain by 25% of the logging value (sd): the "
        "data do not pin it down",
        "the ensemble's value had not settled when the fit stopped",
        "FQE made 10 backups where the sessions need 20"]
    agreeing = trust(_trust_report(ess=2.0, dr_low=0.1, ens_low=0.0, distance=0.15))["cand"]
    assert agreeing["level"] == "high"   # the estimators agree: checked even without IS
