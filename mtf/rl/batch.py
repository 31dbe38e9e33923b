"""The one batch type of the trainer and the state normaliser applied to it.

A :class:`TransitionBatch` holds the numeric columns of the transitions table
(docs/contract.md section 2) that the update rules need, as float32 tensors of shape ``(B, ·)``.
Every loader yields it and every algorithm consumes it; conversion from numpy happens in
:meth:`TransitionBatch.from_numpy`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from numpy.typing import NDArray

from mtf.contract import (ACTION, EXPLORE_GROUP, GROUP_CODES, IS_TERMINAL,  # noqa: F401
                          NEXT_STATE, REWARD, SPLIT, STATE)

# Transitions-table columns read by the trainer, in a fixed order (docs/contract.md section 2).
NUMERIC_COLUMNS = (STATE, NEXT_STATE, ACTION, REWARD, IS_TERMINAL)
GROUP = "group"   # the batch's numeric code of explore_group (mtf.contract.GROUP_CODES); a
#                   null group (logs from before exploration) counts as exploit: the action is
#                   the served policy's.


def group_codes(groups: Any) -> NDArray[np.float32]:
    """``explore_group`` strings (None for null) -> float32 codes of :data:`GROUP_CODES`."""
    values = np.asarray(groups, dtype=object)
    out = np.zeros(values.shape, dtype=np.float32)
    for name, code in GROUP_CODES.items():
        out[values == name] = code
    return out


@dataclass(frozen=True)
class TransitionBatch:
    """B transitions. ``is_terminal`` is the paper's ``done``: truncated steps bootstrap."""

    state: torch.Tensor        # (B, S)
    action: torch.Tensor       # (B, k), normalised to [-1, 1]
    reward: torch.Tensor       # (B, 1)
    next_state: torch.Tensor   # (B, S); zeros for terminal steps
    is_terminal: torch.Tensor  # (B, 1), 1.0 where the session really ended
    group: torch.Tensor        # (B, 1), GROUP_CODES of explore_group (IQL's actor rows)

    def __len__(self) -> int:
        return int(self.state.shape[0])

    @staticmethod
    def from_numpy(columns: Mapping[str, NDArray[Any]]) -> "TransitionBatch":
        """Columns (as read from Parquet) -> batch; vectors ``(B,)`` become ``(B, 1)``.

        ``group`` (codes, see :func:`group_codes`) is optional: all exploit when absent.
        """
        def f32(name: str) -> torch.Tensor:
            return torch.as_tensor(np.asarray(columns[name], dtype=np.float32))
        reward = f32(REWARD).reshape(-1, 1)
        group = f32(GROUP).reshape(-1, 1) if GROUP in columns else torch.zeros_like(reward)
        return TransitionBatch(
            state=f32(STATE), action=f32(ACTION), reward=reward,
            next_state=f32(NEXT_STATE), is_terminal=f32(IS_TERMINAL).reshape(-1, 1), group=group)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "TransitionBatch":
        return TransitionBatch(*(t.to(device, non_blocking=non_blocking) for t in self._fields()))

    def index(self, idx: torch.Tensor) -> "TransitionBatch":
        """Rows ``idx`` of every column (gather, copies)."""
        return TransitionBatch(*(t.index_select(0, idx) for t in self._fields()))

    def _fields(self) -> tuple[torch.Tensor, ...]:
        return (self.state, self.action, self.reward, self.next_state, self.is_terminal,
                self.group)


@dataclass(frozen=True)
class Normalizer:
    """Per-feature state standardisation ``(s - mean) / std``, fitted on training rows.

    It is applied to ``state`` and ``next_state`` before the networks see them and folded into
    the exported policy, so serving passes raw state vectors. Features with (near) zero spread
    get std 1 so a constant feature maps to 0 instead of blowing up.
    """

    mean: torch.Tensor  # (S,)
    std: torch.Tensor   # (S,)

    MIN_STD = 1e-6

    @staticmethod
    def fit(states: NDArray[Any]) -> "Normalizer":
        """Fit on ``(N, S)`` raw states (float64 accumulation)."""
        x = np.asarray(states, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"Normalizer.fit needs a non-empty (N, S) array, got shape {x.shape}")
        std = x.std(axis=0)
        std = np.where(std < Normalizer.MIN_STD, 1.0, std)
        return Normalizer(torch.as_tensor(x.mean(axis=0), dtype=torch.float32),
                          torch.as_tensor(std, dtype=torch.float32))

    @staticmethod
    def identity(state_dim: int) -> "Normalizer":
        return Normalizer(torch.zeros(state_dim), torch.ones(state_dim))

    @property
    def state_dim(self) -> int:
        return int(self.mean.shape[0])

    def to(self, device: torch.device | str) -> "Normalizer":
        return Normalizer(self.mean.to(device), self.std.to(device))

    def __call__(self, state: torch.Tensor) -> torch.Tensor:
        return (state - self.mean) / self.std

    def apply(self, batch: TransitionBatch) -> TransitionBatch:
        """Normalise ``state`` and ``next_state``.

        A terminal step's all-zero ``next_state`` becomes ``-mean/std``: harmless, because its
        bootstrap term is multiplied by ``1 - is_terminal = 0``.
        """
        return TransitionBatch(self(batch.state), batch.action, batch.reward,
                               self(batch.next_state), batch.is_terminal, batch.group)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean.detach().cpu(), "std": self.std.detach().cpu()}

    @staticmethod
    def from_state_dict(state: Mapping[str, torch.Tensor]) -> "Normalizer":
        return Normalizer(state["mean"].float(), state["std"].float())
