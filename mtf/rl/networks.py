"""Networks of BCQ and the baselines. Forward computation only: no losses, no optimisers.

All MLPs use ReLU (docs/method.md section 5). Inputs are normalised states (see
:class:`mtf.rl.batch.Normalizer`) and actions in [-1, 1]^k. Randomness (VAE noise, prior
latents) is passed in as tensors so every module is deterministic given its inputs; that keeps
the update rules testable and the exported policy scriptable.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    """Linear-ReLU stack ``in_dim -> hidden... -> out_dim`` with a linear output layer."""
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class ActionVAE(nn.Module):
    """Conditional VAE G = (E, D) over logged actions: E(z | s, a) -> (mu, sigma), D(a | s, z)."""

    def __init__(self, state_dim: int, action_dim: int, latent_dim: int,
                 hidden: Sequence[int], log_std_min: float, log_std_max: float) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.log_std_min = log_std_min
        self.log_std_max = log_std_max
        self.encoder = mlp(state_dim + action_dim, hidden, 2 * latent_dim)
        self.decoder = mlp(state_dim + latent_dim, hidden, action_dim)

    def forward(self, state: torch.Tensor, action: torch.Tensor,
                noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruct ``action``: returns (reconstruction, mu, sigma), each ``(B, ·)``.

        ``noise`` ~ N(0, I) of shape ``(B, latent)`` gives the reparameterised z = mu + sigma*noise.
        """
        mean, log_std = self.encoder(torch.cat([state, action], dim=1)).chunk(2, dim=1)
        # Clamped for numerical stability (BCQ).
        std = log_std.clamp(self.log_std_min, self.log_std_max).exp()
        z = mean + std * noise
        return self.decode(state, z), mean, std

    def decode(self, state: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """D(s, z) in [-1, 1]^k, ``(B, k)``."""
        return torch.tanh(self.decoder(torch.cat([state, z], dim=1)))


class Perturbation(nn.Module):
    """BCQ's actor P(s, a): a + rho * tanh(f(s, a)), clipped to [-1, 1]."""

    def __init__(self, state_dim: int, action_dim: int, hidden: Sequence[int],
                 rho: float) -> None:
        super().__init__()
        self.rho = rho
        self.net = mlp(state_dim + action_dim, hidden, action_dim)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        delta = self.rho * torch.tanh(self.net(torch.cat([state, action], dim=1)))
        return (action + delta).clamp(-1.0, 1.0)


class EnsembleLinear(nn.Module):
    """``n`` independent linear layers applied as one batched matmul: ``(n, B, in) -> (n, B, out)``.

    Each member is initialised like ``nn.Linear`` (uniform in +-1/sqrt(in)). With
    ``first_only`` the input is ``(1, B, in)`` and only member 0 runs.
    """

    def __init__(self, n: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, first_only: bool = False) -> torch.Tensor:
        if first_only:
            return torch.baddbmm(self.bias[:1], x, self.weight[:1])
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleQ(nn.Module):
    """``n`` independent critics Q_1..Q_n of (s, a) evaluated together; returns ``(n, B, 1)``.

    The twin critics of BCQ, TD3 and CQL are ``n = 2``. Larger ensembles (UnifiedRL, docs/method.md
    section 9) give the actor a pessimistic objective ``mean_j Q_j - penalty * std_j Q_j``
    (:meth:`score`): action directions the critics disagree on, i.e. noise the data cannot pin
    down, stop paying off.
    Layers are ReLU-separated :class:`EnsembleLinear` s.
    """

    def __init__(self, state_dim: int, action_dim: int, hidden: Sequence[int], n: int) -> None:
        super().__init__()
        if n < 2:
            raise ValueError(f"a critic ensemble needs n >= 2 members, got {n}")
        self.n = n
        widths = [state_dim + action_dim, *hidden, 1]
        self.layers = nn.ModuleList(EnsembleLinear(n, a, b) for a, b in zip(widths, widths[1:]))
        self.register_load_state_dict_pre_hook(_twin_to_ensemble)

    def _run(self, state: torch.Tensor, action: torch.Tensor, first_only: bool) -> torch.Tensor:
        x = torch.cat([state, action], dim=1).unsqueeze(0)        # (1, B, S + k)
        if not first_only:
            x = x.expand(self.n, -1, -1)                          # (n, B, S + k)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, first_only)
            if i < last:
                x = torch.relu(x)
        return x

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self._run(state, action, False)                    # (n, B, 1)

    def q1_value(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The first critic alone, ``(B, 1)`` (BCQ's actor objective and action choice); the
        other members are not computed."""
        return self._run(state, action, True)[0]

    def score(self, state: torch.Tensor, action: torch.Tensor, penalty: float) -> torch.Tensor:
        """What the actor maximises, ``(B, 1)``: ``Q_1`` when ``penalty == 0`` (BCQ), else
        ``mean_j Q_j - penalty * std_j Q_j`` over the ensemble."""
        if penalty == 0.0:
            return self.q1_value(state, action)
        q = self(state, action)                                   # (n, B, 1)
        return q.mean(dim=0) - penalty * q.std(dim=0)


def _twin_to_ensemble(module: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
    """Load a twin-critic state dict (``q1.<i>.weight`` ...: checkpoints written before the
    ensemble existed, two :func:`mlp` s ``q1``, ``q2``) into a 2-member :class:`EnsembleQ`:
    member j = ``q<j+1>``; the MLP's Linear layers sit at Sequential indices 0, 2, 4 ... (ReLUs
    between), ours at 0, 1, 2 ..."""
    if f"{prefix}q1.0.weight" not in state_dict:
        return
    for key in [k for k in state_dict if k.startswith(f"{prefix}q1.")]:
        index, kind = key[len(prefix) + 3:].split(".")          # "<i>", "weight" | "bias"
        pair = [state_dict.pop(f"{prefix}q{j}.{index}.{kind}") for j in (1, 2)]
        layer = int(index) // 2
        if kind == "weight":   # nn.Linear (out, in) -> ensemble (n, in, out)
            state_dict[f"{prefix}layers.{layer}.weight"] = torch.stack([w.t() for w in pair])
        else:                  # (out,) -> (n, 1, out)
            state_dict[f"{prefix}layers.{layer}.bias"] = torch.stack(pair).unsqueeze(1)


class DeterministicActor(nn.Module):
    """pi(s) = tanh(f(s)) in [-1, 1]^k: the actor of TD3, CQL and behaviour cloning."""

    def __init__(self, state_dim: int, action_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp(state_dim, hidden, action_dim)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(state))


class BoundedProposer(nn.Module):
    """BCQ's candidate generator under UnifiedRL's policy-bounded constraint: ``clip(b(s) + z)``
    with ``b`` a regression of the deployed (exploit-group) actions on the state and ``z`` an
    offset within the known exploration bound ``[-w, w]^k`` (docs/method.md section 9). The
    same ``decode(state, z)`` interface as :class:`ActionVAE`, so :class:`BCQPolicy` serves
    either; the "latents" are the offsets."""

    def __init__(self, state_dim: int, action_dim: int, hidden: Sequence[int],
                 bound: float) -> None:
        super().__init__()
        self.latent_dim = action_dim
        self.bound = bound
        self.behaviour = DeterministicActor(state_dim, action_dim, hidden)

    def decode(self, state: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return (self.behaviour(state) + z).clamp(-1.0, 1.0)


def bounded_offsets(n: int, action_dim: int, bound: float, *,
                    generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``(n, k)`` offsets uniform in ``[-bound, bound]`` (:class:`BoundedProposer`'s latents)."""
    u = torch.rand(n, action_dim, generator=generator, device=device)
    return (2.0 * u - 1.0) * bound


def prior_latents(n: int, latent_dim: int, clip: float, *, generator: torch.Generator | None,
                  device: torch.device) -> torch.Tensor:
    """``(n, latent)`` samples of N(0, I) clipped to [-clip, clip].

    When sampling from the VAE the latent is clipped so decoded actions stay close to the data
    (BCQ).
    """
    z = torch.randn(n, latent_dim, generator=generator, device=device)
    return z.clamp(-clip, clip)
