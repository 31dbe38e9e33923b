"""Black-box baselines with simulator access find better policies than where they start."""
from __future__ import annotations

import numpy as np
import pytest

from mtf.loop.blackbox import LinearTanhPolicy, cem_fixed_action, es_linear_policy
from mtf.loop.config import SearchConfig
from mtf.config import load_config
from mtf.sim.evaluate import compare
from mtf.sim.policies import FixedPolicy, reference_actions
from mtf.sim.world import World


@pytest.fixture(scope="module")
def world() -> World:
    return World.from_config(load_config())


def test_cem_improves_on_a_myopic_start(world: World) -> None:
    myopic = reference_actions(load_config().fusion)["myopic"]
    cfg = SearchConfig(cem_generations=4, cem_population=10, sessions_per_eval=300)
    res = cem_fixed_action(world, cfg, seed=3, init=myopic)
    assert len(res.history) == 4 and res.n_sessions == 4 * 10 * 300 + 4 * 300
    diff = compare(world, res.best, FixedPolicy(myopic), n_sessions=3000, seed=77)
    assert diff.diff_ci[0] > 0, diff


def test_es_policy_improves_on_its_start(world: World) -> None:
    myopic = reference_actions(load_config().fusion)["myopic"]
    rng = np.random.default_rng(0)
    states = rng.uniform(0, 1, size=(500, load_config().features.state_dim))
    cfg = SearchConfig(es_generations=4, es_pairs=4, sessions_per_eval=300, es_lr=0.3)
    res = es_linear_policy(world, cfg, seed=5, state_sample=states, init_bias=myopic * 0.9)
    assert isinstance(res.best, LinearTanhPolicy)
    start = LinearTanhPolicy(np.zeros_like(res.best.weight), np.arctanh(myopic * 0.9),
                             res.best.center, res.best.scale)
    diff = compare(world, res.best, start, n_sessions=3000, seed=78)
    assert diff.diff_ci[0] > 0, diff


def test_search_config_validation() -> None:
    with pytest.raises(ValueError, match="cem_population must be > 0"):
        SearchConfig(cem_population=0)
    with pytest.raises(ValueError, match="cem_elite_frac"):
        SearchConfig(cem_elite_frac=1.5)
