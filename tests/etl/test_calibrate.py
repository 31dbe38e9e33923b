"""Reward-weight calibration recovers a known linear relationship between step feedback and
the rest-of-session dwell time."""
from __future__ import annotations

import numpy as np
import pytest

from mtf.config import load_config
from mtf.etl.calibrate import run_calibration
from mtf.etl.steps import REWARD_WEIGHT_NAMES
from tests.etl.logs import DAY1, at, imp, write_logs

# rest-of-session dwell (s) = 5 + coef . (play_time_norm, play_ratio, like, share, comment, follow)
TRUE_COEF = np.array([20.0, 10.0, 30.0, 50.0, 15.0, 40.0])


def _sessions(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n):
        play, dur = float(rng.uniform(0, 100)), float(rng.uniform(10, 120))
        flags = [int(x) for x in rng.random(4) < 0.4]
        x = np.array([min(play / 60, 1.0), min(play / dur, 1.0), *flags])
        t0 = at(DAY1, 10, u % 60)
        rows.append(imp(f"u{u}", "r0", t0, play_time_s=play, duration_s=dur, liked=flags[0],
                        shared=flags[1], commented=flags[2], followed=flags[3]))
        # Step 1: its play time is the future dwell of step 0 (the session's last step is left
        # out of the fit: its own future is 0 by construction).
        rows.append(imp(f"u{u}", "r1", at(DAY1, 10 + (u % 60 + 5) // 60, (u % 60 + 5) % 60),
                        play_time_s=float(5.0 + TRUE_COEF @ x), duration_s=1000.0))
    return rows


def test_calibration_recovers_known_coefficients(spark, tmp_path) -> None:
    write_logs(spark, _sessions(80, seed=3), str(tmp_path / "raw_impressions"))
    cfg = load_config(None, [f"lake.root={tmp_path}"])
    result = run_calibration(spark, cfg)
    assert result.names == REWARD_WEIGHT_NAMES and result.n_steps == 80
    np.testing.assert_allclose(result.coefficients, TRUE_COEF, rtol=1e-6, atol=1e-6)
    assert result.intercept == pytest.approx(5.0, abs=1e-6)
    assert result.r2 == pytest.approx(1.0, abs=1e-9)
    # Proposed weights: proportional to the coefficients, same mean reward as configured.
    ratio = np.array(result.proposed) / TRUE_COEF
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-6)
    assert result.configured == (0.1, 0.1, 0.3, 0.5, 0.3, 0.5)
    table = result.table()
    assert "w_share" in table and "configured" in table and "proposed" in table
