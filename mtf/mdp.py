"""The decision problem every component shares (section ``mdp``): docs/method.md section 3.

One request is one step, a session one episode; the state is the point-in-time user state
(:mod:`mtf.features`), the action the fusion weights (:mod:`mtf.fusion`), the reward the
satisfaction heuristic (:mod:`mtf.reward`). The discount lives here because the learners, the
OPE and the simulator's ground truth must all discount the same way.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MdpConfig:
    gamma: float = 0.95          # discount per request (paper)

    def __post_init__(self) -> None:
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"mdp.gamma must be in (0, 1], got {self.gamma!r}")
