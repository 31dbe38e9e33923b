"""The heuristic satisfaction reward: user stickiness + user activeness (docs/method.md section 4).

Per impression::

    stickiness = w_play_time * min(play_time_s / play_cap_s, 1) + w_integrity * play_ratio
    activeness = w_like * liked + w_share * shared + w_comment * commented + w_follow * followed

and a step's reward is the sum over the items shown for the request (one page). The same
definition is used by the simulator's ground truth (numpy, here) and by the Spark ETL
(``mtf.etl``), held equal by tests.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RewardConfig:
    w_play_time: float = 0.1     # stickiness: capped play time, per item
    w_integrity: float = 0.1     # stickiness: play integrity (completion ratio), per item
    w_like: float = 0.3          # activeness weights: "sparse but strong" interactions
    w_share: float = 0.5
    w_comment: float = 0.3
    w_follow: float = 0.5
    play_cap_s: float = 60.0     # play time above this counts as fully sticky

    def __post_init__(self) -> None:
        for name in ("w_play_time", "w_integrity", "w_like", "w_share", "w_comment", "w_follow"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.play_cap_s <= 0:
            raise ValueError(f"play_cap_s must be > 0, got {self.play_cap_s}")

    @property
    def interaction_weights(self) -> tuple[float, float, float, float]:
        """Weights in the order of :data:`mtf.contract.INTERACTION_COLUMNS`."""
        return (self.w_like, self.w_share, self.w_comment, self.w_follow)


def play_ratio(play_time_s: np.ndarray, duration_s: np.ndarray) -> np.ndarray:
    """Play integrity in [0, 1]; items of zero/unknown length count as not played."""
    dur = np.asarray(duration_s, dtype=np.float64)
    ratio = np.divide(play_time_s, dur, out=np.zeros_like(dur), where=dur > 0)
    return np.clip(ratio, 0.0, 1.0)


def impression_reward(cfg: RewardConfig, play_time_s: np.ndarray, duration_s: np.ndarray,
                      liked: np.ndarray, shared: np.ndarray, commented: np.ndarray,
                      followed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(stickiness, activeness) per impression; sum them over a page for the step reward."""
    play = np.asarray(play_time_s, dtype=np.float64)
    stick = (cfg.w_play_time * np.clip(play / cfg.play_cap_s, 0.0, 1.0)
             + cfg.w_integrity * play_ratio(play, duration_s))
    act = (cfg.w_like * np.asarray(liked, dtype=np.float64)
           + cfg.w_share * np.asarray(shared, dtype=np.float64)
           + cfg.w_comment * np.asarray(commented, dtype=np.float64)
           + cfg.w_follow * np.asarray(followed, dtype=np.float64))
    return stick, act
