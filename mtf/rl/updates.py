"""Loss pieces and update helpers shared by BCQ and the baselines.

Pure tensor -> tensor functions (Bellman target, clipped double-Q mix, critic loss) and the
few torch helpers every algorithm needs (soft target update, one optimiser step, freezing a
critic while the actor's loss flows through it, target copies).
"""
from __future__ import annotations

import contextlib
import copy
from typing import TYPE_CHECKING, Iterator, TypeVar

import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from mtf.rl.config import LearnerConfig


def bellman_target(reward: torch.Tensor, is_terminal: torch.Tensor, next_value: torch.Tensor,
                   gamma: float) -> torch.Tensor:
    """``y = r + gamma * (1 - done) * V(s')``, all ``(B, 1)``.

    ``done`` is ``is_terminal`` only: a step cut by the end of the data window (``is_truncated``)
    still bootstraps (docs/contract.md section 2).
    """
    return reward + gamma * (1.0 - is_terminal) * next_value


def mix_ensemble_q(q: torch.Tensor, lam: float) -> torch.Tensor:
    """Soft clipped double Q over an ensemble ``(n, B, 1) -> (B, 1)``:
    ``lam * min_j Q_j + (1 - lam) * max_j Q_j`` (lam = 1: TD3's min; BCQ: 0.75)."""
    return lam * q.amin(dim=0) + (1.0 - lam) * q.amax(dim=0)


def ensemble_critic_loss(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``sum_j mean (Q_j - y)^2`` over an ensemble ``(n, B, 1)``; the target ``(B, 1)`` carries
    no gradient."""
    target = target.detach().unsqueeze(0).expand_as(q)
    return F.mse_loss(q, target, reduction="none").mean(dim=(1, 2)).sum()


def max_over_candidates(q: torch.Tensor, n: int) -> torch.Tensor:
    """``(B * n, 1)`` values of n consecutive candidates per state -> ``(B, 1)`` best value."""
    return q.view(-1, n).amax(dim=1, keepdim=True)  # (B*n, 1) -> (B, n) -> (B, 1)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging ``theta' <- tau * theta + (1 - tau) * theta'``, in place."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.lerp_(s, tau)


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """``module``'s parameters need no gradient inside the block (an actor's loss via a critic).

    No critic gradients are computed or accumulated, so the actor's optimiser step cannot touch
    the critic and, under DDP, the critic's gradient reducer is not involved.
    """
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


M = TypeVar("M", bound=nn.Module)


def target_copy(module: M) -> M:
    """A frozen deep copy of ``module`` to serve as its target network."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


class LearnerBase:
    """What every learner keeps: the settings all learners share (``train.common``), the
    discount (``mdp.gamma``), its device and its sampling RNG."""

    def __init__(self, common: "LearnerConfig", device: torch.device,
                 generator: torch.Generator, gamma: float) -> None:
        self.common, self.gamma = common, gamma
        self.device, self.generator = device, generator


class GreedyCriticAgent(LearnerBase):
    """``act`` and ``q_value`` of an agent whose ``policy()`` is its greedy policy and whose
    ``critic`` is an ensemble with a ``q1_value`` (BCQ, IQL)."""

    critic: nn.Module

    def policy(self) -> nn.Module:
        raise NotImplementedError

    @torch.no_grad()
    def act(self, state: torch.Tensor) -> torch.Tensor:
        """Greedy actions ``(B, k)`` for normalised states ``(B, S)``."""
        return self.policy()(state)

    @torch.no_grad()
    def q_value(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.critic.q1_value(state, action)  # type: ignore[operator]
