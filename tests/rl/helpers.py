"""Small builders shared by the trainer's tests: batches, hand-set critics, parameter diffs."""
from __future__ import annotations

import torch
from torch import nn

from mtf.rl.batch import TransitionBatch
from mtf.rl.config import BCQConfig, LearnerConfig, TrainConfig
from mtf.rl.networks import EnsembleQ

GAMMA = 0.95                                   # mdp.gamma's default
TINY_NETS = LearnerConfig(hidden=(16, 16))
TINY_BCQ = BCQConfig(vae_hidden=(16, 16), n_candidates=4)


def tiny_config(algo: str = "bcq", **train: object) -> TrainConfig:
    """A TrainConfig with tiny networks; keyword arguments override TrainConfig fields."""
    fields: dict[str, object] = {"algo": algo, "batch_size": 16, "max_steps": 20,
                                 "log_every": 5, "checkpoint_every": 10, "common": TINY_NETS,
                                 "bcq": TINY_BCQ,
                                 "tensorboard": False}
    fields.update(train)
    return TrainConfig(**fields)  # type: ignore[arg-type]


def random_batch(b: int = 8, s: int = 3, k: int = 2, seed: int = 0,
                 terminal_every: int = 3) -> TransitionBatch:
    g = torch.Generator().manual_seed(seed)
    return TransitionBatch(
        state=torch.randn(b, s, generator=g),
        action=torch.rand(b, k, generator=g) * 2 - 1,
        reward=torch.randn(b, 1, generator=g),
        next_state=torch.randn(b, s, generator=g),
        is_terminal=(torch.arange(b).reshape(-1, 1) % terminal_every == terminal_every - 1).float(),
        group=(torch.arange(b).reshape(-1, 1) % 3).float())   # exploit, noise, random, ...


@torch.no_grad()
def set_member_constant(q: EnsembleQ, member: int, value: float) -> None:
    """Make critic ``member`` of an ensemble output ``value`` for every input."""
    layers = list(q.layers)
    for layer in layers:
        layer.weight[member].zero_()
        layer.bias[member].zero_()
    layers[-1].bias[member].fill_(value)


@torch.no_grad()
def set_member_first_action_coordinate(q: EnsembleQ, member: int, state_dim: int) -> None:
    """Make critic ``member`` of an ensemble output exactly ``action[:, 0]`` (as
    :func:`set_first_action_coordinate`; ensemble weights are laid out ``(in, out)``)."""
    layers = list(q.layers)
    for layer in layers:
        layer.weight[member].zero_()
        layer.bias[member].zero_()
    layers[0].weight[member, state_dim, 0] = 1.0
    layers[0].bias[member, 0, 0] = 2.0
    for layer in layers[1:-1]:
        layer.weight[member, 0, 0] = 1.0
    layers[-1].weight[member, 0, 0] = 1.0
    layers[-1].bias[member, 0, 0] = -2.0


@torch.no_grad()
def set_constant(q: nn.Sequential, value: float) -> None:
    """Make an MLP output ``value`` for every input: zero weights, bias only on the last layer."""
    for layer in q:
        if isinstance(layer, nn.Linear):
            layer.weight.zero_()
            layer.bias.zero_()
    q[-1].bias.fill_(value)


@torch.no_grad()
def set_first_action_coordinate(q: nn.Sequential, state_dim: int) -> None:
    """Make an MLP over ``cat(state, action)`` output exactly ``action[:, 0]``.

    First layer: unit 0 = a_0 + 2 (> 0 for a in [-1, 1], so ReLU passes it); later hidden
    layers pass unit 0 on; the output layer subtracts the shift.
    """
    linears = [m for m in q if isinstance(m, nn.Linear)]
    for layer in linears:
        layer.weight.zero_()
        layer.bias.zero_()
    linears[0].weight[0, state_dim] = 1.0
    linears[0].bias[0] = 2.0
    for layer in linears[1:-1]:
        layer.weight[0, 0] = 1.0
    linears[-1].weight[0, 0] = 1.0
    linears[-1].bias[0] = -2.0


def params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: nn.Module) -> set[str]:
    """Names of parameters of ``module`` that differ from ``before``."""
    return {n for n, p in module.named_parameters() if not torch.equal(before[n], p.detach())}
