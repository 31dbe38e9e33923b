"""Validation helpers: rank correlation, truth comparison, simulated transitions, and interval
coverage against the simulator's ground truth."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from mtf.config import load_config
from mtf.ope.config import ESTIMATORS, OpeConfig
from mtf.ope.evaluate import local_sums
from mtf.ope.results import Estimate, PolicyEstimates, summarise
from mtf.loop.ope_validation import (ground_truth, simulated_transitions, to_arrays,
                                     validation_policies)
from mtf.ope.truth import compare_with_truth, rankdata, spearman
from mtf.sim.evaluate import evaluate_many
from mtf.sim.logging_policy import truncated_normal_sample
from mtf.sim.world import World
from tests.ope.test_bootstrap import zero_q_bundle


def test_rank_correlation() -> None:
    np.testing.assert_array_equal(rankdata([10, 20, 20, 5]), [2.0, 3.5, 3.5, 1.0])
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # d = (0, 1, -1, 0): 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def fake_result(policy: str, value: float, penalty: float = 0.0) -> PolicyEstimates:
    est = {e: Estimate(e, value, value - 0.1, value + 0.1, 0.05) for e in ESTIMATORS}
    return PolicyEstimates(policy, est, {}, {"conservative_penalty": penalty})


def test_compare_with_truth_reports_errors_coverage_and_discordant_pairs() -> None:
    results = [fake_result("a", 1.0), fake_result("b", 2.05, 0.3), fake_result("c", 2.0)]
    truth = {"a": {"mean": 1.05, "std_err": 0.01}, "b": {"mean": 1.9, "std_err": 0.01},
             "c": {"mean": 2.5, "std_err": 0.01}}
    v = compare_with_truth(results, truth)
    cons = v["estimators"]["conservative_fqe"]
    np.testing.assert_allclose(cons["error"], [-0.05, 0.15, -0.5])
    assert cons["mean_abs_error"] == pytest.approx(0.7 / 3)
    assert cons["coverage"] == pytest.approx(1 / 3)      # only a's interval covers
    assert cons["spearman"] == pytest.approx(0.5) and not cons["same_order"]
    [pair] = v["discordant_pairs"]
    assert (pair["a"], pair["b"], pair["truth_tied"]) == ("b", "c", False)
    assert pair["true_diff"] == pytest.approx(-0.6) and pair["penalty_a"] == 0.3


@pytest.fixture(scope="module")
def tiny_world() -> World:
    cfg = load_config()
    return World.build(sim=replace(cfg.sim, n_users=60, n_days=2), serving=cfg.serving,
                       fusion=cfg.fusion,
                       features=cfg.features, reward=cfg.reward, gamma=0.95, seed=3)


def test_simulated_transitions_follow_the_contract(tiny_world: World) -> None:
    df = simulated_transitions(tiny_world, test_share=0.5)
    assert list(df.columns) == ["session_id", "user_id", "step", "ts", "ds", "state", "next_state",
                                "action", "action_logp", "reward", "reward_stickiness",
                                "reward_activeness", "is_terminal", "is_truncated",
                                "explore_group", "split"]
    assert set(df["split"]) == {"train", "test"}
    np.testing.assert_allclose(df["reward"], df["reward_stickiness"] + df["reward_activeness"])
    data = to_arrays(df)
    s = tiny_world.features.state_dim
    assert data.state.shape == (len(df), s) and data.action.shape == (len(df), tiny_world.k)
    assert np.abs(data.action).max() <= 1.0
    assert np.array_equal(np.isnan(data.action_logp), data.is_exploit)
    last = np.r_[data.session_id[1:] != data.session_id[:-1], True]
    assert np.array_equal(last, data.is_terminal | data.is_truncated)
    np.testing.assert_array_equal(data.next_state[:-1][~last[:-1]], data.state[1:][~last[:-1]])
    assert np.all(data.next_state[data.is_terminal] == 0.0)
    np.testing.assert_array_equal(data.position()[data.session_starts()], 0)


def test_validation_policies_run_in_the_simulator(tiny_world: World) -> None:
    policies = validation_policies(tiny_world)
    assert [p.name for p in policies][:1] == ["logging"] and "activity_rule" in \
        [p.name for p in policies]
    truth = ground_truth(tiny_world, policies[:2], n_sessions=20, seed=1)
    assert set(truth) == {"logging", "quality"}
    assert all(t["ci_low"] <= t["mean"] <= t["ci_high"] for t in truth.values())


def test_wpdis_intervals_cover_the_simulator_truth_at_about_the_nominal_rate() -> None:
    """30 independent log samples (disjoint user shards, one fresh-user session each, so the
    logged start states have the distribution of the simulator's evaluation episodes). Target:
    the baseline smoothed by the target density, i.e. the noise group's own policy; its true
    value comes from the simulator with that noise."""
    torch.set_num_threads(1)
    cfg = load_config()
    shards, users = 30, 150
    pop = replace(cfg.sim.population, visit_prob_casual=1.0, visit_prob_engaged=1.0,
                  extra_sessions_mean=0.0)
    sim = replace(cfg.sim, n_users=shards * users, users_per_shard=users, n_days=1,
                  population=pop, eval=replace(cfg.sim.eval, warmup_sessions=0))
    world = World.build(sim=sim, serving=cfg.serving, fusion=cfg.fusion, features=cfg.features,
                        reward=cfg.reward, gamma=0.95, seed=7)
    sigma = cfg.serving.noise_sigma
    rng = np.random.default_rng(0)

    def smoothed_baseline(states: np.ndarray) -> np.ndarray:
        mu = np.broadcast_to(world.baseline_action, (states.shape[0], world.k)).copy()
        return truncated_normal_sample(mu, sigma, rng)

    truth = evaluate_many(world, {"p": smoothed_baseline}, n_sessions=4000, seed=11)["p"]
    bundle = zero_q_bundle(list(world.baseline_action), world.features.state_dim, sigma)
    ope = OpeConfig(n_bootstrap=200, ci_level=0.9, target_sigma=sigma)
    covered = []
    for shard in range(shards):
        data = to_arrays(simulated_transitions(world, shards=[shard]))
        e = summarise(local_sums(data, bundle, ope, gamma=0.95, seed=shard), ope)[0]
        covered.append(e.estimates["wpdis"].ci_low <= truth.mean_return
                       <= e.estimates["wpdis"].ci_high)
    assert 0.75 <= np.mean(covered) <= 1.0, np.mean(covered)
