"""BCQ losses, target, action selection and update wiring on tiny tensors with known values."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from mtf.rl.agent import make_generator
from mtf.rl.bcq import (BCQAgent, BCQPolicy, bcq_actor_loss, bcq_critic_target, behaviour_loss,
                        vae_loss)
from mtf.rl.networks import (ActionVAE, BoundedProposer, EnsembleQ, Perturbation,
                             bounded_offsets, prior_latents)
from tests.rl.helpers import (GAMMA, TINY_BCQ, TINY_NETS, changed, params, random_batch,
                              set_member_constant, set_member_first_action_coordinate)

CPU = torch.device("cpu")


def test_vae_loss_matches_hand_computed_value() -> None:
    recon = torch.tensor([[0.5, -0.5]])
    action = torch.tensor([[1.0, 0.0]])
    mean = torch.tensor([[0.0, 1.0]])
    std = torch.tensor([[1.0, 0.5]])
    # recon: ((0.5)^2 + (0.5)^2) / 2; KL per coordinate: 0 and -0.5 (1 + log 0.25 - 1 - 0.25)
    kl = (0.0 + -0.5 * (1 + math.log(0.25) - 1.0 - 0.25)) / 2
    expected = 0.25 + 0.5 * kl
    torch.testing.assert_close(vae_loss(recon, action, mean, std, kl_weight=0.5),
                               torch.tensor(expected))


def test_vae_loss_is_zero_for_perfect_reconstruction_and_standard_posterior() -> None:
    a = torch.tensor([[0.3, -0.2], [0.1, 0.9]])
    loss = vae_loss(a, a, torch.zeros(2, 4), torch.ones(2, 4), kl_weight=0.5)
    assert loss.item() == 0.0


@pytest.mark.parametrize("lam", [1.0, 0.75, 0.0])
def test_critic_target_is_exact_with_constant_target_critics(lam: float) -> None:
    s, k = 3, 2
    cfg = replace(TINY_BCQ, lam=lam)
    vae = ActionVAE(s, k, 4, (8,), -4.0, 15.0)
    actor_target = Perturbation(s, k, (8,), rho=0.15)
    critic_target = EnsembleQ(s, k, (8, 8), 2)
    set_member_constant(critic_target, 0, 1.0)
    set_member_constant(critic_target, 1, 3.0)
    batch = random_batch(b=6, s=s, k=k)

    y = bcq_critic_target(batch, vae, actor_target, critic_target, cfg, 0.9)

    # max over candidates of lam * min(1, 3) + (1 - lam) * max(1, 3), whatever the candidates
    value = lam * 1.0 + (1.0 - lam) * 3.0
    expected = batch.reward + 0.9 * (1.0 - batch.is_terminal) * value
    torch.testing.assert_close(y, expected)
    assert y.shape == (6, 1)


def test_critic_target_terminal_rows_do_not_bootstrap_truncated_rows_do() -> None:
    s, k = 2, 1
    critic_target = EnsembleQ(s, k, (4,), 2)
    set_member_constant(critic_target, 0, 10.0)
    set_member_constant(critic_target, 1, 10.0)
    batch = random_batch(b=4, s=s, k=k)
    batch = replace(batch, reward=torch.ones(4, 1),
                    is_terminal=torch.tensor([[1.0], [0.0], [1.0], [0.0]]))
    y = bcq_critic_target(batch, ActionVAE(s, k, 2, (4,), -4, 15), Perturbation(s, k, (4,), 0.15),
                          critic_target, TINY_BCQ, 0.95)
    torch.testing.assert_close(y, torch.tensor([[1.0], [1.0 + 0.95 * 10], [1.0],
                                                [1.0 + 0.95 * 10]]))


def test_critic_target_takes_the_max_over_each_states_own_candidates() -> None:
    s, k, n = 3, 2, 5
    cfg = replace(TINY_BCQ, n_candidates=n)
    vae = ActionVAE(s, k, 4, (8,), -4.0, 15.0)
    actor_target = Perturbation(s, k, (8,), rho=0.15)
    critic_target = EnsembleQ(s, k, (8,), 2)
    set_member_first_action_coordinate(critic_target, 0, s)   # Q'(s, a) = a_0
    set_member_first_action_coordinate(critic_target, 1, s)
    batch = random_batch(b=4, s=s, k=k, terminal_every=100)   # nothing terminal

    y = bcq_critic_target(batch, vae, actor_target, critic_target, cfg, 0.5,
                          generator=torch.Generator().manual_seed(3))

    # Replay the same latents state by state: candidates of state i are rows i*n .. i*n+n-1.
    z = prior_latents(4 * n, 4, cfg.latent_clip, generator=torch.Generator().manual_seed(3),
                      device=CPU)
    expected = []
    with torch.no_grad():
        for i in range(4):
            s_i = batch.next_state[i:i + 1].expand(n, s)
            cand = actor_target(s_i, vae.decode(s_i, z[i * n:(i + 1) * n]))
            expected.append(batch.reward[i, 0] + 0.5 * cand[:, 0].max())
    torch.testing.assert_close(y, torch.stack(expected).reshape(4, 1))


def test_actor_loss_is_minus_mean_q1_of_the_perturbed_actions() -> None:
    s, k = 2, 2
    critic = EnsembleQ(s, k, (4,), 2)
    set_member_first_action_coordinate(critic, 0, s)
    set_member_constant(critic, 1, 100.0)  # Q2 must not enter the actor loss
    state = torch.zeros(3, s)
    perturbed = torch.tensor([[0.2, 0.0], [0.4, 1.0], [-0.3, 0.5]])
    torch.testing.assert_close(bcq_actor_loss(critic, state, perturbed), torch.tensor(-0.1))


def test_perturbation_stays_within_rho_and_the_action_box() -> None:
    torch.manual_seed(0)
    p = Perturbation(3, 4, (8,), rho=0.15)
    with torch.no_grad():
        for layer in p.net:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.mul_(50.0)  # saturate tanh
    action = torch.rand(64, 4) * 2 - 1
    out = p(torch.randn(64, 3), action)
    assert (out - action).abs().max() <= 0.15 + 1e-6
    assert out.abs().max() <= 1.0
    assert (out - action).abs().max() > 0.14  # the bound is reached, not just respected


def test_prior_latents_are_clipped() -> None:
    z = prior_latents(1000, 3, 0.5, generator=torch.Generator().manual_seed(0), device=CPU)
    assert z.shape == (1000, 3)
    assert z.abs().max() == 0.5


def test_policy_returns_the_candidate_with_the_highest_q1() -> None:
    s, k, n = 2, 2, 6
    vae = ActionVAE(s, k, 3, (8,), -4.0, 15.0)
    actor = Perturbation(s, k, (8,), rho=0.15)
    critic = EnsembleQ(s, k, (4,), 2)
    set_member_first_action_coordinate(critic, 0, s)      # Q1 = a_0: prefer the largest a_0
    set_member_constant(critic, 1, 1e6)                   # Q2 must not matter for selection
    latents = prior_latents(n, 3, 0.5, generator=torch.Generator().manual_seed(1), device=CPU)
    state = torch.randn(5, s)
    got = BCQPolicy(vae, actor, critic, latents)(state)
    with torch.no_grad():
        for i in range(5):
            s_i = state[i:i + 1].expand(n, s)
            cand = actor(s_i, vae.decode(s_i, latents))
            torch.testing.assert_close(got[i], cand[cand[:, 0].argmax()])
    assert got.shape == (5, k)


def test_policy_is_deterministic_with_fixed_latents() -> None:
    agent = BCQAgent(3, 2, TINY_NETS, TINY_BCQ, CPU, make_generator(0, CPU), gamma=GAMMA)
    latents = prior_latents(4, agent.nets["vae"].latent_dim, 0.5,
                            generator=torch.Generator().manual_seed(0), device=CPU)
    policy = agent.policy(latents)
    state = torch.randn(10, 3)
    assert torch.equal(policy(state), policy(state))


def _agent() -> BCQAgent:
    torch.manual_seed(0)
    return BCQAgent(3, 2, TINY_NETS, TINY_BCQ, CPU, make_generator(0, CPU), gamma=GAMMA)


@pytest.mark.parametrize("step_name, owner", [("vae_step", "vae"), ("critic_step", "critic"),
                                              ("actor_step", "actor")])
def test_each_optimizer_step_changes_exactly_the_parameters_it_owns(step_name: str,
                                                                    owner: str) -> None:
    agent = _agent()
    before = {name: params(net) for name, net in agent.nets.items()}
    getattr(agent, step_name)(random_batch(b=16, s=3, k=2))
    for name, net in agent.nets.items():
        diff = changed(before[name], net)
        if name == owner:
            assert diff == set(before[name]), f"{step_name} left {owner} params unchanged"
        else:
            assert diff == set(), f"{step_name} changed {name}: {sorted(diff)}"


def test_actor_step_leaves_no_gradient_on_the_critic() -> None:
    agent = _agent()
    agent.actor_step(random_batch(b=16, s=3, k=2))
    assert all(p.grad is None for p in agent.nets["critic"].parameters())
    assert all(p.requires_grad for p in agent.nets["critic"].parameters())


def test_targets_move_by_tau_every_target_update_every_steps() -> None:
    agent = _agent()
    tau, every = TINY_NETS.tau, TINY_NETS.target_update_every
    target0 = params(agent.critic_target)
    batch = random_batch(b=16, s=3, k=2)
    for step in range(every - 1):
        agent.update(batch, step)
    assert changed(target0, agent.critic_target) == set()
    online = params(agent.nets["critic"])
    agent.update(batch, every - 1)
    online_after = params(agent.nets["critic"])
    for name, p in agent.critic_target.named_parameters():
        # the soft update uses the online weights after this step's critic update
        torch.testing.assert_close(p, (1 - tau) * target0[name] + tau * online_after[name])
    assert changed(online, agent.nets["critic"])  # sanity: the critic did train


def test_update_returns_detached_scalar_metrics() -> None:
    metrics = _agent().update(random_batch(b=16, s=3, k=2), 0)
    assert set(metrics) == {"loss/vae", "loss/critic", "loss/actor", "q/data", "q/policy",
                            "q/target"}
    assert all(v.dim() == 0 and not v.requires_grad for v in metrics.values())


# ---- critic ensemble (n_critics, actor_penalty; UnifiedRL-style, beyond the paper) -----------

def test_ensemble_of_two_matches_twin_critic_rules() -> None:
    from torch.nn import functional as F

    from mtf.rl.updates import ensemble_critic_loss, mix_ensemble_q
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 7, 1, generator=g)
    y = torch.randn(7, 1, generator=g)
    for lam in (1.0, 0.75, 0.0):   # the paper's soft clipped double Q
        torch.testing.assert_close(mix_ensemble_q(q, lam), lam * torch.minimum(q[0], q[1])
                                   + (1 - lam) * torch.maximum(q[0], q[1]))
    torch.testing.assert_close(ensemble_critic_loss(q, y),
                               F.mse_loss(q[0], y) + F.mse_loss(q[1], y))


def test_ensemble_target_takes_min_over_all_members() -> None:
    s, k = 3, 2
    cfg = replace(TINY_BCQ, lam=1.0, n_critics=4)
    critic_target = EnsembleQ(s, k, (8,), 4)
    for j, v in enumerate((4.0, -2.0, 7.0, 1.0)):
        set_member_constant(critic_target, j, v)
    batch = random_batch(b=5, s=s, k=k, terminal_every=100)
    y = bcq_critic_target(batch, ActionVAE(s, k, 4, (8,), -4.0, 15.0),
                          Perturbation(s, k, (8,), 0.15), critic_target, cfg, 0.5)
    torch.testing.assert_close(y, batch.reward + 0.5 * -2.0)


def test_ensemble_members_are_independent_mlps() -> None:
    torch.manual_seed(0)
    q = EnsembleQ(3, 2, (5, 4), 3)
    state, action = torch.randn(6, 3), torch.rand(6, 2)
    out = q(state, action)
    assert out.shape == (3, 6, 1)
    layers = list(q.layers)
    for j in range(3):   # replay member j as a plain MLP
        x = torch.cat([state, action], dim=1)
        for i, layer in enumerate(layers):
            x = x @ layer.weight[j] + layer.bias[j]
            if i < len(layers) - 1:
                x = torch.relu(x)
        torch.testing.assert_close(out[j], x)
    torch.testing.assert_close(q.q1_value(state, action), out[0])


def test_actor_penalty_scores_mean_minus_std_and_zero_means_q1() -> None:
    s, k = 2, 2
    critic = EnsembleQ(s, k, (4,), 2)
    set_member_constant(critic, 0, 1.0)
    set_member_constant(critic, 1, 3.0)
    state, perturbed = torch.zeros(3, s), torch.zeros(3, k)
    # mean 2, unbiased std sqrt(2)
    torch.testing.assert_close(bcq_actor_loss(critic, state, perturbed, penalty=0.5),
                               torch.tensor(-(2.0 - 0.5 * math.sqrt(2.0))))
    torch.testing.assert_close(bcq_actor_loss(critic, state, perturbed), torch.tensor(-1.0))


def test_penalised_policy_avoids_the_candidate_the_critics_disagree_on() -> None:
    s, k, n = 2, 2, 8
    vae = ActionVAE(s, k, 3, (8,), -4.0, 15.0)
    actor = Perturbation(s, k, (8,), rho=0.15)
    critic = EnsembleQ(s, k, (4,), 2)
    set_member_first_action_coordinate(critic, 0, s)   # Q1 = a_0, Q2 = 0: they disagree more
    #                                                    as a_0 grows
    set_member_constant(critic, 1, 0.0)
    latents = prior_latents(n, 3, 0.5, generator=torch.Generator().manual_seed(1), device=CPU)
    state = torch.randn(4, s)
    greedy = BCQPolicy(vae, actor, critic, latents)(state)
    careful = BCQPolicy(vae, actor, critic, latents, penalty=2.0)(state)
    with torch.no_grad():
        for i in range(4):
            s_i = state[i:i + 1].expand(n, s)
            cand = actor(s_i, vae.decode(s_i, latents))
            a0 = cand[:, 0]
            score = a0 / 2 - 2.0 * a0.abs() / math.sqrt(2.0)   # mean - 2 std of (a_0, 0)
            torch.testing.assert_close(greedy[i], cand[a0.argmax()])
            torch.testing.assert_close(careful[i], cand[score.argmax()])


def test_n_critics_below_two_is_rejected() -> None:
    with pytest.raises(ValueError, match="bcq.n_critics must be >= 2"):
        replace(TINY_BCQ, n_critics=1)
    with pytest.raises(ValueError, match="bcq.actor_penalty must be >= 0"):
        replace(TINY_BCQ, actor_penalty=-1.0)


def test_twin_critic_state_dict_loads_into_a_two_member_ensemble() -> None:
    """Checkpoints written before the ensemble (twin critics: two MLPs ``q1``, ``q2``) still
    load and give the same Q."""
    from torch import nn

    from mtf.rl.networks import mlp
    torch.manual_seed(0)
    twin = nn.ModuleDict({"q1": mlp(5, (5, 4), 1), "q2": mlp(5, (5, 4), 1)})
    ens = EnsembleQ(3, 2, (5, 4), 2)
    ens.load_state_dict(twin.state_dict())
    state, action = torch.randn(7, 3), torch.rand(7, 2)
    sa = torch.cat([state, action], dim=1)
    torch.testing.assert_close(ens(state, action), torch.stack([twin["q1"](sa), twin["q2"](sa)]))


# ---- UnifiedRL's policy-bounded candidates (bcq.candidates = "bounded") ---------------------

def _bounded_agent(bound: float = 0.15) -> BCQAgent:
    cfg = replace(TINY_BCQ, candidates="bounded", bound=bound)
    return BCQAgent(3, 2, TINY_NETS, cfg, CPU, make_generator(0, CPU), gamma=GAMMA)


def test_bounded_proposer_stays_within_the_bound_of_the_behaviour() -> None:
    prop = BoundedProposer(3, 2, (8,), bound=0.2)
    z = bounded_offsets(5000, 2, 0.2, generator=torch.Generator().manual_seed(0), device=CPU)
    assert z.abs().max() <= 0.2 and z.min() < -0.19 and z.max() > 0.19
    s = torch.randn(5000, 3)
    torch.testing.assert_close(prop.decode(s, z), (prop.behaviour(s) + z).clamp(-1, 1))


def test_behaviour_loss_counts_only_exploit_rows() -> None:
    pred = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.5, 0.0]])
    logged = torch.tensor([[0.5, 0.5], [0.0, 0.0], [0.5, 1.0]])
    exploit = torch.tensor([[1.0], [0.0], [1.0]])
    # rows 0 and 2: (0.25 + 0.25 + 0 + 1) / 2
    assert behaviour_loss(pred, logged, exploit).item() == pytest.approx(0.75)


def test_bounded_bcq_learns_the_deployed_action_and_acts_around_it() -> None:
    """The behaviour net fits the exploit rows' action (0.4, -0.3) whatever the exploring rows
    do, and the policy stays within bound + rho of it."""
    agent = _bounded_agent(bound=0.1)
    assert set(agent.nets) == {"behaviour", "actor", "critic", "actor_target", "critic_target"}
    batch = random_batch(b=96, s=3, k=2, seed=2)
    exploit = batch.group == 0
    action = torch.where(exploit, torch.tensor([[0.4, -0.3]]), batch.action)
    batch = replace(batch, action=action)
    for step in range(600):
        agent.update(batch, step)
    b = agent.vae.behaviour(batch.state)
    fit = b[exploit.squeeze(1)]
    torch.testing.assert_close(fit, torch.tensor([[0.4, -0.3]]).expand_as(fit), atol=0.05,
                               rtol=0)
    pi = agent.policy()(batch.state)
    assert ((pi - b).abs() <= 0.1 + TINY_BCQ.rho + 1e-5).all()
    assert "loss/behaviour" in agent.update(batch, 600)


def test_bounded_candidates_reject_bad_settings() -> None:
    with pytest.raises(ValueError, match="bcq.candidates must be 'vae' or 'bounded'"):
        replace(TINY_BCQ, candidates="prior")
    with pytest.raises(ValueError, match=r"bcq.bound must be in \(0, 2\]"):
        replace(TINY_BCQ, candidates="bounded", bound=0.0)
