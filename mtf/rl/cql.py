"""A CQL-style conservative actor-critic (Kumar et al. 2020, CQL(H)): TD3 plus a penalty that
pushes Q down on actions the data does not support and up on the logged ones.

The paper's baseline is CQL+SAC; a deterministic actor keeps the comparison with TD3 and BCQ to
one change (the critic regulariser). The logsumexp runs over uniform actions in [-1, 1]^k and
noisy current-policy actions, as in CQL(H).
"""
from __future__ import annotations

import torch

from mtf.rl.batch import TransitionBatch
from mtf.rl.config import CQLConfig, LearnerConfig, TD3Config
from mtf.rl.td3 import TD3Agent
from mtf.rl.updates import ensemble_critic_loss


def cql_penalty(q_sampled: torch.Tensor, q_data: torch.Tensor,
                temperature: float) -> torch.Tensor:
    """``mean_s [ T * logsumexp_a (Q(s, a) / T) - Q(s, a_logged) ]``.

    Args:
        q_sampled: ``(B, m)`` Q values of m sampled actions per state.
        q_data: ``(B, 1)`` Q values of the logged actions.
    """
    soft_max = temperature * torch.logsumexp(q_sampled / temperature, dim=1, keepdim=True)
    return (soft_max - q_data).mean()


class CQLAgent(TD3Agent):
    """TD3 whose critic loss carries the conservative penalty ``alpha * (pen(Q1) + pen(Q2))``."""

    algo = "cql"

    def __init__(self, state_dim: int, action_dim: int, common: LearnerConfig, td3: TD3Config,
                 cql: CQLConfig, device: torch.device, generator: torch.Generator, *,
                 gamma: float) -> None:
        super().__init__(state_dim, action_dim, common, td3, device, generator, gamma=gamma)
        self.cql = cql

    def critic_loss(self, batch: TransitionBatch, target: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        b, n, k = len(batch), self.cql.n_action_samples, batch.action.shape[1]
        g, dev = self.generator, self.device
        s_rep = batch.state.repeat_interleave(n, dim=0)                       # (B, S) -> (B*n, S)
        uniform = torch.rand(b * n, k, generator=g, device=dev) * 2.0 - 1.0  # (B*n, k)
        with torch.no_grad():
            noise = torch.randn(b * n, k, generator=g, device=dev) * self.cql.sample_noise
            noisy_policy = (self.actor(s_rep) + noise).clamp(-1.0, 1.0)  # (B*n, k)
        # One critic forward over logged + sampled actions (one DDP forward per step).
        q_all = self.critic_train(torch.cat([batch.state, s_rep, s_rep]),
                                  torch.cat([batch.action, uniform, noisy_policy]))  # (2, ., 1)
        q_data = q_all[:, :b]                                                 # (2, B, 1)
        # sampled, per critic: (2*B*n, 1) -> (2, B, n) -> (B, 2n)
        sampled = [q[b:].view(2, b, n).permute(1, 0, 2).reshape(b, 2 * n) for q in q_all]
        td = ensemble_critic_loss(q_data, target)
        penalty = sum(cql_penalty(s, q, self.cql.temperature) for s, q in zip(sampled, q_data))
        loss = td + self.cql.alpha * penalty
        return loss, q_data[0], {"loss/td": td.detach(), "loss/cql_penalty": penalty.detach()}
