"""Users: profile features, category preferences, clickbait tolerance, base satisfaction."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mtf.serving.exploration import hash_unit  # noqa: F401  (re-exported; used by generate)
from mtf.sim.config import PopulationConfig
from mtf.contract import PROFILE_COLUMNS

USER_ID_WIDTH = 8


def user_ids(index: np.ndarray) -> list[str]:
    """Global user numbers -> user_id strings (``7`` -> ``'u00000007'``)."""
    return [f"u{int(i):0{USER_ID_WIDTH}d}" for i in np.asarray(index)]


@dataclass(frozen=True)
class Users:
    """A block of users (arrays indexed by row ``0 .. n - 1``).

    ``profile`` columns follow :data:`mtf.contract.PROFILE_COLUMNS` (age, activity, tenure,
    gender), all in [0, 1]; ``gender`` is 0/1.
    """

    index: np.ndarray              # (n,) int64 global user numbers
    ids: tuple[str, ...]           # (n,) user_id strings
    profile: np.ndarray            # (n, 4) float64
    pref: np.ndarray               # (n, n_categories) float64 category preference (logit units)
    bait_sensitivity: np.ndarray   # (n,) float64 >= 0, satisfaction lost per unit of bait watched
    base_satisfaction: np.ndarray  # (n,) float64
    visit_prob: np.ndarray         # (n,) float64, P(visit) per day

    @property
    def n(self) -> int:
        return int(self.index.shape[0])

    @property
    def activity(self) -> np.ndarray:
        return self.profile[:, PROFILE_COLUMNS.index("activity")]

    def profile_columns(self, names: Sequence[str]) -> np.ndarray:
        """``(n, len(names))`` profile matrix for the configured feature profile columns."""
        unknown = [c for c in names if c not in PROFILE_COLUMNS]
        if unknown:
            raise ValueError(f"features.profile_columns {list(unknown)} are not simulated; "
                             f"the simulator writes {list(PROFILE_COLUMNS)}")
        return self.profile[:, [PROFILE_COLUMNS.index(c) for c in names]]


def make_users(cfg: PopulationConfig, n_categories: int, index: np.ndarray,
               rng: np.random.Generator) -> Users:
    """Draw the traits of users ``index`` (global numbers) from ``rng``."""
    index = np.asarray(index, dtype=np.int64)
    n = index.shape[0]
    age = rng.beta(2.0, 3.0, n)
    activity = rng.beta(1.5, 1.5, n)
    tenure = rng.beta(1.2, 2.0, n)
    gender = (rng.random(n) < 0.5).astype(np.float64)
    profile = np.column_stack([age, activity, tenure, gender])
    pref = cfg.pref_sd * rng.standard_normal((n, n_categories))
    casual_share = 0.5 * (1.0 + np.tanh(0.5 * (cfg.bait_sensitivity_pivot - activity)
                                        / cfg.bait_sensitivity_width))
    curve = (cfg.bait_sensitivity_engaged
             + (cfg.bait_sensitivity_casual - cfg.bait_sensitivity_engaged) * casual_share)
    sensitivity = np.maximum(curve + cfg.bait_sensitivity_sd * rng.standard_normal(n), 0.0)
    base_sat = (cfg.base_satisfaction + cfg.satisfaction_activity_slope * (activity - 0.5)
                + cfg.base_satisfaction_sd * rng.standard_normal(n))
    visit = cfg.visit_prob_casual + (cfg.visit_prob_engaged - cfg.visit_prob_casual) * activity
    return Users(index=index, ids=tuple(user_ids(index)), profile=profile, pref=pref,
                 bait_sensitivity=sensitivity, base_satisfaction=base_sat, visit_prob=visit)
