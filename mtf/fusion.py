"""The multi-task fusion formula shared by the simulator, training, export, OPE and serving.

docs/method.md section 2: ``score(item) = sum_i alpha_i * log(o_i(item) + beta_i)``.
The agent acts in a normalised space ``a in [-1, 1]^k`` that maps affinely onto per-task weight
intervals ``alpha_i in [lo_i, hi_i]``. Negative tasks (exit) enter as ``1 - p`` so every alpha is
>= 0 and a larger alpha always means "care more about this task".

The score ranks candidates alike for ``alpha`` and ``c * alpha`` (``c > 0``): only the ray of
alpha matters. ``fusion.action_space`` says how the system treats that (docs/method.md section
2a): ``box`` (the paper's) acts on the whole box; ``ray`` makes every ray one action, its
**canonical** point, the farthest point of the ray inside the box (:func:`canonical_action`).
Canonical actions are exactly the box points with some ``alpha_i = hi_i``, i.e. ``max_i a_i = 1``:
the union of the box's k upper faces.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TaskSpec:
    """One fused MTL head. Column ``pred_<name>`` in the logs holds its prediction in [0, 1]."""

    name: str
    lo: float = 0.0          # alpha at action -1
    hi: float = 2.0          # alpha at action +1
    beta: float = 0.1        # smoothing bias beta_i inside the log
    negative: bool = False   # fused as 1 - p (e.g. exit rate)

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"task name must be an identifier, got {self.name!r}")
        if not 0.0 <= self.lo < self.hi:
            raise ValueError(f"task {self.name}: need 0 <= lo < hi, got lo={self.lo}, hi={self.hi}")
        if self.beta <= 0.0:
            raise ValueError(f"task {self.name}: beta must be > 0, got {self.beta}")


DEFAULT_TASKS = (
    TaskSpec("click", 0.0, 2.0),
    TaskSpec("like", 0.0, 2.0),
    TaskSpec("share", 0.0, 2.0),
    TaskSpec("finish", 0.0, 2.0),
    TaskSpec("watch_time", 0.0, 2.0),
    TaskSpec("exit", 0.0, 2.0, negative=True),
)


ACTION_SPACES = ("box", "ray")
FACE_TOL = 1e-6   # |a_j - 1| below this: a_j is on its upper face (canonical actions are float32)


@dataclass(frozen=True)
class FusionConfig:
    """The fused tasks, in the fixed order used by every action/weight array."""

    tasks: tuple[TaskSpec, ...] = field(default_factory=lambda: DEFAULT_TASKS)
    action_space: str = "box"   # "box" or "ray" (alpha and c * alpha are one action)

    def __post_init__(self) -> None:
        if self.action_space not in ACTION_SPACES:
            raise ValueError(f"fusion.action_space must be one of {list(ACTION_SPACES)}, got "
                             f"{self.action_space!r}")
        if not self.tasks:
            raise ValueError("fusion.tasks must list at least one task")
        names = [t.name for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"fusion.tasks has duplicate task names {dup}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    @property
    def k(self) -> int:
        return len(self.tasks)

    @property
    def lo(self) -> np.ndarray:
        return np.array([t.lo for t in self.tasks], dtype=np.float64)

    @property
    def hi(self) -> np.ndarray:
        return np.array([t.hi for t in self.tasks], dtype=np.float64)

    @property
    def beta(self) -> np.ndarray:
        return np.array([t.beta for t in self.tasks], dtype=np.float64)

    @property
    def negative(self) -> np.ndarray:
        return np.array([t.negative for t in self.tasks], dtype=bool)


def action_to_weights(action: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Normalised action ``(..., k)`` in [-1, 1] -> fusion weights alpha in [lo, hi]."""
    a = np.clip(action, -1.0, 1.0)
    return lo + (a + 1.0) * 0.5 * (hi - lo)


def weights_to_action(weights: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Inverse of :func:`action_to_weights` (fusion weights -> normalised action)."""
    return 2.0 * (np.asarray(weights, dtype=np.float64) - lo) / (hi - lo) - 1.0


def canonical_action(action: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The canonical action of the ray through ``action`` (``(..., k)`` in [-1, 1]).

    In weights: ``alpha' = alpha / max_i(alpha_i / hi_i)``, the largest multiple of alpha inside
    the box (scaling up never leaves ``[lo, hi]`` from below). alpha and ``c * alpha`` give the
    same point; canonical points are fixed (``max_i a_i = 1``). The all-zero weights (possible
    only with ``lo = 0``: every score 0, no ranking at all) map to ``alpha = hi``.
    """
    alpha = action_to_weights(np.asarray(action, dtype=np.float64), lo, hi)
    ratio = np.max(alpha / hi, axis=-1, keepdims=True)
    scaled = np.where(ratio > 0.0, alpha / np.where(ratio > 0.0, ratio, 1.0), hi)
    return np.clip(weights_to_action(scaled, lo, hi), -1.0, 1.0)


def is_canonical(action: np.ndarray, tol: float = FACE_TOL) -> np.ndarray:
    """``(...)`` bool: the action lies on an upper face (``max_i a_i >= 1 - tol``)."""
    return np.max(np.asarray(action, dtype=np.float64), axis=-1) >= 1.0 - tol


def fused_score(preds: np.ndarray, weights: np.ndarray, beta: np.ndarray,
                negative: np.ndarray) -> np.ndarray:
    """Fusion score per candidate.

    Args:
        preds: ``(..., n_items, k)`` MTL predictions in [0, 1].
        weights: ``(..., k)`` fusion weights alpha, broadcast over items.
        beta: ``(k,)`` smoothing biases.
        negative: ``(k,)`` bool; those tasks enter as ``1 - p``.
    Returns:
        ``(..., n_items)`` scores ``sum_i alpha_i log(o_i + beta_i)``.
    """
    o = np.where(negative, 1.0 - preds, preds)
    return np.einsum("...nk,...k->...n", np.log(o + beta), weights)
