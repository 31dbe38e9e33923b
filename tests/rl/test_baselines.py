"""TD3, CQL-style and behaviour-cloning losses and update wiring on tiny tensors."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from mtf.rl.agent import make_generator
from mtf.rl.bc import BCAgent, bc_loss
from mtf.rl.config import BCConfig, CQLConfig, TD3Config
from mtf.rl.cql import CQLAgent, cql_penalty
from mtf.rl.networks import DeterministicActor, EnsembleQ
from mtf.rl.td3 import TD3Agent, deterministic_actor_loss, td3_critic_target
from tests.rl.helpers import (GAMMA, TINY_NETS, changed, params, random_batch, set_constant,
                              set_member_constant, set_member_first_action_coordinate)

CPU = torch.device("cpu")


def test_td3_target_uses_the_min_of_the_target_critics() -> None:
    critic_target = EnsembleQ(3, 2, (8,), 2)
    set_member_constant(critic_target, 0, 2.0)
    set_member_constant(critic_target, 1, -1.0)
    batch = random_batch(b=6, s=3, k=2)
    y = td3_critic_target(batch, DeterministicActor(3, 2, (8,)), critic_target, gamma=0.9,
                          policy_noise=0.2, noise_clip=0.5)
    torch.testing.assert_close(y, batch.reward + 0.9 * (1 - batch.is_terminal) * -1.0)


def test_td3_target_smoothing_noise_is_clipped_and_actions_stay_in_the_box() -> None:
    s, k = 2, 1
    actor_target = DeterministicActor(s, k, (4,))
    set_constant(actor_target.net, 0.0)   # pi'(s') = tanh(0) = 0
    critic_target = EnsembleQ(s, k, (4,), 2)
    for member in (0, 1):   # Q' = the smoothed action itself
        set_member_first_action_coordinate(critic_target, member, s)
    batch = random_batch(b=256, s=s, k=k, terminal_every=10_000)
    batch = replace(batch, reward=torch.zeros(256, 1))
    y = td3_critic_target(batch, actor_target, critic_target, gamma=1.0, policy_noise=10.0,
                          noise_clip=0.3, generator=torch.Generator().manual_seed(0))
    assert y.abs().max().item() == pytest.approx(0.3)    # huge noise, clipped to +-0.3


def test_deterministic_actor_loss_is_minus_mean_q1() -> None:
    critic = EnsembleQ(2, 2, (4,), 2)
    set_member_first_action_coordinate(critic, 0, 2)
    action = torch.tensor([[0.5, 0.0], [-0.1, 0.3]])
    torch.testing.assert_close(deterministic_actor_loss(critic, torch.zeros(2, 2), action),
                               torch.tensor(-0.2))


def test_cql_penalty_matches_hand_computed_logsumexp() -> None:
    q_sampled = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]])
    q_data = torch.tensor([[0.5], [1.0]])
    # state 0: log(1 + 3) - 0.5; state 1: log(2 e) - 1 = log 2
    expected = ((math.log(4.0) - 0.5) + math.log(2.0)) / 2
    torch.testing.assert_close(cql_penalty(q_sampled, q_data, temperature=1.0),
                               torch.tensor(expected))
    # temperature T: T * logsumexp(q / T)
    t = 0.5
    expected_t = ((t * math.log(1 + math.exp(math.log(3.0) / t)) - 0.5)
                  + (t * math.log(2 * math.exp(1.0 / t)) - 1.0)) / 2
    torch.testing.assert_close(cql_penalty(q_sampled, q_data, temperature=t),
                               torch.tensor(expected_t))


def test_cql_critic_loss_is_td_plus_alpha_times_penalty_of_both_critics() -> None:
    torch.manual_seed(0)
    agent = CQLAgent(3, 2, TINY_NETS, TD3Config(), CQLConfig(alpha=2.0, n_action_samples=3),
                     CPU, make_generator(0, CPU), gamma=GAMMA)
    critic = agent.nets["critic"]
    set_member_constant(critic, 0, 1.0)
    set_member_constant(critic, 1, 2.0)
    batch = random_batch(b=4, s=3, k=2)
    target = torch.zeros(4, 1)
    loss, q1, extra = agent.critic_loss(batch, target)
    # TD: 1^2 + 2^2; penalty per critic with m = 6 equal values q: log(6) + q - q = log 6
    td, pen = 1.0 + 4.0, 2 * math.log(6.0)
    torch.testing.assert_close(extra["loss/td"], torch.tensor(td))
    torch.testing.assert_close(extra["loss/cql_penalty"], torch.tensor(pen))
    torch.testing.assert_close(loss, torch.tensor(td + 2.0 * pen))
    torch.testing.assert_close(q1, torch.ones(4, 1))


def test_bc_loss_is_mean_squared_error() -> None:
    torch.testing.assert_close(bc_loss(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 1.0]])),
                               torch.tensor(0.5))


def _td3(cls: type = TD3Agent) -> TD3Agent:
    torch.manual_seed(0)
    if cls is CQLAgent:
        return CQLAgent(3, 2, TINY_NETS, TD3Config(), CQLConfig(), CPU, make_generator(0, CPU),
                        gamma=GAMMA)
    return TD3Agent(3, 2, TINY_NETS, TD3Config(), CPU, make_generator(0, CPU), gamma=GAMMA)


@pytest.mark.parametrize("cls", [TD3Agent, CQLAgent])
@pytest.mark.parametrize("step_name, owner", [("critic_step", "critic"), ("actor_step", "actor")])
def test_td3_and_cql_steps_change_exactly_their_own_parameters(cls: type, step_name: str,
                                                               owner: str) -> None:
    agent = _td3(cls)
    before = {name: params(net) for name, net in agent.nets.items()}
    getattr(agent, step_name)(random_batch(b=16, s=3, k=2))
    for name, net in agent.nets.items():
        diff = changed(before[name], net)
        assert diff == (set(before[name]) if name == owner else set()), (name, sorted(diff))


def test_td3_updates_the_actor_every_policy_delay_steps() -> None:
    agent = _td3()
    batch = random_batch(b=16, s=3, k=2)
    seen = [("loss/actor" in agent.update(batch, step)) for step in range(6)]
    assert seen == [False, True, False, True, False, True]   # policy_delay = 2


def test_bc_step_changes_the_actor_and_returns_its_loss() -> None:
    torch.manual_seed(0)
    agent = BCAgent(3, 2, TINY_NETS, BCConfig(), CPU, make_generator(0, CPU))
    before = params(agent.nets["actor"])
    metrics = agent.update(random_batch(b=16, s=3, k=2), 0)
    assert set(metrics) == {"loss/bc"}
    assert changed(before, agent.nets["actor"]) == set(before)
    assert agent.q_value(torch.zeros(1, 3), torch.zeros(1, 2)) is None
