"""Black-box baselines that search with simulator access (docs/method.md section 8).

The paper's online references tune fusion weights by trial and error on live traffic: Bayesian
optimisation of one global weight vector and evolution strategies (ES) over a small network from
state to weights. With the simulator standing in for live traffic we implement both searches
directly against ground truth, which makes them *stronger* than their online counterparts
(no noise from small traffic slices):

* :func:`cem_fixed_action`: the cross-entropy method over one fixed action in [-1, 1]^k.
* :func:`es_linear_policy`: antithetic natural-gradient ES (OpenAI-ES) over a linear
  state -> action map with tanh squashing.

Every generation evaluates its whole population on common random numbers
(:func:`mtf.sim.evaluate.evaluate_many`), so candidates are compared paired.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from mtf.loop.config import SearchConfig
from mtf.sim.evaluate import evaluate_many
from mtf.sim.policies import FixedPolicy

if TYPE_CHECKING:
    from mtf.sim.world import World

logger = logging.getLogger(__name__)


@dataclass
class SearchResult:
    best: object                            # the policy found (callable states -> actions)
    history: list[float] = field(default_factory=list)  # best/mean return per generation
    n_sessions: int = 0                     # simulated sessions spent


def cem_fixed_action(world: "World", cfg: SearchConfig, seed: int,
                     init: np.ndarray | None = None) -> SearchResult:
    """Cross-entropy method over a fixed normalised action, maximising true session return."""
    rng = np.random.default_rng([seed, 101])
    k = world.k
    mean = np.zeros(k) if init is None else np.asarray(init, dtype=np.float64).copy()
    sd = np.full(k, cfg.cem_init_sd)
    n_elite = max(1, int(round(cfg.cem_elite_frac * cfg.cem_population)))
    result = SearchResult(best=FixedPolicy(np.clip(mean, -1, 1)))
    best_value = -np.inf
    for gen in range(cfg.cem_generations):
        cands = np.clip(mean + sd * rng.standard_normal((cfg.cem_population, k)), -1.0, 1.0)
        cands[0] = np.clip(mean, -1.0, 1.0)       # keep the current mean in the race
        policies = {str(i): FixedPolicy(a) for i, a in enumerate(cands)}
        # The same sessions every generation (common random numbers across generations too),
        # so values are comparable and the search is not chasing seed noise.
        res = evaluate_many(world, policies, cfg.sessions_per_eval, seed=seed * 1000)
        values = np.array([res[str(i)].mean_return for i in range(len(cands))])
        result.n_sessions += cfg.sessions_per_eval * len(cands)
        elite = cands[np.argsort(values)[-n_elite:]]
        mean, sd = elite.mean(axis=0), np.maximum(elite.std(axis=0), 0.05)
        if values.max() > best_value:
            best_value = float(values.max())
            result.best = FixedPolicy(cands[int(values.argmax())])
        result.history.append(float(values.max()))
        logger.info("CEM generation %d/%d: best %.4f mean %.4f", gen + 1, cfg.cem_generations,
                    values.max(), values.mean())
    # Re-select between the last mean and the best single draw on fresh sessions: the max of a
    # noisy population is optimistically biased.
    final = {"mean": FixedPolicy(np.clip(mean, -1, 1)), "best": result.best}
    res = evaluate_many(world, final, cfg.sessions_per_eval * 2, seed=seed * 1000 + 999)
    result.n_sessions += cfg.sessions_per_eval * 4
    result.best = final["mean"] if res["mean"].mean_return >= res["best"].mean_return \
        else final["best"]
    return result


@dataclass(frozen=True, eq=False)
class LinearTanhPolicy:
    """``a = tanh(W (s - center) / scale + b)``: ES's small state -> action network."""

    weight: np.ndarray   # (k, S)
    bias: np.ndarray     # (k,)
    center: np.ndarray   # (S,)
    scale: np.ndarray    # (S,)

    def __call__(self, states: np.ndarray) -> np.ndarray:
        z = (np.asarray(states, dtype=np.float64) - self.center) / self.scale
        return np.tanh(z @ self.weight.T + self.bias)

    @property
    def params(self) -> np.ndarray:
        return np.concatenate([self.weight.ravel(), self.bias])

    def with_params(self, theta: np.ndarray) -> "LinearTanhPolicy":
        k, s = self.weight.shape
        return LinearTanhPolicy(theta[:k * s].reshape(k, s), theta[k * s:], self.center,
                                self.scale)


def _centered_ranks(x: np.ndarray) -> np.ndarray:
    """Rank-transform fitness to [-0.5, 0.5] (robust to outliers; Salimans et al. 2017)."""
    ranks = np.empty(len(x))
    ranks[np.argsort(x)] = np.arange(len(x))
    return ranks / max(len(x) - 1, 1) - 0.5


def es_linear_policy(world: "World", cfg: SearchConfig, seed: int,
                     state_sample: np.ndarray, init_bias: np.ndarray | None = None
                     ) -> SearchResult:
    """Antithetic ES over :class:`LinearTanhPolicy`, maximising true session return.

    Args:
        state_sample: ``(n, S)`` states used to standardise the inputs (e.g. logged states).
        init_bias: starting action (pre-tanh bias), e.g. the best fixed action from CEM.
    """
    rng = np.random.default_rng([seed, 202])
    k, s = world.k, state_sample.shape[1]
    center = state_sample.mean(axis=0)
    scale = np.maximum(state_sample.std(axis=0), 1e-3)
    bias = np.zeros(k) if init_bias is None else np.arctanh(np.clip(init_bias, -0.95, 0.95))
    policy = LinearTanhPolicy(np.zeros((k, s)), bias, center, scale)
    theta = policy.params
    result = SearchResult(best=policy)
    for gen in range(cfg.es_generations):
        eps = rng.standard_normal((cfg.es_pairs, theta.size))
        cands = {"center": policy.with_params(theta)}
        for i, e in enumerate(eps):
            cands[f"+{i}"] = policy.with_params(theta + cfg.es_sigma * e)
            cands[f"-{i}"] = policy.with_params(theta - cfg.es_sigma * e)
        res = evaluate_many(world, cands, cfg.sessions_per_eval, seed=seed * 1000)
        result.n_sessions += cfg.sessions_per_eval * len(cands)
        f = np.array([res[f"+{i}"].mean_return for i in range(cfg.es_pairs)]
                     + [res[f"-{i}"].mean_return for i in range(cfg.es_pairs)])
        r = _centered_ranks(f)
        grad = ((r[:cfg.es_pairs] - r[cfg.es_pairs:])[:, None] * eps).sum(axis=0)
        theta = theta + cfg.es_lr / (2 * cfg.es_pairs * cfg.es_sigma) * grad
        result.history.append(res["center"].mean_return)
        logger.info("ES generation %d/%d: centre %.4f, population mean %.4f", gen + 1,
                    cfg.es_generations, res["center"].mean_return, f.mean())
    result.best = policy.with_params(theta)
    return result
