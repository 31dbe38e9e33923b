"""Ground-truth evaluation: common random numbers and the long-term trade-off.

The trade-off tests run the default world (conf defaults) with fixed seeds; they are the
evidence quoted in docs/simulator.md.
"""
from __future__ import annotations

import numpy as np
import pytest

from mtf.config import load_config
from mtf.sim.evaluate import compare, evaluate, evaluate_many, paired_difference
from mtf.sim.policies import (FixedPolicy, ThresholdPolicy, grid_actions, hand_written_policy,
                              reference_actions)
from mtf.sim.world import World


@pytest.fixture(scope="module")
def default_world() -> World:
    return World.build()


def test_same_seed_same_result_and_self_comparison_is_exactly_zero(world: World) -> None:
    policy = FixedPolicy(np.zeros(world.k))
    a = evaluate(world, policy, n_sessions=300, seed=4)
    b = evaluate(world, policy, n_sessions=300, seed=4)
    np.testing.assert_array_equal(a.returns, b.returns)
    same = compare(world, policy, FixedPolicy(np.zeros(world.k)), n_sessions=300, seed=4)
    assert same.diff_return == 0.0 and same.diff_ci == (0.0, 0.0)
    other_seed = evaluate(world, policy, n_sessions=300, seed=5)
    assert not np.array_equal(other_seed.returns, a.returns)


def test_result_fields_are_consistent(world: World) -> None:
    res = evaluate(world, FixedPolicy(np.zeros(world.k)), n_sessions=400, seed=1)
    assert res.n_sessions == 400 and res.returns.shape == (400,)
    assert res.ci[0] < res.mean_return < res.ci[1]
    assert res.mean_return == pytest.approx(res.returns.mean())
    assert res.mean_first_reward == pytest.approx(res.first_rewards.mean())
    assert res.mean_session_length >= 1.0
    assert 0.0 < res.interaction_rate < 1.0
    assert res.mean_dwell_s > 0.0
    # Discounting: the return lies between the first reward and the undiscounted total.
    assert res.mean_first_reward <= res.mean_return <= res.mean_total_reward


def test_paired_interval_is_tighter_than_unpaired(world: World) -> None:
    ref = reference_actions(world.fusion)
    res = evaluate_many(world, {"a": FixedPolicy(ref["balanced"]),
                                "b": FixedPolicy(0.8 * ref["balanced"] + 0.2 * ref["careful"])},
                        n_sessions=600, seed=2)
    paired = paired_difference(res["a"], res["b"])
    unpaired_se = np.hypot(res["a"].std_err, res["b"].std_err)
    assert paired.diff_std_err < 0.5 * unpaired_se


def test_evaluate_accepts_the_pipeline_config() -> None:
    cfg = load_config(None, ["sim.catalog.n_items=1000", "sim.eval.warmup_sessions=1"])
    res = evaluate(cfg, FixedPolicy(np.zeros(cfg.fusion.k)), n_sessions=50, seed=0)
    assert res.n_sessions == 50


def test_policy_output_is_validated(world: World) -> None:
    with pytest.raises(ValueError, match=r"policy returned actions of shape \(\d+, 2\)"):
        evaluate(world, lambda s: np.zeros((len(s), 2)), n_sessions=10, seed=0)
    with pytest.raises(ValueError, match=r"n_sessions must be >= 2"):
        evaluate(world, FixedPolicy(np.zeros(world.k)), n_sessions=1, seed=0)


def test_myopic_wins_the_first_request_but_loses_the_session(default_world: World) -> None:
    """Trade-off (a): clickbait-chasing weights vs balanced weights, paired over 3000 sessions."""
    ref = reference_actions(default_world.fusion)
    cmp = compare(default_world, FixedPolicy(ref["myopic"]), FixedPolicy(ref["balanced"]),
                  n_sessions=3000, seed=2026)
    assert cmp.diff_first_reward_ci[0] > 0.0      # higher immediate reward ...
    assert cmp.diff_ci[1] < 0.0                   # ... lower discounted session return
    assert cmp.a.mean_session_length < cmp.b.mean_session_length


def test_hand_written_personalised_policy_beats_every_fixed_weight_vector(
        default_world: World) -> None:
    """Trade-off (b): a two-branch rule on profile activity vs a grid of fixed actions.

    Grid: the named reference actions (incl. both branches of the rule), each task's axis at
    +-1 and 4 uniform random actions (21 vectors), all paired on the same 1500 sessions.
    """
    world = default_world
    grid = grid_actions(world.fusion, n_random=4, rng=np.random.default_rng(0))
    policies = {name: FixedPolicy(a) for name, a in grid.items()}
    policies["personalised"] = hand_written_policy(world.features, world.fusion)
    res = evaluate_many(world, policies, n_sessions=1500, seed=77)
    worst_lower = {name: paired_difference(res["personalised"], r).diff_ci[0]
                   for name, r in res.items() if name != "personalised"}
    assert min(worst_lower.values()) > 0.0, worst_lower
    best_fixed = max(r.mean_return for n, r in res.items() if n != "personalised")
    assert res["personalised"].mean_return > 1.03 * best_fixed
    # The branches are the right way round: swapping them is worse than either branch alone.
    ref = reference_actions(world.fusion)
    swapped = ThresholdPolicy(world.features, "profile_activity", 0.6,
                              action_low=ref["engaging"], action_high=ref["careful"])
    res_swapped = evaluate(world, swapped, n_sessions=1500, seed=77)
    assert res_swapped.mean_return < min(res["engaging"].mean_return, res["careful"].mean_return)


def test_torch_policy_wraps_a_module(world: World) -> None:
    torch = pytest.importorskip("torch")
    from mtf.serving.export import torch_policy

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(world.features.state_dim, world.k),
                              torch.nn.Tanh())
    states = np.random.default_rng(0).random((7, world.features.state_dim), dtype=np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(states)).numpy()
    np.testing.assert_allclose(torch_policy(net)(states), want, rtol=1e-6)
    res = evaluate(world, torch_policy(net), n_sessions=20, seed=0)
    assert res.n_sessions == 20
