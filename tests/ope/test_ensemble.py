"""Bootstrapped FQE ensembles: batched networks, backups from the data, summaries, known values."""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from mtf.ope.config import EnsembleConfig
from mtf.ope.ensemble import BatchedMLP, EnsembleFit, fit_ensemble, n_backups_for, session_index
from tests.ope.tables import bandit, bandit_value, chain


def test_batched_mlp_equals_one_mlp_per_group_and_keeps_groups_apart() -> None:
    net = BatchedMLP(3, 4, (5, 6), torch.Generator().manual_seed(0))
    with torch.no_grad():
        for w in net.weights:              # the output layer starts at zero: give it values
            w.normal_(generator=torch.Generator().manual_seed(1))
    x = torch.randn(3, 7, 4, generator=torch.Generator().manual_seed(2))
    out = net(x)
    assert out.shape == (3, 7)
    for g in range(3):
        h = x[g]
        for i, (w, b) in enumerate(zip(net.weights, net.biases)):
            h = h @ w[g] + b[g]
            h = torch.relu(h) if i < 2 else h
        torch.testing.assert_close(out[g], h.squeeze(-1))
    out[1].sum().backward()               # group 1's output depends on group 1's weights only
    assert net.weights[0].grad[1].abs().sum() > 0
    assert net.weights[0].grad[0].abs().sum() == 0 and net.weights[0].grad[2].abs().sum() == 0


def test_q_starts_at_zero() -> None:
    net = BatchedMLP(2, 3, (4,), torch.Generator().manual_seed(0))
    assert torch.equal(net(torch.randn(2, 5, 3)), torch.zeros(2, 5))


def test_backups_follow_session_length_and_discount() -> None:
    # 1 / 100-step sessions: q99 of 1..100 is 99.01; log(0.01) / log(0.95) = 89.8 -> 90.
    assert n_backups_for(np.arange(1, 101), 0.95, 0.01, 10) == 90 + 10
    assert n_backups_for(np.full(50, 5), 0.95, 0.01, 3) == 5 + 3      # short sessions: 5
    assert n_backups_for(np.full(50, 5), 1.0, 0.01, 0) == 5           # no discount: length
    assert n_backups_for(np.array([1, 2, 400]), 0.5, 0.01, 0) == math.ceil(
        math.log(0.01) / math.log(0.5))                                # 7: the discount caps
    with pytest.raises(ValueError, match="at least one session"):
        n_backups_for(np.array([]), 0.9, 0.01, 0)


def test_session_index_numbers_sessions_and_finds_their_first_rows() -> None:
    sess, first = session_index(np.array(["a", "a", "b", "c", "c", "c"]))
    assert sess.tolist() == [0, 0, 1, 2, 2, 2] and first.tolist() == [0, 2, 3]


def _fit(values: np.ndarray, history: np.ndarray, q: float = 0.1) -> EnsembleFit:
    return EnsembleFit(["logging", "a", "b"], values, history, backups=len(history), steps=1,
                       seconds=0.0, settings=EnsembleConfig(members=3, lower_quantile=q))


def test_summary_intervals_lower_values_and_paired_decisions() -> None:
    values = np.array([[4.0, 4.2, 4.4],      # logging: mean 4.2, sd 0.2
                       [4.5, 4.6, 4.7],      # a: paired diff +0.3 +0.4 +0.3 -> mean 1/3
                       [3.0, 4.0, 5.0]])     # b: diff -1.0 -0.2 +0.6 -> mean -0.2, sd 0.8
    s = _fit(values, np.ones((8, 3))).summary("logging", level=0.95, margin=0.01)
    z95, z90 = NormalDist().inv_cdf(0.975), NormalDist().inv_cdf(0.9)
    assert s["logging"]["estimate"] == pytest.approx(4.2)
    assert s["logging"]["ci_low"] == pytest.approx(4.2 - z95 * 0.2)
    assert s["logging"]["lower"] == pytest.approx(4.2 - z90 * 0.2)
    assert "go" not in s["logging"]
    d_sd = float(np.std([0.5, 0.4, 0.3], ddof=1))
    assert s["a"]["diff"] == pytest.approx(0.4) and s["a"]["diff_sd"] == pytest.approx(d_sd)
    assert s["a"]["diff_lower"] == pytest.approx(0.4 - z90 * d_sd) and s["a"]["go"] is True
    assert s["b"]["diff"] == pytest.approx(-0.2) and s["b"]["diff_sd"] == pytest.approx(0.8)
    assert s["b"]["go"] is False     # -0.2 - 1.28 * 0.8 < -0.042


def test_converged_compares_the_last_quarter_of_the_backups() -> None:
    history = np.array([[1.0, 1.0, 1.0]] * 4 + [[4.0, 4.0, 2.0]] * 3 + [[4.0, 4.1, 4.0]])
    ok = _fit(np.ones((3, 3)), history).converged(tol=0.01)
    # last quarter of 8 backups: from backup 6 (index -3) to 8 moved 0, 0.1, 2.0; allowed:
    # 1% of the final value (0.04, 0.041, 0.04)
    assert ok.tolist() == [True, False, False]
    assert not _fit(np.ones((3, 3)), history[:3]).converged().any()   # too short to tell


def _fixed_actions(data: object, actions: list[tuple[float, float]]) -> tuple[np.ndarray, ...]:
    n = len(data)   # type: ignore[arg-type]
    pa = np.stack([np.tile(np.asarray(a, dtype=np.float32), (n, 1)) for a in actions])
    return pa, pa.copy()


def test_one_step_bandit_values_and_paired_go_decisions() -> None:
    torch.set_num_threads(1)
    data = bandit(3000, seed=4)
    actions = [(0.0, 0.0), (0.3, -0.2), (-0.6, 0.5)]    # logging, best, a worse one
    pa, pna = _fixed_actions(data, actions)
    sess, first = session_index(data.session_id)
    settings = EnsembleConfig(members=4, hidden=(32, 32), lr=3e-3, batch_size=256,
                              steps_per_backup=100, backups=3)
    fit = fit_ensemble(["logging", "best", "worse"], data.state, data.action, data.reward,
                       data.next_state, data.is_terminal, pa, pna, sess, first, gamma=0.9,
                       settings=settings, seed=0)
    assert fit.values.shape == (3, 4) and fit.history.shape == (3, 3) and fit.steps == 300
    s = fit.summary("logging")
    for name, a in zip(["logging", "best", "worse"], actions):
        assert s[name]["estimate"] == pytest.approx(bandit_value(a), abs=0.05), name
        assert s[name]["sd"] > 0                                   # resampled sessions differ
    assert s["best"]["go"] and not s["worse"]["go"]
    again = fit_ensemble(["logging", "best", "worse"], data.state, data.action, data.reward,
                         data.next_state, data.is_terminal, pa, pna, sess, first, gamma=0.9,
                         settings=settings, seed=0)
    np.testing.assert_array_equal(again.values, fit.values)       # seeded: reproducible


def test_two_step_chain_needs_its_backups() -> None:
    """r_0 = a_0 pays now, r_1 = 2 - 2 (a_1 - 0.5)^2 - a_0^2 later: with one backup the value
    misses the second step; the automatic count (q99 length 2 + extra) gets it."""
    torch.set_num_threads(1)
    data = chain(3000, seed=2)
    sess, first = session_index(data.session_id)
    pa, pna = _fixed_actions_1d(data, [0.0, 0.5])
    base = dict(members=3, hidden=(32, 32), lr=3e-3, batch_size=256, steps_per_backup=150,
                bootstrap=False)
    short = fit_ensemble(["zero", "half"], data.state, data.action, data.reward,
                         data.next_state, data.is_terminal, pa, pna, sess, first, gamma=0.9,
                         settings=EnsembleConfig(**base, backups=1), seed=0)
    auto = fit_ensemble(["zero", "half"], data.state, data.action, data.reward,
                        data.next_state, data.is_terminal, pa, pna, sess, first, gamma=0.9,
                        settings=EnsembleConfig(**base, extra_backups=2), seed=0)
    assert auto.backups == 4
    # truth for a constant a: a + 0.9 * (2 - 2 (a - 0.5)^2 - a^2)
    for i, a in enumerate([0.0, 0.5]):
        truth = a + 0.9 * (2 - 2 * (a - 0.5) ** 2 - a ** 2)
        assert auto.values[i].mean() == pytest.approx(truth, abs=0.08)
        assert abs(short.values[i].mean() - truth) > 0.5


def _fixed_actions_1d(data: object, actions: list[float]) -> tuple[np.ndarray, np.ndarray]:
    n = len(data)   # type: ignore[arg-type]
    pa = np.stack([np.full((n, 1), a, dtype=np.float32) for a in actions])
    return pa, pa.copy()


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="members must be 0"):
        EnsembleConfig(members=1)
    with pytest.raises(ValueError, match="lower_quantile"):
        EnsembleConfig(lower_quantile=0.5)
    with pytest.raises(ValueError, match="hidden"):
        EnsembleConfig(hidden=())
