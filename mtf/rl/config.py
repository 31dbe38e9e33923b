"""Training configuration (TrainConfig and its nested BCQConfig). Owned by mtf.rl."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BCQConfig:
    gamma: float = 0.95            # discount (paper-spec section 3)
    rho: float = 0.15              # perturbation bound, normalised action units

    def __post_init__(self) -> None:
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 256          # paper-spec section 5
    max_steps: int = 300_000
    bcq: BCQConfig = field(default_factory=BCQConfig)

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {self.batch_size}")
