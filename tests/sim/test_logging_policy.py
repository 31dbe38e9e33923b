"""Exploration groups and the log-density of logged actions."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mtf.serving.exploration import ServingConfig
from mtf.sim.logging_policy import (EXPLOIT, NOISE, RANDOM, LoggingPolicy, assign_groups,
                                    box_uniform_bounds, truncated_normal_logpdf,
                                    truncated_normal_sample)
from mtf.sim.policies import FixedPolicy

K = 6


def _independent_logpdf(a: float, mu: float, sigma: float) -> float:
    """Truncated-normal density on [-1, 1], written out with math.erf (independent check)."""
    def cdf(x: float) -> float:
        return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))
    z = (a - mu) / sigma
    pdf = math.exp(-0.5 * z * z) / (sigma * math.sqrt(2.0 * math.pi))
    return math.log(pdf / (cdf((1.0 - mu) / sigma) - cdf((-1.0 - mu) / sigma)))


def test_groups_follow_the_configured_shares_and_are_stable() -> None:
    ids = [f"u{i:08d}" for i in range(40_000)]
    cfg = ServingConfig(noise_share=0.25, random_share=0.15)
    groups = assign_groups(ids, cfg)
    shares = np.bincount(groups, minlength=3) / len(ids)
    np.testing.assert_allclose(shares[[EXPLOIT, NOISE, RANDOM]], [0.60, 0.25, 0.15], atol=0.01)
    reordered = assign_groups(ids[::-1], cfg)[::-1]
    np.testing.assert_array_equal(groups, reordered)
    resalted = assign_groups(ids, ServingConfig(noise_share=0.25, random_share=0.15,
                                                    salt="other"))
    assert 0.3 < np.mean(resalted != groups) < 0.7


@pytest.mark.parametrize("mu", [-1.0, -0.4, 0.0, 0.95, 1.0])
@pytest.mark.parametrize("sigma", [0.1, 0.5])
def test_truncated_normal_density_integrates_to_one(mu: float, sigma: float) -> None:
    grid = np.linspace(-1.0, 1.0, 200_001)
    dens = np.exp(truncated_normal_logpdf(grid, mu, sigma))
    assert np.trapz(dens, grid) == pytest.approx(1.0, abs=1e-6)
    for a in (-0.9, 0.3, 0.99):
        assert truncated_normal_logpdf(np.array([a]), mu, sigma)[0] == pytest.approx(
            _independent_logpdf(a, mu, sigma), rel=1e-12, abs=1e-12)
    assert truncated_normal_logpdf(np.array([1.2]), mu, sigma)[0] == -np.inf


@pytest.mark.parametrize("mu, sigma", [(0.9, 0.1), (1.0, 0.1), (0.0, 0.5), (-0.7, 0.5)])
def test_truncated_normal_samples_follow_the_density(mu: float, sigma: float) -> None:
    n = 20_000
    draws = truncated_normal_sample(np.full(n, mu), sigma, np.random.default_rng(7))
    assert draws.min() >= -1.0 and draws.max() <= 1.0
    # Kolmogorov-Smirnov distance between the empirical CDF and the CDF of the logged density.
    grid = np.linspace(-1.0, 1.0, 40_001)
    cdf = np.concatenate([[0.0], np.cumsum(np.diff(grid) * 0.5 * (
        np.exp(truncated_normal_logpdf(grid[1:], mu, sigma))
        + np.exp(truncated_normal_logpdf(grid[:-1], mu, sigma))))])
    emp = np.searchsorted(np.sort(draws), grid, side="right") / n
    assert np.abs(emp - cdf).max() < 1.63 / math.sqrt(n)   # KS critical value at 1%


def _policy(**cfg: object) -> LoggingPolicy:
    base = np.array([0.2, -0.5, 0.0, 0.97, -1.0, 0.5])
    return LoggingPolicy(FixedPolicy(base), ServingConfig(**cfg), K)  # type: ignore[arg-type]


def test_exploit_group_acts_deterministically_without_density() -> None:
    pol = _policy()
    states = np.zeros((5, 25), np.float32)
    actions, logp = pol.act(states, np.full(5, EXPLOIT), np.random.default_rng(0))
    np.testing.assert_array_equal(actions, np.tile(pol.base(states[:1]), (5, 1)))
    assert np.isnan(logp).all()


@pytest.mark.parametrize("noise_dist, random_dist", [("gaussian", "gaussian"),
                                                     ("uniform", "uniform")])
def test_logged_logp_is_the_density_of_the_sampled_action(noise_dist: str,
                                                          random_dist: str) -> None:
    pol = _policy(noise_dist=noise_dist, random_dist=random_dist)
    n = 3000
    states = np.zeros((n, 25), np.float32)
    groups = np.repeat(np.array([NOISE, RANDOM, EXPLOIT]), n // 3)
    actions, logp = pol.act(states, groups, np.random.default_rng(1))
    assert np.all(np.abs(actions) <= 1.0)
    np.testing.assert_allclose(pol.log_density(states, groups, actions), logp)
    mu = pol.base(states[:1])[0]
    noise, rand = actions[groups == NOISE], actions[groups == RANDOM]
    if noise_dist == "gaussian":
        want = [sum(_independent_logpdf(a, m, 0.1) for a, m in zip(row, mu)) for row in noise[:50]]
        np.testing.assert_allclose(logp[groups == NOISE][:50], want, rtol=1e-10)
        want = [sum(_independent_logpdf(a, 0.0, 0.5) for a in row) for row in rand[:50]]
        np.testing.assert_allclose(logp[groups == RANDOM][:50], want, rtol=1e-10)
    else:
        lo, hi = box_uniform_bounds(mu, 0.15)
        assert np.all((noise >= lo) & (noise <= hi))
        np.testing.assert_allclose(logp[groups == NOISE], -np.log(hi - lo).sum())
        np.testing.assert_allclose(logp[groups == RANDOM], -K * math.log(2.0))
        # Uniform over the support: each task's mean is the interval's midpoint.
        np.testing.assert_allclose(noise.mean(axis=0), (lo + hi) / 2, atol=0.01)
    # Action noise stays near the base, random exploration does not.
    assert np.abs(noise - mu).max() < 0.6
    assert np.abs(rand - mu).max() > 1.0


def test_noise_is_centred_on_the_base_action() -> None:
    pol = _policy(noise_sigma=0.1)
    n = 20_000
    actions, _ = pol.act(np.zeros((n, 25), np.float32), np.full(n, NOISE),
                         np.random.default_rng(2))
    mu = pol.base(np.zeros((1, 25), np.float32))[0]
    interior = np.abs(mu) < 0.5
    np.testing.assert_allclose(actions.mean(axis=0)[interior], mu[interior], atol=0.005)
    np.testing.assert_allclose(actions.std(axis=0)[interior], 0.1, atol=0.005)
    assert actions[:, mu == -1.0].max() <= -1.0 + 0.6


def test_base_policy_output_is_checked() -> None:
    pol = LoggingPolicy(lambda s: np.full((len(s), K), 1.5), ServingConfig(), K)
    with pytest.raises(ValueError, match=r"logging base policy returned actions outside"):
        pol.act(np.zeros((2, 25), np.float32), np.zeros(2, np.int8), np.random.default_rng(0))
