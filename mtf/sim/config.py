"""Simulator configuration (SimConfig). Owned by mtf.sim."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SimConfig:
    n_users: int = 2000            # users simulated per day
    n_days: int = 3                # days of logs written by `mtf simulate`
    start_date: str = "2026-01-01"  # first ds

    def __post_init__(self) -> None:
        if self.n_users <= 0:
            raise ValueError(f"n_users must be > 0, got {self.n_users}")
        if self.n_days <= 0:
            raise ValueError(f"n_days must be > 0, got {self.n_days}")
