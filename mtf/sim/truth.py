"""The simulator as a ground truth for OPE validation (:class:`mtf.ope.truth.GroundTruth`).

True values come from :func:`mtf.sim.evaluate.evaluate_many` (one session per evaluation user
after warm-up sessions under the baseline, common random numbers, the world's reward and
gamma).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from mtf.sim.evaluate import evaluate_many
from mtf.sim.world import World

TRUTH_NOTE = ("Ground truth: mtf.sim.evaluate (one session per evaluation user after warm-up "
              "sessions under the baseline, same reward and gamma). With the matched simulator "
              "settings (default) the test split holds each user's session of the last day, "
              "the same kind of start; otherwise errors include a start-distribution mismatch "
              "(logged sessions are visit-weighted).")


class SimulatorTruth:
    """True policy values of one simulated world."""

    note = TRUTH_NOTE

    def __init__(self, world: World) -> None:
        self.world = world

    def values(self, policies: Mapping[str, Callable[[np.ndarray], np.ndarray]],
               n_sessions: int, seed: int) -> dict[str, dict[str, Any]]:
        res = evaluate_many(self.world, dict(policies), n_sessions=n_sessions, seed=seed)
        return {name: {"mean": r.mean_return, "ci_low": r.ci[0], "ci_high": r.ci[1],
                       "std_err": r.std_err, "n_sessions": r.n_sessions,
                       "mean_session_length": r.mean_session_length, "ci_level": r.ci_level}
                for name, r in res.items()}
