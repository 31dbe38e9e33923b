"""What the trainer needs from an algorithm, and how one is built from ``train.algo``.

Each algorithm (``bcq``, ``td3``, ``cql``, ``bc``, ``iql``) is a plain class with the attributes and
methods of :class:`Agent`; the trainer, checkpoints and export only use this surface.
"""
from __future__ import annotations

import logging
from typing import Any, Protocol

import torch
from torch import nn

from mtf.rl.batch import TransitionBatch
from mtf.rl.bc import BCAgent
from mtf.rl.bcq import BCQAgent
from mtf.rl.config import TrainConfig
from mtf.rl.cql import CQLAgent
from mtf.rl.iql import IQLAgent
from mtf.rl.td3 import TD3Agent

logger = logging.getLogger(__name__)


class Agent(Protocol):
    algo: str
    generator: torch.Generator                    # all sampling inside update() / act()
    optimizers: dict[str, torch.optim.Optimizer]  # name -> optimiser (checkpointed)

    @property
    def nets(self) -> dict[str, nn.Module]:
        """Every network, targets included, never DDP-wrapped (checkpointed)."""

    def wrap_ddp(self) -> None:
        """Train through DistributedDataParallel wrappers (no-op without a process group)."""

    def update(self, batch: TransitionBatch, step: int) -> dict[str, torch.Tensor]:
        """One gradient step on a normalised batch; detached scalar metrics by name."""

    def act(self, state: torch.Tensor) -> torch.Tensor:
        """Greedy actions ``(B, k)`` for normalised states ``(B, S)``."""

    def q_value(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor | None:
        """Q1 ``(B, 1)``, or None for algorithms without a critic."""

    def policy(self) -> nn.Module:
        """Deterministic module: normalised state ``(B, S)`` -> action ``(B, k)``; exported."""


def make_agent(cfg: TrainConfig, state_dim: int, action_dim: int, device: torch.device,
               generator: torch.Generator, *, gamma: float, rays: bool = False) -> Agent:
    """Build ``cfg.algo``'s agent for discount ``gamma`` (``mdp.gamma``). Networks are
    initialised from torch's global RNG. ``rays``: the ray action parametrisation (the
    quadratic critics' policy maximises over the canonical actions, mtf.rl.iql)."""
    if state_dim <= 0 or action_dim <= 0:
        raise ValueError(f"state_dim and action_dim must be > 0, got {state_dim}, {action_dim}")
    if cfg.algo == "bcq":
        return BCQAgent(state_dim, action_dim, cfg.common, cfg.bcq, device, generator,
                        gamma=gamma)
    if cfg.algo == "td3":
        return TD3Agent(state_dim, action_dim, cfg.common, cfg.td3, device, generator,
                        gamma=gamma)
    if cfg.algo == "cql":
        return CQLAgent(state_dim, action_dim, cfg.common, cfg.td3, cfg.cql, device, generator,
                        gamma=gamma)
    if cfg.algo == "bc":
        return BCAgent(state_dim, action_dim, cfg.common, cfg.bc, device, generator)
    if cfg.algo == "iql":
        return IQLAgent(state_dim, action_dim, cfg.common, cfg.iql, device, generator,
                        gamma=gamma, rays=rays)
    raise ValueError(f"train.algo must be one of bcq, td3, cql, bc, iql; got {cfg.algo!r}")


def agent_state(agent: Agent) -> dict[str, Any]:
    """Networks, optimisers and sampling RNG as plain tensors/dicts (torch.load weights_only)."""
    return {"nets": {name: net.state_dict() for name, net in agent.nets.items()},
            "optimizers": {name: opt.state_dict() for name, opt in agent.optimizers.items()},
            "generator": agent.generator.get_state()}


def load_agent_state(agent: Agent, state: dict[str, Any], *, nets_only: bool = False) -> None:
    """Inverse of :func:`agent_state`; names must match exactly.

    ``nets_only`` loads the networks alone (export). A sampling-RNG state saved on another
    device type (CUDA vs CPU generators differ) cannot be restored; the generator then keeps
    its seed and a warning says so.
    """
    kinds = [("nets", agent.nets)] + ([] if nets_only else [("optimizers", agent.optimizers)])
    for kind, have in kinds:
        missing = sorted(set(have) - set(state[kind]))
        extra = sorted(set(state[kind]) - set(have))
        if missing or extra:
            raise ValueError(f"checkpoint {kind} do not match algorithm {agent.algo!r}: "
                             f"missing {missing}, unexpected {extra}")
    for name, net in agent.nets.items():
        net.load_state_dict(state["nets"][name])
    if nets_only:
        return
    for name, opt in agent.optimizers.items():
        opt.load_state_dict(state["optimizers"][name])
    try:
        agent.generator.set_state(state["generator"])
    except RuntimeError:
        logger.warning("checkpoint's sampling RNG state comes from another device type than "
                       "%s; continuing with a freshly seeded generator", agent.generator.device)


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g
