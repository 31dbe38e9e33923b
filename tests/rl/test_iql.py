"""IQL: expectile value, in-sample Bellman target, advantage-weighted actor on chosen groups."""
from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from mtf.rl.agent import make_agent, make_generator
from mtf.rl.batch import GROUP_CODES, TransitionBatch
from mtf.rl.config import IQLConfig, LearnerConfig, TrainConfig
from mtf.rl.iql import (IQLAgent, QuadraticQ, awr_weights, ema_decay, expectile_loss,
                        weighted_regression_loss)
from mtf.rl.loader import InMemorySource
from tests.rl.helpers import GAMMA, random_batch

CPU = torch.device("cpu")


def test_expectile_loss_weighs_positive_and_negative_errors_by_tau() -> None:
    diff = torch.tensor([[2.0], [-1.0]])
    # 0.8 * 4 and 0.2 * 1, mean over 2 rows
    assert expectile_loss(diff, 0.8).item() == pytest.approx((0.8 * 4 + 0.2 * 1) / 2)
    assert expectile_loss(diff, 0.5).item() == pytest.approx(0.5 * (4 + 1) / 2)


def test_awr_weights_are_exponential_and_capped() -> None:
    w = awr_weights(torch.tensor([[0.0], [0.1], [1.0]]), beta=10.0, max_weight=100.0)
    assert w.ravel().tolist() == pytest.approx([1.0, 2.718281828, 100.0], rel=1e-6)


def test_weighted_regression_ignores_masked_rows() -> None:
    pred = torch.zeros(3, 2)
    logged = torch.tensor([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    weight = torch.tensor([[1.0], [0.5], [9.0]])
    mask = torch.tensor([[1.0], [1.0], [0.0]])
    # (1 * 1 + 0.5 * 4) / 2 rows; row 3 (masked) would dominate otherwise
    assert weighted_regression_loss(pred, logged, weight, mask).item() == pytest.approx(1.5)
    assert weighted_regression_loss(pred, logged, weight, torch.zeros(3, 1)).item() == 0.0


def _agent(**iql: object) -> IQLAgent:
    torch.manual_seed(0)
    common = LearnerConfig(hidden=(16, 16))
    return IQLAgent(3, 2, common, IQLConfig(**iql), CPU, make_generator(0, CPU),  # type: ignore
                    gamma=GAMMA)


def test_critic_target_is_reward_plus_discounted_value_of_next_state() -> None:
    agent = _agent()
    batch = random_batch(b=32, s=3, k=2)
    # The target uses V after this step's value update: replay that update on a copy.
    shadow = copy.deepcopy(agent)
    with torch.no_grad():
        q_logged = shadow.critic_target(batch.state, batch.action).amin(dim=0)
    loss = expectile_loss(q_logged - shadow.value(batch.state), shadow.iql.expectile)
    shadow.optimizers["value"].zero_grad()
    loss.backward()
    shadow.optimizers["value"].step()
    with torch.no_grad():
        want = batch.reward + 0.95 * (1 - batch.is_terminal) * shadow.value(batch.next_state)
    metrics = agent.update(batch, 0)
    assert metrics["q/target"].item() == pytest.approx(want.mean().item(), rel=1e-5)
    assert metrics["loss/value"].item() == pytest.approx(loss.item(), rel=1e-5)


def test_actor_learns_only_from_its_groups() -> None:
    # Rows of other groups carry a huge action; the actor's loss must not see them. beta = 0
    # makes every weight 1, so the loss does not depend on the critics (which do see them).
    agent = _agent(actor_groups=("random",), beta=0.0)
    batch = random_batch(b=30, s=3, k=2)           # groups cycle exploit, noise, random
    loud = TransitionBatch(batch.state, torch.where(batch.group == 2, batch.action, 50.0),
                           batch.reward, batch.next_state, batch.is_terminal, batch.group)
    quiet = _agent(actor_groups=("random",), beta=0.0)
    m_loud, m_quiet = agent.update(loud, 0), quiet.update(batch, 0)
    assert m_loud["loss/actor"].item() == pytest.approx(m_quiet["loss/actor"].item())
    assert m_loud["iql/actor_rows"].item() == pytest.approx(1 / 3)
    every = _agent(actor_groups=("exploit", "noise", "random"), beta=0.0)
    assert every.update(loud, 0)["loss/actor"].item() > 100 * m_quiet["loss/actor"].item()


def _personalised_bandit(n: int = 6000) -> TransitionBatch:
    """One-step sessions. Half the rows are exploit (a = 0), half random (a ~ U[-1, 1]); the
    best action is +0.6 for s > 0 and -0.6 for s < 0 (a personalised fusion)."""
    g = torch.Generator().manual_seed(0)
    s = torch.rand(n, 1, generator=g) * 2 - 1
    random = torch.arange(n).reshape(-1, 1) % 2 == 1
    a = torch.where(random, torch.rand(n, 1, generator=g) * 2 - 1, torch.zeros(n, 1))
    best = 0.6 * torch.sign(s)
    r = 1.0 - (a - best).pow(2) + 0.1 * torch.randn(n, 1, generator=g)
    group = torch.where(random, float(GROUP_CODES["random"]), float(GROUP_CODES["exploit"]))
    return TransitionBatch(s, a, r, torch.zeros_like(s), torch.ones(n, 1), group)


def _fit_iql(actor_groups: tuple[str, ...], steps: int = 600) -> torch.Tensor:
    torch.manual_seed(0)
    cfg = TrainConfig(algo="iql", batch_size=128,
                      common=LearnerConfig(hidden=(32, 32)),
                      iql=IQLConfig(beta=10.0, actor_groups=actor_groups, critic_lr=1e-3))
    agent = make_agent(cfg, 1, 1, CPU, make_generator(0, CPU), gamma=GAMMA)
    batches = InMemorySource(_personalised_bandit(), batch_size=128, seed=0).batches(0)
    for step in range(steps):
        agent.update(next(batches), step)
    return agent.act(torch.tensor([[-0.7], [-0.4], [0.4], [0.7]])).ravel()


def test_iql_personalises_towards_the_better_action_of_each_state() -> None:
    a = _fit_iql(("random",))
    # moves each side towards its best action (-0.6 / +0.6), far from the exploit action 0
    assert (a[:2] < -0.3).all() and (a[2:] > 0.3).all(), a
    assert (a.abs() < 0.9).all(), a      # a weighted mean of logged actions, not a corner
    # regressing on the exploit rows too anchors the policy at their action (0)
    anchored = _fit_iql(("exploit", "random"))
    assert (anchored.abs() < a.abs()).all(), (anchored, a)


def test_quadratic_critic_value_and_maximiser_by_hand() -> None:
    q = QuadraticQ(1, 2, (4,), min_curvature=0.1)
    # Make head j output the constant (v, g1, g2, d1, d2): zero weights, chosen biases.
    outs = [torch.tensor([1.0, 0.4, -3.0, 0.0, 0.0]), torch.tensor([0.0, 0.2, 0.1, 0.0, 0.0])]
    with torch.no_grad():
        for head, out in zip(q.heads, outs):
            for layer in head.net:
                if isinstance(layer, torch.nn.Linear):
                    layer.weight.zero_()
                    layer.bias.zero_()
            head.net[-1].bias.copy_(out)
    p = torch.nn.functional.softplus(torch.tensor(0.0)).item() + 0.1     # curvature, both
    s, a = torch.zeros(1, 1), torch.tensor([[0.5, -1.0]])
    want1 = 1.0 + 0.4 * 0.5 - 3.0 * -1.0 - 0.5 * p * (0.25 + 1.0)
    assert q.q1_value(s, a).item() == pytest.approx(want1, rel=1e-6)
    assert q(s, a)[0].item() == pytest.approx(want1, rel=1e-6)
    # maximisers g / p, clipped to the box, averaged over the two critics
    best = [[min(1.0, 0.4 / p), -1.0], [0.2 / p, 0.1 / p]]
    want = [(best[0][j] + best[1][j]) / 2 for j in range(2)]
    assert q.maximiser(s).ravel().tolist() == pytest.approx(want, rel=1e-6)


def _fit_quadratic(steps: int = 600) -> IQLAgent:
    torch.manual_seed(0)
    cfg = TrainConfig(algo="iql", batch_size=128,
                      common=LearnerConfig(hidden=(32, 32)),
                      iql=IQLConfig(quadratic_critic=True, min_curvature=0.1,
                                    critic_lr=1e-3))
    agent = make_agent(cfg, 1, 1, CPU, make_generator(0, CPU), gamma=GAMMA)
    batches = InMemorySource(_personalised_bandit(), batch_size=128, seed=0).batches(0)
    for step in range(steps):
        agent.update(next(batches), step)
    return agent  # type: ignore[return-value]


def test_quadratic_critic_finds_each_states_best_action_without_an_actor() -> None:
    agent = _fit_quadratic()
    assert set(agent.nets) == {"critic", "critic_target", "value", "policy_average"}
    assert set(agent.optimizers) == {"critic", "value"}
    a = agent.act(torch.tensor([[-0.7], [-0.4], [0.4], [0.7]])).ravel()
    # the reward is exactly quadratic in a with its peak at -+0.6: the maximiser finds it
    assert torch.allclose(a, torch.tensor([-0.6, -0.6, 0.6, 0.6]), atol=0.15), a
    # and it is what the exported policy module computes
    assert torch.equal(agent.policy()(torch.tensor([[0.4]])), agent.act(torch.tensor([[0.4]])))


def test_quadratic_policy_exports_to_torchscript(tmp_path: Any) -> None:
    from mtf.rl.batch import Normalizer
    from mtf.rl.checkpoint import load_checkpoint
    from mtf.rl.export import build_policy, export_policy
    from mtf.rl.train import train
    from tests.rl.helpers import tiny_config
    from tests.rl.test_train import LAYOUT, SPACE

    data = random_batch(b=64, s=3, k=2, seed=1)
    result = train(tiny_config("iql", max_steps=6, checkpoint_every=6,
                               iql=IQLConfig(quadratic_critic=True)),
                   InMemorySource(data, batch_size=16, seed=0), gamma=0.95, layout=LAYOUT,
                   action_space=SPACE, run_dir=str(tmp_path / "run"), seed=1,
                   normalizer=Normalizer.fit(data.state.numpy()), device=CPU)
    exported = export_policy(result.checkpoint, str(tmp_path / "export"))
    states = torch.randn(20, 3)
    scripted = torch.jit.load(exported.policy_path)
    assert torch.equal(scripted(states), build_policy(load_checkpoint(result.checkpoint))(states))
    assert exported.meta["algorithm"] == "iql"


def test_quadratic_critic_with_n_heads_averages_their_maximisers() -> None:
    torch.manual_seed(0)
    q = QuadraticQ(3, 2, (8,), min_curvature=0.1, n=5)
    s, a = torch.randn(7, 3), torch.rand(7, 2) * 2 - 1
    assert q(s, a).shape == (5, 7, 1)
    assert torch.equal(q(s, a)[0], q.q1_value(s, a))
    want = torch.stack([h.best(s) for h in q.heads]).mean(dim=0)
    assert torch.allclose(q.maximiser(s), want)
    agent = _agent(quadratic_critic=True, n_heads=5)
    m = agent.update(random_batch(b=16, s=3, k=2), 0)
    assert len(agent.critic.heads) == 5 and "loss/actor" not in m      # type: ignore[union-attr]
    with pytest.raises(ValueError, match="iql.n_heads must be >= 2"):
        IQLConfig(n_heads=1)
    with pytest.raises(ValueError, match="iql.min_curvature must be > 0"):
        IQLConfig(min_curvature=0.0)


def test_policy_is_a_moving_average_of_the_trained_networks() -> None:
    assert ema_decay(0.999, 0) == pytest.approx(0.1)          # early steps track closely
    assert ema_decay(0.999, 90) == pytest.approx(0.91)
    assert ema_decay(0.999, 100_000) == 0.999
    for quadratic in (False, True):
        agent = _agent(quadratic_critic=quadratic, policy_ema=0.5)
        trained = agent.critic if quadratic else agent.actor
        before = [p.clone() for p in agent.policy_average.parameters()]   # type: ignore
        agent.update(random_batch(b=16, s=3, k=2), 5)                       # decay 6/15
        for avg, old, new in zip(agent.policy_average.parameters(), before,  # type: ignore
                                 trained.parameters()):                     # type: ignore
            assert torch.allclose(avg, 0.4 * old + 0.6 * new, atol=1e-6)
        s = torch.randn(4, 3)
        net = agent.policy_average
        want = net.maximiser(s) if quadratic else net(s)                    # type: ignore
        assert torch.equal(agent.act(s), want)
        last = agent.critic.maximiser(s) if quadratic else agent.actor(s)     # type: ignore
        assert not torch.equal(agent.act(s), last)
    off = _agent(policy_ema=0.0)
    assert off.policy_average is None and "policy_average" not in off.nets
    assert torch.equal(off.act(s), off.actor(s))                            # type: ignore
    with pytest.raises(ValueError, match="iql.policy_ema must be in"):
        IQLConfig(policy_ema=1.0)
