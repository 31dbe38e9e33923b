"""TD3 (Fujimoto et al. 2018): the unconstrained actor-critic baseline of the paper.

Nothing keeps its actor near the logged actions, so on narrow logged data its critic
extrapolates and the actor runs to out-of-distribution actions (docs/method.md section 8: TD3's Q
diverged and produced out-of-distribution extreme actions). Shared hyper-parameters (tau,
target schedule, widths, learning rates) come from ``train.common``, gamma from ``mdp``.
"""
from __future__ import annotations

import torch
from torch import nn

from mtf.rl.batch import TransitionBatch
from mtf.rl.config import LearnerConfig, TD3Config
from mtf.rl.distributed import ddp_wrap
from mtf.rl.networks import DeterministicActor, EnsembleQ
from mtf.rl.updates import (LearnerBase, bellman_target, ensemble_critic_loss, frozen,
                            mix_ensemble_q, optimizer_step, soft_update, target_copy)


@torch.no_grad()
def td3_critic_target(batch: TransitionBatch, actor_target: DeterministicActor,
                      critic_target: EnsembleQ,
                      gamma: float, policy_noise: float, noise_clip: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """``y = r + gamma (1 - done) min_j Q'_j(s', clip(pi'(s') + clip(eps, -c, c), -1, 1))``."""
    next_a = actor_target(batch.next_state)                                   # (B, k)
    eps = torch.randn(next_a.shape, generator=generator, device=next_a.device)
    next_a = (next_a + (eps * policy_noise).clamp(-noise_clip, noise_clip)).clamp(-1.0, 1.0)
    q = critic_target(batch.next_state, next_a)                               # (2, B, 1)
    return bellman_target(batch.reward, batch.is_terminal, mix_ensemble_q(q, 1.0), gamma)


def deterministic_actor_loss(critic: EnsembleQ, state: torch.Tensor,
                             action: torch.Tensor) -> torch.Tensor:
    """``-mean Q1(s, pi(s))`` (DDPG / TD3 policy gradient)."""
    return -critic.q1_value(state, action).mean()


class TD3Agent(LearnerBase):
    """Deterministic actor + twin critics with target policy smoothing and delayed actor steps.

    ``actor_train`` / ``critic_train`` are the networks as their losses see them: DDP-wrapped
    under DDP, the bare networks otherwise.
    """

    algo = "td3"

    def __init__(self, state_dim: int, action_dim: int, common: LearnerConfig, td3: TD3Config,
                 device: torch.device, generator: torch.Generator, *, gamma: float) -> None:
        super().__init__(common, device, generator, gamma)
        self.td3 = td3
        self.actor = DeterministicActor(state_dim, action_dim, common.hidden).to(device)
        self.critic = EnsembleQ(state_dim, action_dim, common.hidden, 2).to(device)  # twin critics
        self.actor_target = target_copy(self.actor)
        self.critic_target = target_copy(self.critic)
        self.actor_train: nn.Module = self.actor
        self.critic_train: nn.Module = self.critic
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            "actor": torch.optim.Adam(self.actor.parameters(), lr=common.actor_lr),
            "critic": torch.optim.Adam(self.critic.parameters(), lr=common.critic_lr),
        }

    @property
    def nets(self) -> dict[str, nn.Module]:
        return {"actor": self.actor, "critic": self.critic, "actor_target": self.actor_target,
                "critic_target": self.critic_target}

    def wrap_ddp(self) -> None:
        """Train through DDP wrappers; targets stay local (every rank updates them alike)."""
        self.actor_train = ddp_wrap(self.actor, self.device)
        self.critic_train = ddp_wrap(self.critic, self.device)

    def update(self, batch: TransitionBatch, step: int) -> dict[str, torch.Tensor]:
        metrics = self.critic_step(batch)
        # Delayed actor step: every policy_delay critic steps (the same steps on every rank).
        if (step + 1) % self.td3.policy_delay == 0:
            metrics.update(self.actor_step(batch))
        if (step + 1) % self.common.target_update_every == 0:
            self.update_targets()
        return metrics

    def critic_loss(self, batch: TransitionBatch, target: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, Q1 on logged actions, extra metrics); CQL adds its penalty here."""
        q = self.critic_train(batch.state, batch.action)                     # (2, B, 1)
        return ensemble_critic_loss(q, target), q[0], {}

    def critic_step(self, batch: TransitionBatch) -> dict[str, torch.Tensor]:
        target = td3_critic_target(batch, self.actor_target, self.critic_target, self.gamma,
                                   self.td3.policy_noise, self.td3.noise_clip, self.generator)
        loss, q1, extra = self.critic_loss(batch, target)
        optimizer_step(self.optimizers["critic"], loss)
        return {"loss/critic": loss.detach(), "q/data": q1.detach().mean(),
                "q/target": target.mean(), **extra}

    def actor_step(self, batch: TransitionBatch) -> dict[str, torch.Tensor]:
        action = self.actor_train(batch.state)
        with frozen(self.critic):
            loss = deterministic_actor_loss(self.critic, batch.state, action)
            optimizer_step(self.optimizers["actor"], loss)
        return {"loss/actor": loss.detach(), "q/policy": -loss.detach()}

    def update_targets(self) -> None:
        soft_update(self.critic_target, self.critic, self.common.tau)
        soft_update(self.actor_target, self.actor, self.common.tau)

    def policy(self) -> nn.Module:
        return self.actor

    @torch.no_grad()
    def act(self, state: torch.Tensor) -> torch.Tensor:
        return self.actor(state)

    @torch.no_grad()
    def q_value(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.critic.q1_value(state, action)
