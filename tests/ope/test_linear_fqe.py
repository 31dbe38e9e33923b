"""Linear FQE members: the feature map, exact values where the features hold the true Q, the
closed-form fixed point, backups that follow the sessions, and the ensemble's paired gate."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from mtf.ope.config import EnsembleConfig, OpeConfig
from mtf.ope.data import TransitionArrays
from mtf.ope.ensemble import session_index
from mtf.ope.evaluate import evaluate_arrays
from mtf.ope.linear_fqe import feature_dim, fit_linear_ensemble, quadratic_features
from mtf.ope.policies import fixed_policy
from tests.ope.tables import bandit, bandit_value


def test_quadratic_features_layout() -> None:
    s = torch.tensor([[2.0, 3.0]], dtype=torch.float64)
    a = torch.tensor([[5.0, 7.0]], dtype=torch.float64)
    phi = quadratic_features(s, a)
    #          1, s0, s1, a0, a1, a0a0, a0a1, a1a1, s0a0, s0a1, s1a0, s1a1
    expected = [1, 2, 3, 5, 7, 25, 35, 49, 10, 14, 15, 21]
    assert phi.tolist() == [expected]
    assert feature_dim(2, 2) == len(expected) and feature_dim(25, 6) == 203


def _constant(data: TransitionArrays, actions: list[tuple[float, ...]]) -> np.ndarray:
    return np.stack([np.tile(np.asarray(a, dtype=np.float32), (len(data), 1)) for a in actions])


def _fit(data: TransitionArrays, names: list[str], actions: list[tuple[float, ...]],
         gamma: float, **settings: object):
    sess, first = session_index(data.session_id)
    pa = _constant(data, actions)
    return fit_linear_ensemble(names, data.state, data.action, data.reward, data.next_state,
                               data.is_terminal, pa, pa.copy(), sess, first, gamma=gamma,
                               settings=EnsembleConfig(model="linear", **settings), seed=0)


def test_one_step_bandit_values_are_exact_when_the_features_hold_the_reward() -> None:
    # r = 1 - (a0 - 0.3)^2 - 0.5 (a1 + 0.2)^2 + 0.2 s0 is quadratic in a, linear in s: one
    # backup of a (nearly unregularised) regression recovers it, and V(c) = bandit_value(c).
    data = bandit(2000, seed=4, noise_sd=0.0)
    actions = [(0.0, 0.0), (0.3, -0.2), (-0.6, 0.5)]
    fit = _fit(data, ["logging", "best", "worse"], actions, 0.9, members=3, ridge=1e-9,
               bootstrap=False, backups=1)
    assert fit.values.shape == (3, 3) and fit.history.shape == (1, 3) and fit.steps == 0
    for i, a in enumerate(actions):
        # E s0 over the sample is not exactly 0: the value includes 0.2 * mean(s0)
        truth = bandit_value(a) + 0.2 * float(data.state[:, 0].mean())
        np.testing.assert_allclose(fit.values[i], truth, atol=1e-6)


def test_bootstrap_members_differ_and_the_paired_gate_decides() -> None:
    data = bandit(3000, seed=4)                     # reward noise sd 0.1
    fit = _fit(data, ["logging", "best", "worse"], [(0.0, 0.0), (0.3, -0.2), (-0.6, 0.5)],
               0.9, members=8, backups=1)
    s = fit.summary("logging")
    assert s["best"]["estimate"] == pytest.approx(bandit_value((0.3, -0.2)), abs=0.02)
    assert s["worse"]["estimate"] == pytest.approx(bandit_value((-0.6, 0.5)), abs=0.05)
    assert all(s[n]["sd"] > 0 for n in s)           # resampled sessions differ
    assert s["best"]["go"] is True and s["worse"]["go"] is False
    again = _fit(data, ["logging", "best", "worse"], [(0.0, 0.0), (0.3, -0.2), (-0.6, 0.5)],
                 0.9, members=8, backups=1)
    np.testing.assert_array_equal(again.values, fit.values)        # deterministic


def _two_step(n: int, seed: int) -> TransitionArrays:
    """s0 = (0, 0); r0 = a0 - a0^2; s1 = (1, a0); r1 = 1 + s1[1] + a1 - a1^2; terminal after
    s1. Q is in the feature span at both steps (the a-coefficient moves with s[0], the a^2 one
    does not): V(c0, c1) = c0 - c0^2 + gamma (1 + c0 + c1 - c1^2)."""
    rng = np.random.default_rng(seed)
    a0, a1 = rng.uniform(-1, 1, size=(n, 1)), rng.uniform(-1, 1, size=(n, 1))
    s0 = np.zeros((n, 2))
    s1 = np.concatenate([np.ones((n, 1)), a0], axis=1)
    r0 = a0[:, 0] - a0[:, 0] ** 2
    r1 = 1.0 + a0[:, 0] + a1[:, 0] - a1[:, 0] ** 2
    ids = [f"t{i}" for i in range(n)]
    return TransitionArrays.build(
        ids + ids, np.r_[np.zeros(n, int), np.ones(n, int)], np.vstack([s0, s1]),
        np.vstack([s1, np.zeros_like(s1)]), np.vstack([a0, a1]), np.zeros(2 * n),
        np.r_[r0, r1], np.r_[np.zeros(n, bool), np.ones(n, bool)], np.zeros(2 * n, bool),
        ["random"] * (2 * n))


def test_two_steps_need_two_backups_and_the_automatic_count_gives_them() -> None:
    data = _two_step(1500, seed=3)
    gamma, actions = 0.9, [(0.0,), (0.5,)]
    one = _fit(data, ["zero", "half"], actions, gamma, members=2, ridge=1e-9,
               bootstrap=False, backups=1)
    auto = _fit(data, ["zero", "half"], actions, gamma, members=2, ridge=1e-9,
                bootstrap=False, extra_backups=3)
    assert auto.backups == 5                        # q99 session length 2, + 3
    for i, c in enumerate([0.0, 0.5]):
        truth = c - c ** 2 + gamma * (1.0 + 2 * c - c ** 2)
        np.testing.assert_allclose(auto.values[i], truth, atol=1e-6)
        np.testing.assert_allclose(one.values[i], c - c ** 2, atol=1e-6)   # first reward only
    assert auto.converged().all() and auto.history.shape == (5, 2)


def test_many_backups_reach_the_lstd_fixed_point() -> None:
    """theta_{b+1} = G^-1 (Phi'Wr + C theta_b) converges to (G - C)^-1 Phi'Wr, computed here
    directly (one member, all sessions, a ridge that matters)."""
    data = bandit(400, seed=1)
    # chain the rows into sessions of 4 that bootstrap (not terminal) except the last step
    n = len(data)
    sid = np.repeat(np.arange(n // 4), 4)
    pos = np.tile(np.arange(4), n // 4)
    data = TransitionArrays.build(
        [f"s{i}" for i in sid], pos, data.state, np.roll(data.state, -1, axis=0), data.action,
        data.action_logp, data.reward, pos == 3, np.zeros(n, bool), ["random"] * n)
    gamma, ridge, c = 0.8, 1e-2, (0.2, -0.1)
    fit = _fit(data, ["c"], [c], gamma, members=2, ridge=ridge, bootstrap=False, backups=200)
    st = torch.as_tensor(data.state, dtype=torch.float64)
    mean, std = st.mean(0), st.std(0, unbiased=False)
    z = (st - mean) / std
    zn = (torch.as_tensor(data.next_state, dtype=torch.float64) - mean) / std
    act = torch.as_tensor(data.action, dtype=torch.float64)
    pi = torch.tensor([c], dtype=torch.float64).expand(n, -1)
    phi, phi_n = quadratic_features(z, act), quadratic_features(zn, pi)
    disc = gamma * (1.0 - torch.as_tensor(data.is_terminal, dtype=torch.float64))
    g = phi.T @ phi + ridge * n * torch.eye(phi.shape[1], dtype=torch.float64)
    theta = torch.linalg.solve(g - phi.T @ (phi_n * disc[:, None]),
                               phi.T @ torch.as_tensor(data.reward, dtype=torch.float64))
    first = data.step == 0
    v = float(quadratic_features(z[first], pi[first]).mean(0) @ theta)
    np.testing.assert_allclose(fit.values[0], v, rtol=1e-7)


def test_evaluate_arrays_uses_the_linear_members_for_the_ensemble_gate() -> None:
    data = bandit(2000, seed=5)
    policies = [fixed_policy("logging", [0.0, 0.0]), fixed_policy("best", [0.3, -0.2]),
                fixed_policy("worse", [-0.6, 0.5])]
    ope = OpeConfig(n_iterations=20, target_update_every=10, hidden=(8,), n_bootstrap=50,
                    ensemble=EnsembleConfig(model="linear", members=6, backups=1))
    res = evaluate_arrays(data, policies, ope, gamma=0.9, seed=0)
    assert res.ensemble is not None and res.ensemble.steps == 0       # closed form
    assert res.estimate("best", "fqe_ensemble") == pytest.approx(
        bandit_value((0.3, -0.2)), abs=0.02)
    assert res.decision("best").go and not res.decision("worse").go
    assert res.decision("best").estimator == "fqe_ensemble"


def test_model_and_ridge_are_validated() -> None:
    with pytest.raises(ValueError, match="ope.ensemble.model must be one of"):
        EnsembleConfig(model="tree")
    with pytest.raises(ValueError, match="ope.ensemble.ridge must be > 0"):
        EnsembleConfig(ridge=0.0)


def test_a_hybrid_member_is_the_mean_of_its_mlp_and_linear_fits_on_one_resample() -> None:
    torch.set_num_threads(1)
    data = bandit(1500, seed=6)
    policies = [fixed_policy("logging", [0.0, 0.0]), fixed_policy("best", [0.3, -0.2])]
    ens = EnsembleConfig(model="hybrid", members=3, hidden=(16,), steps_per_backup=20,
                         backups=2)
    ope = OpeConfig(n_iterations=20, target_update_every=10, hidden=(8,), n_bootstrap=50,
                    ensemble=ens)
    res = evaluate_arrays(data, policies, ope, gamma=0.9, seed=0)
    fit = res.ensemble
    assert fit is not None and set(fit.components) == {"mlp", "linear"}
    mlp, lin = fit.components["mlp"], fit.components["linear"]
    np.testing.assert_array_equal(fit.values, (mlp.values + lin.values) / 2)
    assert fit.steps == mlp.steps == 40 and lin.steps == 0
    # the linear component alone is what model=linear fits (same seed, same resamples)
    alone = evaluate_arrays(data, policies, replace(ope, ensemble=replace(ens, model="linear")),
                            gamma=0.9, seed=0).ensemble
    np.testing.assert_array_equal(alone.values, lin.values)
    assert fit.support is not None and fit.support.tolist() == [1.0, 1.0]


def test_row_sums_do_not_depend_on_the_block_size() -> None:
    from mtf.ope.linear_fqe import row_sums

    data = bandit(300, seed=2)
    rng = np.random.default_rng(0)
    w = rng.poisson(1.0, size=(3, len(data))).astype(np.float64)
    pna = _constant(data, [(0.1, 0.2), (-0.5, 0.0)])
    mean = torch.as_tensor(data.state, dtype=torch.float64).mean(0)
    std = torch.ones(2, dtype=torch.float64)
    args = (data.state, data.action, data.reward, data.next_state, data.is_terminal, pna, w,
            mean, std, 0.9)
    whole, blocks = row_sums(*args, chunk_rows=10_000), row_sums(*args, chunk_rows=7)
    for a, b in zip(whole, blocks):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert whole[0].shape == (3, 12, 12) and whole[2].shape == (2, 3, 12, 12)
