"""ETL configuration (EtlConfig). Owned by mtf.etl."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EtlConfig:
    session_gap_s: int = 1800      # inactivity gap that ends a session when no app session id

    def __post_init__(self) -> None:
        if self.session_gap_s <= 0:
            raise ValueError(f"session_gap_s must be > 0, got {self.session_gap_s}")
