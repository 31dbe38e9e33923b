"""Model-based OPE members: the rollout horizon, exact rollouts of a hand-set session model,
values and order learned from sessions whose length the action decides, and the gate."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mtf.ope.config import EnsembleConfig, OpeConfig
from mtf.ope.evaluate import evaluate_arrays
from mtf.ope.model_based import Dynamics, SessionScales, rollout_horizon, rollout_values
from mtf.ope.policies import fixed_policy
from tests.ope.tables import exit_sessions, exit_value


def test_the_rollout_horizon_follows_the_discount() -> None:
    assert rollout_horizon(0.95, 0.01) == 90        # 0.95^90 = 0.0099 <= 0.01 < 0.95^89
    assert rollout_horizon(0.9, 0.01) == 44
    assert rollout_horizon(0.999, 0.01) == 100      # capped
    assert rollout_horizon(1.0, 0.01) == 100
    assert rollout_horizon(0.95, 0.01, backups=7) == 7


def _constant_model(outputs: list[list[float]]) -> Dynamics:
    """Two members whose output is a constant (the output layer's bias; its weights are 0)."""
    model = Dynamics(2, 2, 1, (4,), torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.net.biases[-1].copy_(torch.tensor(outputs).unsqueeze(1))
    return model


class _FirstFeature(torch.nn.Module):
    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return s[:, :1] * 3.0          # outside the box where s > 1/3: the rollout clips it


def test_a_constant_model_rolls_out_the_geometric_sum_exactly() -> None:
    # member 0: reward 2 * 0.25 + 0.5 = 1.0, exit logit 0 (p = 0.5);
    # member 1: reward 2 * 1.0 + 0.5 = 2.5, exit logit log(1/3) (p = 0.25)
    model = _constant_model([[0.1, 0.0, 0.25, 0.0], [0.1, 0.0, 1.0, float(np.log(1 / 3))]])
    scales = SessionScales(mean=torch.zeros(2), std=torch.ones(2), delta_std=torch.ones(2),
                           reward_mean=torch.tensor(0.5), reward_std=torch.tensor(2.0),
                           low=torch.full((2,), -1.0), high=torch.full((2,), 1.0))
    start = torch.zeros(2, 3, 2)
    init_w = torch.full((2, 3), 1 / 3)
    gamma, horizon = 0.9, 12
    total, curve = rollout_values(model, _FirstFeature(), start, init_w, scales, gamma, horizon)
    t = np.arange(horizon)
    v0 = np.cumsum(1.0 * (gamma * 0.5) ** t)
    v1 = np.cumsum(2.5 * (gamma * 0.75) ** t)
    np.testing.assert_allclose(total.numpy(), [v0[-1], v1[-1]], rtol=1e-6)
    np.testing.assert_allclose(curve, (v0 + v1) / 2, rtol=1e-6)


def test_rollout_states_stay_in_the_logged_range() -> None:
    # the state drifts by +0.4 per step; the policy reads it (3 s_0, clipped to the box), and
    # the reward ignores it: the rollout must clip the state at high = 0.5, and the policy's
    # action at 1, without error, and the value is the plain geometric sum
    model = _constant_model([[0.4, 0.0, 0.0, 0.0], [0.4, 0.0, 0.0, 0.0]])
    seen: list[torch.Tensor] = []

    class Recording(torch.nn.Module):
        def forward(self, s: torch.Tensor) -> torch.Tensor:
            seen.append(s.clone())
            return _FirstFeature()(s)

    scales = SessionScales(mean=torch.zeros(2), std=torch.ones(2), delta_std=torch.ones(2),
                           reward_mean=torch.tensor(1.0), reward_std=torch.tensor(1.0),
                           low=torch.full((2,), -0.5), high=torch.full((2,), 0.5))
    total, _ = rollout_values(model, Recording(), torch.zeros(2, 1, 2), torch.ones(2, 1),
                              scales, 0.5, 4)
    assert [float(s[0, 0]) for s in seen] == pytest.approx([0.0, 0.4, 0.5, 0.5])
    np.testing.assert_allclose(total.numpy(), [1 + 0.25 + 0.0625 + 0.015625] * 2, rtol=1e-6)


@pytest.fixture(scope="module")
def exit_result():
    torch.set_num_threads(1)
    data = exit_sessions(3000, seed=3)
    policies = [fixed_policy("logging", [0.0]), fixed_policy("long", [-0.6]),
                fixed_policy("bait", [0.6])]
    ope = OpeConfig(n_iterations=20, target_update_every=10, hidden=(8,), n_bootstrap=50,
                    ensemble=EnsembleConfig(model="model_based", members=4, model_steps=1500,
                                            model_hidden=(32, 32)))
    return evaluate_arrays(data, policies, ope, gamma=0.9, seed=0)


def test_the_learned_model_values_policies_whose_action_decides_the_session_length(
        exit_result) -> None:
    # true values 2.703 (logging, a = 0), 3.130 (a = -0.6), 2.469 (a = +0.6, the best step)
    fit = exit_result.ensemble
    assert fit is not None and fit.backups == 44 and fit.steps == 1500
    assert set(fit.components) == {"model_based"}
    for name, c in (("logging", 0.0), ("long", -0.6), ("bait", 0.6)):
        assert exit_result.estimate(name, "fqe_ensemble") == pytest.approx(
            exit_value(c, 0.9), rel=0.04)
    mean = fit.values.mean(axis=1)
    assert mean[1] > mean[0] > mean[2]                   # the true order
    assert np.all(fit.values[1] > fit.values[2])         # every member prefers the long session


def test_the_gate_reads_the_model_based_members(exit_result) -> None:
    assert exit_result.decision("long").go                # +16% of the logging value
    assert not exit_result.decision("bait").go            # -9%
    assert exit_result.decision("long").estimator == "fqe_ensemble"


def test_model_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="ope.ensemble.model_steps must be > 0"):
        EnsembleConfig(model="model_based", model_steps=0)
    with pytest.raises(ValueError, match="ope.ensemble.model_hidden must list positive"):
        EnsembleConfig(model="model_based", model_hidden=())


def test_comparison_ensembles_share_a_fit_unless_a_fitted_setting_differs() -> None:
    from mtf.loop.ope_benchmark import _fit_key

    mlp = EnsembleConfig(model="mlp")
    # the gate's settings and the kinds read do not change the fit that holds them
    assert _fit_key(mlp) == _fit_key(EnsembleConfig(model="hybrid", lower_quantile=0.2,
                                                    min_support=0.3))
    assert _fit_key(mlp) == _fit_key(EnsembleConfig(model="linear+model_based"))
    # any setting of a fit does
    assert _fit_key(mlp) != _fit_key(EnsembleConfig(model="model_based", model_steps=10))
    assert _fit_key(mlp) != _fit_key(EnsembleConfig(ridge=0.1))


def test_model_names_one_kind_or_several_joined_by_plus() -> None:
    from mtf.ope.config import model_components

    assert model_components("hybrid") == ("mlp", "linear")
    assert model_components("model_based+linear") == ("linear", "model_based")
    assert model_components("hybrid+model_based") == ("mlp", "linear", "model_based")
    assert EnsembleConfig(model="linear+model_based").components == ("linear", "model_based")
    for bad in ("tree", "linear+tree", ""):
        with pytest.raises(ValueError, match="ope.ensemble.model must be one of"):
            EnsembleConfig(model=bad)


def test_a_member_of_several_kinds_is_their_mean_and_converges_when_each_does() -> None:
    from mtf.ope.ensemble import padded_histories

    np.testing.assert_array_equal(
        padded_histories([np.array([[1.0], [2.0]]), np.array([[5.0], [6.0], [7.0]])])[0],
        [[1.0], [2.0], [2.0]])
    torch.set_num_threads(1)
    data = exit_sessions(400, seed=5)
    policies = [fixed_policy("logging", [0.0]), fixed_policy("long", [-0.6])]
    ens = EnsembleConfig(model="linear+model_based", members=3, model_steps=30,
                         model_hidden=(8,))
    ope = OpeConfig(n_iterations=20, target_update_every=10, hidden=(8,), n_bootstrap=50,
                    ensemble=ens)
    fit = evaluate_arrays(data, policies, ope, gamma=0.9, seed=0).ensemble
    assert fit is not None and set(fit.components) == {"linear", "model_based"}
    lin, mb = fit.components["linear"], fit.components["model_based"]
    np.testing.assert_allclose(fit.values, (lin.values + mb.values) / 2, rtol=1e-12)
    assert fit.backups == max(lin.backups, mb.backups) == 44
    np.testing.assert_array_equal(fit.converged(), lin.converged() & mb.converged())
    # each kind alone is what its own model fits (the same seed, the same resamples)
    from dataclasses import replace

    for kind, part in (("linear", lin), ("model_based", mb)):
        alone = evaluate_arrays(data, policies, replace(ope, ensemble=replace(ens, model=kind)),
                                gamma=0.9, seed=0).ensemble
        np.testing.assert_array_equal(alone.values, part.values)


def test_the_report_says_what_a_member_is() -> None:
    from mtf.ope.report import decision_rule, members_in_words

    assert members_in_words(("linear",)) == "linear FQE"
    assert members_in_words(("mlp", "linear", "model_based")) == \
        "mean of MLP FQE, linear FQE and model-based rollout"
    rule = decision_rule(OpeConfig(ensemble=EnsembleConfig(model="model_based")))
    assert "10 bootstrapped members, each a model-based rollout" in rule


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_model_based_members_train_and_roll_out_on_the_gpu() -> None:
    # the same minibatch draws (CPU generator) on both devices: values agree up to float
    # rounding accumulated over the Adam steps and the rollout
    from mtf.ope.ensemble import session_index
    from mtf.ope.model_based import fit_model_ensemble

    data = exit_sessions(800, seed=3)
    sess, first = session_index(data.session_id)
    modules = [fixed_policy("logging", [0.0]).module(), fixed_policy("long", [-0.6]).module()]
    settings = EnsembleConfig(model="model_based", members=3, model_steps=300,
                              model_hidden=(32, 32))
    args = (["logging", "long"], modules, data.state, data.action, data.reward,
            data.next_state, data.is_terminal, sess, first)
    cpu = fit_model_ensemble(*args, gamma=0.9, settings=settings, seed=0)
    gpu = fit_model_ensemble(*args, gamma=0.9, settings=settings, seed=0, device="cuda")
    np.testing.assert_allclose(gpu.values, cpu.values, rtol=0.02)
    np.testing.assert_allclose(gpu.history, cpu.history, rtol=0.02)
