"""Online exploration for serving (docs/method.md section 6): one TorchScript module per deployment.

:class:`ExplorationPolicy` wraps an exported policy (or the fixed baseline action) and, per
request, returns the action to use **and its log-density**, so that the next day's logs carry
``explore_group`` and ``action_logp`` for off-policy evaluation:

* ``exploit`` (group 0): ``a = pi(s)``; deterministic, ``logp = NaN`` (logged as null).
* ``noise`` (group 1): ``a ~ N(pi(s), noise_sigma^2)`` per task truncated to [-1, 1]
  (paper: sigma 0.1), or bounded uniform ``U(max(-1, pi(s) - w), min(1, pi(s) + w))``
  (UnifiedRL: w = 0.15).
* ``random`` (group 2): ``a ~ N(0, random_sigma^2)`` truncated to [-1, 1] per task, or U(-1, 1).

With the ray parametrisation (``rays=True``, ``fusion.action_space = "ray"``) ``pi(s)`` is made
canonical and the exploring groups pin a face (the noise group: one of pi(s)'s own, the random
group: any, uniformly) and draw the other tasks as above; ``logp`` is then the face density
(mtf.serving.exploration, "the ray parametrisation").

These are exactly the distributions of the simulator's logging policy
(:mod:`mtf.sim.logging_policy`; both take ``ServingConfig`` and the group hash from
:mod:`mtf.serving.exploration`), and the tests hold the two equal.
Truncated normals are sampled by the inverse CDF, which TorchScript can run and which never
piles mass on the bounds. Users are assigned to groups by :func:`assign_groups` (a stable
blake2b hash of ``salt:user_id``), which the serving side calls before the module.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from mtf.contract import EXPLORE_GROUPS
from mtf.rays import canonical_actions, draw_faces, face_log_density, pin_faces, tied_faces
from mtf.serving.exploration import ServingConfig
from mtf.serving.exploration import assign_groups as _assign_groups

EXPLORE_FILE = "explore.pt"
EXPLORE_SIDECAR = "explore.json"


def assign_groups(user_ids: Sequence[str], cfg: ServingConfig) -> np.ndarray:
    """Group code per user: 0 exploit, 1 noise, 2 random (order of EXPLORE_GROUPS)."""
    return _assign_groups(user_ids, cfg).astype(np.int64)


class ConstantPolicy(nn.Module):
    """``pi(s) = action`` for every state: fixed fusion weights, e.g. the logging baseline."""

    def __init__(self, action: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("action", action.float().clamp(-1.0, 1.0))  # (k,)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.action.unsqueeze(0).expand(state.shape[0], -1).clone()


def torch_policy(module: Any, device: str = "cpu") -> Callable[[np.ndarray], np.ndarray]:
    """A torch module ``(B, S) -> (B, k)`` (e.g. an exported TorchScript policy) as a numpy
    policy ``states -> actions in [-1, 1]``: what the simulator serves."""
    def policy(states: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = module(torch.as_tensor(states, dtype=torch.float32, device=device))
        return np.clip(out.detach().cpu().numpy().astype(np.float64), -1.0, 1.0)

    return policy


def _truncnorm_logpdf(a: torch.Tensor, mu: torch.Tensor, sigma: float) -> torch.Tensor:
    """Per-element log-density of N(mu, sigma^2) truncated to [-1, 1] (float64)."""
    z = (a - mu) / sigma
    mass = torch.special.ndtr((1.0 - mu) / sigma) - torch.special.ndtr((-1.0 - mu) / sigma)
    return -0.5 * z * z - 0.5 * math.log(2.0 * math.pi) - math.log(sigma) - torch.log(mass)


def _truncnorm_sample(mu: torch.Tensor, sigma: float) -> torch.Tensor:
    """Inverse-CDF draw from N(mu, sigma^2) truncated to [-1, 1] (float64)."""
    lo = torch.special.ndtr((-1.0 - mu) / sigma)
    hi = torch.special.ndtr((1.0 - mu) / sigma)
    u = lo + torch.rand_like(mu) * (hi - lo)
    u = u.clamp(1e-12, 1.0 - 1e-12)
    return (mu + sigma * torch.special.ndtri(u)).clamp(-1.0, 1.0)


class ExplorationPolicy(nn.Module):
    """``(state, group) -> (action, logp)`` for serving; see the module docstring."""

    def __init__(self, policy: nn.Module, cfg: ServingConfig, lo: torch.Tensor,
                 hi: torch.Tensor, rays: bool = False) -> None:
        super().__init__()
        self.policy = policy
        self.rays = rays
        self.noise_gaussian = cfg.noise_dist == "gaussian"
        self.random_gaussian = cfg.random_dist == "gaussian"
        self.noise_sigma = float(cfg.noise_sigma)
        self.noise_halfwidth = float(cfg.noise_halfwidth)
        self.random_sigma = float(cfg.random_sigma)
        self.register_buffer("lo", lo.float())
        self.register_buffer("hi", hi.float())

    def forward(self, state: torch.Tensor, group: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions ``(B, k)`` in [-1, 1] (float32) and log-densities ``(B,)`` (float64)."""
        with torch.no_grad():
            mu = self.policy(state).clamp(-1.0, 1.0).double()      # (B, k)
        if self.rays:
            mu = canonical_actions(mu, self.lo.double(), self.hi.double())
        action = mu.clone()
        logp = torch.full((mu.shape[0],), float("nan"), dtype=torch.float64)
        noise = group == 1
        if bool(noise.any()):
            m = mu[noise]
            if self.noise_gaussian:
                a = _truncnorm_sample(m, self.noise_sigma)
                per_task = _truncnorm_logpdf(a, m, self.noise_sigma)
            else:
                lo = (m - self.noise_halfwidth).clamp(min=-1.0)
                hi = (m + self.noise_halfwidth).clamp(max=1.0)
                a = lo + torch.rand_like(m) * (hi - lo)
                per_task = -torch.log(hi - lo)
            if self.rays:
                allowed = tied_faces(m)
                a = pin_faces(a, draw_faces(allowed))
                lp = face_log_density(per_task, a, allowed)
            else:
                lp = per_task.sum(dim=1)
            action[noise] = a
            logp[noise] = lp
        rand = group == 2
        if bool(rand.any()):
            m = torch.zeros_like(mu[rand])
            if self.random_gaussian:
                a = _truncnorm_sample(m, self.random_sigma)
                per_task = _truncnorm_logpdf(a, m, self.random_sigma)
            else:
                a = torch.rand_like(m) * 2.0 - 1.0
                per_task = torch.full_like(m, -math.log(2.0))
            if self.rays:
                allowed = torch.ones_like(m, dtype=torch.bool)
                a = pin_faces(a, draw_faces(allowed))
                lp = face_log_density(per_task, a, allowed)
            else:
                lp = per_task.sum(dim=1)
            action[rand] = a
            logp[rand] = lp
        return action.float(), logp

    @torch.jit.export
    def fusion_weights(self, action: torch.Tensor) -> torch.Tensor:
        """Normalised action -> fusion weights in [lo, hi] (mtf.fusion.action_to_weights)."""
        return self.lo + (action.clamp(-1.0, 1.0) + 1.0) * 0.5 * (self.hi - self.lo)


def export_exploration(policy: nn.Module, cfg: ServingConfig, lo: np.ndarray,
                       hi: np.ndarray, out_dir: str, meta: dict[str, object] | None = None,
                       rays: bool = False) -> str:
    """Script and save the exploration policy plus an ``explore.json`` sidecar; returns the dir.

    Args:
        policy: a TorchScript or plain module ``(B, S) -> (B, k)`` (e.g. a loaded policy.pt,
            or :class:`ConstantPolicy` for the baseline).
        meta: extra sidecar fields (feature layout, source policy path, ...).
        rays: the ray parametrisation (``fusion.action_space = "ray"``).
    """
    os.makedirs(out_dir, exist_ok=True)
    module = ExplorationPolicy(policy, cfg, torch.as_tensor(lo), torch.as_tensor(hi),
                               rays).eval()
    scripted = torch.jit.script(module)
    tmp = os.path.join(out_dir, f".{EXPLORE_FILE}.tmp")
    scripted.save(tmp)
    os.replace(tmp, os.path.join(out_dir, EXPLORE_FILE))
    sidecar = {"groups": list(EXPLORE_GROUPS), "exploration": {
        k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "lo": list(map(float, lo)),
        "hi": list(map(float, hi)), "action_space": "ray" if rays else "box",
        "logp_space": ("canonical action on the upper faces of [-1, 1]^k (area of the faces)"
                       if rays else "normalised action in [-1, 1]^k"),
        **(meta or {})}
    tmp = os.path.join(out_dir, f".{EXPLORE_SIDECAR}.tmp")
    with open(tmp, "w") as fh:
        json.dump(sidecar, fh, indent=2, default=list)
    os.replace(tmp, os.path.join(out_dir, EXPLORE_SIDECAR))
    return out_dir
