"""The linear fixed point from both sides: LSTDQ's Q coefficients and MWL's occupancy weights
on a hand-solved tabular case, their equal values, the moment condition the weights satisfy,
the effective sample of the weights, and the ``mwl`` member kind in the gate."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mtf.ope.config import EnsembleConfig, OpeConfig
from mtf.ope.ensemble import session_index
from mtf.ope.evaluate import evaluate_arrays
from mtf.ope.linear_fqe import (fit_linear_ensemble, fit_mwl_ensemble, fixed_point,
                                occupancy_ess, occupancy_shares)
from mtf.ope.policies import fixed_policy
from mtf.ope.report import trust
from tests.ope.tables import exit_sessions, exit_value

_T = torch.float64


def _tabular(gamma: float):
    """States A, B; actions 0, 1; one-hot features over (s, a) = A0, A1, B0, B1. The four
    logged rows: A0 -> B (r 1), A1 -> B (r 0), B0 end (r 2), B1 end (r 5). The policy plays
    1 everywhere and starts in A."""
    phi = torch.eye(4, dtype=_T)                       # row t has feature t
    reward = torch.tensor([1.0, 0.0, 2.0, 5.0], dtype=_T)
    b1 = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=_T)
    phi_next = torch.stack([b1, b1, torch.zeros(4, dtype=_T), torch.zeros(4, dtype=_T)])
    gram = (phi.T @ phi).unsqueeze(0)
    cross = (phi.T @ (gamma * phi_next)).unsqueeze(0)
    xr = (phi.T @ reward).unsqueeze(0)
    v0 = torch.tensor([[0.0, 1.0, 0.0, 0.0]], dtype=_T)  # phi(A, pi(A)) = A1
    return gram, xr, cross, v0, phi, phi_next


def test_tabular_fixed_point_gives_the_q_values_and_the_occupancy_ratio() -> None:
    gamma = 0.5
    gram, xr, cross, v0, phi, _ = _tabular(gamma)
    value, theta, beta = fixed_point(gram, xr, cross, v0, torch.zeros(1, dtype=_T))
    # Q(B, 1) = 5, Q(A, 1) = 0 + gamma Q(B, 1); Q(A, 0) = 1 + gamma 5; Q(B, 0) = 2
    torch.testing.assert_close(theta[0], torch.tensor([1 + gamma * 5, gamma * 5, 2.0, 5.0],
                                                      dtype=_T))
    # the policy's discounted occupancy: A1 once, B1 with weight gamma; the rest never
    torch.testing.assert_close(beta[0], torch.tensor([0.0, 1.0, 0.0, gamma], dtype=_T))
    assert float(value[0]) == pytest.approx(gamma * 5)
    assert float(beta[0] @ xr[0]) == pytest.approx(gamma * 5)      # MWL's value, the same
    # weights (0, 1, 0, 0.5) over 4 rows: (1.5)^2 / 1.25 / 4 = 0.45
    ess = occupancy_ess(gram, beta, phi.sum(0).unsqueeze(0), torch.tensor([4.0], dtype=_T))
    assert float(ess[0]) == pytest.approx(0.45)


def test_constant_weights_have_an_effective_sample_of_every_row() -> None:
    gram, _, _, _, phi, _ = _tabular(0.5)
    total, n = phi.sum(0).unsqueeze(0), torch.tensor([4.0], dtype=_T)
    beta = torch.ones(1, 4, dtype=_T)                  # w_t = 1 on every row
    assert float(occupancy_ess(gram, beta, total, n)[0]) == pytest.approx(1.0)
    beta = torch.tensor([[1.0, -1.0, 1.0, -1.0]], dtype=_T)   # sum 0: nothing effective
    assert float(occupancy_ess(gram, beta, total, n)[0]) == 0.0


def _args(data, actions):
    sess, first = session_index(data.session_id)
    pa = np.stack([np.tile(np.asarray([c], np.float32), (len(data), 1)) for c in actions])
    return (data.state, data.action, data.reward, data.next_state, data.is_terminal, pa,
            pa.copy(), sess, first)


def test_mwl_members_equal_linear_fqe_run_to_convergence() -> None:
    data = exit_sessions(4000, seed=1)
    args = _args(data, [0.0, 0.6, -0.6])
    names = ["logging", "high", "low"]
    gamma = 0.9
    mwl = fit_mwl_ensemble(names, *args, gamma=gamma, seed=0,
                           settings=EnsembleConfig(model="mwl", members=4))
    lin = fit_linear_ensemble(names, *args, gamma=gamma, seed=0,
                              settings=EnsembleConfig(model="linear", members=4, backups=400))
    np.testing.assert_allclose(mwl.values, lin.values, rtol=1e-6)
    assert mwl.solved and mwl.converged().all() and mwl.backups == 0
    assert mwl.history.shape == (1, 3) and mwl.occupancy_ess.shape == (3,)
    # and close to the truth of this world (Q is linear in a here; 13,000 rows pin the exit
    # probability to about +-0.004, the value to about +-1%, +-2% for the long-session policy)
    for i, c in enumerate([0.0, 0.6, -0.6]):
        assert mwl.values[i].mean() == pytest.approx(exit_value(c, gamma), rel=0.05)


def test_mwl_weights_satisfy_the_moment_condition_on_every_feature() -> None:
    from mtf.ope.ensemble import backups_and_weights
    from mtf.ope.linear_fqe import _linear_inputs, f64, quadratic_features

    data = exit_sessions(300, seed=5)
    state, action, reward, nxt, term, pa, pna, sess, first = _args(data, [0.4])
    gamma, ridge = 0.9, 1e-3
    settings = EnsembleConfig(model="mwl", members=2, ridge=ridge)
    _, w, keep = backups_and_weights(first, len(data), gamma, settings, seed=1)
    gram, xr, cross, lam, v0 = _linear_inputs(state, action, reward, nxt, term, pa, pna, sess,
                                              first, w, keep, gamma, ridge)
    _, _, beta = fixed_point(gram, xr, cross[0], v0[0], lam)
    st = f64(state)
    mean, std = st.mean(0), st.std(0, unbiased=False).clamp_min(1e-6)
    phi = quadratic_features((st - mean) / std, f64(action))
    phi_n = quadratic_features((f64(nxt) - mean) / std, f64(pna[0]))
    disc = gamma * (1.0 - f64(term))
    for e in range(2):
        wt = f64(w[e, sess]) * (phi @ beta[e])          # row weight x MWL weight
        lhs = (wt[:, None] * (phi - disc[:, None] * phi_n)).sum(0) + lam[e] * beta[e]
        torch.testing.assert_close(lhs, v0[0, e], rtol=1e-7, atol=1e-9)


def test_the_occupancy_of_a_far_policy_rests_on_fewer_rows() -> None:
    data = exit_sessions(800, seed=2)                  # logged a ~ TN(0, 0.5) on [-1, 1]
    state, action, _, nxt, term, pa, pna, sess, first = _args(data, [0.0, 0.5, 0.95])
    ess = occupancy_shares(state, action, nxt, term, pa, pna, sess, first, gamma=0.9,
                           ridge=1e-3)
    assert ess[0] > ess[1] > ess[2] and ess[2] < 0.5 * ess[0]


def test_the_mwl_kind_gates_and_the_report_names_the_occupancy() -> None:
    data = exit_sessions(1500, seed=4)
    policies = [fixed_policy("logging", [0.0]), fixed_policy("low", [-0.8]),
                fixed_policy("high", [0.8])]
    ope = OpeConfig(n_iterations=20, target_update_every=10, hidden=(8,), n_bootstrap=50,
                    ensemble=EnsembleConfig(model="mwl", members=6))
    res = evaluate_arrays(data, policies, ope, gamma=0.9, seed=0)
    fit = res.ensemble
    assert fit is not None and fit.solved and set(fit.components) == {"mwl"}
    # low a: smaller steps, longer sessions: exit_value(-0.8) = 4.53 > 3.36 > 2.69
    assert res.decision("low").go and not res.decision("high").go
    assert res.estimate("low", "fqe_ensemble") == pytest.approx(exit_value(-0.8, 0.9), rel=0.1)
    rows = {r.policy: r for r in res.results}
    ess = {p: rows[p].diagnostics["occupancy_ess"] for p in rows}
    np.testing.assert_allclose([ess[p] for p in ("logging", "low", "high")],
                               fit.occupancy_ess, rtol=1e-12)
    report = {"results": [r.to_dict() for r in res.results],
              "decisions": [d.to_dict() for d in res.decisions], "config": {}}
    notes = " ".join(trust(report)["low"]["notes"])
    assert f"{ess['low']:.0%} of the logged rows" in notes
    assert f"the logging policy's own: {ess['logging']:.0%}" in notes


def _trust_of(occupancy: dict[str, float]) -> dict:
    """trust() of a hand-made report whose only evidence is the occupancy effective sample."""
    results = [{"policy": p, "diff_vs_logging": {} if p == "logging" else {"x": {}},
                "diagnostics": {"occupancy_ess": v}} for p, v in occupancy.items()]
    decisions = [{"policy": p, "estimator": "fqe_ensemble", "go": True, "margin": 0.05}
                 for p in occupancy if p != "logging"]
    return trust({"results": results, "decisions": decisions, "config": {}})


def test_a_thin_occupancy_makes_a_decision_low_trust() -> None:
    # logging rests on 50% of the rows; a fifth of that is 10%
    out = _trust_of({"logging": 0.5, "near": 0.3, "edge": 0.1, "thin": 0.099})
    assert out["near"]["level"] == "medium" and out["edge"]["level"] == "medium"
    assert out["thin"]["level"] == "low"
    assert "under 20% of the logging policy's" in out["thin"]["notes"][0]
    assert out["near"]["notes"] == ["its discounted sessions rest on the equivalent of 30% of "
                                    "the logged rows (MWL weights; the logging policy's own: "
                                    "50%)"]


def test_the_fixed_point_solves_full_size_systems_after_set_num_threads() -> None:
    # torch's batched LU on 203 x 203 matrices hangs once set_num_threads was called (the
    # benchmark does); fixed_point must not use it. A subprocess, so a hang is a failure.
    import subprocess
    import sys

    code = (
        "import torch\n"
        "torch.set_num_threads(max(1, torch.get_num_threads()))\n"
        "from mtf.ope.linear_fqe import fixed_point\n"
        "g = torch.Generator().manual_seed(0)\n"
        "d = 203\n"
        "gram = torch.randn(3, d, d, generator=g, dtype=torch.float64) + 40 * torch.eye(d)\n"
        "cross = 0.1 * torch.randn(3, d, d, generator=g, dtype=torch.float64)\n"
        "xr = torch.randn(3, d, generator=g, dtype=torch.float64)\n"
        "v0 = torch.randn(3, d, generator=g, dtype=torch.float64)\n"
        "val, theta, beta = fixed_point(gram, xr, cross, v0, torch.zeros(3, dtype=torch.float64))\n"
        "a = gram - cross\n"
        "assert torch.allclose(a @ theta.unsqueeze(2), xr.unsqueeze(2), atol=1e-9)\n"
        "assert torch.allclose(a.transpose(1, 2) @ beta.unsqueeze(2), v0.unsqueeze(2), atol=1e-9)\n"
        "assert torch.allclose(val, (beta * xr).sum(1), atol=1e-9)\n"
        "print('solved')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "solved", out.stderr[-2000:]
    assert "oneMKL ERROR" not in out.stderr


def test_a_report_of_the_mwl_kind_says_what_a_member_is_and_shows_the_occupancy(
        tmp_path) -> None:
    import json

    from mtf.ope.report import write_report

    data = exit_sessions(300, seed=6)
    policies = [fixed_policy("logging", [0.0]), fixed_policy("low", [-0.8])]
    ope = OpeConfig(n_iterations=20, target_update_every=10, hidden=(8,), n_bootstrap=30,
                    ensemble=EnsembleConfig(model="mwl", members=4))
    res = evaluate_arrays(data, policies, ope, gamma=0.9, seed=0,
                          meta={"table_path": "mem", "table_version": 1, "split": "test",
                                "action_tasks": ["click"]})
    paths = write_report(res, ope, str(tmp_path / "r"), run_id="r")
    with open(paths.json) as fh:
        report = json.load(fh)
    assert "linear fixed point (LSTDQ = linear MWL)" in report["decision_rule"]
    ess = report["results"][1]["diagnostics"]["occupancy_ess"]
    assert 0.0 < ess < report["results"][0]["diagnostics"]["occupancy_ess"] <= 1.0
    html = open(paths.html).read()
    assert "occupancy ESS (share of rows)" in html and f"{ess:.3g}" in html


def test_mwl_joins_other_kinds() -> None:
    assert EnsembleConfig(model="mwl+mlp").components == ("mlp", "mwl")
    assert EnsembleConfig(model="mwl").components == ("mwl",)


def test_the_benchmark_checks_the_occupancy_note_against_the_truth() -> None:
    from mtf.loop.ope_benchmark import occupancy_check, pooled_occupancy_check

    # logging ESS 0.5 (cut 0.1); errors relative to |V(logging)| = 10
    world = {"policies": ["logging", "a", "b", "c", "d"],
             "truth": {p: {"mean": 10.0} for p in ["logging", "a", "b", "c", "d"]},
             "estimates": {"fqe_ensemble": {"logging": 10.0, "a": 10.1, "b": 10.3, "c": 12.0,
                                            "d": 9.0}},
             "occupancy_ess": {"logging": 0.5, "a": 0.4, "b": 0.2, "c": 0.05, "d": 0.01}}
    check = occupancy_check(world)
    assert check["errors"] == pytest.approx({"a": 0.01, "b": 0.03, "c": 0.2, "d": 0.1})
    assert check["spearman"] == pytest.approx(-0.8)      # ranks of ESS 4 3 2 1, errors 1 2 4 3
    assert check["rest"] == {"n": 2, "median_error": pytest.approx(0.02),
                             "max_error": pytest.approx(0.03)}
    assert check["thin"] == {"n": 2, "median_error": pytest.approx(0.15),
                             "max_error": pytest.approx(0.2)}
    pooled = pooled_occupancy_check([world, world])
    assert pooled["spearman_per_world"] == pytest.approx([-0.8, -0.8])
    assert pooled["thin"]["n"] == 4 and pooled["rest"]["median_error"] == pytest.approx(0.02)
    assert occupancy_check({**world, "occupancy_ess": None}) is None
