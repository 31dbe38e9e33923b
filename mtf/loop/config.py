"""Configuration of the closed loop and its final comparison (section ``pipeline``).

Kept apart from :mod:`mtf.loop.closed_loop` so that the whole-pipeline config can nest it
without importing the loop, the simulator or Spark.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from mtf.rl.config import TrainConfig


@dataclass(frozen=True)
class SearchConfig:
    """Budgets of the black-box searches (sessions are simulated sessions)."""

    cem_generations: int = 6          # CEM iterations
    cem_population: int = 16          # candidates per generation
    cem_elite_frac: float = 0.25      # share of candidates that update the distribution
    cem_init_sd: float = 0.6          # initial per-task sd of the action distribution
    es_generations: int = 8           # ES iterations
    es_pairs: int = 8                 # antithetic pairs per generation (population = 2x)
    es_sigma: float = 0.1             # parameter perturbation scale
    es_lr: float = 0.1                # step size on the rank-normalised gradient
    sessions_per_eval: int = 400      # simulated sessions per candidate per generation

    def __post_init__(self) -> None:
        for name in ("cem_generations", "cem_population", "es_generations", "es_pairs",
                     "sessions_per_eval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 < self.cem_elite_frac <= 1.0:
            raise ValueError(f"cem_elite_frac must be in (0, 1], got {self.cem_elite_frac}")
        if self.sessions_per_eval < 2:
            raise ValueError("sessions_per_eval must be >= 2")
        if self.es_sigma <= 0 or self.es_lr <= 0 or self.cem_init_sd <= 0:
            raise ValueError("es_sigma, es_lr and cem_init_sd must be > 0")


# The final comparison: black-box searches with simulator access, and learners trained on the
# final window. A learner is its table label and how it changes the configured TrainConfig.
SEARCHES = ("cem", "es")
LEARNERS: dict[str, tuple[str, Callable[[TrainConfig], TrainConfig]]] = {
    "td3": ("TD3", lambda t: dataclasses.replace(t, algo="td3")),
    "cql": ("CQL", lambda t: dataclasses.replace(t, algo="cql")),
    "bc": ("BC", lambda t: dataclasses.replace(t, algo="bc")),
    "bcq": ("BatchRL-MTF (BCQ)", lambda t: dataclasses.replace(t, algo="bcq")),
    "bcq_random": ("BCQ, random exploration only",
                   lambda t: dataclasses.replace(t, algo="bcq", explore_groups=("random",))),
    "iql": ("IQL (in-sample critic, weighted actor)", lambda t: dataclasses.replace(
        t, algo="iql", iql=dataclasses.replace(t.iql, quadratic_critic=False,
                                               curvature="diagonal"))),
    "iql_quadratic": ("IQL, quadratic critic", lambda t: dataclasses.replace(
        t, algo="iql", iql=dataclasses.replace(t.iql, quadratic_critic=True,
                                               curvature="diagonal"))),
    "iql_full": ("IQL, quadratic critic with weight interactions", lambda t: dataclasses.replace(
        t, algo="iql", iql=dataclasses.replace(t.iql, quadratic_critic=True, curvature="full"))),
}


@dataclass(frozen=True)
class PipelineConfig:
    """Section ``pipeline``: the closed loop and the final comparison."""

    days: int = 4                   # simulated days in the closed loop
    train_window_days: int = 3      # retrain daily on the last N days (paper: 3)
    first_train_day: int = 1        # 0-based day of the first retrain (day 0 = baseline only)
    truth_sessions: int = 4000      # simulated sessions per ground-truth evaluation
    truth_seed: int = 1234          # common random numbers of every ground-truth evaluation
    compare: tuple[str, ...] = ("cem", "es", "td3", "cql", "bcq", "bcq_random", "iql",
                                "iql_quadratic")  # the final table
    go_requires_ope: bool = True    # deploy only on the OPE's "go"; False = always deploy
    candidates: int = 1             # learners trained per retrain day (seeds seed, seed+1, ...);
    #                                 the gate picks among them (mtf.ope.gate.select_policy)
    search: SearchConfig = field(default_factory=SearchConfig)

    def __post_init__(self) -> None:
        if self.candidates < 1:
            raise ValueError(f"pipeline.candidates must be >= 1, got {self.candidates!r}")
        if self.days <= 0 or self.train_window_days <= 0 or self.truth_sessions < 2:
            raise ValueError("days and train_window_days must be > 0, truth_sessions >= 2")
        if not 0 <= self.first_train_day < self.days:
            raise ValueError(f"first_train_day must be in [0, days), got {self.first_train_day}")
        known = {*SEARCHES, *LEARNERS}
        bad = [c for c in self.compare if c not in known]
        if bad:
            raise ValueError(f"compare has unknown entries {bad}; known: {sorted(known)}")
