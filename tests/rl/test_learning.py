"""The paper's qualitative finding on a toy contextual problem (docs/method.md sections 5 and 8).

State s ~ U[-1, 1]; the logging policy plays a narrow a ~ N(c(s), 0.05^2), c(s) = 0.3 s. The
true reward rises with a - c(s) up to a cliff: r = a - c(s) for a - c(s) <= 0.3, else -1.
Every step is terminal, so Q(s, a) should equal r(s, a).

Inside the data the reward only rises, so a critic fitted there extrapolates upwards. TD3
follows it out of the data and over the cliff, with a Q far above the true reward; BCQ stays
within rho of the actions its VAE has seen and lands on the good side (a - c ~ +0.15). BC
reproduces the logging policy.
"""
from __future__ import annotations

import torch

from mtf.rl.agent import Agent, make_agent, make_generator
from mtf.rl.batch import TransitionBatch
from mtf.rl.config import BCQConfig, LearnerConfig, TrainConfig
from mtf.rl.loader import InMemorySource

CPU = torch.device("cpu")
STEPS = 300
NETS = LearnerConfig(hidden=(32, 32), actor_lr=1e-3, critic_lr=1e-3)
VAE = BCQConfig(vae_hidden=(32, 32), vae_lr=1e-3)
EVAL_STATES = torch.linspace(-1, 1, 101).reshape(-1, 1)


def logged_center(state: torch.Tensor) -> torch.Tensor:
    return 0.3 * state[:, :1]


def true_reward(state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    gain = action - logged_center(state)
    return torch.where(gain <= 0.3, gain, torch.full_like(gain, -1.0))


def logged_data(n: int = 4000) -> TransitionBatch:
    g = torch.Generator().manual_seed(0)
    s = torch.rand(n, 1, generator=g) * 2 - 1
    a = (logged_center(s) + 0.05 * torch.randn(n, 1, generator=g)).clamp(-1, 1)
    return TransitionBatch(state=s, action=a, reward=true_reward(s, a),
                           next_state=torch.zeros_like(s), is_terminal=torch.ones(n, 1),
                           group=torch.zeros(n, 1))


def fit(algo: str, data: TransitionBatch, seed: int = 0) -> Agent:
    torch.manual_seed(seed)
    agent = make_agent(TrainConfig(algo=algo, batch_size=128, common=NETS, bcq=VAE), 1, 1, CPU,
                       make_generator(seed, CPU), gamma=0.95)
    batches = InMemorySource(data, batch_size=128, seed=seed).batches(0)
    for step in range(STEPS):
        agent.update(next(batches), step)
    return agent


def test_bcq_stays_near_the_data_and_beats_td3_which_extrapolates_off_the_cliff() -> None:
    data = logged_data()
    bcq, td3 = fit("bcq", data), fit("td3", data)
    s, c = EVAL_STATES, logged_center(EVAL_STATES)
    a_bcq, a_td3 = bcq.act(s), td3.act(s)
    r_bcq, r_td3 = true_reward(s, a_bcq), true_reward(s, a_td3)
    behaviour = data.reward.mean().item()   # about 0

    # BCQ: within the logged support plus rho (0.15), improving on the logging policy.
    assert (a_bcq - c).abs().max().item() < 0.3
    assert r_bcq.mean().item() > behaviour + 0.1
    # TD3: out of distribution (the data never strays 0.25 from c(s)), over the cliff ...
    assert (a_td3 - c).mean().item() > 0.7
    assert r_td3.mean().item() < -0.9
    # ... with a Q that overestimates the true value of its actions by more than 1.
    q_td3 = td3.q_value(s, a_td3)
    assert q_td3 is not None and (q_td3 - r_td3).mean().item() > 1.0
    q_bcq = bcq.q_value(s, a_bcq)
    assert q_bcq is not None and (q_bcq - r_bcq).abs().mean().item() < 0.1
    assert r_bcq.mean().item() > r_td3.mean().item() + 1.0


def test_behaviour_cloning_recovers_the_logging_policy() -> None:
    bc = fit("bc", logged_data())
    assert (bc.act(EVAL_STATES) - logged_center(EVAL_STATES)).abs().mean().item() < 0.05
