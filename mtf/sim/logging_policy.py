"""The logging (behaviour) policy: a base policy plus per-user exploration (docs/method.md 6).

Users are hashed (blake2b of ``salt:user_id``) into three groups with configured shares:

* ``exploit``: ``a = base(s)``. Deterministic, so it has no density: ``action_logp`` is null.
* ``noise``: ``a = base(s) + eps`` kept inside the action box [-1, 1]^k. Gaussian noise is a
  normal ``N(base(s), noise_sigma^2)`` per task *truncated* to [-1, 1] (sampled by rejection, so
  there is no probability mass piled up on the bounds); bounded uniform noise (UnifiedRL) is
  ``U(max(-1, base - w), min(1, base + w))`` per task.
* ``random``: independent of the state; ``N(0, random_sigma^2)`` truncated to [-1, 1] per task,
  or ``U(-1, 1)`` per task.

``action_logp`` is the log-density of the logged **normalised action** ``a in [-1, 1]^k``
(Lebesgue measure on the box, tasks independent), under exactly the distribution sampled. The
fusion weights are ``action_to_weights(a)``; a density over weights would differ by
``-sum_i log((hi_i - lo_i) / 2)``.

With ``fusion.action_space = "ray"`` (``space`` given, docs/method.md section 2a) the base
action is made canonical and the exploring groups stay on the box's upper faces: the noise
group keeps base(s)'s face, the random group draws a face uniformly, and every other task is
drawn as above; ``action_logp`` is then a density on the faces
(:func:`mtf.serving.exploration.face_log_density`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mtf.fusion import FusionConfig, canonical_action
from mtf.serving.exploration import (  # noqa: F401  (groups and densities re-exported here)
    EXPLOIT, NOISE, RANDOM, ServingConfig, assign_groups, box_uniform_bounds, draw_faces,
    face_log_density, norm_cdf, tied_faces, truncated_normal_logpdf, truncated_normal_sample)
from mtf.sim.policies import Policy, check_actions


@dataclass(frozen=True, eq=False)
class LoggingPolicy:
    """``base`` policy + exploration groups. ``act`` returns actions and their log-densities.

    Args:
        base: the policy being served (baseline weights, or a deployed learned policy).
        cfg: exploration shares and noise settings.
        k: number of fused tasks.
        space: the fusion config when its ``action_space`` may be ``"ray"`` (None: the box).
    """

    base: Policy
    cfg: ServingConfig
    k: int
    space: FusionConfig | None = None

    @property
    def rays(self) -> bool:
        return self.space is not None and self.space.action_space == "ray"

    def _mu(self, states: np.ndarray) -> np.ndarray:
        mu = check_actions(self.base(states), states.shape[0], self.k,
                           where="logging base policy")
        return canonical_action(mu, self.space.lo, self.space.hi) if self.rays else mu  # type: ignore[union-attr]

    def act(self, states: np.ndarray, groups: np.ndarray,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Actions ``(n, k)`` in [-1, 1] and ``action_logp`` ``(n,)`` (NaN for exploit).

        Args:
            states: ``(n, S)`` float32 states.
            groups: ``(n,)`` group codes of the users (see :func:`assign_groups`).
            rng: the generator exploration noise is drawn from.
        """
        cfg = self.cfg
        mu = self._mu(states)
        actions = mu.copy()
        noise = groups == NOISE
        if noise.any():
            m = mu[noise]
            if cfg.noise_dist == "gaussian":
                actions[noise] = truncated_normal_sample(m, cfg.noise_sigma, rng)
            else:
                lo, hi = box_uniform_bounds(m, cfg.noise_halfwidth)
                actions[noise] = lo + (hi - lo) * rng.random(m.shape)
        rand = groups == RANDOM
        if rand.any():
            shape = (int(rand.sum()), self.k)
            if cfg.random_dist == "gaussian":
                actions[rand] = truncated_normal_sample(np.zeros(shape), cfg.random_sigma, rng)
            else:
                actions[rand] = rng.uniform(-1.0, 1.0, shape)
        if self.rays:   # pin each exploring action's face (the noise group: base(s)'s own)
            for mask, allowed in ((noise, tied_faces(mu[noise])),
                                  (rand, np.ones((int(rand.sum()), self.k), dtype=bool))):
                if mask.any():
                    a = actions[mask]
                    a[np.arange(a.shape[0]), draw_faces(allowed, rng)] = 1.0
                    actions[mask] = a
        return actions, self._log_density(mu, groups, actions)

    def log_density(self, states: np.ndarray, groups: np.ndarray,
                    actions: np.ndarray) -> np.ndarray:
        """``log q(actions | states)`` per row under this policy (NaN for the exploit group)."""
        return self._log_density(self._mu(states), groups, np.asarray(actions, dtype=np.float64))

    def _log_density(self, mu: np.ndarray, groups: np.ndarray,
                     actions: np.ndarray) -> np.ndarray:
        cfg = self.cfg
        logp = np.full(actions.shape[0], np.nan)
        noise = groups == NOISE
        if noise.any():
            a, m = actions[noise], mu[noise]
            if cfg.noise_dist == "gaussian":
                per_task = truncated_normal_logpdf(a, m, cfg.noise_sigma)
            else:
                lo, hi = box_uniform_bounds(m, cfg.noise_halfwidth)
                per_task = np.where((a >= lo) & (a <= hi), -np.log(hi - lo), -np.inf)
            logp[noise] = self._combine(per_task, a, tied_faces(m) if self.rays else None)
        rand = groups == RANDOM
        if rand.any():
            a = actions[rand]
            if cfg.random_dist == "gaussian":
                per_task = truncated_normal_logpdf(a, 0.0, cfg.random_sigma)
            else:
                per_task = np.where(np.abs(a) <= 1.0, -math.log(2.0), -np.inf)
            logp[rand] = self._combine(per_task, a, np.ones(a.shape, dtype=bool)
                                       if self.rays else None)
        return logp

    @staticmethod
    def _combine(per_task: np.ndarray, actions: np.ndarray,
                 faces: np.ndarray | None) -> np.ndarray:
        """Per-task log-densities -> the action's: their sum on the box, the face density
        (``faces``: the faces the action may be pinned to) with rays."""
        if faces is None:
            return per_task.sum(axis=1)
        return face_log_density(per_task, actions, faces)
