"""Behaviour cloning: a deterministic actor regressed on the logged actions (a sanity floor).

Any RL policy worth shipping should at least match the logging policy it was trained from;
BC estimates that policy's mean action per state.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mtf.rl.batch import TransitionBatch
from mtf.rl.config import BCConfig, LearnerConfig
from mtf.rl.distributed import ddp_wrap
from mtf.rl.networks import DeterministicActor
from mtf.rl.updates import LearnerBase, optimizer_step


def bc_loss(predicted: torch.Tensor, logged: torch.Tensor) -> torch.Tensor:
    """``mean ||pi(s) - a||^2`` over batch and action dimensions."""
    return F.mse_loss(predicted, logged)


class BCAgent(LearnerBase):
    """One actor, one optimiser; no critic, so no Q metrics."""

    algo = "bc"

    def __init__(self, state_dim: int, action_dim: int, common: LearnerConfig, bc: BCConfig,
                 device: torch.device, generator: torch.Generator) -> None:
        super().__init__(common, device, generator, gamma=1.0)   # no bootstrapping: no discount
        self.actor = DeterministicActor(state_dim, action_dim, common.hidden).to(device)
        self.actor_train: nn.Module = self.actor   # DDP-wrapped under DDP
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            "actor": torch.optim.Adam(self.actor.parameters(), lr=bc.lr)}

    @property
    def nets(self) -> dict[str, nn.Module]:
        return {"actor": self.actor}

    def wrap_ddp(self) -> None:
        self.actor_train = ddp_wrap(self.actor, self.device)

    def update(self, batch: TransitionBatch, step: int) -> dict[str, torch.Tensor]:
        loss = bc_loss(self.actor_train(batch.state), batch.action)
        optimizer_step(self.optimizers["actor"], loss)
        return {"loss/bc": loss.detach()}

    def policy(self) -> nn.Module:
        return self.actor

    @torch.no_grad()
    def act(self, state: torch.Tensor) -> torch.Tensor:
        return self.actor(state)

    def q_value(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor | None:
        return None
