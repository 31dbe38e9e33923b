"""Fusion policies: callables from a batch of states to a batch of normalised actions.

A policy is any callable ``policy(states) -> actions`` with ``states`` a ``(B, S)`` float32
array laid out as :func:`mtf.features.feature_names` and ``actions`` a ``(B, k)`` array in
``[-1, 1]`` (task order of ``cfg.fusion``), mapped to fusion weights by
:func:`mtf.fusion.action_to_weights`. Helpers here: constant actions (:class:`FixedPolicy`), a
hand-written state-dependent rule (:class:`ThresholdPolicy`), named reference actions
(:func:`reference_actions`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from mtf.features import FeatureConfig
from mtf.fusion import FusionConfig, weights_to_action

Policy = Callable[[np.ndarray], np.ndarray]


def action_from(fusion: FusionConfig, **values: float) -> np.ndarray:
    """``(k,)`` normalised action with the named tasks set, others 0 (= mid-interval weight).

    Example:
        >>> action_from(cfg.fusion, click=1.0, finish=-1.0)
    """
    unknown = [t for t in values if t not in fusion.names]
    if unknown:
        raise ValueError(f"unknown fusion tasks {unknown}; tasks are {list(fusion.names)}")
    out = np.zeros(fusion.k)
    for task, v in values.items():
        if not -1.0 <= v <= 1.0:
            raise ValueError(f"action for task {task!r} must be in [-1, 1], got {v!r}")
        out[fusion.names.index(task)] = v
    return out


def reference_actions(fusion: FusionConfig) -> dict[str, np.ndarray]:
    """Named actions used in the docs and tests (tasks absent from ``fusion`` are skipped).

    * ``balanced``: every weight at the middle of its interval (the default logging baseline).
    * ``myopic``: chases instant engagement; click and share up, finish / watch time / exit
      down. Wins the first request, loses the session.
    * ``engaging``: click, like and share up, exit down: best for clickbait-tolerant users.
    * ``careful``: click down, finish and exit up: best for clickbait-sensitive users.
    * ``quality``: click down, like / finish / watch time / exit up.
    """
    def pick(**values: float) -> np.ndarray:
        return action_from(fusion, **{t: v for t, v in values.items() if t in fusion.names})

    return {
        "balanced": pick(),
        "myopic": pick(click=1.0, share=1.0, finish=-1.0, watch_time=-1.0, exit=-1.0),
        "engaging": pick(click=1.0, like=1.0, share=1.0, exit=-1.0),
        "careful": pick(click=-0.5, finish=0.5, exit=1.0),
        "quality": pick(click=-1.0, like=0.5, finish=1.0, watch_time=1.0, exit=1.0),
    }


@dataclass(frozen=True, eq=False)
class FixedPolicy:
    """The same action for every state."""

    action: np.ndarray

    def __post_init__(self) -> None:
        a = np.asarray(self.action, dtype=np.float64)
        if a.ndim != 1 or np.any(np.abs(a) > 1.0):
            raise ValueError(f"FixedPolicy action must be a vector in [-1, 1], got {self.action!r}")
        object.__setattr__(self, "action", a)

    @classmethod
    def from_weights(cls, weights: np.ndarray, fusion: FusionConfig) -> "FixedPolicy":
        """The policy that always uses fusion weights ``weights`` (must lie in [lo, hi])."""
        a = weights_to_action(np.asarray(weights, dtype=np.float64), fusion.lo, fusion.hi)
        if np.any(np.abs(a) > 1.0 + 1e-12):
            raise ValueError(f"weights {list(weights)} lie outside the fusion intervals "
                             f"[{list(fusion.lo)}, {list(fusion.hi)}]")
        return cls(np.clip(a, -1.0, 1.0))

    def __call__(self, states: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.action, (states.shape[0], self.action.shape[0])).copy()


@dataclass(frozen=True, eq=False)
class ThresholdPolicy:
    """``action_high`` where ``state[feature] >= threshold``, else ``action_low``.

    A hand-written personalised policy, e.g. click-leaning ranking for engaged users and
    quality-leaning ranking for casual ones.
    """

    features: FeatureConfig
    feature: str
    threshold: float
    action_low: np.ndarray
    action_high: np.ndarray

    def __post_init__(self) -> None:
        if self.feature not in self.features.feature_names:
            raise ValueError(f"ThresholdPolicy feature {self.feature!r} is not a state feature; "
                             f"features are {list(self.features.feature_names)}")
        for name in ("action_low", "action_high"):
            object.__setattr__(self, name, FixedPolicy(getattr(self, name)).action)

    @property
    def index(self) -> int:
        return self.features.feature_names.index(self.feature)

    def __call__(self, states: np.ndarray) -> np.ndarray:
        high = states[:, self.index] >= self.threshold
        return np.where(high[:, None], self.action_high, self.action_low)


def hand_written_policy(features: FeatureConfig, fusion: FusionConfig,
                        threshold: float = 0.6) -> ThresholdPolicy:
    """The simple personalised rule the simulator is calibrated against: ``engaging`` ranking
    for users whose ``profile_activity >= threshold`` (clickbait-tolerant), ``careful`` ranking
    for the others. It beats every fixed action of :func:`grid_actions` (tests/sim)."""
    ref = reference_actions(fusion)
    return ThresholdPolicy(features, "profile_activity", threshold, action_low=ref["careful"],
                           action_high=ref["engaging"])


def check_actions(actions: Any, n: int, k: int, where: str = "policy") -> np.ndarray:
    """Validate a policy's output: ``(n, k)``, finite, in [-1, 1] (tiny overshoot clipped)."""
    a = np.asarray(actions, dtype=np.float64)
    if a.shape != (n, k):
        raise ValueError(f"{where} returned actions of shape {a.shape}, expected {(n, k)}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{where} returned non-finite actions")
    if np.any(np.abs(a) > 1.0 + 1e-6):
        raise ValueError(f"{where} returned actions outside [-1, 1] (max |a| = "
                         f"{np.abs(a).max():.4g}); policies act in the normalised space")
    return np.clip(a, -1.0, 1.0)


def grid_actions(fusion: FusionConfig, n_random: int, rng: np.random.Generator,
                 extra: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """A small grid of fixed actions: the reference actions, each axis at +-1 and ``n_random``
    uniform draws from [-1, 1]^k (``3 ** k`` is too many to evaluate)."""
    grid = dict(reference_actions(fusion))
    for j, task in enumerate(fusion.names):
        for sign, tag in ((1.0, "+"), (-1.0, "-")):
            a = np.zeros(fusion.k)
            a[j] = sign
            grid[f"{task}{tag}"] = a
    for i in range(n_random):
        grid[f"random{i}"] = rng.uniform(-1.0, 1.0, fusion.k)
    grid.update(extra or {})
    return grid
