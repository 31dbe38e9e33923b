"""The evaluation split as numpy arrays (single-process path, FQE fitting, tests).

Columns follow the transition-table contract (docs/contract.md section 2). Rows are kept sorted by
``(session_id, step)``, so a session is a contiguous run of rows and ``position`` (0-based index
within the session, the ``t`` of every estimator) is well defined even when steps have gaps.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from mtf.contract import (ACTION, ACTION_LOGP, EXPLOIT, EXPLORE_GROUP,  # noqa: F401
                          EXPLORE_GROUPS, IS_TERMINAL, IS_TRUNCATED, NEXT_STATE, REWARD,
                          SESSION_ID, SPLIT, STATE, STEP)

REQUIRED_COLUMNS = (SESSION_ID, STEP, STATE, NEXT_STATE, ACTION, ACTION_LOGP, REWARD,
                    IS_TERMINAL, IS_TRUNCATED)
OPTIONAL_COLUMNS = (EXPLORE_GROUP,)


def require_columns(have: Sequence[str], where: str) -> None:
    """Raise ValueError naming the missing transition-table columns."""
    missing = [c for c in REQUIRED_COLUMNS if c not in have]
    if missing:
        raise ValueError(f"{where} lacks columns {missing}; OPE needs {list(REQUIRED_COLUMNS)} "
                         f"(docs/contract.md section 2). Rebuild it with "
                         f"`mtf build-transitions`.")


def logged_on_rays(action: np.ndarray, action_logp: np.ndarray, lo: np.ndarray,
                   hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logged actions and densities as the ray parametrisation sees them
    (``fusion.action_space = "ray"``): every action as its ray's canonical point (it ranked the
    same), its density kept only where the logged action already was canonical (a box action's
    density is over the box, not the faces, so those rows leave the IS family)."""
    from mtf.fusion import canonical_action, is_canonical

    logp = np.where(is_canonical(action), action_logp, np.nan)
    return canonical_action(action, lo, hi), logp


@dataclass(frozen=True)
class TransitionArrays:
    """N transitions sorted by (session_id, step)."""

    session_id: np.ndarray     # (N,) str
    step: np.ndarray           # (N,) int64
    state: np.ndarray          # (N, S) float32
    next_state: np.ndarray     # (N, S) float32; zeros after a terminal step
    action: np.ndarray         # (N, k) float32 in [-1, 1]
    action_logp: np.ndarray    # (N,) float64; NaN where null (deterministic exploit group)
    reward: np.ndarray         # (N,) float64
    is_terminal: np.ndarray    # (N,) bool
    is_truncated: np.ndarray   # (N,) bool
    is_exploit: np.ndarray     # (N,) bool: explore_group == "exploit"

    def __post_init__(self) -> None:
        n = self.session_id.shape[0]
        for name in ("step", "state", "next_state", "action", "action_logp", "reward",
                     "is_terminal", "is_truncated", "is_exploit"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"TransitionArrays.{name} has {getattr(self, name).shape[0]} "
                                 f"rows, session_id has {n}")
        if self.state.shape != self.next_state.shape:
            raise ValueError(f"state {self.state.shape} and next_state {self.next_state.shape} "
                             f"differ")

    def __len__(self) -> int:
        return int(self.session_id.shape[0])

    @property
    def state_dim(self) -> int:
        return int(self.state.shape[1])

    @property
    def action_dim(self) -> int:
        return int(self.action.shape[1])

    def on_rays(self, lo: np.ndarray, hi: np.ndarray) -> "TransitionArrays":
        """The ray parametrisation's view (:func:`logged_on_rays`) of these transitions."""
        action, logp = logged_on_rays(self.action, self.action_logp, lo, hi)
        return replace(self, action=action.astype(np.float32), action_logp=logp)

    @staticmethod
    def build(session_id: Sequence[Any], step: Sequence[int], state: np.ndarray,
              next_state: np.ndarray, action: np.ndarray, action_logp: Sequence[float | None],
              reward: Sequence[float], is_terminal: Sequence[bool], is_truncated: Sequence[bool],
              explore_group: Sequence[str | None] | None = None) -> "TransitionArrays":
        """Validate, convert and sort (by session_id, step) plain arrays."""
        ids = np.asarray([str(s) for s in session_id], dtype=object)
        logp = np.array([np.nan if v is None else v for v in action_logp], dtype=np.float64)
        groups = (np.asarray(explore_group, dtype=object) if explore_group is not None
                  else np.full(ids.shape[0], None, dtype=object))
        arrays = TransitionArrays(
            session_id=ids, step=np.asarray(step, dtype=np.int64),
            state=np.asarray(state, dtype=np.float32),
            next_state=np.asarray(next_state, dtype=np.float32),
            action=np.asarray(action, dtype=np.float32), action_logp=logp,
            reward=np.asarray(reward, dtype=np.float64),
            is_terminal=np.asarray(is_terminal, dtype=bool),
            is_truncated=np.asarray(is_truncated, dtype=bool),
            is_exploit=np.asarray([g == EXPLORE_GROUPS[EXPLOIT] for g in groups], dtype=bool))
        for name in ("state", "next_state", "action", "reward"):
            if not np.all(np.isfinite(getattr(arrays, name))):
                raise ValueError(f"column {name!r} has NaN or infinite values")
        if np.any(np.abs(arrays.action) > 1.0 + 1e-5):
            raise ValueError(f"column 'action' must be normalised to [-1, 1], found max |a| = "
                             f"{np.abs(arrays.action).max():.4g}")
        if np.any(np.isinf(arrays.action_logp)):
            raise ValueError("column 'action_logp' has infinite values (a logged action with "
                             "zero density under the logging policy)")
        return arrays.sorted()

    @staticmethod
    def from_arrow(table: Any, state_dim: int, action_dim: int) -> "TransitionArrays":
        """From a pyarrow Table with the contract columns (any order of rows)."""
        from mtf.rl.loader import list_column_to_matrix

        require_columns(table.column_names, "transitions (Arrow)")
        has_group = EXPLORE_GROUP in table.column_names
        return TransitionArrays.build(
            session_id=table[SESSION_ID].to_pylist(),
            step=table[STEP].to_numpy(),
            state=list_column_to_matrix(table[STATE], state_dim, STATE),
            next_state=list_column_to_matrix(table[NEXT_STATE], state_dim, NEXT_STATE),
            action=list_column_to_matrix(table[ACTION], action_dim, ACTION),
            action_logp=table[ACTION_LOGP].to_pylist(),
            reward=table[REWARD].to_numpy(zero_copy_only=False),
            is_terminal=table[IS_TERMINAL].to_numpy(zero_copy_only=False),
            is_truncated=table[IS_TRUNCATED].to_numpy(zero_copy_only=False),
            explore_group=table[EXPLORE_GROUP].to_pylist() if has_group else None)

    def sorted(self) -> "TransitionArrays":
        import pandas as pd

        codes, _ = pd.factorize(self.session_id, sort=True)
        order = np.lexsort((self.step, codes))
        return self.take(order)

    def take(self, idx: np.ndarray) -> "TransitionArrays":
        return replace(self, **{f: getattr(self, f)[idx] for f in self.__dataclass_fields__})

    def session_starts(self) -> np.ndarray:
        """Index of the first row of every session (rows are sorted)."""
        ids = self.session_id
        if ids.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        change = np.ones(ids.shape[0], dtype=bool)
        change[1:] = ids[1:] != ids[:-1]
        return np.flatnonzero(change)

    def position(self) -> np.ndarray:
        """0-based index of each row within its session."""
        starts = self.session_starts()
        lengths = np.diff(np.r_[starts, len(self)])
        return np.arange(len(self)) - np.repeat(starts, lengths)

    def sample_sessions(self, max_rows: int, seed: int) -> "TransitionArrays":
        """Whole sessions, picked by a seeded hash, so that about ``max_rows`` rows remain."""
        if len(self) <= max_rows:
            return self
        starts = self.session_starts()
        lengths = np.diff(np.r_[starts, len(self)])
        u = hash_uniform(self.session_id[starts], seed)
        keep = np.repeat(u < max_rows / len(self), lengths)
        return self.take(np.flatnonzero(keep))


def hash_uniform(ids: Sequence[str], seed: int) -> np.ndarray:
    """A uniform in [0, 1) per id, from blake2b of ``"<seed>:<id>"`` (stable across runs)."""
    out = np.empty(len(ids), dtype=np.float64)
    for i, s in enumerate(ids):
        h = hashlib.blake2b(f"{seed}:{s}".encode(), digest_size=8).digest()
        out[i] = (int.from_bytes(h, "little") >> 11) * (1.0 / (1 << 53))
    return out
