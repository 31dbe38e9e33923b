"""The OPE accuracy benchmark, reduced: one held-out world at a small size, through the script.

It asserts what must hold at any size: the default gate (the FQE ensemble with its spread
guard) never says GO to a policy that is truly harmful (its true loss
against the logging policy exceeds the 1% margin even at the edge of the truth's paired 95%
interval), the record carries every metric per estimator, and the comparison ensembles are
read off one hybrid fit. The world is held-202, a tuning world (docs/ope.md section 9): at
this size the MLP ensemble without its spread guard said GO to ``reversed_rule`` there (true
-5.4%), so this is a regression guard, not held-out evidence. The full benchmark (the tuning
world and three held-out worlds) runs outside the suite.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from mtf.ope.config import GATES, REPORTED_ESTIMATORS, OpeConfig

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = {"n_policies", "spearman", "regret_at_1", "pairwise_accuracy", "n_pairs",
           "relative_mae", "share_at_or_below_truth", "coverage"}


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("ope-accuracy") / "result.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "ope_accuracy.py"),
         "--worlds", "held-202", "--users", "1200", "--days", "3", "--truth-sessions", "3000",
         "--learner-steps", "600", "--learners", "iql_short,td3", "--members", "4",
         "--ope", "ope.n_iterations=400", "--ope", "ope.target_update_every=20",
         "--ope", "ope.hidden=[64,64]", "--ope", "ope.n_bootstrap=100",
         # the comparisons' model-based members, small
         "--ensemble", "model_steps=300", "--ensemble", "model_hidden=[32,32]",
         "--json", str(out)],
        capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "tuning worlds ['held-202'], pooled:" in proc.stdout
    return json.loads(out.read_text())


def test_the_default_gate_never_says_go_to_a_truly_harmful_policy(record: dict) -> None:
    [world] = record["details"]["worlds"]
    truth = world["truth"]
    margin = 0.01 * abs(truth["logging"]["mean"])
    harmful = [n for n, t in truth.items() if t["diff"] + t["diff_half_width"] < -margin]
    assert "myopic" in harmful       # the clickbait corner is harmful in every world
    gate = OpeConfig().gate
    assert [n for n in harmful if world["go"][gate][n]] == []
    assert set(GATES) <= set(world["go"])


def test_every_estimator_is_scored_and_the_held_out_summary_has_the_goals(record: dict) -> None:
    [world] = record["details"]["worlds"]
    assert world["role"] == "tuning" and world["truth_seed"] == world["seed"] + 1000
    assert len(world["policies"]) == 11          # 9 fixed weights and rules + 2 learners
    for est in ("conservative_fqe", "fqe", "fqe_ensemble", "dr"):
        assert METRICS <= set(world["metrics"][est]), est
    for gate in GATES:
        sel = world["metrics"][gate]["selection"]
        assert sel["chosen"] in ("logging", "iql_short", "td3") and sel["regret"] >= 0
    summary = record["details"]["summary"]["tuning"]
    assert set(summary["rows"]) >= set(REPORTED_ESTIMATORS) - {"pdis", "wpdis"}
    assert set(summary["goals"]["fqe_ensemble"]) == {
        "pairwise_accuracy", "spearman", "regret_at_1", "share_at_or_below_truth", "coverage",
        "selection_regret", "never_go_worse", "go_better_80pct"}
    assert record["figures"]["tuning.fqe_ensemble.pairwise_accuracy"] == \
        summary["rows"]["fqe_ensemble"]["pairwise_accuracy"]


def test_the_comparisons_are_read_off_one_hybrid_fit(record: dict) -> None:
    """The benchmark fits one hybrid ensemble; the default gate's MLP members and the
    comparisons' are its two fits (no refit), so each hybrid member is the mean of the MLP and
    the linear member on the same resample."""
    import numpy as np

    [world] = record["details"]["worlds"]
    comp = world["comparison_ensembles"]
    assert {"hybrid", "linear", "mlp_guarded"} <= set(comp)
    assert comp["linear"]["model"] == "linear" and comp["hybrid"]["model"] == "hybrid"
    for name in world["policies"]:
        mlp = np.array(world["ensemble_members"][name])          # the default: mlp members
        assert mlp.shape == (4,)
        np.testing.assert_array_equal(mlp, comp["mlp_guarded"]["members"][name])
        np.testing.assert_allclose(comp["hybrid"]["members"][name],
                                   (mlp + np.array(comp["linear"]["members"][name])) / 2,
                                   rtol=1e-12)
        assert 0.0 <= world["support"][name] <= 1.0
    assert world["support"]["logging"] == 1.0
    for label in ("fqe_ensemble_hybrid", "fqe_ensemble_linear", "fqe_ensemble_lower_linear"):
        assert METRICS - {"coverage"} <= set(world["metrics"][label]), label
    assert world["go"]["fqe_ensemble_hybrid"].keys() == world["go"]["fqe_ensemble"].keys()


def test_an_ensembles_only_run_drops_the_paper_rows_and_fits_each_kind_once(
        tmp_path) -> None:
    """``--no-paper``: no conservative / plain FQE or DR rows; one fit holds every kind the
    comparisons read, so a member of linear+model_based is the mean of the linear and the
    model-based members on the same resample."""
    import numpy as np

    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "ope_accuracy.py"), "--smoke",
         "--no-paper", "--ensemble", "model_steps=20", "--ensemble", "model_hidden=[8]",
         "--compare", "lin:model=linear", "--compare", "mb:model=model_based",
         "--compare", "mix:model=linear+model_based,lower_quantile=0.2", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    [world] = json.loads(out.read_text())["details"]["worlds"]
    assert not {"conservative_fqe", "fqe", "dr"} & set(world["metrics"])
    assert "conservative_fqe" not in world["go"] and "fqe_ensemble" in world["go"]
    assert {"pdis", "wpdis", "fqe_ensemble_mix", "fqe_ensemble_lower_mb"} <= set(world["metrics"])
    comp = world["comparison_ensembles"]
    for label in ("lin", "mb", "mix"):       # read off the one fit, nothing refitted
        assert re.search(rf"comparison ensemble '{label}' \(.*\) in 0 s$", proc.stdout, re.M)
    for name in world["policies"]:
        np.testing.assert_allclose(comp["mix"]["members"][name],
                                   (np.array(comp["lin"]["members"][name])
                                    + np.array(comp["mb"]["members"][name])) / 2, rtol=1e-12)
    assert comp["mb"]["members"]["logging"] != comp["lin"]["members"]["logging"]
