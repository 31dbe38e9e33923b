"""Small simulated worlds and logs shared by the simulator tests (built once per session)."""
from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from mtf.sim.config import CatalogConfig, SimConfig
from mtf.sim.generate import SimLogs, simulate_logs
from mtf.sim.world import World

# 600 users in 3 shards over 3 days: ~60k impressions, a few sessions across midnight.
SMALL_SIM = SimConfig(n_users=600, n_days=3, users_per_shard=200, start_date="2026-03-01",
                      catalog=CatalogConfig(n_items=5000))


def small_world(**sim_changes: object) -> World:
    return World.build(sim=dataclasses.replace(SMALL_SIM, **sim_changes), seed=11)


@pytest.fixture(scope="session")
def world() -> World:
    return small_world()


@pytest.fixture(scope="session")
def logs(world: World) -> SimLogs:
    return simulate_logs(world, include_truth=True)


@pytest.fixture(scope="session")
def log_df(logs: SimLogs) -> pd.DataFrame:
    return logs.impressions.to_pandas()
