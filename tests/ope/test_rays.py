"""The OPE under the ray parametrisation: canonical logged actions and policies, the face
target density, and a whole single-process evaluation of ray-explored logs."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from mtf.config import load_config
from mtf.fusion import canonical_action, is_canonical
from mtf.loop.ope_validation import simulated_transitions, to_arrays
from mtf.ope.config import OpeConfig
from mtf.ope.data import TransitionArrays
from mtf.ope.evaluate import evaluate_arrays, on_rays, rays_of
from mtf.ope.policies import fixed_policy, load_module
from mtf.ope.score import score_rows
from mtf.sim.world import World

LO, HI = np.zeros(3), np.full(3, 2.0)


def _arrays(action: np.ndarray, logp: list[float | None]) -> TransitionArrays:
    n = action.shape[0]
    return TransitionArrays.build(
        session_id=[f"s{i}" for i in range(n)], step=[0] * n, state=np.zeros((n, 2)),
        next_state=np.zeros((n, 2)), action=action, action_logp=logp, reward=[1.0] * n,
        is_terminal=[True] * n, is_truncated=[False] * n, explore_group=["noise"] * n)


def test_on_rays_makes_actions_canonical_and_keeps_only_face_densities() -> None:
    action = np.array([[1.0, 0.2, -0.5], [0.0, 0.0, 0.0]])
    data = _arrays(action, [-1.5, -2.5]).on_rays(LO, HI)
    np.testing.assert_allclose(data.action, canonical_action(action, LO, HI), atol=1e-7)
    assert data.action_logp[0] == -1.5 and math.isnan(data.action_logp[1])


def _tn_logpdf(a: float, mu: float, sigma: float) -> float:
    phi = lambda v: 0.5 * math.erfc(-v / math.sqrt(2.0))
    z = (a - mu) / sigma
    return (-0.5 * z * z - 0.5 * math.log(2 * math.pi) - math.log(sigma)
            - math.log(phi((1 - mu) / sigma) - phi((-1 - mu) / sigma)))


def test_face_target_density_by_hand() -> None:
    """pi(s) = canonical(0.5, 0, -0.5) = (1, 1/3, -1/3) on face 0; a logged action on face 0
    gets the truncated normals of tasks 1 and 2; one on face 1 has no target density."""
    sigma = 0.2
    pol, = on_rays(_arrays(np.zeros((1, 3)), [None]),
                   [fixed_policy("p", [0.5, 0.0, -0.5])], ((0.0,) * 3, (2.0,) * 3))[1]
    module = load_module(pol.payload)
    mu = canonical_action(np.array([0.5, 0.0, -0.5]), LO, HI)
    np.testing.assert_allclose(mu, [1.0, 1 / 3, -1 / 3], atol=1e-12)

    class Loaded:   # the three modules score_rows calls
        name = "p"
        policy = module

        @staticmethod
        def q_plain(s, a):
            return s[:, 0] * 0

        q_conservative = q_plain

    action = np.array([[1.0, 0.5, 0.0], [0.2, 1.0, 0.0]])
    out = score_rows([Loaded], np.zeros((2, 2)), np.zeros((2, 2)), action,
                     np.array([-1.0, -1.0]), sigma, (tuple(LO), tuple(HI)))["p"]
    want = _tn_logpdf(0.5, 1 / 3, sigma) + _tn_logpdf(0.0, -1 / 3, sigma) + 1.0
    assert out["log_ratio"][0] == pytest.approx(want, rel=1e-5)
    assert out["log_ratio"][1] == -math.inf


def test_evaluate_ray_explored_logs_end_to_end() -> None:
    cfg = load_config(None, ["fusion.action_space=ray"])
    world = World.build(sim=replace(cfg.sim, n_users=80, n_days=1), serving=cfg.serving,
                        fusion=cfg.fusion, features=cfg.features, reward=cfg.reward,
                        gamma=0.95, seed=5)
    df = simulated_transitions(world, test_share=1.0)
    data = to_arrays(df, "test")
    explored = ~data.is_exploit
    assert is_canonical(data.action[explored], 1e-6).all()
    assert np.isfinite(data.action_logp[explored]).all()
    ope = replace(OpeConfig(), n_iterations=40, target_update_every=10, batch_size=64,
                  n_bootstrap=20, ensemble=replace(OpeConfig().ensemble, members=2,
                                                   steps_per_backup=5, backups=3))
    k = cfg.fusion.k
    policies = [fixed_policy("logging", [0.0] * k), fixed_policy("other", [0.5] * k)]
    res = evaluate_arrays(data, policies, ope, gamma=0.95, seed=1, rays=rays_of(cfg.fusion))
    # both fixed policies are the equal-weight ray: canonical, identical, every estimate equal
    a, b = (r for r in res.results)
    for est in ("fqe", "pdis", "wpdis"):
        assert a.estimates[est].value == pytest.approx(b.estimates[est].value, rel=1e-9), est
    # every explored session carries a face density, so the IS family uses all of them
    d = a.diagnostics
    assert d["n_sessions_is"] == d["n_sessions"] - d["n_exploit_sessions"] > 0
    assert d["ess_trajectory"] > 1.0 and math.isfinite(a.estimates["wpdis"].value)
