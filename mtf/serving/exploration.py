"""The serving (logging) policy: its config, exploration groups and action densities.

docs/method.md section 6: users are hashed (blake2b of ``salt:user_id``) into an ``exploit``,
an action-``noise`` and a ``random`` group with configured shares. The noise and random groups
sample from truncated normals (or bounded uniforms) on the action box [-1, 1]^k, and every
logged action carries its exact log-density. Numpy only, so that the simulator
(:mod:`mtf.sim.logging_policy`), the OPE, the closed loop and the serving wrapper
(:mod:`mtf.serving.export`, TorchScript) use one definition of the groups, the config and the
densities.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from mtf.configtools import check_positive, check_probability
from mtf.contract import EXPLOIT, NOISE, RANDOM
from mtf.fusion import FACE_TOL, is_canonical

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_MAX_REJECTION_ROUNDS = 10_000


@dataclass(frozen=True)
class ServingConfig:
    """Section ``serving``: the logging policy that serves users and writes the logs.

    A baseline action plus per-user exploration groups (docs/method.md section 6); read by the
    simulator (what it logs), the OPE (the logging baseline) and the closed loop (deployment).

    Users are assigned by a stable hash of ``salt:user_id`` (blake2b): the first ``noise_share``
    of the hash range explores with action noise, the next ``random_share`` with random actions,
    the rest exploit. Actions live in the normalised space [-1, 1]^k. Densities are exact for
    what is sampled: Gaussians are *truncated* to the box (not clipped), uniform noise is
    restricted to the box (see mtf/sim/logging_policy.py and mtf/serving/export.py).
    """

    baseline_action: tuple[float, ...] = ()  # normalised baseline action, task order; () = 0s
    noise_share: float = 0.2             # share of users in the action-noise group
    random_share: float = 0.1            # share of users in the random-exploration group
    noise_dist: Literal["gaussian", "uniform"] = "gaussian"  # eps ~ N(0, sigma) or U(-w, w)
    noise_sigma: float = 0.1             # sigma of the Gaussian action noise (paper: 0.1)
    noise_halfwidth: float = 0.15        # w of the bounded uniform noise (UnifiedRL: 0.15)
    random_dist: Literal["gaussian", "uniform"] = "gaussian"  # N(0, sigma_r) or U(-1, 1)
    random_sigma: float = 0.5            # sigma of the random-group Gaussian
    salt: str = "mtf-explore"            # hash salt; change it to re-draw the groups

    def __post_init__(self) -> None:
        check_probability("serving", noise_share=self.noise_share,
                          random_share=self.random_share)
        if self.noise_share + self.random_share > 1.0:
            raise ValueError("serving.noise_share + random_share must be <= 1, got "
                             f"{self.noise_share!r} + {self.random_share!r}")
        check_positive("serving", noise_sigma=self.noise_sigma,
                       noise_halfwidth=self.noise_halfwidth, random_sigma=self.random_sigma)
        bad = [a for a in self.baseline_action if not -1.0 <= a <= 1.0]
        if bad:
            raise ValueError("serving.baseline_action must lie in [-1, 1], got "
                             f"{list(self.baseline_action)!r}")


def hash_unit(keys: Sequence[str], salt: str) -> np.ndarray:
    """Stable hash of ``salt:key`` mapped to [0, 1) (blake2b, 8 bytes), one value per key.

    Independent of Python's hash seed and of the process, so a user keeps its exploration group
    and its app-session-id flag across runs, shards and machines.
    """
    out = np.empty(len(keys), dtype=np.float64)
    for j, key in enumerate(keys):
        digest = hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=8).digest()
        out[j] = int.from_bytes(digest, "big") / 2.0 ** 64
    return out


def assign_groups(user_ids: Sequence[str], cfg: ServingConfig) -> np.ndarray:
    """Group code per user (index into :data:`EXPLORE_GROUPS`), by a stable hash."""
    u = hash_unit(user_ids, cfg.salt)
    return np.where(u < cfg.noise_share, NOISE,
                    np.where(u < cfg.noise_share + cfg.random_share, RANDOM, EXPLOIT)
                    ).astype(np.int8)


def norm_cdf(x: np.ndarray) -> np.ndarray:
    """Standard normal CDF (``math.erfc`` on the distinct values; exact to double precision)."""
    x = np.asarray(x, dtype=np.float64)
    uniq, inv = np.unique(x, return_inverse=True)
    vals = np.array([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in uniq], dtype=np.float64)
    return vals[inv].reshape(x.shape)


def truncated_normal_sample(mu: np.ndarray, sigma: float, rng: np.random.Generator,
                            lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    """Draw from ``N(mu, sigma^2)`` truncated to ``[lo, hi]``, elementwise (exact rejection)."""
    mu = np.asarray(mu, dtype=np.float64)
    out = mu + sigma * rng.standard_normal(mu.shape)
    bad = (out < lo) | (out > hi)
    for _ in range(_MAX_REJECTION_ROUNDS):
        if not bad.any():
            return out
        out[bad] = mu[bad] + sigma * rng.standard_normal(int(bad.sum()))
        bad = (out < lo) | (out > hi)
    raise RuntimeError("truncated_normal_sample: rejection did not converge; is mu far outside "
                       f"[{lo}, {hi}] relative to sigma={sigma}?")


def truncated_normal_logpdf(a: np.ndarray, mu: np.ndarray | float, sigma: float,
                            lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    """Elementwise log-density of ``N(mu, sigma^2)`` truncated to ``[lo, hi]``."""
    a = np.asarray(a, dtype=np.float64)
    mu = np.broadcast_to(np.asarray(mu, dtype=np.float64), a.shape)
    z = (a - mu) / sigma
    mass = norm_cdf((hi - mu) / sigma) - norm_cdf((lo - mu) / sigma)
    logp = -0.5 * z * z - _LOG_SQRT_2PI - math.log(sigma) - np.log(mass)
    return np.where((a >= lo) & (a <= hi), logp, -np.inf)


def box_uniform_bounds(mu: np.ndarray, halfwidth: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-task support ``[max(-1, mu - w), min(1, mu + w)]`` of the bounded uniform noise."""
    mu = np.asarray(mu, dtype=np.float64)
    return np.maximum(-1.0, mu - halfwidth), np.minimum(1.0, mu + halfwidth)


# ---- the ray parametrisation (fusion.action_space = "ray") ---------------------------------
# Actions are canonical (mtf.fusion.canonical_action): on the upper face {a_j = 1} of some task
# j. An exploring action picks a face, pins a_j = 1 and draws every other a_i as in the box
# (the same per-task distributions). Its log-density is taken against the (k-1)-dimensional
# area of the faces: log P(face) + sum_{i != j} log q_i(a_i). The noise group keeps pi(s)'s own
# face (uniform over the faces pi(s) touches: several at a corner); the random group draws the
# face uniformly. So both groups stay exact and closed-form, like the box's.

def tied_faces(mu: np.ndarray, tol: float = FACE_TOL) -> np.ndarray:
    """``(n, k)`` bool: the faces a canonical ``mu`` lies on (``mu_j >= max_i mu_i - tol``)."""
    mu = np.asarray(mu, dtype=np.float64)
    return mu >= mu.max(axis=1, keepdims=True) - tol


def draw_faces(allowed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(n,)`` one face per row, uniform over the row's ``allowed`` faces."""
    counts = allowed.sum(axis=1)
    pick = np.floor(rng.random(allowed.shape[0]) * counts).astype(np.int64)
    pick = np.minimum(pick, counts - 1)
    # the pick-th allowed face: first column where the running count exceeds pick
    return np.argmax(np.cumsum(allowed, axis=1) > pick[:, None], axis=1)


def face_of(actions: np.ndarray) -> np.ndarray:
    """``(n,)`` the face a canonical action lies on (its largest coordinate)."""
    return np.argmax(np.asarray(actions, dtype=np.float64), axis=1)


def face_log_density(per_task_logp: np.ndarray, actions: np.ndarray,
                     allowed: np.ndarray) -> np.ndarray:
    """``(n,)`` log-density of canonical ``actions`` on the faces: ``-log(#allowed)`` plus the
    per-task log-densities of every task but the action's face; ``-inf`` where the action is
    not on a pinned face it could have been given (not canonical, or a face not ``allowed``).
    """
    actions = np.asarray(actions, dtype=np.float64)
    n, k = actions.shape
    face = face_of(actions)
    ok = is_canonical(actions) & allowed[np.arange(n), face]
    masked = np.where(np.arange(k)[None, :] == face[:, None], 0.0, per_task_logp)
    logp = masked.sum(axis=1) - np.log(allowed.sum(axis=1))
    return np.where(ok, logp, -np.inf)
