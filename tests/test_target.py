"""The +5% target, checked through the closed loop on the embedded default's data: the
learned fusion (the default learner, IQL with a quadratic critic) beats the logging baseline
by at least 5% of its true discounted session return and beats the best fixed weights found
by CEM with simulator access, both with paired 95% intervals (common random numbers) that
exclude zero.

The same run as ``bash scripts/demo.sh`` (10k users a day, 3 days, conf/local.yaml), with the
final comparison reduced to what the target names. About 4-5 minutes on 2 cores. Training is
not bit-reproducible across runs (petastorm's reader threads), so the margin matters: four
training seeds on this data gave +5.5% to +6.2% (docs/training.md, item 10).
"""
from __future__ import annotations

import pytest

from mtf.config import load_config
from mtf.loop.closed_loop import run_pipeline
from mtf.loop.config import LEARNERS

pytestmark = pytest.mark.slow

LEARNED = LEARNERS["iql_quadratic"][0]
FIXED = "best fixed weights (CEM)"


def test_learned_fusion_beats_the_baseline_by_5_percent_and_the_best_fixed_weights(
        spark, tmp_path) -> None:
    cfg = load_config(None, [f"lake.root={tmp_path}", "pipeline.compare=[cem, iql_quadratic]"])
    assert (cfg.train.algo, cfg.train.iql.quadratic_critic) == ("iql", True)  # the default
    summary = run_pipeline(spark, cfg)
    rows = {r["policy"]: r for r in summary["comparison"]}
    assert list(rows) == ["logging baseline", FIXED, LEARNED]
    learned, fixed = rows[LEARNED], rows[FIXED]
    assert learned["vs_baseline_pct"] >= 5.0, learned
    assert learned["vs_baseline_ci"][0] > 0.0, learned
    assert learned["vs_best_fixed_ci"][0] > 0.0, (learned, fixed)
    assert learned["true_return"] > fixed["true_return"]
    # The day-by-day candidates, too, beat the baseline on ground truth, and the loop deployed
    # exactly what the offline gate passed (with its spread guard the default gate keeps the
    # baseline here: the ensemble's members disagree about the gain, docs/ope.md section 9).
    days = summary["days"]
    assert days[-1]["true_candidate"] > 1.04 * days[-1]["true_baseline"]
    for before, after in zip(days[1:], days[2:]):
        assert after["deployed"] == (before["candidate"] if before["decision"] == "go"
                                     else before["deployed"])
