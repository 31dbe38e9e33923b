"""Poisson bootstrap weights, sums and intervals; interval coverage on a synthetic bandit."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mtf.ope.bootstrap import (initial_state_mask, percentile_interval, poisson_weights,
                               session_hashes, weighted_sums)
from mtf.ope.config import OpeConfig
from mtf.ope.evaluate import local_sums
from mtf.ope.fqe import QNetwork
from mtf.ope.policies import fixed_policy, script_bytes
from mtf.ope.results import summarise
from mtf.ope.score import PolicyModels, ScoringBundle
from tests.ope.tables import bandit, bandit_smoothed_value


def test_weights_are_poisson_one_and_deterministic() -> None:
    h = session_hashes([f"s{i}" for i in range(4000)])
    w = poisson_weights(h, 50, seed=3)
    assert w.shape == (4000, 50)
    assert w.mean() == pytest.approx(1.0, abs=0.01) and w.var() == pytest.approx(1.0, abs=0.02)
    assert (w == 0).mean() == pytest.approx(np.exp(-1.0), abs=0.01)
    np.testing.assert_array_equal(w, poisson_weights(h, 50, seed=3))
    assert not np.array_equal(w, poisson_weights(h, 50, seed=4))
    # a session's weights do not depend on which other sessions are in the batch
    np.testing.assert_array_equal(w[10:20], poisson_weights(h[10:20], 50, seed=3))


def test_weighted_sums_row_zero_is_the_full_data_sum() -> None:
    h = session_hashes(["a", "b", "c"])
    x = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    s = weighted_sums(h, x, 7, seed=0)
    np.testing.assert_allclose(s[0], [9.0, 12.0])
    np.testing.assert_allclose(s[1:], poisson_weights(h, 7, 0).T @ x)


def test_initial_state_sample_has_the_requested_share() -> None:
    h = session_hashes([f"s{i}" for i in range(20000)])
    assert initial_state_mask(h, 0.25, seed=1).mean() == pytest.approx(0.25, abs=0.01)
    assert initial_state_mask(h, 1.0, seed=1).all()


def test_percentile_interval_ignores_nan_replicates() -> None:
    lo, hi = percentile_interval(np.r_[np.arange(101.0), np.nan], 0.9)
    assert (lo, hi) == pytest.approx((5.0, 95.0))
    assert np.isnan(percentile_interval(np.array([np.nan, 1.0]), 0.9)[0])


def zero_q_bundle(policy_action: list[float], state_dim: int, sigma: float) -> ScoringBundle:
    """IS-family scoring without FQE (Q = 0, so DR = PDIS)."""
    k = len(policy_action)
    zero = script_bytes(QNetwork(state_dim, k, (2,), torch.zeros(state_dim), torch.ones(state_dim),
                                 1.0))
    return ScoringBundle((PolicyModels("p", fixed_policy("p", policy_action).payload, zero,
                                       zero),), sigma, state_dim, k)


@pytest.mark.parametrize("estimator", ["pdis", "wpdis"])
def test_intervals_cover_the_truth_at_about_the_nominal_rate(estimator: str) -> None:
    """40 independent data sets; the 90% interval should cover about 36 times (Binomial(40,
    0.9): 32..39 holds 95% of runs). 40 of 40 fails: intervals that always cover are too
    wide to say anything."""
    action, sigma = [0.1, 0.0], 0.3
    truth = bandit_smoothed_value(action, sigma)
    bundle = zero_q_bundle(action, 2, sigma)
    ope = OpeConfig(n_bootstrap=300, ci_level=0.9, target_sigma=sigma)
    covered = []
    for seed in range(40):
        sums = local_sums(bandit(300, seed=100 + seed), bundle, ope, gamma=0.9, seed=seed)
        e = summarise(sums, ope)[0].estimates[estimator]
        covered.append(e.ci_low <= truth <= e.ci_high)
    assert 0.8 <= np.mean(covered) <= 0.975, np.mean(covered)
